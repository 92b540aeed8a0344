"""Single keys, conditional writes, TTLs, transactions, listings and the error mapping, against
a real server."""

from __future__ import annotations

import socket
import threading

import pytest

import swarmstate
from swarmstate import Check, Delete, Put
from swarmstate import _protocol as proto

from conftest import wait_until


def test_put_then_get_returns_the_value_and_its_revision(client: swarmstate.Client, ns: str) -> None:
    revision = client.put(f"{ns}.model", "small")
    entry = client.get(f"{ns}.model")
    assert entry == swarmstate.Entry(f"{ns}.model", b"small", revision, None)
    assert entry.text == "small"


def test_binary_values_and_keys_with_slashes_round_trip(client: swarmstate.Client, ns: str) -> None:
    key = f"agents/7.{ns}/state="
    client.put(key, b"\xff\x00\x01")
    assert client.get(key).value == b"\xff\x00\x01"  # type: ignore[union-attr]
    assert [e.value for e in client.entries(f"agents/7.{ns}/state=").entries] == [b"\xff\x00\x01"]


def test_an_absent_key_reads_as_none(client: swarmstate.Client, ns: str) -> None:
    assert client.get(f"{ns}.absent") is None


def test_create_of_a_present_key_raises_already_exists_with_its_revision(
    client: swarmstate.Client, ns: str
) -> None:
    first = client.put(f"{ns}.k", "a", if_absent=True)
    with pytest.raises(swarmstate.AlreadyExists) as caught:
        client.put(f"{ns}.k", "b", if_absent=True)
    err = caught.value
    assert isinstance(err, swarmstate.Conflict), err
    assert (err.key, err.revision, err.status) == (f"{ns}.k", first, 412), err


def test_update_at_a_stale_revision_raises_revision_mismatch(client: swarmstate.Client, ns: str) -> None:
    first = client.put(f"{ns}.k", "a")
    second = client.put(f"{ns}.k", "b", if_revision=first)
    with pytest.raises(swarmstate.RevisionMismatch) as caught:
        client.put(f"{ns}.k", "c", if_revision=first)
    assert (caught.value.expected, caught.value.actual) == (first, second), caught.value
    assert client.get(f"{ns}.k").value == b"b"  # type: ignore[union-attr]


def test_conditional_delete_of_an_absent_key_reports_actual_none(
    client: swarmstate.Client, ns: str
) -> None:
    assert client.delete(f"{ns}.gone") is None
    with pytest.raises(swarmstate.RevisionMismatch) as caught:
        client.delete(f"{ns}.gone", if_revision=3)
    assert caught.value.actual is None and caught.value.expected == 3, caught.value
    revision = client.put(f"{ns}.here", "x")
    assert client.delete(f"{ns}.here", if_revision=revision) > revision  # type: ignore[operator]


def test_bad_requests_map_to_their_kinds(client: swarmstate.Client, ns: str) -> None:
    with pytest.raises(swarmstate.InvalidKey) as bad_key:
        client.put("bad..key", "x")
    assert bad_key.value.status == 400, bad_key.value
    with pytest.raises(swarmstate.InvalidInput):
        client.put(f"{ns}.k", "x", ttl="30")  # a bare number is refused by the server
    limit = client.status().capabilities.max_value_size
    with pytest.raises(swarmstate.ValueTooLarge) as too_large:
        client.put(f"{ns}.big", b"x" * (limit + 1))
    assert too_large.value.limit == limit, too_large.value
    with pytest.raises(swarmstate.InvalidInput):
        client.put(f"{ns}.k", "x", if_absent=True, if_revision=1)


def test_an_unknown_problem_kind_is_a_backend_error() -> None:
    request = proto.Request("GET", "/", "probe", proto.Effect.READS, lambda a: None)
    answer = proto.Answer(599, {"content-type": "application/problem+json"},
                          b'{"kind":"from_the_future","detail":"new","status":599}')
    err = proto.answer_error(request, answer)
    assert type(err) is swarmstate.BackendError and "new" in str(err), err


def test_a_5xx_without_a_problem_is_ambiguous_for_a_write_only() -> None:
    answer = proto.Answer(502, {"content-type": "text/plain"}, b"bad gateway")
    write = proto.Request("PUT", "/", "put", proto.Effect.WRITES, lambda a: None)
    read = proto.Request("GET", "/", "get", proto.Effect.READS, lambda a: None)
    assert isinstance(proto.answer_error(write, answer), swarmstate.Ambiguous)
    assert type(proto.answer_error(read, answer)) is swarmstate.BackendError


def test_ttl_entries_report_time_left_and_expire(client: swarmstate.Client, ns: str) -> None:
    client.put(f"{ns}.short", "x", ttl=0.3)
    entry = client.get(f"{ns}.short")
    assert entry is not None and entry.expires_in_ms is not None and entry.expires_in_ms <= 300
    wait_until(lambda: client.get(f"{ns}.short") is None)
    client.put(f"{ns}.long", "x", ttl="1h")
    client.put(f"{ns}.long", "y")  # a write without ttl makes it permanent
    assert client.get(f"{ns}.long").expires_in_ms is None  # type: ignore[union-attr]


