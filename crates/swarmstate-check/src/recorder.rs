//! The recorder: wraps a store, stamps every call and answer of its clients on one monotonic
//! clock, and records the store's own expiries as a watcher sees them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use swarmstate_core::{
    Entry, Error, Key, Pattern, PutMode, PutOptions, Result, Revision, StateStore, WatchEvent,
    WatchStart,
};
use tokio::task::JoinHandle;

use crate::history::{History, Input, Operation, Output};

/// How long a recorded operation may take before it is abandoned as ambiguous.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Recorder::finish`] waits for the watcher to catch up with the last change.
const FINISH_TIMEOUT: Duration = Duration::from_secs(15);

/// Records a history of what its clients do to a store.
///
/// A watcher over `*`, started by [`Recorder::new`] before any client exists, records each
/// [`WatchEvent::Expire`] of a key the clients touched, as an operation whose window runs from
/// the call of the write that expired to the moment the watcher saw the expiry. Only one clock
/// is used, this process's monotonic one.
///
/// A watcher that falls behind and cannot resume (a NATS bucket keeps one message per key, so
/// a burst of overwrites can open a gap) may miss expiries; it then takes a snapshot, so that
/// expiries after the gap are still recorded, and the history says so
/// ([`History::expiries_incomplete`]) and carries a possible expiry, with an unknown outcome and
/// a window opening no earlier than the write's call plus its TTL, for every acknowledged TTL
/// write whose expiry was not seen. Give the store a large watch buffer to make gaps rare.
#[derive(Debug)]
pub struct Recorder {
    store: Arc<dyn StateStore>,
    shared: Arc<Shared>,
    watcher: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    start: Instant,
    timeout: Duration,
    next_client: AtomicU64,
    operations: Mutex<Vec<Operation>>,
    /// Keys the clients have called an operation on; only their expiries are recorded.
    touched: Mutex<HashSet<String>>,
    watched: Mutex<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    /// The latest put revision the watcher saw per key, which an expiry refers to.
    last_put: HashMap<String, Revision>,
    /// (key, expired write, expiry revision, when seen).
    expiries: Vec<(String, Revision, Revision, u64)>,
    /// The highest revision seen.
    high: Option<Revision>,
    /// Whether events may have been lost.
    incomplete: bool,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

impl Recorder {
    /// Starts recording `store`: opens the expiry watcher (the only thing that can fail here).
    pub async fn new(store: Arc<dyn StateStore>) -> Result<Recorder> {
        Recorder::with_timeout(store, DEFAULT_OPERATION_TIMEOUT).await
    }

