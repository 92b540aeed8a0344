//! The engine the in-process and the disk backend share: a write is validated, decided by
//! [`KvState`] into a [`ChangeSet`], persisted (nothing to do for memory), applied to the
//! readers' view, acknowledged, and handed to watchers. Reads are served from memory.
//!
//! [`Engine`] is generic over its [`Persistence`]. With [`Volatile`] (the memory backend) a
//! write is decided, applied and handed to watchers under one lock. With a durable one, every
//! write joins a queue, and one writer task commits in groups: it takes every write waiting at
//! that moment (up to a count and a byte bound; no timer, so an idle store commits at once),
//! decides them in order against the applied state and the group so far under a read lock
//! (readers go on; a refused write fails alone), persists the group once on a blocking thread,
//! then applies it under the write lock, acknowledges each write and hands the events to
//! watchers. A reader never sees a change that is not yet durable. A failed `persist` poisons
//! the engine: the writes of that group are `Ambiguous`, every later call fails naming the
//! cause, and nothing is retried silently. A caller that stops waiting does not cancel its
//! write: once queued, it is committed or refused like any other.
//!
//! One background task per engine expires entries at their deadlines (through the same write
//! path, so an expiry is persisted like any change); reads hide an expired entry at once,
//! before that task runs.

mod change;
mod clock;
pub(crate) mod hub;
mod state;
mod store;
mod writer;

use std::cell::Cell;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use tokio::sync::{Notify, mpsc, oneshot};

pub use change::{Change, ChangeSet, Remembered};
pub use clock::{Clock, Now, Timestamp};
pub use state::{Batch, KvState, Persisted, StateLimits, StoredEntry};

use crate::{Error, Result, Revision, WatchEvent};

/// Where an [`Engine`] keeps its changes before it applies and acknowledges them.
pub trait Persistence: Send + Debug + 'static {
    /// Nothing is persisted: the engine decides and applies under one lock and never calls
    /// [`persist`](Persistence::persist).
    const VOLATILE: bool = false;

    /// The backend's name, for [`Capabilities::backend`](crate::Capabilities::backend).
    fn backend(&self) -> &'static str;

    /// Whether an acknowledged write survives a crash, for [`Capabilities::durable`](crate::Capabilities::durable).
    fn durable(&self) -> bool;

    /// Makes `commit.changes` durable, atomically: all of them or none. Called by the engine's
    /// one writer, on a thread that may block, with change sets in revision order, each
    /// continuing where the last ended. Returns only once they are durable; an error poisons
    /// the engine.
    fn persist(&mut self, commit: &Commit<'_>) -> Result<()>;
}

/// One group commit, as [`Persistence::persist`] gets it.
#[derive(Debug)]
pub struct Commit<'a> {
    /// The changes and idempotency records to make durable.
    pub changes: &'a ChangeSet,
    /// The oldest change the history keeps before these: older ones may be dropped. The
    /// history kept may run longer than the limits by the last commit; a restore trims it.
    pub oldest_kept: Option<Revision>,
    /// Idempotency records decided before this time are out of their window: they may be
    /// dropped.
    pub forget_before: Timestamp,
}

/// No persistence: the memory backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct Volatile;

impl Persistence for Volatile {
    const VOLATILE: bool = true;

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn durable(&self) -> bool {
        false
    }

    fn persist(&mut self, _commit: &Commit<'_>) -> Result<()> {
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
    /// History, idempotency and quota limits of the state.
    pub limits: StateLimits,
    /// The most writes one group commit takes (at least 1).
    pub max_batch_writes: usize,
    /// The most bytes of keys and values one group commit takes; a write larger than this
    /// still commits, alone.
    pub max_batch_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_value_size: 1024 * 1024,
            watch_buffer: 64,
            limits: StateLimits::default(),
            max_batch_writes: 1024,
            max_batch_bytes: 8 * 1024 * 1024,
        }
    }
}

/// A store built on [`KvState`]: the contract's semantics with one [`Persistence`] plugged in.
///
/// Clones share one engine. Needs a Tokio runtime for watches and TTL expiry, and a durable
/// one for its writer task too. A durable engine releases its persistence when
/// [`close`](crate::StateStore::close) returns (or, without a close, some time after the last clone
/// is dropped).
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
    // The durable path's queue to its one writer task; `None` for a volatile engine. Dropped
    // with the last handle, which ends the writer once it has committed what was queued.
    queue: Option<mpsc::Sender<Message>>,
    // Wakes the expiry task when an earlier deadline may exist, on close, and on drop. Shared
    // with the task apart from the rest, which the task holds only weakly.
    expiry_changed: Arc<Notify>,
    expiry_task_started: AtomicBool,
    clock: Clock,
    config: EngineConfig,
    backend: &'static str,
    durable: bool,
    persistence: PhantomData<fn() -> P>,
}

