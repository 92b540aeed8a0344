//! `TtlCache` single-flight across separate NATS connections: many callers on several clients
//! miss the same name at once, and exactly one of them computes. On a single node, and on a
//! 3-node cluster with each client connected to a different node.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use swarmstate_core::{Key, StateStore};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, NatsServer, require_server};
use swarmstate_recipes::cache::TtlCache;
use tokio::sync::Barrier;

const CLIENTS: usize = 4;
const CALLERS_PER_CLIENT: usize = 4;
const ROUNDS: usize = 3;
const COMPUTE: Duration = Duration::from_millis(200);

/// Runs `ROUNDS` rounds; in each, every caller on every client asks for the same new name at
/// once. Asserts one computation per round and one value for everyone; returns how long each
/// round took from the common start to the last caller's answer.
async fn contend(clients: Vec<Arc<dyn StateStore>>) -> Vec<Duration> {
    let callers = clients.len() * CALLERS_PER_CLIENT;
    let mut round_times = Vec::new();
    for round in 0..ROUNDS {
        let name = format!("report-{round}");
        let calls = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(callers));
        let began = Instant::now();
        let mut tasks = Vec::new();
        for (c, client) in clients.iter().enumerate() {
            for t in 0..CALLERS_PER_CLIENT {
                let cache = TtlCache::new(client.clone(), Key::new("cache").unwrap())
                    .owner(format!("client-{c}-caller-{t}"));
                let (calls, start, name) = (calls.clone(), start.clone(), name.clone());
                tasks.push(tokio::spawn(async move {
                    start.wait().await;
                    cache
                        .get_or_compute(&name, Duration::from_secs(60), || async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(COMPUTE).await;
                            Ok::<_, String>(Bytes::from(format!("by client {c} caller {t}")))
                        })
                        .await
                }));
            }
        }
        let mut values = Vec::new();
        for task in tasks {
            let value = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("every caller answers")
                .expect("no caller panics")
                .unwrap_or_else(|err| panic!("get_or_compute: {err}"));
            values.push(value);
        }
        round_times.push(began.elapsed());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "round {round}: {callers} callers on {} clients must compute once",
            clients.len()
        );
        assert!(
            values.iter().all(|value| *value == values[0]),
            "round {round}: everyone gets the one value: {values:?}"
        );
    }
    round_times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_on_separate_connections_compute_once_on_a_single_node() {
    if require_server().is_none() {
        return;
    }
    let server = NatsServer::start().await;
    let mut clients: Vec<Arc<dyn StateStore>> = Vec::new();
    for _ in 0..CLIENTS {
        let store = NatsStore::builder(server.url())
            .bucket("cache")
            .connect()
            .await
            .expect("connect to the test server");
        clients.push(Arc::new(store));
    }
    let times = contend(clients).await;
    eprintln!(
        "single node: {} callers on {CLIENTS} connections, compute {COMPUTE:?}; \
         time to the last answer per round: {times:?}",
        CLIENTS * CALLERS_PER_CLIENT
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_connected_to_different_nodes_compute_once_on_an_r3_cluster() {
    if require_server().is_none() {
        return;
    }
    let cluster = NatsCluster::start(3).await;
    let urls = cluster.urls();
    let mut clients: Vec<Arc<dyn StateStore>> = Vec::new();
    for c in 0..CLIENTS {
        let store = NatsStore::builder(urls[c % urls.len()].clone())
            .bucket("cache")
            .replicas(3)
            .connect()
            .await
            .expect("connect to the test cluster");
        clients.push(Arc::new(store));
    }
    let times = contend(clients).await;
    eprintln!(
        "R3 cluster: {} callers on {CLIENTS} connections to 3 nodes, compute {COMPUTE:?}; \
         time to the last answer per round: {times:?}",
        CLIENTS * CALLERS_PER_CLIENT
    );
}
