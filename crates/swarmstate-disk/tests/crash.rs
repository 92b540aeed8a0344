//! Crash test: a child process writes to a `DiskStore` (concurrent puts, transactions,
//! conditional deletes, some idempotent) and prints each acknowledgement as it gets it; the
//! parent kills it with SIGKILL at a random moment, reopens the directory and checks that
//! every acknowledged write is in the history at its revision with its content (so present,
//! or superseded by a later change), that every transaction is applied whole or not at all,
//! that the entries are exactly what the history adds up to, that revisions only grew, and
//! that an idempotent retry returns the first outcome. Then the next child goes on in the
//! same directory.
//!
//! `SWARMSTATE_CRASH_KILLS` sets the number of kills (default 20); `SWARMSTATE_CRASH_SEED`
//! replays a run. `scripts/crash-loop` runs 200 of them in a release build.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use swarmstate_core::{
    Key, Pattern, PutOptions, Revision, StateStore, StateStoreExt, TxnOp, TxnResult, WatchEvent,
    WatchStart,
};
use swarmstate_disk::{DiskStore, DiskStoreBuilder};

const CHILD_DIR: &str = "SWARMSTATE_CRASH_CHILD_DIR";
const CHILD_CYCLE: &str = "SWARMSTATE_CRASH_CHILD_CYCLE";
const KEYS: u64 = 32;
const WRITERS: u64 = 6;

fn key(n: u64) -> Key {
    Key::new(format!("k.{n}")).unwrap()
}

fn builder(dir: &std::path::Path) -> DiskStoreBuilder {
    DiskStore::builder(dir)
        .history(10_000_000)
        .history_bytes(u64::MAX)
}

/// The child's side: runs until it is killed.
#[test]
#[ignore = "the child process of the crash test, started by it with SWARMSTATE_CRASH_CHILD_DIR set"]
fn crash_child() {
    let dir = std::env::var(CHILD_DIR).expect("started by the crash test");
    let cycle: u64 = std::env::var(CHILD_CYCLE).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = builder(std::path::Path::new(&dir)).open().await.unwrap();
        let last = last_revision(&store).await;
        say(format_args!("ready {last}"));
        let counter = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(child_writer(store.clone(), cycle, w, counter.clone())))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

// One line per acknowledgement, written whole and flushed before the next write starts. On
// stderr: the test harness writes its own lines to stdout.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stderr().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

