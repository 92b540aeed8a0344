//! `bench-peers`: swarmstate side by side with etcd, Redis and NATS, on this machine, in one
//! run. Run it through `scripts/bench-peers`, which installs the servers and builds
//! `swarmstate` beside this binary.
//!
//! It starts every server itself on free `127.0.0.1` ports with temporary directories
//! (`swarmstate serve` on a file store, one etcd member, Redis durable and with its defaults,
//! one nats-server), measures each workload on each target in alternating order over several
//! rounds, stops everything it started, and prints one markdown table on stdout (progress goes
//! to stderr).

mod drivers;
mod servers;
mod stats;
mod table;
mod workloads;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use swarmstate_http::HttpStore;
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::NatsServer;

use crate::drivers::{Client, LockKind};
use crate::servers::{Etcd, Redis, RedisPersistence, Swarmstate};
use crate::stats::{Round, Summary};
use crate::table::{Goal, Row};
use crate::workloads::{Entrant, Op};

/// The swarmstate entrant's name; ratios are swarmstate's rate over each peer's.
const SWARMSTATE: &str = "swarmstate";

#[derive(Debug, Parser)]
#[command(about = "swarmstate side by side with etcd, Redis and NATS")]
struct Args {
    /// Shorter measurements and fewer watch changes (3 rounds, as always at least).
    #[arg(long)]
    quick: bool,
    /// Rounds; the order of the targets is reversed every other round. At least 3.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Only the workloads whose name contains this (e.g. `lock`, `watch`).
    #[arg(long)]
    only: Option<String>,
    /// Only the targets whose name contains this, besides swarmstate.
    #[arg(long)]
    targets: Option<String>,
    /// The length of each measurement, in milliseconds (default 1,500; 400 with --quick);
    /// longer ones leave time to attach a profiler to the PIDs printed at the start.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// The number of changes the watch fan-out writes, one every 3 ms (default 300; 100 with
    /// --quick).
    #[arg(long)]
    watch_puts: Option<usize>,
}

/// What a row measures.
#[derive(Debug, Clone, Copy)]
enum Workload {
    Loop { op: Op, in_flight: usize },
    ContendedLock,
    WatchFanOut,
}

/// A row of the plan: the workload, its label, and the goals on its rows.
struct Spec {
    name: &'static str,
    workload: Workload,
    unit: &'static str,
    latency_of: Option<&'static str>,
    /// The goal on each entrant's row, by entrant name.
    goals: Vec<(&'static str, Goal)>,
}

impl Spec {
    /// The "in flight" column.
    fn in_flight(&self) -> String {
        match self.workload {
            Workload::Loop { in_flight, .. } => in_flight.to_string(),
            Workload::ContendedLock => "4 tasks, 1 lock".to_owned(),
            Workload::WatchFanOut => "1 writer, 100 watchers".to_owned(),
        }
    }

    /// This row's part of its keys: the name as a key token and the concurrency, so no two
    /// rows share keys (or a lock).
    fn tag(&self) -> String {
        let base: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        match self.workload {
            Workload::Loop { in_flight, .. } => format!("{base}-{in_flight}"),
            _ => base,
        }
    }