def test_a_retry_with_the_same_idempotency_key_applies_once(client: swarmstate.Client, ns: str) -> None:
    first = client.put(f"{ns}.result", "try1", idempotency_key="worker-7:job-42")
    again = client.put(f"{ns}.result", "try2", idempotency_key="worker-7:job-42")
    assert again == first
    assert client.get(f"{ns}.result").value == b"try1"  # type: ignore[union-attr]


def test_concurrent_compare_and_set_increments_lose_nothing(shared_server, ns: str) -> None:  # type: ignore[no-untyped-def]
    workers, rounds = 4, 15
    key = f"{ns}.counter"

    def work() -> None:
        with swarmstate.Client(shared_server.url) as c:
            for _ in range(rounds):
                while True:
                    entry = c.get(key)
                    try:
                        if entry is None:
                            c.put(key, "1", if_absent=True)
                        else:
                            c.put(key, str(int(entry.value) + 1), if_revision=entry.revision)
                        break
                    except swarmstate.Conflict:
                        continue

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with swarmstate.Client(shared_server.url) as c:
        assert int(c.get(key).value) == workers * rounds  # type: ignore[union-attr]


def test_a_transaction_applies_all_or_nothing(client: swarmstate.Client, ns: str) -> None:
    base = client.put(f"{ns}.model", "m")
    results = client.txn([
        Check(f"{ns}.model", if_revision=base),
        Put(f"{ns}.t2", "queued", if_absent=True, ttl="10m"),
        Put(f"{ns}.blob", b"\xff\x00"),
        Delete(f"{ns}.t1"),
    ])
    assert [r.op for r in results] == ["check", "put", "put", "delete"]
    assert results[0].revision is None and results[3].revision is None
    assert results[2].revision == results[1].revision + 1  # type: ignore[operator]
    assert client.get(f"{ns}.blob").value == b"\xff\x00"  # type: ignore[union-attr]

    with pytest.raises(swarmstate.AlreadyExists) as caught:
        client.txn([Put(f"{ns}.new", "x"), Put(f"{ns}.t2", "again", if_absent=True)])
    assert (caught.value.index, caught.value.status) == (1, 409), caught.value
    assert client.get(f"{ns}.new") is None


def test_listings_page_through_every_key_in_order(client: swarmstate.Client, ns: str) -> None:
    keys = sorted(f"{ns}.item.{i:02}" for i in range(7))
    client.txn([Put(k, k) for k in keys])
    client.put(f"{ns}.item", "not under the prefix")
    page = client.keys(f"{ns}.item.*", limit=3)
    assert page.keys == keys[:3] and page.next == keys[2]
    assert list(client.iter_keys(f"{ns}.item.*", page_size=3)) == keys
    entries = list(client.iter_entries(f"{ns}.item.*", page_size=2))
    assert [e.key for e in entries] == keys and all(e.text == e.key for e in entries)
    last = client.entries(f"{ns}.item.*", limit=2, after=keys[-2])
    assert last.next is None and last.revision is not None


def test_status_and_health(client: swarmstate.Client) -> None:
    status = client.status()
    assert status.backend == "disk" and status.capabilities.durable
    assert status.watch_progress_ms > 0 and status.instance
    assert client.healthy()


def test_a_refused_connection_is_unavailable_for_reads_and_writes() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with swarmstate.Client(f"http://127.0.0.1:{port}", timeout=2) as c:
        with pytest.raises(swarmstate.Unavailable):
            c.get("a")
        with pytest.raises(swarmstate.Unavailable):
            c.put("a", "x")


def test_a_write_sent_without_an_answer_is_ambiguous_and_a_read_unavailable() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)  # read nothing, answer nothing
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with swarmstate.Client(url, timeout=0.5) as c:
            with pytest.raises(swarmstate.Ambiguous) as write:
                c.put("a", "x")
            assert write.value.operation == "put a", write.value
            with pytest.raises(swarmstate.Unavailable):
                c.get("a")
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def test_durations_are_sent_as_milliseconds_and_read_back() -> None:
    assert proto.duration_text(10) == "10000ms"
    assert proto.duration_text(0.0001) == "1ms"
    assert proto.duration_text("1h 30m") == "1h 30m"
    assert proto.duration_seconds("1m 30s") == 90
    assert proto.duration_seconds("500ms") == 0.5
    with pytest.raises(swarmstate.InvalidInput):
        proto.duration_seconds("soon")


def test_keys_with_dot_segments_are_written_as_given(client: swarmstate.Client, ns: str) -> None:
    key = f"{ns}/./x"
    client.put(key, "v")
    assert client.get(key).value == b"v"  # type: ignore[union-attr]
    assert client.get(f"{ns}/x") is None
    with pytest.raises(swarmstate.InvalidKey):
        client.put(f"{ns}/../x", "v")  # ".." is a double dot: not a key, never another key
