//! [`RecordingClient`]: a [`StateStore`] that forwards every call to the recorded store, and
//! records get, put, delete and txn with their call and return times.

use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use swarmstate_core::{
    Capabilities, Entry, Error, Key, KeyStream, Pattern, PutMode, PutOptions, Result, Revision,
    StateStore, TxnOp, TxnResult, WatchStart, WatchStream,
};

use super::{KeyOp, Shared, txn};
use crate::history::{Input, Operation, Output};

/// One client of a [`Recorder`](super::Recorder), and a [`StateStore`]: every method forwards
/// to the recorded store. `get`, `put`, `delete` and `txn` are recorded with their call and
/// return times (a transaction as what it does to each key it touches, see below); `keys`,
/// `watch`, `capabilities` and `close` pass through unrecorded.
///
/// A client is one process of the history, whose operations never overlap: give each
/// concurrent actor its own client (wrap it in an `Arc` for code that takes an
/// `Arc<dyn StateStore>`). Calls that do overlap anyway (a recipe's `try_join!` of two reads,
/// the release a dropped lock guard spawns) are recorded under fresh ids of their own, so the
/// history stays well-formed.
///
/// An operation whose outcome is unknown ([`Error::Ambiguous`], a time-out, an error that does
/// not say nothing was applied, or a call whose future was dropped before its answer came) is
/// recorded as possibly applied, and the client continues under a new id, since its next call
/// may overlap the unknown one. Errors that say nothing was applied ([`Error::Unavailable`],
/// [`Error::Closed`], invalid input, [`Error::Unsupported`]) are not recorded at all, nor is a
/// read that failed.
///
/// A put with an idempotency key that succeeds is recorded with an unknown outcome: its answer
/// may be a retry's, naming the revision of an earlier attempt, so when it applied is not
/// known.
///
/// A transaction is recorded per key, each part under the transaction's call and return
/// times:
/// - committed: each put, and each delete at a revision or unconditional, as that write at the
///   revision the answer gives (or, for a delete that found nothing, as such); each check, and
///   each delete of a key required absent (which changes nothing), as an [`Input::Check`] of
///   its condition. A check with no condition records nothing.
/// - refused with [`Error::RevisionMismatch`] or [`Error::AlreadyExists`]: one operation, on
///   the key the error names, whose condition was found not to hold, with the revision found;
///   nothing for the other keys, whose state the refusal does not tell. A refusal naming a key
///   not in the transaction, or a kind of conflict its condition cannot cause, is taken as an
///   unknown outcome.
/// - unknown outcome: each write it would make, with an unknown outcome.
///
/// The per-key register model then sees every part at the transaction's linearization point,
/// which is sound: a linearizable store gives each key's part exactly that effect there, so a
/// violation found is a real one. What it does not see is that the parts are one atomic step:
/// each key's part may be placed at its own moment within the call. A store that decides a
/// condition on one key and applies a write to another at two different moments (a fence that
/// does not hold), or applies only some writes of a transaction whose outcome is unknown, goes
/// unnoticed as long as each key's part is explainable on its own.
#[derive(Debug)]
pub struct RecordingClient {
    store: Arc<dyn StateStore>,
    shared: Arc<Shared>,
    ids: Mutex<Ids>,
}

#[derive(Debug)]
struct Ids {
    /// Invariant: used only by calls made while no other call of this client is in flight,
    /// and replaced as soon as one of its calls has an unknown outcome, so that the
    /// operations under it never overlap.
    current: u64,
    in_flight: usize,
}

/// What a call's answer leaves in the history.
pub(super) enum Recorded {
    /// The call definitely did not apply and tells nothing: not recorded.
    Nothing,
    /// The call may have applied: every write it would make, with an unknown outcome.
    Unknown,
    /// A definite answer, as what it says about each key.
    Answered(Vec<KeyOp>),
}

