//! Network partitions of a 3-node cluster (`NatsCluster::start_partitionable`), with an R3
//! bucket and one `NatsStore` per node whose client knows only that node.
//!
//! What they hold the fixture and the backend to: a cut really separates nodes (no message
//! crosses it, in either direction, and no proxied connection survives it); no write through a
//! cut-off node is acknowledged, and it never reads what the majority wrote since the cut; a
//! default (linearizable) read through an isolated old stream leader never answers with what it
//! held before the majority's newer write (it fails instead), while a `ReadConsistency::Leader`
//! read there may; the majority elects a leader and keeps acknowledging writes; a failed write is `Ambiguous` or
//! `Unavailable`, never a success; after the heal every node accepts writes and every
//! acknowledged write is read back through every node, from the leader and from that node's
//! own replica.
//!
//! Each write writes a value no other write uses, so whatever a key holds names the write that
//! put it there. The two tests take about 20 s side by side, 30 s one after the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use swarmstate_core::{Error, Key, Revision, StateStore, StateStoreExt};
use swarmstate_nats::{NatsStore, ReadConsistency};
use swarmstate_nats_local::{NatsCluster, require_server};
use tokio::task::JoinHandle;

const BUCKET: &str = "partition";
const STREAM: &str = "KV_partition";

/// How long a request waits for its answer: long enough for a loaded 2-core machine, short
/// enough that writes into a partition end soon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the majority may take to elect a new stream leader and acknowledge writes again.
/// Killing the leader took 4.5-7.5 s on this machine; a cut link ends the route connections at
/// once, so the followers' election timeout dominates the same way.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node cut off from another must fail to reach it before we believe the cut: a
/// route carries a subscription's interest in milliseconds.
const CUT_PATIENCE: Duration = Duration::from_secs(1);

/// How long nodes may take after a heal to reconnect their routes (retried about once a second)
/// and to catch up what they missed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn key(text: &str) -> Key {
    Key::new(text).unwrap_or_else(|err| panic!("{err}"))
}

/// Whether a failed write ended the way a partition may end it: sent without an answer, or
/// never sent.
fn is_fault_outcome(err: &Error) -> bool {
    matches!(err, Error::Ambiguous { .. } | Error::Unavailable { .. })
}

/// One store per node, in node order, each through a client that knows only its node (the
/// partitionable cluster does not tell clients about other nodes).
async fn store_per_node(cluster: &NatsCluster) -> Vec<NatsStore> {
    let mut stores = Vec::new();
    for node in 0..cluster.len() {
        let store = NatsStore::builder(cluster.node(node).url())
            .bucket(BUCKET)
            .replicas(3)
            .request_timeout(REQUEST_TIMEOUT)
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connecting a store to n{node}: {err}"));
        stores.push(store);
    }
    stores
}

/// A store on node `node` whose reads are `ReadConsistency::Leader`: only the leader read.
async fn leader_read_store(cluster: &NatsCluster, node: usize) -> NatsStore {
    NatsStore::builder(cluster.node(node).url())
        .bucket(BUCKET)
        .replicas(3)
        .request_timeout(REQUEST_TIMEOUT)
        .read_consistency(ReadConsistency::Leader)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting a leader-read store to n{node}: {err}"))
}

/// Reads sent after `since` that answered without an error: through a node cut off from the
/// majority since before `since`, every one of them is stale.
fn answered_after(reads: &[Read], since: Instant) -> Vec<(Duration, Option<Bytes>)> {
    reads
        .iter()
        .filter(|(sent, _)| *sent > since)
        .filter_map(|(sent, read)| Some((*sent - since, read.clone().ok()?)))
        .collect()
}

