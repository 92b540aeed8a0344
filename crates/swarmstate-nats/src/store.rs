//! [`NatsStore`]: the [`StateStore`] operations on one JetStream stream laid out as a KV bucket
//! (`$KV.<bucket>.<key>`), with revisions = stream sequences.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use swarmstate_core::backend::{validate_txn, validate_value};
use swarmstate_core::{
    Capabilities, Condition, Entry, Error, Key, KeyStream, Pattern, PutMode, PutOptions, Result,
    Revision, StateStore, TxnOp, TxnResult, WatchStart, WatchStream,
};
use tokio::sync::watch as signal;

use crate::config::{NatsStoreBuilder, ReadConsistency, parse_url};
use crate::expiry::{Held, Seen};
use crate::txn;
use crate::wire::{self, ApiError};

/// A store on a NATS JetStream bucket. Clones share one connection.
///
/// Durable as the server is configured: run the servers with `jetstream { sync_interval:
/// always }` and the bucket with 3 replicas for writes that survive a crash.
///
/// Reads ([`get`](StateStore::get)) go to the stream leader and are linearizable by default,
/// confirmed by a commit barrier (see [`ReadConsistency`]); [`NatsStore::get_stale`] is the
/// opt-in fast read any replica may answer.
#[derive(Debug, Clone)]
pub struct NatsStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) context: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) bucket: String,
    // Invariant: `$KV.<bucket>.`, the subject prefix of every key.
    pub(crate) prefix: String,
    pub(crate) max_value_size: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) watch_buffer: usize,
    read_consistency: ReadConsistency,
    // Invariant: unique per store (a NUID), a valid key token; names this client's barrier keys.
    pub(crate) client_id: String,
    // Barrier slots not in use. A slot is one reserved subject, used by one read at a time, so
    // that each barrier knows which earlier barrier it replaces.
    barrier_slots: std::sync::Mutex<BarrierSlots>,
    // Numbers this client's writes: `<client_id>.<n>` is a write's `Nats-Msg-Id`.
    pub(crate) writes: std::sync::atomic::AtomicU64,
    closed: AtomicBool,
    // The last message of keys this client wrote or read, so that a write knows what it
    // replaces without reading it first (see `crate::expiry`). A stale entry costs one refused
    // write and a read.
    pub(crate) seen: std::sync::Mutex<std::collections::HashMap<Key, Seen>>,
    // Flips to true on close; every watch task listens to it.
    pub(crate) closing: signal::Sender<bool>,
}

/// The last message stored for a key, whatever it is.
#[derive(Debug)]
pub(crate) struct Last {
    pub(crate) sequence: u64,
    pub(crate) live: Option<Entry>,
    /// When the value's TTL ends, on this machine's monotonic clock, if it has one.
    pub(crate) deadline: Option<Instant>,
    /// The `Nats-Msg-Id` of the write that stored it, if any.
    pub(crate) write_id: Option<String>,
}

impl Last {
    /// The revision of the value it holds; `None` for a tombstone or an expiry marker.
    pub(crate) fn revision(&self) -> Option<Revision> {
        self.live.as_ref().map(|entry| entry.revision)
    }
}

impl NatsStore {
    /// A builder for a store on the servers at `urls` (comma-separated `nats://host:port`).
    pub fn builder(urls: impl Into<String>) -> NatsStoreBuilder {
        NatsStoreBuilder::new(urls)
    }

    /// Connects to `nats://host:port[,host:port...]/bucket` with default settings.
    pub async fn open(url: &str) -> Result<NatsStore> {
        parse_url(url)?.connect().await
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    pub(crate) fn from_parts(
        client: async_nats::Client,
        context: jetstream::Context,
        stream: stream::Stream,
        builder: NatsStoreBuilder,
    ) -> NatsStore {
        let (closing, _) = signal::channel(false);
        let inbox = client.new_inbox();
        let client_id = inbox.rsplit('.').next().unwrap_or(&inbox).to_owned();
        NatsStore {
            inner: Arc::new(Inner {
                client,
                context,
                stream,
                prefix: format!("$KV.{}.", builder.bucket),
                bucket: builder.bucket,
                max_value_size: builder.max_value_size,
                request_timeout: builder.request_timeout,
                watch_buffer: builder.watch_buffer,
                read_consistency: builder.read_consistency,
                client_id,
                barrier_slots: Default::default(),
                writes: Default::default(),
                closed: AtomicBool::new(false),
                seen: Default::default(),
                closing,
            }),
        }
    }

    /// A read that any replica may answer (JetStream direct get): faster, but it can return a
    /// value older than a write already acknowledged. Use [`StateStore::get`] unless stale
    /// data is acceptable.
    pub async fn get_stale(&self, key: &Key) -> Result<Option<Entry>> {
        self.ensure_open()?;
        match self
            .inner
            .stream
            .direct_get_last_for_subject(self.subject(key))
            .await
        {
            Ok(message) => Ok(wire::live_entry(
                key,
                message.sequence,
                Some(&message.headers),
                &message.payload,
                message.time.unix_timestamp_nanos(),
            )),
            Err(err) if err.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::Unavailable {
                message: format!("stale get {key}: {err}"),
            }),
        }
    }

