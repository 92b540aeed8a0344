"""The async client: the same calls as the sync one, awaited, against the same server."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import swarmstate
from swarmstate import Put, PutEvent


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


def test_both_clients_have_the_same_methods_with_the_same_parameters() -> None:
    sync, asynchronous = public_methods(swarmstate.Client), public_methods(swarmstate.AsyncClient)
    sync.pop("close")
    asynchronous.pop("aclose")
    assert sync.keys() == asynchronous.keys()
    for name in sync:
        assert list(sync[name].parameters) == list(asynchronous[name].parameters), name


async def test_keys_transactions_and_errors(aclient: swarmstate.AsyncClient, ns: str) -> None:
    first = await aclient.put(f"{ns}.k", "a", if_absent=True)
    with pytest.raises(swarmstate.AlreadyExists) as caught:
        await aclient.put(f"{ns}.k", "b", if_absent=True)
    assert caught.value.revision == first
    assert (await aclient.get(f"{ns}.k")).value == b"a"  # type: ignore[union-attr]
    assert await aclient.get(f"{ns}.none") is None
    await aclient.txn([Put(f"{ns}.list.{i}", str(i)) for i in range(5)])
    keys = [k async for k in aclient.iter_keys(f"{ns}.list.*", page_size=2)]
    assert keys == [f"{ns}.list.{i}" for i in range(5)]
    entries = [e.text async for e in aclient.iter_entries(f"{ns}.list.*", page_size=2)]
    assert entries == [str(i) for i in range(5)]
    assert (await aclient.status()).capabilities.durable


async def test_concurrent_async_compare_and_set_increments_lose_nothing(
    aclient: swarmstate.AsyncClient, ns: str
) -> None:
    key = f"{ns}.counter"
    await aclient.put(key, "0")

    async def work() -> None:
        for _ in range(10):
            while True:
                entry = await aclient.get(key)
                assert entry is not None
                try:
                    await aclient.put(key, str(int(entry.value) + 1), if_revision=entry.revision)
                    break
                except swarmstate.RevisionMismatch:
                    continue

    await asyncio.gather(*(work() for _ in range(4)))
    assert (await aclient.get(key)).value == b"40"  # type: ignore[union-attr]


async def test_an_async_watch_resumes_across_a_server_crash(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    async with swarmstate.AsyncClient(server.url, timeout=5) as c:
        async with c.watch("a.*") as watch:
            written = [await c.put(f"a.{i}", "x") for i in range(3)]
            seen = [(await watch.__anext__()).revision for _ in range(2)]  # type: ignore[union-attr]
            server.restart()
            written += [await c.put(f"a.{i}", "y") for i in range(3, 6)]
            while len(seen) < len(written):
                event = await watch.__anext__()
                assert isinstance(event, PutEvent)
                seen.append(event.revision)
    assert seen == written


async def test_an_async_compacted_start_raises(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("memory://")
    async with swarmstate.AsyncClient(server.url) as c:
        for batch in range(11):
            await c.txn([Put(f"m.{i}", str(batch)) for i in range(1000)])
        with pytest.raises(swarmstate.Compacted):
            await c.watch("m.*", start=1).open()


async def test_the_async_lock_refreshes_and_signals_loss(aclient: swarmstate.AsyncClient, ns: str) -> None:
    async with aclient.lock(f"{ns}.lock", ttl=0.6) as lock:
        first = lock.handle.revision
        for _ in range(200):
            if lock.handle.revision > first + 2:
                break
            await asyncio.sleep(0.05)
        assert lock.handle.revision > first + 2
        assert await lock.fenced_put(f"{ns}.x", "1")
    assert await aclient.lock_holder(f"{ns}.lock") is None

    with pytest.raises(swarmstate.LockLost):
        async with aclient.lock(f"{ns}.lock", ttl=0.6) as lock:
            await aclient.delete(f"{ns}.lock")
            await asyncio.wait_for(lock.lost.wait(), timeout=20)
            with pytest.raises(swarmstate.LockLost):
                await lock.fenced_put(f"{ns}.x", "late")
    assert (await aclient.get(f"{ns}.x")).value == b"1"  # type: ignore[union-attr]


async def test_async_tasks_take_the_lock_one_at_a_time(aclient: swarmstate.AsyncClient, ns: str) -> None:
    inside = 0
    tokens: list[int] = []

    async def contend() -> None:
        nonlocal inside
        async with aclient.lock(f"{ns}.lock", ttl=5, wait=30) as lock:
            inside += 1
            assert inside == 1
            tokens.append(lock.token)
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(contend() for _ in range(4)))
    assert tokens == sorted(tokens) and len(set(tokens)) == 4


async def test_an_async_election_and_observer(aclient: swarmstate.AsyncClient, ns: str) -> None:
    name = f"{ns}.leader"
    async with aclient.observe_leader(name) as observer:
        assert await observer.__anext__() is None
        async with aclient.campaign(name, "node-a", ttl=5) as leadership:
            assert await observer.__anext__() == swarmstate.Leader("node-a", leadership.term)
            assert await aclient.leader(name) == swarmstate.Leader("node-a", leadership.term)
            assert await leadership.fenced_put(f"{ns}.cfg", "a")
        assert await observer.__anext__() is None
    assert await aclient.leader(name) is None


async def test_the_async_worker_completes_and_fails(aclient: swarmstate.AsyncClient, ns: str) -> None:
    queue = f"{ns}.jobs"
    for i in range(4):
        await aclient.enqueue(queue, f"j{i}", "ok" if i else "bad")
    done = []
    async for job in aclient.worker(queue, "aw", lease=5, idle=0.5, max_attempts=1):
        try:
            async with job:
                if job.text == "bad":
                    raise RuntimeError("bad payload")
                done.append(job.id)
        except RuntimeError:
            pass
    assert sorted(done) == ["j1", "j2", "j3"]
    bad = await aclient.queue_item(queue, "j0")
    assert bad is not None and bad.state == "dead" and "bad payload" in (bad.last_error or "")


async def test_an_async_job_left_behind_by_break_is_handed_out_again(
    aclient: swarmstate.AsyncClient, ns: str
) -> None:
    queue = f"{ns}.jobs"
    await aclient.enqueue(queue, "x", "1")
    async for job in aclient.worker(queue, "quitter", lease=0.5, idle=0.5):
        assert job.attempt == 1
        break
    again = await aclient.claim(queue, "successor", lease=5, wait=20)
    assert again is not None and (again.id, again.attempt) == ("x", 2)
    await aclient.complete(again)
