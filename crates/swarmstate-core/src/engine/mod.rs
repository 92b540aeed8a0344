//! The engine the in-process and the disk backend share: a write is validated, decided by
//! [`KvState`] into a [`ChangeSet`], persisted (nothing to do for memory), applied to the
//! readers' view, acknowledged, and handed to watchers. Reads are served from memory.
//!
//! [`Engine`] is generic over its [`Persistence`]. With [`Volatile`] (the memory backend) a
//! write is decided, applied and handed to watchers under one lock. With a durable one, one
//! writer at a time decides against the applied state under a read lock (readers go on), waits
//! for `persist` without any lock, then applies under the write lock: a reader never sees a
//! change that is not yet durable. A failed `persist` poisons the engine: every later call
//! fails with that error, and nothing is retried silently.
//!
//! One background task per engine expires entries at their deadlines (through the same write
//! path, so an expiry is persisted like any change); reads hide an expired entry at once,
//! before that task runs.

mod change;
mod clock;
mod hub;
mod state;

use std::cell::Cell;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::Notify;

pub use change::{Change, ChangeSet, Remembered};
pub use clock::{Clock, Now, Timestamp};
pub use state::{Batch, KvState, Persisted, StateLimits, StoredEntry};

use crate::feed::watch_feed;
use crate::types::{validate_txn, validate_value};
use crate::{
    Capabilities, Entry, Error, Key, KeyStream, Pattern, PutOptions, Result, Revision, StateStore,
    TxnOp, TxnResult, WatchEvent, WatchStart, WatchStream,
};

/// Where an [`Engine`] keeps its changes before it applies and acknowledges them.
#[async_trait]
pub trait Persistence: Send + Sync + Debug + 'static {
    /// Nothing is persisted: the engine decides and applies under one lock and never calls
    /// [`persist`](Persistence::persist).
    const VOLATILE: bool = false;

    /// The backend's name, for [`Capabilities::backend`].
    fn backend(&self) -> &'static str;

    /// Whether an acknowledged write survives a crash, for [`Capabilities::durable`].
    fn durable(&self) -> bool;

    /// Makes `changes` durable, atomically: all of them or none. Called by one writer at a
    /// time, with change sets in revision order, each continuing where the last ended. Returns
    /// only once they are durable; an error poisons the engine.
    async fn persist(&self, changes: &ChangeSet) -> Result<()>;
}

/// No persistence: the memory backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct Volatile;

#[async_trait]
impl Persistence for Volatile {
    const VOLATILE: bool = true;

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn durable(&self) -> bool {
        false
    }

    async fn persist(&self, _changes: &ChangeSet) -> Result<()> {
        Ok(())
    }
}

/// The limits of an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The largest value accepted, in bytes.
    pub max_value_size: usize,
    /// Events a watcher may have buffered before it is lagged (at least 1).
    pub watch_buffer: usize,
    /// History and idempotency limits of the state.
    pub limits: StateLimits,
}

/// A store built on [`KvState`]: the contract's semantics with one [`Persistence`] plugged in.
///
/// Clones share one engine. Needs a Tokio runtime for watches and TTL expiry.
#[derive(Debug)]
pub struct Engine<P: Persistence> {
    shared: Arc<Shared<P>>,
}