/// Errors that say nothing was applied are not recorded; any other may hide an applied write.
pub(super) fn classify(err: &Error) -> Recorded {
    match err {
        Error::Unavailable { .. }
        | Error::Closed
        | Error::InvalidKey { .. }
        | Error::InvalidInput { .. }
        | Error::ValueTooLarge { .. }
        | Error::Unsupported { .. } => Recorded::Nothing,
        _ => Recorded::Unknown,
    }
}

/// A call waiting for its answer. Dropped before its answer was recorded (the caller gave up
/// on the future), it is recorded as never answered.
struct InFlight<'a> {
    client: &'a RecordingClient,
    /// `None` once settled, or when the recording had already finished.
    number: Option<u64>,
    id: u64,
    call: u64,
}

impl InFlight<'_> {
    /// Records the answer, which came back at `returned`.
    fn settle(mut self, recorded: Recorded, returned: u64) {
        let Some(number) = self.number.take() else {
            return;
        };
        let shared = &self.client.shared;
        match recorded {
            Recorded::Nothing => shared.answer(number, Vec::new()),
            Recorded::Unknown => {
                if shared.abandon(number) {
                    self.client.retire(self.id);
                }
            }
            Recorded::Answered(parts) => {
                let unknown = parts.iter().any(|part| part.output == Output::Unknown);
                let operations = parts
                    .into_iter()
                    .map(|part| operation(self.id, self.call, Some(returned), part))
                    .collect();
                shared.answer(number, operations);
                if unknown {
                    self.client.retire(self.id);
                }
            }
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(number) = self.number.take()
            && self.client.shared.abandon(number)
        {
            self.client.retire(self.id);
        }
        // Only after the id was retired: a call that starts now must not take it.
        self.client.ids.lock().unwrap().in_flight -= 1;
    }
}

/// A key's part of a call as an operation of the history; an unknown outcome never returns.
fn operation(client: u64, call: u64, returned: Option<u64>, part: KeyOp) -> Operation {
    let ret = returned.filter(|_| part.output != Output::Unknown);
    Operation {
        client,
        call,
        ret,
        key: part.key,
        input: part.input,
        output: part.output,
    }
}

impl RecordingClient {
    pub(super) fn new(store: Arc<dyn StateStore>, shared: Arc<Shared>) -> RecordingClient {
        let current = shared.new_client_id();
        RecordingClient {
            store,
            shared,
            ids: Mutex::new(Ids {
                current,
                in_flight: 0,
            }),
        }
    }

    /// The client's current id in the history. It changes after an operation whose outcome is
    /// unknown.
    pub fn id(&self) -> u64 {
        self.ids.lock().unwrap().current
    }

    /// Moves the client off `id` if it is still the current one.
    fn retire(&self, id: u64) {
        let mut ids = self.ids.lock().unwrap();
        if ids.current == id {
            ids.current = self.shared.new_client_id();
        }
    }

    /// Registers a call on `keys`; `unknown` is what it leaves if its answer never comes.
    fn begin<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k Key>,
        unknown: Vec<KeyOp>,
    ) -> InFlight<'_> {
        let id = {
            let mut ids = self.ids.lock().unwrap();
            ids.in_flight += 1;
            if ids.in_flight == 1 {
                ids.current
            } else {
                self.shared.new_client_id()
            }
        };
        let call = self.shared.now();
        let pending = unknown
            .into_iter()
            .map(|part| operation(id, call, None, part))
            .collect();
        InFlight {
            client: self,
            number: self.shared.begin(keys, pending),
            id,
            call,
        }
    }

    /// Runs `call` under the recorder's time-out and records what `recorded` makes of its
    /// answer. `what` names the operation in a time-out's error.
    async fn record<'k, T>(
        &self,
        keys: impl IntoIterator<Item = &'k Key>,
        unknown: Vec<KeyOp>,
        what: impl FnOnce() -> String,
        call: impl Future<Output = Result<T>>,
        recorded: impl FnOnce(&Result<T>) -> Recorded,
    ) -> Result<T> {
        let in_flight = self.begin(keys, unknown);
        let result = match tokio::time::timeout(self.shared.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::Ambiguous {
                operation: what(),
                message: format!("no answer within {:?}", self.shared.timeout),
            }),
        };
        let returned = self.shared.now();
        in_flight.settle(recorded(&result), returned);
        result
    }
}

