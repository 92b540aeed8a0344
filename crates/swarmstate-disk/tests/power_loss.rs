//! Simulated power loss. A process kill leaves the OS page cache intact, so it cannot show
//! that a commit waited for the disk; here redb runs on a simulated disk that keeps what was
//! synced apart from what was only written. While writers run, the power is cut at random
//! moments: the image keeps the synced data and, of every write since, all, none, or a torn
//! part, at random. Each image must open, hold exactly the store's state at some revision no
//! older than the last acknowledged write (nothing acknowledged lost, no transaction half
//! applied, nothing invented), replay the same history, and answer idempotent retries with the
//! first outcome.
//!
//! `SWARMSTATE_POWER_CUTS` sets the number of cuts (default 30).

#[path = "support/storage.rs"]
mod storage;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use storage::{Cut, Rng, SimDisk};
use swarmstate_core::{
    Condition, Error, Key, Pattern, PutOptions, Revision, StateStore, StateStoreExt, TxnOp,
    WatchEvent, WatchStart,
};
use swarmstate_disk::{DiskStore, DiskStoreBuilder};

const KEYS: u64 = 24;

fn key(n: u64) -> Key {
    Key::new(format!("k.{n}")).unwrap()
}

fn builder(dir: &std::path::Path, disk: &SimDisk) -> DiskStoreBuilder {
    DiskStore::builder(dir)
        .storage(disk.backend())
        .history(1 << 20)
        .history_bytes(u64::MAX)
        .watch_buffer(1 << 20)
}

/// An acknowledged idempotent put: a retry must return `revision`.
#[derive(Debug, Clone)]
struct Idempotent {
    key: Key,
    id: String,
    value: String,
    revision: Revision,
}

#[derive(Default)]
struct Acks {
    max: AtomicU64,
    idempotent: Mutex<Vec<Idempotent>>,
    count: AtomicU64,
}

