//! The fixtures themselves: real `nats-server` processes start, serve JetStream
//! key-value buckets, keep acknowledged writes across a SIGKILL, and a 3-node cluster keeps
//! accepting writes after its stream leader dies.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self, kv,
    stream::{LastRawMessageErrorKind, Stream},
};
use swarmstate_nats_local::{NatsCluster, NatsServer, require_server};

/// How long a cluster may take to elect a new stream leader and accept writes again: 4.5-7.5 s
/// in runs here (the first write times out, then writes find no stream until the two survivors
/// elect a leader), so 10 s would be flaky on a loaded 2-core machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(20);

async fn bucket(js: &jetstream::Context, name: &str, replicas: usize) -> kv::Store {
    js.create_key_value(kv::Config {
        bucket: name.to_string(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|err| panic!("creating bucket {name} (R{replicas}): {err}"))
}

async fn value(store: &kv::Store, key: &str) -> Option<Vec<u8>> {
    store
        .get(key)
        .await
        .unwrap_or_else(|err| panic!("getting {key}: {err}"))
        .map(|bytes| bytes.to_vec())
}

/// Reads `key` of `bucket` from the stream leader. `kv::Store::get` uses direct gets, which any
/// replica may answer, including one that has not caught up yet (a node just restarted after a
/// kill answered `None` for a key acknowledged a moment before): not what a test asserting
/// on a cluster's contents wants.
async fn leader_value(bucket_stream: &Stream, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let subject = format!("$KV.{bucket}.{key}");
    match bucket_stream
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(message) => Some(message.payload.to_vec()),
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => None,
        Err(err) => panic!("getting {key} from the leader of KV_{bucket}: {err}"),
    }
}

#[tokio::test]
async fn single_node_serves_key_value_puts_and_gets() {
    let Some(_) = require_server() else { return };
    let server = NatsServer::start().await;
    assert!(
        server.url().starts_with("nats://127.0.0.1:"),
        "{}",
        server.url()
    );
    assert!(server.pid().is_some());

    let js = jetstream::new(server.connect().await);
    let store = bucket(&js, "fixture", 1).await;
    let revision = store.put("config.timeout", "30s".into()).await.unwrap();
    assert!(revision > 0);
    assert_eq!(
        value(&store, "config.timeout").await.as_deref(),
        Some(&b"30s"[..])
    );
    assert_eq!(value(&store, "config.absent").await, None);
}

#[tokio::test]
async fn single_node_keeps_acknowledged_writes_across_kill_and_restart() {
    let Some(_) = require_server() else { return };
    let mut server = NatsServer::start().await;
    let url = server.url();
    let first_pid = server.pid().unwrap();
    {
        let js = jetstream::new(server.connect().await);
        let store = bucket(&js, "durable", 1).await;
        store.put("claims.item-1", "agent-7".into()).await.unwrap();
    }

    server.kill();
    assert_eq!(server.pid(), None);
    assert!(server.store_dir().is_dir(), "the store survives a kill");
    server.restart().await;
    assert_eq!(server.url(), url, "a restart keeps the port");
    assert_ne!(server.pid(), Some(first_pid));

    let js = jetstream::new(server.connect().await);
    let store = js.get_key_value("durable").await.unwrap();
    assert_eq!(
        value(&store, "claims.item-1").await.as_deref(),
        Some(&b"agent-7"[..]),
        "an acknowledged write (sync_interval: always) survives SIGKILL; log:\n{}",
        server.log()
    );
}

#[tokio::test]
async fn paused_node_answers_nothing_until_resumed() {
    let Some(_) = require_server() else { return };
    let server = NatsServer::start().await;
    let js = jetstream::new(server.connect().await);
    let store = bucket(&js, "paused", 1).await;

    server.pause();
    let stalled = tokio::time::timeout(Duration::from_millis(500), store.put("k", "v".into()));
    assert!(
        stalled.await.is_err(),
        "a paused server must not acknowledge"
    );
    server.resume();

    let revision = tokio::time::timeout(Duration::from_secs(10), store.put("k", "v2".into()))
        .await
        .expect("a resumed server answers")
        .unwrap();
    assert!(revision > 0);
}

#[tokio::test]
async fn cluster_forms_and_serves_a_replicated_bucket() {
    let Some(_) = require_server() else { return };
    let cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.urls().len(), 3);
    assert_eq!(cluster.connect_url(), cluster.urls().join(","));
    for (i, url) in cluster.urls().iter().enumerate() {
        assert_eq!(cluster.node(i).url(), *url);
        assert_eq!(cluster.node(i).name(), format!("n{i}"));
    }

    let js = jetstream::new(cluster.connect().await);
    let store = bucket(&js, "replicated", 3).await;
    let stream = js.get_stream("KV_replicated").await.unwrap();
    assert_eq!(stream.cached_info().config.num_replicas, 3);
    store.put("leader.term", "1".into()).await.unwrap();
    assert_eq!(
        leader_value(&stream, "replicated", "leader.term")
            .await
            .as_deref(),
        Some(&b"1"[..])
    );
    let leader = cluster.stream_leader("KV_replicated").await;
    assert!(leader.is_some_and(|i| i < 3), "{leader:?}");
    assert_eq!(cluster.stream_leader("KV_no_such_bucket").await, None);
}

#[tokio::test]
async fn cluster_accepts_writes_after_the_stream_leader_is_killed() {
    let Some(_) = require_server() else { return };
    let mut cluster = NatsCluster::start(3).await;
    let js = jetstream::new(cluster.connect().await);
    let store = bucket(&js, "failover", 3).await;
    let stream = js.get_stream("KV_failover").await.unwrap();
    store.put("work.item-1", "before".into()).await.unwrap();

    let leader = cluster
        .stream_leader("KV_failover")
        .await
        .expect("an R3 stream that just took a write has a leader");
    cluster.node_mut(leader).kill();

    // Writes fail (or time out) until the client has moved off a dead node and the two
    // survivors have elected a new leader; then they succeed.
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let put = tokio::time::timeout(
            Duration::from_secs(2),
            store.put("work.item-1", "after".into()),
        );
        match put.await {
            Ok(Ok(_)) => break,
            Ok(Err(err)) if started.elapsed() < FAILOVER_TIMEOUT => {
                eprintln!("attempt {attempts}: {err}");
            }
            Err(_) if started.elapsed() < FAILOVER_TIMEOUT => {
                eprintln!("attempt {attempts}: timed out");
            }
            other => panic!(
                "no write accepted within {FAILOVER_TIMEOUT:?} of killing leader n{leader}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "write accepted {:?} after killing leader n{leader}",
        started.elapsed()
    );
    assert_eq!(
        leader_value(&stream, "failover", "work.item-1")
            .await
            .as_deref(),
        Some(&b"after"[..])
    );

    let new_leader = cluster.stream_leader("KV_failover").await;
    assert!(
        new_leader.is_some_and(|i| i != leader),
        "{new_leader:?} (killed n{leader})"
    );

    // The killed node rejoins with its store and the cluster still serves the bucket.
    cluster.node_mut(leader).restart().await;
    store.put("work.item-2", "rejoined".into()).await.unwrap();
    assert_eq!(
        leader_value(&stream, "failover", "work.item-2")
            .await
            .as_deref(),
        Some(&b"rejoined"[..])
    );
}