    /// Like [`Recorder::new`], abandoning any operation that takes longer than `timeout`; an
    /// abandoned operation is recorded as ambiguous and returned as [`Error::Ambiguous`].
    pub async fn with_timeout(store: Arc<dyn StateStore>, timeout: Duration) -> Result<Recorder> {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            timeout,
            next_client: AtomicU64::new(0),
            operations: Mutex::new(Vec::new()),
            touched: Mutex::new(HashSet::new()),
            watched: Mutex::new(Watched::default()),
        });
        let everything = Pattern::new("*")?;
        let events = store.watch(&everything, WatchStart::Now).await?;
        let watcher = tokio::spawn(watch(store.clone(), everything, events, shared.clone()));
        Ok(Recorder {
            store,
            shared,
            watcher,
        })
    }

    /// A new client with its own id. Its operations must not overlap each other (it takes
    /// `&mut self`); run many clients for concurrency.
    pub fn client(&self) -> RecordingClient {
        RecordingClient {
            store: self.store.clone(),
            shared: self.shared.clone(),
            id: self.shared.next_client.fetch_add(1, Ordering::Relaxed),
        }
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
    pub async fn finish(self) -> History {
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
        self.watcher.abort();
        let mut operations = std::mem::take(&mut *self.shared.operations.lock().unwrap());
        let touched = std::mem::take(&mut *self.shared.touched.lock().unwrap());
        let watched = std::mem::take(&mut *self.shared.watched.lock().unwrap());
        // The call of the write that expired opens the expiry's window.
        let written_at: HashMap<(&str, Revision), u64> = operations
            .iter()
            .filter_map(|op| match op.output {
                Output::Written(revision) => Some(((op.key.as_str(), revision), op.call)),
                _ => None,
            })
            .collect();
        let mut expiries = Vec::new();
        for (key, written, revision, seen) in &watched.expiries {
            if !touched.contains(key) {
                continue;
            }
            // A write with an unknown outcome has no revision on record; its expiry's window
            // then opens at the start of the recording.
            let call = written_at
                .get(&(key.as_str(), *written))
                .copied()
                .unwrap_or(0);
            expiries.push(Operation {
                client: u64::MAX - expiries.len() as u64,
                call,
                ret: Some(*seen),
                key: key.clone(),
                input: Input::Expire {
                    written: *written,
                    revision: Some(*revision),
                },
                output: Output::Expired,
            });
        }
        let incomplete = watched.incomplete || !complete;
        if incomplete {
            // The watcher may have missed expiries: every acknowledged TTL write whose expiry
            // was not seen may have expired, but not before its TTL had passed since its call
            // (an entry never disappears before its TTL), so an early expiry still fails.
            let seen: HashSet<(&str, Revision)> = watched
                .expiries
                .iter()
                .map(|(key, written, ..)| (key.as_str(), *written))
                .collect();
            for op in &operations {
                if let (Input::Put { ttl: Some(ttl), .. }, Output::Written(written)) =
                    (&op.input, &op.output)
                    && !seen.contains(&(op.key.as_str(), *written))
                {
                    expiries.push(Operation {
                        client: u64::MAX - expiries.len() as u64,
                        call: op.call + ttl.as_nanos() as u64,
                        ret: None,
                        key: op.key.clone(),
                        input: Input::Expire {
                            written: *written,
                            revision: None,
                        },
                        output: Output::Unknown,
                    });
                }
            }
        }
        operations.extend(expiries);
        History {
            operations,
            expiries_incomplete: incomplete,
        }
    }
}

/// Follows every change of the store, keeping what expiries need.
async fn watch(
    store: Arc<dyn StateStore>,
    everything: Pattern,
    mut events: swarmstate_core::WatchStream,
    shared: Arc<Shared>,
) {
    loop {
        let Some(event) = events.next().await else {
            // The store closed: expiries from here on would be missed.
            shared.watched.lock().unwrap().incomplete = true;
            return;
        };
        let seen = shared.now();
        let mut watched = shared.watched.lock().unwrap();
        match event {
            WatchEvent::Put(entry) => {
                watched.high = watched.high.max(Some(entry.revision));
                watched
                    .last_put
                    .insert(entry.key.as_str().to_owned(), entry.revision);
            }
            WatchEvent::Expire { key, revision } => {
                watched.high = watched.high.max(Some(revision));
                // A key without a put seen was written before the recording: not ours.
                if let Some(written) = watched.last_put.get(key.as_str()).copied() {
                    watched
                        .expiries
                        .push((key.as_str().to_owned(), written, revision, seen));
                }
            }
            WatchEvent::Delete { revision, .. } => {
                watched.high = watched.high.max(Some(revision));
            }
            WatchEvent::CaughtUp { .. } => {}
            WatchEvent::Lagged { resume_from } => {
                drop(watched);
                let resumed = store
                    .watch(&everything, WatchStart::FromRevision(resume_from))
                    .await;
                events = match resumed {
                    Ok(resumed) => resumed,
                    Err(_) => {
                        // Some changes are gone for good (a NATS bucket keeps one message per
                        // key). An older `last_put` may be out of date: forget it, and take a
                        // snapshot, whose entries name each key's current write, so that
                        // expiries from here on are still recorded for them.
                        {
                            let mut watched = shared.watched.lock().unwrap();
                            watched.incomplete = true;
                            watched.last_put.clear();
                        }
                        match store.watch(&everything, WatchStart::Snapshot).await {
                            Ok(live) => live,
                            Err(_) => return,
                        }
                    }
                };
            }
        }
    }
}

