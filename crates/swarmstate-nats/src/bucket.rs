//! [`Bucket`]: the connection to one JetStream stream laid out as a KV bucket
//! (`$KV.<bucket>.<key>`, revisions = stream sequences). Requests to it, leader reads of a
//! key's last message, and commit barriers, which turn a leader read into a confirmed one:
//! every refusal this crate reports is decided on a confirmed read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::future::BoxFuture;
use swarmstate_core::Key;
use tokio::sync::watch as signal;

use crate::attempts::Attempts;
use crate::config::{NatsStoreBuilder, ReadConsistency};
use crate::error::NatsError;
use crate::seen::{Seen, SeenCache};
use crate::slots::{BARRIER_TTL, BarrierSlots};
use crate::wire::{self, Last};

/// One client's connection to one bucket, and what the client keeps about it. A store and its
/// clones share one.
#[derive(Debug)]
pub(crate) struct Bucket {
    pub(crate) client: async_nats::Client,
    pub(crate) context: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) name: String,
    // Invariant: `$KV.<bucket>.`, the subject prefix of every key.
    pub(crate) prefix: String,
    pub(crate) max_value_size: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) watch_buffer: usize,
    pub(crate) read_consistency: ReadConsistency,
    // Invariant: unique per store (a NUID), a valid key token; names this client's barrier keys.
    pub(crate) client_id: String,
    barrier_slots: BarrierSlots,
    // Numbers this client's writes: `<client_id>.<n>` is a write's `Nats-Msg-Id`.
    pub(crate) writes: AtomicU64,
    closed: AtomicBool,
    // The last message of keys this client wrote or read, so that a write knows what it
    // replaces without reading it first (see `crate::expiry`).
    pub(crate) seen: SeenCache,
    // Flips to true on close; every watch task listens to it.
    pub(crate) closing: signal::Sender<bool>,
    // Another source of what this client knows of each key: the hub's view (`crate::hub`),
    // once a hub exists for this connection.
    view: OnceLock<Arc<dyn View>>,
}

/// What this client's view of the bucket holds of a key, consulted for hints (see
/// [`Bucket::hint`]).
pub(crate) trait View: Send + Sync + std::fmt::Debug {
    /// The key's last message as the view has it; `None` when the view cannot say now (not
    /// started, or not trustworthy: see `crate::hub`).
    fn seen(&self, key: &Key) -> Option<Seen>;

    /// A confirmed read of the key through the view, as [`Bucket::confirmed_last`] promises
    /// it: `None` when the view cannot serve one now.
    fn confirmed<'a>(
        &'a self,
        key: &'a Key,
        operation: &'a str,
    ) -> Option<BoxFuture<'a, Result<Option<Last>, NatsError>>>;

    /// Waits, for at most `limit`, until the view has looked at `sequence`: `None` when there
    /// is nothing to wait for (no watchers, the view is there already, or it cannot say now).
    fn looked_at<'a>(&'a self, sequence: u64, limit: Duration) -> Option<BoxFuture<'a, ()>>;
}

impl Bucket {
    pub(crate) fn new(
        client: async_nats::Client,
        context: jetstream::Context,
        stream: stream::Stream,
        builder: NatsStoreBuilder,
    ) -> Bucket {
        let (closing, _) = signal::channel(false);
        let inbox = client.new_inbox();
        let client_id = inbox.rsplit('.').next().unwrap_or(&inbox).to_owned();
        Bucket {
            client,
            context,
            stream,
            prefix: format!("$KV.{}.", builder.bucket),
            name: builder.bucket,
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
            view: OnceLock::new(),
        }
    }

    /// Adds `view` as a source of hints; the first one set stays.
    pub(crate) fn set_view(&self, view: Arc<dyn View>) {
        let _ = self.view.set(view);
    }

    /// What this client knows of `key`'s last message without asking the server: the newer of
    /// what it last wrote or read (the seen cache) and what its view of the bucket holds. A
    /// hint: a write naming a stale one is refused and decided again from a fresh read.
    pub(crate) fn hint(&self, key: &Key) -> Option<Seen> {
        let cached = self.seen.get(key);
        let viewed = self.view.get().and_then(|view| view.seen(key));
        match (cached, viewed) {
            (Some(cached), Some(viewed)) if viewed.sequence > cached.sequence => Some(viewed),
            (Some(cached), _) => Some(cached),
            (None, viewed) => viewed,
        }
    }

