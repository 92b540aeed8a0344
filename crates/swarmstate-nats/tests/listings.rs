//! Key listings and snapshot watches are linearizable on an R3 bucket: right after a write or a
//! delete is acknowledged, a listing and a snapshot show it, even while followers are killed,
//! restarted and frozen, and the stream leader changes.
//!
//! The consumer a listing or a snapshot reads through may be served by a node that has not yet
//! applied the newest committed writes (a follower that was frozen, a deposed leader catching
//! up). Without a read barrier such a listing misses an acknowledged write; the work queue's
//! `claim` then finds nothing to claim right after an `enqueue`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use swarmstate_core::{
    Error, Key, Pattern, Revision, StateStore, StateStoreExt, WatchEvent, WatchStart,
};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, require_server};

const BUCKET: &str = "listings";

/// How long the test writes, lists and snapshots while faults are injected.
const RUN_FOR: Duration = Duration::from_secs(40);

/// How long one snapshot may take to catch up, on a loaded machine with a node frozen.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The listings (and snapshots) that must at least have answered, so that the test cannot pass
/// by every read failing.
const MIN_ANSWERED: usize = 20;

fn key(text: &str) -> Key {
    Key::new(text).unwrap_or_else(|err| panic!("{err}"))
}

/// Whether an operation ended the way a fault may end it.
fn is_fault_outcome(err: &Error) -> bool {
    matches!(err, Error::Ambiguous { .. } | Error::Unavailable { .. })
}

/// What the fault task did.
#[derive(Debug, Default)]
struct Faults {
    restarts: usize,
    freezes: usize,
    stepdowns: usize,
    leader_changes: usize,
}