/// The stream's leader as node `seen_by` sees it, waiting up to `limit` for one it knows.
async fn leader_seen_by(cluster: &NatsCluster, seen_by: usize, limit: Duration) -> usize {
    let started = Instant::now();
    loop {
        if let Some(leader) = cluster.stream_leader_seen_by(seen_by, STREAM).await {
            return leader;
        }
        assert!(
            started.elapsed() < limit,
            "n{seen_by} knew no leader of {STREAM} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a client of node `from` gets an answer from a subscriber on node `to` within
/// `patience`: a core NATS request, which must cross a route between the two nodes. Returns as
/// soon as an answer arrives.
async fn reaches(cluster: &NatsCluster, from: usize, to: usize, patience: Duration) -> bool {
    let responder = cluster.node(to).connect().await;
    let requester = cluster.node(from).connect().await;
    let subject = format!("probe.n{from}.n{to}");
    let mut requests = responder
        .subscribe(subject.clone())
        .await
        .expect("subscribe");
    responder.flush().await.expect("flush the subscription");
    let answer = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = responder.publish(reply, "pong".into()).await;
                let _ = responder.flush().await;
            }
        }
    });
    // Interest crosses routes asynchronously, and routes come back a while after a heal:
    // retry for as long as allowed.
    let started = Instant::now();
    let reached = loop {
        let request = requester.request(subject.clone(), "ping".into());
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(500), request).await {
            break &reply.payload[..] == b"pong";
        }
        if started.elapsed() >= patience {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    answer.abort();
    reached
}

/// Asserts which pairs of nodes reach each other (see [`reaches`]): every pair within a group
/// in both directions (waiting up to [`CATCH_UP_TIMEOUT`] for routes to come back), and no pair
/// across groups (for [`CUT_PATIENCE`], in both directions).
async fn assert_connectivity(cluster: &NatsCluster, groups: &[&[usize]], when: &str) {
    for from in 0..cluster.len() {
        for to in (0..cluster.len()).filter(|&to| to != from) {
            let together = groups
                .iter()
                .any(|group| group.contains(&from) && group.contains(&to));
            let patience = if together {
                CATCH_UP_TIMEOUT
            } else {
                CUT_PATIENCE
            };
            let reached = reaches(cluster, from, to, patience).await;
            assert_eq!(
                reached,
                together,
                "{when}: n{from} {} n{to} (groups {groups:?}); proxied connections between them: {}",
                if reached { "reaches" } else { "does not reach" },
                cluster.proxied_connections(from, to)
            );
            if !together {
                assert_eq!(
                    cluster.proxied_connections(from, to),
                    0,
                    "{when}: the cut between n{from} and n{to} carries connections"
                );
            }
        }
    }
}

/// Acknowledged writes, and writes of unknown outcome, across a test.
#[derive(Debug, Default)]
struct Writes {
    acked: Vec<(Key, Bytes, Revision)>,
    /// Keys and values of writes that were `Ambiguous`: each key holds that value or nothing.
    unknown: Vec<(Key, Bytes)>,
    /// Writes attempted so far, to give each a key and value of its own.
    attempts: usize,
}