    pub(crate) fn subject(&self, key: &Key) -> String {
        format!("{}{}", self.inner.prefix, key)
    }

    pub(crate) fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The last message on the key's subject, read from the stream leader.
    pub(crate) async fn last(&self, key: &Key) -> Result<Option<Last>> {
        self.ensure_open()?;
        // Fail at once without a connection, as a write does, rather than wait for a time-out.
        if self.inner.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::Unavailable {
                message: format!("get {key}: not connected to NATS"),
            });
        }
        match self
            .inner
            .stream
            .get_last_raw_message_by_subject(&self.subject(key))
            .await
        {
            Ok(message) => {
                let live = wire::live_entry(
                    key,
                    message.sequence,
                    Some(&message.headers),
                    &message.payload,
                    message.time.unix_timestamp_nanos(),
                );
                let deadline = live
                    .as_ref()
                    .and_then(|entry| entry.expires_in)
                    .map(|left| Instant::now() + left);
                let write_id = message
                    .headers
                    .get(wire::MSG_ID)
                    .map(|id| id.as_str().to_owned());
                Ok(Some(Last {
                    sequence: message.sequence,
                    live,
                    deadline,
                    write_id,
                }))
            }
            Err(err)
                if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(err) => Err(Error::Unavailable {
                message: format!("get {key}: {err}"),
            }),
        }
    }

    pub(crate) async fn publish(
        &self,
        operation: &str,
        key: &Key,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Result<u64, ApiError>> {
        self.ensure_open()?;
        let reply = wire::request(
            &self.inner.client,
            self.inner.request_timeout,
            operation,
            self.subject(key),
            headers,
            payload,
        )
        .await?;
        Ok(wire::parse_ack(&reply.payload, operation)?.map(|ack| ack.sequence))
    }
}

/// A reserved subject that carries this client's read barriers, one read at a time.
#[derive(Debug)]
struct BarrierSlot {
    id: u64,
    // The sequences of the barriers acknowledged on this subject, newest first, at most
    // `wire::REPLACES_KEPT`: the newest is the message the next barrier replaces, the others
    // were replaced before. Each barrier lists them all, so that a watcher that missed several
    // in a row can still tell every hole they left.
    earlier: std::collections::VecDeque<u64>,
    used: std::time::Instant,
}

#[derive(Debug, Default)]
pub(crate) struct BarrierSlots {
    idle: Vec<BarrierSlot>,
    next_id: u64,
}

/// How long a read barrier stays in the bucket when its slot is not used again: long enough
/// that a reused slot finds its own last barrier there (see [`NatsStore::take_slot`]), short
/// enough that the slots of clients that went away do not pile up.
const BARRIER_TTL: Duration = Duration::from_secs(600);

impl NatsStore {
    /// A linearizable read: the key's last message as the stream leader has it, confirmed by a
    /// commit barrier.
    ///
    /// The barrier is a message to a reserved subject of this client carrying
    /// `Nats-Expected-Last-Subject-Sequence(-Subject)`: the key must still be at the sequence
    /// that was read. The check is made by the stream leader when it proposes the message to
    /// the stream's Raft group, against everything it has applied, and a proposal only commits
    /// in the term it was made in. So an acknowledged barrier proves that, at a moment between
    /// the read and the acknowledgement, a leader holding the quorum had the key at the
    /// sequence read: the read is linearized there. A deposed leader cannot commit the
    /// barrier, so its stale answer is never returned.
    async fn get_linearizable(&self, key: &Key) -> Result<Option<Entry>> {
        Ok(self
            .confirmed_last(key, &format!("get {key}"))
            .await?
            .and_then(|last| last.live))
    }

