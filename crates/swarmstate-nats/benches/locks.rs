//! The lock recipe on `MemoryStore` and `NatsStore`: acquire+release cycles per second, and the
//! handoff latency between contenders, each beside a baseline measured in the same run.
//!
//! | row             | measured                                                        | baseline                                           |
//! |-----------------|-----------------------------------------------------------------|----------------------------------------------------|
//! | `cycle`, 1 / 16 | `acquire_lock` + `release` on distinct keys, 1 or 16 in flight  | the two writes a lock is made of: `put` (create) with a TTL + `delete` at its revision, on other keys |
//! | `handoff`, 4    | 4 tasks take turns on one lock with `acquire_lock_wait`: time from the holder calling `release` to the next holder's `acquire_lock_wait` returning | one `put` round trip, sampled between handoffs |
//!
//! The cycle ratio shows what the recipe adds over its own writes; the handoff ratio says how
//! many round trips a handoff costs (a watch event and one write, no polling, is about 2).
//! Cycle rows alternate the two sides in rounds (ABBA) and report the median of the per-round
//! ratios, so that load on a shared machine hits both sides alike.
//!
//! Run with `cargo bench -p swarmstate-nats --bench locks` (with `SWARMSTATE_NATS_SERVER` set or
//! the server installed by `scripts/install-nats-server`). `SWARMSTATE_BENCH_ROUNDS` and
//! `SWARMSTATE_BENCH_ROUND_MS` change the cycle rounds (default 10 × 300 ms),
//! `SWARMSTATE_BENCH_HANDOFFS` the number of handoffs (default 2000).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use swarmstate_core::{Key, MemoryStore, PutOptions, StateStore};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsServer, require_server};
use swarmstate_recipes::lock::{acquire_lock, acquire_lock_wait};

const TTL: Duration = Duration::from_secs(30);
const CONTENDERS: usize = 4;

type Op = Arc<dyn Fn(usize, u64) -> BoxFuture<'static, ()> + Send + Sync>;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(text: String) -> Key {
    Key::new(text).expect("bench keys are valid")
}

