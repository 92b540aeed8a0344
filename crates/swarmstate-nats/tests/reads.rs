//! Linearizable reads by default, stale reads only on request: on a 3-node cluster a replica
//! that has just restarted answers direct gets before it has caught up. `NatsStore::get` goes
//! to the stream leader and never returns a value older than an acknowledged write;
//! `NatsStore::get_stale` may.
//!
//! A default read leaves a commit barrier in the bucket, on a reserved key that replaces the
//! previous one; the watch tests below hold watchers to not mistaking the holes that leaves for
//! lost changes, while still lagging, at the first change they missed, over the holes that
//! overwritten keys leave.

use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use swarmstate_core::{Key, Pattern, Revision, StateStore, StateStoreExt, WatchEvent, WatchStart};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, NatsServer, require_server};

const BUCKET: &str = "reads";

/// A single node and a store on it (keep the server bound: dropping it stops the node).
async fn single_node() -> (NatsServer, NatsStore) {
    let server = NatsServer::start().await;
    let store = NatsStore::builder(server.url())
        .bucket(BUCKET)
        .connect()
        .await
        .expect("store connects");
    (server, store)
}

/// Writes until the write is acknowledged, riding out a leader election.
async fn write(store: &NatsStore, key: &Key, value: String) -> Revision {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store.set(key, value.clone()).await {
            Ok(revision) => return revision,
            Err(err) if Instant::now() < deadline => {
                eprintln!("write {key}={value} not acknowledged yet: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("write {key}={value}: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_reads_are_never_stale_while_opt_in_stale_reads_may_be() {
    if require_server().is_none() {
        return;
    }
    let mut cluster = NatsCluster::start(3).await;
    let writer = NatsStore::builder(cluster.connect_url())
        .bucket(BUCKET)
        .replicas(3)
        .connect()
        .await
        .expect("writer connects");
    let keys: Vec<Key> = (0..20)
        .map(|i| Key::new(format!("reads.k{i}")).unwrap())
        .collect();
    for key in &keys {
        write(&writer, key, "old".into()).await;
    }

    // A follower misses a round of writes, comes back, and is read from at once.
    let leader = cluster
        .stream_leader(&format!("KV_{BUCKET}"))
        .await
        .expect("the bucket has a leader");
    let follower = (leader + 1) % cluster.len();
    cluster.node_mut(follower).kill();
    let mut acknowledged = Vec::new();
    for key in &keys {
        acknowledged.push(write(&writer, key, "new".into()).await);
    }
    cluster.node_mut(follower).restart().await;
    // This client's only server is the restarted follower, so its direct gets are answered
    // there; the linearizable path forwards to the leader.
    let reader = NatsStore::builder(cluster.node(follower).url())
        .bucket(BUCKET)
        .connect()
        .await
        .expect("reader connects to the restarted follower");

    let (mut stale_answers, mut default_reads) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        for (key, acked) in keys.iter().zip(&acknowledged) {
            if let Ok(stale) = reader.get_stale(key).await {
                let fresh = stale.as_ref().is_some_and(|e| e.revision >= *acked);
                stale_answers += usize::from(!fresh);
            }
            let entry = reader
                .get(key)
                .await
                .expect("linearizable read")
                .expect("an acknowledged write is visible");
            assert!(
                entry.revision >= *acked && &entry.value[..] == b"new",
                "the default read returned {entry:?}, older than the acknowledged revision {acked}"
            );
            default_reads += 1;
        }
    }
    // Then read right behind each acknowledged write, where a follower applying the write a
    // moment after the leader acknowledged it answers with the previous value.
    let hot = Key::new("reads.hot").unwrap();
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        round += 1;
        let acked = write(&writer, &hot, round.to_string()).await;
        if let Ok(stale) = reader.get_stale(&hot).await {
            stale_answers += usize::from(stale.is_none_or(|e| e.revision < acked));
        }
        let entry = reader.get(&hot).await.expect("linearizable read");
        assert!(
            entry.as_ref().is_some_and(|e| e.revision >= acked),
            "the default read returned {entry:?}, older than the acknowledged revision {acked}"
        );
        default_reads += 1;
    }
    eprintln!(
        "{default_reads} default reads, none stale; {stale_answers} opt-in stale reads \
         returned a value older than an acknowledged write"
    );
    assert!(default_reads > 0);
    writer.close().await.unwrap();
    reader.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holes_concurrent_reads_leave_do_not_lag_a_watcher() {
    if require_server().is_none() {
        return;
    }
    let (_server, store) = single_node().await;
    let watched = Key::new("reads.watched").unwrap();
    store.set(&watched, "0").await.unwrap();
    // Readers on one client share its barrier slots, so barriers replace each other while a
    // writer's changes are interleaved with them. Each barrier lists the last 128 of its slot,
    // so a watcher whose consumer starts more than 128 barriers of one slot late lags, as it
    // must (it cannot tell those holes from changes); the readers pause 5 ms between reads so
    // that a slot takes at least 640 ms to get there, far longer than a consumer takes to
    // start even on a loaded machine, while the reads still interleave with every write.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (store, key, stop) = (store.clone(), watched.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(Ordering::Acquire) {
                    store.get(&key).await.expect("a read on a healthy server");
                    reads += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                reads
            })
        })
        .collect();
    // A watch from a revision the readers are about to reach: its consumer starts a moment
    // later, behind barriers that were replaced meanwhile, and must catch up through their
    // holes. Barriers replaced after the start revision are no lost history, so the watch
    // is never refused as compacted.
    let next = store.set(&watched, "0").await.unwrap().next();
    let mut live = store
        .watch(&Pattern::All, WatchStart::FromRevision(next))
        .await
        .unwrap_or_else(|err| panic!("watch from {next}: {err}"));
    let mut written = Vec::new();
    for i in 1..=40 {
        written.push(store.set(&watched, i.to_string()).await.unwrap());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Release);
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.expect("reader");
    }
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("the watcher keeps receiving")
            .expect("the watch stream does not end");
        match event {
            WatchEvent::Put(entry) => seen.push(entry.revision),
            other => panic!(
                "after {} of {} changes: {other:?}",
                seen.len(),
                written.len()
            ),
        }
    }
    eprintln!("{reads} reads beside {} watched writes", written.len());
    assert_eq!(seen, written, "every change, in order, nothing else");
    assert!(
        reads > 100,
        "only {reads} reads: the barriers were not exercised"
    );
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_a_changed_key_leaves_still_lags_the_watcher_where_it_missed_a_change() {
    if require_server().is_none() {
        return;
    }
    let (_server, store) = single_node().await;
    let hot = Key::new("reads.hot").unwrap();
    let mut lags = 0;
    for attempt in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        // Readers leave barrier holes; writers overwrite one watched key, so some holes are
        // changes the watcher selects.
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (store, key, stop) = (store.clone(), hot.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Acquire) {
                        store.get(&key).await.expect("a read on a healthy server");
                    }
                })
            })
            .collect();
        let from = store.set(&hot, "start").await.unwrap().next();
        // Only barriers were replaced since `from`: no history is lost yet.
        let events = store
            .watch(&Pattern::All, WatchStart::FromRevision(from))
            .await
            .unwrap_or_else(|err| panic!("attempt {attempt}: watch from {from}: {err}"));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (store, key) = (store.clone(), hot.clone());
                tokio::spawn(async move {
                    let mut written = Vec::new();
                    for i in 0..10 {
                        written.push(store.set(&key, format!("w{w}-{i}")).await.unwrap());
                    }
                    written
                })
            })
            .collect();
        let mut written = Vec::new();
        for writer in writers {
            written.extend(writer.await.expect("writer"));
        }
        stop.store(true, Ordering::Release);
        for reader in readers {
            reader.await.expect("reader");
        }
        written.sort_unstable();
        let last = *written.last().unwrap();
        let (delivered, lagged) = follow(events, last).await;
        assert!(
            delivered.windows(2).all(|pair| pair[0] < pair[1]),
            "attempt {attempt}: out of order: {delivered:?}"
        );
        match lagged {
            Some(resume_from) => {
                lags += 1;
                assert!(
                    delivered.iter().all(|revision| *revision < resume_from),
                    "attempt {attempt}: delivered {delivered:?} at or after Lagged {resume_from}"
                );
                let missed: Vec<_> = written
                    .iter()
                    .filter(|w| **w < resume_from && !delivered.contains(w))
                    .collect();
                assert!(
                    missed.is_empty(),
                    "attempt {attempt}: {missed:?} skipped silently before Lagged {resume_from}"
                );
            }
            None => assert_eq!(delivered, written, "attempt {attempt}: every change"),
        }
    }
    eprintln!("{lags} of 5 watches lagged over a missed change; the others saw every change");
    store.close().await.unwrap();
}

