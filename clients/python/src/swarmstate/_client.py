"""The sync client: :class:`Client`, over ``httpx.Client``, and its helpers that hold things in
the background with threads (:class:`Lock`, :class:`Leadership`, :class:`Worker`).

Every method runs a plan from :mod:`swarmstate._protocol`; :mod:`swarmstate._async_client` runs
the same plans, so both clients ask and read alike.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

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

__all__ = ["Client", "Watch", "LeaderObserver", "Lock", "Leadership", "Worker", "Job"]

log = logging.getLogger("swarmstate")

T = TypeVar("T")
H = TypeVar("H", LockHandle, LeadershipHandle)

_STREAM_ERRORS = (httpx.HTTPError, httpx.StreamError)


class Client:
    """A client of a ``swarmstate serve`` server.

    ``timeout`` bounds every request (seconds, 30 by default): a read without an answer in time
    is :class:`~swarmstate.Unavailable`, a write :class:`~swarmstate.Ambiguous`. Requests that
    wait on the server (a lock acquire, a claim) get their wait on top. ``resume_window`` is how
    long a dropped watch keeps reconnecting. The client keeps connections alive; close it (or
    use it as a context manager) when done. It is safe to share between threads.
    """

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
        self._http = httpx.Client(base_url=self.url, timeout=timeout)
        self._status: Status | None = None

    # Plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, request: Request[T]) -> T | None:
        try:
            response = self._http.request(
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

    def _run(self, plan: Plan[T]) -> T:
        try:
            request = next(plan)
            while True:
                try:
                    outcome = self._send(request)
                except SwarmstateError as err:
                    request = plan.throw(err)
                else:
                    request = plan.send(outcome)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    # Single keys ---------------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """The entry at ``key``, or ``None`` when it is absent. Linearizable."""
        return self._run(proto.get(key))

    def put(
        self,
        key: str,
        value: Value,
        *,
        ttl: Duration | None = None,
        if_absent: bool = False,
        if_revision: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        """Writes ``value`` (bytes, or str as UTF-8) and returns its revision.

        ``if_absent``: create only (else :class:`~swarmstate.AlreadyExists`); ``if_revision``:
        update only at that revision (else :class:`~swarmstate.RevisionMismatch`). ``ttl``
        (seconds or ``"30s"``) makes the entry expire; without it the entry is permanent, also
        when it had a TTL. With ``idempotency_key``, a retry of an applied write answers the
        first revision and applies nothing again.
        """
        return self._run(proto.put(key, value, ttl=ttl, if_absent=if_absent,
                                   if_revision=if_revision, idempotency_key=idempotency_key))

    def delete(self, key: str, *, if_revision: int | None = None) -> int | None:
        """Deletes ``key``; returns the delete's revision, or ``None`` when an unconditional
        delete found nothing. With ``if_revision`` an absent key fails the condition."""
        return self._run(proto.delete(key, if_revision=if_revision))

    # Listings ------------------------------------------------------------------------------

    def keys(self, pattern: str, *, limit: int | None = None, after: str | None = None) -> KeysPage:
        """One page of the keys ``pattern`` selects (``*``, ``prefix.*`` or one key)."""
        return self._run(proto.keys(pattern, limit=limit, after=after))

    def entries(
        self, pattern: str, *, limit: int | None = None, after: str | None = None
    ) -> EntriesPage:
        """One page of the entries ``pattern`` selects, read as one snapshot."""
        return self._run(proto.entries(pattern, limit=limit, after=after))

    def iter_keys(self, pattern: str, *, page_size: int | None = None) -> Iterator[str]:
        """Every key ``pattern`` selects, page after page (pages are read independently)."""
        after: str | None = None
        while True:
            page = self.keys(pattern, limit=page_size, after=after)
            yield from page.keys
            if page.next is None:
                return
            after = page.next

    def iter_entries(self, pattern: str, *, page_size: int | None = None) -> Iterator[Entry]:
        """Every entry ``pattern`` selects, page after page (each page its own snapshot)."""
        after: str | None = None
        while True:
            page = self.entries(pattern, limit=page_size, after=after)
            yield from page.entries
            if page.next is None:
                return
            after = page.next

    # Transactions --------------------------------------------------------------------------

    def txn(self, ops: Iterable[TxnOp]) -> list[TxnResult]:
        """Applies ``ops`` (:class:`~swarmstate.Put`, :class:`~swarmstate.Delete`,
        :class:`~swarmstate.Check`) all or none. A failed condition raises its
        :class:`~swarmstate.Conflict` with ``index`` naming the operation."""
        return self._run(proto.txn(ops))

    # Watches -------------------------------------------------------------------------------

    def watch(self, pattern: str, *, start: Start = "now") -> Watch:
        """A watch of the keys ``pattern`` selects, as an iterator of
        :data:`~swarmstate.WatchEvent`.

        ``start``: ``"now"`` (changes after the watch opened), ``"snapshot"`` (the current
        entries, :class:`~swarmstate.CaughtUp`, then changes) or a revision. The watch opens on
        :meth:`Watch.open`, on entering it as a context manager, or on the first ``next``; open
        it before writing if it must see that write. It reconnects by itself after a drop or a
        server restart, from the revision after the last one it delivered, and raises
        :class:`~swarmstate.WatchLagged` or :class:`~swarmstate.Compacted` rather than skip.
        """
        return Watch(self, pattern, start)

    def status(self) -> Status:
        """The server's version, backend, capabilities and current revision."""
        status = self._run(proto.status())
        self._status = status
        return status

    def healthy(self) -> bool:
        """True when the server and its store answer; raises the store's error otherwise."""
        return self._run(proto.health())

    def _known_status(self) -> Status | None:
        if self._status is None:
            try:
                self.status()
            except SwarmstateError:
                return None
        return self._status

    # Locks ---------------------------------------------------------------------------------

    def acquire_lock(
        self, key: str, *, ttl: Duration, wait: Duration | None = None, owner: str | None = None
    ) -> LockHandle:
        """Takes the lock ``key`` (waiting up to ``wait``, first come first served) and returns
        its handle; past the wait :class:`~swarmstate.LockHeld`. Waits over the server's 5
        minutes ask again."""
        return self._run(proto.acquire_lock(key, ttl=ttl, wait=wait,
                                            owner=owner or proto.default_owner()))

    def refresh_lock(self, handle: LockHandle) -> LockHandle:
        """Renews the lock's TTL; returns the new handle, to be used from now on.
        :class:`~swarmstate.LockLost` when it is no longer held by this handle."""
        return self._run(proto.refresh_lock(handle))

    def release_lock(self, handle: LockHandle) -> None:
        """Releases the lock (:class:`~swarmstate.LockLost` if it was no longer ours)."""
        return self._run(proto.release_lock(handle))

    def lock_txn(self, handle: LockHandle, ops: Iterable[TxnOp]) -> list[TxnResult]:
        """A transaction applied only while ``handle`` holds the lock."""
        return self._run(proto.lock_txn(handle, ops))

    def lock_holder(self, key: str) -> LockHolder | None:
        """Who holds the lock ``key``, or ``None`` when it is free."""
        return self._run(proto.lock_holder(key))

    def lock(
        self, key: str, *, ttl: Duration = 10, wait: Duration | None = 30, owner: str | None = None
    ) -> Lock:
        """The lock ``key`` as a context manager: acquired on entry (waiting up to ``wait``),
        refreshed every third of ``ttl`` in a background thread, released on exit."""
        return Lock(self, key, ttl=ttl, wait=wait, owner=owner or proto.default_owner())

    # Elections -----------------------------------------------------------------------------

    def acquire_leadership(
        self, name: str, *, candidate: str, ttl: Duration, wait: Duration | None = None
    ) -> LeadershipHandle:
        """Campaigns in election ``name`` and returns the leadership handle once leader; past
        ``wait`` :class:`~swarmstate.LockHeld` naming the leader."""
        return self._run(proto.acquire_leadership(name, candidate=candidate, ttl=ttl, wait=wait))

    def refresh_leadership(self, handle: LeadershipHandle) -> LeadershipHandle:
        """Renews the leadership's TTL; returns the new handle."""
        return self._run(proto.refresh_leadership(handle))

    def resign_leadership(self, handle: LeadershipHandle) -> None:
        """Gives the leadership up; the next campaigner takes over at once."""
        return self._run(proto.resign_leadership(handle))

    def leadership_txn(self, handle: LeadershipHandle, ops: Iterable[TxnOp]) -> list[TxnResult]:
        """A transaction applied only while ``handle`` is the leadership."""
        return self._run(proto.leadership_txn(handle, ops))

    def leader(self, name: str) -> Leader | None:
        """The current leader of ``name``, or ``None``."""
        return self._run(proto.leader(name))

    def observe_leader(self, name: str) -> LeaderObserver:
        """The leader of ``name`` now, then each change (``None`` while there is none), as an
        iterator that reconnects by itself."""
        return LeaderObserver(self, name)

    def campaign(
        self, name: str, candidate: str, *, ttl: Duration = 10, wait: Duration | None = 30
    ) -> Leadership:
        """Leadership of ``name`` as a context manager: campaigns on entry, refreshes in the
        background, resigns on exit."""
        return Leadership(self, name, candidate=candidate, ttl=ttl, wait=wait)

    # Queues --------------------------------------------------------------------------------

    def enqueue(self, queue: str, id: str, payload: Value) -> bool:
        """Adds item ``id``; False when an item with this id already exists (in any state)."""
        return self._run(proto.enqueue(queue, id, payload))

    def claim(
        self,
        queue: str,
        worker: str,
        *,
        lease: Duration = 30,
        wait: Duration | None = None,
        max_attempts: int | None = None,
    ) -> Claim | None:
        """Claims one item for ``lease``, waiting up to ``wait``; ``None`` when nothing was
        claimable in time."""
        return self._run(proto.claim(queue, worker=worker, lease=lease, wait=wait,
                                     max_attempts=max_attempts))

    def heartbeat(self, claim: Claim) -> Claim:
        """Extends the claim's lease; returns the new claim, to be used from now on."""
        return self._run(proto.heartbeat(claim))

    def complete(self, claim: Claim, ops: Iterable[TxnOp] | None = None) -> list[TxnResult]:
        """Marks the item done, applying ``ops`` in the same transaction, exactly when the claim
        is still current (else :class:`~swarmstate.LockLost`). Returns the results of ``ops``."""
        return self._run(proto.complete(claim, ops))

    def fail(self, claim: Claim, reason: str, *, max_attempts: int | None = None) -> str:
        """Gives the item back after a failed attempt: ``"pending"`` or ``"dead"``."""
        return self._run(proto.fail(claim, reason, max_attempts=max_attempts))

    def queue_items(self, queue: str) -> list[ItemStatus]:
        """Every item of ``queue``, by id."""
        return self._run(proto.queue_items(queue))

    def queue_item(self, queue: str, id: str) -> ItemStatus | None:
        """One item's status, or ``None`` when there is no such item."""
        return self._run(proto.queue_item(queue, id))

    def worker(
        self,
        queue: str,
        worker: str,
        *,
        lease: Duration = 30,
        idle: Duration | None = None,
        max_attempts: int | None = None,
    ) -> Worker:
        """Jobs from ``queue`` as an iterator of :class:`Job`; see :class:`Worker`."""
        return Worker(self, queue, worker, lease=lease, idle=idle, max_attempts=max_attempts)


