"""The async client: :class:`AsyncClient`, over ``httpx.AsyncClient``, and its helpers that
hold things in the background with asyncio tasks (:class:`AsyncLock`,
:class:`AsyncLeadership`, :class:`AsyncWorker`).

It runs the same plans as the sync :class:`~swarmstate.Client`, so both ask and read alike;
each method has the sync one's name, arguments and result, awaited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, Iterable, TypeVar

import httpx

from . import _protocol as proto
from ._errors import LockLost, SwarmstateError
from ._http import stream_timeout_of, timeout_of, transport_error
from ._models import (
    Claim,
    Delete,
    EntriesPage,
    Entry,
    ItemStatus,
    KeysPage,
    Leader,
    LeadershipHandle,
    LockHandle,
    LockHolder,
    Put,
    Status,
    TxnOp,
    TxnResult,
    Value,
    WatchEvent,
)
from ._protocol import Answer, Duration, Effect, Plan, Request
from ._watch import (
    DEFAULT_RESUME_WINDOW,
    Dropped,
    End,
    ObserveSession,
    SseParser,
    Start,
    WatchSession,
    stream_timeout,
)

__all__ = [
    "AsyncClient",
    "AsyncWatch",
    "AsyncLeaderObserver",
    "AsyncLock",
    "AsyncLeadership",
    "AsyncWorker",
    "AsyncJob",
]

log = logging.getLogger("swarmstate")

T = TypeVar("T")
H = TypeVar("H", LockHandle, LeadershipHandle)

_STREAM_ERRORS = (httpx.HTTPError, httpx.StreamError)


class AsyncClient:
    """The async twin of :class:`~swarmstate.Client`: the same methods, awaited. Use it
    within one event loop; close it with ``await client.aclose()`` or ``async with``."""

    def __init__(
        self,
        url: str = proto.DEFAULT_PORT_URL,
        *,
        timeout: float = 30.0,
        resume_window: float = DEFAULT_RESUME_WINDOW,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.resume_window = resume_window
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout)
        self._status: Status | None = None

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, request: Request[T]) -> T | None:
        try:
            response = await self._http.request(
                request.method,
                request.path,
                params=request.params,
                headers=request.headers,
                content=request.content,
                timeout=timeout_of(self.timeout, request),
            )
        except (httpx.HTTPError, httpx.InvalidURL) as err:
            raise transport_error(err, request.operation, request.effect, self.url) from err
        return proto.answer_result(request, Answer(response.status_code, response.headers,
                                                   response.content))

    async def _run(self, plan: Plan[T]) -> T:
        try:
            request = next(plan)
            while True:
                try:
                    outcome = await self._send(request)
                except SwarmstateError as err:
                    request = plan.throw(err)
                else:
                    request = plan.send(outcome)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    # Single keys ---------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """See :meth:`Client.get`."""
        return await self._run(proto.get(key))

    async def put(
        self,
        key: str,
        value: Value,
        *,
        ttl: Duration | None = None,
        if_absent: bool = False,
        if_revision: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """See :meth:`Client.put`."""
        return await self._run(proto.put(key, value, ttl=ttl, if_absent=if_absent,
                                         if_revision=if_revision,
                                         idempotency_key=idempotency_key))

    async def delete(self, key: str, *, if_revision: int | None = None) -> int | None:
        """See :meth:`Client.delete`."""
        return await self._run(proto.delete(key, if_revision=if_revision))

    # Listings ------------------------------------------------------------------------------

    async def keys(
        self, pattern: str, *, limit: int | None = None, after: str | None = None
    ) -> KeysPage:
        """See :meth:`Client.keys`."""
        return await self._run(proto.keys(pattern, limit=limit, after=after))

    async def entries(
        self, pattern: str, *, limit: int | None = None, after: str | None = None
    ) -> EntriesPage:
        """See :meth:`Client.entries`."""
        return await self._run(proto.entries(pattern, limit=limit, after=after))

    async def iter_keys(self, pattern: str, *, page_size: int | None = None) -> AsyncIterator[str]:
        """See :meth:`Client.iter_keys`."""
        after: str | None = None
        while True:
            page = await self.keys(pattern, limit=page_size, after=after)
            for key in page.keys:
                yield key
            if page.next is None:
                return
            after = page.next

    async def iter_entries(
        self, pattern: str, *, page_size: int | None = None
    ) -> AsyncIterator[Entry]:
        """See :meth:`Client.iter_entries`."""
        after: str | None = None
        while True:
            page = await self.entries(pattern, limit=page_size, after=after)
            for entry in page.entries:
                yield entry
            if page.next is None:
                return
            after = page.next

    # Transactions and watches --------------------------------------------------------------

    async def txn(self, ops: Iterable[TxnOp]) -> list[TxnResult]:
        """See :meth:`Client.txn`."""
        return await self._run(proto.txn(ops))

    def watch(self, pattern: str, *, start: Start = "now") -> AsyncWatch:
        """See :meth:`Client.watch`: an async iterator, opened by ``await w.open()``,
        ``async with`` or the first ``anext``."""
        return AsyncWatch(self, pattern, start)

    async def status(self) -> Status:
        """See :meth:`Client.status`."""
        status = await self._run(proto.status())
        self._status = status
        return status

    async def healthy(self) -> bool:
        """See :meth:`Client.healthy`."""
        return await self._run(proto.health())

    async def _known_status(self) -> Status | None:
        if self._status is None:
            try:
                await self.status()
            except SwarmstateError:
                return None
        return self._status

    # Locks ---------------------------------------------------------------------------------

    async def acquire_lock(
        self, key: str, *, ttl: Duration, wait: Duration | None = None, owner: str | None = None
    ) -> LockHandle:
        """See :meth:`Client.acquire_lock`."""
        return await self._run(proto.acquire_lock(key, ttl=ttl, wait=wait,
                                                  owner=owner or proto.default_owner()))

    async def refresh_lock(self, handle: LockHandle) -> LockHandle:
        """See :meth:`Client.refresh_lock`."""
        return await self._run(proto.refresh_lock(handle))

    async def release_lock(self, handle: LockHandle) -> None:
        """See :meth:`Client.release_lock`."""
        return await self._run(proto.release_lock(handle))

    async def lock_txn(self, handle: LockHandle, ops: Iterable[TxnOp]) -> list[TxnResult]:
        """See :meth:`Client.lock_txn`."""
        return await self._run(proto.lock_txn(handle, ops))

    async def lock_holder(self, key: str) -> LockHolder | None:
        """See :meth:`Client.lock_holder`."""
        return await self._run(proto.lock_holder(key))

    def lock(
        self, key: str, *, ttl: Duration = 10, wait: Duration | None = 30, owner: str | None = None
    ) -> AsyncLock:
        """See :meth:`Client.lock`: ``async with client.lock(...) as lock``."""
        return AsyncLock(self, key, ttl=ttl, wait=wait, owner=owner or proto.default_owner())

    # Elections -----------------------------------------------------------------------------

    async def acquire_leadership(
        self, name: str, *, candidate: str, ttl: Duration, wait: Duration | None = None
    ) -> LeadershipHandle:
        """See :meth:`Client.acquire_leadership`."""
        return await self._run(proto.acquire_leadership(name, candidate=candidate, ttl=ttl,
                                                        wait=wait))

    async def refresh_leadership(self, handle: LeadershipHandle) -> LeadershipHandle:
        """See :meth:`Client.refresh_leadership`."""
        return await self._run(proto.refresh_leadership(handle))

    async def resign_leadership(self, handle: LeadershipHandle) -> None:
        """See :meth:`Client.resign_leadership`."""
        return await self._run(proto.resign_leadership(handle))

    async def leadership_txn(
        self, handle: LeadershipHandle, ops: Iterable[TxnOp]
    ) -> list[TxnResult]:
        """See :meth:`Client.leadership_txn`."""
        return await self._run(proto.leadership_txn(handle, ops))

    async def leader(self, name: str) -> Leader | None:
        """See :meth:`Client.leader`."""
        return await self._run(proto.leader(name))

    def observe_leader(self, name: str) -> AsyncLeaderObserver:
        """See :meth:`Client.observe_leader`: an async iterator."""
        return AsyncLeaderObserver(self, name)

    def campaign(
        self, name: str, candidate: str, *, ttl: Duration = 10, wait: Duration | None = 30
    ) -> AsyncLeadership:
        """See :meth:`Client.campaign`: ``async with client.campaign(...) as leadership``."""
        return AsyncLeadership(self, name, candidate=candidate, ttl=ttl, wait=wait)

    # Queues --------------------------------------------------------------------------------

    async def enqueue(self, queue: str, id: str, payload: Value) -> bool:
        """See :meth:`Client.enqueue`."""
        return await self._run(proto.enqueue(queue, id, payload))

    async def claim(
        self,
        queue: str,
        worker: str,
        *,
        lease: Duration = 30,
        wait: Duration | None = None,
        max_attempts: int | None = None,
    ) -> Claim | None:
        """See :meth:`Client.claim`."""
        return await self._run(proto.claim(queue, worker=worker, lease=lease, wait=wait,
                                           max_attempts=max_attempts))

    async def heartbeat(self, claim: Claim) -> Claim:
        """See :meth:`Client.heartbeat`."""
        return await self._run(proto.heartbeat(claim))

    async def complete(self, claim: Claim, ops: Iterable[TxnOp] | None = None) -> list[TxnResult]:
        """See :meth:`Client.complete`."""
        return await self._run(proto.complete(claim, ops))

    async def fail(self, claim: Claim, reason: str, *, max_attempts: int | None = None) -> str:
        """See :meth:`Client.fail`."""
        return await self._run(proto.fail(claim, reason, max_attempts=max_attempts))

    async def queue_items(self, queue: str) -> list[ItemStatus]:
        """See :meth:`Client.queue_items`."""
        return await self._run(proto.queue_items(queue))

    async def queue_item(self, queue: str, id: str) -> ItemStatus | None:
        """See :meth:`Client.queue_item`."""
        return await self._run(proto.queue_item(queue, id))

    def worker(
        self,
        queue: str,
        worker: str,
        *,
        lease: Duration = 30,
        idle: Duration | None = None,
        max_attempts: int | None = None,
    ) -> AsyncWorker:
        """See :meth:`Client.worker`: ``async for job in ...: async with job: ...``."""
        return AsyncWorker(self, queue, worker, lease=lease, idle=idle, max_attempts=max_attempts)


# Streams ---------------------------------------------------------------------------------------


class _AsyncStream:
    """One SSE connection: opens, reads lines, closes."""

    def __init__(self) -> None:
        self._cm: Any = None
        self._lines: AsyncIterator[str] | None = None
        self.parser = SseParser()

    @property
    def open(self) -> bool:
        return self._lines is not None

    async def connect(self, client: AsyncClient, path: str, params: dict[str, str],
                      silence: float, operation: str) -> httpx.Response:
        """Connects; raises the answer's error when it is not 200 (after closing)."""
        cm = client._http.stream("GET", path, params=params,
                                 headers={"accept": "text/event-stream"},
                                 timeout=stream_timeout_of(client.timeout, silence))
        response = await cm.__aenter__()
        if response.status_code != 200:
            body = await response.aread()
            await cm.__aexit__(None, None, None)
            request = Request("GET", path, operation, Effect.READS, lambda a: None)
            raise proto.answer_error(request, Answer(response.status_code, response.headers, body))
        self._cm, self._lines, self.parser = cm, response.aiter_lines(), SseParser()
        return response

    async def line(self) -> str:
        assert self._lines is not None
        return await self._lines.__anext__()

    async def close(self) -> None:
        cm, self._cm, self._lines = self._cm, None, None
        if cm is not None:
            try:
                await cm.__aexit__(None, None, None)
            except _STREAM_ERRORS:
                pass