/// The revisions of the puts a watch delivers up to `last`, and where it lagged if it did.
async fn follow(
    mut events: swarmstate_core::WatchStream,
    last: Revision,
) -> (Vec<Revision>, Option<Revision>) {
    let mut delivered = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the watch keeps going")
            .expect("the watch ends only with Lagged");
        match event {
            WatchEvent::Put(entry) if entry.revision >= last => {
                delivered.push(entry.revision);
                return (delivered, None);
            }
            WatchEvent::Put(entry) => delivered.push(entry.revision),
            WatchEvent::Lagged { resume_from } => return (delivered, Some(resume_from)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The holes that replaced read barriers leave after a revision are no lost history: a watch
/// replaying from there (as a watcher resuming after `Lagged` does) starts, and gets every
/// change since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_before_replaced_barriers_is_not_compacted() {
    if require_server().is_none() {
        return;
    }
    let (_server, store) = single_node().await;
    let first = Key::new("reads.first").unwrap();
    let second = Key::new("reads.second").unwrap();
    let from = store.set(&first, "1").await.unwrap();
    // One read at a time: each barrier goes to the same slot and replaces the one before.
    for _ in 0..5 {
        store.get(&first).await.expect("a read on a healthy server");
    }
    let then = store.set(&second, "2").await.unwrap();
    let mut events = store
        .watch(&Pattern::All, WatchStart::FromRevision(from))
        .await
        .unwrap_or_else(|err| panic!("watch from {from}, behind only replaced barriers: {err}"));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the watch keeps going")
            .expect("the watch does not end");
        match event {
            WatchEvent::Put(entry) => seen.push((entry.key, entry.revision)),
            other => panic!("after {seen:?}: {other:?}"),
        }
    }
    assert_eq!(seen, [(first, from), (second, then)]);
    store.close().await.unwrap();
}