async fn child_writer(store: DiskStore, cycle: u64, writer: u64, counter: Arc<AtomicU64>) {
    let mut rng = cycle.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (writer + 1);
    loop {
        // A write that finds nothing to do completes without waiting: let the others run.
        tokio::task::yield_now().await;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let tag = format!("c{cycle}-w{writer}-{n}");
        let k = key(rng % KEYS);
        match (rng >> 8) % 4 {
            0 => {
                let revision = store.set(&k, tag.clone()).await.unwrap();
                say(format_args!("put {revision} {k} {tag}"));
            }
            1 => {
                let options = PutOptions::overwrite().idempotency_key(tag.clone());
                let revision = store.put(&k, tag.clone().into(), options).await.unwrap();
                say(format_args!("iput {revision} {k} {tag}"));
            }
            2 => {
                let first = rng % KEYS;
                let width = 2 + (rng >> 16) % 3;
                let ops: Vec<(Key, String)> = (0..width)
                    .map(|i| (key((first + i) % KEYS), format!("{tag}-t{i}")))
                    .collect();
                // The intent first: the parent checks every transaction it sees in the
                // history, acknowledged or not, for all or nothing.
                let listed: Vec<String> = ops.iter().map(|(k, v)| format!("{k}={v}")).collect();
                say(format_args!("try-txn {}", listed.join(" ")));
                let txn = ops.iter().map(|(k, v)| TxnOp::put(k, v.clone())).collect();
                let results = store.txn(txn).await.unwrap();
                let acked: Vec<String> = results
                    .iter()
                    .zip(&ops)
                    .map(|(result, (k, v))| match result {
                        TxnResult::Put(revision) => format!("{revision}:{k}={v}"),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                say(format_args!("txn {}", acked.join(" ")));
            }
            _ => {
                let Some(entry) = store.get(&k).await.unwrap() else {
                    continue;
                };
                match store.delete(&k, Some(entry.revision)).await {
                    Ok(Some(revision)) => say(format_args!("del {revision} {k}")),
                    Ok(None) => {}
                    Err(err) if err.is_conflict() => {}
                    Err(err) => panic!("{err}"),
                }
            }
        }
    }
}

async fn last_revision(store: &DiskStore) -> u64 {
    let mut snapshot = store
        .watch(&Pattern::All, WatchStart::Snapshot)
        .await
        .unwrap();
    loop {
        match snapshot
            .next()
            .await
            .expect("a snapshot ends with CaughtUp")
        {
            WatchEvent::CaughtUp { revision } => return revision.map_or(0, Revision::get),
            WatchEvent::Put(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// What an acknowledgement says is at a revision: a value, or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Acked {
    Put(Key, String),
    Delete(Key),
}

#[derive(Debug, Default)]
struct Record {
    acked: BTreeMap<u64, Acked>,
    // The idempotent puts: revision, key, idempotency key (the value is the same string).
    idempotent: Vec<(u64, Key, String)>,
    // Every transaction tried: its writes, by value.
    txns: Vec<Vec<(Key, String)>>,
}

impl Record {
    fn parse(&mut self, line: &str) -> Option<u64> {
        let mut words = line.split(' ');
        let kind = words.next()?;
        let parse_key = |text: &str| Key::new(text).unwrap();
        match kind {
            "put" | "iput" => {
                let revision: u64 = words.next()?.parse().ok()?;
                let k = parse_key(words.next()?);
                let value = words.next()?.to_owned();
                if kind == "iput" {
                    self.idempotent.push((revision, k.clone(), value.clone()));
                }
                self.acked.insert(revision, Acked::Put(k, value));
                Some(revision)
            }
            "del" => {
                let revision: u64 = words.next()?.parse().ok()?;
                let k = parse_key(words.next()?);
                self.acked.insert(revision, Acked::Delete(k));
                Some(revision)
            }
            "try-txn" => {
                let writes = words
                    .map(|write| {
                        let (k, v) = write.split_once('=').unwrap();
                        (parse_key(k), v.to_owned())
                    })
                    .collect();
                self.txns.push(writes);
                None
            }
            "txn" => {
                let mut last = None;
                for write in words {
                    let (revision, rest) = write.split_once(':').unwrap();
                    let (k, v) = rest.split_once('=').unwrap();
                    let revision: u64 = revision.parse().unwrap();
                    self.acked
                        .insert(revision, Acked::Put(parse_key(k), v.to_owned()));
                    last = Some(revision);
                }
                last
            }
            _ => None,
        }
    }
}

struct Checked {
    revision: u64,
    acked: usize,
    txns_seen: usize,
}

/// Reopens the directory and checks it against everything acknowledged so far.
async fn check(dir: &std::path::Path, record: &Record, kill: usize) -> Checked {
    let store = builder(dir)
        .open()
        .await
        .unwrap_or_else(|err| panic!("kill {kill}: the store does not reopen: {err}"));
    let last = last_revision(&store).await;
    let mut history: Vec<WatchEvent> = Vec::with_capacity(last as usize);
    if last > 0 {
        let mut replay = store
            .watch(&Pattern::All, WatchStart::FromRevision(Revision::FIRST))
            .await
            .unwrap();
        while (history.len() as u64) < last {
            let event = tokio::time::timeout(Duration::from_secs(60), replay.next())
                .await
                .expect("the replay goes on")
                .expect("the replay holds the whole history");
            history.push(event);
        }
    }
    for (index, event) in history.iter().enumerate() {
        assert_eq!(
            event.revision().map(Revision::get),
            Some(index as u64 + 1),
            "kill {kill}: revisions are contiguous"
        );
    }
    // Every acknowledged write is in the history, at its revision, with its content.
    for (revision, acked) in &record.acked {
        let event = history.get(*revision as usize - 1).unwrap_or_else(|| {
            panic!("kill {kill}: revision {revision} was acknowledged ({acked:?}) but the store ends at {last}")
        });
        let found = match event {
            WatchEvent::Put(entry) => Acked::Put(
                entry.key.clone(),
                String::from_utf8(entry.value.to_vec()).unwrap(),
            ),
            WatchEvent::Delete { key, .. } => Acked::Delete(key.clone()),
            other => panic!("kill {kill}: unexpected {other:?}"),
        };
        assert_eq!(
            &found, acked,
            "kill {kill}: revision {revision} lost its write"
        );
    }
    // Transactions: all of their writes at consecutive revisions, or none.
    // Every value written is unique, so a value names its write.
    let by_value: HashMap<&[u8], u64> = history
        .iter()
        .filter_map(|event| match event {
            WatchEvent::Put(entry) => Some((entry.value.as_ref(), entry.revision.get())),
            _ => None,
        })
        .collect();
    let mut txns_seen = 0;
    for txn in &record.txns {
        let found: Vec<Option<u64>> = txn
            .iter()
            .map(|(_, value)| by_value.get(value.as_bytes()).copied())
            .collect();
        if found.iter().all(Option::is_none) {
            continue;
        }
        let revisions: Vec<u64> = found
            .iter()
            .map(|revision| {
                revision.unwrap_or_else(|| {
                    panic!("kill {kill}: a transaction is half applied: {txn:?} at {found:?}")
                })
            })
            .collect();
        assert!(
            revisions.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "kill {kill}: a transaction's writes are not together: {revisions:?}"
        );
        txns_seen += 1;
    }
    // The entries are exactly what the history adds up to.
    let mut expected = BTreeMap::new();
    for event in &history {
        match event {
            WatchEvent::Put(entry) => {
                expected.insert(entry.key.clone(), (entry.value.clone(), entry.revision));
            }
            WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
                expected.remove(key);
            }
            _ => {}
        }
    }
    let mut entries = BTreeMap::new();
    for k in store.list_keys(&Pattern::All).await.unwrap() {
        let entry = store.get(&k).await.unwrap().unwrap();
        entries.insert(k, (entry.value, entry.revision));
    }
    assert_eq!(entries, expected, "kill {kill}: the entries");
    // Idempotent retries return the first outcome (the latest ones are in their window).
    for (revision, k, id) in record.idempotent.iter().rev().take(10) {
        let options = PutOptions::overwrite().idempotency_key(id.clone());
        let retried = store.put(k, id.clone().into(), options).await.unwrap();
        assert_eq!(retried.get(), *revision, "kill {kill}: a retry of {id}");
    }
    assert_eq!(
        last_revision(&store).await,
        last,
        "the retries wrote nothing"
    );
    store.close().await.unwrap();
    Checked {
        revision: last,
        acked: record.acked.len(),
        txns_seen,
    }
}

/// This test binary again, running only `crash_child` on `dir` for cycle `cycle`.
fn child(dir: &std::path::Path, cycle: usize) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_CYCLE, cycle.to_string());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_cannot_open_a_held_directory_and_is_told_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = builder(dir.path()).open().await.unwrap();
    let output = child(dir.path(), 0).output().unwrap();
    assert!(
        !output.status.success(),
        "the second process opened the store"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let holder = format!("in use by process {}", std::process::id());
    assert!(
        stderr.contains(&holder),
        "the error names this process: {stderr}"
    );
    assert!(!stderr.contains("\nready "), "{stderr}");
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_9() {
    let kills: usize = std::env::var("SWARMSTATE_CRASH_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("SWARMSTATE_CRASH_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash test: {kills} kills, SWARMSTATE_CRASH_SEED={seed}");
    let mut rng = seed | 1;
    let mut random = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below
    };
    let dir = tempfile::tempdir().unwrap();
    let mut record = Record::default();
    let mut previous = 0u64;
    let mut totals = (0usize, 0usize);
    for kill in 0..kills {
        let mut child = child(dir.path(), kill)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stderr.take().unwrap();
        let (lines, received) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            // Only whole lines: the kill can cut the last one short.
            while stdout.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(whole) = line.strip_suffix('\n')
                    && lines.send(whole.to_owned()).is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        // Wait for the child to open the store, then let it write for a random while.
        let started = Instant::now();
        let ready = loop {
            let Ok(line) = received.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                panic!("kill {kill}: the child did not start within 60 s")
            };
            if let Some(revision) = line.strip_prefix("ready ") {
                break revision.parse::<u64>().unwrap();
            }
        };
        assert!(
            ready >= previous,
            "kill {kill}: the store reopened at {ready}, before {previous}"
        );
        let run_for = Duration::from_millis(5 + random(300));
        let mut acked_now = Vec::new();
        loop {
            match received.recv_timeout(Duration::from_millis(2)) {
                Ok(line) => acked_now.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if started.elapsed() >= run_for {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "kill {kill}: the child was killed");
        reader.join().unwrap();
        acked_now.extend(received.try_iter());
        for line in &acked_now {
            if let Some(revision) = record.parse(line) {
                assert!(
                    revision > ready,
                    "kill {kill}: acknowledged revision {revision}, not after {ready}"
                );
            }
        }
        let checked = check(dir.path(), &record, kill).await;
        assert!(checked.revision >= ready);
        previous = checked.revision;
        totals = (checked.acked, checked.txns_seen);
    }
    println!(
        "kills: {kills}, acknowledged writes checked: {}, transactions found whole: {}, final revision: {previous}, lost: 0",
        totals.0, totals.1
    );
    assert!(totals.0 > kills, "the children made progress: {}", totals.0);
}
