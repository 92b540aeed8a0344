//! The decision step: a state machine over plain data. Deciding reads the state and the batch
//! decided so far and appends a [`ChangeSet`] to the batch; applying is a separate step, so a
//! durable backend can persist what was decided before anything becomes visible. It does no
//! I/O and reads no clock: the caller passes `now`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;

use super::change::{Change, ChangeSet, Remembered};
use super::clock::{Now, Timestamp};
use crate::{
    Condition, Entry, Error, Key, Pattern, PutOptions, Result, Revision, TxnAction, TxnOp,
    TxnResult, WatchEvent,
};

/// Limits of a [`KvState`].
#[derive(Debug, Clone)]
pub struct StateLimits {
    /// How many recent changes are kept for watches that start from a revision (at least 1).
    pub history: usize,
    /// How many bytes of keys and values the kept changes may hold; the oldest are dropped
    /// past it (the newest change is always kept).
    pub history_bytes: u64,
    /// How long a successful idempotent write is remembered.
    pub idempotency_window: Duration,
    /// The most bytes of keys and values the live entries may hold; `None` for no limit. A
    /// write that would grow the data past it fails with [`Error::QuotaExceeded`].
    pub quota: Option<u64>,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            history: 10_000,
            history_bytes: 64 * 1024 * 1024,
            idempotency_window: Duration::from_secs(120),
            quota: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Stored {
    value: Bytes,
    revision: Revision,
    expires_at: Option<Timestamp>,
}

/// Writes decided but not yet applied: their [`ChangeSet`] and what each key they touched
/// holds after them, so that later decisions in the same batch see them.
///
/// A batch belongs to the state it was started from: apply it to that state, or drop it.
#[derive(Debug)]
pub struct Batch {
    // The state's last revision when the batch began.
    base: u64,
    // The last revision handed out in the batch.
    next: u64,
    // How much the batch changes the live data's size, in bytes.
    grown: i64,
    changes: ChangeSet,
}

impl Batch {
    /// What the batch changes so far.
    pub fn changes(&self) -> &ChangeSet {
        &self.changes
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    fn advance(&mut self) -> Revision {
        self.next += 1;
        Revision::new(self.next).expect("incremented from 0 or more")
    }

    // What the batch left `key` at: `Some(Some(revision))` written, `Some(None)` removed,
    // `None` untouched.
    fn touched(&self, key: &Key) -> Option<Option<Revision>> {
        self.last_change(key).map(|change| match change {
            Change::Put { revision, .. } => Some(*revision),
            Change::Delete { .. } | Change::Expire { .. } => None,
        })
    }

    // Batches are small (one write, or one group commit), so a scan from the newest change is
    // cheaper than keeping an index.
    fn last_change(&self, key: &Key) -> Option<&Change> {
        self.changes
            .changes
            .iter()
            .rev()
            .find(|change| change.key() == key)
    }

    // Adds `change`; `growth` is what it adds to the live data's size, known only where a
    // quota needs it.
    fn push(&mut self, change: Change, growth: Option<i64>) {
        if let Some(growth) = growth {
            self.grown += growth;
        }
        self.changes.changes.push(change);
    }
}

/// The whole state of a store: entries, the revision counter, the expiry queue, recent
/// history and remembered idempotent writes.
///
/// Deciding (`put`, `delete`, `txn`, `expire_due`) takes `&self` and a [`Batch`]: it first
/// adds an `Expire` change for every entry whose deadline has passed, then either adds the
/// operation's changes to the batch or fails and adds nothing more. [`KvState::apply`] makes a
/// batch the current state.
#[derive(Debug)]
pub struct KvState {
    // foldhash: several times faster than SipHash on short keys, still seeded per map.
    entries: HashMap<Key, Stored, foldhash::fast::RandomState>,
    // Invariant: exactly the keys of `entries`. The hash map answers point reads and writes;
    // this answers listings in key order, at a cost in proportion to what they return. Only
    // a write that adds or removes a key touches it.
    ordered: BTreeSet<Key>,
    // Invariant: the revision of the last change, 0 before the first.
    last_revision: u64,
    // Invariant: holds exactly one (deadline, key) per entry that has a deadline.
    expiries: BTreeSet<(Timestamp, Key)>,
    // Invariant: the bytes of keys and values of `entries`.
    bytes: u64,
    // Invariant: contiguous revisions ending at `last_revision`, at most `limits.history` long
    // and, but for the newest change, within `limits.history_bytes`.
    history: VecDeque<Change>,
    // Invariant: the bytes of keys and values of `history`.
    history_size: u64,
    // Each record with the time it was decided; `remembered_order` is that order.
    remembered: HashMap<(Key, String), (Revision, Timestamp)>,
    remembered_order: VecDeque<(Timestamp, Key, String)>,
    limits: StateLimits,
}

impl KvState {
    /// An empty state.
    pub fn new(limits: StateLimits) -> KvState {
        KvState {
            entries: HashMap::default(),
            ordered: BTreeSet::new(),
            last_revision: 0,
            expiries: BTreeSet::new(),
            bytes: 0,
            history: VecDeque::new(),
            history_size: 0,
            remembered: HashMap::new(),
            remembered_order: VecDeque::new(),
            limits: StateLimits {
                history: limits.history.max(1),
                ..limits
            },
        }
    }