#[async_trait]
impl StateStore for RecordingClient {
    fn capabilities(&self) -> Capabilities {
        self.store.capabilities()
    }

    /// Reads through the store and records the answer; a failed read is not recorded.
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.record(
            [key],
            Vec::new(),
            || format!("recorded get {key}"),
            self.store.get(key),
            |result| match result {
                Ok(entry) => Recorded::Answered(vec![KeyOp::new(
                    key,
                    Input::Get,
                    Output::Value(entry.as_ref().map(|e| (e.value.clone(), e.revision))),
                )]),
                // A read that failed applied nothing and says nothing.
                Err(_) => Recorded::Nothing,
            },
        )
        .await
    }

    /// Writes through the store and records the outcome.
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        let input = Input::Put {
            value: value.clone(),
            mode: options.mode,
            ttl: options.ttl,
        };
        let mode = options.mode;
        let idempotent = options.idempotency_key.is_some();
        let unknown = vec![KeyOp::new(key, input.clone(), Output::Unknown)];
        self.record(
            [key],
            unknown,
            || format!("recorded put {key}"),
            self.store.put(key, value, options),
            |result| {
                let output = match result {
                    // Perhaps a retry's answer, naming an earlier attempt's revision.
                    Ok(_) if idempotent => return Recorded::Unknown,
                    Ok(revision) => Output::Written(*revision),
                    Err(Error::AlreadyExists { revision, .. }) if mode == PutMode::Create => {
                        Output::Exists(*revision)
                    }
                    Err(Error::RevisionMismatch { actual, .. })
                        if matches!(mode, PutMode::Update(_)) =>
                    {
                        Output::Mismatch(*actual)
                    }
                    Err(err) => return classify(err),
                };
                Recorded::Answered(vec![KeyOp::new(key, input, output)])
            },
        )
        .await
    }

    /// Deletes through the store and records the outcome.
    async fn delete(&self, key: &Key, expected: Option<Revision>) -> Result<Option<Revision>> {
        let input = Input::Delete { expected };
        let unknown = vec![KeyOp::new(key, input.clone(), Output::Unknown)];
        self.record(
            [key],
            unknown,
            || format!("recorded delete {key}"),
            self.store.delete(key, expected),
            |result| {
                let output = match result {
                    Ok(revision) => Output::Deleted(*revision),
                    Err(Error::RevisionMismatch { actual, .. }) if expected.is_some() => {
                        Output::Mismatch(*actual)
                    }
                    Err(err) => return classify(err),
                };
                Recorded::Answered(vec![KeyOp::new(key, input, output)])
            },
        )
        .await
    }

    /// Passes through, unrecorded.
    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream> {
        self.store.keys(pattern).await
    }

    /// Passes through, unrecorded.
    async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
        self.store.watch(pattern, start).await
    }

    /// Applies the transaction through the store and records it per key (see
    /// [`RecordingClient`]).
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        let asked = ops.clone();
        self.record(
            asked.iter().map(|op| &op.key),
            txn::unknown(&asked),
            || {
                let keys: Vec<&str> = asked.iter().map(|op| op.key.as_str()).collect();
                format!("recorded txn on {}", keys.join(", "))
            },
            self.store.txn(ops),
            |result| txn::recorded(&asked, result),
        )
        .await
    }

    /// Passes through: closes the recorded store, which ends the recorder's watcher too.
    async fn close(&self) -> Result<()> {
        self.store.close().await
    }
}
