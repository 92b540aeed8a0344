//! The one public error type. Its variants are categories a caller can act on; backend details
//! stay behind [`Error::Backend`].

use std::sync::Arc;
use std::time::Duration;

use crate::{Key, KeyRule, Revision};

/// The result of every store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a store operation can fail with.
///
/// Nothing is ever reported as success unless it was applied. When an outcome is unknown the
/// error is [`Error::Ambiguous`], never [`Error::Unavailable`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist (where absence is an error, e.g. a lock that is not there).
    #[error("key {key} not found")]
    NotFound {
        /// The key.
        key: Key,
    },

    /// A create found the key present.
    #[error("key {key} already exists (at revision {revision})")]
    AlreadyExists {
        /// The key.
        key: Key,
        /// The revision of the entry that is there.
        revision: Revision,
    },

    /// A conditional write found the key at another revision (or absent, `actual: None`).
    #[error("key {key} is at {}, expected revision {expected}", describe(*.actual))]
    RevisionMismatch {
        /// The key.
        key: Key,
        /// The revision the write required.
        expected: Revision,
        /// The key's revision, or `None` when it is absent.
        actual: Option<Revision>,
    },

    /// A key broke one of the key rules; nothing was sent.
    #[error("invalid key {key:?}: {rule}")]
    InvalidKey {
        /// The offending key text.
        key: String,
        /// The rule it broke.
        rule: KeyRule,
    },

    /// A value is larger than the store's limit; nothing was written.
    #[error("value for key {key} is {size} bytes, more than the limit of {limit} bytes")]
    ValueTooLarge {
        /// The key.
        key: Key,
        /// The value's size in bytes.
        size: usize,
        /// The store's limit in bytes.
        limit: usize,
    },

    /// Any other bad input (a TTL out of range, a malformed transaction, a bad pattern);
    /// nothing was written.
    #[error("invalid input: {message}")]
    InvalidInput {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A watch asked to start from a revision older than the history the store keeps.
    /// Re-snapshot instead.
    #[error(
        "revision {requested} is no longer in the store's history (oldest kept: {oldest}); \
         start from a snapshot instead"
    )]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision a watch can still start from.
        oldest: Revision,
    },

    /// A lock is held by someone else.
    #[error("lock {key} is held by {holder:?}{}", describe_left(*.expires_in))]
    LockHeld {
        /// The lock key.
        key: Key,
        /// The holder's owner name.
        holder: String,
        /// How long until the lock expires unless refreshed.
        expires_in: Option<Duration>,
    },

    /// The lock is no longer ours (it expired, or someone else holds it now).
    #[error("lock {key} was lost (it expired or was taken over)")]
    LockLost {
        /// The lock key.
        key: Key,
    },

    /// The store was closed.
    #[error("the store is closed")]
    Closed,

    /// The operation definitely did not apply (e.g. no connection); retrying is safe.
    #[error("store unavailable, nothing was applied: {message}")]
    Unavailable {
        /// What happened.
        message: String,
    },

    /// The operation may or may not have applied (e.g. a timeout after the request was sent).
    /// Retry with the same idempotency key, or re-read.
    #[error("outcome unknown for {operation}, it may or may not have applied: {message}")]
    Ambiguous {
        /// The operation, e.g. `put config.a`.
        operation: String,
        /// What happened.
        message: String,
    },

    /// The backend cannot do this atomically, so it did nothing.
    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        /// What was asked.
        operation: String,
        /// The backend's name.
        backend: &'static str,
    },

    /// A backend failure that fits no category above.
    #[error("backend error: {source}")]
    Backend {
        /// The backend's own error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Wraps a backend's own error.
    pub fn backend(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Backend {
            source: Arc::new(source),
        }
    }

    /// Whether this is a lost race on a condition (already exists or revision mismatch): the
    /// caller should re-read and decide again.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::AlreadyExists { .. } | Error::RevisionMismatch { .. }
        )
    }
}

fn describe(revision: Option<Revision>) -> String {
    match revision {
        Some(revision) => format!("revision {revision}"),
        None => "absent".to_owned(),
    }
}

fn describe_left(expires_in: Option<Duration>) -> String {
    match expires_in {
        Some(left) => format!(", expires in {left:?}"),
        None => String::new(),
    }
}