class AsyncWatch:
    """The async twin of :class:`~swarmstate.Watch`."""

    def __init__(self, client: AsyncClient, pattern: str, start: Start) -> None:
        self._client = client
        self.pattern = pattern
        self._start = start
        self._session: WatchSession | None = None
        self._silence = stream_timeout(None)
        self._stream = _AsyncStream()
        self._pending: list[WatchEvent] = []
        self._ended = False

    @property
    def resume_from(self) -> int | None:
        """The revision the watch would resume from now."""
        return self._session.resume_from if self._session else None

    async def _ensure_session(self) -> WatchSession:
        if self._session is None:
            status = await self._client._known_status()
            self._session = WatchSession(
                self.pattern, self._start, resume_window=self._client.resume_window,
                durable=status.capabilities.durable if status else True)
            self._silence = stream_timeout(status.watch_progress_ms if status else None)
        return self._session

    async def open(self) -> AsyncWatch:
        """See :meth:`Watch.open`."""
        session = await self._ensure_session()
        while not self._stream.open and not self._ended:
            await self._connect()
        while not session.anchored and not self._ended:
            event = await self._read_one()
            if event is not None:
                self._pending.append(event)
        return self

    async def _after(self, decision: Any) -> None:
        if isinstance(decision, End):
            self._ended = True
        else:
            await asyncio.sleep(decision.delay)

    async def _connect(self) -> None:
        session = await self._ensure_session()
        try:
            response = await self._stream.connect(self._client, "/v1/watch", session.params(),
                                                  self._silence, f"watch {self.pattern}")
        except _STREAM_ERRORS as err:
            await self._after(session.dropped(err))
            return
        except SwarmstateError as err:
            await self._after(session.refused(err))
            return
        if not session.opened(response.headers):
            await self._stream.close()
            self._ended = True

    async def _read_one(self) -> WatchEvent | None:
        session = await self._ensure_session()
        if not self._stream.open:
            await self._connect()
            return None
        try:
            line = await self._stream.line()
        except StopAsyncIteration:
            await self._stream.close()
            await self._after(session.dropped("the stream ended"))
            return None
        except _STREAM_ERRORS as err:
            await self._stream.close()
            await self._after(session.dropped(err))
            return None
        sse = self._stream.parser.feed(line)
        if sse is None:
            return None
        try:
            return session.event(sse)
        except Dropped as why:
            await self._stream.close()
            await self._after(session.dropped(str(why)))
            return None
        except BaseException:
            await self._stream.close()
            self._ended = True
            raise

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            if self._pending:
                return self._pending.pop(0)
            if self._ended:
                await self._stream.close()
                raise StopAsyncIteration
            event = await self._read_one()
            if event is not None:
                return event

    async def aclose(self) -> None:
        """Stops the watch."""
        self._ended = True
        await self._stream.close()

    async def __aenter__(self) -> AsyncWatch:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncLeaderObserver:
    """The async twin of :class:`~swarmstate.LeaderObserver`."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = client
        self.name = name
        self._session = ObserveSession(name, resume_window=client.resume_window)
        self._stream = _AsyncStream()
        self._closed = False

    async def _sleep_after_drop(self, reason: BaseException | str) -> None:
        await asyncio.sleep(self._session.dropped(reason).delay)

    def __aiter__(self) -> AsyncLeaderObserver:
        return self

    async def __anext__(self) -> Leader | None:
        path = f"/v1/elections/{proto.name_segment(self.name)}/observe"
        while True:
            if self._closed:
                raise StopAsyncIteration
            if not self._stream.open:
                status = await self._client._known_status()
                silence = stream_timeout(status.watch_progress_ms if status else None)
                try:
                    await self._stream.connect(self._client, path, {}, silence,
                                               f"observe {self.name}")
                    self._session.opened()
                except _STREAM_ERRORS as err:
                    await self._sleep_after_drop(err)
                except SwarmstateError as err:
                    await asyncio.sleep(self._session.refused(err).delay)
                continue
            try:
                line = await self._stream.line()
            except (StopAsyncIteration, *_STREAM_ERRORS) as err:
                await self._stream.close()
                await self._sleep_after_drop(str(err) or "the stream ended")
                continue
            sse = self._stream.parser.feed(line)
            if sse is None:
                continue
            try:
                changed, leader = self._session.event(sse)
            except Dropped as why:
                await self._stream.close()
                await self._sleep_after_drop(str(why))
                continue
            if changed:
                return leader

    async def aclose(self) -> None:
        self._closed = True
        await self._stream.close()

    async def __aenter__(self) -> AsyncLeaderObserver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# Holding a lock or a leadership -----------------------------------------------------------------


class _AsyncHolding(Generic[H]):
    """The async twin of the sync holding: refreshed by an asyncio task."""

    _what = "lock"

    def __init__(self, client: AsyncClient, ttl: Duration) -> None:
        self._client = client
        self._ttl = proto.duration_seconds(ttl)
        self._interval = proto.refresh_interval(ttl)
        self._handle: H | None = None
        # Held while the handle is replaced or used (see the sync holding).
        self._mutex = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._released = False
        self.lost = asyncio.Event()
        """Set once the holding was found lost."""

    async def _acquire(self) -> H:
        raise NotImplementedError

    async def _refresh(self, handle: H) -> H:
        raise NotImplementedError

    async def _release(self, handle: H) -> None:
        raise NotImplementedError

    async def _txn(self, handle: H, ops: list[TxnOp]) -> list[TxnResult]:
        raise NotImplementedError

    def _key_name(self) -> str:
        raise NotImplementedError

    @property
    def handle(self) -> H:
        """The newest handle."""
        if self._handle is None:
            raise RuntimeError(f"the {self._what} is not held yet: enter it first")
        return self._handle

    async def acquire(self) -> None:
        """Acquires and starts refreshing in the background."""
        if self._handle is not None:
            raise RuntimeError(f"the {self._what} is already held")
        self._handle = await self._acquire()
        self._task = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        last_success = time.monotonic()
        delay = self._interval
        while True:
            await asyncio.sleep(delay)
            async with self._mutex:
                try:
                    self._handle = await self._refresh(self.handle)
                    last_success, delay = time.monotonic(), self._interval
                except LockLost:
                    self.lost.set()
                    return
                except SwarmstateError as err:
                    if time.monotonic() - last_success >= self._ttl:
                        log.warning("%s lost: no refresh succeeded for its TTL (%s)", self._what, err)
                        self.lost.set()
                        return
                    delay = min(self._interval, 0.1 + self._interval / 10)

    def check(self) -> None:
        """Raises :class:`~swarmstate.LockLost` if the holding was found lost."""
        if self.lost.is_set():
            raise LockLost(f"the {self._what} was lost", problem={"key": self._key_name()})

    async def fenced_txn(self, ops: Iterable[TxnOp]) -> list[TxnResult]:
        """See :meth:`Lock.fenced_txn`."""
        ops = list(ops)
        self.check()
        async with self._mutex:
            try:
                return await self._txn(self.handle, ops)
            except LockLost:
                self.lost.set()
                raise

    async def fenced_put(self, key: str, value: Value, *, ttl: Duration | None = None) -> int:
        """See :meth:`Lock.fenced_put`."""
        revision = (await self.fenced_txn([Put(key, value, ttl=ttl)]))[0].revision
        assert revision is not None
        return revision

    async def fenced_delete(self, key: str, *, if_revision: int | None = None) -> int | None:
        """See :meth:`Lock.fenced_delete`."""
        return (await self.fenced_txn([Delete(key, if_revision=if_revision)]))[0].revision

    async def _stop_refreshing(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            # Wait for a refresh in flight to settle, so the release sends the newest handle.
            async with self._mutex:
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def release(self) -> None:
        """See :meth:`Lock.release`."""
        await self._stop_refreshing()
        if self._released:
            return
        self._released = True
        self.check()
        async with self._mutex:
            try:
                await self._release(self.handle)
            except LockLost:
                self.lost.set()
                raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.release()
        except LockLost:
            if exc_type is None:
                raise
        except SwarmstateError as err:
            log.warning("release of the %s failed; it expires after its TTL: %s", self._what, err)


class AsyncLock(_AsyncHolding[LockHandle]):
    """The async twin of :class:`~swarmstate.Lock`."""

    _what = "lock"

    def __init__(self, client: AsyncClient, key: str, *, ttl: Duration, wait: Duration | None,
                 owner: str) -> None:
        super().__init__(client, ttl)
        self.key = key
        self.owner = owner
        self._ttl_arg = ttl
        self._wait = wait

    def _key_name(self) -> str:
        return self.key

    async def _acquire(self) -> LockHandle:
        return await self._client.acquire_lock(self.key, ttl=self._ttl_arg, wait=self._wait,
                                               owner=self.owner)

    async def _refresh(self, handle: LockHandle) -> LockHandle:
        return await self._client.refresh_lock(handle)

    async def _release(self, handle: LockHandle) -> None:
        await self._client.release_lock(handle)

    async def _txn(self, handle: LockHandle, ops: list[TxnOp]) -> list[TxnResult]:
        return await self._client.lock_txn(handle, ops)

    @property
    def token(self) -> int:
        """The fencing token."""
        return self.handle.token

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self


class AsyncLeadership(_AsyncHolding[LeadershipHandle]):
    """The async twin of :class:`~swarmstate.Leadership`."""

    _what = "leadership"

    def __init__(self, client: AsyncClient, name: str, *, candidate: str, ttl: Duration,
                 wait: Duration | None) -> None:
        super().__init__(client, ttl)
        self.name = name
        self.candidate = candidate
        self._ttl_arg = ttl
        self._wait = wait

    def _key_name(self) -> str:
        return self.name

    async def _acquire(self) -> LeadershipHandle:
        return await self._client.acquire_leadership(self.name, candidate=self.candidate,
                                                     ttl=self._ttl_arg, wait=self._wait)

    async def _refresh(self, handle: LeadershipHandle) -> LeadershipHandle:
        return await self._client.refresh_leadership(handle)

    async def _release(self, handle: LeadershipHandle) -> None:
        await self._client.resign_leadership(handle)

    async def _txn(self, handle: LeadershipHandle, ops: list[TxnOp]) -> list[TxnResult]:
        return await self._client.leadership_txn(handle, ops)

    @property
    def term(self) -> int:
        """The term."""
        return self.handle.term

    async def resign(self) -> None:
        """Gives the leadership up now."""
        await self.release()

    async def __aenter__(self) -> AsyncLeadership:
        await self.acquire()
        return self


# Queue workers ---------------------------------------------------------------------------------


class AsyncJob:
    """The async twin of :class:`~swarmstate.Job`: ``async with job``."""

    def __init__(self, client: AsyncClient, claim: Claim, max_attempts: int | None) -> None:
        self._client = client
        self._claim = claim
        self._max_attempts = max_attempts
        self._interval = proto.refresh_interval(claim.lease)
        self._lease = proto.duration_seconds(claim.lease)
        self._mutex = asyncio.Lock()
        self.lost = asyncio.Event()
        self.finished = False
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._heartbeats())

    @property
    def claim(self) -> Claim:
        return self._claim

    @property
    def id(self) -> str:
        return self._claim.id

    @property
    def payload(self) -> bytes:
        return self._claim.payload

    @property
    def text(self) -> str:
        return self._claim.text

    @property
    def attempt(self) -> int:
        return self._claim.attempt

    @property
    def token(self) -> int:
        return self._claim.token

    async def _heartbeats(self) -> None:
        last_success = time.monotonic()
        delay = self._interval
        while True:
            await asyncio.sleep(delay)
            async with self._mutex:
                try:
                    self._claim = await self._client.heartbeat(self._claim)
                    last_success, delay = time.monotonic(), self._interval
                except LockLost:
                    self.lost.set()
                    return
                except SwarmstateError as err:
                    if time.monotonic() - last_success >= self._lease:
                        log.warning("claim of %s lost: no heartbeat succeeded (%s)", self.id, err)
                        self.lost.set()
                        return
                    delay = min(self._interval, 0.1 + self._interval / 10)

    def check(self) -> None:
        """Raises :class:`~swarmstate.LockLost` if the claim was found lost."""
        if self.lost.is_set():
            raise LockLost(f"the claim of item {self.id} was lost", problem={"key": self.id})

    async def _stop_heartbeats(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            async with self._mutex:
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _finish(self, call: Callable[[Claim], Awaitable[T]]) -> T:
        if self.finished:
            raise RuntimeError(f"job {self.id} is already finished")
        await self._stop_heartbeats()
        self.finished = True
        self.check()
        try:
            return await call(self._claim)
        except LockLost:
            self.lost.set()
            raise

    async def complete(self, ops: Iterable[TxnOp] | None = None) -> list[TxnResult]:
        """See :meth:`Job.complete`."""
        return await self._finish(lambda claim: self._client.complete(claim, ops))

    async def fail(self, reason: str) -> str:
        """See :meth:`Job.fail`."""
        return await self._finish(
            lambda claim: self._client.fail(claim, reason, max_attempts=self._max_attempts))

    async def abandon(self) -> None:
        """See :meth:`Job.abandon`."""
        await self._stop_heartbeats()
        self.finished = True

    async def __aenter__(self) -> AsyncJob:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.finished:
            await self._stop_heartbeats()
            return
        if exc is None:
            await self.complete()
            return
        try:
            await self.fail(f"{type(exc).__name__}: {exc}")
        except SwarmstateError as err:
            log.warning("could not fail item %s after %r: %s", self.id, exc, err)


class AsyncWorker:
    """The async twin of :class:`~swarmstate.Worker`::

        async for job in client.worker("jobs", "worker-1", lease=30):
            async with job:
                await handle(job.payload)
    """

    def __init__(self, client: AsyncClient, queue: str, worker: str, *, lease: Duration,
                 idle: Duration | None, max_attempts: int | None) -> None:
        self._client = client
        self.queue = queue
        self.worker = worker
        self._lease = lease
        self._idle = proto.duration_seconds(idle) if idle is not None else None
        self._max_attempts = max_attempts
        self._current: AsyncJob | None = None
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[AsyncJob]:
        try:
            while not self._closed:
                claim = await self._client.claim(
                    self.queue, self.worker, lease=self._lease,
                    wait=self._idle if self._idle is not None else proto.MAX_SERVER_WAIT,
                    max_attempts=self._max_attempts)
                if claim is None:
                    if self._idle is not None:
                        return
                    continue
                self._current = job = AsyncJob(self._client, claim, self._max_attempts)
                yield job
                if not job.finished:
                    await job.complete()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stops; a job still running stops heartbeating (its lease then expires)."""
        self._closed = True
        job, self._current = self._current, None
        if job is not None and not job.finished:
            await job.abandon()

    async def __aenter__(self) -> AsyncWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
