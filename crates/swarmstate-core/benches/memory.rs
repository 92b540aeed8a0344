//! `MemoryStore` benchmarks, each beside a bare `std::sync::RwLock<HashMap<String, Bytes>>`
//! baseline doing the same work in the same run, so the ratio between the two is meaningful on
//! a noisy machine.
//!
//! Every group holds `memory_store` and `rwlock_hashmap`. Both sides cycle through the same
//! 10,000 preloaded keys and run under the same async harness (`iter_custom` on a Tokio
//! runtime). The baselines do the least their operation needs (an overwrite is `get_mut` on a
//! preloaded key, no allocation), so the ratios are conservative.
//!
//! Run with `cargo bench -p swarmstate-core --bench memory`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use swarmstate_core::{
    Key, MemoryStore, Pattern, PutMode, PutOptions, Revision, StateStore, WatchEvent, WatchStart,
};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

const KEYS: usize = 10_000;
const WATCHERS: usize = 100;

/// The same keys and value for both sides.
struct Fixture {
    keys: Vec<Key>,
    names: Vec<String>,
    value: Bytes,
}

impl Fixture {
    fn new() -> Fixture {
        let keys: Vec<Key> = (0..KEYS)
            .map(|i| Key::new(format!("bench.agents.agent-{i:05}.status")).unwrap())
            .collect();
        let names = keys.iter().map(|key| key.to_string()).collect();
        Fixture {
            keys,
            names,
            value: Bytes::from(vec![b'x'; 64]),
        }
    }

    /// A store holding every key; returns the revision of each.
    async fn store(&self, store: MemoryStore) -> (MemoryStore, Vec<Revision>) {
        let mut revisions = Vec::with_capacity(KEYS);
        for key in &self.keys {
            let put = store.put(key, self.value.clone(), PutOptions::overwrite());
            revisions.push(put.await.unwrap());
        }
        (store, revisions)
    }

