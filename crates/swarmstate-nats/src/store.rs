//! [`NatsStore`]: the [`StateStore`] contract on one JetStream KV bucket, and the builder's
//! `connect` that opens one. Each operation is delegated to the layer that implements it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use swarmstate_core::backend::{validate_txn, validate_value};
use swarmstate_core::{
    Capabilities, Entry, Key, KeyStream, Pattern, PutOptions, Result, Revision, StateStore, TxnOp,
    TxnResult, WatchStart, WatchStream,
};

use crate::bucket::Bucket;
use crate::config::{self, NatsStoreBuilder, ReadConsistency, parse_url};
use crate::error::NatsError;
use crate::hub::Hub;
use crate::wire;

/// A store on a NATS JetStream bucket. Clones share one connection.
///
/// Durable as the server is configured: run the servers with `jetstream { sync_interval:
/// always }` and the bucket with 3 replicas for writes that survive a crash.
///
/// One consumer serves all of a store's watches, listings and reads (with its clones): it
/// keeps a view of every key's last message in the process, started on the first read or
/// watch, and hands each change to the watches that select it, so a write reaches the process
/// once however many watches it has.
///
/// Reads ([`get`](StateStore::get)), key listings and snapshots are linearizable by default:
/// answered from that view once it has applied a read barrier committed after the call began,
/// one barrier shared by every read waiting for one (see [`ReadConsistency`]).
/// [`NatsStore::get_stale`] is the opt-in fast read any replica may answer.
#[derive(Debug, Clone)]
pub struct NatsStore {
    pub(crate) bucket: Arc<Bucket>,
    pub(crate) hub: Arc<Hub>,
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
        &self.bucket.name
    }

    /// A read that any replica may answer (JetStream direct get): faster, but it can return a
    /// value older than a write already acknowledged. Use [`StateStore::get`] unless stale
    /// data is acceptable.
    pub async fn get_stale(&self, key: &Key) -> Result<Option<Entry>> {
        self.bucket.ensure_open()?;
        match self
            .bucket
            .stream
            .direct_get_last_for_subject(self.bucket.subject(key))
            .await
        {
            Ok(message) => Ok(wire::live_entry(
                key,
                message.sequence,
                Some(&message.headers),
                &message.payload,
                message.time.unix_timestamp_nanos(),
            )),
            Err(err)
                if err.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(err) => Err(NatsError::NotApplied {
                message: format!("stale get {key}: {err}"),
            }
            .into()),
        }
    }

    /// A linearizable read ([`Bucket::confirmed_last`]): from this client's view of the
    /// bucket once it has applied a read barrier sent after the call began (the barrier lies
    /// after every write acknowledged before the call, and the view is the state at a moment
    /// between the call's start and now; one barrier serves every read waiting when it is
    /// sent), or, until the view runs or when it is behind, the stream leader's answer
    /// confirmed by a commit barrier on the key.
    async fn get_linearizable(&self, key: &Key) -> Result<Option<Entry>> {
        self.hub.start();
        let last = self
            .bucket
            .confirmed_last(key, &format!("get {key}"))
            .await?;
        Ok(last.and_then(|last| last.live_now()))
    }

    /// How many messages this store's connection has received, in all: a measure of what its
    /// watches and reads cost the servers and the network.
    pub fn messages_received(&self) -> u64 {
        self.bucket
            .client
            .statistics()
            .in_messages
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl NatsStoreBuilder {
    /// Connects, creates or checks the bucket, and returns the store.
    ///
    /// Errors: [`Error::InvalidInput`] for a bad bucket name or replica count, or for an
    /// existing bucket whose settings would break the contract (the message names the
    /// setting); [`Error::Unavailable`] when no server answers.
    ///
    /// [`Error::InvalidInput`]: swarmstate_core::Error::InvalidInput
    /// [`Error::Unavailable`]: swarmstate_core::Error::Unavailable
    pub async fn connect(self) -> Result<NatsStore> {
        let (client, context, stream) = config::open(&self).await?;
        let bucket = Arc::new(Bucket::new(client, context, stream, self));
        Ok(NatsStore {
            hub: Arc::new(Hub::new(&bucket)),
            bucket,
        })
    }
}

#[async_trait]
impl StateStore for NatsStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: "nats",
            ttl_granularity: Duration::from_secs(1),
            max_value_size: self.bucket.max_value_size,
            watch_buffer: self.bucket.watch_buffer,
            durable: true,
            replays_overwritten: false,
        }
    }

    /// Linearizable by default: never older than a write acknowledged before the call began,
    /// at the cost of a share of one replicated barrier write (see [`ReadConsistency`]). Errors: [`Error::Unavailable`] when the read cannot be answered
    /// or confirmed (no stream leader, no quorum, a partition, or a key that kept changing for
    /// the whole request timeout); retrying is safe. With [`ReadConsistency::Leader`], only
    /// the leader read.
    ///
    /// [`Error::Unavailable`]: swarmstate_core::Error::Unavailable
    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        match self.bucket.read_consistency {
            ReadConsistency::Linearizable => self.get_linearizable(key).await,
            ReadConsistency::Leader => Ok(self.bucket.last(key).await?.and_then(|last| last.live)),
        }
    }

    /// Every write names the message it replaces and is never sent over a value whose TTL is
    /// about to end (see `crate::expiry`); a refusal is reported only after a confirmed read
    /// (a leader that a partition deposed can refuse from old state), and its `actual`
    /// revision is the confirmed one.
    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        options.validate()?;
        validate_value(key, &value, self.bucket.max_value_size)?;
        crate::write::put(&self.bucket, key, value, options).await
    }

    /// As [`put`](Self::put): the tombstone names the message it replaces, waits out a value
    /// about to expire, and a refusal or an absent key is reported from a confirmed read.
    #[tracing::instrument(skip_all, fields(key = %key))]
    async fn delete(&self, key: &Key, expected: Option<Revision>) -> Result<Option<Revision>> {
        crate::write::delete(&self.bucket, key, expected).await
    }

    /// Linearizable by default: the listing shows every write and delete acknowledged before
    /// the call began, at the cost of a share of one replicated barrier write (see
    /// [`ReadConsistency`]). Errors: [`Error::Unavailable`] when the barrier cannot be
    /// committed, or when the store's view of the bucket does not reach it within the request
    /// timeout; retrying is safe.
    ///
    /// [`Error::Unavailable`]: swarmstate_core::Error::Unavailable
    #[tracing::instrument(skip_all, fields(pattern = %pattern))]
    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream> {
        self.bucket.ensure_open()?;
        crate::watch::keys(&self.bucket, &self.hub, pattern).await
    }

    /// A [`WatchStart::Snapshot`] is linearizable like [`keys`](Self::keys), and fails the
    /// same way. A watch from now or a snapshot is a registration in the store's one change
    /// feed; a watch from a revision the feed has already handed out gets a consumer of its
    /// own (`Compacted` if a change since that revision is gone; the read barriers replaced
    /// since are not changes). If the feed misses a
    /// message, every watch it serves ends with `Lagged` there.
    async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
        self.bucket.ensure_open()?;
        crate::watch::watch(&self.bucket, &self.hub, pattern, start).await
    }

    #[tracing::instrument(skip_all, fields(ops = ops.len()))]
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        validate_txn(&ops, self.bucket.max_value_size)?;
        self.bucket.ensure_open()?;
        crate::txn::apply(&self.bucket, &ops).await
    }

    async fn close(&self) -> Result<()> {
        self.bucket.close().await;
        Ok(())
    }
}
