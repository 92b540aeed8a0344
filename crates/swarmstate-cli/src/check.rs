//! `swarmstate check`: record what concurrent clients did and saw on a store while faults are
//! injected, and check the history for linearizability.
//!
//! Faults need servers this command controls, so besides `memory://`, `file://DIR` and
//! `nats://…` (an existing server, checked without faults) it accepts two kinds of servers of
//! its own, stopped when the command ends:
//!
//! - `nats-local://N`: N fresh `nats-server` nodes on free `127.0.0.1` ports with temporary
//!   storage (an R-N bucket). Their routes go through loopback proxies so that a partition can
//!   be cut. Faults: `kill`, `kill-leader`, `pause`, `partition`.
//! - `serve-local://`: one `swarmstate serve` process (this executable) on a temporary data
//!   directory (`file://`, durable: a write is acknowledged only once it is on disk), which the
//!   clients reach over HTTP through `HttpStore`. Faults: `kill` (SIGKILL the server, restart
//!   it a second later on the same data directory and port) and `pause` (SIGSTOP it for longer
//!   than both the TTL the workload's writes carry and the clients' request timeout, then
//!   SIGCONT). `kill-leader` and `partition` are refused: there is one process, with no
//!   leader and no peer. The clients run for `--duration`, or until the last fault is over and
//!   the recovered server has served them for another tenth of it, whichever is later, so a
//!   slow restart never cuts a fault short.
//!
//! # What the clients see on `serve-local://`, and why the checker needs no special case
//!
//! Every request of the check's `HttpStore` is bounded by a 1 s timeout, so no call hangs on a
//! frozen server. A refused connection (the server is down) is `Unavailable`: nothing was
//! applied, the recorder leaves it out of the history, and the client waits briefly and goes
//! on. A write sent without an answer (the connection broke under a kill, or the timeout
//! passed during a pause) is `Ambiguous`: recorded as possibly applied at any point after its
//! call, or never, and its client goes on under a new id. A frozen server does apply such
//! writes once it continues, after their clients gave up; that is what the ambiguous outcome
//! allows. A read without an answer applied nothing and is not recorded.
//!
//! The checker's model (a register per key with store-wide, strictly increasing revisions) is
//! the same before and after a restart: the durable store keeps every acknowledged write and
//! its revision counter, so the restart is invisible to the model, and a restarted server that
//! lost an acknowledged write (or reused a revision) shows up as a violation. The recorder's
//! watcher resumes by revision across the restart (the store keeps its change history), so
//! expiries, including those the reopened store performs for entries whose deadline passed
//! while it was down, are still seen.

use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use swarmstate::StateStore;
use swarmstate::http::HttpStore;
use swarmstate_check::{Workload, run, run_until};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, NatsServer, nats_server_binary};
use tokio::time::{Instant, sleep, sleep_until};

use crate::open::open_store;
use crate::server_process::ServerProcess;

/// The bucket `nats-local://` runs use.
const LOCAL_BUCKET: &str = "check";

/// The store URL of a `swarmstate serve` process this command starts itself.
const SERVE_LOCAL: &str = "serve-local://";

/// How long one request of the clients may take on `serve-local://` before it ends: a write
/// as `Ambiguous`, a read as `Unavailable`. Without it a call to a frozen server would wait
/// for the server to continue (HttpStore's default is 30 s).
const SERVE_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a killed `serve-local://` server stays down before it is restarted.
const SERVE_DOWNTIME: Duration = Duration::from_secs(1);

/// How long a `serve-local://` server stays frozen: past every TTL the workload writes (so
/// that entries expire while it cannot say so) and past the request timeout (so that calls
/// end as ambiguous rather than only slow), whichever is longer, with room to spare.
fn serve_pause(ttl: Duration) -> Duration {
    (ttl * 4).max(SERVE_REQUEST_TIMEOUT * 2)
}

/// A fault `--faults` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL a node (in turn), restart it a second later.
    Kill,
    /// SIGKILL the bucket's stream leader, restart it a second later.
    KillLeader,
    /// SIGSTOP a node for 3 s, then SIGCONT: a stall past every client timeout.
    Pause,
    /// Cut the stream leader off from the other nodes for 6 s, then heal.
    Partition,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(text: &str) -> Result<Fault, String> {
        match text {
            "kill" => Ok(Fault::Kill),
            "kill-leader" => Ok(Fault::KillLeader),
            "pause" => Ok(Fault::Pause),
            "partition" => Ok(Fault::Partition),
            other => Err(format!(
                "unknown fault {other:?}; the faults are kill, kill-leader, pause, partition"
            )),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
        })
    }
}

/// What `swarmstate check` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct CheckArgs {
    pub(crate) store: String,
    pub(crate) clients: usize,
    pub(crate) keys: usize,
    pub(crate) duration: Duration,
    pub(crate) faults: Vec<Fault>,
    pub(crate) seed: u64,
}

