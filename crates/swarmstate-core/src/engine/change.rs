//! What a decision produces: plain data a durable backend persists before anything is applied
//! or acknowledged, and from which a restarted store is rebuilt.

use bytes::Bytes;

use super::clock::Timestamp;
use crate::{Entry, Key, Revision, WatchEvent};

/// One change to one key, at its own revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key now holds `value`.
    Put {
        /// The key.
        key: Key,
        /// The value.
        value: Bytes,
        /// The revision of this write.
        revision: Revision,
        /// When the entry expires, if it has a TTL.
        expires_at: Option<Timestamp>,
    },
    /// The key was deleted.
    Delete {
        /// The key.
        key: Key,
        /// The revision of the delete.
        revision: Revision,
    },
    /// The key reached its deadline and was removed.
    Expire {
        /// The key.
        key: Key,
        /// The revision of the expiry.
        revision: Revision,
    },
}

impl Change {
    /// The key changed.
    pub fn key(&self) -> &Key {
        match self {
            Change::Put { key, .. } | Change::Delete { key, .. } | Change::Expire { key, .. } => {
                key
            }
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Change::Put { revision, .. }
            | Change::Delete { revision, .. }
            | Change::Expire { revision, .. } => *revision,
        }
    }

    /// The watch event of this change as seen at `now` (a put's `expires_in` is what is left of
    /// its TTL then).
    pub fn event(&self, now: Timestamp) -> WatchEvent {
        match self {
            Change::Put {
                key,
                value,
                revision,
                expires_at,
            } => WatchEvent::Put(Entry {
                key: key.clone(),
                value: value.clone(),
                revision: *revision,
                expires_in: expires_at.map(|at| at.saturating_duration_since(now)),
            }),
            Change::Delete { key, revision } => WatchEvent::Delete {
                key: key.clone(),
                revision: *revision,
            },
            Change::Expire { key, revision } => WatchEvent::Expire {
                key: key.clone(),
                revision: *revision,
            },
        }
    }
}

/// A successful idempotent write, remembered for the idempotency window so that a retry with
/// the same idempotency key on the same key returns `revision` and applies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// The key written.
    pub key: Key,
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// The revision the write got.
    pub revision: Revision,
    /// When the write was decided; the record is forgotten a window after.
    pub at: Timestamp,
}

/// Everything one decision (or one batch of decisions) changes, in revision order: what a
/// durable backend persists, atomically, before it applies and acknowledges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// The changes, at consecutive revisions.
    pub changes: Vec<Change>,
    /// Idempotency records of the writes among them that carried an idempotency key.
    pub remembered: Vec<Remembered>,
}

impl ChangeSet {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.remembered.is_empty()
    }

    /// The revision of the last change, if any.
    pub fn last_revision(&self) -> Option<Revision> {
        self.changes.last().map(Change::revision)
    }

    /// Empties the set, keeping its allocations.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.remembered.clear();
    }
}