# Watches ---------------------------------------------------------------------------------------


class Watch:
    """An iterator of changes that resumes by revision; see :meth:`Client.watch`."""

    def __init__(self, client: Client, pattern: str, start: Start) -> None:
        self._client = client
        self.pattern = pattern
        status = client._known_status()
        self._session = WatchSession(
            pattern,
            start,
            resume_window=client.resume_window,
            durable=status.capabilities.durable if status else True,
        )
        self._silence = stream_timeout(status.watch_progress_ms if status else None)
        self._stream: Any = None
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] | None = None
        self._parser = SseParser()
        self._pending: list[WatchEvent] = []
        self._ended = False

    @property
    def resume_from(self) -> int | None:
        """The revision the watch would resume from now."""
        return self._session.resume_from

    def open(self) -> Watch:
        """Connects, and for a watch from ``now`` waits until the server fixed its starting
        point, so a write made after this returns is seen."""
        while self._lines is None and not self._ended:
            self._connect()
        while not self._session.anchored and not self._ended:
            event = self._read_one()
            if event is not None:
                self._pending.append(event)
        return self

    def _connect(self) -> None:
        try:
            stream = self._client._http.stream(
                "GET", "/v1/watch", params=self._session.params(),
                headers={"accept": "text/event-stream"},
                timeout=stream_timeout_of(self._client.timeout, self._silence),
            )
            response = stream.__enter__()
        except _STREAM_ERRORS as err:
            self._after(self._session.dropped(err))
            return
        if response.status_code != 200:
            body = response.read()
            stream.__exit__(None, None, None)
            request = Request("GET", "/v1/watch", f"watch {self.pattern}", Effect.READS,
                              lambda a: None)
            error = proto.answer_error(request, Answer(response.status_code, response.headers, body))
            self._after(self._session.refused(error))
            return
        if not self._session.opened(response.headers):
            stream.__exit__(None, None, None)
            self._ended = True
            return
        self._stream, self._response = stream, response
        self._lines = response.iter_lines()
        self._parser = SseParser()

    def _after(self, decision: Any) -> None:
        if isinstance(decision, End):
            self._ended = True
        else:
            time.sleep(decision.delay)

    def _disconnect(self) -> None:
        stream, self._stream, self._response, self._lines = self._stream, None, None, None
        if stream is not None:
            try:
                stream.__exit__(None, None, None)
            except _STREAM_ERRORS:
                pass

    def _read_one(self) -> WatchEvent | None:
        """Reads until one event is parsed; returns the change it carries, if any."""
        if self._lines is None:
            self._connect()
            return None
        try:
            line = next(self._lines)
        except StopIteration:
            self._disconnect()
            self._after(self._session.dropped("the stream ended"))
            return None
        except _STREAM_ERRORS as err:
            self._disconnect()
            self._after(self._session.dropped(err))
            return None
        sse = self._parser.feed(line)
        if sse is None:
            return None
        try:
            return self._session.event(sse)
        except Dropped as why:
            self._disconnect()
            self._after(self._session.dropped(str(why)))
            return None
        except BaseException:
            self._disconnect()
            self._ended = True
            raise

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchEvent:
        while True:
            if self._pending:
                return self._pending.pop(0)
            if self._ended:
                self._disconnect()
                raise StopIteration
            event = self._read_one()
            if event is not None:
                return event

    def close(self) -> None:
        """Stops the watch."""
        self._ended = True
        self._disconnect()

    def __enter__(self) -> Watch:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


