//! `DiskStore` beside its baselines, in one run, as ratios (the machine is shared and noisy, so
//! only ratios of rows measured side by side mean anything):
//!
//! - put, 1 in flight, against a raw redb loop doing one write transaction and one
//!   `Durability::Immediate` commit per put on the same disk;
//! - put, 16 in flight, against put, 1 in flight (group commit at work);
//! - both again with every sync taking 1 ms longer (what a cloud disk's fsync costs; this
//!   machine's fsync is too fast to show batching);
//! - get against `MemoryStore`'s get;
//! - the time to open a store of 100,000 keys with a full history.
//!
//! Rows alternate over several rounds and the median of each is reported. Files live under
//! the target directory (a real disk: /tmp may be tmpfs, where fsync costs nothing).
//!
//! Run with `cargo bench -p swarmstate-disk --bench disk` (`-- --quick` for fewer rounds).

#[path = "../tests/support/storage.rs"]
mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, Durability, TableDefinition};
use swarmstate_core::{Key, MemoryStore, PutOptions, StateStore, TxnOp};
use swarmstate_disk::DiskStore;
use tempfile::TempDir;
use tokio::runtime::Runtime;

const KEYS: usize = 1_000;
const RAW: TableDefinition<&str, &[u8]> = TableDefinition::new("raw");
const RAW_HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("raw_history");

struct Setup {
    keys: Vec<Key>,
    value: Bytes,
    root: PathBuf,
}

impl Setup {
    fn dir(&self) -> TempDir {
        tempfile::tempdir_in(&self.root).unwrap()
    }
}

/// Puts per second of a raw redb loop: one write transaction and one Immediate commit per put.
fn raw_redb(setup: &Setup, db: &Database, puts: usize) -> f64 {
    let started = Instant::now();
    for i in 0..puts {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = txn.open_table(RAW).unwrap();
            let key = setup.keys[i % KEYS].as_str();
            table.insert(key, setup.value.as_ref()).unwrap();
        }
        txn.commit().unwrap();
    }
    puts as f64 / started.elapsed().as_secs_f64()
}

/// The raw loop writing what DiskStore writes per put: the entry and a history record.
fn raw_redb_two_tables(setup: &Setup, db: &Database, puts: usize) -> f64 {
    let started = Instant::now();
    for i in 0..puts {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = txn.open_table(RAW).unwrap();
            let key = setup.keys[i % KEYS].as_str();
            table.insert(key, setup.value.as_ref()).unwrap();
            let mut history = txn.open_table(RAW_HISTORY).unwrap();
            history.insert(i as u64, setup.value.as_ref()).unwrap();
        }
        txn.commit().unwrap();
    }
    puts as f64 / started.elapsed().as_secs_f64()
}

/// The two-table loop behind a thread of its own, driven from a task that hands each put over
/// and waits for the answer: what any async caller of a blocking commit pays, without an engine.
async fn raw_redb_handed_off(setup: &Setup, db: Arc<Database>, puts: usize) -> f64 {
    type Put = (usize, tokio::sync::oneshot::Sender<()>);
    let (sender, receiver) = std::sync::mpsc::channel::<Put>();
    let keys: Vec<String> = setup.keys.iter().map(|key| key.to_string()).collect();
    let value = setup.value.clone();
    let thread = std::thread::spawn(move || {
        for (i, done) in receiver {
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate).unwrap();
            {
                let mut table = txn.open_table(RAW).unwrap();
                table
                    .insert(keys[i % KEYS].as_str(), value.as_ref())
                    .unwrap();
                let mut history = txn.open_table(RAW_HISTORY).unwrap();
                history.insert(i as u64, value.as_ref()).unwrap();
            }
            txn.commit().unwrap();
            let _ = done.send(());
        }
    });
    let started = Instant::now();
    let caller = tokio::spawn(async move {
        for i in 0..puts {
            let (done, answered) = tokio::sync::oneshot::channel();
            sender.send((i, done)).unwrap();
            answered.await.unwrap();
        }
    });
    caller.await.unwrap();
    let rate = puts as f64 / started.elapsed().as_secs_f64();
    thread.join().unwrap();
    rate
}

