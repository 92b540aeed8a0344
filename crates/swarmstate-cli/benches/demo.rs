//! The demo at its defaults (16 agents, 400 items, 4 killed halfway) on MemoryStore, on one
//! single-node NATS server (R1) and on a 3-node cluster (R3), side by side in one run: the
//! wall time of `swarmstate demo --store URL` for each, and the NATS times as ratios of the
//! MemoryStore time.
//!
//! The servers come from `swarmstate-nats-local` (loopback, `sync_interval: always`). Each run
//! is a new `swarmstate demo` process, with its agents as tasks on one store, on a new bucket
//! (the R3 one created with 3 replicas first); runs rotate the order of the three stores.
//! A run that fails its invariants fails the bench.
//!
//! Run with `cargo bench -p swarmstate-cli --bench demo` (with `SWARMSTATE_NATS_SERVER` set or
//! the server installed by `scripts/install-nats-server`). `SWARMSTATE_BENCH_RUNS` sets the
//! runs per store (default 3); arguments after `--` go to every `swarmstate demo`.

use std::time::{Duration, Instant};

use swarmstate::StateStore;
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, NatsServer, require_server};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `swarmstate demo` on `store`; its wall time.
async fn demo(store: &str, extra: &[String]) -> Duration {
    let started = Instant::now();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .args(["demo", "--store", store])
        .args(extra)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run swarmstate demo");
    let elapsed = started.elapsed();
    assert!(
        output.status.success(),
        "swarmstate demo --store {store} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn main() {
    if require_server().is_none() {
        eprintln!("demo bench skipped: no nats-server");
        return;
    }
    let runs = env_number("SWARMSTATE_BENCH_RUNS", 3) as usize;
    let extra: Vec<String> = std::env::args()
        .skip_while(|arg| arg != "--")
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let single = NatsServer::start().await;
        let cluster = NatsCluster::start(3).await;
        let r3_servers = cluster.urls().join(",").replace("nats://", "");
        let stores = ["MemoryStore", "NATS R1", "NATS R3"];
        let mut times = vec![Vec::new(); stores.len()];
        for run in 0..runs {
            // Each run on a new bucket, as a first run on a fresh deployment; the R3 one is
            // created here with 3 replicas, and the demo opens it as it is.
            let bucket = format!("demo-{run}");
            let r3 = NatsStore::builder(cluster.connect_url())
                .bucket(&bucket)
                .replicas(3)
                .connect()
                .await
                .expect("create the R3 bucket");
            r3.close().await.expect("close");
            let urls = [
                "memory://".to_owned(),
                format!("{}/{bucket}", single.url()),
                format!("nats://{r3_servers}/{bucket}"),
            ];
            for offset in 0..stores.len() {
                let at = (run + offset) % stores.len();
                let (name, url) = (stores[at], &urls[at]);
                let took = demo(url, &extra).await;
                eprintln!("run {run}: {name}: {took:.1?}");
                times[at].push(took);
            }
        }
        let memory = median(&times[0]);
        println!("| store | runs | median wall time | min .. max | ratio to MemoryStore |");
        println!("|---|---:|---:|---:|---:|");
        for (name, times) in stores.iter().zip(&times) {
            let took = median(times);
            println!(
                "| {name} | {} | {:.2} s | {:.2} .. {:.2} s | {:.2}× |",
                times.len(),
                took.as_secs_f64(),
                times.iter().min().unwrap().as_secs_f64(),
                times.iter().max().unwrap().as_secs_f64(),
                took.as_secs_f64() / memory.as_secs_f64()
            );
        }
    });
}