    fn map(&self) -> RwLock<HashMap<String, Bytes>> {
        let map = self.names.iter().map(|n| (n.clone(), self.value.clone()));
        RwLock::new(map.collect())
    }
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn get(c: &mut Criterion, fixture: &Fixture) {
    let runtime = current_thread();
    let (store, _) = runtime.block_on(fixture.store(MemoryStore::new()));
    let map = fixture.map();
    let (store, map) = (&store, &map);
    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    group.bench_function("memory_store", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let start = Instant::now();
            for i in 0..iters as usize {
                black_box(store.get(&fixture.keys[i % KEYS]).await.unwrap());
            }
            start.elapsed()
        })
    });
    group.bench_function("rwlock_hashmap", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let start = Instant::now();
            for i in 0..iters as usize {
                let name = fixture.names[i % KEYS].as_str();
                black_box(map.read().unwrap().get(name).cloned());
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn put(c: &mut Criterion, fixture: &Fixture) {
    let runtime = current_thread();
    let (store, _) = runtime.block_on(fixture.store(MemoryStore::new()));
    let map = fixture.map();
    let (store, map) = (&store, &map);
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(1));
    group.bench_function("memory_store", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let start = Instant::now();
            for i in 0..iters as usize {
                let put = store.put(
                    &fixture.keys[i % KEYS],
                    fixture.value.clone(),
                    PutOptions::overwrite(),
                );
                black_box(put.await.unwrap());
            }
            start.elapsed()
        })
    });
    group.bench_function("rwlock_hashmap", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let start = Instant::now();
            for i in 0..iters as usize {
                let mut map = map.write().unwrap();
                *map.get_mut(fixture.names[i % KEYS].as_str()).unwrap() = fixture.value.clone();
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn cas_update(c: &mut Criterion, fixture: &Fixture) {
    let runtime = current_thread();
    let (store, revisions) = runtime.block_on(fixture.store(MemoryStore::new()));
    let map = fixture.map();
    let (store, map, revisions) = (&store, &map, &RefCell::new(revisions));
    let mut group = c.benchmark_group("cas_update");
    group.throughput(Throughput::Elements(1));
    group.bench_function("memory_store", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let start = Instant::now();
            for i in 0..iters as usize {
                let i = i % KEYS;
                let options = PutOptions::with_mode(PutMode::Update(revisions.borrow()[i]));
                let put = store.put(&fixture.keys[i], fixture.value.clone(), options);
                let revision = put.await.unwrap();
                revisions.borrow_mut()[i] = revision;
            }
            start.elapsed()
        })
    });
    // The baseline's version check: the value it last wrote must still be there.
    group.bench_function("rwlock_hashmap", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let start = Instant::now();
            for i in 0..iters as usize {
                let mut map = map.write().unwrap();
                let slot = map.get_mut(fixture.names[i % KEYS].as_str()).unwrap();
                assert!(*slot == fixture.value, "lost update");
                *slot = fixture.value.clone();
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// A put while 100 watchers on `*` are attached, each drained by its own task on a two-worker
/// runtime. The baseline pushes each change into 100 bounded channels (as deep as the store's
/// watch buffer) with `try_send`, drained the same way.
///
/// A watcher that falls a buffer behind is detached by the store, which would make later puts
/// cheaper, and no consumer keeps up with a producer that never pauses. So both sides put in
/// batches of half a buffer and, with the clock stopped, wait between batches until every
/// drainer has caught up. What is timed is the producer's side of a put: the write plus the
/// fan-out (clones, `try_send`s, wake-ups), while the drainers run on the other cores. A
/// drainer that fell behind anyway is given up on and counted; the counts are printed.
fn put_with_watchers(c: &mut Criterion, fixture: &Fixture) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (store, _) = runtime.block_on(fixture.store(MemoryStore::new()));
    let buffer = store.capabilities().watch_buffer;
    let batch = (buffer / 2).max(1) as u64;

    // How far each drainer has read: a revision on the store side, a sequence number on the
    // baseline side; u64::MAX once it fell behind and was given up on.
    let store_seen: Arc<Vec<AtomicU64>> =
        Arc::new((0..WATCHERS).map(|_| AtomicU64::new(0)).collect());
    let baseline_seen: Arc<Vec<AtomicU64>> =
        Arc::new((0..WATCHERS).map(|_| AtomicU64::new(0)).collect());
    let store_lagged = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        for watcher in 0..WATCHERS {
            let mut watch = store.watch(&Pattern::All, WatchStart::Now).await.unwrap();
            let (seen, lagged) = (store_seen.clone(), store_lagged.clone());
            tokio::spawn(async move {
                while let Some(event) = watch.next().await {
                    let revision = match event {
                        WatchEvent::Lagged { .. } => {
                            lagged.fetch_add(1, Ordering::Relaxed);
                            u64::MAX
                        }
                        event => event.revision().unwrap().get(),
                    };
                    seen[watcher].store(revision, Ordering::Release);
                }
            });
        }
    });
    let map = fixture.map();
    let event_keys: Vec<Arc<str>> = fixture.names.iter().map(|n| Arc::from(&**n)).collect();
    let senders: Vec<mpsc::Sender<(Arc<str>, Bytes, u64)>> = (0..WATCHERS)
        .map(|watcher| {
            let (sender, mut receiver) = mpsc::channel::<(Arc<str>, Bytes, u64)>(buffer);
            let seen = baseline_seen.clone();
            runtime.spawn(async move {
                while let Some((key, value, sequence)) = receiver.recv().await {
                    black_box((key, value));
                    seen[watcher].store(sequence, Ordering::Release);
                }
            });
            sender
        })
        .collect();
    let baseline_full = AtomicUsize::new(0);
    let sequence = AtomicU64::new(0);
    let (store, map, senders, event_keys) = (&store, &map, &senders, &event_keys);
    let (store_seen, baseline_seen) = (&*store_seen, &*baseline_seen);
    let (baseline_full, sequence) = (&baseline_full, &sequence);

    let mut group = c.benchmark_group("put_100_watchers");
    group.throughput(Throughput::Elements(1));
    group.bench_function("memory_store", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let mut elapsed = Duration::ZERO;
            for first in (0..iters).step_by(batch as usize) {
                let start = Instant::now();
                let mut last = 0;
                for i in first..iters.min(first + batch) {
                    let key = &fixture.keys[i as usize % KEYS];
                    let put = store.put(key, fixture.value.clone(), PutOptions::overwrite());
                    last = black_box(put.await.unwrap()).get();
                }
                elapsed += start.elapsed();
                wait_until_drained(store_seen, last);
            }
            elapsed
        })
    });
    group.bench_function("rwlock_hashmap", |b| {
        b.to_async(&runtime).iter_custom(|iters| async move {
            let mut elapsed = Duration::ZERO;
            for first in (0..iters).step_by(batch as usize) {
                let start = Instant::now();
                let mut last = 0;
                for i in first..iters.min(first + batch) {
                    let i = i as usize % KEYS;
                    let mut map = map.write().unwrap();
                    *map.get_mut(fixture.names[i].as_str()).unwrap() = fixture.value.clone();
                    last = sequence.fetch_add(1, Ordering::Relaxed) + 1;
                    for (watcher, sender) in senders.iter().enumerate() {
                        let event = (event_keys[i].clone(), fixture.value.clone(), last);
                        if sender.try_send(event).is_err() {
                            baseline_full.fetch_add(1, Ordering::Relaxed);
                            baseline_seen[watcher].store(u64::MAX, Ordering::Release);
                        }
                    }
                }
                elapsed += start.elapsed();
                wait_until_drained(baseline_seen, last);
            }
            elapsed
        })
    });
    group.finish();
    eprintln!(
        "put_100_watchers: {} of {WATCHERS} store watchers lagged (buffer {buffer}, batches of \
         {batch}); the baseline found a full channel {} times",
        store_lagged.load(Ordering::Relaxed),
        baseline_full.load(Ordering::Relaxed),
    );
}

/// Waits, off the clock, until every drainer has read up to `target`.
fn wait_until_drained(seen: &[AtomicU64], target: u64) {
    while seen.iter().any(|s| s.load(Ordering::Acquire) < target) {
        std::thread::yield_now();
    }
}

fn benches(c: &mut Criterion) {
    let fixture = Fixture::new();
    get(c, &fixture);
    put(c, &fixture);
    cas_update(c, &fixture);
    put_with_watchers(c, &fixture);
}

criterion_group! {
    name = memory;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = benches
}
criterion_main!(memory);