/// Puts per second through `store` with `in_flight` tasks, `puts` in all.
async fn put_rate(
    setup: &Setup,
    store: &Arc<dyn StateStore>,
    in_flight: usize,
    puts: usize,
) -> f64 {
    let per_task = puts / in_flight;
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|task| {
            let store = store.clone();
            let keys = setup.keys.clone();
            let value = setup.value.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let key = &keys[(task * per_task + i) % KEYS];
                    store
                        .put(key, value.clone(), PutOptions::overwrite())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (per_task * in_flight) as f64 / started.elapsed().as_secs_f64()
}

/// Gets per second, one task, over every key.
async fn get_rate(setup: &Setup, store: &dyn StateStore, gets: usize) -> f64 {
    let started = Instant::now();
    for i in 0..gets {
        std::hint::black_box(store.get(&setup.keys[i % KEYS]).await.unwrap());
    }
    gets as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

#[derive(Default)]
struct Row {
    name: &'static str,
    samples: Vec<f64>,
}

fn report(title: &str, rows: &mut [Row], ratios: &[(&str, usize, usize, f64)]) {
    println!("\n{title}");
    let medians: Vec<f64> = rows
        .iter_mut()
        .map(|row| median(&mut row.samples))
        .collect();
    for (row, median) in rows.iter().zip(&medians) {
        let spread: Vec<String> = row.samples.iter().map(|s| format!("{s:.0}")).collect();
        println!(
            "  {:<44} {:>12.0} /s   (rounds: {})",
            row.name,
            median,
            spread.join(" ")
        );
    }
    for (label, over, under, goal) in ratios {
        let ratio = medians[*over] / medians[*under];
        let verdict = if ratio >= *goal { "meets" } else { "BELOW" };
        println!("  {label:<44} {ratio:>12.2}x  (goal {goal}x: {verdict})");
    }
}

async fn open_store(dir: &Path) -> Arc<dyn StateStore> {
    Arc::new(DiskStore::open(dir).await.unwrap())
}

async fn open_slow(dir: &Path, delay: Duration) -> Arc<dyn StateStore> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("slow.redb"))
        .unwrap();
    let backend = storage::SlowSync {
        inner: redb::backends::FileBackend::new(file).unwrap(),
        delay,
    };
    Arc::new(
        DiskStore::builder(dir)
            .storage(backend)
            .open()
            .await
            .unwrap(),
    )
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 3 } else { 7 };
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("disk-bench");
    std::fs::create_dir_all(&root).unwrap();
    let setup = Setup {
        keys: (0..KEYS)
            .map(|i| Key::new(format!("bench.agents.agent-{i:05}.status")).unwrap())
            .collect(),
        value: Bytes::from(vec![b'x'; 64]),
        root,
    };
    let runtime = Runtime::new().unwrap();
    println!(
        "DiskStore benchmarks: {rounds} rounds, median of each row, files in {}",
        setup.root.display()
    );

    // Puts on this machine's disk.
    let puts = if quick { 1_000 } else { 3_000 };
    let mut rows = [
        Row {
            name: "raw redb: 1 write txn + Immediate commit per put",
            ..Row::default()
        },
        Row {
            name: "DiskStore put, 1 in flight",
            ..Row::default()
        },
        Row {
            name: "DiskStore put, 16 in flight",
            ..Row::default()
        },
        Row {
            name: "DiskStore put, 64 in flight",
            ..Row::default()
        },
        Row {
            name: "raw redb, entry + history record per put",
            ..Row::default()
        },
        Row {
            name: "the same, handed to a thread from a task",
            ..Row::default()
        },
    ];
    for _ in 0..rounds {
        let dir = setup.dir();
        let db = Database::create(dir.path().join("raw.redb")).unwrap();
        rows[0].samples.push(raw_redb(&setup, &db, puts));
        drop(db);
        let dir = setup.dir();
        let db = Database::create(dir.path().join("raw.redb")).unwrap();
        rows[4].samples.push(raw_redb_two_tables(&setup, &db, puts));
        drop(db);
        let dir = setup.dir();
        let db = Arc::new(Database::create(dir.path().join("raw.redb")).unwrap());
        rows[5]
            .samples
            .push(runtime.block_on(raw_redb_handed_off(&setup, db, puts)));
        runtime.block_on(async {
            let dir = setup.dir();
            let store = open_store(dir.path()).await;
            rows[1]
                .samples
                .push(put_rate(&setup, &store, 1, puts).await);
            rows[2]
                .samples
                .push(put_rate(&setup, &store, 16, puts * 8).await);
            rows[3]
                .samples
                .push(put_rate(&setup, &store, 64, puts * 16).await);
            store.close().await.unwrap();
        });
    }
    report(
        "put, this machine's disk",
        &mut rows,
        &[
            ("put 1 in flight / raw redb", 1, 0, 0.8),
            ("put 1 in flight / raw redb, entry + history", 1, 4, 0.8),
            ("put 1 in flight / the same, handed off", 1, 5, 0.8),
            ("put 16 in flight / put 1 in flight", 2, 1, 8.0),
        ],
    );

    // Puts with every sync 1 ms slower.
    let delay = Duration::from_millis(1);
    let puts = if quick { 100 } else { 300 };
    let mut rows = [
        Row {
            name: "DiskStore put, 1 in flight, sync +1 ms",
            ..Row::default()
        },
        Row {
            name: "DiskStore put, 16 in flight, sync +1 ms",
            ..Row::default()
        },
        Row {
            name: "DiskStore put, 64 in flight, sync +1 ms",
            ..Row::default()
        },
    ];
    for _ in 0..rounds {
        runtime.block_on(async {
            let dir = setup.dir();
            let store = open_slow(dir.path(), delay).await;
            rows[0]
                .samples
                .push(put_rate(&setup, &store, 1, puts).await);
            rows[1]
                .samples
                .push(put_rate(&setup, &store, 16, puts * 16).await);
            rows[2]
                .samples
                .push(put_rate(&setup, &store, 64, puts * 32).await);
            store.close().await.unwrap();
        });
    }
    report(
        "put, every sync 1 ms slower",
        &mut rows,
        &[("put 16 in flight / put 1 in flight", 1, 0, 10.0)],
    );

    // Gets: both served from memory.
    let gets = if quick { 500_000 } else { 2_000_000 };
    let mut rows = [
        Row {
            name: "MemoryStore get",
            ..Row::default()
        },
        Row {
            name: "DiskStore get",
            ..Row::default()
        },
    ];
    runtime.block_on(async {
        let dir = setup.dir();
        let disk = open_store(dir.path()).await;
        let memory: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        for store in [&memory, &disk] {
            put_rate(&setup, store, 16, KEYS * 4).await;
        }
        for _ in 0..rounds {
            rows[0]
                .samples
                .push(get_rate(&setup, memory.as_ref(), gets).await);
            rows[1]
                .samples
                .push(get_rate(&setup, disk.as_ref(), gets).await);
        }
        disk.close().await.unwrap();
    });
    report(
        "get",
        &mut rows,
        &[("DiskStore get / MemoryStore get", 1, 0, 0.5)],
    );

    // Open time: 100,000 keys and a full history of 10,000 changes.
    runtime.block_on(async {
        let dir = setup.dir();
        let store = DiskStore::open(dir.path()).await.unwrap();
        let value = Bytes::from(vec![b'v'; 100]);
        let started = Instant::now();
        let chunks: Vec<_> = (0..100u64)
            .map(|chunk| {
                let store = store.clone();
                let value = value.clone();
                tokio::spawn(async move {
                    for batch in 0..10u64 {
                        let ops = (0..100u64)
                            .map(|i| {
                                let n = chunk * 1_000 + batch * 100 + i;
                                TxnOp::put(
                                    &Key::new(format!("open.k{n:06}")).unwrap(),
                                    value.clone(),
                                )
                            })
                            .collect();
                        store.txn(ops).await.unwrap();
                    }
                })
            })
            .collect();
        for chunk in chunks {
            chunk.await.unwrap();
        }
        let written = started.elapsed();
        store.close().await.unwrap();
        let file = std::fs::metadata(dir.path().join("data.redb"))
            .unwrap()
            .len();
        let mut samples = Vec::new();
        for _ in 0..rounds.min(5) {
            let started = Instant::now();
            let store = DiskStore::open(dir.path()).await.unwrap();
            samples.push(started.elapsed().as_secs_f64());
            store.close().await.unwrap();
        }
        let open = median(&mut samples);
        println!("\nopen, 100,000 keys (100-byte values) and a full history of 10,000 changes");
        println!(
            "  written in {:.2} s as 1,000 transactions of 100 puts; file {:.1} MiB",
            written.as_secs_f64(),
            file as f64 / (1 << 20) as f64
        );
        let verdict = if open < 1.0 { "meets" } else { "ABOVE" };
        println!(
            "  open (median of {}): {:.3} s  (aim under 1 s: {verdict})",
            samples.len(),
            open
        );
    });
}