/// Until `stop`, in turn: kills a follower and restarts it (it serves consumers while it
/// catches up), freezes a follower (it falls behind, then catches up), and asks the stream
/// leader to step down (the leader changes). Returns the cluster, so that it lives until the
/// test is done.
async fn inject_faults(mut cluster: NatsCluster, stop: Arc<AtomicBool>) -> (NatsCluster, Faults) {
    let stream = format!("KV_{BUCKET}");
    let js = async_nats::jetstream::new(cluster.connect().await);
    let mut faults = Faults::default();
    let mut round = 0usize;
    while !stop.load(Ordering::Acquire) {
        round += 1;
        let Some(leader) = cluster.stream_leader(&stream).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let follower = (leader + 1 + round % 2) % cluster.len();
        match round % 3 {
            0 => {
                cluster.node_mut(follower).kill();
                tokio::time::sleep(Duration::from_millis(500 + 250 * (round % 4) as u64)).await;
                cluster.node_mut(follower).restart().await;
                faults.restarts += 1;
            }
            1 => {
                cluster.node(follower).pause();
                tokio::time::sleep(Duration::from_millis(300 + 300 * (round % 4) as u64)).await;
                cluster.node(follower).resume();
                faults.freezes += 1;
            }
            _ => {
                let answer: Result<serde_json::Value, _> = js
                    .request(
                        format!("STREAM.LEADER.STEPDOWN.{stream}"),
                        &serde_json::json!({}),
                    )
                    .await;
                if let Err(err) = answer {
                    eprintln!("stepdown of {stream}: {err}");
                }
                faults.stepdowns += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        if cluster
            .stream_leader(&stream)
            .await
            .is_some_and(|now| now != leader)
        {
            faults.leader_changes += 1;
        }
    }
    (cluster, faults)
}

/// What one round found.
#[derive(Debug, Default)]
struct Counts {
    rounds: usize,
    writes_acknowledged: usize,
    listings: usize,
    listings_failed: usize,
    stale_listings: Vec<String>,
    snapshots: usize,
    snapshots_failed: usize,
    stale_snapshots: Vec<String>,
}

/// What a snapshot watch showed up to its `CaughtUp`: the revision of each entry, and what
/// came before `CaughtUp` that is not an entry (the contract allows none).
#[derive(Debug, Default)]
struct Snapshot {
    entries: BTreeMap<Key, Revision>,
    not_entries: Vec<WatchEvent>,
}

/// A snapshot watch of `pattern` up to its `CaughtUp`; `Err` when it could not be opened or
/// ended before catching up.
async fn snapshot_of(store: &NatsStore, pattern: &Pattern) -> Result<Snapshot, String> {
    let mut events = store
        .watch(pattern, WatchStart::Snapshot)
        .await
        .map_err(|err| err.to_string())?;
    let mut snapshot = Snapshot::default();
    let started = Instant::now();
    loop {
        let event = tokio::time::timeout_at((started + SNAPSHOT_TIMEOUT).into(), events.next())
            .await
            .map_err(|_| format!("no CaughtUp within {SNAPSHOT_TIMEOUT:?}"))?;
        match event {
            Some(WatchEvent::Put(entry)) => {
                snapshot.entries.insert(entry.key, entry.revision);
            }
            Some(WatchEvent::CaughtUp { .. }) => return Ok(snapshot),
            Some(WatchEvent::Lagged { resume_from }) => {
                return Err(format!("lagged at {resume_from} before catching up"));
            }
            Some(other) => {
                if let Some(key) = other.key() {
                    snapshot.entries.remove(key);
                }
                snapshot.not_entries.push(other);
            }
            None => return Err("ended before catching up".into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_and_snapshots_show_every_acknowledged_write_across_restarts_and_leader_changes() {
    if require_server().is_none() {
        return;
    }
    let cluster = NatsCluster::start(3).await;
    let store = NatsStore::builder(cluster.connect_url())
        .bucket(BUCKET)
        .replicas(3)
        .request_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("connect to the test cluster");
    let prefix = key("items");
    let stop = Arc::new(AtomicBool::new(false));
    let faults = tokio::spawn(inject_faults(cluster, stop.clone()));

    let mut counts = Counts::default();
    // Keys whose put was acknowledged and whose delete was not tried: each must be listed.
    let mut present: BTreeSet<Key> = BTreeSet::new();
    // Keys whose delete was acknowledged: none may be listed.
    let mut deleted: BTreeSet<Key> = BTreeSet::new();
    let started = Instant::now();
    while started.elapsed() < RUN_FOR {
        counts.rounds += 1;
        let round = counts.rounds;
        // Delete the key of the round before (keeping the listing short), then write a new one.
        if let Some(previous) = present.pop_last() {
            match store.delete(&previous, None).await {
                Ok(_) => {
                    deleted.insert(previous);
                }
                Err(err) if is_fault_outcome(&err) => {}
                Err(err) => panic!("delete {previous}: {err}"),
            }
        }
        let written = key(&format!("items.k{round:05}"));
        let revision = match store.set(&written, format!("round {round}")).await {
            Ok(revision) => revision,
            Err(err) if is_fault_outcome(&err) => {
                // Not connected fails at once: pace the retries while the client reconnects.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(err) => panic!("put {written}: {err}"),
        };
        counts.writes_acknowledged += 1;
        present.insert(written.clone());

        match store.list_keys(&Pattern::prefix(&prefix)).await {
            Ok(listed) => {
                counts.listings += 1;
                let listed: BTreeSet<Key> = listed.into_iter().collect();
                let missing: Vec<&Key> = present.difference(&listed).collect();
                let resurrected: Vec<&Key> = deleted.intersection(&listed).collect();
                if !missing.is_empty() || !resurrected.is_empty() {
                    counts.stale_listings.push(format!(
                        "round {round} at {:?}: missing {missing:?}, deleted but listed \
                         {resurrected:?}",
                        started.elapsed()
                    ));
                }
            }
            Err(err) if is_fault_outcome(&err) => counts.listings_failed += 1,
            Err(err) => panic!("list {prefix}.*: {err}"),
        }
        // A listing of exactly the key just written.
        match store.list_keys(&Pattern::exact(&written)).await {
            Ok(listed) => {
                counts.listings += 1;
                if listed != [written.clone()] {
                    counts.stale_listings.push(format!(
                        "round {round} at {:?}: listing {written} alone gave {listed:?}",
                        started.elapsed()
                    ));
                }
            }
            Err(err) if is_fault_outcome(&err) => counts.listings_failed += 1,
            Err(err) => panic!("list {written}: {err}"),
        }

        // Snapshots of the prefix and of the key just written: entries (no older than the
        // write or delete acknowledged last), then `CaughtUp`.
        for pattern in [Pattern::prefix(&prefix), Pattern::exact(&written)] {
            let snapshot = match snapshot_of(&store, &pattern).await {
                Ok(snapshot) => snapshot,
                Err(err) => {
                    eprintln!("round {round}: snapshot of {pattern}: {err}");
                    counts.snapshots_failed += 1;
                    continue;
                }
            };
            counts.snapshots += 1;
            let shown = snapshot.entries.get(&written).copied();
            let resurrected: Vec<&Key> = deleted
                .iter()
                .filter(|key| snapshot.entries.contains_key(*key))
                .collect();
            if shown.is_none_or(|shown| shown < revision)
                || !resurrected.is_empty()
                || !snapshot.not_entries.is_empty()
            {
                counts.stale_snapshots.push(format!(
                    "round {round} at {:?}: {written} written at {revision}, the snapshot of \
                     {pattern} showed it at {shown:?}, deleted but shown {resurrected:?}, and \
                     before CaughtUp {:?}",
                    started.elapsed(),
                    snapshot.not_entries
                ));
            }
        }
    }
    stop.store(true, Ordering::Release);
    let (_cluster, faults) = faults.await.expect("the fault task");
    eprintln!("{faults:?}; {counts:#?}");
    assert!(
        counts.stale_listings.is_empty() && counts.stale_snapshots.is_empty(),
        "listings or snapshots missed acknowledged writes or deletes ({} stale listings of {}, \
         {} stale snapshots of {}):\n{}\n{}",
        counts.stale_listings.len(),
        counts.listings,
        counts.stale_snapshots.len(),
        counts.snapshots,
        counts.stale_listings.join("\n"),
        counts.stale_snapshots.join("\n"),
    );
    assert!(
        counts.listings >= MIN_ANSWERED && counts.snapshots >= MIN_ANSWERED,
        "too few listings or snapshots answered: {counts:?}"
    );
    store.close().await.unwrap();
}