impl<P: Persistence> Clone for Engine<P> {
    fn clone(&self) -> Self {
        Engine {
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared<P> {
    inner: RwLock<Inner>,
    closed: AtomicBool,
    poisoned: OnceLock<Error>,
    // One writer at a time on the durable path (decide, persist, apply).
    writer: tokio::sync::Mutex<()>,
    // Wakes the expiry task when an earlier deadline may exist, on close, and on drop. Shared
    // with the task apart from the rest, which the task holds only weakly.
    expiry_changed: Arc<Notify>,
    expiry_task_started: AtomicBool,
    clock: Clock,
    config: EngineConfig,
    persistence: P,
}

#[derive(Debug)]
struct Inner {
    state: KvState,
    hub: crate::engine::hub::Hub,
    // Reused by every volatile write, so a write allocates no change list or event list.
    batch: Batch,
    scratch: Vec<WatchEvent>,
}

impl<P: Persistence> Engine<P> {
    /// An engine serving `state` (new, or restored from what `persistence` kept) on `clock`.
    pub fn new(persistence: P, config: EngineConfig, state: KvState, clock: Clock) -> Engine<P> {
        let config = EngineConfig {
            watch_buffer: config.watch_buffer.max(1),
            ..config
        };
        let batch = state.batch();
        let engine = Engine {
            shared: Arc::new(Shared {
                inner: RwLock::new(Inner {
                    state,
                    hub: Default::default(),
                    batch,
                    scratch: Vec::new(),
                }),
                closed: AtomicBool::new(false),
                poisoned: OnceLock::new(),
                writer: tokio::sync::Mutex::new(()),
                expiry_changed: Arc::new(Notify::new()),
                expiry_task_started: AtomicBool::new(false),
                clock,
                config,
                persistence,
            }),
        };
        // A restored state may hold deadlines already.
        if engine
            .read()
            .is_ok_and(|inner| inner.state.next_expiry().is_some())
        {
            engine.ensure_expiry_task();
        }
        engine
    }

    /// The persistence this engine writes through.
    pub fn persistence(&self) -> &P {
        &self.shared.persistence
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// Decides with `decide` (given the applied state, a batch to add changes to, and the
    /// time), persists what it added, applies it, hands its events to watchers, and returns
    /// `decide`'s outcome. Whatever `decide` added is applied even when its outcome is an error
    /// (the expiries a failed write decided first).
    ///
    /// Errors: [`Error::Closed`] after close; the persistence error that poisoned the engine.
    pub async fn commit<T>(
        &self,
        decide: impl for<'n> FnOnce(&KvState, &mut Batch, Now<'n>) -> T,
    ) -> Result<T> {
        if P::VOLATILE {
            return self.commit_now(decide);
        }
        // Boxed, so that the futures of a volatile engine do not carry the durable path's
        // state: every call would allocate and move it for nothing.
        Box::pin(self.commit_durable(decide)).await
    }

    async fn commit_durable<T>(
        &self,
        decide: impl for<'n> FnOnce(&KvState, &mut Batch, Now<'n>) -> T,
    ) -> Result<T> {
        let _writer = self.shared.writer.lock().await;
        let now = self.shared.clock.now();
        let (outcome, mut batch) = {
            let inner = self.read()?;
            let mut batch = inner.state.batch();
            (decide(&inner.state, &mut batch, Now::At(now)), batch)
        };
        if batch.is_empty() {
            return Ok(outcome);
        }
        // From here the change set may be on disk: if this call is dropped before it is
        // applied, the readers' view and the disk disagree, so the engine is poisoned.
        let mut unfinished = Unfinished(Some(self));
        if let Err(err) = self.shared.persistence.persist(batch.changes()).await {
            let err = self.poison(err);
            unfinished.0 = None;
            return Err(err);
        }
        self.apply(&mut batch, now);
        unfinished.0 = None;
        Ok(outcome)
    }

    // The volatile path: decide, apply and dispatch under one write lock, so every watcher
    // sees changes in revision order.
    fn commit_now<T>(
        &self,
        decide: impl for<'n> FnOnce(&KvState, &mut Batch, Now<'n>) -> T,
    ) -> Result<T> {
        let mut guard = self.write()?;
        let inner = &mut *guard;
        if !inner.batch.is_empty() {
            // Left by a decision that panicked: never apply part of one.
            inner.batch = inner.state.batch();
        }
        let read = Cell::new(None);
        let now = self.shared.clock.lazy(&read);
        let before = inner.state.next_expiry();
        let outcome = decide(&inner.state, &mut inner.batch, now);
        if !inner.batch.is_empty() {
            publish(
                &mut inner.state,
                &mut inner.hub,
                &mut inner.scratch,
                &mut inner.batch,
                now,
            );
        }
        let after = inner.state.next_expiry();
        drop(guard);
        self.deadlines_changed(before, after);
        Ok(outcome)
    }

    fn apply(&self, batch: &mut Batch, now: Timestamp) {
        let mut guard = self.shared.inner.write().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *guard;
        let before = inner.state.next_expiry();
        publish(
            &mut inner.state,
            &mut inner.hub,
            &mut inner.scratch,
            batch,
            Now::At(now),
        );
        let after = inner.state.next_expiry();
        drop(guard);
        self.deadlines_changed(before, after);
    }

    fn deadlines_changed(&self, before: Option<Timestamp>, after: Option<Timestamp>) {
        if after.is_some() && after != before {
            self.ensure_expiry_task();
            self.shared.expiry_changed.notify_one();
        }
    }

    fn poison(&self, err: Error) -> Error {
        let reported = Error::Unavailable {
            message: format!(
                "the store failed to persist a write and accepts no more (reopen it): {err}"
            ),
        };
        self.shared.poisoned.get_or_init(|| reported).clone()
    }

    fn usable(&self) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        match self.shared.poisoned.get() {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    #[inline]
    fn read(&self) -> Result<RwLockReadGuard<'_, Inner>> {
        self.usable()?;
        Ok(self.shared.inner.read().unwrap_or_else(|e| e.into_inner()))
    }

    #[inline]
    fn write(&self) -> Result<RwLockWriteGuard<'_, Inner>> {
        let inner = self.shared.inner.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock so that no write lands after close() drained the watchers.
        self.usable()?;
        Ok(inner)
    }

