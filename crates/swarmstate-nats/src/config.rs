//! What a [`NatsStore`](crate::NatsStore) is opened with: the builder's settings, `nats://`
//! URLs, and the bucket settings the contract depends on, created or checked on connect.

use std::time::Duration;

use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::{self, stream};
use swarmstate_core::{Error, Result};

use crate::error::NatsError;

/// The default bucket name.
pub const DEFAULT_BUCKET: &str = "swarmstate";
/// How long an expiry or delete marker stays in the stream before the server removes it.
const MARKER_TTL: Duration = Duration::from_secs(3600);
/// How long the server remembers a message id for deduplication (idempotency keys).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(120);

/// How [`StateStore::get`](swarmstate_core::StateStore::get),
/// [`StateStore::keys`](swarmstate_core::StateStore::keys) and the snapshot of a
/// [`WatchStart::Snapshot`](swarmstate_core::WatchStart::Snapshot) watch on a [`NatsStore`] are
/// answered.
///
/// Writes, [`StateStore::txn`](swarmstate_core::StateStore::txn) and conditional writes are
/// the same in both modes: their conditions are checked by the stream leader when the write
/// commits, whatever a read returned before.
///
/// [`NatsStore`]: crate::NatsStore
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadConsistency {
    /// The default. A read never returns a value older than a write acknowledged before the
    /// read began, even through a stream leader that was deposed and does not know it yet; a
    /// key listing or a snapshot never misses such a write or delete.
    ///
    /// A read commits a read barrier after it begins: one small message to a reserved key of
    /// this client (`_swarmstate.barrier.*`), committed through the stream's Raft quorum, so
    /// after every write acknowledged before the read. It is answered from the store's view of
    /// the bucket (its one consumer, see [`NatsStore`](crate::NatsStore)) once the view has
    /// applied everything before the barrier. Every read waiting when a barrier is sent shares
    /// it. If the barrier cannot be committed (no quorum, a partition), the read fails with
    /// [`Error::Unavailable`] instead of answering. Until the view runs, or if it does not get
    /// there within the request timeout, a `get` is the stream leader's answer confirmed by a
    /// barrier conditioned on the key still being at the sequence that was read.
    ///
    /// A listing or a snapshot is answered from the view the same way. A listing the view
    /// cannot answer within the request timeout fails with [`Error::Unavailable`], and so does
    /// the watch call of such a snapshot. A snapshot is its entries, then `CaughtUp`, then
    /// live changes.
    #[default]
    Linearizable,
    /// One read from the node that believes it is the stream leader, nothing more: the cost of
    /// the raw JetStream call. Reads write nothing.
    ///
    /// What it gives up: a leader cut off from the rest of its cluster keeps answering reads
    /// from its own state until it notices that it lost its quorum (about the Raft election
    /// timeout, a few seconds), while the majority may already have elected a new leader and
    /// acknowledged newer writes. Reads through it in that window can be stale. Without
    /// partitions or leader changes it answers like `Linearizable`.
    ///
    /// Key listings and snapshots are the store's view of the bucket as it is, which the replica
    /// serving its consumer feeds, leader or not: on a replicated bucket they can miss writes
    /// acknowledged just before, partitions or not.
    Leader,
}

/// Builds a [`NatsStore`]: `NatsStore::builder("nats://127.0.0.1:4222").bucket("swarm")
/// .replicas(3).connect().await?`.
///
/// [`NatsStore`]: crate::NatsStore
#[derive(Debug, Clone)]
pub struct NatsStoreBuilder {
    pub(crate) urls: String,
    pub(crate) bucket: String,
    pub(crate) replicas: usize,
    pub(crate) max_value_size: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) watch_buffer: usize,
    pub(crate) read_consistency: ReadConsistency,
}

impl NatsStoreBuilder {
    pub(crate) fn new(urls: impl Into<String>) -> NatsStoreBuilder {
        NatsStoreBuilder {
            urls: urls.into(),
            bucket: DEFAULT_BUCKET.to_owned(),
            replicas: 1,
            max_value_size: swarmstate_core::DEFAULT_MAX_VALUE_SIZE,
            request_timeout: Duration::from_secs(5),
            watch_buffer: swarmstate_core::DEFAULT_WATCH_BUFFER,
            read_consistency: ReadConsistency::default(),
        }
    }

    /// The bucket (created if missing). Letters, digits, `-` and `_` only.
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// Replicas for a new bucket: 1, or 3 for a cluster (durability needs 3).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// The largest value accepted, in bytes (default 1 MiB; the server's `max_payload` must
    /// allow it).
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// How long to wait for the server's answer. A request that times out after it was sent
    /// is [`Error::Ambiguous`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Events a watcher may have buffered before it is lagged (default 64).
    pub fn watch_buffer(mut self, events: usize) -> Self {
        self.watch_buffer = events.max(1);
        self
    }