/// Runs `op` on `in_flight` tasks for `length`; returns operations per second.
async fn throughput(op: &Op, in_flight: usize, length: Duration, round: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|task| {
            let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut i = round << 32;
                while !stop.load(Ordering::Relaxed) {
                    op(task, i).await;
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                    // MemoryStore calls complete without ever yielding; without this, 16 tasks
                    // on 2 workers would starve the timer that ends the round.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("bench task");
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

struct CycleOutcome {
    lock_ops: f64,
    baseline_ops: f64,
    ratio: f64,
}

async fn cycles(store: &Arc<dyn StateStore>, label: &str, in_flight: usize) -> CycleOutcome {
    let rounds = env_number("SWARMSTATE_BENCH_ROUNDS", 10);
    let length = Duration::from_millis(env_number("SWARMSTATE_BENCH_ROUND_MS", 300));
    let lock_keys: Arc<Vec<Key>> = Arc::new(
        (0..in_flight)
            .map(|t| key(format!("bench.{label}.cycle{in_flight}.lock.t{t}")))
            .collect(),
    );
    let raw_keys: Arc<Vec<Key>> = Arc::new(
        (0..in_flight)
            .map(|t| key(format!("bench.{label}.cycle{in_flight}.raw.t{t}")))
            .collect(),
    );
    let s = store.clone();
    let lock: Op = Arc::new(move |task, _| {
        let (store, keys) = (s.clone(), lock_keys.clone());
        Box::pin(async move {
            let guard = acquire_lock(&store, &keys[task], "bench", TTL)
                .await
                .expect("acquire");
            guard.release().await.expect("release");
        })
    });
    let s = store.clone();
    let baseline: Op = Arc::new(move |task, _| {
        let (store, keys) = (s.clone(), raw_keys.clone());
        Box::pin(async move {
            let options = PutOptions::create().ttl(TTL);
            let revision = store
                .put(&keys[task], Bytes::from_static(b"bench"), options)
                .await
                .expect("create");
            store
                .delete(&keys[task], Some(revision))
                .await
                .expect("delete");
        })
    });
    let (mut lock_ops, mut baseline_ops, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (l, b) = if round % 2 == 0 {
            let l = throughput(&lock, in_flight, length, round).await;
            (l, throughput(&baseline, in_flight, length, round).await)
        } else {
            let b = throughput(&baseline, in_flight, length, round).await;
            (throughput(&lock, in_flight, length, round).await, b)
        };
        lock_ops.push(l);
        baseline_ops.push(b);
        ratios.push(l / b);
    }
    CycleOutcome {
        lock_ops: median(&mut lock_ops),
        baseline_ops: median(&mut baseline_ops),
        ratio: median(&mut ratios),
    }
}

struct HandoffOutcome {
    handoffs: Vec<Duration>,
    round_trips: Vec<Duration>,
}

/// `CONTENDERS` tasks take the same lock in turn until `count` handoffs were measured.
async fn handoffs(store: &Arc<dyn StateStore>, label: &str, count: usize) -> HandoffOutcome {
    let lock = key(format!("bench.{label}.handoff"));
    let probe = key(format!("bench.{label}.probe"));
    // When the current holder called release; the next holder measures from it.
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let handoffs: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let round_trips: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let tasks: Vec<_> = (0..CONTENDERS)
        .map(|n| {
            let (store, lock, probe) = (store.clone(), lock.clone(), probe.clone());
            let (released_at, handoffs, round_trips) =
                (released_at.clone(), handoffs.clone(), round_trips.clone());
            tokio::spawn(async move {
                let owner = format!("contender-{n}");
                loop {
                    if handoffs.lock().unwrap().len() >= count {
                        return;
                    }
                    let guard = acquire_lock_wait(&store, &lock, &owner, TTL, TTL)
                        .await
                        .expect("acquire_lock_wait");
                    let acquired = Instant::now();
                    if let Some(released) = released_at.lock().unwrap().take() {
                        handoffs.lock().unwrap().push(acquired - released);
                    }
                    // The baseline: one write round trip, taken while holding the lock so it
                    // never overlaps a handoff.
                    let started = Instant::now();
                    store
                        .put(
                            &probe,
                            Bytes::from_static(b"probe"),
                            PutOptions::overwrite(),
                        )
                        .await
                        .expect("probe put");
                    round_trips.lock().unwrap().push(started.elapsed());
                    *released_at.lock().unwrap() = Some(Instant::now());
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("contender");
    }
    let mut handoffs = std::mem::take(&mut *handoffs.lock().unwrap());
    let mut round_trips = std::mem::take(&mut *round_trips.lock().unwrap());
    handoffs.sort();
    round_trips.sort();
    HandoffOutcome {
        handoffs,
        round_trips,
    }
}

fn micros(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }
}

async fn bench(store: Arc<dyn StateStore>, label: &str) {
    let count = env_number("SWARMSTATE_BENCH_HANDOFFS", 2000) as usize;
    for in_flight in [1, 16] {
        let outcome = cycles(&store, label, in_flight).await;
        println!(
            "| {label} | cycle | {in_flight} | {:.0} /s | {:.0} /s | {:.0}% |",
            outcome.lock_ops,
            outcome.baseline_ops,
            outcome.ratio * 100.0
        );
    }
    let outcome = handoffs(&store, label, count).await;
    let (h, r) = (&outcome.handoffs, &outcome.round_trips);
    println!(
        "| {label} | handoff p50 | {CONTENDERS} | {} | {} | {:.1}× |",
        micros(percentile(h, 0.5)),
        micros(percentile(r, 0.5)),
        percentile(h, 0.5).as_secs_f64() / percentile(r, 0.5).as_secs_f64()
    );
    println!(
        "| {label} | handoff p99 | {CONTENDERS} | {} | {} | {:.1}× |",
        micros(percentile(h, 0.99)),
        micros(percentile(r, 0.99)),
        percentile(h, 0.99).as_secs_f64() / percentile(r, 0.99).as_secs_f64()
    );
    println!(
        "|   | ({} handoffs, max {}) | | | | |",
        h.len(),
        micros(*h.last().expect("handoffs measured"))
    );
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("| store | row | in flight | lock recipe | baseline | recipe ÷ baseline |");
        println!("|---|---|---:|---:|---:|---:|");
        if wanted("memory") {
            bench(Arc::new(MemoryStore::new()), "memory").await;
        }
        if wanted("nats") {
            require_server().expect("nats-server is required for the NATS rows");
            let server = NatsServer::start().await;
            let store = NatsStore::builder(server.url())
                .bucket("locks")
                .connect()
                .await
                .expect("connect");
            bench(Arc::new(store), "nats").await;
        }
    });
}
