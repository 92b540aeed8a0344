//! The conformance suite on real `nats-server` processes: every case on a fresh single-node
//! server, and the whole suite once more on a 3-node cluster with R3 buckets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use swarmstate_core::StateStore;
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, NatsServer, require_server};

/// A store that owns the server it talks to, so the server lives exactly as long as the case.
#[derive(Debug)]
struct Served<S: std::fmt::Debug + Send + Sync> {
    store: NatsStore,
    _servers: S,
}

impl<S: std::fmt::Debug + Send + Sync> StateStore for Served<S> {
    swarmstate_core::forward_state_store!(|s| &s.store);
}

async fn single_node_store() -> Arc<dyn StateStore> {
    require_server().expect("nats-server is required for the NATS conformance suite");
    let server = NatsServer::start().await;
    let store = NatsStore::builder(server.url())
        .bucket("conformance")
        .connect()
        .await
        .expect("connect to the test server");
    Arc::new(Served {
        store,
        _servers: server,
    })
}

mod single_node {
    swarmstate_conformance::conformance_tests!(super::single_node_store);

    #[test]
    fn every_case_runs_here() {
        let all: Vec<&str> = swarmstate_conformance::CASES
            .iter()
            .map(|case| case.name)
            .collect();
        assert_eq!(GENERATED_CASES, all.as_slice());
    }
}

/// The whole suite on one 3-node cluster, each case on a fresh R3 bucket, four at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_a_3_node_cluster_with_r3_buckets() {
    if require_server().is_none() {
        return;
    }
    let cluster = Arc::new(NatsCluster::start(3).await);
    let next = AtomicUsize::new(0);
    let failures: Vec<String> = futures::stream::iter(swarmstate_conformance::CASES)
        .map(|case| {
            let cluster = cluster.clone();
            let bucket = format!("r3-{}", next.fetch_add(1, Ordering::Relaxed));
            async move {
                let store = NatsStore::builder(cluster.connect_url())
                    .bucket(bucket)
                    .replicas(3)
                    .connect()
                    .await
                    .expect("connect to the test cluster");
                let store: Arc<dyn StateStore> = Arc::new(store);
                let outcome = tokio::spawn((case.run)(store)).await;
                outcome.err().map(|err| format!("{}: {err}", case.name))
            }
        })
        .buffer_unordered(4)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "cases failed on R3:\n{}",
        failures.join("\n")
    );
}