    /// The entrants of this row: every target, etcd's with its Lock service in the lock rows
    /// and, in the lock-cycle rows, once more with a txn lock.
    fn entrants(&self, targets: &[Entrant]) -> Vec<Entrant> {
        let lock_row = matches!(
            self.workload,
            Workload::Loop {
                op: Op::LockCycle(_),
                ..
            } | Workload::ContendedLock
        );
        let mut entrants = Vec::new();
        for target in targets {
            if target.name == "etcd" && lock_row {
                entrants.push(Entrant {
                    name: "etcd (Lock API, lease)".to_owned(),
                    lock: LockKind::EtcdLockApi,
                    ..target.clone()
                });
                if matches!(self.workload, Workload::Loop { .. }) {
                    entrants.push(Entrant {
                        name: "etcd (txn lock, lease)".to_owned(),
                        lock: LockKind::EtcdTxn,
                        ..target.clone()
                    });
                }
            } else {
                entrants.push(target.clone());
            }
        }
        entrants
    }
}

fn plan() -> Vec<Spec> {
    let looped = |name, op, in_flight, goals| Spec {
        name,
        workload: Workload::Loop { op, in_flight },
        unit: "ops",
        latency_of: None,
        goals,
    };
    // The lock kind is the entrant's; this one only marks the row.
    let lock = Op::LockCycle(LockKind::Recipe);
    let five_ms = Duration::from_millis(5);
    vec![
        looped("put", Op::Put, 1, vec![]),
        looped(
            "put",
            Op::Put,
            16,
            vec![
                ("etcd", Goal::RatioAtLeast(3.0)),
                ("Redis (AOF, fsync always)", Goal::RatioAtLeast(1.0)),
            ],
        ),
        looped("linearizable get", Op::Get, 1, vec![]),
        looped(
            "linearizable get",
            Op::Get,
            16,
            vec![("etcd", Goal::RatioAtLeast(10.0))],
        ),
        looped("CAS, own key", Op::CasOwn, 1, vec![]),
        looped("CAS, own key", Op::CasOwn, 16, vec![]),
        Spec {
            unit: "commits",
            ..looped("CAS, 16 writers on one key", Op::CasShared, 16, vec![])
        },
        Spec {
            unit: "cycles",
            ..looped("lock acquire + release", lock, 1, vec![])
        },
        Spec {
            unit: "cycles",
            ..looped(
                "lock acquire + release",
                lock,
                16,
                vec![("Redis (AOF, fsync always)", Goal::RatioAtLeast(1.0))],
            )
        },
        Spec {
            name: "contended lock",
            workload: Workload::ContendedLock,
            unit: "acquisitions",
            latency_of: Some("hand-over"),
            goals: vec![
                (SWARMSTATE, Goal::P99Below(five_ms)),
                ("etcd (Lock API, lease)", Goal::RatioAtLeast(10.0)),
            ],
        },
        Spec {
            name: "watch fan-out",
            workload: Workload::WatchFanOut,
            unit: "deliveries",
            latency_of: Some("delivery"),
            goals: vec![(SWARMSTATE, Goal::P99Below(five_ms))],
        },
    ]
}

/// How long each measurement runs, and the watch workload's size.
struct Budget {
    duration: Duration,
    warm_up: Duration,
    watch_puts: usize,
    watch_pace: Duration,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        Budget {
            duration: Duration::from_millis(if quick { 400 } else { 1_500 }),
            warm_up: Duration::from_millis(if quick { 100 } else { 300 }),
            watch_puts: if quick { 100 } else { 300 },
            watch_pace: Duration::from_millis(3),
        }
    }
}

/// A measurement that takes longer than this has hung.
const MEASUREMENT_TIMEOUT: Duration = Duration::from_secs(120);

async fn measure(
    spec: &Spec,
    entrant: &Entrant,
    budget: &Budget,
    duration: Duration,
) -> Result<Round> {
    let tag = spec.tag();
    let run = async {
        match spec.workload {
            Workload::Loop { op, in_flight } => {
                let op = match op {
                    Op::LockCycle(_) => Op::LockCycle(entrant.lock),
                    other => other,
                };
                workloads::closed_loop(entrant, op, in_flight, duration, &tag).await
            }
            Workload::ContendedLock => workloads::contended_lock(entrant, 4, duration, &tag).await,
            Workload::WatchFanOut => {
                workloads::watch_fan_out(entrant, 100, budget.watch_puts, budget.watch_pace, &tag)
                    .await
            }
        }
    };
    tokio::time::timeout(MEASUREMENT_TIMEOUT, run)
        .await
        .with_context(|| format!("no result within {MEASUREMENT_TIMEOUT:?}"))?
}

/// The servers, kept alive until the table is printed.
struct Servers {
    _swarmstate: Swarmstate,
    _etcd: Etcd,
    _redis_durable: Redis,
    _redis_defaults: Redis,
    _nats: NatsServer,
}

