"""Watches: SSE events in order, resuming by revision across a server restart, and raising
rather than skipping on lag or compaction."""

from __future__ import annotations

import threading

import pytest

import swarmstate
from swarmstate import CaughtUp, DeleteEvent, ExpireEvent, Put, PutEvent
from swarmstate._watch import SseParser


def test_the_sse_parser_joins_data_lines_and_skips_comments() -> None:
    parser = SseParser()
    lines = [": comment", "event: put", "data: {\"a\":", "data: 1}", "id: 7", ""]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert len(events) == 1
    assert (events[0].event, events[0].data, events[0].id) == ("put", '{"a":\n1}', "7")
    assert parser.feed("") is None


def test_a_watch_from_now_sees_puts_deletes_and_expiries_in_order(client: swarmstate.Client, ns: str) -> None:
    with client.watch(f"{ns}.*") as watch:
        put = client.put(f"{ns}.a", "1")
        deleted = client.delete(f"{ns}.a")
        client.put(f"{ns}.short", "x", ttl=0.2)
        events = [next(watch) for _ in range(4)]
    assert events[0] == PutEvent(swarmstate.Entry(f"{ns}.a", b"1", put))
    assert events[1] == DeleteEvent(f"{ns}.a", deleted)  # type: ignore[arg-type]
    assert isinstance(events[2], PutEvent) and events[2].key == f"{ns}.short"
    assert isinstance(events[3], ExpireEvent) and events[3].key == f"{ns}.short"
    assert [e.revision for e in events] == sorted(e.revision for e in events)  # type: ignore[union-attr]


def test_a_snapshot_watch_gives_the_entries_then_caught_up_then_changes(
    client: swarmstate.Client, ns: str
) -> None:
    client.txn([Put(f"{ns}.a", "1"), Put(f"{ns}.b", "2")])
    with client.watch(f"{ns}.*", start="snapshot") as watch:
        first = [next(watch) for _ in range(3)]
        assert {e.key for e in first[:2]} == {f"{ns}.a", f"{ns}.b"}  # type: ignore[union-attr]
        assert isinstance(first[2], CaughtUp) and first[2].revision is not None
        client.put(f"{ns}.c", "3")
        live = next(watch)
    assert isinstance(live, PutEvent) and live.key == f"{ns}.c"


def test_a_watch_from_a_revision_replays_history(client: swarmstate.Client, ns: str) -> None:
    start = client.put(f"{ns}.a", "1")
    client.put(f"{ns}.a", "2")
    with client.watch(f"{ns}.a", start=start) as watch:
        assert [next(watch).entry.value for _ in range(2)] == [b"1", b"2"]  # type: ignore[union-attr]


def test_a_watch_resumes_across_a_server_crash_without_losing_or_repeating(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    seen: list[int] = []
    written: list[int] = []
    with swarmstate.Client(server.url, timeout=5) as writer, \
            swarmstate.Client(server.url, timeout=5) as reader:
        watch = reader.watch("jobs.*").open()
        for i in range(5):
            written.append(writer.put(f"jobs.{i}", str(i)))
        seen += [next(watch).revision for _ in range(3)]  # type: ignore[union-attr]
        server.restart()  # SIGKILL, then the same data directory and port
        for i in range(5, 10):
            written.append(writer.put(f"jobs.{i}", str(i)))
        while len(seen) < len(written):
            seen.append(next(watch).revision)  # type: ignore[union-attr]
        watch.close()
    assert seen == written


def test_a_lagging_watcher_raises_rather_than_skip(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("memory://")
    with swarmstate.Client(server.url) as c:
        buffer = c.status().capabilities.watch_buffer
        watch = c.watch("bulk.*").open()
        value = b"v" * 30_000
        # Far more than the watcher's buffer and the socket buffers hold, unread.
        for batch in range(20):
            c.txn([Put(f"bulk.{batch}.{i}", value) for i in range(buffer)])
        got = 0
        with pytest.raises(swarmstate.WatchLagged) as caught:
            for _ in watch:
                got += 1
        assert caught.value.resume_from is not None, caught.value
        assert got < 20 * buffer
        # Resuming from where the server said loses nothing: the first event is that revision.
        with c.watch("bulk.*", start=caught.value.resume_from) as again:
            assert next(again).revision == caught.value.resume_from  # type: ignore[union-attr]


def test_a_watch_older_than_the_kept_history_raises_compacted(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("memory://")
    with swarmstate.Client(server.url) as c:
        for batch in range(11):  # past the 10,000 changes the store keeps
            c.txn([Put(f"many.{i}", str(batch)) for i in range(1000)])
        with pytest.raises(swarmstate.Compacted) as caught:
            c.watch("many.*", start=1).open()
        assert caught.value.requested == 1 and caught.value.oldest > 1, caught.value  # type: ignore[operator]


def test_a_watch_that_cannot_reconnect_within_its_window_raises_lagged(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    with swarmstate.Client(server.url, timeout=2, resume_window=1.0) as c:
        watch = c.watch("gone.*").open()
        last = c.put("gone.a", "1")
        assert next(watch).revision == last  # type: ignore[union-attr]
        server.kill()
        with pytest.raises(swarmstate.WatchLagged) as caught:
            next(watch)
        assert caught.value.resume_from == last + 1, caught.value


def test_a_watch_on_a_shutdown_server_reconnects_after_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    import signal

    server = make_server()
    with swarmstate.Client(server.url, timeout=5) as c:
        watch = c.watch("svc.*").open()
        first = c.put("svc.a", "1")
        assert next(watch).revision == first  # type: ignore[union-attr]
        events: list[int] = []
        reader = threading.Thread(target=lambda: events.append(next(watch).revision))  # type: ignore[union-attr]
        reader.start()
        server.kill(signal.SIGTERM)  # graceful: the stream gets `shutdown`
        server.start()
        second = c.put("svc.b", "2")
        reader.join(timeout=30)
        assert events == [second]
        watch.close()


def test_a_watch_of_a_restarted_volatile_server_ends_plainly(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("memory://")
    with swarmstate.Client(server.url, timeout=5) as c:
        watch = c.watch("v.*").open()
        c.put("v.a", "1")
        assert next(watch).key == "v.a"  # type: ignore[union-attr]
        server.restart()  # a new process: the memory store and its history are gone
        with pytest.raises(StopIteration):
            next(watch)


def test_an_observe_stream_error_event_raises_its_problem() -> None:
    from swarmstate._watch import ObserveSession, SseEvent

    session = ObserveSession("e")
    changed, leader = session.event(SseEvent("leader", '{"candidate":"a","term":3}', None))
    assert changed and leader == swarmstate.Leader("a", 3)
    assert session.event(SseEvent("leader", '{"candidate":"a","term":3}', None)) == (False, None)
    with pytest.raises(swarmstate.Corrupt):
        session.event(SseEvent("error", '{"kind":"corrupt","detail":"damaged","status":500}', None))
