//! A live, typed view of the keys a pattern selects: the configuration recipe. One agent
//! writes configuration keys; every other agent holds a [`ConfigWatch`] and reads the current
//! map or waits for the next change.
//!
//! Written only against [`StateStore`]: a snapshot watch, then live changes. A watcher that
//! falls behind is lagged by the store; the view then resumes from the revision the store
//! names, or re-snapshots when that revision is no longer kept, so no change is lost across a
//! lag.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::watch;

use swarmstate_core::{Error, Key, Pattern, Result, Revision, StateStore, WatchEvent};

use crate::follow::{Followed, Follower, OnLag, Start};

/// Turns a stored value into the caller's type; an `Err` carries why the value was refused.
type Decode<T> = dyn Fn(&Key, &Bytes) -> std::result::Result<T, String> + Send + Sync;

/// How many lagged snapshots [`ConfigWatch::start`] takes again before it gives up.
const START_ATTEMPTS: u32 = 3;

/// One decoded key of a [`ConfigSnapshot`].
struct Slot<T> {
    value: Arc<T>,
    revision: Revision,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot {
            value: self.value.clone(),
            revision: self.revision,
        }
    }
}

/// The selected keys as of one revision: each key whose value decoded, with its value, and
/// each key whose value did not, with the reason. A key is in exactly one of the two, or absent
/// from the store.
pub struct ConfigSnapshot<T> {
    values: BTreeMap<Key, Slot<T>>,
    rejected: BTreeMap<Key, (String, Revision)>,
    revision: Option<Revision>,
}

impl<T> Clone for ConfigSnapshot<T> {
    fn clone(&self) -> Self {
        ConfigSnapshot {
            values: self.values.clone(),
            rejected: self.rejected.clone(),
            revision: self.revision,
        }
    }
}

impl<T> ConfigSnapshot<T> {
    fn empty() -> ConfigSnapshot<T> {
        ConfigSnapshot {
            values: BTreeMap::new(),
            rejected: BTreeMap::new(),
            revision: None,
        }
    }

    /// The decoded value of `key`, if the key is present and its value decoded.
    pub fn get(&self, key: &Key) -> Option<&T> {
        self.values.get(key).map(|slot| &*slot.value)
    }

    /// The revision that wrote `key`'s current value (decoded or rejected).
    pub fn revision_of(&self, key: &Key) -> Option<Revision> {
        self.values
            .get(key)
            .map(|slot| slot.revision)
            .or_else(|| self.rejected.get(key).map(|(_, revision)| *revision))
    }

    /// The decoded keys and values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &T)> {
        self.values.iter().map(|(key, slot)| (key, &*slot.value))
    }

    /// The decoded keys, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.values.keys()
    }

    /// How many keys decoded.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no key decoded.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The keys whose current value failed to decode, with the decoder's reason, in key order.
    /// They are kept out of the map until a value that decodes is written.
    pub fn rejected(&self) -> impl Iterator<Item = (&Key, &str)> {
        self.rejected
            .iter()
            .map(|(key, (reason, _))| (key, reason.as_str()))
    }

    /// The store revision this snapshot reflects: every change to the selected keys up to it is
    /// applied. `None` only for a store that has never been written.
    pub fn revision(&self) -> Option<Revision> {
        self.revision
    }

    /// Whether both hold the same keys at the same revisions, i.e. the same map.
    fn same_entries(&self, other: &ConfigSnapshot<T>) -> bool {
        fn revisions<T>(snapshot: &ConfigSnapshot<T>) -> BTreeMap<&Key, Revision> {
            let values = snapshot.values.iter().map(|(k, slot)| (k, slot.revision));
            let rejected = snapshot.rejected.iter().map(|(k, (_, rev))| (k, *rev));
            values.chain(rejected).collect()
        }
        revisions(self) == revisions(other)
    }

    /// Applies one change. Returns whether it was a change (not a marker).
    fn apply(&mut self, event: WatchEvent, decode: &Decode<T>) -> bool {
        match event {
            WatchEvent::Put(entry) => {
                match decode(&entry.key, &entry.value) {
                    Ok(value) => {
                        self.rejected.remove(&entry.key);
                        let slot = Slot {
                            value: Arc::new(value),
                            revision: entry.revision,
                        };
                        self.values.insert(entry.key, slot);
                    }
                    Err(reason) => {
                        tracing::warn!(
                            key = %entry.key,
                            revision = %entry.revision,
                            %reason,
                            "config value does not decode; the key is left out of the map"
                        );
                        self.values.remove(&entry.key);
                        self.rejected.insert(entry.key, (reason, entry.revision));
                    }
                }
                self.revision = Some(entry.revision);
                true
            }
            WatchEvent::Delete { key, revision } | WatchEvent::Expire { key, revision } => {
                self.values.remove(&key);
                self.rejected.remove(&key);
                self.revision = Some(revision);
                true
            }
            WatchEvent::CaughtUp { .. } | WatchEvent::Lagged { .. } => false,
        }
    }
}

