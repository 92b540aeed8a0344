//! What a [`KvState`] is made of as plain data, for a durable backend to persist and to give
//! back at the next open.

use bytes::Bytes;

use super::{KvState, StateLimits, Stored, size};
use crate::engine::change::{Change, Remembered};
use crate::engine::clock::Timestamp;
use crate::{Error, Key, Result, Revision};

/// One entry as a durable backend keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The key.
    pub key: Key,
    /// The value.
    pub value: Bytes,
    /// The revision of the write that produced it.
    pub revision: Revision,
    /// When it expires, if it has a TTL.
    pub expires_at: Option<Timestamp>,
}

/// Everything a [`KvState`] is made of, as a durable backend persists it and gives it back
/// to [`KvState::restore`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The entries, in any order, one per key.
    pub entries: Vec<StoredEntry>,
    /// The revision of the last change, `None` before the first.
    pub last_revision: Option<Revision>,
    /// Recent changes, in revision order, contiguous and ending at `last_revision` (or empty).
    pub history: Vec<Change>,
    /// Idempotency records still in their window.
    pub remembered: Vec<Remembered>,
}

impl KvState {
    /// The state `persisted` describes, or [`Error::Corrupt`] naming what is inconsistent (a
    /// key twice, a revision above the counter, a history with gaps or ending elsewhere).
    /// Entries past their deadline are kept: the first decision expires them, at new
    /// revisions. History beyond the limit is dropped from the old end.
    pub fn restore(limits: StateLimits, persisted: Persisted) -> Result<KvState> {
        let corrupt = |message: String| Error::Corrupt {
            what: "the persisted state".to_owned(),
            message,
        };
        let mut state = KvState::new(limits);
        let last = persisted.last_revision.map_or(0, Revision::get);
        state.last_revision = last;
        let mut keys = Vec::with_capacity(persisted.entries.len());
        for entry in persisted.entries {
            if entry.revision.get() > last {
                return Err(corrupt(format!(
                    "key {} is at revision {}, after the last revision {last}",
                    entry.key, entry.revision
                )));
            }
            if let Some(at) = entry.expires_at {
                state.expiries.insert((at, entry.key.clone()));
            }
            state.bytes += size(&entry.key, &entry.value);
            let stored = Stored {
                value: entry.value,
                revision: entry.revision,
                expires_at: entry.expires_at,
            };
            if state.entries.insert(entry.key.clone(), stored).is_some() {
                return Err(corrupt(format!("key {} is stored twice", entry.key)));
            }
            keys.push(entry.key);
        }
        // Built at once: from keys already in order (as a durable backend reads them) this is
        // a linear bulk load rather than one insert each.
        state.ordered = keys.into_iter().collect();
        let kept = persisted.history.len() as u64;
        if kept > last {
            return Err(corrupt(format!(
                "{kept} changes of history, more than the last revision {last}"
            )));
        }
        for (expected, change) in (last + 1 - kept..).zip(persisted.history) {
            if change.revision().get() != expected {
                return Err(corrupt(format!(
                    "history holds revision {} where {expected} belongs",
                    change.revision()
                )));
            }
            state.record(change);
        }
        for record in persisted.remembered {
            state.remember(record);
        }
        Ok(state)
    }

    /// Everything this state is made of (for tests and for a backend that rewrites its file).
    pub fn persisted(&self) -> Persisted {
        let entries = self
            .ordered
            .iter()
            .map(|key| {
                let stored = &self.entries[key];
                StoredEntry {
                    key: key.clone(),
                    value: stored.value.clone(),
                    revision: stored.revision,
                    expires_at: stored.expires_at,
                }
            })
            .collect();
        Persisted {
            entries,
            last_revision: self.last_revision(),
            history: self.history.iter().cloned().collect(),
            remembered: self
                .remembered_order
                .iter()
                .filter_map(|(at, key, id)| {
                    let (revision, _) = self.remembered.get(&(key.clone(), id.clone()))?;
                    Some(Remembered {
                        key: key.clone(),
                        idempotency_key: id.clone(),
                        revision: *revision,
                        at: *at,
                    })
                })
                .collect(),
        }
    }
}
