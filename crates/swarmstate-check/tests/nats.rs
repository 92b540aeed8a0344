//! The checker on real `nats-server` processes: the workload on a single node and on a 3-node
//! R3 cluster whose stream leader is killed with SIGKILL and restarted mid-run is
//! linearizable; reads through `NatsStore::get_stale` from a follower that missed writes are
//! not, while default reads through the same follower are.
//!
//! The workloads write a share of their values with 1 s TTLs and delete at revisions, so
//! expiry and conditional deletes are checked too. The lock recipe, recorded through recording
//! clients, checks transactions (its fenced writes) on a single node.

#[path = "support/lock_counter.rs"]
mod lock_counter;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use swarmstate_check::{Recorder, RecordingClient, Workload, check, run};
use swarmstate_core::{Entry, Key, PutOptions, Result, StateStore};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, NatsServer, require_server};

/// How long a write may take before it is recorded as ambiguous: long enough for a loaded
/// 2-core machine, short enough that the writes in flight at a kill end soon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The recorder's watcher must see every expiry, and a NATS watch cannot resume from a
/// revision whose key was overwritten since: a buffer that never fills in a test run.
const WATCH_BUFFER: usize = 1 << 16;

/// How long the stale-read test retries a write through a failover or a reconnect.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_on_a_single_node_is_linearizable() {
    if require_server().is_none() {
        return;
    }
    let server = NatsServer::start().await;
    let store = NatsStore::builder(server.url())
        .bucket("check")
        .request_timeout(REQUEST_TIMEOUT)
        .watch_buffer(WATCH_BUFFER)
        .connect()
        .await
        .expect("the store connects");
    let store: Arc<dyn StateStore> = Arc::new(store);
    let workload = Workload {
        clients: 8,
        keys: 100,
        duration: Duration::from_secs(4),
        operation_timeout: Duration::from_secs(5),
        ..Workload::default()
    };
    let report = run(store.clone(), &workload, async {}).await.unwrap();
    eprintln!("{report}");
    assert!(report.is_ok(), "{report}");
    assert!(report.checked.counts.operations > 500, "{report}");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_recipe_with_fenced_writes_on_a_single_node_is_linearizable() {
    if require_server().is_none() {
        return;
    }
    let server = NatsServer::start().await;
    let store = NatsStore::builder(server.url())
        .bucket("locks")
        .request_timeout(REQUEST_TIMEOUT)
        .watch_buffer(WATCH_BUFFER)
        .connect()
        .await
        .expect("the store connects");
    let store: Arc<dyn StateStore> = Arc::new(store);
    let (history, count) = lock_counter::counter_under_the_lock(store.clone(), 3, 5).await;
    assert_eq!(count, 15, "every increment under the lock counts");
    let checked = check(&history, Duration::from_secs(30));
    eprintln!("{checked}");
    assert!(checked.verdict.is_ok(), "{checked}");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_on_r3_with_the_leader_killed_and_restarted_is_linearizable() {
    if require_server().is_none() {
        return;
    }
    let mut cluster = NatsCluster::start(3).await;
    let store = NatsStore::builder(cluster.connect_url())
        .bucket("check")
        .replicas(3)
        .request_timeout(REQUEST_TIMEOUT)
        .watch_buffer(WATCH_BUFFER)
        .connect()
        .await
        .expect("the store connects");
    let store: Arc<dyn StateStore> = Arc::new(store);
    let workload = Workload {
        clients: 6,
        keys: 100,
        duration: Duration::from_secs(14),
        operation_timeout: Duration::from_secs(5),
        ..Workload::default()
    };
    let killed = std::sync::Mutex::new(None);
    let faults = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = cluster.stream_leader("KV_check").await.unwrap_or(0);
        cluster.node_mut(victim).kill();
        *killed.lock().unwrap() = Some(victim);
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.node_mut(victim).restart().await;
    };
    let report = run(store.clone(), &workload, faults).await.unwrap();
    eprintln!(
        "killed and restarted node {:?}\n{report}",
        killed.lock().unwrap()
    );
    assert!(killed.lock().unwrap().is_some(), "the fault ran: {report}");
    assert!(report.is_ok(), "{report}");
    store.close().await.unwrap();
}

