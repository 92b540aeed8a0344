"""The typed results and the transaction operations: frozen dataclasses, shared by the sync and
the async client.

Values are ``bytes``. Wherever a value goes in, ``str`` is accepted too and encoded as UTF-8;
wherever one comes out, ``.text`` decodes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Union

__all__ = [
    "Value",
    "Entry",
    "KeysPage",
    "EntriesPage",
    "TxnResult",
    "Put",
    "Delete",
    "Check",
    "TxnOp",
    "Capabilities",
    "Status",
    "LockHandle",
    "LockHolder",
    "LeadershipHandle",
    "Leader",
    "Claim",
    "ItemStatus",
    "PutEvent",
    "DeleteEvent",
    "ExpireEvent",
    "CaughtUp",
    "WatchEvent",
]

#: A value as accepted: bytes, or text encoded as UTF-8.
Value = Union[bytes, bytearray, memoryview, str]


def to_bytes(value: Value) -> bytes:
    """``value`` as bytes: text is encoded as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a value is bytes or str, got {type(value).__name__}")


@dataclass(frozen=True)
class Entry:
    """A key's value and the revision that wrote it. ``expires_in_ms`` is its time left when it
    has a TTL (whole milliseconds, rounded down), else ``None``."""

    key: str
    value: bytes
    revision: int
    expires_in_ms: int | None = None

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (raises ``UnicodeDecodeError`` if it is not)."""
        return self.value.decode("utf-8")


@dataclass(frozen=True)
class KeysPage:
    """One page of a key listing, in key order; ``next`` is the ``after`` of the next page, or
    ``None`` on the last page."""

    keys: list[str]
    next: str | None


@dataclass(frozen=True)
class EntriesPage:
    """One page of an entry listing: one snapshot, at ``revision`` (``None`` for a store never
    written). ``next`` as in :class:`KeysPage`."""

    entries: list[Entry]
    revision: int | None
    next: str | None


@dataclass(frozen=True)
class TxnResult:
    """One operation's outcome: ``op`` is ``"put"``, ``"delete"`` or ``"check"``; ``revision``
    is a write's revision, ``None`` for a check or a delete of an absent key."""

    op: str
    revision: int | None


@dataclass(frozen=True)
class Put:
    """A transaction's put. ``ttl`` in seconds (float), or a duration text like ``"30s"``;
    without it the entry is permanent. At most one of ``if_absent`` and ``if_revision``."""

    key: str
    value: Value
    ttl: float | timedelta | str | None = None
    if_absent: bool = False
    if_revision: int | None = None


@dataclass(frozen=True)
class Delete:
    """A transaction's delete (nothing happens to an absent key), optionally conditional."""

    key: str
    if_absent: bool = False
    if_revision: int | None = None


@dataclass(frozen=True)
class Check:
    """A transaction's check: changes nothing, only requires its condition."""

    key: str
    if_absent: bool = False
    if_revision: int | None = None


#: One operation of a transaction.
TxnOp = Union[Put, Delete, Check]


@dataclass(frozen=True)
class Capabilities:
    """What the server's store can do (see ``/v1/status``)."""

    ttl_granularity_ms: int
    max_value_size: int
    watch_buffer: int
    durable: bool
    replays_overwritten: bool


@dataclass(frozen=True)
class Status:
    """The server's version, backend, current revision (``None`` for a store never written),
    capabilities, process instance and watch progress interval. ``raw`` is the whole answer."""

    version: str
    backend: str
    revision: int | None
    capabilities: Capabilities
    instance: str
    watch_progress_ms: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class LockHandle:
    """A held lock as the server answered it. ``token`` is the fencing token (the revision at
    which it was acquired); ``revision`` changes with every refresh. Send the newest handle
    back: ``raw`` is the answer as received and is what is sent."""

    key: str
    owner: str
    token: int
    revision: int
    ttl: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock now, the lock key's revision, and its time left."""

    key: str
    holder: str
    revision: int
    expires_in_ms: int | None


@dataclass(frozen=True)
class LeadershipHandle:
    """A held leadership. ``term`` strictly increases across leaders; ``revision`` changes with
    every refresh. ``raw`` is sent back as it was answered."""

    name: str
    candidate: str
    term: int
    revision: int
    ttl: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Leader:
    """The current leader of an election."""

    candidate: str
    term: int


@dataclass(frozen=True)
class Claim:
    """One worker's claim on one queue item. ``token`` is strictly greater than every earlier
    claim's of the item; ``lease_revision`` changes with each heartbeat. ``raw`` is sent back
    as it was answered."""

    queue: str
    id: str
    payload: bytes
    worker: str
    attempt: int
    token: int
    lease: str
    item_revision: int
    lease_revision: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode("utf-8")


ItemState = Literal["pending", "claimed", "done", "dead"]


@dataclass(frozen=True)
class ItemStatus:
    """A queue item's state, attempts so far, claimant and lease left while claimed, and the
    last failure reason."""

    id: str
    state: str
    attempts: int
    claimant: str | None
    lease_left_ms: int | None
    last_error: str | None


@dataclass(frozen=True)
class PutEvent:
    """A key was written (in a snapshot: it exists)."""

    entry: Entry

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def revision(self) -> int:
        return self.entry.revision


@dataclass(frozen=True)
class DeleteEvent:
    """A key was deleted."""

    key: str
    revision: int


@dataclass(frozen=True)
class ExpireEvent:
    """A key's TTL ran out."""

    key: str
    revision: int


@dataclass(frozen=True)
class CaughtUp:
    """A snapshot is complete at ``revision`` (``None`` for a store never written)."""

    revision: int | None


#: What a watch yields.
WatchEvent = Union[PutEvent, DeleteEvent, ExpireEvent, CaughtUp]