class LeaderObserver:
    """An iterator of leader changes of one election that reconnects by itself."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name
        self._session = ObserveSession(name, resume_window=client.resume_window)
        status = client._known_status()
        self._silence = stream_timeout(status.watch_progress_ms if status else None)
        self._stream: Any = None
        self._lines: Iterator[str] | None = None
        self._parser = SseParser()
        self._closed = False

    def _connect(self) -> None:
        path = f"/v1/elections/{proto.name_segment(self.name)}/observe"
        try:
            stream = self._client._http.stream(
                "GET", path, headers={"accept": "text/event-stream"},
                timeout=stream_timeout_of(self._client.timeout, self._silence))
            response = stream.__enter__()
        except _STREAM_ERRORS as err:
            time.sleep(self._session.dropped(err).delay)
            return
        if response.status_code != 200:
            body = response.read()
            stream.__exit__(None, None, None)
            request = Request("GET", path, f"observe {self.name}", Effect.READS, lambda a: None)
            error = proto.answer_error(request, Answer(response.status_code, response.headers, body))
            time.sleep(self._session.refused(error).delay)
            return
        self._session.opened()
        self._stream, self._lines, self._parser = stream, response.iter_lines(), SseParser()

    def _disconnect(self) -> None:
        stream, self._stream, self._lines = self._stream, None, None
        if stream is not None:
            try:
                stream.__exit__(None, None, None)
            except _STREAM_ERRORS:
                pass

    def __iter__(self) -> LeaderObserver:
        return self

    def __next__(self) -> Leader | None:
        while True:
            if self._closed:
                raise StopIteration
            if self._lines is None:
                self._connect()
                continue
            try:
                line = next(self._lines)
            except (StopIteration, *_STREAM_ERRORS) as err:
                self._disconnect()
                time.sleep(self._session.dropped(str(err) or "the stream ended").delay)
                continue
            sse = self._parser.feed(line)
            if sse is None:
                continue
            try:
                changed, leader = self._session.event(sse)
            except Dropped as why:
                self._disconnect()
                time.sleep(self._session.dropped(str(why)).delay)
                continue
            if changed:
                return leader

    def close(self) -> None:
        self._closed = True
        self._disconnect()

    def __enter__(self) -> LeaderObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Holding a lock or a leadership -----------------------------------------------------------------


class _Holding(Generic[H]):
    """A lock-like holding refreshed by a background thread: acquired on entry, released on
    exit. ``lost`` is set once the holding is known to be gone; fenced writes always send the
    newest handle, and wait for a refresh in flight."""

    _what = "lock"

    def __init__(self, client: Client, ttl: Duration) -> None:
        self._client = client
        self._ttl = proto.duration_seconds(ttl)
        self._interval = proto.refresh_interval(ttl)
        self._handle: H | None = None
        # Held while the handle is replaced or used: a fenced write never sends a handle that a
        # refresh in flight is about to make stale.
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._released = False
        self.lost = threading.Event()
        """Set once the holding was found lost (a refresh answered ``lock_lost``, or no refresh
        succeeded for a whole TTL)."""

    # What differs between a lock and a leadership.
    def _acquire(self) -> H:
        raise NotImplementedError

    def _refresh(self, handle: H) -> H:
        raise NotImplementedError

    def _release(self, handle: H) -> None:
        raise NotImplementedError

    def _txn(self, handle: H, ops: list[TxnOp]) -> list[TxnResult]:
        raise NotImplementedError

    @property
    def handle(self) -> H:
        """The newest handle."""
        if self._handle is None:
            raise RuntimeError(f"the {self._what} is not held yet: enter it first")
        return self._handle

    def acquire(self) -> None:
        """Acquires and starts refreshing in the background."""
        if self._handle is not None:
            raise RuntimeError(f"the {self._what} is already held")
        self._handle = self._acquire()
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True,
                                        name=f"swarmstate-{self._what}-refresh")
        self._thread.start()

    def _refresh_loop(self) -> None:
        last_success = time.monotonic()
        delay = self._interval
        while not self._stop.wait(delay):
            with self._mutex:
                if self._stop.is_set():
                    return
                try:
                    self._handle = self._refresh(self.handle)
                    last_success, delay = time.monotonic(), self._interval
                except LockLost:
                    self.lost.set()
                    return
                except SwarmstateError as err:
                    # Unanswered or refused for now: try again soon, until a whole TTL passed
                    # without a refresh, after which the holding has expired for certain.
                    if time.monotonic() - last_success >= self._ttl:
                        log.warning("%s lost: no refresh succeeded for its TTL (%s)", self._what, err)
                        self.lost.set()
                        return
                    delay = min(self._interval, 0.1 + self._interval / 10)

    def check(self) -> None:
        """Raises :class:`~swarmstate.LockLost` if the holding was found lost."""
        if self.lost.is_set():
            raise LockLost(f"the {self._what} was lost", problem={"key": self._key_name()})

    def _key_name(self) -> str:
        raise NotImplementedError

    def fenced_txn(self, ops: Iterable[TxnOp]) -> list[TxnResult]:
        """Applies ``ops`` as one transaction that also requires this holding to hold.
        :class:`~swarmstate.LockLost` (and ``lost`` set) when it no longer does."""
        ops = list(ops)
        self.check()
        with self._mutex:
            try:
                return self._txn(self.handle, ops)
            except LockLost:
                self.lost.set()
                raise

    def fenced_put(self, key: str, value: Value, *, ttl: Duration | None = None) -> int:
        """Writes ``key`` only while this holding holds; returns the revision."""
        revision = self.fenced_txn([Put(key, value, ttl=ttl)])[0].revision
        assert revision is not None
        return revision

    def fenced_delete(self, key: str, *, if_revision: int | None = None) -> int | None:
        """Deletes ``key`` only while this holding holds."""
        return self.fenced_txn([Delete(key, if_revision=if_revision)])[0].revision

    def _stop_refreshing(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def release(self) -> None:
        """Stops refreshing and releases. :class:`~swarmstate.LockLost` if the holding had been
        lost (nothing is released then: a later holder keeps it)."""
        self._stop_refreshing()
        if self._released:
            return
        self._released = True
        self.check()
        with self._mutex:
            try:
                self._release(self.handle)
            except LockLost:
                self.lost.set()
                raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.release()
        except LockLost:
            # The body's own exception says more; without one, the body must learn that it did
            # not hold the lock throughout.
            if exc_type is None:
                raise
        except SwarmstateError as err:
            # The holding expires after its TTL anyway; a failed release must not turn a
            # successful body into a failure, nor hide the body's exception.
            log.warning("release of the %s failed; it expires after its TTL: %s", self._what, err)


class Lock(_Holding[LockHandle]):
    """A held lock with background refresh; see :meth:`Client.lock`.

    Inside the ``with`` block, ``token`` is the fencing token, ``fenced_put`` /
    ``fenced_delete`` / ``fenced_txn`` write only while the lock holds, ``lost`` is an event set
    once it is known to be lost, and ``check()`` raises :class:`~swarmstate.LockLost` then. On
    exit the lock is released; if it had been lost and the body raised nothing, the exit raises
    ``LockLost``.
    """

    _what = "lock"

    def __init__(self, client: Client, key: str, *, ttl: Duration, wait: Duration | None,
                 owner: str) -> None:
        super().__init__(client, ttl)
        self.key = key
        self.owner = owner
        self._ttl_arg = ttl
        self._wait = wait

    def _key_name(self) -> str:
        return self.key

    def _acquire(self) -> LockHandle:
        return self._client.acquire_lock(self.key, ttl=self._ttl_arg, wait=self._wait,
                                         owner=self.owner)

    def _refresh(self, handle: LockHandle) -> LockHandle:
        return self._client.refresh_lock(handle)

    def _release(self, handle: LockHandle) -> None:
        self._client.release_lock(handle)

    def _txn(self, handle: LockHandle, ops: list[TxnOp]) -> list[TxnResult]:
        return self._client.lock_txn(handle, ops)

    @property
    def token(self) -> int:
        """The fencing token: strictly greater than every earlier holder's."""
        return self.handle.token

    def __enter__(self) -> Lock:
        self.acquire()
        return self