    /// How `get` is answered (default [`ReadConsistency::Linearizable`]; see there for what
    /// [`ReadConsistency::Leader`] gives up). [`NatsStore::get_stale`] is the faster read any
    /// replica may answer, in either mode.
    ///
    /// [`NatsStore::get_stale`]: crate::NatsStore::get_stale
    pub fn read_consistency(mut self, consistency: ReadConsistency) -> Self {
        self.read_consistency = consistency;
        self
    }
}

/// Connects to the servers and opens the bucket's stream, creating it or checking its
/// settings: what [`NatsStoreBuilder::connect`] does before it builds the store.
pub(crate) async fn open(
    builder: &NatsStoreBuilder,
) -> Result<(async_nats::Client, jetstream::Context, stream::Stream)> {
    check_bucket_name(&builder.bucket)?;
    if !(1..=5).contains(&builder.replicas) {
        return Err(Error::InvalidInput {
            message: format!("replicas must be 1 to 5, got {}", builder.replicas),
        });
    }
    let servers = builder
        .urls
        .split(',')
        .map(|url| url.trim().parse::<async_nats::ServerAddr>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| Error::InvalidInput {
            message: format!("bad server address in {:?}: {err}", builder.urls),
        })?;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(builder.request_timeout))
        .connect(servers)
        .await
        .map_err(|err| NatsError::NotApplied {
            message: format!("cannot connect to {}: {err}", builder.urls),
        })?;
    check_max_payload(&client, builder.max_value_size)?;
    let context = jetstream::new(client.clone());
    let stream = open_stream(&context, builder).await?;
    Ok((client, context, stream))
}

/// Parses `nats://host:port/bucket` (bucket optional, default [`DEFAULT_BUCKET`]); several
/// servers may be given comma-separated before the path: `nats://a:4222,b:4222/swarm`.
pub(crate) fn parse_url(url: &str) -> Result<NatsStoreBuilder> {
    let rest = url
        .strip_prefix("nats://")
        .ok_or_else(|| Error::InvalidInput {
            message: format!("a NATS store URL starts with nats://, got {url:?}"),
        })?;
    let (servers, bucket) = match rest.split_once('/') {
        Some((servers, bucket)) if !bucket.is_empty() => (servers, Some(bucket)),
        Some((servers, _)) => (servers, None),
        None => (rest, None),
    };
    if servers.is_empty() {
        return Err(Error::InvalidInput {
            message: format!("no server in {url:?}"),
        });
    }
    let urls = servers
        .split(',')
        .map(|server| format!("nats://{server}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut builder = NatsStoreBuilder::new(urls);
    if let Some(bucket) = bucket {
        builder = builder.bucket(bucket);
    }
    Ok(builder)
}

/// Room a write needs beside its value: the subject, and headers such as the expected
/// sequence, the TTL and a batch's id.
const MESSAGE_OVERHEAD: usize = 4 * 1024;

/// The server's `max_payload` counts headers, and every write carries some: a value at the
/// largest size the store accepts must still fit.
fn check_max_payload(client: &async_nats::Client, max_value_size: usize) -> Result<()> {
    let max_payload = client.server_info().max_payload;
    if max_payload != 0 && max_payload < max_value_size + MESSAGE_OVERHEAD {
        return Err(Error::InvalidInput {
            message: format!(
                "the server's max_payload is {max_payload} bytes, too small for values of up to                  {max_value_size} bytes plus {MESSAGE_OVERHEAD} bytes of headers: set                  `max_payload: 2MB` in the server configuration, or a smaller                  NatsStoreBuilder::max_value_size"
            ),
        });
    }
    Ok(())
}

fn check_bucket_name(bucket: &str) -> Result<()> {
    let valid = !bucket.is_empty()
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            message: format!("bucket name {bucket:?}: use letters, digits, '-' and '_' only"),
        })
    }
}

pub(crate) fn stream_name(bucket: &str) -> String {
    format!("KV_{bucket}")
}

