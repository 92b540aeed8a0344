//! What watches cost a `NatsStore` as a process opens more of them: the cost of a put, and the
//! messages the process receives per write.
//!
//! One single-node `nats-server` (from `swarmstate-nats-local`) and one bucket. Two stores on
//! their own connections: the *baseline* holds 1 watch, the *measured* store holds `n` watches
//! (1, 10, 100, 1,000), all on prefixes nobody writes to, so they select nothing. Each row runs
//! 20 rounds; a round runs puts on each store for 200 ms, the order alternating (ABBA), and the
//! cost is the median of the per-round ratios of put throughput, baseline / measured (1.0 means
//! the `n` watches cost nothing; the goal is within 2× at 1,000).
//!
//! Then, for a process with 100 watches (99 on other prefixes, 1 on the written keys), the
//! messages its connection receives per write made by another client, counted with
//! `NatsStore::messages_received` over 2,000 writes, beside a process with 1 watch, and beside
//! raw async-nats clients with 100 KV watches each (500 writes, counted with
//! `Client::statistics`): 99 filtered to other prefixes, or 99 of the whole bucket (a consumer
//! per watch that can see holes, as `NatsStore` ran before its watches shared one).
//!
//! Run with `cargo bench -p swarmstate-nats --bench watches` (with `SWARMSTATE_NATS_SERVER` set
//! or the server installed by `scripts/install-nats-server`). `SWARMSTATE_BENCH_ROUNDS` and
//! `SWARMSTATE_BENCH_ROUND_MS` change the number and length of rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use swarmstate_core::{Key, Pattern, PutOptions, StateStore, WatchEvent, WatchStart, WatchStream};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsServer, require_server};

mod support;
use support::{env_number, median};

const BUCKET: &str = "watches";
const WATCHES: [usize; 4] = [1, 10, 100, 1000];
const IN_FLIGHT: [usize; 2] = [1, 16];

fn key(text: String) -> Key {
    Key::new(text).expect("valid key")
}

/// `count` watches from now on prefixes nobody writes to.
async fn idle_watches(store: &NatsStore, tag: &str, count: usize) -> Vec<WatchStream> {
    let mut watches = Vec::with_capacity(count);
    for n in 0..count {
        let pattern = Pattern::new(format!("idle.{tag}.{n}.*")).expect("pattern");
        watches.push(store.watch(&pattern, WatchStart::Now).await.expect("watch"));
    }
    watches
}

