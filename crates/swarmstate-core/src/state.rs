//! The decision step: a plain state machine over plain data that decides the outcome of every
//! write and the events it produces. It does no I/O and reads no clock (the caller passes
//! `now`), so the memory backend wraps it in a lock and a durable backend can persist what it
//! decides before acknowledging.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::{
    Condition, Entry, Error, Key, Pattern, PutOptions, Result, Revision, TxnAction, TxnOp,
    TxnResult, WatchEvent,
};

#[derive(Debug, Clone)]
struct Stored {
    value: Bytes,
    revision: Revision,
    expires_at: Option<Instant>,
}

/// Limits of a [`KvState`].
#[derive(Debug, Clone)]
pub struct StateLimits {
    /// How many recent events are kept for watches that start from a revision (at least 1).
    pub history: usize,
    /// How long a successful idempotent write is remembered.
    pub idempotency_window: Duration,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            history: 10_000,
            idempotency_window: Duration::from_secs(120),
        }
    }
}

/// The whole state of a store: entries, the revision counter, the expiry queue, recent history
/// and remembered idempotent writes.
///
/// Every mutating method first expires the entries whose deadline has passed (emitting their
/// `Expire` events), then decides. A method either applies completely and appends its events to
/// `events`, or fails and changes nothing but those expiries.
#[derive(Debug)]
pub struct KvState {
    // foldhash: several times faster than SipHash on short keys, still seeded per map.
    entries: HashMap<Key, Stored, foldhash::fast::RandomState>,
    // Invariant: the revision of the last change, 0 before the first.
    last_revision: u64,
    // Invariant: holds exactly one (deadline, key) per entry that has a deadline.
    expiries: BTreeSet<(Instant, Key)>,
    // Invariant: contiguous revisions ending at `last_revision`, at most `limits.history` long.
    history: VecDeque<WatchEvent>,
    idempotent: HashMap<(Key, String), Revision>,
    idempotent_order: VecDeque<(Instant, Key, String)>,
    limits: StateLimits,
    // Whether changes are also appended to the caller's event list (someone is watching).
    collect: bool,
}

impl KvState {
    /// An empty state.
    pub fn new(limits: StateLimits) -> KvState {
        KvState {
            entries: HashMap::default(),
            last_revision: 0,
            expiries: BTreeSet::new(),
            history: VecDeque::new(),
            idempotent: HashMap::new(),
            idempotent_order: VecDeque::new(),
            limits: StateLimits {
                history: limits.history.max(1),
                ..limits
            },
            collect: true,
        }
    }

    /// Whether the mutating methods append their events to `events` (the default). A caller
    /// with nobody to hand events to turns it off to save a copy per change; the history
    /// for replays is kept either way.
    pub fn collect_events(&mut self, collect: bool) {
        self.collect = collect;
    }

    /// The revision of the last change, if any.
    pub fn last_revision(&self) -> Option<Revision> {
        Revision::new(self.last_revision)
    }

    /// The entry for `key` as seen at `now` (an entry past its deadline is already absent).
    pub fn get(&self, key: &Key, now: Instant) -> Option<Entry> {
        let stored = self.entries.get(key)?;
        live(stored, now).then(|| entry(key, stored, now))
    }