/// One sequential client of a [`Recorder`]. Every operation is forwarded to the store and
/// recorded with its call and return times. An operation whose outcome is unknown
/// ([`Error::Ambiguous`], a time-out, or an error that does not say nothing was applied) is
/// recorded as possibly applied, and the client continues under a new id, since its next call
/// may overlap the unknown one.
#[derive(Debug)]
pub struct RecordingClient {
    store: Arc<dyn StateStore>,
    shared: Arc<Shared>,
    id: u64,
}

/// How an error is recorded.
enum Recorded {
    /// The operation definitely did not apply: not recorded.
    Nothing,
    /// The operation may have applied.
    Ambiguous,
    /// A definite answer.
    Output(Output),
}

impl RecordingClient {
    /// The client's current id in the history.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Reads `key` through the store and records the answer.
    pub async fn get(&mut self, key: &Key) -> Result<Option<Entry>> {
        let store = self.store.clone();
        let owned_key = key.clone();
        let call = async move { store.get(&owned_key).await };
        self.record(key, Input::Get, call, |result| match result {
            Ok(entry) => Recorded::Output(Output::Value(
                entry.as_ref().map(|e| (e.value.clone(), e.revision)),
            )),
            // A read that failed applied nothing and says nothing.
            Err(_) => Recorded::Nothing,
        })
        .await
    }

    /// Writes through the store and records the outcome.
    pub async fn put(&mut self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        let input = Input::Put {
            value: value.clone(),
            mode: options.mode,
            ttl: options.ttl,
        };
        let mode = options.mode;
        let store = self.store.clone();
        let owned_key = key.clone();
        let call = async move { store.put(&owned_key, value, options).await };
        self.record(key, input, call, |result| match result {
            Ok(revision) => Recorded::Output(Output::Written(*revision)),
            Err(Error::AlreadyExists { revision, .. }) if mode == PutMode::Create => {
                Recorded::Output(Output::Exists(*revision))
            }
            Err(Error::RevisionMismatch { actual, .. }) if matches!(mode, PutMode::Update(_)) => {
                Recorded::Output(Output::Mismatch(*actual))
            }
            Err(err) => classify(err),
        })
        .await
    }

    /// Deletes through the store and records the outcome.
    pub async fn delete(
        &mut self,
        key: &Key,
        expected: Option<Revision>,
    ) -> Result<Option<Revision>> {
        let store = self.store.clone();
        let owned_key = key.clone();
        let call = async move { store.delete(&owned_key, expected).await };
        self.record(
            key,
            Input::Delete { expected },
            call,
            |result| match result {
                Ok(revision) => Recorded::Output(Output::Deleted(*revision)),
                Err(Error::RevisionMismatch { actual, .. }) if expected.is_some() => {
                    Recorded::Output(Output::Mismatch(*actual))
                }
                Err(err) => classify(err),
            },
        )
        .await
    }

    async fn record<T>(
        &mut self,
        key: &Key,
        input: Input,
        call: impl Future<Output = Result<T>>,
        recorded: impl FnOnce(&Result<T>) -> Recorded,
    ) -> Result<T> {
        self.shared
            .touched
            .lock()
            .unwrap()
            .insert(key.as_str().to_owned());
        let called = self.shared.now();
        let result = match tokio::time::timeout(self.shared.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Ambiguous {
                operation: format!("recorded operation on {key}"),
                message: format!("no answer within {:?}", self.shared.timeout),
            }),
        };
        let returned = self.shared.now();
        let (ret, output) = match recorded(&result) {
            Recorded::Nothing => return result,
            Recorded::Ambiguous => (None, Output::Unknown),
            Recorded::Output(output) => (Some(returned), output),
        };
        self.shared.operations.lock().unwrap().push(Operation {
            client: self.id,
            call: called,
            ret,
            key: key.as_str().to_owned(),
            input,
            output,
        });
        if ret.is_none() {
            self.id = self.shared.next_client.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// Errors that say nothing was applied are not recorded; any other may hide an applied write.
fn classify(err: &Error) -> Recorded {
    match err {
        Error::Unavailable { .. }
        | Error::Closed
        | Error::InvalidKey { .. }
        | Error::InvalidInput { .. }
        | Error::ValueTooLarge { .. }
        | Error::Unsupported { .. } => Recorded::Nothing,
        _ => Recorded::Ambiguous,
    }
}
