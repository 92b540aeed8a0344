//! What the HTTP layer costs: put, get and a lock cycle (acquire + release) at 1 and 16 in
//! flight through `HttpStore` → a server on loopback → `DiskStore`, beside the same
//! `DiskStore` called in-process, in one run. Two floor rows time HTTP alone: a get of an
//! absent key and a 256-byte put, through a server on `MemoryStore`.
//!
//! Rows alternate over several rounds and the median of each is reported, as operations per
//! second, microseconds per operation, and the ratio HTTP / in-process. The server runs in
//! this process on its own runtime (two worker threads), the clients on another, as a
//! separate server process would. Files live under the target directory (a real disk).
//!
//! Run with `cargo bench -p swarmstate-server --bench http` (`-- --quick` for fewer rounds).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use swarmstate_core::{Key, MemoryStore, PutOptions, StateStore};
use swarmstate_disk::DiskStore;
use swarmstate_http::HttpStore;
use swarmstate_server::{Server, ServerConfig};
use tokio::runtime::Runtime;

const KEYS: usize = 1_000;
const VALUE: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put,
    Get,
    LockCycle,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::LockCycle => "lock cycle",
        }
    }
}

/// Operations per second of `op` on `store` with `in_flight` tasks.
async fn rate(store: Arc<dyn StateStore>, op: Op, in_flight: usize, ops: usize) -> f64 {
    let keys: Arc<Vec<Key>> = Arc::new(
        (0..KEYS)
            .map(|i| Key::new(format!("bench.k{i}")).unwrap())
            .collect(),
    );
    let value = Bytes::from(vec![b'v'; VALUE]);
    let per_task = ops / in_flight;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..in_flight {
        let store = store.clone();
        let keys = keys.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let lock = Key::new(format!("bench.locks.l{task}")).unwrap();
            for i in 0..per_task {
                let key = &keys[(task * per_task + i) % KEYS];
                match op {
                    Op::Put => {
                        store
                            .put(key, value.clone(), PutOptions::overwrite())
                            .await
                            .unwrap();
                    }
                    Op::Get => {
                        store.get(key).await.unwrap();
                    }
                    Op::LockCycle => {
                        let guard = swarmstate_recipes::lock::acquire_lock(
                            &store,
                            &lock,
                            "bench",
                            Duration::from_secs(10),
                        )
                        .await
                        .unwrap();
                        guard.release().await.unwrap();
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (per_task * in_flight) as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn spread(values: &[f64]) -> f64 {
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    (max - min) / min * 100.0
}

struct Row {
    op: Op,
    in_flight: usize,
    local: Vec<f64>,
    http: Vec<f64>,
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let rounds = if quick { 3 } else { 7 };
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client_runtime: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Two stores on their own directories: one called in-process, one behind the server.
    let local_dir = tempfile::tempdir_in(&root).unwrap();
    let served_dir = tempfile::tempdir_in(&root).unwrap();
    let local: Arc<dyn StateStore> = Arc::new(
        client_runtime
            .block_on(DiskStore::open(local_dir.path()))
            .unwrap(),
    );
    let serve = |store: Arc<dyn StateStore>| {
        server_runtime.block_on(async {
            let config = ServerConfig {
                listen: "127.0.0.1:0".into(),
                ..ServerConfig::default()
            };
            let server = Server::bind(store, config).await.unwrap();
            let url = format!("http://{}", server.local_addr());
            tokio::spawn(server.run(std::future::pending()));
            url
        })
    };
    let disk_url = serve(Arc::new(
        server_runtime
            .block_on(DiskStore::open(served_dir.path()))
            .unwrap(),
    ));
    let memory_url = serve(Arc::new(MemoryStore::new()));
    let http: Arc<dyn StateStore> =
        Arc::new(client_runtime.block_on(HttpStore::open(&disk_url)).unwrap());
    let floor_store: Arc<dyn StateStore> = Arc::new(
        client_runtime
            .block_on(HttpStore::open(&memory_url))
            .unwrap(),
    );

    // Fill the keys once on both, so gets find them.
    for store in [&local, &http] {
        client_runtime.block_on(rate(store.clone(), Op::Put, 16, KEYS));
    }
    // `--profile get|put`: only that operation through HTTP at 1 in flight, for `perf`.
    if let Some(op) = std::env::args().skip_while(|arg| arg != "--profile").nth(1) {
        let (op, n) = match op.as_str() {
            "put" => (Op::Put, 20_000),
            _ => (Op::Get, 100_000),
        };
        let started = Instant::now();
        let per_second = client_runtime.block_on(rate(http.clone(), op, 1, n));
        println!(
            "{} × {n} through HTTP: {per_second:.0}/s, {:.1} µs each, {:.1} s",
            op.name(),
            1e6 / per_second,
            started.elapsed().as_secs_f64()
        );
        return;
    }

    let mut rows: Vec<Row> = [Op::Put, Op::Get, Op::LockCycle]
        .into_iter()
        .flat_map(|op| [1, 16].map(|in_flight| (op, in_flight)))
        .map(|(op, in_flight)| Row {
            op,
            in_flight,
            local: Vec::new(),
            http: Vec::new(),
        })
        .collect();
    let mut floor = Vec::new();
    let mut floor_put = Vec::new();
    let ops = |op: Op, in_flight: usize| match (op, in_flight) {
        (Op::Get, 16) => 16_000,
        (Op::Get, _) => 4_000,
        (_, 16) => 4_800,
        _ => 1_500,
    };
    for round in 0..rounds {
        for row in &mut rows {
            let n = ops(row.op, row.in_flight);
            // Alternate which side goes first, so neither always runs on a warmer machine.
            let (first, second) = if round % 2 == 0 {
                (&local, &http)
            } else {
                (&http, &local)
            };
            let a = client_runtime.block_on(rate(first.clone(), row.op, row.in_flight, n));
            let b = client_runtime.block_on(rate(second.clone(), row.op, row.in_flight, n));
            let (l, h) = if round % 2 == 0 { (a, b) } else { (b, a) };
            row.local.push(l);
            row.http.push(h);
        }
        // A get of a key the server's memory store never had: HTTP and little else.
        floor.push(client_runtime.block_on(rate(floor_store.clone(), Op::Get, 1, 4_000)));
        // A put through a server on MemoryStore: HTTP with a body, and no disk.
        floor_put.push(client_runtime.block_on(rate(floor_store.clone(), Op::Put, 1, 4_000)));
        eprintln!("round {} of {rounds} done", round + 1);
    }

    println!(
        "HttpStore → server → DiskStore beside DiskStore in-process; {rounds} rounds, medians \
         (spread = (max-min)/min)"
    );
    println!(
        "{:<12} {:>9} {:>14} {:>10} {:>14} {:>10} {:>8} {:>14}",
        "op", "in flight", "in-process/s", "µs/op", "http/s", "µs/op", "ratio", "http adds µs"
    );
    for row in &mut rows {
        let local = median(&mut row.local.clone());
        let http = median(&mut row.http.clone());
        println!(
            "{:<12} {:>9} {:>14.0} {:>10.1} {:>14.0} {:>10.1} {:>8.2} {:>14.1}   (spread {:.0}% / {:.0}%)",
            row.op.name(),
            row.in_flight,
            local,
            1e6 / local,
            http,
            1e6 / http,
            http / local,
            1e6 / http - 1e6 / local,
            spread(&row.local),
            spread(&row.http),
        );
    }
    let floor_rate = median(&mut floor.clone());
    println!(
        "HTTP floor (get of an absent key, server on MemoryStore, 1 in flight): {floor_rate:.0}/s, \
         {:.1} µs per round trip (spread {:.0}%)",
        1e6 / floor_rate,
        spread(&floor)
    );
    let floor_put_rate = median(&mut floor_put.clone());
    println!(
        "HTTP put floor (256-byte put, server on MemoryStore, 1 in flight): {floor_put_rate:.0}/s, \
         {:.1} µs per put (spread {:.0}%)",
        1e6 / floor_put_rate,
        spread(&floor_put)
    );
    drop(local_dir);
    drop(served_dir);
}
