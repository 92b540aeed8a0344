//! [`MemoryStore`]: the in-process backend, for tests and single-process swarms.
//!
//! The state lives in one [`KvState`] behind a std `RwLock` (never held across an `.await`).
//! One background task per store removes expired entries and emits their events; reads hide
//! an expired entry at once, before that task runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::feed::{WatchFeed, watch_feed};
use crate::state::{KvState, StateLimits};
use crate::store::ensure_open;
use crate::types::{validate_txn, validate_value};
use crate::{
    Capabilities, Entry, Key, KeyStream, Pattern, PutOptions, Result, Revision, StateStore, TxnOp,
    TxnResult, WatchEvent, WatchStart, WatchStream,
};

/// The default largest value: 1 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
/// The default number of events a watcher may have buffered before it is lagged.
pub const DEFAULT_WATCH_BUFFER: usize = 64;

/// An in-process store. Volatile: everything is gone when the last clone is dropped.
///
/// Clones share one store. Needs a Tokio runtime for watches and TTL expiry.
///
/// ```
/// # use swarmstate_core::{Key, MemoryStore, StateStore, StateStoreExt};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let key = Key::new("config.timeout")?;
/// let first = store.create(&key, "30s").await?;
/// let second = store.update(&key, "45s", first).await?;
/// assert!(second > first);
/// assert!(store.update(&key, "60s", first).await.unwrap_err().is_conflict());
/// # Ok::<_, swarmstate_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    inner: RwLock<Inner>,
    closed: AtomicBool,
    // Wakes the expiry task when an earlier deadline may exist, on close, and on drop. Shared
    // with the task apart from the rest, which the task holds only weakly.
    expiry_changed: Arc<Notify>,
    expiry_task_started: AtomicBool,
    config: Config,
}

#[derive(Debug)]
struct Inner {
    state: KvState,
    watchers: Vec<Watcher>,
    // Reused for every write's events, so a write allocates no event list.
    scratch: Vec<WatchEvent>,
}

#[derive(Debug)]
struct Watcher {
    pattern: Pattern,
    feed: WatchFeed,
    // Changes below this revision are not delivered: a watch from a revision the store has not
    // reached yet starts there.
    from: Option<Revision>,
}

#[derive(Debug, Clone)]
struct Config {
    max_value_size: usize,
    watch_buffer: usize,
    limits: StateLimits,
}

/// Builds a [`MemoryStore`] with non-default limits.
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    config: Config,
}

