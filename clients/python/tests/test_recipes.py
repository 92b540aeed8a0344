"""Locks, elections and work queues through the server's recipe routes, with the helpers that
hold them in the background."""

from __future__ import annotations

import threading
import time

import pytest

import swarmstate
from swarmstate import Put

from conftest import wait_until


def test_a_held_lock_refuses_others_and_names_its_holder(client: swarmstate.Client, ns: str) -> None:
    handle = client.acquire_lock(f"{ns}.lock", ttl=10, owner="agent-1")
    with pytest.raises(swarmstate.LockHeld) as caught:
        client.acquire_lock(f"{ns}.lock", ttl=10, owner="agent-2", wait=0.2)
    assert caught.value.holder == "agent-1" and caught.value.expires_in_ms, caught.value
    holder = client.lock_holder(f"{ns}.lock")
    assert holder is not None and (holder.holder, holder.revision) == ("agent-1", handle.revision)
    client.release_lock(handle)
    assert client.lock_holder(f"{ns}.lock") is None


def test_a_refreshed_handle_replaces_the_old_one(client: swarmstate.Client, ns: str) -> None:
    old = client.acquire_lock(f"{ns}.lock", ttl=10)
    new = client.refresh_lock(old)
    assert new.token == old.token and new.revision > old.revision
    with pytest.raises(swarmstate.LockLost):
        client.lock_txn(old, [Put(f"{ns}.x", "stale")])
    assert client.lock_txn(new, [Put(f"{ns}.x", "fresh")])[0].revision
    client.release_lock(new)
    with pytest.raises(swarmstate.LockLost):
        client.release_lock(new)


def test_every_later_holder_gets_a_higher_token(client: swarmstate.Client, ns: str) -> None:
    tokens = []
    for _ in range(3):
        with client.lock(f"{ns}.lock", ttl=5) as lock:
            tokens.append(lock.token)
    assert tokens == sorted(set(tokens))


def test_the_lock_helper_keeps_refreshing_with_the_newest_handle(client: swarmstate.Client, ns: str) -> None:
    with client.lock(f"{ns}.lock", ttl=0.6) as lock:
        first = lock.handle.revision
        # Several refreshes, each sent with the handle the previous one answered.
        wait_until(lambda: lock.handle.revision > first + 2, timeout=20)
        time.sleep(1.0)  # longer than the TTL: only the refreshes keep it
        assert not lock.lost.is_set()
        assert lock.fenced_put(f"{ns}.deploy", "v2") > first
        holder = client.lock_holder(f"{ns}.lock")
        assert holder is not None and holder.holder == lock.owner
    assert client.lock_holder(f"{ns}.lock") is None
    assert client.get(f"{ns}.deploy").value == b"v2"  # type: ignore[union-attr]


def test_the_lock_helper_tells_the_body_when_the_lock_was_lost(client: swarmstate.Client, ns: str) -> None:
    with pytest.raises(swarmstate.LockLost):
        with client.lock(f"{ns}.lock", ttl=0.6) as lock:
            client.delete(f"{ns}.lock")  # the lock key is gone: the next refresh finds out
            assert lock.lost.wait(timeout=20)
            with pytest.raises(swarmstate.LockLost):
                lock.check()
            with pytest.raises(swarmstate.LockLost):
                lock.fenced_put(f"{ns}.x", "late")
    assert client.get(f"{ns}.x") is None


def test_a_fenced_write_of_a_stalled_holder_is_refused(client: swarmstate.Client, ns: str) -> None:
    with client.lock(f"{ns}.lock", ttl=5) as lock:
        with pytest.raises(swarmstate.LockLost):
            stale = lock.handle
            client.delete(f"{ns}.lock")
            client.acquire_lock(f"{ns}.lock", ttl=5, owner="successor")
            client.lock_txn(stale, [Put(f"{ns}.x", "late")])
        with pytest.raises(swarmstate.LockLost):
            lock.fenced_delete(f"{ns}.x")
        assert lock.lost.is_set()
        body_failed = RuntimeError("the body's own failure")
        # Leaving with the body's exception does not mask it with the lost release.
        assert lock.__exit__(RuntimeError, body_failed, None) is None


def test_a_waiting_acquire_gets_the_lock_when_it_is_released(client: swarmstate.Client, ns: str) -> None:
    first = client.acquire_lock(f"{ns}.lock", ttl=10, owner="first")
    got: list[swarmstate.LockHandle] = []
    waiter = threading.Thread(target=lambda: got.append(
        client.acquire_lock(f"{ns}.lock", ttl=10, owner="second", wait=30)))
    waiter.start()
    time.sleep(0.2)
    client.release_lock(first)
    waiter.join(timeout=30)
    assert got and got[0].owner == "second" and got[0].token > first.token
    client.release_lock(got[0])


def test_an_election_hands_over_with_a_higher_term(client: swarmstate.Client, ns: str) -> None:
    name = f"{ns}.leader"
    observed: list[swarmstate.Leader | None] = []
    observer = client.observe_leader(name)
    assert next(observer) is None  # nobody leads yet
    with client.campaign(name, "node-a", ttl=5) as leading:
        assert client.leader(name) == swarmstate.Leader("node-a", leading.term)
        assert next(observer) == swarmstate.Leader("node-a", leading.term)
        assert leading.fenced_put(f"{ns}.config", "from-a")
        second: list[swarmstate.Leadership] = []
        follower = threading.Thread(target=lambda: second.append(
            client.campaign(name, "node-b", ttl=5, wait=30).__enter__()))
        follower.start()
        time.sleep(0.2)
        leading.resign()
    follower.join(timeout=30)
    node_b = second[0]
    assert node_b.term > leading.term
    while not observed or observed[-1] is None or observed[-1].candidate != "node-b":
        observed.append(next(observer))
    assert observed[-1] == swarmstate.Leader("node-b", node_b.term)
    with pytest.raises(swarmstate.LockLost):
        client.leadership_txn(leading.handle, [Put(f"{ns}.config", "stale")])
    node_b.resign()
    observer.close()
    assert client.leader(name) is None


