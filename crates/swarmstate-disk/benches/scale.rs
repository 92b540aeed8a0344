//! What reads, watches and writes cost as the store grows: the same 100-key prefix listed,
//! watched from a snapshot, and written beside 1,000 watchers on other prefixes, in stores
//! of 10,000, 100,000 and 1,000,000 keys, for `MemoryStore` and `DiskStore`; and the resident
//! memory each key costs. The goal is costs that follow the result, not the store: the
//! listing within 2× as the store grows 100×.
//!
//! Each (store, size) runs in a child process of its own, so its resident memory is its own.
//! Sizes alternate in order over the rounds; the median of each row over the rounds is
//! reported, and the growth column divides the largest store's figure by the smallest's.
//! `DiskStore` files live under the target directory (a real disk).
//!
//! Run with `cargo bench -p swarmstate-disk --bench scale` (`-- --quick` for one round, no
//! `DiskStore` at 1,000,000 keys).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use swarmstate_core::{Key, MemoryStore, Pattern, PutOptions, StateStore, WatchEvent, WatchStart};
use swarmstate_disk::DiskStore;
use tokio::runtime::Runtime;

const TARGET: &str = "m.target";
const TARGET_KEYS: usize = 100;
const WATCHERS: usize = 1_000;
const VALUE: usize = 100;
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

/// What one child measured, medians in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Sample {
    listing: f64,
    snapshot: f64,
    put_alone: f64,
    put_watched: f64,
    bytes_per_key: f64,
}

impl Sample {
    fn parse(line: &str) -> Sample {
        let field: Vec<f64> = line
            .split_whitespace()
            .map(|f| f.parse().expect("a number"))
            .collect();
        Sample {
            listing: field[0],
            snapshot: field[1],
            put_alone: field[2],
            put_watched: field[3],
            bytes_per_key: field[4],
        }
    }

    fn line(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.listing, self.snapshot, self.put_alone, self.put_watched, self.bytes_per_key
        )
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        let kind = args[at + 1].clone();
        let size = args[at + 2].parse().expect("a size");
        println!("{}", child(&kind, size).line());
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    let mut table = Vec::new();
    for kind in ["memory", "disk"] {
        let sizes: Vec<usize> = SIZES
            .into_iter()
            .filter(|&size| !(quick && kind == "disk" && size > 100_000))
            .collect();
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); sizes.len()];
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..sizes.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for at in order {
                eprintln!("{kind} store, {} keys, round {}", sizes[at], round + 1);
                samples[at].push(spawn_child(kind, sizes[at]));
            }
        }
        table.push((kind, sizes, samples));
    }
    print_table(&table);
}

fn spawn_child(kind: &str, size: usize) -> Sample {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--child", kind, &size.to_string()])
        .output()
        .expect("the bench runs itself");
    assert!(
        output.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    Sample::parse(stdout.lines().last().expect("one line"))
}

// A row's name, how to read it off a sample, and its unit.
type Row = (&'static str, fn(&Sample) -> f64, &'static str);

type Rows<'a> = [(&'a str, Vec<usize>, Vec<Vec<Sample>>)];

fn print_table(table: &Rows<'_>) {
    let rows: [Row; 5] = [
        ("list the 100 keys of a prefix", |s| s.listing, "µs"),
        ("snapshot watch of that prefix", |s| s.snapshot, "µs"),
        ("put, no watchers", |s| s.put_alone, "µs"),
        (
            "put, 1,000 watchers on other prefixes",
            |s| s.put_watched,
            "µs",
        ),
        ("resident memory per key", |s| s.bytes_per_key, "B"),
    ];
    for (kind, sizes, samples) in table {
        let store = if *kind == "memory" {
            "MemoryStore"
        } else {
            "DiskStore"
        };
        let header: Vec<String> = sizes
            .iter()
            .map(|n| format!("{} keys", thousands(*n)))
            .collect();
        println!("\n{store}\n");
        println!(
            "| | {} | largest ÷ smallest |\n|---|{}---:|",
            header.join(" | "),
            "---:|".repeat(sizes.len())
        );
        for (name, pick, unit) in rows {
            let medians: Vec<f64> = samples
                .iter()
                .map(|round| median(round.iter().map(pick).collect()))
                .collect();
            let cells: Vec<String> = samples
                .iter()
                .zip(&medians)
                .map(|(round, median)| cell(*median, round.iter().map(pick).collect(), unit))
                .collect();
            let growth = medians.last().unwrap() / medians.first().unwrap();
            println!("| {name} | {} | {growth:.2}× |", cells.join(" | "));
        }
    }
}

