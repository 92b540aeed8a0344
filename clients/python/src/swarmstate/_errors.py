"""The exceptions: one class per problem ``kind`` of the HTTP API, under one base.

A problem document from the server becomes the class of its ``kind``, carrying the document's
fields as attributes (``key``, ``revision``, ``expected``, ``actual``, ``holder``,
``expires_in_ms``, ``index``, ...). A missing answer becomes :class:`Unavailable` when nothing
can have applied (the connection could not be made, or the request was a read) and
:class:`Ambiguous` when a write was sent and may or may not have applied.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "SwarmstateError",
    "NotFound",
    "Conflict",
    "AlreadyExists",
    "RevisionMismatch",
    "InvalidKey",
    "InvalidInput",
    "ValueTooLarge",
    "QuotaExceeded",
    "Compacted",
    "LockHeld",
    "LockLost",
    "Unsupported",
    "Closed",
    "Unavailable",
    "Ambiguous",
    "Corrupt",
    "BackendError",
    "WatchLagged",
    "error_from_problem",
]


class SwarmstateError(Exception):
    """Every error this package raises.

    ``kind`` is the problem kind of the API (``"not_found"``, ``"lock_lost"``, ...), ``status``
    the HTTP status it came with (``None`` when it did not come from the server), ``detail`` the
    whole message and ``problem`` the problem document as received (empty when there was none).
    """

    kind: ClassVar[str] = "backend"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})

    def _field(self, name: str) -> Any:
        return self.problem.get(name)

    def _int(self, name: str) -> int | None:
        value = self.problem.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _str(self, name: str) -> str | None:
        value = self.problem.get(name)
        return value if isinstance(value, str) else None

    @property
    def key(self) -> str | None:
        """The key concerned (for ``invalid_key``: the offending text), if the server named one."""
        value = self._field("key")
        return value if isinstance(value, str) else None

    @property
    def index(self) -> int | None:
        """The transaction operation that failed, counted from 0, if any."""
        value = self._field("index")
        return value if isinstance(value, int) else None

    @property
    def message(self) -> str | None:
        """The message without the summary ``detail`` adds, for the kinds that have one."""
        value = self._field("message")
        return value if isinstance(value, str) else None


class NotFound(SwarmstateError):
    """The key (or lock, or queue item) is absent."""

    kind = "not_found"


class Conflict(SwarmstateError):
    """A condition failed: :class:`AlreadyExists` or :class:`RevisionMismatch`. Re-read,
    decide again, retry with the new revision. Nothing was written."""

    kind = "conflict"


class AlreadyExists(Conflict):
    """A create found the key present; ``revision`` is the revision of the entry there."""

    kind = "already_exists"

    @property
    def revision(self) -> int | None:
        return self._int("revision")


class RevisionMismatch(Conflict):
    """An update or delete at a revision found another one: ``expected`` was required,
    ``actual`` is current (``None`` when the key is absent)."""

    kind = "revision_mismatch"

    @property
    def expected(self) -> int | None:
        return self._int("expected")

    @property
    def actual(self) -> int | None:
        return self._int("actual")


class InvalidKey(SwarmstateError):
    """The key or pattern breaks the key rules; ``key`` is the offending text."""

    kind = "invalid_key"


class InvalidInput(SwarmstateError):
    """The request is malformed (or the server refused it before the store was involved)."""

    kind = "invalid_input"


class ValueTooLarge(SwarmstateError):
    """The value is over the store's limit: ``size`` and ``limit`` in bytes."""

    kind = "value_too_large"

    @property
    def size(self) -> int | None:
        return self._int("size")

    @property
    def limit(self) -> int | None:
        return self._int("limit")


class QuotaExceeded(SwarmstateError):
    """The write would take the store past its quota (``needed``, ``quota`` in bytes)."""

    kind = "quota_exceeded"

    @property
    def needed(self) -> int | None:
        return self._int("needed")

    @property
    def quota(self) -> int | None:
        return self._int("quota")


class Compacted(SwarmstateError):
    """A watch's start is older than the history the store keeps: re-snapshot.
    ``requested`` and ``oldest`` are revisions."""

    kind = "compacted"

    @property
    def requested(self) -> int | None:
        return self._int("requested")

    @property
    def oldest(self) -> int | None:
        return self._int("oldest")


class LockHeld(SwarmstateError):
    """A lock or leadership is held by another past ``wait``: ``holder`` (owner or candidate)
    and ``expires_in_ms`` (its time left)."""

    kind = "lock_held"

    @property
    def holder(self) -> str | None:
        return self._str("holder")

    @property
    def expires_in_ms(self) -> int | None:
        return self._int("expires_in_ms")


class LockLost(SwarmstateError):
    """The lock, leadership or claim is no longer held by this handle; nothing was applied.
    Stop acting as the holder."""

    kind = "lock_lost"


class Unsupported(SwarmstateError):
    """The backend cannot apply this transaction shape atomically (``operation``,
    ``backend``); nothing was applied, and retrying will not help."""

    kind = "unsupported"

    @property
    def operation(self) -> str | None:
        return self._str("operation")

    @property
    def backend(self) -> str | None:
        return self._str("backend")


class Unavailable(SwarmstateError):
    """The server or its store cannot serve now, and nothing was applied: retry later."""

    kind = "unavailable"


class Closed(Unavailable):
    """The store is closed (the server is shutting down); nothing was applied."""

    kind = "closed"


class Ambiguous(SwarmstateError):
    """A write was sent without an answer: it may or may not have applied. Retry with the same
    idempotency key, or re-read. ``operation`` names what was sent."""

    kind = "ambiguous"

    @property
    def operation(self) -> str | None:
        return self._str("operation")


class Corrupt(SwarmstateError):
    """Stored data is damaged (``what``): an operator's problem."""

    kind = "corrupt"

    @property
    def what(self) -> str | None:
        return self._str("what")


class BackendError(SwarmstateError):
    """The backend failed (``message``), or the server answered something this client does not
    understand. Re-read before retrying a write."""

    kind = "backend"


class WatchLagged(SwarmstateError):
    """A watch cannot go on without skipping changes: it fell behind (the server sent
    ``lagged``), it could not reconnect within its resume window, or a snapshot was cut short.
    ``resume_from`` is the revision to watch from again (``None`` after a cut snapshot:
    re-snapshot)."""

    kind = "lagged"

    def __init__(self, detail: str, *, resume_from: int | None) -> None:
        super().__init__(detail)
        self.resume_from = resume_from


_BY_KIND: dict[str, type[SwarmstateError]] = {
    cls.kind: cls
    for cls in (
        NotFound,
        AlreadyExists,
        RevisionMismatch,
        InvalidKey,
        InvalidInput,
        ValueTooLarge,
        QuotaExceeded,
        Compacted,
        LockHeld,
        LockLost,
        Unsupported,
        Closed,
        Unavailable,
        Ambiguous,
        Corrupt,
        BackendError,
    )
}


def error_from_problem(problem: dict[str, Any], status: int | None) -> SwarmstateError:
    """The exception of a problem document. An unknown ``kind`` is a :class:`BackendError`,
    as in the Rust client."""
    kind = problem.get("kind")
    cls = _BY_KIND.get(kind, BackendError) if isinstance(kind, str) else BackendError
    detail = problem.get("detail")
    if not isinstance(detail, str):
        detail = f"the server answered {status} with a problem of kind {kind!r}"
    return cls(detail, status=status, problem=problem)