    /// A weak handle on the engine's shared part, to show that nothing else keeps it alive.
    #[cfg(test)]
    pub(crate) fn downgrade(&self) -> Weak<dyn std::any::Any + Send + Sync> {
        let weak: Weak<Shared<P>> = Arc::downgrade(&self.shared);
        weak
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

// Applies `batch` and hands its events to the watchers, under the caller's write lock. The
// events are built only when someone watches, into `scratch`, so a write allocates no list.
#[inline]
fn publish(
    state: &mut KvState,
    hub: &mut crate::engine::hub::Hub,
    scratch: &mut Vec<WatchEvent>,
    batch: &mut Batch,
    now: Now<'_>,
) {
    if hub.is_empty() {
        state.apply(batch, now, None);
        return;
    }
    state.apply(batch, now, Some(scratch));
    hub.dispatch(scratch);
    scratch.clear();
}

// Poisons the engine if a durable commit is dropped between persisting and applying.
struct Unfinished<'a, P: Persistence>(Option<&'a Engine<P>>);

impl<P: Persistence> Drop for Unfinished<'_, P> {
    fn drop(&mut self) {
        if let Some(engine) = self.0 {
            engine.poison(Error::Ambiguous {
                operation: "commit".to_owned(),
                message: "the write was cancelled while it was being persisted".to_owned(),
            });
        }
    }
}

/// The engine's one expiry task: sleeps until the earliest deadline, expires what is due, and
/// repeats. It holds only a weak reference, so it ends when the engine is dropped or closed.
async fn expire_loop<P: Persistence>(shared: Weak<Shared<P>>, changed: Arc<Notify>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let engine = Engine { shared: strong };
        let next = match engine.read() {
            Ok(inner) => inner.state.next_expiry(),
            Err(_) => return,
        };
        // notify_one leaves a permit when nobody waits, so a wake-up between reading the
        // deadline and waiting here is not lost.
        let changed = changed.notified();
        let clock = *engine.clock();
        match next {
            Some(at) if at <= clock.now() => {
                let expired = engine
                    .commit(|state, batch, now| state.expire_due(batch, now))
                    .await;
                drop(engine);
                if expired.is_err() {
                    return;
                }
                // Never spin inside one poll, whatever the deadlines say.
                tokio::task::yield_now().await;
            }
            Some(at) => {
                drop(engine);
                tokio::select! {
                    _ = tokio::time::sleep_until(clock.instant_of(at)) => {}
                    _ = changed => {}
                }
            }
            None => {
                drop(engine);
                changed.await;
            }
        }
    }
}

