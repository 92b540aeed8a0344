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
    #[error("key {key} is {}, expected revision {expected}", describe(*.actual))]
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

    /// The write would take the store past its size quota; nothing was written. Reads,
    /// deletes and expiries keep working, and a write that makes the store smaller is allowed.
    #[error(
        "the store's quota is full: {key} would bring the stored data to {needed} bytes, more than the quota of {quota} bytes (delete something, or reopen with a larger quota)"
    )]
    QuotaExceeded {
        /// The key of the write (the first key a transaction grows).
        key: Key,
        /// The stored data's size with the write, in bytes.
        needed: u64,
        /// The quota in bytes.
        quota: u64,
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

    /// Data the store holds is not what it should be (a record that does not decode, a
    /// broken invariant of a persisted file). Nothing was changed; the data needs repair.
    #[error("corrupt data at {what}: {message}")]
    Corrupt {
        /// Where the bad data is (a key, a file).
        what: String,
        /// What is wrong with it.
        message: String,
    },

    /// A backend failure that fits no category above.
    #[error("backend error: {source}")]
    Backend {
        /// The backend's own error.
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
}

/// The category of an [`Error`], with a stable name: what a wire format carries (the HTTP
/// problem `kind`, a Python exception) so that a client can map it back to the same variant.
///
/// Names never change once released; new categories may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::NotFound`]: `not_found`.
    NotFound,
    /// [`Error::AlreadyExists`]: `already_exists`.
    AlreadyExists,
    /// [`Error::RevisionMismatch`]: `revision_mismatch`.
    RevisionMismatch,
    /// [`Error::InvalidKey`]: `invalid_key`.
    InvalidKey,
    /// [`Error::ValueTooLarge`]: `value_too_large`.
    ValueTooLarge,
    /// [`Error::QuotaExceeded`]: `quota_exceeded`.
    QuotaExceeded,
    /// [`Error::InvalidInput`]: `invalid_input`.
    InvalidInput,
    /// [`Error::Compacted`]: `compacted`.
    Compacted,
    /// [`Error::LockHeld`]: `lock_held`.
    LockHeld,
    /// [`Error::LockLost`]: `lock_lost`.
    LockLost,
    /// [`Error::Closed`]: `closed`.
    Closed,
    /// [`Error::Unavailable`]: `unavailable`.
    Unavailable,
    /// [`Error::Ambiguous`]: `ambiguous`.
    Ambiguous,
    /// [`Error::Unsupported`]: `unsupported`.
    Unsupported,
    /// [`Error::Corrupt`]: `corrupt`.
    Corrupt,
    /// [`Error::Backend`]: `backend`.
    Backend,
}

impl ErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: &[ErrorKind] = &[
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::RevisionMismatch,
        ErrorKind::InvalidKey,
        ErrorKind::ValueTooLarge,
        ErrorKind::QuotaExceeded,
        ErrorKind::InvalidInput,
        ErrorKind::Compacted,
        ErrorKind::LockHeld,
        ErrorKind::LockLost,
        ErrorKind::Closed,
        ErrorKind::Unavailable,
        ErrorKind::Ambiguous,
        ErrorKind::Unsupported,
        ErrorKind::Corrupt,
        ErrorKind::Backend,
    ];

    /// The stable name: lowercase words joined by `_`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::RevisionMismatch => "revision_mismatch",
            ErrorKind::InvalidKey => "invalid_key",
            ErrorKind::ValueTooLarge => "value_too_large",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Compacted => "compacted",
            ErrorKind::LockHeld => "lock_held",
            ErrorKind::LockLost => "lock_lost",
            ErrorKind::Closed => "closed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Ambiguous => "ambiguous",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Backend => "backend",
        }
    }

    /// The kind with this stable name, if any.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == name)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// This error's category.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::RevisionMismatch { .. } => ErrorKind::RevisionMismatch,
            Error::InvalidKey { .. } => ErrorKind::InvalidKey,
            Error::ValueTooLarge { .. } => ErrorKind::ValueTooLarge,
            Error::QuotaExceeded { .. } => ErrorKind::QuotaExceeded,
            Error::InvalidInput { .. } => ErrorKind::InvalidInput,
            Error::Compacted { .. } => ErrorKind::Compacted,
            Error::LockHeld { .. } => ErrorKind::LockHeld,
            Error::LockLost { .. } => ErrorKind::LockLost,
            Error::Closed => ErrorKind::Closed,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Ambiguous { .. } => ErrorKind::Ambiguous,
            Error::Unsupported { .. } => ErrorKind::Unsupported,
            Error::Corrupt { .. } => ErrorKind::Corrupt,
            Error::Backend { .. } => ErrorKind::Backend,
        }
    }

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
        Some(revision) => format!("at revision {revision}"),
        None => "absent".to_owned(),
    }
}

fn describe_left(expires_in: Option<Duration>) -> String {
    match expires_in {
        Some(left) => format!(", expires in {left:?}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_distinct_and_round_trip() {
        let mut names: Vec<&str> = ErrorKind::ALL.iter().map(|kind| kind.as_str()).collect();
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.as_str()), Some(*kind));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::from_name("no_such_kind"), None);
    }

    #[test]
    fn every_variant_has_its_own_kind() {
        let key = Key::new("a").unwrap();
        let errors = [
            Error::NotFound { key: key.clone() },
            Error::AlreadyExists {
                key: key.clone(),
                revision: Revision::FIRST,
            },
            Error::RevisionMismatch {
                key: key.clone(),
                expected: Revision::FIRST,
                actual: None,
            },
            Error::InvalidKey {
                key: String::new(),
                rule: KeyRule::Empty,
            },
            Error::ValueTooLarge {
                key: key.clone(),
                size: 2,
                limit: 1,
            },
            Error::QuotaExceeded {
                key: key.clone(),
                needed: 2,
                quota: 1,
            },
            Error::InvalidInput {
                message: String::new(),
            },
            Error::Compacted {
                requested: Revision::FIRST,
                oldest: Revision::FIRST,
            },
            Error::LockHeld {
                key: key.clone(),
                holder: String::new(),
                expires_in: None,
            },
            Error::LockLost { key },
            Error::Closed,
            Error::Unavailable {
                message: String::new(),
            },
            Error::Ambiguous {
                operation: String::new(),
                message: String::new(),
            },
            Error::Unsupported {
                operation: String::new(),
                backend: "memory",
            },
            Error::Corrupt {
                what: String::new(),
                message: String::new(),
            },
            Error::backend(std::io::Error::other("x")),
        ];
        let kinds: Vec<ErrorKind> = errors.iter().map(Error::kind).collect();
        assert_eq!(kinds, ErrorKind::ALL);
    }
}
