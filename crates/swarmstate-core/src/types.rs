//! The plain data the contract speaks in: revisions, entries, write options, watch events and
//! transaction operations.

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use bytes::Bytes;

use crate::{Error, Key, Result};

/// The smallest TTL a write may carry.
pub const MIN_TTL: Duration = Duration::from_millis(1);
/// The largest TTL a write may carry (ten years). Longer-lived data should carry no TTL.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A store-wide change number. Every put, delete and expiry gets one, strictly greater than
/// every earlier one in the same store; revisions have gaps. 0 is never a revision.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(NonZeroU64);

impl Revision {
    /// The first revision a store can hand out.
    pub const FIRST: Revision = Revision(NonZeroU64::MIN);

    /// The revision `n`, or `None` for 0, which is never a revision.
    pub const fn new(n: u64) -> Option<Revision> {
        match NonZeroU64::new(n) {
            Some(n) => Some(Revision(n)),
            None => None,
        }
    }

    /// The revision as a number.
    pub const fn get(self) -> u64 {
        self.0.get()
    }

    /// The revision after this one.
    ///
    /// # Panics
    /// At `u64::MAX`, which a store would need centuries of writes to reach.
    pub fn next(self) -> Revision {
        Revision(self.0.checked_add(1).expect("revision space exhausted"))
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A key's current value and the revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Key,
    /// The value: opaque bytes.
    pub value: Bytes,
    /// The revision of the write that produced this value.
    pub revision: Revision,
    /// How long the entry has left to live when it was read, if it carries a TTL.
    pub expires_in: Option<Duration>,
}

/// How a put treats what is already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Write whatever is there.
    Overwrite,
    /// Write only if the key is absent (never written, deleted, or expired); otherwise
    /// [`Error::AlreadyExists`].
    Create,
    /// Write only if the key's current revision is this one; otherwise
    /// [`Error::RevisionMismatch`].
    Update(Revision),
}

impl PutMode {
    /// The condition this mode places on the key's current revision.
    pub fn condition(self) -> Condition {
        match self {
            PutMode::Overwrite => Condition::Any,
            PutMode::Create => Condition::Absent,
            PutMode::Update(revision) => Condition::At(revision),
        }
    }
}

/// Options of a [`put`](crate::StateStore::put).
///
/// ```
/// # use std::time::Duration;
/// # use swarmstate_core::{PutOptions, Revision};
/// let options = PutOptions::update(Revision::FIRST)
///     .ttl(Duration::from_secs(30))
///     .idempotency_key("worker-7:attempt-1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOptions {
    /// Overwrite, create, or update at a revision.
    pub mode: PutMode,
    /// Time to live. `None` makes the entry permanent — also on an update of an entry that had a
    /// TTL, so a refresh must carry the TTL again.
    pub ttl: Option<Duration>,
    /// Scoped to the key: once a write with this idempotency key has applied, a retry with the
    /// same idempotency key on the same key within the store's retention window (at least two
    /// minutes) returns the first write's revision and applies nothing again. A write that
    /// failed is not remembered, so its retry is decided afresh. The idempotency key
    /// identifies the request; the retry's value is not compared.
    pub idempotency_key: Option<String>,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions::overwrite()
    }
}

impl PutOptions {
    /// Write whatever is there.
    pub fn overwrite() -> PutOptions {
        PutOptions::with_mode(PutMode::Overwrite)
    }

    /// Write only if the key is absent.
    pub fn create() -> PutOptions {
        PutOptions::with_mode(PutMode::Create)
    }

    /// Write only if the key is at `revision`.
    pub fn update(revision: Revision) -> PutOptions {
        PutOptions::with_mode(PutMode::Update(revision))
    }

    /// Options with `mode`, no TTL and no idempotency key.
    pub fn with_mode(mode: PutMode) -> PutOptions {
        PutOptions {
            mode,
            ttl: None,
            idempotency_key: None,
        }
    }

    /// Sets a time to live, between [`MIN_TTL`] and [`MAX_TTL`].
    pub fn ttl(mut self, ttl: Duration) -> PutOptions {
        self.ttl = Some(ttl);
        self
    }

    /// Sets an idempotency key (see [`PutOptions::idempotency_key`]).
    pub fn idempotency_key(mut self, id: impl Into<String>) -> PutOptions {
        self.idempotency_key = Some(id.into());
        self
    }

    /// Checks the options on their own, before anything is sent.
    pub fn validate(&self) -> Result<()> {
        if let Some(ttl) = self.ttl {
            validate_ttl(ttl)?;
        }
        if let Some(id) = &self.idempotency_key
            && (id.is_empty() || id.len() > 256)
        {
            return Err(Error::InvalidInput {
                message: format!(
                    "an idempotency key must be 1 to 256 bytes, got {} bytes",
                    id.len()
                ),
            });
        }
        Ok(())
    }
}

