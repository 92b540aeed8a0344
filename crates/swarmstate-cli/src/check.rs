//! `swarmstate check`: record what concurrent clients did and saw on a store while faults are
//! injected, and check the history for linearizability.
//!
//! Faults need servers this command controls, so besides `memory://` and `nats://…` (an
//! existing server, checked without faults) it accepts `nats-local://N`: N fresh `nats-server`
//! nodes on free `127.0.0.1` ports with temporary storage (an R-N bucket), stopped when the
//! command ends. Their routes go through loopback proxies so that a partition can be cut.

use std::fmt;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use swarmstate::StateStore;
use swarmstate_check::{Workload, run};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, NatsServer, nats_server_binary};
use tokio::time::{Instant, sleep, sleep_until};

use crate::open::open_store;

/// The bucket `nats-local://` runs use.
const LOCAL_BUCKET: &str = "check";

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
    let report = if let Some(nodes) = args.store.strip_prefix("nats-local://") {
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
        let faults = inject(&mut local, &args.faults, args.duration);
        run(store, &workload, faults).await?
    } else {
        if !args.faults.is_empty() {
            bail!(
                "faults need servers this command starts and stops: use --store nats-local://1 \
                 or nats-local://3"
            );
        }
        let store = open_store(&args.store).await?;
        run(store, &workload, async {}).await?
    };
    println!("{report}");
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else if report.checked.verdict.is_violation() {
        ExitCode::from(1)
    } else {
        ExitCode::from(3)
    })
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
async fn inject(local: &mut Local, faults: &[Fault], duration: Duration) {
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
