//! The swarmstate contract: the [`StateStore`] trait every backend keeps, its types ([`Key`],
//! [`Pattern`], [`Revision`], [`Entry`], [`WatchEvent`]) and its one [`Error`] type, the engine
//! that the in-process and the disk backend share, and the in-process [`MemoryStore`].
//!
//! Keys are validated once ([`Key::new`]); values are opaque [`bytes::Bytes`]; every change
//! gets a store-wide, strictly increasing [`Revision`]. Writes can be conditional
//! ([`PutMode`]), carry a TTL and an idempotency key; [`StateStore::txn`] applies several
//! writes all-or-nothing; [`StateStore::watch`] streams changes and never skips silently.
//!
//! Applications use the `swarmstate` crate, which re-exports this one with the recipes.

pub mod backend;
mod engine;
mod error;
mod feed;
mod forward;
mod key;
mod memory;
mod store;
mod types;

pub use error::{Error, ErrorKind, Result};
pub use key::{Key, KeyRule, MAX_KEY_LEN, Pattern};
pub use memory::{DEFAULT_MAX_VALUE_SIZE, DEFAULT_WATCH_BUFFER, MemoryStore, MemoryStoreBuilder};
pub use store::{KeyStream, StateStore, StateStoreExt, WatchStream, retry_on_conflict};
pub use types::{
    Capabilities, Condition, Entry, MAX_TTL, MAX_TXN_OPS, MIN_TTL, PutMode, PutOptions, Revision,
    TxnAction, TxnOp, TxnResult, WatchEvent, WatchStart,
};

#[doc(hidden)]
pub mod __private {
    pub use bytes::Bytes;
    pub use futures::future::BoxFuture;
}