/// Checks that `ttl` lies between [`MIN_TTL`] and [`MAX_TTL`].
pub fn validate_ttl(ttl: Duration) -> Result<()> {
    if (MIN_TTL..=MAX_TTL).contains(&ttl) {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            message: format!(
                "a TTL must be between {MIN_TTL:?} and {MAX_TTL:?}, got {ttl:?}; \
                 leave it out for an entry that never expires"
            ),
        })
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Only changes made after the watch is established.
    Now,
    /// Every change at or after this revision (replayed from the store's history), then live.
    /// A revision older than the history the store keeps is [`Error::Compacted`], never a
    /// partial replay.
    FromRevision(Revision),
    /// The current entries as [`WatchEvent::Put`]s, then [`WatchEvent::CaughtUp`], then live.
    ///
    /// The state at `CaughtUp` is what counts: a backend whose snapshot is read from a replica
    /// still catching up may hand out, before `CaughtUp`, changes (deletes too) made while the
    /// snapshot was read, in revision order (NATS does so for snapshots larger than half the
    /// watch buffer). Applying every event in order always gives the state at `CaughtUp`.
    Snapshot,
}

/// One item of a watch stream. Events arrive in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written (or, in a snapshot, exists).
    Put(Entry),
    /// A key was deleted.
    Delete {
        /// The deleted key.
        key: Key,
        /// The revision of the delete.
        revision: Revision,
    },
    /// A key's TTL ran out.
    Expire {
        /// The expired key.
        key: Key,
        /// The revision of the expiry.
        revision: Revision,
    },
    /// The snapshot is complete: every change up to `revision` has been reflected.
    CaughtUp {
        /// The store's revision when the snapshot was taken; `None` for a store that has
        /// never been written.
        revision: Option<Revision>,
    },
    /// The watcher fell behind (or its connection could not be resumed) and the stream ends
    /// after this item. Nothing was skipped silently: resume with
    /// [`WatchStart::FromRevision`]`(resume_from)` or re-snapshot.
    Lagged {
        /// The first revision this watcher has not been given.
        resume_from: Revision,
    },
}

impl WatchEvent {
    /// The key the event is about, if any.
    pub fn key(&self) -> Option<&Key> {
        match self {
            WatchEvent::Put(entry) => Some(&entry.key),
            WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => Some(key),
            WatchEvent::CaughtUp { .. } | WatchEvent::Lagged { .. } => None,
        }
    }

    /// The revision of the change, or of the marker.
    pub fn revision(&self) -> Option<Revision> {
        match self {
            WatchEvent::Put(entry) => Some(entry.revision),
            WatchEvent::Delete { revision, .. } | WatchEvent::Expire { revision, .. } => {
                Some(*revision)
            }
            WatchEvent::CaughtUp { revision } => *revision,
            WatchEvent::Lagged { resume_from } => Some(*resume_from),
        }
    }
}

/// What a transaction operation requires of its key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No requirement.
    Any,
    /// The key is absent (never written, deleted, or expired).
    Absent,
    /// The key's current revision is this one.
    At(Revision),
}

impl Condition {
    /// Decides this condition against a key's current revision (`None`: absent). This is the
    /// one place every backend decides a condition, so they all refuse alike: an `Absent`
    /// condition on a present key is [`Error::AlreadyExists`] naming its revision, an `At`
    /// condition on any other revision (or an absent key) is [`Error::RevisionMismatch`]
    /// naming both.
    pub fn check(self, key: &Key, current: Option<Revision>) -> Result<()> {
        match (self, current) {
            (Condition::Any, _) | (Condition::Absent, None) => Ok(()),
            (Condition::Absent, Some(revision)) => Err(Error::AlreadyExists {
                key: key.clone(),
                revision,
            }),
            (Condition::At(expected), actual) if actual != Some(expected) => {
                Err(Error::RevisionMismatch {
                    key: key.clone(),
                    expected,
                    actual,
                })
            }
            (Condition::At(_), _) => Ok(()),
        }
    }

    /// The condition a conditional delete at `expected` places on its key.
    pub fn expecting(expected: Option<Revision>) -> Condition {
        expected.map_or(Condition::Any, Condition::At)
    }
}

/// What a transaction operation does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnAction {
    /// Write a value, optionally with a TTL.
    Put {
        /// The value.
        value: Bytes,
        /// Time to live; `None` makes the entry permanent.
        ttl: Option<Duration>,
    },
    /// Delete the key (a no-op on an absent key).
    Delete,
    /// Write nothing; only require the condition. This is how a fenced write conditions on a
    /// lock key it does not change.
    Check,
}

