//! What a backend implementation needs beyond the contract: the validators every backend
//! calls before it sends or changes anything, the bounded watch feed with its lag signal, and
//! the engine the in-process and disk backends share.
//!
//! Conditions are decided by [`Condition::check`](crate::Condition::check), the one place
//! every backend refuses a conditional write.

pub use crate::engine::hub::Hub as WatchHub;
pub use crate::engine::{
    Batch, Change, ChangeSet, Clock, Commit, Engine, EngineConfig, KvState, Now, Persisted,
    Persistence, Remembered, StateLimits, StoredEntry, Timestamp, Volatile,
};
pub use crate::feed::{FeedEnded, WatchFeed, watch_feed};
pub use crate::store::ensure_open;
pub use crate::types::{validate_ttl, validate_txn, validate_value};
