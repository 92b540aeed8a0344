//! The recorder: a [`StateStore`] decorator. Each [`RecordingClient`] forwards every call to
//! the store and stamps every call and answer on one monotonic clock; the [`Recorder`] it came
//! from also records the store's own expiries as a watcher sees them, and hands back the
//! [`History`] at the end.
//!
//! - `client.rs` — [`RecordingClient`]: the decorator, and the bookkeeping that keeps every
//!   client id's operations sequential.
//! - `txn.rs` — what a transaction stands for on each key it touches.
//! - `expiries.rs` — the watcher, and the expiry operations it adds to the history.

mod client;
mod expiries;
mod txn;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use swarmstate_core::{Key, Pattern, PutOptions, Result, StateStore, WatchStart};
use tokio::task::JoinHandle;

use crate::history::{History, Input, Operation, Output};
pub use client::RecordingClient;
use expiries::Watched;

/// How long a recorded operation may take before it is abandoned as ambiguous.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Recorder::finish`] waits for the watcher to catch up with the last change.
const FINISH_TIMEOUT: Duration = Duration::from_secs(15);

/// Records a history of what its clients do to a store.
///
/// Each [`client`](Recorder::client) is a [`StateStore`] itself, so anything written against
/// the trait (a workload, the lock or queue recipe, which take an `Arc<dyn StateStore>`) can
/// be recorded by handing it a client instead of the store:
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use swarmstate_check::{Recorder, check};
/// use swarmstate_core::{Key, MemoryStore, StateStore, StateStoreExt};
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
/// let recorder = Recorder::new(store).await?;
/// // One client per concurrent actor: a client's operations form one sequential process.
/// let client: Arc<dyn StateStore> = Arc::new(recorder.client());
/// let key = Key::new("jobs.done")?;
/// client.set(&key, "1").await?;
/// assert_eq!(&client.get(&key).await?.unwrap().value[..], b"1");
/// let history = recorder.finish().await;
/// assert_eq!(history.operations.len(), 2);
/// assert!(check(&history, Duration::from_secs(5)).verdict.is_ok());
/// # Ok::<_, swarmstate_core::Error>(())
/// # }).unwrap();
/// ```
///
/// A watcher over `*`, started by [`Recorder::new`] before any client exists, records each
/// [`WatchEvent::Expire`](swarmstate_core::WatchEvent::Expire) of a key the clients touched, as
/// an operation whose window runs from the call of the write that expired to the moment the
/// watcher saw the expiry. Only one clock is used, this process's monotonic one.
///
/// A watcher that falls behind and cannot resume (a NATS bucket keeps one message per key, so
/// a burst of overwrites can open a gap) may miss expiries; it then takes a snapshot, so that
/// expiries after the gap are still recorded, and the history says so
/// ([`History::expiries_incomplete`]) and carries a possible expiry, with an unknown outcome and
/// a window opening no earlier than the write's call plus its TTL, for every TTL write whose
/// expiry was not seen: by the write's revision when it was acknowledged, by its value when its
/// own outcome is unknown. Give the store a large watch buffer to make gaps rare.
#[derive(Debug)]
pub struct Recorder {
    store: Arc<dyn StateStore>,
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

/// What the recorder and its clients share.
#[derive(Debug)]
struct Shared {
    start: Instant,
    timeout: Duration,
    next_client: AtomicU64,
    log: Mutex<Log>,
    watched: Mutex<Watched>,
}

/// The operations recorded so far, and those still waiting for their answer.
#[derive(Debug, Default)]
struct Log {
    /// Answered operations, and those whose answer will never come.
    operations: Vec<Operation>,
    /// Calls not answered yet, by call number, each as it stands in the history if its answer
    /// never comes: every write it may make, with an unknown outcome.
    pending: HashMap<u64, Vec<Operation>>,
    next_call: u64,
    /// Keys the clients have called an operation on; only their expiries are recorded.
    touched: HashSet<String>,
    /// Set by [`Recorder::finish`]: from then on nothing is recorded.
    finished: bool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn new_client_id(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a call on `keys` whose writes, if its answer never comes, are `unknown`.
    /// Returns its number, or `None` once the recording has finished.
    fn begin<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k Key>,
        unknown: Vec<Operation>,
    ) -> Option<u64> {
        let mut log = self.log.lock().unwrap();
        if log.finished {
            return None;
        }
        for key in keys {
            if !log.touched.contains(key.as_str()) {
                log.touched.insert(key.as_str().to_owned());
            }
        }
        let number = log.next_call;
        log.next_call += 1;
        log.pending.insert(number, unknown);
        Some(number)
    }

    /// Replaces call `number`'s pending entry by `answered`. Does nothing if the recording
    /// finished meanwhile (it recorded the call as unanswered).
    fn answer(&self, number: u64, answered: Vec<Operation>) {
        let mut log = self.log.lock().unwrap();
        if log.pending.remove(&number).is_some() {
            log.operations.extend(answered);
        }
    }