/// Reads from one store, everything else through another: how a client reads from a
/// particular server while writing through the cluster. The reader can be replaced mid-run.
#[derive(Debug)]
struct ReadsThrough {
    writer: Arc<NatsStore>,
    reader: Mutex<Arc<NatsStore>>,
    stale: bool,
}

impl ReadsThrough {
    fn reader(&self) -> Arc<NatsStore> {
        self.reader.lock().unwrap().clone()
    }
}

#[async_trait]
impl StateStore for ReadsThrough {
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let reader = self.reader();
        if self.stale {
            reader.get_stale(key).await
        } else {
            reader.get(key).await
        }
    }
    async fn close(&self) -> Result<()> {
        self.reader().close().await
    }
    swarmstate_core::forward_state_store!(|s| &s.writer;
        capabilities, put, delete, keys, watch, txn);
}

/// Writes through the recording client until the write is acknowledged.
async fn write(client: &RecordingClient, key: &Key, value: String) {
    let deadline = Instant::now() + WRITE_DEADLINE;
    loop {
        match client
            .put(key, Bytes::from(value.clone()), PutOptions::overwrite())
            .await
        {
            Ok(_) => return,
            Err(err) if Instant::now() < deadline => {
                eprintln!("write {key}={value} not acknowledged yet: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("write {key}={value}: {err}"),
        }
    }
}

/// One round on `cluster`: a follower misses a round of writes, comes back, and is read from
/// at once (through `get_stale` when `stale`), then reads right behind fresh writes. Returns
/// the checker's verdict on the recorded history.
async fn follower_round(
    cluster: &mut NatsCluster,
    writer: &Arc<NatsStore>,
    stale: bool,
) -> swarmstate_check::Checked {
    let prefix = if stale { "stale" } else { "default" };
    let keys: Vec<Key> = (0..20)
        .map(|i| Key::new(format!("{prefix}.k{i}")).unwrap())
        .collect();
    let leader = cluster
        .stream_leader("KV_reads")
        .await
        .expect("the bucket has a leader");
    let follower = (leader + 1) % cluster.len();
    // Until the follower is back, reads go through a connection to the whole cluster.
    let store = Arc::new(ReadsThrough {
        writer: writer.clone(),
        reader: Mutex::new(Arc::new(
            NatsStore::builder(cluster.connect_url())
                .bucket("reads")
                .connect()
                .await
                .expect("a reader connects"),
        )),
        stale,
    });
    let recorder = Recorder::new(store.clone()).await.unwrap();
    let client = recorder.client();
    for key in &keys {
        write(&client, key, format!("old-{prefix}-{key}")).await;
    }
    cluster.node_mut(follower).kill();
    for key in &keys {
        write(&client, key, format!("new-{prefix}-{key}")).await;
    }
    cluster.node_mut(follower).restart().await;
    // Only now connect the reader to the restarted follower, so its direct gets are answered
    // there; the default read forwards to the leader.
    let reader = NatsStore::builder(cluster.node(follower).url())
        .bucket("reads")
        .connect()
        .await
        .expect("a reader connects to the restarted follower");
    *store.reader.lock().unwrap() = Arc::new(reader);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        for key in &keys {
            let _ = client.get(key).await;
        }
    }
    let hot = Key::new(format!("{prefix}.hot")).unwrap();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(4) {
        round += 1;
        write(&client, &hot, format!("{prefix}-{round}")).await;
        let _ = client.get(&hot).await;
    }
    let history = recorder.finish().await;
    check(&history, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_from_a_lagging_follower_are_caught_and_default_reads_pass() {
    if require_server().is_none() {
        return;
    }
    let mut cluster = NatsCluster::start(3).await;
    let writer = Arc::new(
        NatsStore::builder(cluster.connect_url())
            .bucket("reads")
            .replicas(3)
            .request_timeout(REQUEST_TIMEOUT)
            .watch_buffer(WATCH_BUFFER)
            .connect()
            .await
            .expect("the writer connects"),
    );
    let default = follower_round(&mut cluster, &writer, false).await;
    eprintln!("default reads:\n{default}");
    assert!(default.verdict.is_ok(), "{default}");
    let stale = follower_round(&mut cluster, &writer, true).await;
    eprintln!("stale reads:\n{stale}");
    assert!(stale.verdict.is_violation(), "{stale}");
    writer.close().await.unwrap();
}
