//! Shared state for agent swarms: the [`StateStore`] contract every backend keeps, the
//! in-process [`MemoryStore`], the recipes built only on that contract (locks with fencing
//! tokens and a fair blocking acquire, [`Election`], [`WorkQueue`], [`ConfigWatch`],
//! [`TtlCache`]), and (behind the `conformance` feature) the conformance suite every backend
//! runs.
//!
//! Keys are validated once ([`Key::new`]); values are opaque [`bytes::Bytes`]; every change
//! gets a store-wide, strictly increasing [`Revision`]. Writes can be conditional
//! ([`PutMode`]), carry a TTL and an idempotency key; [`StateStore::txn`] applies several
//! writes all-or-nothing; [`StateStore::watch`] streams changes and never skips silently.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use swarmstate_core::{acquire_lock, Key, MemoryStore, StateStore, StateStoreExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
//! let lock = Key::new("locks.deploy")?;
//! let guard = acquire_lock(&store, &lock, "agent-1", Duration::from_secs(10)).await?;
//! // Applies only while agent-1 still holds the lock, atomically.
//! guard.fenced_put(&Key::new("deploy.version")?, "v2").await?;
//! guard.release().await?;
//! # Ok::<_, swarmstate_core::Error>(())
//! # }).unwrap();
//! ```

mod cache;
mod config;
mod election;
mod error;
mod feed;
mod key;
mod lock;
mod memory;
mod queue;
pub mod state;
mod store;
mod types;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use cache::{CacheError, DEFAULT_FILL_TIMEOUT, TtlCache};
pub use config::{ConfigSnapshot, ConfigWatch};
pub use election::{Election, Leader, Leadership};
pub use error::{Error, Result};
pub use feed::{FeedEnded, WatchFeed, watch_feed};
pub use key::{Key, KeyRule, MAX_KEY_LEN, Pattern};
pub use lock::{
    FenceGate, FencingToken, KeepAlive, LOCK_WAITERS_TOKEN, LockGuard, MAX_TICKET_TTL, StaleToken,
    acquire_lock, acquire_lock_wait, lock_waiters_prefix,
};
pub use memory::{DEFAULT_MAX_VALUE_SIZE, DEFAULT_WATCH_BUFFER, MemoryStore, MemoryStoreBuilder};
pub use queue::{Claim, DEFAULT_MAX_ATTEMPTS, ItemState, ItemStatus, MAX_REASON_LEN, WorkQueue};
pub use store::{KeyStream, StateStore, StateStoreExt, WatchStream, retry_on_conflict};
pub use types::{
    Capabilities, Condition, Entry, MAX_TTL, MAX_TXN_OPS, MIN_TTL, PutMode, PutOptions, Revision,
    TxnAction, TxnOp, TxnResult, WatchEvent, WatchStart, validate_ttl, validate_txn,
    validate_value,
};