/// Runs the check and prints the verdict. Exit status: 0 linearizable, 1 a violation, 3 the
/// checker ran out of time (unknown); errors are 2.
pub(crate) async fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(args.keys >= 1, "--keys must be at least 1");
    let workload = Workload {
        clients: args.clients,
        keys: args.keys,
        duration: args.duration,
        seed: args.seed,
        ..Workload::default()
    };
    let faults: Vec<String> = args.faults.iter().map(Fault::to_string).collect();
    eprintln!(
        "swarmstate check: {} clients over {} keys for {:?} on {}, faults: {}",
        args.clients,
        args.keys,
        args.duration,
        args.store,
        if faults.is_empty() {
            "none".to_owned()
        } else {
            faults.join(", ")
        }
    );
    let injected = Injected::default();
    let report = if let Some(rest) = args.store.strip_prefix(SERVE_LOCAL) {
        if !rest.is_empty() {
            bail!(
                "{SERVE_LOCAL} takes nothing after the scheme, got {:?}",
                args.store
            );
        }
        if let Some(fault) = args
            .faults
            .iter()
            .find(|fault| matches!(fault, Fault::KillLeader | Fault::Partition))
        {
            bail!(
                "the fault {fault} makes no sense on {SERVE_LOCAL}: it runs one swarmstate serve \
                 process, with no leader to kill and no peer to cut off; its faults are kill and \
                 pause (kill-leader and partition need nats-local://3)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("swarmstate-check-")
            .tempdir()
            .context("making a temporary directory for the server's data")?;
        let mut server = ServerProcess::start(dir.path(), 0).await?;
        eprintln!(
            "swarmstate serve on {} (data in {})",
            server.url(),
            dir.path().join("data").display()
        );
        let http = HttpStore::builder(server.url())
            .request_timeout(SERVE_REQUEST_TIMEOUT)
            .open()
            .await
            .with_context(|| format!("connecting to the server at {}", server.url()))?;
        let store: Arc<dyn StateStore> = Arc::new(http);
        let pause = serve_pause(workload.ttl_on(&*store));
        let faults = inject_serve(&mut server, &args.faults, args.duration, pause, &injected);
        let report = run_until(store.clone(), &workload, faults).await?;
        store.close().await?;
        server.stop().await?;
        report
    } else if let Some(nodes) = args.store.strip_prefix("nats-local://") {
        let nodes: usize = nodes
            .parse()
            .ok()
            .filter(|n| (1..=5).contains(n))
            .with_context(|| format!("nats-local://N takes 1 to 5 nodes, got {nodes:?}"))?;
        if nodes == 1 && args.faults.contains(&Fault::Partition) {
            bail!("a partition needs nats-local://3 (a single node has no one to be cut from)");
        }
        if nats_server_binary().is_none() {
            bail!(
                "nats-local:// needs nats-server 2.12.1 or newer: run scripts/install-nats-server \
                 or set SWARMSTATE_NATS_SERVER"
            );
        }
        let mut local = Local::start(nodes).await;
        let store: Arc<dyn StateStore> = Arc::new(
            NatsStore::builder(local.url())
                .bucket(LOCAL_BUCKET)
                .replicas(nodes)
                .connect()
                .await
                .context("opening the bucket on the local cluster")?,
        );
        let faults = inject(&mut local, &args.faults, args.duration, &injected);
        run(store, &workload, faults).await?
    } else {
        if !args.faults.is_empty() {
            bail!(
                "faults need servers this command starts and stops: use --store serve-local://, \
                 nats-local://1 or nats-local://3"
            );
        }
        let store = open_store(&args.store).await?;
        run(store, &workload, async {}).await?
    };
    println!("{report}");
    if !args.faults.is_empty() {
        println!("{}", injected.summary(&args.faults));
    }
    if let Some(err) = injected
        .error
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
    {
        return Err(err.context("injecting the faults"));
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else if report.checked.verdict.is_violation() {
        ExitCode::from(1)
    } else {
        ExitCode::from(3)
    })
}

/// What the fault injector did, read once the run is over (the injector is dropped when the
/// workload ends, perhaps halfway through a fault).
#[derive(Default)]
struct Injected {
    /// The faults that ran to their end (the servers recovered), in order.
    done: Mutex<Vec<Fault>>,
    /// Why injecting stopped, if it failed (a server that would not restart).
    error: Mutex<Option<anyhow::Error>>,
}

impl Injected {
    fn done(&self, fault: Fault) {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fault);
    }

    fn failed(&self, err: anyhow::Error) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(err);
    }

    /// `faults: 2 of 2 injected (kill, pause)`, saying so when the run ended first.
    fn summary(&self, asked: &[Fault]) -> String {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let names: Vec<String> = done.iter().map(Fault::to_string).collect();
        let mut line = format!(
            "faults: {} of {} injected ({})",
            done.len(),
            asked.len(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
        if done.len() < asked.len() {
            line.push_str(
                "; the run ended before the others were over: give it a longer --duration",
            );
        }
        line
    }
}

/// Applies `faults` to the `serve-local://` server one after another, spread over the first
/// two thirds of the run like [`inject`]. A kill is SIGKILL, [`SERVE_DOWNTIME`] without a
/// server, and a restart on the same data directory and port; a pause is SIGSTOP for `pause`,
/// then SIGCONT. If a signal or a restart fails, it notes the error and stops injecting.
///
/// It completes a tenth of the run after the last fault is over, and the clients run until it
/// has (see [`run_until`]), so that a slow restart never cuts a fault short and the clients
/// always see the recovered server for a while.
async fn inject_serve(
    server: &mut ServerProcess,
    faults: &[Fault],
    duration: Duration,
    pause: Duration,
    injected: &Injected,
) {
    let started = Instant::now();
    let count = faults.len() as f64;
    for (n, &fault) in faults.iter().enumerate() {
        sleep_until(started + duration.mul_f64(0.1 + 0.6 * n as f64 / count)).await;
        let at = started.elapsed();
        let result = match fault {
            Fault::Kill => {
                eprintln!(
                    "{:6.1} s  kill serve (SIGKILL; restart on the same data and port in {:?})",
                    at.as_secs_f64(),
                    SERVE_DOWNTIME
                );
                async {
                    server.kill().await?;
                    sleep(SERVE_DOWNTIME).await;
                    server.restart().await
                }
                .await
            }
            Fault::Pause => {
                eprintln!(
                    "{:6.1} s  pause serve (SIGSTOP for {pause:?})",
                    at.as_secs_f64()
                );
                async {
                    server.pause().await?;
                    sleep(pause).await;
                    server.resume().await
                }
                .await
            }
            Fault::KillLeader | Fault::Partition => {
                unreachable!("refused for {SERVE_LOCAL} before the run")
            }
        };
        if let Err(err) = result {
            eprintln!(
                "{:6.1} s  {fault} serve failed: {err:#}",
                started.elapsed().as_secs_f64()
            );
            injected.failed(err);
            return;
        }
        eprintln!(
            "{:6.1} s  {fault} serve over (after {:.1} s)",
            started.elapsed().as_secs_f64(),
            (started.elapsed() - at).as_secs_f64()
        );
        injected.done(fault);
    }
    sleep(duration / 10).await;
}

/// The servers a `nats-local://N` run starts: one plain node, or a cluster whose routes can
/// be cut.
enum Local {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Local {
    async fn start(nodes: usize) -> Local {
        if nodes == 1 {
            Local::Single(NatsServer::start().await)
        } else {
            Local::Cluster(NatsCluster::start_partitionable(nodes).await)
        }
    }

    fn url(&self) -> String {
        match self {
            Local::Single(server) => server.url(),
            Local::Cluster(cluster) => cluster.connect_url(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Local::Single(_) => 1,
            Local::Cluster(cluster) => cluster.len(),
        }
    }

    fn node_mut(&mut self, index: usize) -> &mut NatsServer {
        match self {
            Local::Single(server) => server,
            Local::Cluster(cluster) => cluster.node_mut(index),
        }
    }

    async fn leader(&self, stream: &str) -> usize {
        match self {
            Local::Single(_) => 0,
            // A cluster still electing answers slowly; any node will do for a kill then.
            Local::Cluster(cluster) => {
                tokio::time::timeout(Duration::from_secs(2), cluster.stream_leader(stream))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            }
        }
    }
}

/// Applies `faults` one after another, spread over the first two thirds of the run, so that
/// each has ended (and the servers recovered) while the clients still run.
async fn inject(local: &mut Local, faults: &[Fault], duration: Duration, injected: &Injected) {
    let started = Instant::now();
    let stream = format!("KV_{LOCAL_BUCKET}");
    let count = faults.len() as f64;
    for (n, fault) in faults.iter().enumerate() {
        sleep_until(started + duration.mul_f64(0.1 + 0.6 * n as f64 / count)).await;
        let node = match fault {
            Fault::Kill => n % local.len(),
            Fault::KillLeader | Fault::Pause | Fault::Partition => local.leader(&stream).await,
        };
        eprintln!("{:6.1} s  {fault} n{node}", started.elapsed().as_secs_f64());
        match fault {
            Fault::Kill | Fault::KillLeader => {
                local.node_mut(node).kill();
                sleep(Duration::from_secs(1)).await;
                local.node_mut(node).restart().await;
            }
            Fault::Pause => {
                local.node_mut(node).pause();
                sleep(Duration::from_secs(3)).await;
                local.node_mut(node).resume();
            }
            Fault::Partition => {
                if let Local::Cluster(cluster) = local {
                    cluster.isolate(node);
                    sleep(Duration::from_secs(6)).await;
                    cluster.heal();
                }
            }
        }
        eprintln!(
            "{:6.1} s  {fault} n{node} over",
            started.elapsed().as_secs_f64()
        );
        injected.done(*fault);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_back() {
        for text in ["kill", "kill-leader", "pause", "partition"] {
            assert_eq!(text.parse::<Fault>().unwrap().to_string(), text);
        }
        let err = "explode".parse::<Fault>().unwrap_err();
        assert!(
            err.contains("explode") && err.contains("kill-leader"),
            "{err}"
        );
    }
}
