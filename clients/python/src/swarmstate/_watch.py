"""Watches without I/O: the Server-Sent Events parser and the state of a watch that resumes by
revision, shared by the sync and the async client.

A :class:`WatchSession` is told what the transport saw (an answer opened, an SSE event, a drop)
and answers what to do: yield an event, reconnect after a delay, end, or raise. It never skips:
a change it cannot deliver raises :class:`~swarmstate.WatchLagged` (or
:class:`~swarmstate.Compacted` when the server says the start is older than its history).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping, Union

from ._errors import (
    BackendError,
    Closed,
    SwarmstateError,
    Unavailable,
    WatchLagged,
    error_from_problem,
)
from ._models import CaughtUp, DeleteEvent, ExpireEvent, Leader, PutEvent, WatchEvent
from ._protocol import INSTANCE_HEADER, entry_from, leader_from

#: How long a dropped watch keeps trying to reconnect before it raises ``WatchLagged``.
DEFAULT_RESUME_WINDOW = 30.0
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0
DEFAULT_PROGRESS_MS = 5000

Start = Union[str, int]


@dataclass(frozen=True)
class SseEvent:
    """One dispatched Server-Sent Event."""

    event: str
    data: str
    id: str | None


class SseParser:
    """Turns lines (without their line ending) into events, as the SSE specification says:
    ``data`` lines join with newlines, comments (``:``) are skipped, a blank line dispatches."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_fields = False

    def feed(self, line: str) -> SseEvent | None:
        if line == "":
            if not self._has_fields:
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id, self._has_fields = "", [], None, False
            return event
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        self._has_fields = True
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def _data(event: SseEvent) -> Any:
    try:
        return json.loads(event.data) if event.data else {}
    except ValueError as err:
        raise BackendError(f"watch event {event.event}: data is not JSON: {err}") from None


def _event_id(event: SseEvent) -> int | None:
    if event.id is None or event.id == "":
        return None
    try:
        return int(event.id)
    except ValueError:
        raise BackendError(f"watch event {event.event}: id is not a revision: {event.id!r}")


class Reconnect:
    """Reconnect after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay


class End:
    """The watch ends plainly."""


#: What a session says to do after a drop.
AfterDrop = Union[Reconnect, End]


class _Resuming:
    """The reconnect schedule after a drop: backoff from 50 ms doubling to 1 s, for at most
    ``window`` seconds since the drop."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._since: float | None = None
        self._backoff = FIRST_BACKOFF

    def next_delay(self) -> float | None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if now - self._since >= self.window:
            return None
        delay = min(self._backoff, max(self._since + self.window - now, 0.0))
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        return delay

    def connected(self) -> None:
        self._since = None
        self._backoff = FIRST_BACKOFF