fn wanted_config(builder: &NatsStoreBuilder) -> stream::Config {
    let bucket = &builder.bucket;
    stream::Config {
        name: stream_name(bucket),
        subjects: vec![format!("$KV.{bucket}.>")],
        // One message per key: with more, an expired value would let the previous one reappear.
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        max_message_size: i32::try_from(builder.max_value_size + 64 * 1024).unwrap_or(i32::MAX),
        num_replicas: builder.replicas,
        duplicate_window: IDEMPOTENCY_WINDOW,
        allow_message_ttl: true,
        subject_delete_marker_ttl: Some(MARKER_TTL),
        allow_atomic_publish: true,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

async fn open_stream(
    context: &jetstream::Context,
    builder: &NatsStoreBuilder,
) -> Result<stream::Stream> {
    let wanted = wanted_config(builder);
    let existing = match context.get_stream(&wanted.name).await {
        Ok(stream) => Some(stream),
        Err(err) => match err.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                None
            }
            _ => {
                return Err(NatsError::NotApplied {
                    message: format!("cannot look up bucket {}: {err}", builder.bucket),
                }
                .into());
            }
        },
    };
    match existing {
        Some(mut stream) => {
            let config = stream
                .info()
                .await
                .map_err(|err| NatsError::NotApplied {
                    message: format!("cannot read bucket {}: {err}", builder.bucket),
                })?
                .config
                .clone();
            check_existing(&config, &builder.bucket)?;
            Ok(stream)
        }
        None => {
            // A loaded cluster can take longer than a request to create a replicated stream;
            // asking again finds the stream if the first request made it.
            let deadline = tokio::time::Instant::now() + builder.request_timeout * 4;
            let stream = loop {
                match context.get_or_create_stream(wanted.clone()).await {
                    Ok(stream) => break stream,
                    Err(err)
                        if matches!(
                            err.kind(),
                            CreateStreamErrorKind::TimedOut
                                | CreateStreamErrorKind::JetStreamUnavailable
                        ) && tokio::time::Instant::now() < deadline =>
                    {
                        tracing::debug!(%err, bucket = %builder.bucket, "creating the bucket again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => {
                        return Err(NatsError::NotApplied {
                            message: format!("cannot create bucket {}: {err}", builder.bucket),
                        }
                        .into());
                    }
                }
            };
            wait_for_leader(stream, builder).await
        }
    }
}

/// A replicated stream answers only once its replicas have elected a leader; without this
/// wait the first writes to a new R3 bucket can find no responders.
async fn wait_for_leader(
    mut stream: stream::Stream,
    builder: &NatsStoreBuilder,
) -> Result<stream::Stream> {
    if builder.replicas == 1 {
        return Ok(stream);
    }
    let deadline = tokio::time::Instant::now() + builder.request_timeout * 4;
    loop {
        let has_leader = match stream.info().await {
            Ok(info) => info.cluster.as_ref().is_some_and(|c| c.leader.is_some()),
            Err(_) => false,
        };
        if has_leader {
            return Ok(stream);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NatsError::NotApplied {
                message: format!("bucket {} has no stream leader yet", builder.bucket),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Refuses an existing bucket whose settings would break the contract.
fn check_existing(config: &stream::Config, bucket: &str) -> Result<()> {
    let refuse = |setting: &str, why: &str| {
        Err(Error::InvalidInput {
            message: format!("bucket {bucket} cannot be used: {setting} ({why})"),
        })
    };
    if config.max_messages_per_subject != 1 {
        return refuse(
            "history must be 1",
            "with more, an expired value lets the previous one reappear",
        );
    }
    if !config.allow_message_ttl {
        return refuse("per-message TTL must be enabled", "TTLs would be ignored");
    }
    if config.subject_delete_marker_ttl.is_none() {
        return refuse(
            "limit markers must be enabled",
            "expiries would be invisible to watchers",
        );
    }
    if !config.allow_atomic_publish {
        return refuse("atomic batches must be allowed", "txn needs them");
    }
    if config.duplicate_window < IDEMPOTENCY_WINDOW {
        return refuse(
            "the duplicate window must be at least 2 minutes",
            "idempotency keys are kept that long",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_servers_and_bucket() {
        let builder = parse_url("nats://127.0.0.1:4222/swarm").unwrap();
        assert_eq!(builder.urls, "nats://127.0.0.1:4222");
        assert_eq!(builder.bucket, "swarm");
        let builder = parse_url("nats://a:1,b:2").unwrap();
        assert_eq!(builder.urls, "nats://a:1,nats://b:2");
        assert_eq!(builder.bucket, DEFAULT_BUCKET);
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("nats:///b").is_err());
    }

    #[test]
    fn bucket_names_are_checked() {
        assert!(check_bucket_name("swarm_1-a").is_ok());
        for bad in ["", "a.b", "a b", "a*"] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn existing_bucket_with_history_is_refused_naming_the_setting() {
        let mut config = wanted_config(&NatsStoreBuilder::new("nats://x"));
        assert!(check_existing(&config, "b").is_ok());
        config.max_messages_per_subject = 5;
        let err = check_existing(&config, "b").unwrap_err();
        assert!(err.to_string().contains("history must be 1"), "{err}");
    }
}