// A median with its spread over the rounds.
fn cell(median: f64, values: Vec<f64>, unit: &str) -> String {
    let scale = if unit == "µs" { 1_000.0 } else { 1.0 };
    let (low, high) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    // Two decimals for sub-10 figures (a put in memory is a fraction of a microsecond).
    let places = if median / scale < 10.0 { 2 } else { 1 };
    let show = |v: f64| format!("{:.*}", places, v / scale);
    if values.len() == 1 {
        format!("{} {unit}", show(median))
    } else {
        format!("{} {unit} ({}–{})", show(median), show(low), show(high))
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// Resident memory of this process, in bytes.
fn resident() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux");
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0
}

fn child(kind: &str, size: usize) -> Sample {
    let runtime = Runtime::new().unwrap();
    runtime.block_on(async {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&root).unwrap();
        let dir = tempfile::tempdir_in(&root).unwrap();
        let store: Arc<dyn StateStore> = match kind {
            "memory" => Arc::new(MemoryStore::new()),
            _ => Arc::new(DiskStore::open(dir.path()).await.unwrap()),
        };
        let before = resident();
        load(&store, size).await;
        let bytes_per_key = (resident() - before) / size as f64;

        let pattern = Pattern::new(format!("{TARGET}.*")).unwrap();
        let listing = timed(200, || async {
            let keys: Vec<Key> = store
                .keys(&pattern)
                .await
                .unwrap()
                .map(|key| key.unwrap())
                .collect()
                .await;
            assert_eq!(keys.len(), TARGET_KEYS);
        })
        .await;
        let snapshot = timed(200, || async {
            let mut watch = store.watch(&pattern, WatchStart::Snapshot).await.unwrap();
            let mut entries = 0;
            while let Some(event) = watch.next().await {
                match event {
                    WatchEvent::Put(_) => entries += 1,
                    WatchEvent::CaughtUp { .. } => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(entries, TARGET_KEYS);
        })
        .await;

        let puts = if kind == "memory" { 2_000 } else { 100 };
        let value = Bytes::from(vec![b'v'; VALUE]);
        let target = Key::new(format!("{TARGET}.k0")).unwrap();
        let put = || async {
            store
                .put(&target, value.clone(), PutOptions::overwrite())
                .await
                .unwrap();
        };
        let put_alone = timed(puts, put).await;
        // Watchers on prefixes the writes never touch: each must cost nothing per write.
        let mut watches = Vec::new();
        for n in 0..WATCHERS {
            let other = Pattern::new(format!("w.other{n}.*")).unwrap();
            watches.push(store.watch(&other, WatchStart::Now).await.unwrap());
        }
        let put_watched = timed(puts, put).await;
        drop(watches);
        store.close().await.unwrap();
        Sample {
            listing,
            snapshot,
            put_alone,
            put_watched,
            bytes_per_key,
        }
    })
}

// Fills the store with `size` keys: the 100 target keys in the middle of the key order,
// the rest before and after them, written 64 at a time.
async fn load(store: &Arc<dyn StateStore>, size: usize) {
    let value = Bytes::from(vec![b'v'; VALUE]);
    let fill = size - TARGET_KEYS;
    let keys: Vec<Key> = (0..TARGET_KEYS)
        .map(|n| format!("{TARGET}.k{n}"))
        .chain((0..fill).map(|n| {
            let side = if n % 2 == 0 { "a" } else { "z" };
            format!("{side}.g{}.k{n}", n % 1_000)
        }))
        .map(|key| Key::new(key).unwrap())
        .collect();
    let keys = Arc::new(keys);
    let tasks = 64;
    let mut running = Vec::new();
    for task in 0..tasks {
        let (store, keys, value) = (store.clone(), keys.clone(), value.clone());
        running.push(tokio::spawn(async move {
            for key in keys.iter().skip(task).step_by(tasks) {
                // A copy each, as values read off the network are: shared bytes would hide
                // what values cost.
                let value = Bytes::copy_from_slice(&value);
                store
                    .put(key, value, PutOptions::overwrite())
                    .await
                    .unwrap();
            }
        }));
    }
    for task in running {
        task.await.unwrap();
    }
}

// The median time of `runs` calls of `op`, in nanoseconds, after a few unmeasured calls.
async fn timed<F, Fut>(runs: usize, op: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..runs.min(10) {
        op().await;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        op().await;
        times.push(started.elapsed());
    }
    median(
        times
            .iter()
            .map(Duration::as_nanos)
            .map(|n| n as f64)
            .collect(),
    )
}