    /// Before a write replaces the message at `sequence`: lets this client's watchers receive
    /// that message first. The bucket keeps one message per key, so a message replaced before
    /// the feed delivered it is gone, and would end every watch there with `Lagged`; this
    /// makes sure a client's own quick overwrites (a put, then a delete) never do. It waits
    /// only while the feed has watchers and is behind, for at most the request timeout, after
    /// which the write goes ahead (and a watcher that then misses the message lags, as one
    /// does when another client overwrites it).
    pub(crate) async fn before_replacing(&self, sequence: u64) {
        if let Some(wait) = self
            .view
            .get()
            .and_then(|view| view.looked_at(sequence, self.request_timeout))
        {
            wait.await;
        }
    }

    pub(crate) fn subject(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key)
    }

    pub(crate) fn ensure_open(&self) -> Result<(), NatsError> {
        if self.closed.load(Ordering::Acquire) {
            Err(NatsError::Closed)
        } else {
            Ok(())
        }
    }

    /// Refuses every later operation, ends every watch, and sends what is still buffered.
    /// Closing twice is closing once.
    pub(crate) async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.closing.send_replace(true);
        // Anything still buffered goes out before the connection closes.
        let _ = self.client.flush().await;
    }

    /// The last message on the key's subject, read from the stream leader.
    pub(crate) async fn last(&self, key: &Key) -> Result<Option<Last>, NatsError> {
        self.ensure_open()?;
        // Fail at once without a connection, as a write does, rather than wait for a time-out.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(NatsError::NotApplied {
                message: format!("get {key}: not connected to NATS"),
            });
        }
        let mut attempts = Attempts::new(self.request_timeout);
        loop {
            match self
                .stream
                .get_last_raw_message_by_subject(&self.subject(key))
                .await
            {
                Ok(message) => return Ok(Some(Last::of(key, &message))),
                Err(err) => match err.kind() {
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                    // A replicated stream between leaders can be unknown to the server that
                    // answers for a moment; a read is safe to ask again.
                    jetstream::stream::LastRawMessageErrorKind::JetStream(inner)
                        if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                            && !attempts.expired() =>
                    {
                        attempts.pause().await;
                    }
                    _ => {
                        return Err(NatsError::NotApplied {
                            message: format!("get {key}: {err}"),
                        });
                    }
                },
            }
        }
    }

    /// The key's last message as the stream leader has it now (not confirmed), remembered.
    pub(crate) async fn read_seen(&self, key: &Key) -> Result<Seen, NatsError> {
        let seen = Seen::of(self.last(key).await?.as_ref());
        self.seen.remember(key, seen);
        Ok(seen)
    }

    /// Publishes one message to the key's subject; returns its sequence. Errors as
    /// [`wire::request`] and [`wire::parse_ack`]: a refusal is [`NatsError::Api`].
    pub(crate) async fn publish(
        &self,
        operation: &str,
        key: &Key,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<u64, NatsError> {
        self.ensure_open()?;
        let reply = wire::request(
            &self.client,
            self.request_timeout,
            operation,
            self.subject(key),
            headers,
            payload,
        )
        .await?;
        Ok(wire::parse_ack(&reply.payload, operation)?.sequence)
    }

    /// The key's last message, confirmed by a commit barrier, so it may be reported as the
    /// key's state at a moment within the call (a linearizable `get`, a refusal's `actual`
    /// revision, an absent key a delete finds). It is remembered for the next write.
    ///
    /// Through the client's view of the bucket when it has one running (a read barrier shared
    /// with the reads waiting then, see `crate::hub`); else, or if the view does not get there
    /// in time, a leader read confirmed by a barrier expecting the key as read.
    pub(crate) async fn confirmed_last(
        &self,
        key: &Key,
        operation: &str,
    ) -> Result<Option<Last>, NatsError> {
        if let Some(read) = self
            .view
            .get()
            .and_then(|view| view.confirmed(key, operation))
        {
            match read.await {
                Ok(last) => {
                    self.seen.remember(key, Seen::of(last.as_ref()));
                    return Ok(last);
                }
                Err(NatsError::Closed) => return Err(NatsError::Closed),
                Err(err) => {
                    tracing::debug!(%err, "the view is behind; reading from the stream leader")
                }
            }
        }
        let mut attempts = Attempts::new(self.request_timeout);
        loop {
            let last = self.last(key).await?;
            let at = last.as_ref().map_or(0, |l| l.sequence);
            match self.barrier(key, at, operation).await {
                Ok(()) => {
                    self.seen.remember(key, Seen::of(last.as_ref()));
                    return Ok(last);
                }
                // The key moved since the read: read again.
                Err(NatsError::Api { error, .. }) if error.is_conflict() => {
                    attempts
                        .after(&error, || {
                            format!(
                                "{operation}: the read could not be confirmed within {:?}",
                                self.request_timeout
                            )
                        })
                        .await?
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Publishes a commit barrier expecting `key` at sequence `at` (0: no message).
    /// [`NatsError::Api`] when the server refused it (nothing was stored); a barrier without
    /// an answer is [`NatsError::NotApplied`]: whether or not it was stored, it confirmed
    /// nothing, and a barrier changes no key.
    ///
    /// The barrier is a message to a reserved subject of this client carrying
    /// `Nats-Expected-Last-Subject-Sequence(-Subject)`: the key must still be at the sequence
    /// that was read. The check is made by the stream leader when it proposes the message to
    /// the stream's Raft group, against everything it has applied, and a proposal only commits
    /// in the term it was made in. So an acknowledged barrier proves that, at a moment between
    /// the read and the acknowledgement, a leader holding the quorum had the key at sequence
    /// `at`. A deposed leader cannot commit the barrier, so its stale answer is never
    /// confirmed.
    pub(crate) async fn barrier(
        &self,
        key: &Key,
        at: u64,
        operation: &str,
    ) -> Result<(), NatsError> {
        self.publish_barrier(Some((key, at)), operation).await?;
        Ok(())
    }

    /// Publishes a read barrier that expects nothing, and returns its sequence: a mark in the
    /// stream that a read through a consumer waits for (see `crate::hub`).
    ///
    /// Its acknowledgement says it was committed through the stream's quorum at that sequence
    /// (a deposed leader cannot commit it, and the stream leader acknowledges a message only
    /// once it is committed). Every write acknowledged before
    /// this call was committed before the barrier was proposed, so it lies below that
    /// sequence; a server that has delivered the barrier has applied all of them. Errors as
    /// [`barrier`](Self::barrier)'s.
    pub(crate) async fn read_barrier(&self, operation: &str) -> Result<u64, NatsError> {
        self.publish_barrier(None, operation).await
    }

    /// Publishes a barrier on one of this client's slots, expecting `key` at a sequence if
    /// given; returns its sequence.
    async fn publish_barrier(
        &self,
        expected: Option<(&Key, u64)>,
        operation: &str,
    ) -> Result<u64, NatsError> {
        self.ensure_open()?;
        let mut slot = self.barrier_slots.take();
        let mut headers = HeaderMap::new();
        if let Some((key, at)) = expected {
            headers.insert(
                wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
                at.to_string().as_str(),
            );
            headers.insert(
                wire::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                self.subject(key).as_str(),
            );
        }
        headers.insert(wire::TTL, format!("{}s", BARRIER_TTL.as_secs()).as_str());
        if !slot.earlier.is_empty() {
            headers.insert(
                wire::REPLACES,
                wire::encode_sequences(&slot.earlier).as_str(),
            );
        }
        let subject = format!(
            "{}{}{}.{}",
            self.prefix,
            wire::BARRIER_KEYS,
            self.client_id,
            slot.id
        );
        // On any failure below the slot is dropped, not given back: whether its barrier was
        // stored is unknown, so the next one could not say which messages it replaces.
        let reply = wire::request(
            &self.client,
            self.request_timeout,
            operation,
            subject,
            headers,
            Bytes::new(),
        )
        .await
        .map_err(|err| match err {
            NatsError::Unknown { message, .. } => NatsError::NotApplied {
                message: format!(
                    "{operation}: the read was not confirmed by the stream's quorum: {message}"
                ),
            },
            other => other,
        })?;
        match wire::parse_ack(&reply.payload, operation) {
            Ok(ack) => {
                slot.acknowledged(ack.sequence);
                self.barrier_slots.give_back(slot);
                Ok(ack.sequence)
            }
            // Refused: nothing was stored, so the slot's last barrier is still the newest.
            Err(refused @ NatsError::Api { .. }) => {
                self.barrier_slots.give_back(slot);
                Err(refused)
            }
            Err(unreadable) => Err(unreadable),
        }
    }
}
