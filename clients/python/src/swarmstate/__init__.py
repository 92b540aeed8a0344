"""swarmstate: the Python client of a ``swarmstate serve`` server.

Shared state for agent swarms: keys with revisions, conditional writes, transactions, watches
that resume by revision, locks with fencing tokens, elections and work queues. :class:`Client`
is sync, :class:`AsyncClient` async; both have the same methods and return the same types.
"""

from ._async_client import (
    AsyncClient,
    AsyncJob,
    AsyncLeaderObserver,
    AsyncLeadership,
    AsyncLock,
    AsyncWatch,
    AsyncWorker,
)
from ._client import Client, Job, LeaderObserver, Leadership, Lock, Watch, Worker
from ._errors import (
    AlreadyExists,
    Ambiguous,
    BackendError,
    Closed,
    Compacted,
    Conflict,
    Corrupt,
    InvalidInput,
    InvalidKey,
    LockHeld,
    LockLost,
    NotFound,
    QuotaExceeded,
    RevisionMismatch,
    SwarmstateError,
    Unavailable,
    Unsupported,
    ValueTooLarge,
    WatchLagged,
)
from ._models import (
    Capabilities,
    CaughtUp,
    Check,
    Claim,
    Delete,
    DeleteEvent,
    EntriesPage,
    Entry,
    ExpireEvent,
    ItemStatus,
    KeysPage,
    Leader,
    LeadershipHandle,
    LockHandle,
    LockHolder,
    Put,
    PutEvent,
    Status,
    TxnOp,
    TxnResult,
    Value,
    WatchEvent,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "AsyncJob", "AsyncLeaderObserver", "AsyncLeadership", "AsyncLock",
    "AsyncWatch", "AsyncWorker",
    "Client", "Job", "LeaderObserver", "Leadership", "Lock", "Watch", "Worker",
    "AlreadyExists", "Ambiguous", "BackendError", "Closed", "Compacted", "Conflict", "Corrupt",
    "InvalidInput", "InvalidKey", "LockHeld", "LockLost", "NotFound", "QuotaExceeded",
    "RevisionMismatch", "SwarmstateError", "Unavailable", "Unsupported", "ValueTooLarge",
    "WatchLagged",
    "Capabilities", "CaughtUp", "Check", "Claim", "Delete", "DeleteEvent", "EntriesPage", "Entry",
    "ExpireEvent", "ItemStatus", "KeysPage", "Leader", "LeadershipHandle", "LockHandle",
    "LockHolder", "Put", "PutEvent", "Status", "TxnOp", "TxnResult", "Value", "WatchEvent",
]