    /// Present keys selected by `pattern`, in key order.
    pub fn keys(&self, pattern: &Pattern, now: Instant) -> Vec<Key> {
        if let Pattern::Exact(key) = pattern {
            return self.get(key, now).map(|e| e.key).into_iter().collect();
        }
        let mut keys: Vec<Key> = self
            .entries
            .iter()
            .filter(|(key, stored)| live(stored, now) && pattern.matches(key))
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Present entries selected by `pattern`, in key order.
    pub fn snapshot(&self, pattern: &Pattern, now: Instant) -> Vec<Entry> {
        self.keys(pattern, now)
            .into_iter()
            .filter_map(|key| self.get(&key, now))
            .collect()
    }

    /// Kept events at or after `from` selected by `pattern`, or [`Error::Compacted`] if events
    /// at `from` are no longer kept.
    pub fn replay(&self, pattern: &Pattern, from: Revision) -> Result<Vec<WatchEvent>> {
        let oldest = match self.history.front() {
            Some(event) => event.revision().expect("history holds changes only"),
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
            .filter(|event| event.key().is_some_and(|key| pattern.matches(key)))
            .cloned()
            .collect())
    }

    /// The earliest deadline of any entry.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Removes every entry whose deadline is at or before `now`, each with an `Expire` event.
    pub fn expire_due(&mut self, now: Instant, events: &mut Vec<WatchEvent>) {
        while let Some((at, _)) = self.expiries.first() {
            if *at > now {
                break;
            }
            let (_, key) = self.expiries.pop_first().expect("checked above");
            self.entries.remove(&key);
            let revision = self.advance();
            self.record(WatchEvent::Expire { key, revision }, events);
        }
    }

    /// Decides a put. See [`StateStore::put`](crate::StateStore::put).
    pub fn put(
        &mut self,
        key: &Key,
        value: Bytes,
        options: &PutOptions,
        now: Instant,
        events: &mut Vec<WatchEvent>,
    ) -> Result<Revision> {
        self.expire_due(now, events);
        self.forget_old_idempotency(now);
        let remembered = options
            .idempotency_key
            .as_ref()
            .map(|id| (key.clone(), id.clone()));
        if let Some(revision) = remembered.as_ref().and_then(|id| self.idempotent.get(id)) {
            return Ok(*revision);
        }
        let current = self.entries.get(key).map(|stored| stored.revision);
        options.mode.condition().check(key, current)?;
        let revision = self.write(key, value, options.ttl, now, events);
        if let Some(id) = remembered {
            self.idempotent_order
                .push_back((now, id.0.clone(), id.1.clone()));
            self.idempotent.insert(id, revision);
        }
        Ok(revision)
    }

    /// Decides a delete. See [`StateStore::delete`](crate::StateStore::delete).
    pub fn delete(
        &mut self,
        key: &Key,
        expected: Option<Revision>,
        now: Instant,
        events: &mut Vec<WatchEvent>,
    ) -> Result<Option<Revision>> {
        self.expire_due(now, events);
        let current = self.entries.get(key).map(|stored| stored.revision);
        Condition::expecting(expected).check(key, current)?;
        Ok(current.map(|_| self.remove(key, events)))
    }

    /// Decides a transaction: checks every condition first, then applies every action in order.
    /// See [`StateStore::txn`](crate::StateStore::txn). The caller validates the shape.
    pub fn txn(
        &mut self,
        ops: &[TxnOp],
        now: Instant,
        events: &mut Vec<WatchEvent>,
    ) -> Result<Vec<TxnResult>> {
        self.expire_due(now, events);
        for op in ops {
            let current = self.entries.get(&op.key).map(|stored| stored.revision);
            op.condition.check(&op.key, current)?;
        }
        let results = ops
            .iter()
            .map(|op| match &op.action {
                TxnAction::Put { value, ttl } => {
                    TxnResult::Put(self.write(&op.key, value.clone(), *ttl, now, events))
                }
                TxnAction::Delete if self.entries.contains_key(&op.key) => {
                    TxnResult::Deleted(self.remove(&op.key, events))
                }
                TxnAction::Delete => TxnResult::NotFound,
                TxnAction::Check => TxnResult::Checked,
            })
            .collect();
        Ok(results)
    }

    fn write(
        &mut self,
        key: &Key,
        value: Bytes,
        ttl: Option<Duration>,
        now: Instant,
        events: &mut Vec<WatchEvent>,
    ) -> Revision {
        let revision = self.advance();
        let expires_at = ttl.map(|ttl| now + ttl);
        let stored = Stored {
            value,
            revision,
            expires_at,
        };
        let event = WatchEvent::Put(entry(key, &stored, now));
        if let Some(old) = self.entries.insert(key.clone(), stored)
            && let Some(at) = old.expires_at
        {
            self.expiries.remove(&(at, key.clone()));
        }
        if let Some(at) = expires_at {
            self.expiries.insert((at, key.clone()));
        }
        self.record(event, events);
        revision
    }

    fn remove(&mut self, key: &Key, events: &mut Vec<WatchEvent>) -> Revision {
        if let Some(old) = self.entries.remove(key)
            && let Some(at) = old.expires_at
        {
            self.expiries.remove(&(at, key.clone()));
        }
        let revision = self.advance();
        self.record(
            WatchEvent::Delete {
                key: key.clone(),
                revision,
            },
            events,
        );
        revision
    }

    fn advance(&mut self) -> Revision {
        self.last_revision += 1;
        Revision::new(self.last_revision).expect("incremented from 0 or more")
    }

    fn record(&mut self, event: WatchEvent, events: &mut Vec<WatchEvent>) {
        if self.history.len() == self.limits.history {
            self.history.pop_front();
        }
        if self.collect {
            events.push(event.clone());
        }
        self.history.push_back(event);
    }

    fn forget_old_idempotency(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.idempotent_order.front() {
            if now.saturating_duration_since(*at) < self.limits.idempotency_window {
                break;
            }
            let (_, key, id) = self.idempotent_order.pop_front().expect("checked above");
            self.idempotent.remove(&(key, id));
        }
    }
}

fn live(stored: &Stored, now: Instant) -> bool {
    stored.expires_at.is_none_or(|at| at > now)
}

fn entry(key: &Key, stored: &Stored, now: Instant) -> Entry {
    Entry {
        key: key.clone(),
        value: stored.value.clone(),
        revision: stored.revision,
        expires_in: stored
            .expires_at
            .map(|at| at.saturating_duration_since(now)),
    }
}