    /// The revision of the last change, if any.
    pub fn last_revision(&self) -> Option<Revision> {
        Revision::new(self.last_revision)
    }

    /// The oldest change the history keeps, if any: a durable backend may drop what it kept
    /// before it.
    pub fn oldest_kept(&self) -> Option<Revision> {
        self.history.front().map(Change::revision)
    }

    /// The bytes of keys and values the live entries hold (what the quota limits).
    pub fn data_bytes(&self) -> u64 {
        self.bytes
    }

    /// The limits this state keeps.
    pub fn limits(&self) -> &StateLimits {
        &self.limits
    }

    /// A new, empty batch on this state.
    pub fn batch(&self) -> Batch {
        Batch {
            base: self.last_revision,
            next: self.last_revision,
            grown: 0,
            changes: ChangeSet::default(),
        }
    }

    /// The entry for `key` as seen at `now` (an entry past its deadline is already absent).
    pub fn get<'n>(&self, key: &Key, now: impl Into<Now<'n>>) -> Option<Entry> {
        let now: Now<'n> = now.into();
        let stored = self.entries.get(key)?;
        live(stored, now).then(|| entry(key, stored, now))
    }

    /// Present keys selected by `pattern`, in key order.
    pub fn keys<'n>(&self, pattern: &Pattern, now: impl Into<Now<'n>>) -> Vec<Key> {
        let now: Now<'n> = now.into();
        self.selected(pattern)
            .filter(|key| {
                self.entries
                    .get(*key)
                    .is_some_and(|stored| live(stored, now))
            })
            .cloned()
            .collect()
    }