impl MemoryStoreBuilder {
    /// The largest value accepted, in bytes (default 1 MiB).
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.config.max_value_size = bytes;
        self
    }

    /// Events a watcher may have buffered before it is lagged (default 64, at least 1).
    pub fn watch_buffer(mut self, events: usize) -> Self {
        self.config.watch_buffer = events.max(1);
        self
    }

    /// Recent events kept for watches that start from a revision (default 10,000, at least 1).
    pub fn history(mut self, events: usize) -> Self {
        self.config.limits.history = events.max(1);
        self
    }

    /// How long a successful idempotent write is remembered (default 2 minutes).
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.config.limits.idempotency_window = window;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            shared: Arc::new(Shared {
                inner: RwLock::new(Inner {
                    state: KvState::new(self.config.limits.clone()),
                    watchers: Vec::new(),
                    scratch: Vec::new(),
                }),
                closed: AtomicBool::new(false),
                expiry_changed: Arc::new(Notify::new()),
                expiry_task_started: AtomicBool::new(false),
                config: self.config,
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// A store with the default limits.
    pub fn new() -> MemoryStore {
        MemoryStore::builder().build()
    }

    /// A builder for non-default limits.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            config: Config {
                max_value_size: DEFAULT_MAX_VALUE_SIZE,
                watch_buffer: DEFAULT_WATCH_BUFFER,
                limits: StateLimits::default(),
            },
        }
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Inner>> {
        ensure_open(self.shared.closed.load(Ordering::Acquire))?;
        Ok(self.shared.inner.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs a decision under the write lock and hands its events to the watchers before the
    /// lock is released, so every watcher sees changes in revision order.
    fn mutate<T>(&self, decide: impl FnOnce(&mut KvState, &mut Vec<WatchEvent>) -> T) -> Result<T> {
        let mut inner = self.write()?;
        let mut events = std::mem::take(&mut inner.scratch);
        let watched = !inner.watchers.is_empty();
        inner.state.collect_events(watched);
        let before = inner.state.next_expiry();
        let outcome = decide(&mut inner.state, &mut events);
        let after = inner.state.next_expiry();
        inner.dispatch(&events);
        events.clear();
        inner.scratch = events;
        drop(inner);
        if after.is_some() && after != before {
            self.ensure_expiry_task();
            self.shared.expiry_changed.notify_one();
        }
        Ok(outcome)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Inner>> {
        let inner = self.shared.inner.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock so that no write lands after close() drained the watchers.
        ensure_open(self.shared.closed.load(Ordering::Acquire))?;
        Ok(inner)
    }

    fn ensure_expiry_task(&self) {
        if self.shared.expiry_task_started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(expire_loop(
            Arc::downgrade(&self.shared),
            self.shared.expiry_changed.clone(),
        ));
    }
}

/// The store's one expiry task: sleeps until the earliest deadline, expires what is due, and
/// repeats. It holds only a weak reference, so it ends when the store is dropped or closed.
async fn expire_loop(shared: Weak<Shared>, changed: Arc<Notify>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.closed.load(Ordering::Acquire) {
            return;
        }
        let next = {
            let inner = strong.inner.read().unwrap_or_else(|e| e.into_inner());
            inner.state.next_expiry()
        };
        // notify_one leaves a permit when nobody waits, so a wake-up between reading the
        // deadline and waiting here is not lost.
        let changed = changed.notified();
        match next {
            Some(at) if at <= Instant::now() => {
                {
                    let mut inner = strong.inner.write().unwrap_or_else(|e| e.into_inner());
                    if strong.closed.load(Ordering::Acquire) {
                        return;
                    }
                    let mut events = Vec::new();
                    let watched = !inner.watchers.is_empty();
                    inner.state.collect_events(watched);
                    inner.state.expire_due(Instant::now(), &mut events);
                    inner.dispatch(&events);
                }
                drop(strong);
                // Never spin inside one poll, whatever the deadlines say.
                tokio::task::yield_now().await;
            }
            Some(at) => {
                drop(strong);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                }
            }
            None => {
                drop(strong);
                changed.await;
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.expiry_changed.notify_one();
    }
}

impl Inner {
    fn dispatch(&mut self, events: &[WatchEvent]) {
        if events.is_empty() || self.watchers.is_empty() {
            return;
        }
        self.watchers.retain(|watcher| {
            for event in events {
                let selected = event.key().is_some_and(|key| watcher.pattern.matches(key))
                    && watcher
                        .from
                        .is_none_or(|from| event.revision() >= Some(from));
                if !selected {
                    continue;
                }
                let resume = event.revision().expect("changes carry revisions");
                if watcher.feed.send(event.clone(), resume).is_err() {
                    return false;
                }
            }
            true
        });
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: "memory",
            ttl_granularity: Duration::from_millis(1),
            max_value_size: self.shared.config.max_value_size,
            watch_buffer: self.shared.config.watch_buffer,
            durable: false,
            replays_overwritten: true,
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        Ok(self.read()?.state.get(key, Instant::now()))
    }

    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        options.validate()?;
        validate_value(key, &value, self.shared.config.max_value_size)?;
        self.mutate(|state, events| state.put(key, value, &options, Instant::now(), events))?
    }

    async fn delete(&self, key: &Key, expected: Option<Revision>) -> Result<Option<Revision>> {
        self.mutate(|state, events| state.delete(key, expected, Instant::now(), events))?
    }

    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream> {
        let keys = self.read()?.state.keys(pattern, Instant::now());
        Ok(stream::iter(keys.into_iter().map(Ok)).boxed())
    }

    async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
        let (feed, live) = watch_feed(self.shared.config.watch_buffer);
        let mut inner = self.write()?;
        // Taken under the same lock that registers the watcher, so no change falls between
        // the replayed part and the live part.
        let backlog = match start {
            WatchStart::Now => Vec::new(),
            WatchStart::FromRevision(from) => inner.state.replay(pattern, from)?,
            WatchStart::Snapshot => {
                let now = Instant::now();
                let mut backlog: Vec<WatchEvent> = inner
                    .state
                    .snapshot(pattern, now)
                    .into_iter()
                    .map(WatchEvent::Put)
                    .collect();
                backlog.push(WatchEvent::CaughtUp {
                    revision: inner.state.last_revision(),
                });
                backlog
            }
        };
        inner.watchers.push(Watcher {
            pattern: pattern.clone(),
            feed,
            from: match start {
                WatchStart::FromRevision(from) => Some(from),
                WatchStart::Now | WatchStart::Snapshot => None,
            },
        });
        drop(inner);
        Ok(stream::iter(backlog).chain(live).boxed())
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        validate_txn(&ops, self.shared.config.max_value_size)?;
        self.mutate(|state, events| state.txn(&ops, Instant::now(), events))?
    }

    async fn close(&self) -> Result<()> {
        let mut inner = self.shared.inner.write().unwrap_or_else(|e| e.into_inner());
        self.shared.closed.store(true, Ordering::Release);
        // Dropping the senders ends every stream once its buffered events are read.
        inner.watchers.clear();
        drop(inner);
        self.shared.expiry_changed.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StateStoreExt;

    fn key(text: &str) -> Key {
        Key::new(text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_task_removes_entries_and_emits_events_on_time() {
        let store = MemoryStore::new();
        let mut watch = store.watch(&Pattern::All, WatchStart::Now).await.unwrap();
        let a = key("cache.a");
        let put = store
            .put(
                &a,
                "v".into(),
                PutOptions::overwrite().ttl(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert_eq!(watch.next().await.unwrap().revision(), Some(put));
        let started = Instant::now();
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(store.get(&a).await.unwrap().is_some());
        let event = watch.next().await.unwrap();
        assert_eq!(
            event,
            WatchEvent::Expire {
                key: a.clone(),
                revision: put.next()
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(store.get(&a).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn overwriting_a_ttl_entry_moves_its_deadline() {
        let store = MemoryStore::new();
        let a = key("cache.a");
        let ttl = |secs| PutOptions::overwrite().ttl(Duration::from_secs(secs));
        store.put(&a, "1".into(), ttl(1)).await.unwrap();
        store.put(&a, "2".into(), ttl(10)).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(&store.get(&a).await.unwrap().unwrap().value[..], b"2");
        store.set(&a, "3").await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(&store.get(&a).await.unwrap().unwrap().value[..], b"3");
    }

    #[tokio::test]
    async fn watch_from_a_revision_older_than_the_history_is_compacted() {
        let store = MemoryStore::builder().history(3).build();
        let a = key("a");
        let first = store.set(&a, "1").await.unwrap();
        for value in ["2", "3", "4"] {
            store.set(&a, value).await.unwrap();
        }
        let err = store
            .watch(&Pattern::All, WatchStart::FromRevision(first))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, crate::Error::Compacted { requested, oldest } if requested == first && oldest.get() == 2),
            "{err}"
        );
        let replay: Vec<_> = store
            .watch(&Pattern::All, WatchStart::FromRevision(first.next()))
            .await
            .unwrap()
            .take(3)
            .collect()
            .await;
        assert_eq!(replay.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_is_forgotten_after_the_window() {
        let store = MemoryStore::builder()
            .idempotency_window(Duration::from_secs(120))
            .build();
        let a = key("a");
        let options = PutOptions::create().idempotency_key("req-1");
        let first = store.put(&a, "x".into(), options.clone()).await.unwrap();
        tokio::time::advance(Duration::from_secs(119)).await;
        assert_eq!(
            store.put(&a, "x".into(), options.clone()).await.unwrap(),
            first
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let err = store.put(&a, "x".into(), options).await.unwrap_err();
        assert!(matches!(err, crate::Error::AlreadyExists { .. }), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_store_ends_the_expiry_task() {
        let store = MemoryStore::new();
        let a = key("a");
        store
            .put(
                &a,
                "x".into(),
                PutOptions::overwrite().ttl(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        let weak = Arc::downgrade(&store.shared);
        drop(store);
        assert!(
            weak.upgrade().is_none(),
            "the expiry task must not keep the store alive"
        );
    }
}