    /// The key's last message as [`get_linearizable`](Self::get_linearizable) reads it:
    /// confirmed by a commit barrier, so it may be reported as the key's state at a moment
    /// within the call (a refusal's `actual` revision, an absent key a delete finds). It is
    /// remembered for the next write.
    pub(crate) async fn confirmed_last(&self, key: &Key, operation: &str) -> Result<Option<Last>> {
        let mut attempts = wire::Attempts::new(self.inner.request_timeout);
        loop {
            let last = self.last(key).await?;
            let at = last.as_ref().map_or(0, |l| l.sequence);
            match self.barrier(key, at, operation).await? {
                Ok(()) => {
                    self.remember(key, Seen::of(last.as_ref()));
                    return Ok(last);
                }
                // The key moved since the read: read again.
                Err(refused) if refused.is_conflict() => {
                    attempts
                        .after(&refused, || {
                            format!(
                                "{operation}: the read could not be confirmed within {:?}",
                                self.inner.request_timeout
                            )
                        })
                        .await?
                }
                Err(other) => return Err(other.into_error(operation)),
            }
        }
    }

    /// What a write that was refused until its time ran out reports.
    pub(crate) fn kept_changing(&self, operation: &str) -> String {
        format!(
            "{operation}: refused for {:?} while the key kept changing",
            self.inner.request_timeout
        )
    }

    /// Publishes a commit barrier expecting `key` at sequence `at` (0: no message). `Ok(Err)`
    /// when the server refused it (nothing was stored); a barrier without an answer is
    /// [`Error::Unavailable`]: whether or not it was stored, it confirmed nothing.
    pub(crate) async fn barrier(
        &self,
        key: &Key,
        at: u64,
        operation: &str,
    ) -> Result<Result<(), ApiError>> {
        self.ensure_open()?;
        let mut slot = self.take_slot();
        let mut headers = HeaderMap::new();
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
            at.to_string().as_str(),
        );
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            self.subject(key).as_str(),
        );
        headers.insert(wire::TTL, format!("{}s", BARRIER_TTL.as_secs()).as_str());
        if !slot.earlier.is_empty() {
            headers.insert(
                wire::REPLACES,
                wire::encode_sequences(&slot.earlier).as_str(),
            );
        }
        let subject = format!(
            "{}{}{}.{}",
            self.inner.prefix,
            wire::BARRIER_KEYS,
            self.inner.client_id,
            slot.id
        );
        // On any failure below the slot is dropped, not given back: whether its barrier was
        // stored is unknown, so the next one could not say which messages it replaces.
        let reply = wire::request(
            &self.inner.client,
            self.inner.request_timeout,
            operation,
            subject,
            headers,
            Bytes::new(),
        )
        .await
        .map_err(|err| match err {
            Error::Ambiguous { message, .. } => Error::Unavailable {
                message: format!(
                    "{operation}: the read was not confirmed by the stream's quorum: {message}"
                ),
            },
            other => other,
        })?;
        let outcome = wire::parse_ack(&reply.payload, operation)?;
        if let Ok(ack) = &outcome {
            slot.earlier.push_front(ack.sequence);
            slot.earlier.truncate(wire::REPLACES_KEPT);
            slot.used = std::time::Instant::now();
        }
        self.give_back(slot);
        Ok(outcome.map(|_| ()))
    }

    fn take_slot(&self) -> BarrierSlot {
        let mut slots = self
            .inner
            .barrier_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while let Some(slot) = slots.idle.pop() {
            // Its last barrier may have expired (leaving a marker the next one would replace
            // unannounced): start a new slot rather than guess.
            if slot.used.elapsed() < BARRIER_TTL / 2 {
                return slot;
            }
        }
        slots.next_id += 1;
        BarrierSlot {
            id: slots.next_id,
            earlier: Default::default(),
            used: std::time::Instant::now(),
        }
    }

    fn give_back(&self, slot: BarrierSlot) {
        let mut slots = self
            .inner
            .barrier_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slots.idle.push(slot);
    }
}

/// The reserved key that records an applied write with an idempotency key: written in the
/// same atomic batch as the write, right after it, so the write's revision is the record's
/// minus one. It expires after the idempotency window.
fn idempotency_record(key: &Key, id: &str) -> Key {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(key.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Key::new_reserved(format!("_swarmstate.idempotency.{hex}")).expect("hex tokens are valid")
}

impl NatsStore {
    fn record_message(&self, record: &Key, at: u64) -> txn::Message {
        let mut headers = HeaderMap::new();
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
            at.to_string().as_str(),
        );
        headers.insert(
            wire::TTL,
            format!("{}s", crate::config::IDEMPOTENCY_WINDOW.as_secs()).as_str(),
        );
        txn::Message {
            subject: self.subject(record),
            headers,
            payload: Bytes::new(),
            op: txn::CHECK_ONLY,
        }
    }
}