impl<P> Drop for Shared<P> {
    fn drop(&mut self) {
        self.expiry_changed.notify_one();
    }
}

#[async_trait]
impl<P: Persistence> StateStore for Engine<P> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: self.shared.persistence.backend(),
            ttl_granularity: Duration::from_millis(1),
            max_value_size: self.shared.config.max_value_size,
            watch_buffer: self.shared.config.watch_buffer,
            durable: self.shared.persistence.durable(),
            replays_overwritten: true,
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let read = Cell::new(None);
        let now = self.shared.clock.lazy(&read);
        Ok(self.read()?.state.get(key, now))
    }

    // put, delete and txn are written as `#[async_trait]` would expand them, with one future
    // per path: a volatile engine's future then holds only the call's arguments (an async fn
    // with both paths keeps room for the durable one, allocated and moved on every call).
    fn put<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 Key,
        value: Bytes,
        options: PutOptions,
    ) -> BoxFuture<'async_trait, Result<Revision>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if P::VOLATILE {
            Box::pin(async move {
                options.validate()?;
                validate_value(key, &value, self.shared.config.max_value_size)?;
                self.commit_now(|state, batch, now| state.put(batch, key, value, &options, now))?
            })
        } else {
            Box::pin(async move {
                options.validate()?;
                validate_value(key, &value, self.shared.config.max_value_size)?;
                self.commit_durable(|state, batch, now| state.put(batch, key, value, &options, now))
                    .await?
            })
        }
    }

    fn delete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 Key,
        expected: Option<Revision>,
    ) -> BoxFuture<'async_trait, Result<Option<Revision>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if P::VOLATILE {
            Box::pin(async move {
                self.commit_now(|state, batch, now| state.delete(batch, key, expected, now))?
            })
        } else {
            Box::pin(async move {
                self.commit_durable(|state, batch, now| state.delete(batch, key, expected, now))
                    .await?
            })
        }
    }

    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream> {
        let read = Cell::new(None);
        let now = self.shared.clock.lazy(&read);
        let keys = self.read()?.state.keys(pattern, now);
        Ok(stream::iter(keys.into_iter().map(Ok)).boxed())
    }

    async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
        let (feed, live) = watch_feed(self.shared.config.watch_buffer);
        let mut inner = self.write()?;
        let now = self.shared.clock.now();
        // Taken under the same lock that registers the watcher, so no change falls between
        // the replayed part and the live part.
        let backlog = match start {
            WatchStart::Now => Vec::new(),
            WatchStart::FromRevision(from) => inner.state.replay(pattern, from, now)?,
            WatchStart::Snapshot => {
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
        let from = match start {
            WatchStart::FromRevision(from) => Some(from),
            WatchStart::Now | WatchStart::Snapshot => None,
        };
        inner.hub.register(pattern.clone(), feed, from);
        drop(inner);
        Ok(stream::iter(backlog).chain(live).boxed())
    }

    fn txn<'life0, 'async_trait>(
        &'life0 self,
        ops: Vec<TxnOp>,
    ) -> BoxFuture<'async_trait, Result<Vec<TxnResult>>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        if P::VOLATILE {
            Box::pin(async move {
                validate_txn(&ops, self.shared.config.max_value_size)?;
                self.commit_now(|state, batch, now| state.txn(batch, &ops, now))?
            })
        } else {
            Box::pin(async move {
                validate_txn(&ops, self.shared.config.max_value_size)?;
                self.commit_durable(|state, batch, now| state.txn(batch, &ops, now))
                    .await?
            })
        }
    }

    async fn close(&self) -> Result<()> {
        let mut inner = self.shared.inner.write().unwrap_or_else(|e| e.into_inner());
        self.shared.closed.store(true, Ordering::Release);
        // Dropping the senders ends every stream once its buffered events are read.
        inner.hub.clear();
        drop(inner);
        self.shared.expiry_changed.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