class Leadership(_Holding[LeadershipHandle]):
    """A held leadership with background refresh; see :meth:`Client.campaign`. As
    :class:`Lock`, with ``term`` for the token and ``resign()`` for the release."""

    _what = "leadership"

    def __init__(self, client: Client, name: str, *, candidate: str, ttl: Duration,
                 wait: Duration | None) -> None:
        super().__init__(client, ttl)
        self.name = name
        self.candidate = candidate
        self._ttl_arg = ttl
        self._wait = wait

    def _key_name(self) -> str:
        return self.name

    def _acquire(self) -> LeadershipHandle:
        return self._client.acquire_leadership(self.name, candidate=self.candidate,
                                               ttl=self._ttl_arg, wait=self._wait)

    def _refresh(self, handle: LeadershipHandle) -> LeadershipHandle:
        return self._client.refresh_leadership(handle)

    def _release(self, handle: LeadershipHandle) -> None:
        self._client.resign_leadership(handle)

    def _txn(self, handle: LeadershipHandle, ops: list[TxnOp]) -> list[TxnResult]:
        return self._client.leadership_txn(handle, ops)

    @property
    def term(self) -> int:
        """The term: strictly greater than every earlier leader's."""
        return self.handle.term

    def resign(self) -> None:
        """Gives the leadership up now (also what leaving the ``with`` block does)."""
        self.release()

    def __enter__(self) -> Leadership:
        self.acquire()
        return self