class WatchSession:
    """The state of one watch: where it would resume, whether it is inside a snapshot, and
    which server instance it follows."""

    def __init__(
        self,
        pattern: str,
        start: Start,
        *,
        resume_window: float = DEFAULT_RESUME_WINDOW,
        durable: bool = True,
    ) -> None:
        if isinstance(start, bool) or not (
            start in ("now", "snapshot") or (isinstance(start, int) and start >= 1)
        ):
            raise ValueError(f"a watch starts at 'now', 'snapshot' or a revision from 1, got {start!r}")
        self.pattern = pattern
        self.start = start
        # Invariant: the revision the next connection starts from, once known; None before the
        # first ready (start "now"), or inside a snapshot (which cannot be resumed halfway).
        self.resume_from: int | None = start if isinstance(start, int) else None
        self._in_snapshot = start == "snapshot"
        self._durable = durable
        self._instance: str | None = None
        self._resuming = _Resuming(resume_window)
        # Whether the stream follows a known point: set by ready, caught_up, or any event with
        # an id, so that a reconnect can never start from a later "now".
        self._anchored = isinstance(start, int)

    def params(self) -> dict[str, str]:
        """The query of the next connection."""
        if self.resume_from is not None:
            return {"pattern": self.pattern, "start": str(self.resume_from)}
        return {"pattern": self.pattern, "start": str(self.start)}

    def opened(self, headers: Mapping[str, str]) -> bool:
        """A connection was answered 200. Returns False when the watch must end plainly: a
        server whose store is not durable restarted, so the history it resumes from is gone."""
        instance = headers.get(INSTANCE_HEADER)
        previous, self._instance = self._instance, instance
        self._resuming.connected()
        if self._in_snapshot:
            # The snapshot is taken when the server registers the watch, before it answers:
            # waiting for its events (perhaps many) adds nothing.
            self._anchored = True
        if previous is not None and instance != previous and not self._durable:
            return False
        return True

    @property
    def anchored(self) -> bool:
        """Whether the watch follows a fixed starting point: from a revision at once, a
        snapshot once the server answered, from ``now`` once its first event (``ready``)
        arrived."""
        return self._anchored

    def event(self, event: SseEvent) -> WatchEvent | None:
        """An event arrived: the change to yield, or None for bookkeeping events. Raises
        ``WatchLagged`` on ``lagged``. ``shutdown`` raises :class:`_Dropped` so the transport
        reconnects."""
        name = event.event
        revision = _event_id(event)
        # The stream follows a fixed point once anything arrived: normally `ready`, first; a
        # backend that cannot replay from now sends none, and then the first change or
        # `progress` (after at most the progress interval) shows the stream is live.
        self._anchored = True
        if name in ("put", "delete", "expire"):
            data = _data(event)
            out: WatchEvent
            try:
                if name == "put":
                    out = PutEvent(entry_from(data, "watch put event"))
                elif name == "delete":
                    out = DeleteEvent(key=data["key"], revision=data["revision"])
                else:
                    out = ExpireEvent(key=data["key"], revision=data["revision"])
            except (KeyError, TypeError) as err:
                raise BackendError(f"watch {name} event: malformed data {data!r} ({err})") from None
            self._advance(revision)
            return out
        if name == "ready":
            self._advance(revision, default=1)
            return None
        if name == "caught_up":
            data = _data(event)
            self._in_snapshot = False
            self._advance(revision, default=1)
            return CaughtUp(revision=data.get("revision") if isinstance(data, dict) else None)
        if name == "lagged":
            data = _data(event)
            resume = data.get("resume_from") if isinstance(data, dict) else None
            raise WatchLagged(
                f"the watch of {self.pattern} fell behind; resume from revision {resume}",
                resume_from=resume if isinstance(resume, int) else self.resume_from,
            )
        if name == "shutdown":
            raise Dropped("the server is shutting down")
        # progress, and event names from later versions.
        return None

    def _advance(self, revision: int | None, default: int | None = None) -> None:
        if revision is not None:
            self.resume_from = revision + 1
        elif default is not None and self.resume_from is None:
            self.resume_from = default

    def dropped(self, reason: BaseException | str) -> AfterDrop:
        """The connection dropped (or could not be made, or the server said ``shutdown``).
        Answers when to reconnect; raises ``WatchLagged`` when the watch cannot resume."""
        if self._in_snapshot and self._instance is not None:
            raise WatchLagged(
                f"the snapshot of {self.pattern} was cut short ({reason}); start it again",
                resume_from=None,
            )
        delay = self._resuming.next_delay()
        if delay is None:
            raise WatchLagged(
                f"the watch of {self.pattern} could not reconnect within "
                f"{self._resuming.window:g} s ({reason})",
                resume_from=self.resume_from,
            )
        return Reconnect(delay)

    def refused(self, error: SwarmstateError) -> AfterDrop:
        """The server answered the connection with an error. Unavailable stores are waited
        for; anything else (compacted, a bad pattern) is raised."""
        if isinstance(error, (Unavailable, Closed)):
            return self.dropped(error)
        raise error


class Dropped(Exception):
    """The stream ended without a ``lagged``: reconnect (internal)."""


def stream_timeout(progress_ms: int | None) -> float:
    """How long a stream may stay silent before it is taken for dead: three progress
    intervals and two seconds, as the Rust client waits."""
    return 3 * (progress_ms or DEFAULT_PROGRESS_MS) / 1000 + 2.0


class ObserveSession:
    """The state of an ``observe`` stream of an election: yields each leader change once,
    reconnecting (and skipping a repeat of the leader last yielded) after drops and
    ``shutdown``."""

    _UNSET: Any = object()

    def __init__(self, name: str, *, resume_window: float = DEFAULT_RESUME_WINDOW) -> None:
        self.name = name
        self._last: Any = self._UNSET
        self._resuming = _Resuming(resume_window)

    def opened(self) -> None:
        self._resuming.connected()

    def event(self, event: SseEvent) -> tuple[bool, Leader | None]:
        """``(True, leader)`` when the event is a change to yield."""
        if event.event == "leader":
            leader = leader_from(_data(event) if event.data != "null" else None)
            if leader == self._last:
                return False, None
            self._last = leader
            return True, leader
        if event.event == "shutdown":
            raise Dropped("the server is shutting down")
        if event.event == "error":
            # The server's observation failed (a problem document); the stream ends.
            data = _data(event)
            error = error_from_problem(data if isinstance(data, dict) else {}, None)
            if isinstance(error, Unavailable):
                raise Dropped(str(error))
            raise error
        return False, None

    def dropped(self, reason: BaseException | str) -> Reconnect:
        delay = self._resuming.next_delay()
        if delay is None:
            raise Unavailable(
                f"observing {self.name}: could not reconnect within {self._resuming.window:g} s "
                f"({reason})"
            )
        return Reconnect(delay)

    def refused(self, error: SwarmstateError) -> Reconnect:
        if isinstance(error, (Unavailable, Closed)):
            return self.dropped(error)
        raise error