// What the durable path's writer task takes from its queue.
enum Message {
    Write(Job),
    // Commit what came before, release the persistence, answer, and stop.
    Close(oneshot::Sender<()>),
}

impl Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Write(_) => "Write",
            Message::Close(_) => "Close",
        })
    }
}

// One queued write: its size for the batch bound, and its decision, which returns what
// answers the caller once the group's fate is known (`Some` error: the commit failed).
struct Job {
    bytes: usize,
    decide: Decide,
}

type Decide = Box<dyn for<'n> FnOnce(&KvState, &mut Batch, Now<'n>) -> Answer + Send>;
type Answer = Box<dyn FnOnce(Option<&Error>) + Send>;

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
    ///
    /// # Panics
    ///
    /// A durable engine outside a Tokio runtime (it spawns its writer task).
    pub fn new(persistence: P, config: EngineConfig, state: KvState, clock: Clock) -> Engine<P> {
        let config = EngineConfig {
            watch_buffer: config.watch_buffer.max(1),
            max_batch_writes: config.max_batch_writes.max(1),
            ..config
        };
        let batch = state.batch();
        let (queue, receiver) = if P::VOLATILE {
            (None, None)
        } else {
            // Bounded, so that callers wait when the disk falls behind instead of queueing
            // without limit.
            let (sender, receiver) = mpsc::channel(config.max_batch_writes.saturating_mul(4));
            (Some(sender), Some(receiver))
        };
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
                queue,
                expiry_changed: Arc::new(Notify::new()),
                expiry_task_started: AtomicBool::new(false),
                clock,
                config,
                backend: persistence.backend(),
                durable: persistence.durable(),
                persistence: PhantomData,
            }),
        };
        if let Some(receiver) = receiver {
            writer::start(Arc::downgrade(&engine.shared), persistence, receiver);
        }
        // A restored state may hold deadlines already.
        if engine
            .read()
            .is_ok_and(|inner| inner.state.next_expiry().is_some())
        {
            engine.ensure_expiry_task();
        }
        engine
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// Decides with `decide` (given the applied state, a batch to add changes to, and the
    /// time), persists what it added, applies it, hands its events to watchers, and returns
    /// `decide`'s outcome. Whatever `decide` added is applied even when its outcome is an error
    /// (the expiries a failed write decided first). `bytes` is the write's size, for the group
    /// commit's bound.
    ///
    /// Errors: [`Error::Closed`] after close; the persistence error that poisoned the engine;
    /// [`Error::Ambiguous`] when the group commit holding this write failed.
    pub async fn commit<T: Send + 'static>(
        &self,
        bytes: usize,
        decide: impl for<'n> FnOnce(&KvState, &mut Batch, Now<'n>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if P::VOLATILE {
            return self.commit_now(decide)?;
        }
        // Boxed, so that the futures of a volatile engine do not carry the durable path's
        // state: every call would allocate and move it for nothing.
        Box::pin(self.commit_queued(bytes, decide)).await
    }

    async fn commit_queued<T: Send + 'static>(
        &self,
        bytes: usize,
        decide: impl for<'n> FnOnce(&KvState, &mut Batch, Now<'n>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.usable()?;
        let queue = self
            .shared
            .queue
            .as_ref()
            .expect("a durable engine has a queue");
        let (answer, answered) = oneshot::channel();
        let job = Job {
            bytes,
            decide: Box::new(move |state, batch, now| {
                let outcome = decide(state, batch, now);
                Box::new(move |failed: Option<&Error>| {
                    let outcome = match (outcome, failed) {
                        (Ok(_), Some(err)) => Err(err.clone()),
                        (outcome, _) => outcome,
                    };
                    let _ = answer.send(outcome);
                })
            }),
        };
        if queue.send(Message::Write(job)).await.is_err() {
            return Err(self.stopped());
        }
        answered.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    // Why a queued write got no answer: the writer ended (closed, poisoned, or its runtime
    // shut down) before deciding it, so it was not applied.
    fn stopped(&self) -> Error {
        if let Some(err) = self.shared.poisoned.get() {
            return err.clone();
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Error::Closed;
        }
        Error::Unavailable {
            message: "the store's writer stopped (its runtime shut down); nothing was applied"
                .to_owned(),
        }
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

    pub(super) fn apply(&self, batch: &mut Batch, now: Timestamp) {
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

    pub(super) fn poison(&self, err: Error) -> Error {
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
                    .commit(0, |state, batch, now| {
                        state.expire_due(batch, now);
                        Ok(())
                    })
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

#[cfg(test)]
mod tests;