    // The keys `pattern` selects, present or past their deadline, in key order. A prefix is
    // one range of the ordered index: keys under `prefix.` sort together, from `prefix.` up.
    fn selected<'s>(&'s self, pattern: &'s Pattern) -> Box<dyn Iterator<Item = &'s Key> + 's> {
        match pattern {
            Pattern::Exact(key) => {
                Box::new(self.entries.get_key_value(key).map(|(k, _)| k).into_iter())
            }
            Pattern::All => Box::new(self.ordered.iter().filter(|key| !key.is_reserved())),
            Pattern::Prefix(prefix) => {
                let start = format!("{prefix}.");
                let range = self
                    .ordered
                    .range::<str, _>((Bound::Included(start.as_str()), Bound::Unbounded));
                Box::new(range.take_while(move |key| key.as_str().starts_with(start.as_str())))
            }
        }
    }

    /// Present entries selected by `pattern`, in key order.
    pub fn snapshot<'n>(&self, pattern: &Pattern, now: impl Into<Now<'n>>) -> Vec<Entry> {
        let now: Now<'n> = now.into();
        self.keys(pattern, now)
            .into_iter()
            .filter_map(|key| self.get(&key, now))
            .collect()
    }

    /// Kept changes at or after `from` selected by `pattern`, as events seen at `now`, or
    /// [`Error::Compacted`] if changes at `from` are no longer kept.
    pub fn replay<'n>(
        &self,
        pattern: &Pattern,
        from: Revision,
        now: impl Into<Now<'n>>,
    ) -> Result<Vec<WatchEvent>> {
        let now: Now<'n> = now.into();
        let oldest = match self.history.front() {
            Some(change) => change.revision(),
            None => Revision::new(self.last_revision + 1).expect("never 0"),
        };
        if from < oldest {
            return Err(Error::Compacted {
                requested: from,
                oldest,
            });
        }
        let skip = (from.get() - oldest.get()) as usize;
        Ok(self
            .history
            .iter()
            .skip(skip)
            .filter(|change| pattern.matches(change.key()))
            .map(|change| change.event(now.get()))
            .collect())
    }

    /// The earliest deadline of any entry.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Decides the expiry of every entry whose deadline is at or before `now` and that the
    /// batch has not changed already: one `Expire` change each, in deadline order.
    pub fn expire_due<'n>(&self, batch: &mut Batch, now: impl Into<Now<'n>>) {
        let now: Now<'n> = now.into();
        for (at, key) in &self.expiries {
            if *at > now.get() {
                break;
            }
            if batch.touched(key).is_some() {
                continue;
            }
            let growth = self.growth(batch, key, 0);
            let revision = batch.advance();
            batch.push(
                Change::Expire {
                    key: key.clone(),
                    revision,
                },
                growth,
            );
        }
    }

    /// Decides a put. See [`StateStore::put`](crate::StateStore::put).
    pub fn put<'n>(
        &self,
        batch: &mut Batch,
        key: &Key,
        value: Bytes,
        options: &PutOptions,
        now: impl Into<Now<'n>>,
    ) -> Result<Revision> {
        let now: Now<'n> = now.into();
        self.expire_due(batch, now);
        if let Some(id) = &options.idempotency_key
            && let Some(revision) = self.remembered_write(batch, key, id, now)
        {
            return Ok(revision);
        }
        options
            .mode
            .condition()
            .check(key, self.current(batch, key))?;
        let growth = self.growth(batch, key, size(key, &value));
        if let Some(growth) = growth {
            self.check_quota(batch, key, growth)?;
        }
        let revision = self.write(batch, key, value, options.ttl, now, growth);
        if let Some(id) = &options.idempotency_key {
            batch.changes.remembered.push(Remembered {
                key: key.clone(),
                idempotency_key: id.clone(),
                revision,
                at: now.get(),
            });
        }
        Ok(revision)
    }

    /// Decides a delete. See [`StateStore::delete`](crate::StateStore::delete).
    pub fn delete<'n>(
        &self,
        batch: &mut Batch,
        key: &Key,
        expected: Option<Revision>,
        now: impl Into<Now<'n>>,
    ) -> Result<Option<Revision>> {
        let now: Now<'n> = now.into();
        self.expire_due(batch, now);
        let current = self.current(batch, key);
        Condition::expecting(expected).check(key, current)?;
        Ok(current.map(|_| remove(self, batch, key)))
    }

    /// Decides a transaction: checks every condition first, then decides every action in
    /// order. See [`StateStore::txn`](crate::StateStore::txn). The caller validates the shape
    /// (in particular, each key at most once).
    pub fn txn<'n>(
        &self,
        batch: &mut Batch,
        ops: &[TxnOp],
        now: impl Into<Now<'n>>,
    ) -> Result<Vec<TxnResult>> {
        let now: Now<'n> = now.into();
        self.expire_due(batch, now);
        for op in ops {
            op.condition.check(&op.key, self.current(batch, &op.key))?;
        }
        if self.limits.quota.is_some() {
            let mut growth = 0i64;
            let mut first_grown = None;
            for op in ops {
                let before = self.size_now(batch, &op.key) as i64;
                let after = match &op.action {
                    TxnAction::Put { value, .. } => size(&op.key, value) as i64,
                    TxnAction::Delete => 0,
                    TxnAction::Check => before,
                };
                if after > before && first_grown.is_none() {
                    first_grown = Some(&op.key);
                }
                growth += after - before;
            }
            if let Some(key) = first_grown {
                self.check_quota(batch, key, growth)?;
            }
        }
        let results = ops
            .iter()
            .map(|op| match &op.action {
                TxnAction::Put { value, ttl } => {
                    let growth = self.growth(batch, &op.key, size(&op.key, value));
                    TxnResult::Put(self.write(batch, &op.key, value.clone(), *ttl, now, growth))
                }
                TxnAction::Delete if self.current(batch, &op.key).is_some() => {
                    TxnResult::Deleted(remove(self, batch, &op.key))
                }
                TxnAction::Delete => TxnResult::NotFound,
                TxnAction::Check => TxnResult::Checked,
            })
            .collect();
        Ok(results)
    }

    /// Makes `batch` the current state: applies its changes in order, keeps them in the
    /// history, remembers its idempotent writes and forgets those older than the window at
    /// `now`. With `events`, appends each change's watch event as seen at `now`. Leaves the
    /// batch empty and ready for the next decisions on this state.
    ///
    /// # Panics
    ///
    /// If the batch was started on another state or revision (a bug in the caller).
    pub fn apply<'n>(
        &mut self,
        batch: &mut Batch,
        now: impl Into<Now<'n>>,
        mut events: Option<&mut Vec<WatchEvent>>,
    ) {
        let now: Now<'n> = now.into();
        assert_eq!(
            batch.base, self.last_revision,
            "a batch applies only to the state it was decided on"
        );
        batch.grown = 0;
        // One change is the common case (a put or a delete): pop it rather than drain.
        if batch.changes.changes.len() == 1 {
            let change = batch.changes.changes.pop().expect("checked above");
            self.apply_one(change, now, events.as_deref_mut());
        } else {
            for change in batch.changes.changes.drain(..) {
                self.apply_one(change, now, events.as_deref_mut());
            }
        }
        if !batch.changes.remembered.is_empty() {
            for record in batch.changes.remembered.drain(..) {
                self.remember(record);
            }
        }
        if !self.remembered_order.is_empty() {
            self.forget_old_idempotency(now);
        }
        batch.base = self.last_revision;
        batch.next = self.last_revision;
    }

    fn apply_one(&mut self, change: Change, now: Now<'_>, events: Option<&mut Vec<WatchEvent>>) {
        debug_assert_eq!(change.revision().get(), self.last_revision + 1);
        self.last_revision = change.revision().get();
        if let Some(events) = events {
            events.push(change.event(now.get()));
        }
        match &change {
            Change::Put {
                key,
                value,
                revision,
                expires_at,
            } => {
                let stored = Stored {
                    value: value.clone(),
                    revision: *revision,
                    expires_at: *expires_at,
                };
                self.bytes += size(key, value);
                match self.entries.insert(key.clone(), stored) {
                    Some(old) => {
                        self.bytes -= size(key, &old.value);
                        if let Some(at) = old.expires_at {
                            self.expiries.remove(&(at, key.clone()));
                        }
                    }
                    None => {
                        self.ordered.insert(key.clone());
                    }
                }
                if let Some(at) = expires_at {
                    self.expiries.insert((*at, key.clone()));
                }
            }
            Change::Delete { key, .. } | Change::Expire { key, .. } => {
                if let Some(old) = self.entries.remove(key) {
                    self.ordered.remove(key);
                    self.bytes -= size(key, &old.value);
                    if let Some(at) = old.expires_at {
                        self.expiries.remove(&(at, key.clone()));
                    }
                }
            }
        }
        self.record(change);
    }

    // The key's revision after the batch so far (`None`: absent). Entries past their deadline
    // are in the batch as expired, because every decision expires what is due first.
    fn current(&self, batch: &Batch, key: &Key) -> Option<Revision> {
        match batch.touched(key) {
            Some(revision) => revision,
            None => self.entries.get(key).map(|stored| stored.revision),
        }
    }

    // How much `key` holding `new_size` bytes grows the live data, computed only where a quota
    // needs it (it costs a lookup).
    fn growth(&self, batch: &Batch, key: &Key, new_size: u64) -> Option<i64> {
        self.limits
            .quota
            .is_some()
            .then(|| new_size as i64 - self.size_now(batch, key) as i64)
    }

    // The bytes `key` holds after the batch so far.
    fn size_now(&self, batch: &Batch, key: &Key) -> u64 {
        match batch.last_change(key) {
            Some(Change::Put { value, .. }) => size(key, value),
            Some(Change::Delete { .. } | Change::Expire { .. }) => 0,
            None => self
                .entries
                .get(key)
                .map_or(0, |stored| size(key, &stored.value)),
        }
    }

    // Refuses a write that grows the live data by `growth` bytes past the quota. A write that
    // does not grow it passes even above the quota (a quota lowered at a reopen), so the
    // store can always be made smaller.
    fn check_quota(&self, batch: &Batch, key: &Key, growth: i64) -> Result<()> {
        let Some(quota) = self.limits.quota else {
            return Ok(());
        };
        if growth <= 0 {
            return Ok(());
        }
        let needed = (self.bytes as i64 + batch.grown + growth).max(0) as u64;
        if needed > quota {
            return Err(Error::QuotaExceeded {
                key: key.clone(),
                needed,
                quota,
            });
        }
        Ok(())
    }

    fn remembered_write(
        &self,
        batch: &Batch,
        key: &Key,
        id: &str,
        now: Now<'_>,
    ) -> Option<Revision> {
        let in_batch = batch
            .changes
            .remembered
            .iter()
            .find(|record| record.key == *key && record.idempotency_key == id);
        if let Some(record) = in_batch {
            return Some(record.revision);
        }
        let (revision, at) = self.remembered.get(&(key.clone(), id.to_owned()))?;
        (now.get().saturating_duration_since(*at) < self.limits.idempotency_window)
            .then_some(*revision)
    }

    fn write(
        &self,
        batch: &mut Batch,
        key: &Key,
        value: Bytes,
        ttl: Option<Duration>,
        now: Now<'_>,
        growth: Option<i64>,
    ) -> Revision {
        let revision = batch.advance();
        let change = Change::Put {
            key: key.clone(),
            value,
            revision,
            expires_at: ttl.map(|ttl| now.get().saturating_add(ttl)),
        };
        batch.push(change, growth);
        revision
    }

    fn record(&mut self, change: Change) {
        self.history_size += change_size(&change);
        self.history.push_back(change);
        while self.history.len() > self.limits.history
            || (self.history_size > self.limits.history_bytes && self.history.len() > 1)
        {
            let dropped = self.history.pop_front().expect("longer than 1");
            self.history_size -= change_size(&dropped);
        }
    }

    fn remember(&mut self, record: Remembered) {
        self.remembered_order.push_back((
            record.at,
            record.key.clone(),
            record.idempotency_key.clone(),
        ));
        self.remembered.insert(
            (record.key, record.idempotency_key),
            (record.revision, record.at),
        );
    }

    fn forget_old_idempotency(&mut self, now: Now<'_>) {
        while let Some((at, _, _)) = self.remembered_order.front() {
            if now.get().saturating_duration_since(*at) < self.limits.idempotency_window {
                break;
            }
            let (at, key, id) = self.remembered_order.pop_front().expect("checked above");
            // A later write with the same ids replaced the record; that one stays.
            let id = (key, id);
            if self
                .remembered
                .get(&id)
                .is_some_and(|(_, kept)| *kept == at)
            {
                self.remembered.remove(&id);
            }
        }
    }
}

fn remove(state: &KvState, batch: &mut Batch, key: &Key) -> Revision {
    let growth = state.growth(batch, key, 0);
    let revision = batch.advance();
    let change = Change::Delete {
        key: key.clone(),
        revision,
    };
    batch.push(change, growth);
    revision
}

// What an entry counts against the quota.
fn size(key: &Key, value: &Bytes) -> u64 {
    (key.as_str().len() + value.len()) as u64
}

fn change_size(change: &Change) -> u64 {
    match change {
        Change::Put { key, value, .. } => size(key, value),
        Change::Delete { key, .. } | Change::Expire { key, .. } => key.as_str().len() as u64,
    }
}

fn live(stored: &Stored, now: Now<'_>) -> bool {
    stored.expires_at.is_none_or(|at| at > now.get())
}

fn entry(key: &Key, stored: &Stored, now: Now<'_>) -> Entry {
    Entry {
        key: key.clone(),
        value: stored.value.clone(),
        revision: stored.revision,
        expires_in: stored
            .expires_at
            .map(|at| at.saturating_duration_since(now.get())),
    }
}

mod restore;

pub use restore::{Persisted, StoredEntry};

#[cfg(test)]
mod tests;