impl Writes {
    /// Writes a fresh key `{prefix}.k{n}` per attempt through `store` until one is
    /// acknowledged, for at most `limit`; every failure on the way must be `Ambiguous` or
    /// `Unavailable`. Returns how long it took.
    async fn put_until_acked(
        &mut self,
        store: &NatsStore,
        prefix: &str,
        limit: Duration,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let attempt = self.attempts;
            self.attempts += 1;
            let key = key(&format!("{prefix}.k{attempt}"));
            let value = Bytes::from(format!("{prefix}-{attempt}"));
            match store.set(&key, value.clone()).await {
                Ok(revision) => {
                    self.acked.push((key, value, revision));
                    return started.elapsed();
                }
                Err(err) => {
                    assert!(is_fault_outcome(&err), "put {key}: {err}");
                    if matches!(err, Error::Ambiguous { .. }) {
                        self.unknown.push((key, value));
                    }
                    assert!(
                        started.elapsed() < limit,
                        "no write through {prefix} acknowledged within {limit:?}; last: {err}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads every write back through every store with linearizable gets, retrying reads that
    /// fail for up to [`CATCH_UP_TIMEOUT`] (a node may not have its routes back yet), and
    /// failing at once on a wrong answer. Then waits until every node's own replica serves
    /// every acknowledged write to a stale read (a direct get through a client of that node is
    /// answered by that node's replica when it has caught up).
    async fn check_on_every_node(&self, stores: &[NatsStore]) {
        for (node, store) in stores.iter().enumerate() {
            for (key, value, revision) in &self.acked {
                let entry = read_retrying(store, node, key).await.unwrap_or_else(|| {
                    panic!("n{node}: {key} is gone; it was acknowledged at {revision}")
                });
                assert_eq!(
                    (&entry.value, entry.revision),
                    (value, *revision),
                    "n{node}: {key} does not hold its acknowledged write"
                );
            }
            for (key, value) in &self.unknown {
                if let Some(entry) = read_retrying(store, node, key).await {
                    assert_eq!(
                        &entry.value, value,
                        "n{node}: {key} holds a value no write of it produced"
                    );
                }
            }
        }
        // Every node agrees on the writes of unknown outcome.
        for (key, _) in &self.unknown {
            let first = read_retrying(&stores[0], 0, key).await;
            for (node, store) in stores.iter().enumerate().skip(1) {
                assert_eq!(
                    read_retrying(store, node, key).await,
                    first,
                    "n{node} and n0 disagree on {key}"
                );
            }
        }
        let started = Instant::now();
        for (node, store) in stores.iter().enumerate() {
            for (key, value, revision) in &self.acked {
                loop {
                    let found = store.get_stale(key).await;
                    if let Ok(Some(entry)) = &found
                        && (&entry.value, entry.revision) == (value, *revision)
                    {
                        break;
                    }
                    assert!(
                        started.elapsed() < CATCH_UP_TIMEOUT,
                        "n{node}'s replica does not serve {key} at {revision} after \
                         {CATCH_UP_TIMEOUT:?}: {found:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A linearizable get through `store`, retried while it fails for up to [`CATCH_UP_TIMEOUT`].
async fn read_retrying(
    store: &NatsStore,
    node: usize,
    key: &Key,
) -> Option<swarmstate_core::Entry> {
    let started = Instant::now();
    loop {
        match store.get(key).await {
            Ok(found) => return found,
            Err(err) => assert!(
                started.elapsed() < CATCH_UP_TIMEOUT,
                "n{node}: get {key} still fails after {CATCH_UP_TIMEOUT:?}: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How each write through the cut-off side ended.
#[derive(Debug, Default)]
struct CutOffOutcomes {
    ambiguous: Vec<(Key, Bytes)>,
    unavailable: usize,
    /// Writes acknowledged, or failed other than `Ambiguous` or `Unavailable`: each a failure.
    wrong: Vec<String>,
}

/// Writes fresh keys through `store` (a client of a cut-off node) until `stop` is set.
fn write_from_the_cut_off_side(
    store: NatsStore,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<CutOffOutcomes> {
    tokio::spawn(async move {
        let mut outcomes = CutOffOutcomes::default();
        let mut n = 0;
        while !stop.load(Ordering::Acquire) {
            let key = key(&format!("{prefix}.k{n}"));
            let value = Bytes::from(format!("{prefix}-{n}"));
            match store.set(&key, value.clone()).await {
                Ok(revision) => outcomes
                    .wrong
                    .push(format!("{key} acknowledged at {revision}")),
                Err(Error::Ambiguous { .. }) => outcomes.ambiguous.push((key, value)),
                Err(Error::Unavailable { .. }) => outcomes.unavailable += 1,
                Err(other) => outcomes.wrong.push(format!("{key}: {other}")),
            }
            n += 1;
            // An unavailable store answers at once; do not spin on it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        outcomes
    })
}

/// When a read was sent, and what it answered (`Err` for a failed read).
type Read = (Instant, Result<Option<Bytes>, String>);

/// Reads `key` through `store` (a client of a cut-off node) until `stop` is set.
async fn read_from_the_cut_off_side(
    store: NatsStore,
    key: Key,
    stop: Arc<AtomicBool>,
) -> Vec<Read> {
    let mut reads = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let sent = Instant::now();
        let read = match store.get(&key).await {
            Ok(found) => Ok(found.map(|entry| entry.value)),
            Err(err) => Err(err.to_string()),
        };
        reads.push((sent, read));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_stream_leader_acknowledges_nothing_while_the_majority_carries_on() {
    let Some(_) = require_server() else { return };
    let cluster = NatsCluster::start_partitionable(3).await;
    let stores = store_per_node(&cluster).await;
    let mut writes = Writes::default();
    for (node, store) in stores.iter().enumerate() {
        writes
            .put_until_acked(store, &format!("before.n{node}"), REQUEST_TIMEOUT * 5)
            .await;
    }
    // One key written before the partition and overwritten by the majority during it.
    let shared = key("shared");
    stores[0]
        .set(&shared, "before")
        .await
        .expect("a write before the partition");
    let old_leader = leader_seen_by(&cluster, 0, FAILOVER_TIMEOUT).await;
    let majority: Vec<usize> = (0..3).filter(|&node| node != old_leader).collect();
    let leader_reads = leader_read_store(&cluster, old_leader).await;
    assert_eq!(
        leader_reads
            .get(&shared)
            .await
            .expect("a leader read")
            .map(|e| e.value),
        Some(Bytes::from("before"))
    );

    cluster.isolate(old_leader);
    let isolated_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let cut_off_writes =
        write_from_the_cut_off_side(stores[old_leader].clone(), "isolated", stop.clone());
    // A default read through the cut-off side takes a request timeout to fail; several
    // readers, started apart, make sure some are sent after the majority's write.
    let cut_off_reads: Vec<_> = (0..4)
        .map(|reader| {
            let (store, shared, stop) = (stores[old_leader].clone(), shared.clone(), stop.clone());
            tokio::spawn(async move {
                tokio::time::sleep(REQUEST_TIMEOUT * reader / 4).await;
                read_from_the_cut_off_side(store, shared, stop).await
            })
        })
        .collect();
    let cut_off_leader_reads = tokio::spawn(read_from_the_cut_off_side(
        leader_reads.clone(),
        shared.clone(),
        stop.clone(),
    ));
    assert_connectivity(&cluster, &[&[old_leader], &majority], "isolated").await;

    let failover = loop {
        match stores[majority[0]].set(&shared, "majority").await {
            Ok(revision) => break (Instant::now(), revision),
            Err(err) => {
                assert!(is_fault_outcome(&err), "put {shared}: {err}");
                assert!(
                    isolated_at.elapsed() < FAILOVER_TIMEOUT,
                    "the majority acknowledged no write within {FAILOVER_TIMEOUT:?}: {err}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (majority_acked_at, shared_revision) = failover;
    eprintln!(
        "the majority acknowledged a write {:?} after isolating stream leader n{old_leader}",
        majority_acked_at - isolated_at
    );
    let new_leader = leader_seen_by(&cluster, majority[0], FAILOVER_TIMEOUT).await;
    assert!(
        majority.contains(&new_leader),
        "the majority's leader is n{new_leader}, the isolated node"
    );
    // Writes keep going through both majority nodes, at once.
    for round in 0..3 {
        for &node in &majority {
            let prefix = format!("majority.n{node}.r{round}");
            writes
                .put_until_acked(&stores[node], &prefix, REQUEST_TIMEOUT * 3)
                .await;
        }
    }
    // Keep the isolated side busy for a while after the majority moved on.
    tokio::time::sleep(REQUEST_TIMEOUT).await;
    stop.store(true, Ordering::Release);
    let cut_off = cut_off_writes.await.expect("the isolated writer");
    eprintln!(
        "writes through the isolated n{old_leader} over {:?}: {} ambiguous, {} unavailable",
        isolated_at.elapsed(),
        cut_off.ambiguous.len(),
        cut_off.unavailable
    );
    assert!(
        cut_off.wrong.is_empty(),
        "writes through the isolated node: {:?}",
        cut_off.wrong
    );
    assert!(
        !cut_off.ambiguous.is_empty() || cut_off.unavailable > 0,
        "no write went through the isolated node"
    );
    writes.unknown.extend(cut_off.ambiguous);
    let mut reads = Vec::new();
    for reader in cut_off_reads {
        reads.extend(reader.await.expect("an isolated reader"));
    }
    let leader_mode_reads = cut_off_leader_reads
        .await
        .expect("the isolated leader reader");
    for reads in [&reads, &leader_mode_reads] {
        assert!(
            reads
                .iter()
                .all(|(_, read)| read.as_ref().ok() != Some(&Some(Bytes::from("majority")))),
            "the isolated node read the majority's write of {shared}: {reads:?}"
        );
    }
    // A read sent after the majority acknowledged its write and answered with anything but an
    // error is stale. The default read is linearizable: through the isolated old leader it
    // must fail (its barrier cannot commit without the quorum), never answer.
    let stale = answered_after(&reads, majority_acked_at);
    let failed = reads
        .iter()
        .filter(|(sent, read)| *sent > majority_acked_at && read.is_err())
        .count();
    eprintln!(
        "default reads through the isolated n{old_leader} sent after the majority's write of \
         {shared}: {failed} failed, {} answered",
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "STALE READS: default gets through the isolated n{old_leader} sent after the majority's \
         write of {shared} answered (time after the write, value): {stale:?}"
    );
    assert!(
        failed > 0,
        "no default read through the isolated n{old_leader} was sent after the majority's write"
    );
    // The leader-only read gives that up: until the old leader notices it lost its quorum it
    // answers from its own state. Whether it does within the test depends on timing, so this
    // is shown, not asserted.
    let leader_stale = answered_after(&leader_mode_reads, majority_acked_at);
    match leader_stale.last() {
        Some((last, _)) => eprintln!(
            "ReadConsistency::Leader: {} stale gets through the isolated n{old_leader} after \
             the majority's write of {shared}, the last sent {last:?} after it",
            leader_stale.len()
        ),
        None => eprintln!(
            "ReadConsistency::Leader: no stale get through the isolated n{old_leader} this time"
        ),
    }

    cluster.heal();
    let healed_at = Instant::now();
    assert_connectivity(&cluster, &[&[0, 1, 2]], "healed").await;
    for (node, store) in stores.iter().enumerate() {
        writes
            .put_until_acked(store, &format!("healed.n{node}"), CATCH_UP_TIMEOUT)
            .await;
    }
    eprintln!(
        "every node acknowledged a write {:?} after the heal",
        healed_at.elapsed()
    );
    writes
        .acked
        .push((shared, Bytes::from("majority"), shared_revision));
    writes.check_on_every_node(&stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_heal_the_cluster_accepts_writes_through_every_node() {
    let Some(_) = require_server() else { return };
    let cluster = NatsCluster::start_partitionable(3).await;
    assert_connectivity(&cluster, &[&[0, 1, 2]], "started").await;
    let stores = store_per_node(&cluster).await;
    let mut writes = Writes::default();
    let leader = leader_seen_by(&cluster, 0, FAILOVER_TIMEOUT).await;
    let follower = (0..3).find(|&node| node != leader).expect("three nodes");
    let others: Vec<usize> = (0..3).filter(|&node| node != follower).collect();

    // Cut off a follower: the leader keeps its quorum, so the majority never stops.
    cluster.partition(&[&[follower], &others]);
    let stop = Arc::new(AtomicBool::new(false));
    let cut_off = write_from_the_cut_off_side(stores[follower].clone(), "cut-off", stop.clone());
    assert_connectivity(&cluster, &[&[follower], &others], "partitioned").await;
    for &node in &others {
        writes
            .put_until_acked(
                &stores[node],
                &format!("split.n{node}"),
                REQUEST_TIMEOUT * 3,
            )
            .await;
    }
    stop.store(true, Ordering::Release);
    let cut_off = cut_off.await.expect("the cut-off writer");
    eprintln!(
        "writes through the cut-off follower n{follower}: {} ambiguous, {} unavailable",
        cut_off.ambiguous.len(),
        cut_off.unavailable
    );
    assert!(
        cut_off.wrong.is_empty(),
        "writes through the cut-off follower: {:?}",
        cut_off.wrong
    );
    assert!(
        !cut_off.ambiguous.is_empty() || cut_off.unavailable > 0,
        "no write went through the cut-off follower"
    );
    writes.unknown.extend(cut_off.ambiguous);

    cluster.heal();
    let healed_at = Instant::now();
    for (node, store) in stores.iter().enumerate() {
        writes
            .put_until_acked(store, &format!("healed.n{node}"), CATCH_UP_TIMEOUT)
            .await;
    }
    eprintln!(
        "every node acknowledged a write {:?} after the heal",
        healed_at.elapsed()
    );
    assert_connectivity(&cluster, &[&[0, 1, 2]], "healed").await;
    writes.check_on_every_node(&stores).await;
}

/// A refusal is an answer about the key's state, so it must be as linearizable as a read. A
/// stream leader cut off from the majority (and not yet aware of it) refuses conditional writes
/// from its own, old state without going through the quorum; the store must confirm a refusal
/// before reporting it, so that through the isolated leader every refused write either fails
/// (`Unavailable` or `Ambiguous`) or names the revision the majority wrote, never the one the
/// isolated leader still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_through_an_isolated_stream_leader_never_reports_its_old_state() {
    let Some(_) = require_server() else { return };
    let cluster = NatsCluster::start_partitionable(3).await;
    assert_connectivity(&cluster, &[&[0, 1, 2]], "started").await;
    let stores = store_per_node(&cluster).await;
    let leader = leader_seen_by(&cluster, 0, FAILOVER_TIMEOUT).await;
    let majority: Vec<usize> = (0..3).filter(|&node| node != leader).collect();
    let shared = key("refusals.shared");
    let old = stores[leader]
        .set(&shared, Bytes::from("old"))
        .await
        .unwrap_or_else(|err| panic!("the first write of {shared}: {err}"));
    // Every replica has it before the cut, so the majority's next write comes after it.
    for &node in &majority {
        let started = Instant::now();
        while stores[node]
            .get_stale(&shared)
            .await
            .ok()
            .flatten()
            .map(|e| e.revision)
            != Some(old)
        {
            assert!(
                started.elapsed() < CATCH_UP_TIMEOUT,
                "n{node} never had {shared} at {old}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    cluster.isolate(leader);
    let mut writes = Writes::default();
    writes
        .put_until_acked(&stores[majority[0]], "majority", FAILOVER_TIMEOUT)
        .await;
    let new = loop {
        match stores[majority[0]].set(&shared, Bytes::from("new")).await {
            Ok(revision) => break revision,
            Err(err) => assert!(is_fault_outcome(&err), "put {shared}: {err}"),
        }
    };
    // A revision the key never had, so that every conditional write below is refused.
    let never = Revision::new(old.get() + 1_000_000).expect("not 0");
    let isolated = &stores[leader];
    let mut outcomes = Vec::new();
    let started = Instant::now();
    // The isolated leader answers from its old state until it notices that it lost its
    // quorum, a few seconds at most; keep asking a while longer.
    while started.elapsed() < REQUEST_TIMEOUT * 4 {
        let update = isolated.update(&shared, Bytes::from("x"), never).await;
        let create = isolated.create(&shared, Bytes::from("x")).await;
        let delete = isolated.delete(&shared, Some(never)).await.map(|_| ());
        for (operation, outcome) in [
            ("update", update.map(|_| ())),
            ("create", create.map(|_| ())),
            ("delete", delete),
        ] {
            let err = outcome.expect_err("a write through the isolated node applied");
            let reported = match &err {
                Error::RevisionMismatch { actual, .. } => *actual,
                Error::AlreadyExists { revision, .. } => Some(*revision),
                other => {
                    assert!(is_fault_outcome(other), "{operation} {shared}: {other}");
                    None
                }
            };
            assert_ne!(
                reported,
                Some(old),
                "STALE REFUSAL: {operation} {shared} through the isolated n{leader} reported \
                 revision {old}, overwritten by the majority at {new}: {err}"
            );
            assert!(
                reported.is_none() || reported == Some(new),
                "{operation} {shared} reported a revision no write produced: {err}"
            );
            outcomes.push((operation, err.to_string()));
        }
    }
    eprintln!(
        "{} refused writes through the isolated n{leader}, the first: {:?}",
        outcomes.len(),
        outcomes.first()
    );
    cluster.heal();
    assert_connectivity(&cluster, &[&[0, 1, 2]], "healed").await;
    writes.acked.push((shared, Bytes::from("new"), new));
    writes.check_on_every_node(&stores).await;
}
