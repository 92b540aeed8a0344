//! The race between an expiring value and a write that replaces it, on a 3-node cluster with an
//! R3 bucket (see `src/expiry.rs`).
//!
//! nats-server decides that a value whose TTL ended is its subject's last message from what it
//! has applied, then proposes an expiry marker whose rollup purges every earlier message of the
//! subject. A write to the key that is in flight at that moment is applied, acknowledged, and
//! purged by the marker right behind it. Each trial writes a value with a 1 s TTL and
//! overwrites it (without a TTL) a few milliseconds before its deadline, when the window is
//! widest; then reads the key once the expiry is long past. The raw-client trials show the
//! server doing it; the `NatsStore` trials must never lose their overwrite.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use swarmstate_core::{Key, PutOptions, StateStore, StateStoreExt};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, require_server};
use tokio::time::Instant;

const BUCKET: &str = "race";
/// Trials per round, started together on keys of their own.
const TRIALS: u64 = 100;
/// When, after sending the value with a 1 s TTL, the overwrite is sent: spread over the 10 ms
/// before the deadline, where an overwrite is most often still in flight when the leader
/// decides the expiry (about 6% of raw trials here).
const OVERWRITE_AT: Duration = Duration::from_millis(990);
const SPREAD: Duration = Duration::from_millis(10);
/// Long enough after the deadline for the marker to be written and applied everywhere.
const SETTLE: Duration = Duration::from_millis(2500);

fn key(text: &str) -> Key {
    Key::new(text).unwrap_or_else(|err| panic!("{err}"))
}

fn overwrite_delay(trial: u64) -> Duration {
    OVERWRITE_AT + SPREAD * (trial * 37 % TRIALS) as u32 / TRIALS as u32
}

async fn store_on(cluster: &NatsCluster) -> NatsStore {
    NatsStore::builder(cluster.connect_url())
        .bucket(BUCKET)
        .replicas(3)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting: {err}"))
}

async fn cluster_and_store() -> (NatsCluster, NatsStore) {
    let cluster = NatsCluster::start(3).await;
    let store = store_on(&cluster).await;
    (cluster, store)
}

/// One round of raw trials: how many overwrites were acknowledged and then gone.
async fn raw_round(js: &jetstream::Context, round: usize) -> Vec<String> {
    let mut trials = Vec::new();
    for trial in 0..TRIALS {
        let js = js.clone();
        trials.push(tokio::spawn(async move {
            let subject = format!("$KV.{BUCKET}.raw.r{round}.k{trial}");
            let mut headers = HeaderMap::new();
            headers.insert("Nats-TTL", "1s");
            let sent = Instant::now();
            let ack = js
                .publish_with_headers(subject.clone(), headers, "expiring".into())
                .await
                .expect("publish");
            ack.await.expect("the value with a TTL is acknowledged");
            tokio::time::sleep_until(sent + overwrite_delay(trial)).await;
            let ack = js
                .publish(subject.clone(), "overwrite".into())
                .await
                .expect("publish");
            ack.await.expect("the overwrite is acknowledged");
            subject
        }));
    }
    let mut subjects = Vec::new();
    for trial in trials {
        subjects.push(trial.await.expect("a raw trial"));
    }
    tokio::time::sleep(SETTLE).await;
    let stream = js.get_stream(format!("KV_{BUCKET}")).await.expect("stream");
    let mut lost = Vec::new();
    for subject in subjects {
        let last = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap_or_else(|err| panic!("read {subject}: {err}"));
        if last.payload.as_ref() != b"overwrite" {
            lost.push(format!("{subject}: {:?}", last.headers));
        }
    }
    lost
}

/// A canary for the server's defect, not a test of ours: how often the window opens depends on
/// the machine's load (about 6% of trials on a quiet one, none in 1,000 on a busy one), so it
/// runs in `scripts/soak-check`, not in the default suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a probabilistic canary for nats-server's late expiry marker; run by scripts/soak-check"]
async fn the_server_purges_an_acknowledged_overwrite_with_a_late_expiry_marker() {
    let Some(_) = require_server() else { return };
    let (cluster, _store) = cluster_and_store().await;
    let js = jetstream::new(cluster.connect().await);
    // Until the first loss: it shows the defect, and nothing more is needed.
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        let lost = raw_round(&js, round).await;
        if let Some(first) = lost.first() {
            eprintln!(
                "round {round}: {} of {TRIALS} acknowledged overwrites purged; the first: {first}",
                lost.len()
            );
            assert!(
                first.contains("MaxAge"),
                "the overwrite was replaced by something other than an expiry marker: {first}"
            );
            return;
        }
        eprintln!("round {round}: no overwrite lost");
    }
    panic!(
        "no acknowledged overwrite was purged in {} trials: this nats-server may have fixed the \
         late expiry marker; the guard in src/expiry.rs and the README's note may be obsolete",
        ROUNDS as u64 * TRIALS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwrite_at_the_deadline_of_the_value_it_replaces_is_never_lost() {
    let Some(_) = require_server() else { return };
    let (cluster, writer) = cluster_and_store().await;
    // Half the overwrites go through a second store that has not seen the value it replaces.
    let other = store_on(&cluster).await;
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let mut trials = Vec::new();
        for trial in 0..TRIALS {
            let writer = writer.clone();
            let overwriter = if trial % 2 == 0 {
                writer.clone()
            } else {
                other.clone()
            };
            trials.push(tokio::spawn(async move {
                let key = key(&format!("store.r{round}.k{trial}"));
                let sent = Instant::now();
                writer
                    .put(
                        &key,
                        "expiring".into(),
                        PutOptions::overwrite().ttl(Duration::from_secs(1)),
                    )
                    .await
                    .unwrap_or_else(|err| panic!("put {key} with a TTL: {err}"));
                tokio::time::sleep_until(sent + overwrite_delay(trial)).await;
                let revision = overwriter
                    .set(&key, Bytes::from("overwrite"))
                    .await
                    .unwrap_or_else(|err| panic!("overwrite {key}: {err}"));
                (key, revision)
            }));
        }
        let mut written = Vec::new();
        for trial in trials {
            written.push(trial.await.expect("a trial"));
        }
        tokio::time::sleep(SETTLE).await;
        let mut lost = Vec::new();
        for (key, revision) in &written {
            let entry = writer
                .get(key)
                .await
                .unwrap_or_else(|err| panic!("get {key}: {err}"));
            match entry {
                Some(entry) if entry.value == "overwrite" && entry.revision == *revision => {}
                other => lost.push(format!("{key} acknowledged at {revision}, now {other:?}")),
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} of {TRIALS} acknowledged overwrites lost: {lost:?}",
            lost.len()
        );
    }
}
