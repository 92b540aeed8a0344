//! What this client last knew of each key's last message: hints that let a write name the
//! message it replaces (see `crate::expiry`) without reading it first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use swarmstate_core::{Key, Revision};

use crate::wire::Last;

/// How many keys a store remembers the last message of.
const SEEN_KEPT: usize = 4096;

/// What this client last knew of a key's last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The message's stream sequence; 0 for a subject without messages.
    pub(crate) sequence: u64,
    pub(crate) held: Held,
}

/// What a key's last message means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// No value: no message, a tombstone, or an expiry marker.
    Nothing,
    /// A value, expiring at `deadline` (this machine's monotonic clock) if it has a TTL.
    Value { deadline: Option<Instant> },
}

impl Seen {
    /// A subject without messages.
    pub(crate) const NONE: Seen = Seen {
        sequence: 0,
        held: Held::Nothing,
    };

    pub(crate) fn of(last: Option<&Last>) -> Seen {
        match last {
            None => Seen::NONE,
            Some(last) => Seen {
                sequence: last.sequence,
                held: match &last.live {
                    None => Held::Nothing,
                    Some(_) => Held::Value {
                        deadline: last.deadline,
                    },
                },
            },
        }
    }

    /// The revision of the value it holds, if any.
    pub(crate) fn value(&self) -> Option<Revision> {
        match self.held {
            Held::Value { .. } => Revision::new(self.sequence),
            Held::Nothing => None,
        }
    }

    /// Whether it is a value at exactly `revision`.
    pub(crate) fn holds(&self, revision: Revision) -> bool {
        self.value() == Some(revision)
    }

    /// When the TTL of the value it holds ends, if it holds one with a TTL.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.held {
            Held::Value { deadline } => deadline,
            Held::Nothing => None,
        }
    }
}

/// The last message of keys this client wrote or read. A stale entry costs one refused write
/// and a read, so it is a bounded cache of hints, never an authority.
#[derive(Debug, Default)]
pub(crate) struct SeenCache {
    keys: Mutex<HashMap<Key, Seen>>,
}

impl SeenCache {
    /// What this client last knew of `key`, if it remembers.
    pub(crate) fn get(&self, key: &Key) -> Option<Seen> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(key).copied()
    }

    pub(crate) fn remember(&self, key: &Key, what: Seen) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        // A cache of hints: start over rather than grow without bound.
        if keys.len() >= SEEN_KEPT && !keys.contains_key(key) {
            keys.clear();
        }
        keys.insert(key.clone(), what);
    }

    pub(crate) fn forget(&self, key: &Key) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(key);
    }
}