/// One operation of a [`txn`](crate::StateStore::txn): an action on a key under a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOp {
    /// The key.
    pub key: Key,
    /// What to do.
    pub action: TxnAction,
    /// What the key's current state must be for the whole transaction to apply.
    pub condition: Condition,
}

impl TxnOp {
    /// Writes `value` to `key`, unconditionally.
    pub fn put(key: &Key, value: impl Into<Bytes>) -> TxnOp {
        TxnOp {
            key: key.clone(),
            action: TxnAction::Put {
                value: value.into(),
                ttl: None,
            },
            condition: Condition::Any,
        }
    }

    /// Deletes `key`, unconditionally.
    pub fn delete(key: &Key) -> TxnOp {
        TxnOp {
            key: key.clone(),
            action: TxnAction::Delete,
            condition: Condition::Any,
        }
    }

    /// Requires `condition` of `key` without changing it.
    pub fn check(key: &Key, condition: Condition) -> TxnOp {
        TxnOp {
            key: key.clone(),
            action: TxnAction::Check,
            condition,
        }
    }

    /// The bytes of key and value this operation carries.
    pub fn size(&self) -> usize {
        let value = match &self.action {
            TxnAction::Put { value, .. } => value.len(),
            TxnAction::Delete | TxnAction::Check => 0,
        };
        self.key.as_str().len() + value
    }

    /// Sets the condition.
    pub fn when(mut self, condition: Condition) -> TxnOp {
        self.condition = condition;
        self
    }

    /// Sets a TTL on a put. Deletes and checks carry no TTL, so on them this does nothing.
    pub fn ttl(mut self, ttl: Duration) -> TxnOp {
        if let TxnAction::Put { ttl: slot, .. } = &mut self.action {
            *slot = Some(ttl);
        }
        self
    }
}

/// The outcome of each operation of a committed transaction, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    /// The put was written at this revision.
    Put(Revision),
    /// The key was deleted at this revision.
    Deleted(Revision),
    /// The delete found the key absent; nothing changed.
    NotFound,
    /// The check held.
    Checked,
}

/// The most operations one transaction may hold.
pub const MAX_TXN_OPS: usize = 1000;

/// Checks a transaction's shape before anything is sent: 1 to [`MAX_TXN_OPS`] operations, each
/// key at most once, valid TTLs, values within `max_value_size`.
pub fn validate_txn(ops: &[TxnOp], max_value_size: usize) -> Result<()> {
    if ops.is_empty() {
        return Err(Error::InvalidInput {
            message: "a transaction needs at least one operation".into(),
        });
    }
    if ops.len() > MAX_TXN_OPS {
        return Err(Error::InvalidInput {
            message: format!(
                "a transaction holds at most {MAX_TXN_OPS} operations, got {}",
                ops.len()
            ),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    for op in ops {
        if !seen.insert(&op.key) {
            return Err(Error::InvalidInput {
                message: format!("key {} appears more than once in one transaction", op.key),
            });
        }
        if let TxnAction::Put { value, ttl } = &op.action {
            validate_value(&op.key, value, max_value_size)?;
            if let Some(ttl) = ttl {
                validate_ttl(*ttl)?;
            }
        }
    }
    Ok(())
}

/// Checks a value against the store's size limit.
pub fn validate_value(key: &Key, value: &Bytes, max_value_size: usize) -> Result<()> {
    if value.len() > max_value_size {
        return Err(Error::ValueTooLarge {
            key: key.clone(),
            size: value.len(),
            limit: max_value_size,
        });
    }
    Ok(())
}

/// What a backend is and what it can promise, so that callers and the conformance suite can
/// adapt (for example TTL tests wait in steps of the granularity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's name, e.g. `memory` or `nats`.
    pub backend: &'static str,
    /// TTLs are rounded up to a multiple of this; an entry disappears within its TTL plus this.
    pub ttl_granularity: Duration,
    /// The largest value accepted, in bytes.
    pub max_value_size: usize,
    /// How many events a watcher may have buffered before it is lagged.
    pub watch_buffer: usize,
    /// Whether writes survive a restart once acknowledged.
    pub durable: bool,
    /// Whether a watch can start from a revision whose key has since been overwritten or
    /// deleted. `MemoryStore` can, within the history it keeps; a NATS bucket keeps one message
    /// per key, so there such a start is [`Error::Compacted`](crate::Error::Compacted) — never
    /// a replay with holes.
    pub replays_overwritten: bool,
}