/// Puts on `tasks` tasks until `length` has passed; returns puts per second.
async fn round(store: &NatsStore, side: &str, tasks: usize, length: Duration) -> f64 {
    let start = Instant::now();
    let deadline = start + length;
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let store = store.clone();
            let key = key(format!("w.{side}.{task}"));
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    store
                        .put(&key, Bytes::from_static(b"value"), PutOptions::overwrite())
                        .await
                        .expect("put");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for worker in workers {
        done += worker.await.expect("bench task panicked");
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// The messages `watcher` receives per write `writer` makes to keys one of its watches
/// selects.
async fn messages_per_write(writer: &NatsStore, watcher: &NatsStore, tag: &str) -> f64 {
    const WRITES: u64 = 2000;
    let pattern = Pattern::new(format!("counted.{tag}.*")).expect("pattern");
    let mut selected = watcher
        .watch(&pattern, WatchStart::Now)
        .await
        .expect("watch");
    // Let the connection settle (the watches' setup is over) before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = watcher.messages_received();
    // Every write reaches the watch: then every message it caused has arrived.
    let reading = tokio::spawn(async move {
        let mut seen = 0;
        while seen < WRITES {
            match tokio::time::timeout(Duration::from_secs(30), selected.next()).await {
                Ok(Some(WatchEvent::Put(_))) => seen += 1,
                Ok(other) => panic!("the counted watch ended or lagged: {other:?}"),
                Err(_) => panic!("the counted watch saw {seen} of {WRITES} writes in 30 s"),
            }
        }
    });
    for n in 0..WRITES {
        let key = key(format!("counted.{tag}.k{}", n % 16));
        writer
            .put(&key, Bytes::from_static(b"value"), PutOptions::overwrite())
            .await
            .expect("put");
    }
    reading.await.expect("the counted watch");
    (watcher.messages_received() - before) as f64 / WRITES as f64
}

/// The baselines: the messages a raw async-nats client with 100 KV watches receives per write
/// `writer` makes to keys one of them selects. The 99 others watch other prefixes (a filtered
/// consumer each, which cannot see a hole), or, with `whole`, the whole bucket (as every watch
/// must to see holes when each has a consumer of its own).
async fn raw_messages_per_write(server: &NatsServer, writer: &NatsStore, whole: bool) -> f64 {
    const WRITES: u64 = 500;
    let client = server.connect().await;
    let kv = async_nats::jetstream::new(client.clone())
        .get_key_value(BUCKET)
        .await
        .expect("kv bucket");
    let mut idle = Vec::new();
    let tag = if whole { "whole" } else { "filtered" };
    for n in 0..99 {
        idle.push(if whole {
            kv.watch_all().await.expect("watch")
        } else {
            kv.watch(format!("idle.raw.{n}.>")).await.expect("watch")
        });
    }
    let counted = format!("counted.raw{tag}");
    let mut selected = kv.watch(format!("{counted}.>")).await.expect("watch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = || {
        client
            .statistics()
            .in_messages
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = received();
    let reading = tokio::spawn(async move {
        for _ in 0..WRITES {
            tokio::time::timeout(Duration::from_secs(30), selected.next())
                .await
                .expect("the raw watch delivers every write")
                .expect("the raw watch goes on")
                .expect("an entry");
        }
    });
    for n in 0..WRITES {
        let key = key(format!("{counted}.k{}", n % 16));
        writer
            .put(&key, Bytes::from_static(b"value"), PutOptions::overwrite())
            .await
            .expect("put");
    }
    reading.await.expect("the raw watch");
    let per_write = (received() - before) as f64 / WRITES as f64;
    drop(idle);
    per_write
}

async fn open(server: &NatsServer) -> NatsStore {
    NatsStore::builder(server.url())
        .bucket(BUCKET)
        .connect()
        .await
        .expect("open NatsStore")
}

fn main() {
    if require_server().is_none() {
        eprintln!("watches bench skipped: no nats-server");
        return;
    }
    let rounds = env_number("SWARMSTATE_BENCH_ROUNDS", 20) as usize;
    let length = Duration::from_millis(env_number("SWARMSTATE_BENCH_ROUND_MS", 200));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = NatsServer::start().await;
        let baseline = open(&server).await;
        let measured = open(&server).await;
        let _baseline_watches = idle_watches(&baseline, "baseline", 1).await;
        let mut measured_watches = Vec::new();
        println!(
            "| watches in the process | in flight | puts/s with 1 watch | puts/s with n | cost (median of baseline/measured) | p25..p75 |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for watches in WATCHES {
            let more = watches - measured_watches.len();
            let tag = format!("m{watches}");
            measured_watches.extend(idle_watches(&measured, &tag, more).await);
            for in_flight in IN_FLIGHT {
                // One discarded warm-up round of each.
                round(&baseline, "b", in_flight, length).await;
                round(&measured, "m", in_flight, length).await;
                let (mut ratios, mut base_ops, mut measured_ops) = (vec![], vec![], vec![]);
                for r in 0..rounds {
                    let (b, m) = if r % 4 == 0 || r % 4 == 3 {
                        let b = round(&baseline, "b", in_flight, length).await;
                        (b, round(&measured, "m", in_flight, length).await)
                    } else {
                        let m = round(&measured, "m", in_flight, length).await;
                        (round(&baseline, "b", in_flight, length).await, m)
                    };
                    ratios.push(b / m);
                    base_ops.push(b);
                    measured_ops.push(m);
                }
                let mut sorted = ratios.clone();
                sorted.sort_by(f64::total_cmp);
                println!(
                    "| {watches} | {in_flight} | {:.0} | {:.0} | {:.2}× | {:.2}..{:.2} |",
                    median(&base_ops),
                    median(&measured_ops),
                    median(&ratios),
                    sorted[sorted.len() / 4],
                    sorted[sorted.len() * 3 / 4],
                );
            }
        }
        drop(measured_watches);

        let writer = open(&server).await;
        let one = open(&server).await;
        let hundred = open(&server).await;
        let _hundred_watches = idle_watches(&hundred, "hundred", 99).await;
        let per_write_one = messages_per_write(&writer, &one, "one").await;
        let per_write_hundred = messages_per_write(&writer, &hundred, "hundred").await;
        let per_write_filtered = raw_messages_per_write(&server, &writer, false).await;
        let per_write_whole = raw_messages_per_write(&server, &writer, true).await;
        println!();
        println!("| process | watches | messages received per write |");
        println!("|---|---:|---:|");
        println!("| NatsStore | 1 | {per_write_one:.2} |");
        println!("| NatsStore | 100 | {per_write_hundred:.2} |");
        println!(
            "| raw async-nats, `kv::Store::watch` of each prefix (blind to holes) | 100 | {per_write_filtered:.2} |"
        );
        println!(
            "| raw async-nats, `kv::Store::watch_all` for 99 of them (a consumer of the whole bucket per watch) | 100 | {per_write_whole:.2} |"
        );
        let stores: [Arc<dyn StateStore>; 5] = [
            Arc::new(baseline),
            Arc::new(measured),
            Arc::new(writer),
            Arc::new(one),
            Arc::new(hundred),
        ];
        for store in stores {
            store.close().await.expect("close");
        }
    });
}