impl Acks {
    fn saw(&self, revision: Revision) {
        self.max.fetch_max(revision.get(), Ordering::SeqCst);
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

/// Held for reading by every write, and for writing while an image is checked: the writers
/// run only between checks, so the history (which every check replays whole) grows with the
/// number of cuts, not with the time the checks take.
type Gate = Arc<tokio::sync::RwLock<()>>;

async fn writer(store: DiskStore, acks: Arc<Acks>, stop: Arc<AtomicBool>, gate: Gate, seed: u64) {
    let mut rng = Rng(seed);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let _running = gate.read().await;
        n += 1;
        let k = key(rng.below(KEYS));
        match rng.below(4) {
            0 => {
                let revision = store.set(&k, format!("{seed}-{n}")).await.unwrap();
                acks.saw(revision);
            }
            1 => {
                let id = format!("w{seed}-{n}");
                let value = format!("{seed}-{n}-idem");
                let options = PutOptions::overwrite().idempotency_key(id.clone());
                let revision = store.put(&k, value.clone().into(), options).await.unwrap();
                acks.saw(revision);
                acks.idempotent.lock().unwrap().push(Idempotent {
                    key: k,
                    id,
                    value,
                    revision,
                });
            }
            2 => {
                let first = rng.below(KEYS);
                let ops: Vec<TxnOp> = (0..1 + rng.below(3))
                    .map(|i| TxnOp::put(&key((first + i) % KEYS), format!("{seed}-{n}-t{i}")))
                    .collect();
                let results = store.txn(ops).await.unwrap();
                if let Some(swarmstate_core::TxnResult::Put(revision)) = results.last() {
                    acks.saw(*revision);
                }
            }
            _ => {
                let Some(entry) = store.get(&k).await.unwrap() else {
                    continue;
                };
                match store.delete(&k, Some(entry.revision)).await {
                    Ok(Some(revision)) => acks.saw(revision),
                    Ok(None) => {}
                    Err(err) if err.is_conflict() => {}
                    Err(err) => panic!("{err}"),
                }
                let check = TxnOp::check(&k, Condition::Absent);
                match store
                    .txn(vec![check, TxnOp::put(&key(KEYS + 1), "absent")])
                    .await
                {
                    Ok(results) => {
                        if let Some(swarmstate_core::TxnResult::Put(revision)) = results.last() {
                            acks.saw(*revision);
                        }
                    }
                    Err(err) if err.is_conflict() => {}
                    Err(err) => panic!("{err}"),
                }
            }
        }
    }
}

/// The store's state after the changes of `log` up to `revision`.
fn state_at(log: &[WatchEvent], revision: u64) -> BTreeMap<Key, (bytes::Bytes, Revision)> {
    let mut state = BTreeMap::new();
    for event in log
        .iter()
        .take_while(|e| e.revision().unwrap().get() <= revision)
    {
        match event {
            WatchEvent::Put(entry) => {
                state.insert(entry.key.clone(), (entry.value.clone(), entry.revision));
            }
            WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
                state.remove(key);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    state
}

async fn next(watch: &mut swarmstate_core::WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .expect("an event within 60 s")
        .expect("the watch goes on")
}

/// Opens `image` and checks it against the live store's `log`; returns the image's revision.
async fn check_image(
    image: Vec<u8>,
    acked: u64,
    idempotent: &[Idempotent],
    log: &Mutex<Vec<WatchEvent>>,
    cut: usize,
) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let disk = SimDisk::from_image(image);
    let store = builder(dir.path(), &disk)
        .open()
        .await
        .unwrap_or_else(|err| panic!("cut {cut}: the image does not open: {err}"));
    let mut snapshot = store
        .watch(&Pattern::All, WatchStart::Snapshot)
        .await
        .unwrap();
    let mut seen = BTreeMap::new();
    let revision = loop {
        match next(&mut snapshot).await {
            WatchEvent::Put(entry) => {
                seen.insert(entry.key, (entry.value, entry.revision));
            }
            WatchEvent::CaughtUp { revision } => break revision.map_or(0, Revision::get),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        revision >= acked,
        "cut {cut}: the image is at revision {revision}, but {acked} was acknowledged"
    );
    // The live log may trail the store a little.
    let log = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            {
                let log = log.lock().unwrap();
                if log.len() as u64 >= revision {
                    return log[..revision as usize].to_vec();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the live log reaches the image's revision");
    assert_eq!(
        seen,
        state_at(&log, revision),
        "cut {cut}: the entries at {revision}"
    );
    if revision > 0 {
        let mut replay = store
            .watch(&Pattern::All, WatchStart::FromRevision(Revision::FIRST))
            .await
            .unwrap();
        for expected in &log {
            assert_eq!(&next(&mut replay).await, expected, "cut {cut}: the history");
        }
    }
    for write in idempotent.iter().rev().take(20) {
        let options = PutOptions::overwrite().idempotency_key(write.id.clone());
        let retried = store
            .put(&write.key, write.value.clone().into(), options)
            .await
            .unwrap();
        assert_eq!(
            retried, write.revision,
            "cut {cut}: a retry of {}",
            write.id
        );
    }
    store.close().await.unwrap();
    revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_power_cut_leaves_an_image_at_or_after_the_last_acknowledged_write() {
    let cuts: usize = std::env::var("SWARMSTATE_POWER_CUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let disk = SimDisk::new();
    let store = builder(dir.path(), &disk).open().await.unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut live = store
        .watch(&Pattern::All, WatchStart::FromRevision(Revision::FIRST))
        .await
        .unwrap();
    let logger = tokio::spawn({
        let log = log.clone();
        async move {
            while let Some(event) = live.next().await {
                assert!(
                    !matches!(event, WatchEvent::Lagged { .. }),
                    "the log lagged"
                );
                log.lock().unwrap().push(event);
            }
        }
    });
    let acks = Arc::new(Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Gate::default();
    let writers: Vec<_> = (1..=4)
        .map(|seed| {
            let (acks, stop, gate) = (acks.clone(), stop.clone(), gate.clone());
            tokio::spawn(writer(store.clone(), acks, stop, gate, seed * 7919))
        })
        .collect();
    let mut rng = Rng(0x5eed);
    let mut revisions = Vec::new();
    for cut in 0..cuts {
        tokio::time::sleep(Duration::from_micros(rng.below(4000))).await;
        // Read before the cut: everything acknowledged by now was synced before it.
        let acked = acks.max.load(Ordering::SeqCst);
        let idempotent = acks.idempotent.lock().unwrap().clone();
        let how = if cut % 5 == 0 {
            Cut::DropAll
        } else {
            Cut::Random(rng.next())
        };
        let image = disk.cut(how);
        let _paused = gate.write().await;
        revisions.push(check_image(image, acked, &idempotent, &log, cut).await);
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    store.close().await.unwrap();
    logger.await.unwrap();
    let checked = acks.count.load(Ordering::SeqCst);
    println!(
        "power cuts: {cuts}, acknowledged writes: {checked}, syncs: {}, images at revisions {:?}, lost: 0",
        disk.syncs(),
        revisions
    );
    assert!(
        checked > cuts as u64,
        "the writers made progress: {checked}"
    );
}

#[tokio::test]
async fn a_failed_sync_poisons_the_store_and_the_disk_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SimDisk::new();
    let store = builder(dir.path(), &disk).open().await.unwrap();
    let kept = store.set(&key(1), "kept").await.unwrap();
    disk.fail_syncs(true);
    let err = store.set(&key(2), "lost?").await.unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    for err in [
        store.get(&key(1)).await.unwrap_err(),
        store.set(&key(3), "x").await.unwrap_err(),
        store
            .watch(&Pattern::All, WatchStart::Now)
            .await
            .err()
            .unwrap(),
    ] {
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains("injected fsync failure"), "{err}");
    }
    store.close().await.unwrap();
    let reopened_dir = tempfile::tempdir().unwrap();
    let image = SimDisk::from_image(disk.cut(Cut::DropAll));
    let store = builder(reopened_dir.path(), &image).open().await.unwrap();
    assert_eq!(store.get(&key(1)).await.unwrap().unwrap().revision, kept);
    assert_eq!(store.get(&key(3)).await.unwrap(), None);
}