# Queue workers ---------------------------------------------------------------------------------


class Job:
    """One claimed item, heartbeated in the background until it is finished.

    Use it as a context manager: leaving the block normally completes the item (unless
    :meth:`complete` or :meth:`fail` was called), an exception fails it with the exception's
    text and propagates. ``lost`` is set once the claim is known to be lost (its lease expired
    and perhaps another worker has the item); ``check()`` raises
    :class:`~swarmstate.LockLost` then.
    """

    def __init__(self, client: Client, claim: Claim, max_attempts: int | None) -> None:
        self._client = client
        self._claim = claim
        self._max_attempts = max_attempts
        self._interval = proto.refresh_interval(claim.lease)
        self._lease = proto.duration_seconds(claim.lease)
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.finished = False
        """Whether the job was completed or failed (or found lost)."""
        self._thread = threading.Thread(target=self._heartbeats, daemon=True,
                                        name="swarmstate-job-heartbeat")
        self._thread.start()

    @property
    def claim(self) -> Claim:
        """The newest claim."""
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

    def _heartbeats(self) -> None:
        last_success = time.monotonic()
        delay = self._interval
        while not self._stop.wait(delay):
            with self._mutex:
                if self._stop.is_set():
                    return
                try:
                    self._claim = self._client.heartbeat(self._claim)
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

    def _stop_heartbeats(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _finish(self, call: Callable[[Claim], T]) -> T:
        if self.finished:
            raise RuntimeError(f"job {self.id} is already finished")
        self._stop_heartbeats()
        self.finished = True
        self.check()
        try:
            return call(self._claim)
        except LockLost:
            self.lost.set()
            raise

    def complete(self, ops: Iterable[TxnOp] | None = None) -> list[TxnResult]:
        """Marks the item done, with ``ops`` written in the same transaction."""
        return self._finish(lambda claim: self._client.complete(claim, ops))

    def fail(self, reason: str) -> str:
        """Gives the item back: ``"pending"`` (it will be retried) or ``"dead"``."""
        return self._finish(lambda claim: self._client.fail(claim, reason,
                                                            max_attempts=self._max_attempts))

    def abandon(self) -> None:
        """Stops heartbeating without finishing: the lease expires and the item is handed out
        again."""
        self._stop_heartbeats()
        self.finished = True

    def __enter__(self) -> Job:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.finished:
            self._stop_heartbeats()
            return
        if exc is None:
            self.complete()
            return
        try:
            self.fail(f"{type(exc).__name__}: {exc}")
        except SwarmstateError as err:
            log.warning("could not fail item %s after %r: %s", self.id, exc, err)


class Worker:
    """Claims items of one queue, one at a time, and yields each as a :class:`Job`::

        for job in client.worker("jobs", "worker-1", lease=30):
            with job:
                handle(job.payload)

    A job the loop body did not finish is completed when the loop asks for the next one (the
    body ran to its end). With ``idle`` the iteration ends once nothing was claimable for that
    long; without it, it waits for items forever. A loop left by ``break`` or an exception
    stops heartbeating a job it did not finish: its lease expires and the item is handed out
    again.
    """

    def __init__(self, client: Client, queue: str, worker: str, *, lease: Duration,
                 idle: Duration | None, max_attempts: int | None) -> None:
        self._client = client
        self.queue = queue
        self.worker = worker
        self._lease = lease
        self._idle = proto.duration_seconds(idle) if idle is not None else None
        self._max_attempts = max_attempts
        self._current: Job | None = None
        self._closed = False

    def __iter__(self) -> Iterator[Job]:
        try:
            while not self._closed:
                claim = self._client.claim(
                    self.queue, self.worker, lease=self._lease,
                    wait=self._idle if self._idle is not None else proto.MAX_SERVER_WAIT,
                    max_attempts=self._max_attempts)
                if claim is None:
                    if self._idle is not None:
                        return
                    continue
                self._current = job = Job(self._client, claim, self._max_attempts)
                yield job
                if not job.finished:
                    job.complete()
        finally:
            self.close()

    def close(self) -> None:
        """Stops; a job still running stops heartbeating (its lease then expires)."""
        self._closed = True
        job, self._current = self._current, None
        if job is not None and not job.finished:
            job.abandon()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