impl<T> fmt::Debug for ConfigSnapshot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSnapshot")
            .field("revision", &self.revision)
            .field("keys", &self.values.keys().collect::<Vec<_>>())
            .field("rejected", &self.rejected.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A live view of the keys `pattern` selects, decoded into `T`, kept current by a background
/// task.
///
/// The view starts from a snapshot and applies every later change in revision order. Events
/// that arrive together (as a transaction's do) are applied together and published as one
/// update. When the store lags the watch, the task resumes from the revision the store names,
/// or takes a fresh snapshot when that revision is gone ([`Error::Compacted`]), so the view
/// never misses a change; a fresh snapshot that matches the view changes nothing visible.
/// Failures to re-establish the watch that may pass ([`Error::Unavailable`],
/// [`Error::Ambiguous`], [`Error::Backend`]) are retried with backoff while the last view stays
/// readable.
///
/// A value that fails to decode is never a panic and never stops the view: the key is kept out
/// of the map, listed in [`ConfigSnapshot::rejected`] with the reason, and logged with
/// `tracing::warn!`, until a value that decodes is written.
///
/// The task runs while any handle (a `ConfigWatch` or a receiver from
/// [`subscribe`](ConfigWatch::subscribe)) lives, and ends when the last one is dropped, when
/// the store closes, or on an error that cannot pass; then [`changed`](ConfigWatch::changed)
/// fails, and the last view stays readable.
///
/// ```
/// # use std::sync::Arc;
/// # use swarmstate::{Key, MemoryStore, Pattern, StateStore, StateStoreExt};
/// # use swarmstate::config::ConfigWatch;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
/// let limit = Key::new("config.pool.limit")?;
/// store.set(&limit, "8").await?;
/// let mut config = ConfigWatch::start(store.clone(), Pattern::new("config.*")?, |_, value| {
///     let text = std::str::from_utf8(value).map_err(|err| err.to_string())?;
///     text.parse::<u32>().map_err(|err| err.to_string())
/// })
/// .await?;
/// assert_eq!(config.current().get(&limit), Some(&8));
/// store.set(&limit, "16").await?;
/// assert_eq!(config.changed().await?.get(&limit), Some(&16));
/// # Ok::<_, swarmstate::Error>(())
/// # }).unwrap();
/// ```
pub struct ConfigWatch<T> {
    receiver: watch::Receiver<Arc<ConfigSnapshot<T>>>,
    shared: Arc<Shared>,
}

impl<T> Clone for ConfigWatch<T> {
    fn clone(&self) -> Self {
        ConfigWatch {
            receiver: self.receiver.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for ConfigWatch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigWatch")
            .field("pattern", &self.shared.pattern)
            .field("revision", &self.receiver.borrow().revision)
            .field(
                "lag_recoveries",
                &self.shared.recoveries.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// What the handles share with the task.
#[derive(Debug)]
struct Shared {
    pattern: Pattern,
    recoveries: AtomicU64,
    // Invariant: set once, by the task, just before it ends.
    ended: Mutex<Option<Error>>,
}

impl<T: Send + Sync + 'static> ConfigWatch<T> {
    /// Takes a snapshot of the keys `pattern` selects, decodes each value with `decode`, and
    /// starts applying live changes in the background.
    ///
    /// Returns once the snapshot is complete, so [`current`](ConfigWatch::current) reflects the
    /// store as of the moment the watch began. A snapshot the store lags or cuts short is taken
    /// again, up to three times. Errors are those of [`StateStore::watch`] (e.g.
    /// [`Error::Closed`]), [`Error::Closed`] when the store closed before the snapshot was
    /// complete, or [`Error::Unavailable`] when it lagged every snapshot. Must be called within
    /// a Tokio runtime.
    pub async fn start(
        store: Arc<dyn StateStore>,
        pattern: Pattern,
        decode: impl Fn(&Key, &Bytes) -> std::result::Result<T, String> + Send + Sync + 'static,
    ) -> Result<ConfigWatch<T>> {
        let decode: Arc<Decode<T>> = Arc::new(decode);
        let mut changes =
            Follower::open(&store, pattern.clone(), Start::Snapshot, OnLag::Resume).await?;
        let mut view = ConfigSnapshot::empty();
        let mut retakes = 0;
        loop {
            match changes.next().await? {
                Followed::Event(WatchEvent::CaughtUp { revision }) => {
                    view.revision = revision.max(view.revision);
                    break;
                }
                Followed::Event(event) => {
                    view.apply(event, &*decode);
                }
                // The snapshot lagged or was cut short; the follower takes it again.
                Followed::Restarted if retakes < START_ATTEMPTS => {
                    retakes += 1;
                    view = ConfigSnapshot::empty();
                }
                Followed::Restarted => {
                    return Err(Error::Unavailable {
                        message: format!(
                            "the store lagged {START_ATTEMPTS} snapshots of {pattern} in a row"
                        ),
                    });
                }
                Followed::Resumed => {}
            }
        }
        // Once the view is up, it outlasts failures to watch again that may pass.
        changes.retry_transient();
        let (sender, receiver) = watch::channel(Arc::new(view));
        let shared = Arc::new(Shared {
            pattern,
            recoveries: AtomicU64::new(0),
            ended: Mutex::new(None),
        });
        let task = Task {
            decode,
            sender,
            shared: shared.clone(),
        };
        tokio::spawn(task.run(changes));
        Ok(ConfigWatch { receiver, shared })
    }

    /// The current view. Cheap: a shared pointer to an immutable snapshot.
    pub fn current(&self) -> Arc<ConfigSnapshot<T>> {
        self.receiver.borrow().clone()
    }

    /// Resolves with the view once a change this handle has not yet seen is applied (changes
    /// applied meanwhile are folded into the one returned). Cancel-safe.
    ///
    /// Errors, once the view ended for good: [`Error::Closed`] when the store closed, or the
    /// error that could not pass.
    pub async fn changed(&mut self) -> Result<Arc<ConfigSnapshot<T>>> {
        match self.receiver.changed().await {
            Ok(()) => Ok(self.receiver.borrow_and_update().clone()),
            Err(_) => Err(self
                .shared
                .ended
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or(Error::Closed)),
        }
    }

    /// A receiver of every published view, for callers that compose with Tokio's `watch`.
    /// It keeps the background task running like a handle does; its `changed()` fails once the
    /// view ended.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot<T>>> {
        self.receiver.clone()
    }

    /// How many times the view's watch was lagged (or cut off) and the view caught up again,
    /// by resuming or by a fresh snapshot. For monitoring: a view that lags often is read too
    /// slowly or decodes too slowly.
    pub fn lag_recoveries(&self) -> u64 {
        self.shared.recoveries.load(Ordering::Relaxed)
    }

    /// Whether the view has ended for good (see [`changed`](ConfigWatch::changed)).
    pub fn has_ended(&self) -> bool {
        self.shared
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

struct Task<T> {
    decode: Arc<Decode<T>>,
    sender: watch::Sender<Arc<ConfigSnapshot<T>>>,
    shared: Arc<Shared>,
}

impl<T: Send + Sync + 'static> Task<T> {
    async fn run(self, changes: Follower) {
        let outcome = tokio::select! {
            outcome = self.follow(changes) => outcome,
            // Every handle is gone: nobody reads the view any more.
            () = self.sender.closed() => return,
        };
        let err = match outcome {
            Ok(()) => Error::Closed,
            Err(err) => err,
        };
        tracing::debug!(pattern = %self.shared.pattern, %err, "config watch ended");
        *self.shared.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
        // Dropping the sender (with `self`) wakes every `changed()` with the end.
    }

    /// Applies changes until the view ends for good; `Ok` when the store closed.
    async fn follow(&self, mut changes: Follower) -> Result<()> {
        // A fresh snapshot being read after a gap the store could not replay; it replaces the
        // view once complete, so keys deleted in the gap leave the view too.
        let mut fresh: Option<ConfigSnapshot<T>> = None;
        // What ended the last batch, to be handled after it is published.
        let mut held = None;
        loop {
            let followed = match held.take() {
                Some(followed) => followed,
                None => changes.next().await,
            };
            let event = match followed {
                Ok(Followed::Event(event)) => event,
                Ok(Followed::Resumed) => {
                    self.shared.recoveries.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(Followed::Restarted) => {
                    fresh = Some(ConfigSnapshot::empty());
                    continue;
                }
                Err(Error::Closed) => return Ok(()),
                Err(err) => return Err(err),
            };
            if let Some(mut view) = fresh.take() {
                match event {
                    WatchEvent::CaughtUp { revision } => {
                        view.revision = revision.max(view.revision);
                        self.replace(view);
                        self.shared.recoveries.fetch_add(1, Ordering::Relaxed);
                    }
                    event => {
                        view.apply(event, &*self.decode);
                        fresh = Some(view);
                    }
                }
                continue;
            }
            let mut batch = vec![event];
            // Take whatever else is ready, so a transaction is published whole.
            while let Some(followed) = changes.next().now_or_never() {
                match followed {
                    Ok(Followed::Event(event)) => batch.push(event),
                    other => {
                        held = Some(other);
                        break;
                    }
                }
            }
            self.publish(batch);
        }
    }

    fn publish(&self, batch: Vec<WatchEvent>) {
        // Decoding runs outside the channel's lock, so readers of `current()` never wait on a
        // slow decoder. Only this task writes the view, so nothing changes meanwhile.
        let mut view = ConfigSnapshot::clone(&self.sender.borrow());
        let mut changed = false;
        for event in batch {
            changed |= view.apply(event, &*self.decode);
        }
        if changed {
            self.sender.send_replace(Arc::new(view));
        }
    }

    /// Replaces the view with a complete fresh snapshot.
    fn replace(&self, fresh: ConfigSnapshot<T>) {
        self.sender.send_if_modified(|current| {
            let changed = !current.same_entries(&fresh);
            let revision = fresh.revision.max(current.revision);
            *current = Arc::new(ConfigSnapshot { revision, ..fresh });
            // A snapshot equal to the view is no change to announce; it only moves the
            // revision the view is known to reflect.
            changed
        });
    }
}