def test_queue_items_are_claimed_completed_and_failed(client: swarmstate.Client, ns: str) -> None:
    queue = f"{ns}.jobs"
    assert client.enqueue(queue, "job-1", "resize img-1")
    assert not client.enqueue(queue, "job-1", "again")
    claim = client.claim(queue, "agent-7", lease=30)
    assert claim is not None and (claim.id, claim.text, claim.attempt) == ("job-1", "resize img-1", 1)
    beat = client.heartbeat(claim)
    assert beat.lease_revision > claim.lease_revision and beat.payload == claim.payload
    assert client.queue_item(queue, "job-1").state == "claimed"  # type: ignore[union-attr]
    assert client.fail(beat, "timeout") == "pending"
    with pytest.raises(swarmstate.LockLost):
        client.complete(beat)  # the claim is over
    retry = client.claim(queue, "agent-8", lease=30, wait=5)
    assert retry is not None and retry.attempt == 2 and retry.token > claim.token
    results = client.complete(retry, [Put(f"{ns}.result.job-1", "done")])
    assert results[0].revision
    status = client.queue_item(queue, "job-1")
    assert status is not None and (status.state, status.attempts) == ("done", 2)
    assert client.claim(queue, "agent-7", lease=30) is None
    assert client.queue_item(queue, "nope") is None
    assert [s.id for s in client.queue_items(queue)] == ["job-1"]


def test_the_worker_completes_each_job_once_and_fails_on_exception(
    shared_server, ns: str  # type: ignore[no-untyped-def]
) -> None:
    queue = f"{ns}.jobs"
    with swarmstate.Client(shared_server.url) as c:
        for i in range(12):
            c.enqueue(queue, f"job-{i:02}", f"payload {i}")
        c.enqueue(queue, "poison", "boom")

    done: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        with swarmstate.Client(shared_server.url) as c:
            try:
                for job in c.worker(queue, name, lease=5, idle=1, max_attempts=1):
                    try:
                        with job:
                            if job.text == "boom":
                                raise ValueError("cannot process poison")
                            job.complete([Put(f"{ns}.done.{job.id}", name, if_absent=True)])
                            done[job.id] = name
                    except ValueError:
                        pass
            except BaseException as err:  # pragma: no cover - reported below
                errors.append(err)

    workers = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors, errors
    assert sorted(done) == [f"job-{i:02}" for i in range(12)]
    with swarmstate.Client(shared_server.url) as c:
        items = {s.id: s for s in c.queue_items(queue)}
        assert all(items[f"job-{i:02}"].state == "done" for i in range(12))
        poison = items["poison"]
        assert poison.state == "dead" and "ValueError: cannot process poison" in (poison.last_error or "")


def test_a_job_left_unfinished_by_the_loop_body_is_completed(client: swarmstate.Client, ns: str) -> None:
    queue = f"{ns}.jobs"
    client.enqueue(queue, "a", "1")
    seen = [job.id for job in client.worker(queue, "w", lease=5, idle=0.5)]
    assert seen == ["a"]
    assert client.queue_item(queue, "a").state == "done"  # type: ignore[union-attr]


def test_a_job_keeps_its_lease_by_heartbeats_and_learns_when_it_is_lost(
    client: swarmstate.Client, ns: str
) -> None:
    queue = f"{ns}.jobs"
    client.enqueue(queue, "slow", "x")
    for job in client.worker(queue, "w", lease=0.6, idle=0.5):
        with pytest.raises(swarmstate.LockLost):
            with job:
                first = job.claim.lease_revision
                wait_until(lambda: job.claim.lease_revision > first + 1)
                time.sleep(1.0)  # past the lease: only the heartbeats keep it
                assert not job.lost.is_set()
                lease_key = f"{queue}.lease.slow"
                client.delete(lease_key)  # the lease is gone: the next heartbeat finds out
                assert job.lost.wait(timeout=20)
                job.check()
        break


def test_a_wait_longer_than_the_server_takes_asks_again() -> None:
    import json

    from swarmstate import _protocol as proto

    plan = proto.claim("jobs", worker="w", lease=30, wait=700, max_attempts=None)
    waits = []
    request = next(plan)
    for _ in range(3):
        waits.append(json.loads(request.content)["wait"])  # type: ignore[arg-type]
        assert request.server_wait <= proto.MAX_SERVER_WAIT
        request = plan.send(None)  # nothing claimable yet: the plan asks again
    plan.close()
    assert waits[0] == "300000ms" and all(w == "300000ms" for w in waits)

    acquire = proto.acquire_lock("l", ttl=5, owner="o", wait=None)
    assert "wait" not in json.loads(next(acquire).content)  # type: ignore[arg-type]
    with pytest.raises(swarmstate.LockHeld):
        acquire.throw(swarmstate.LockHeld("held"))  # tried once: no wait, no retry


def test_a_job_left_behind_by_break_is_handed_out_again(client: swarmstate.Client, ns: str) -> None:
    queue = f"{ns}.jobs"
    client.enqueue(queue, "x", "1")
    for job in client.worker(queue, "quitter", lease=0.5, idle=0.5):
        assert job.attempt == 1
        break
    again = client.claim(queue, "successor", lease=5, wait=20)
    assert again is not None and (again.id, again.attempt) == ("x", 2)
    client.complete(again)