    /// Records call `number` as never answered. Returns whether that left anything in the
    /// history (a read leaves nothing).
    fn abandon(&self, number: u64) -> bool {
        let mut log = self.log.lock().unwrap();
        match log.pending.remove(&number) {
            Some(unknown) => {
                let recorded = !unknown.is_empty();
                log.operations.extend(unknown);
                recorded
            }
            None => false,
        }
    }
}

impl Recorder {
    /// Starts recording `store`: opens the expiry watcher (the only thing that can fail here).
    pub async fn new(store: Arc<dyn StateStore>) -> Result<Recorder> {
        Recorder::with_timeout(store, DEFAULT_OPERATION_TIMEOUT).await
    }

    /// Like [`Recorder::new`], abandoning any operation that takes longer than `timeout`; an
    /// abandoned operation is recorded as ambiguous and returned as
    /// [`Error::Ambiguous`](swarmstate_core::Error::Ambiguous).
    pub async fn with_timeout(store: Arc<dyn StateStore>, timeout: Duration) -> Result<Recorder> {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            timeout,
            next_client: AtomicU64::new(0),
            log: Mutex::new(Log::default()),
            watched: Mutex::new(Watched::default()),
        });
        let everything = Pattern::new("*")?;
        let events = store.watch(&everything, WatchStart::Now).await?;
        let watcher = tokio::spawn(expiries::watch(
            store.clone(),
            everything,
            events,
            shared.clone(),
        ));
        Ok(Recorder {
            store,
            shared,
            watcher,
        })
    }

    /// A new client with its own id: a [`StateStore`] that forwards to the recorded store and
    /// records what it is asked and told. Give each concurrent actor its own client.
    pub fn client(&self) -> RecordingClient {
        RecordingClient::new(self.store.clone(), self.shared.clone())
    }

    /// Nanoseconds since the recording started, on the history's clock.
    pub fn now(&self) -> u64 {
        self.shared.now()
    }

    /// Stops recording and returns the history.
    ///
    /// So that every expiry that happened before this call is in the history, it writes one
    /// barrier key (`swarmstate-check.barrier.<n>`, deleted again) and waits until the watcher
    /// has seen it: events arrive in revision order, so every earlier expiry has been seen too.
    /// If the watcher cannot confirm that within 15 s, the history is marked
    /// [`expiries_incomplete`](History::expiries_incomplete).
    ///
    /// A call of a client still waiting for its answer is recorded as unanswered (its writes
    /// with an unknown outcome), and nothing a client does from here on is recorded.
    pub async fn finish(self) -> History {
        let complete = self.barrier().await;
        self.watcher.abort();
        let (mut operations, touched) = {
            let mut log = self.shared.log.lock().unwrap();
            log.finished = true;
            let mut operations = std::mem::take(&mut log.operations);
            let mut pending: Vec<(u64, Vec<Operation>)> = log.pending.drain().collect();
            pending.sort_unstable_by_key(|(number, _)| *number);
            operations.extend(pending.into_iter().flat_map(|(_, unknown)| unknown));
            (operations, std::mem::take(&mut log.touched))
        };
        let watched = std::mem::take(&mut *self.shared.watched.lock().unwrap());
        let incomplete = watched.incomplete || !complete;
        let expiries = expiries::operations(&operations, &touched, &watched, incomplete);
        operations.extend(expiries);
        History {
            operations,
            expiries_incomplete: incomplete,
        }
    }

    /// Writes the barrier key and waits for the watcher to see it; true once it has.
    async fn barrier(&self) -> bool {
        let barrier = Key::new(format!(
            "swarmstate-check.barrier.{}",
            self.shared.start.elapsed().as_nanos()
        ))
        .expect("the barrier key is valid");
        let mut complete = false;
        if let Ok(Ok(revision)) = tokio::time::timeout(
            FINISH_TIMEOUT,
            self.store.put(
                &barrier,
                Bytes::from_static(b"end"),
                PutOptions::overwrite(),
            ),
        )
        .await
        {
            let waited = Instant::now();
            while waited.elapsed() < FINISH_TIMEOUT && !self.watcher.is_finished() {
                if self
                    .shared
                    .watched
                    .lock()
                    .unwrap()
                    .high
                    .is_some_and(|high| high >= revision)
                {
                    complete = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = self.store.delete(&barrier, None).await;
        }
        complete
    }
}

/// One key's part of a call: what was asked of the key and what the answer says about it,
/// [`Output::Unknown`] when nobody knows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyOp {
    key: String,
    input: Input,
    output: Output,
}

impl KeyOp {
    fn new(key: &Key, input: Input, output: Output) -> KeyOp {
        KeyOp {
            key: key.as_str().to_owned(),
            input,
            output,
        }
    }
}