fn revision(sequence: u64) -> Result<Revision> {
    Revision::new(sequence)
        .ok_or_else(|| Error::backend(std::io::Error::other("the server acknowledged sequence 0")))
}

#[async_trait]
impl StateStore for NatsStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: "nats",
            ttl_granularity: Duration::from_secs(1),
            max_value_size: self.inner.max_value_size,
            watch_buffer: self.inner.watch_buffer,
            durable: true,
            replays_overwritten: false,
        }
    }

    /// Linearizable by default: never older than a write acknowledged before the call began,
    /// at the cost of a leader read plus a replicated barrier write (see
    /// [`ReadConsistency`]). Errors: [`Error::Unavailable`] when the read cannot be answered
    /// or confirmed (no stream leader, no quorum, a partition, or a key that kept changing for
    /// the whole request timeout); retrying is safe. With [`ReadConsistency::Leader`], only
    /// the leader read.
    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        match self.inner.read_consistency {
            ReadConsistency::Linearizable => self.get_linearizable(key).await,
            ReadConsistency::Leader => Ok(self.last(key).await?.and_then(|last| last.live)),
        }
    }

    /// Every write names the message it replaces and is never sent over a value whose TTL is
    /// about to end (see `crate::expiry`); a refusal is reported only after a confirmed read
    /// (a leader that a partition deposed can refuse from old state), and its `actual`
    /// revision is the confirmed one.
    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        options.validate()?;
        validate_value(key, &value, self.inner.max_value_size)?;
        self.ensure_open()?;
        let operation = format!("put {key}");
        let mut attempts = wire::Attempts::new(self.inner.request_timeout);
        let record = options
            .idempotency_key
            .as_ref()
            .map(|id| idempotency_record(key, id));
        // The record's last sequence: a write with an idempotency key also creates its record.
        let mut record_at = 0;
        if let Some(record) = &record {
            match self.last(record).await? {
                Some(last) if last.live.is_some() => return revision(last.sequence - 1),
                Some(last) => record_at = last.sequence,
                None => {}
            }
        }
        // Every attempt carries it (see `crate::refused`); a write with a record has the
        // record to tell whether an earlier attempt applied.
        let id = record.is_none().then(|| self.write_id());
        // Set once an attempt was refused: it may have been applied anyway.
        let mut refused = None;
        // What the write replaces, as far as this client knows.
        let mut replaces = match (options.mode, self.seen(key)) {
            // A create lands only where there is no value, never on one about to expire; a
            // wrong guess costs one refusal.
            (PutMode::Create, Some(seen)) if seen.value().is_none() => seen,
            (PutMode::Create, _) => Seen::NONE,
            (PutMode::Update(wanted), Some(seen)) if seen.holds(wanted) => seen,
            (PutMode::Overwrite, Some(seen)) => seen,
            _ => self.read_seen(key).await?,
        };
        loop {
            if let PutMode::Update(wanted) = options.mode
                && !replaces.holds(wanted)
            {
                let last = self.confirmed_last(key, &operation).await?;
                if let Some(sequence) = self
                    .applied_anyway(key, refused, last.as_ref(), &operation)
                    .await?
                {
                    return revision(sequence);
                }
                let confirmed = Seen::of(last.as_ref());
                Condition::At(wanted).check(key, confirmed.value())?;
                replaces = confirmed;
            }
            if replaces.expiring(Instant::now()) {
                replaces = self.outlast(key, replaces, &attempts, &operation).await?;
                continue;
            }
            let mut headers = HeaderMap::new();
            headers.insert(
                wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
                replaces.sequence.to_string().as_str(),
            );
            if let Some(ttl) = options.ttl {
                headers.insert(wire::TTL, format!("{}s", wire::ttl_seconds(ttl)).as_str());
            }
            if let Some(id) = &id {
                headers.insert(wire::MSG_ID, id.as_str());
            }
            let sent = Instant::now();
            let outcome = match &record {
                None => {
                    self.publish(&operation, key, headers, value.clone())
                        .await?
                }
                Some(record) => {
                    let messages = [
                        txn::Message {
                            subject: self.subject(key),
                            headers,
                            payload: value.clone(),
                            op: 0,
                        },
                        self.record_message(record, record_at),
                    ];
                    txn::publish_batch(self, &operation, &messages)
                        .await?
                        .map(|last| last - 1)
                }
            };
            match outcome {
                Ok(sequence) => {
                    if replaces.acknowledged_late(Instant::now()) {
                        self.forget(key);
                        self.confirm_written(key, sequence, &mut attempts, &operation)
                            .await?;
                    }
                    self.remember(
                        key,
                        Seen {
                            sequence,
                            held: Held::Value {
                                deadline: options.ttl.map(|ttl| sent + ttl),
                            },
                        },
                    );
                    return revision(sequence);
                }
                Err(err) if err.is_conflict() => {
                    self.forget(key);
                    refused = id.as_deref();
                    if attempts.expired() {
                        return revision(
                            self.out_of_attempts(key, refused, &err, &operation).await?,
                        );
                    }
                    attempts.pause_if_in_flight(&err).await;
                }
                Err(err) => return Err(err.into_error(&operation)),
            }
            if let Some(record) = &record {
                match self.last(record).await? {
                    // An earlier attempt of this very request applied (its answer was lost).
                    Some(last) if last.live.is_some() => return revision(last.sequence - 1),
                    Some(last) => record_at = last.sequence,
                    None => record_at = 0,
                }
            }
            replaces = self.read_seen(key).await?;
            if options.mode == PutMode::Create && replaces.value().is_some() {
                let last = self.confirmed_last(key, &operation).await?;
                if let Some(sequence) = self
                    .applied_anyway(key, refused, last.as_ref(), &operation)
                    .await?
                {
                    return revision(sequence);
                }
                let confirmed = Seen::of(last.as_ref());
                Condition::Absent.check(key, confirmed.value())?;
                replaces = confirmed;
            }
        }
    }

    /// As [`put`](Self::put): the tombstone names the message it replaces, waits out a value
    /// about to expire, and a refusal or an absent key is reported from a confirmed read.
    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn delete(&self, key: &Key, expected: Option<Revision>) -> Result<Option<Revision>> {
        self.ensure_open()?;
        let operation = format!("delete {key}");
        let mut attempts = wire::Attempts::new(self.inner.request_timeout);
        let id = self.write_id();
        // Set once an attempt was refused: it may have been applied anyway.
        let mut refused = None;
        let mut replaces = match (expected, self.seen(key)) {
            (Some(wanted), Some(seen)) if seen.holds(wanted) => seen,
            _ => self.read_seen(key).await?,
        };
        loop {
            let fits = match expected {
                Some(wanted) => replaces.holds(wanted),
                None => replaces.value().is_some(),
            };
            if !fits {
                let last = self.confirmed_last(key, &operation).await?;
                if let Some(sequence) = self
                    .applied_anyway(key, refused, last.as_ref(), &operation)
                    .await?
                {
                    return revision(sequence).map(Some);
                }
                replaces = Seen::of(last.as_ref());
                Condition::expecting(expected).check(key, replaces.value())?;
                if replaces.value().is_none() {
                    // Only an unconditional delete gets here with nothing to delete.
                    return Ok(None);
                }
            }
            if replaces.expiring(Instant::now()) {
                replaces = self.outlast(key, replaces, &attempts, &operation).await?;
                continue;
            }
            let mut headers = HeaderMap::new();
            headers.insert(wire::KV_OPERATION, "DEL");
            headers.insert(
                wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
                replaces.sequence.to_string().as_str(),
            );
            headers.insert(wire::MSG_ID, id.as_str());
            match self.publish(&operation, key, headers, Bytes::new()).await? {
                Ok(sequence) => {
                    if replaces.acknowledged_late(Instant::now()) {
                        self.forget(key);
                        self.confirm_written(key, sequence, &mut attempts, &operation)
                            .await?;
                    }
                    self.remember(
                        key,
                        Seen {
                            sequence,
                            held: Held::Nothing,
                        },
                    );
                    return revision(sequence).map(Some);
                }
                Err(err) if err.is_conflict() => {
                    self.forget(key);
                    refused = Some(id.as_str());
                    if attempts.expired() {
                        return revision(
                            self.out_of_attempts(key, refused, &err, &operation).await?,
                        )
                        .map(Some);
                    }
                    attempts.pause_if_in_flight(&err).await;
                    replaces = self.read_seen(key).await?;
                }
                Err(err) => return Err(err.into_error(&operation)),
            }
        }
    }

    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream> {
        self.ensure_open()?;
        crate::watch::keys(self, pattern).await
    }

    async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
        self.ensure_open()?;
        crate::watch::watch(self, pattern, start).await
    }

    #[tracing::instrument(skip_all, fields(ops = ops.len()))]
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        validate_txn(&ops, self.inner.max_value_size)?;
        self.ensure_open()?;
        crate::txn::apply(self, &ops).await
    }

    async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.closing.send_replace(true);
        // Anything still buffered goes out before the connection closes.
        let _ = self.inner.client.flush().await;
        Ok(())
    }
}