async fn start(args: &Args) -> Result<(Servers, Vec<Entrant>)> {
    let binary = servers::sibling_binary("swarmstate")?;
    eprintln!("starting swarmstate serve ({})", binary.display());
    let swarmstate = Swarmstate::start(&binary)?;
    eprintln!("starting etcd");
    let etcd = Etcd::start().await?;
    eprintln!("starting redis-server (AOF, fsync always) and redis-server (defaults)");
    let redis_durable = Redis::start(RedisPersistence::AppendFsyncAlways).await?;
    let redis_defaults = Redis::start(RedisPersistence::Defaults).await?;
    eprintln!("starting nats-server");
    let nats = NatsServer::start().await;

    let http = HttpStore::open(&swarmstate.url)
        .await
        .context("open HttpStore")?;
    let nats_store = NatsStore::builder(nats.url())
        .bucket("bench")
        .connect()
        .await
        .context("open NatsStore")?;
    let entrant = |name: &str, client: Client, lock| Entrant {
        name: name.to_owned(),
        client,
        lock,
    };
    let mut entrants = vec![
        entrant(SWARMSTATE, Client::store(http), LockKind::Recipe),
        entrant(
            "etcd",
            Client::etcd(&etcd.url).await?,
            LockKind::EtcdLockApi,
        ),
        entrant(
            "Redis (AOF, fsync always)",
            Client::redis(&redis_durable.url).await?,
            LockKind::RedisSetNx,
        ),
        entrant(
            "Redis (defaults: no AOF; reference)",
            Client::redis(&redis_defaults.url).await?,
            LockKind::RedisSetNx,
        ),
        entrant(
            "NATS (sync_interval: always)",
            Client::store(nats_store),
            LockKind::Recipe,
        ),
    ];
    if let Some(filter) = &args.targets {
        entrants.retain(|e| e.name == SWARMSTATE || e.name.contains(filter.as_str()));
    }
    eprintln!(
        "pids: swarmstate {}, etcd {}, redis {} and {}, nats {:?}",
        swarmstate.process.pid(),
        etcd.process.pid(),
        redis_durable.process.pid(),
        redis_defaults.process.pid(),
        nats.pid()
    );
    let servers = Servers {
        _swarmstate: swarmstate,
        _etcd: etcd,
        _redis_durable: redis_durable,
        _redis_defaults: redis_defaults,
        _nats: nats,
    };
    Ok((servers, entrants))
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    args.rounds = args.rounds.max(3);
    // The clients share two workers, as a client process on this 2-core machine would.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let table = runtime.block_on(run(&args))?;
    print!("{table}");
    Ok(())
}

async fn run(args: &Args) -> Result<String> {
    let mut budget = Budget::new(args.quick);
    if let Some(millis) = args.duration_ms {
        budget.duration = Duration::from_millis(millis);
    }
    if let Some(puts) = args.watch_puts {
        budget.watch_puts = puts.max(1);
    }
    let (servers, targets) = start(args).await?;
    let mut specs = plan();
    if let Some(only) = &args.only {
        specs.retain(|spec| spec.name.contains(only.as_str()));
    }
    let rows: Vec<(usize, Vec<Entrant>)> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| (i, spec.entrants(&targets)))
        .collect();

    // A short pass first, discarded: connections opened, servers and caches warm.
    for (i, entrants) in &rows {
        let spec = &specs[*i];
        if let Workload::Loop { .. } = spec.workload {
            for entrant in entrants {
                let _ = measure(spec, entrant, &budget, budget.warm_up).await;
            }
        }
    }

    let mut results: HashMap<(usize, String), Vec<Round>> = HashMap::new();
    let mut failures: HashMap<(usize, String), String> = HashMap::new();
    for round in 0..args.rounds {
        for (i, entrants) in &rows {
            let spec = &specs[*i];
            let mut order: Vec<&Entrant> = entrants.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for entrant in order {
                eprintln!(
                    "round {}/{}: {} ({}) on {}",
                    round + 1,
                    args.rounds,
                    spec.name,
                    spec.in_flight(),
                    entrant.name
                );
                let key = (*i, entrant.name.clone());
                match measure(spec, entrant, &budget, budget.duration).await {
                    Ok(result) => {
                        eprintln!("  {}", stats::format_rate(result.rate, spec.unit));
                        results.entry(key).or_default().push(result);
                    }
                    Err(error) => {
                        eprintln!("  failed: {error:#}");
                        failures.insert(key, format!("{error:#}"));
                    }
                }
            }
        }
    }
    drop(targets);
    drop(servers);

    let mut table_rows = Vec::new();
    for (i, entrants) in &rows {
        let spec = &specs[*i];
        let summary_of = |name: &str| {
            Summary::of(
                results
                    .get(&(*i, name.to_owned()))
                    .map_or(&[][..], Vec::as_slice),
            )
        };
        let ours = summary_of(SWARMSTATE);
        for entrant in entrants {
            let summary = summary_of(&entrant.name);
            let ratio = (entrant.name != SWARMSTATE
                && !matches!(spec.workload, Workload::WatchFanOut)
                && summary.rate > 0.0
                && ours.rounds > 0)
                .then(|| ours.rate / summary.rate);
            let goal = spec
                .goals
                .iter()
                .find(|(name, _)| *name == entrant.name)
                .map(|(_, goal)| *goal);
            table_rows.push(Row {
                workload: spec.name.to_owned(),
                in_flight: spec.in_flight(),
                target: entrant.name.clone(),
                unit: spec.unit,
                latency_of: spec.latency_of,
                summary,
                ratio,
                goal,
                failure: failures.get(&(*i, entrant.name.clone())).cloned(),
            });
        }
    }
    Ok(table::render(&table_rows))
}
