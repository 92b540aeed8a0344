//! One agent of the demo as its own OS process (`swarmstate demo-agent`, started by the
//! demo's supervisor): the same agent as in-process, on a store reached over HTTP.
//!
//! It reads its orders on stdin (`halfway` lines; the end of stdin means the swarm is done)
//! and writes what it did on stdout, one JSON [`Line`] each, for the supervisor's ledger.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use swarmstate::config::ConfigWatch;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{sleep, timeout};

use super::invariants::{converged_view, read_config};
use super::{RETRY, Record, Sink, Swarm, agent, decode, new_swarm, transient};
use crate::open::open_store;

/// What one agent process is told.
#[derive(Debug, Clone)]
pub(crate) struct AgentArgs {
    pub(crate) store: String,
    pub(crate) prefix: String,
    pub(crate) name: String,
    pub(crate) items: usize,
    pub(crate) work: Duration,
    pub(crate) lease: Duration,
}

/// A line an agent process prints.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Line {
    /// Something for the ledger.
    Record(Record),
    /// The agent has stopped working and campaigning: it writes nothing more.
    Stopped,
    /// The agent's final view of the config, last.
    View(BTreeMap<String, String>),
}

/// Prints one line for the supervisor.
fn print(line: &Line) {
    let text = serde_json::to_string(line).expect("lines serialize");
    let mut stdout = std::io::stdout().lock();
    // The supervisor reads until the end; if it is gone there is nobody to tell.
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

pub(super) fn print_line(record: &Record) {
    print(&Line::Record(record.clone()));
}

/// Runs one agent until it reads `done` (or its stdin ends), then says it stopped; at the end
/// of its stdin prints its config view once it has caught up with the store.
pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.store).await?;
    let swarm = new_swarm(
        store,
        args.prefix,
        args.items,
        args.work,
        args.lease,
        Sink::Stdout,
    );
    let config = ConfigWatch::start(swarm.store.clone(), swarm.keys.config(), decode)
        .await
        .context("starting the config watch")?;
    let mut task = tokio::spawn(agent(swarm.clone(), args.name.clone()));

    // "halfway", then "done" (stop), then the end of stdin (report the view); an end of
    // stdin before "done" means both.
    let mut orders = BufReader::new(tokio::io::stdin()).lines();
    let mut stopped = false;
    while let Some(order) = orders.next_line().await.context("reading orders")? {
        match order.trim() {
            "halfway" => swarm.halfway.store(true, Ordering::Release),
            "done" if !stopped => {
                stop(&swarm, &mut task).await;
                stopped = true;
            }
            _ => {}
        }
    }
    if !stopped {
        stop(&swarm, &mut task).await;
    }

    let truth = loop {
        match read_config(&swarm.store, &swarm.keys.config()).await {
            Ok(truth) => break truth,
            Err(err) if err.downcast_ref().is_some_and(transient) => sleep(RETRY).await,
            Err(err) => return Err(err.context("reading the config")),
        }
    };
    print(&Line::View(converged_view(&config, &truth).await));
    Ok(ExitCode::SUCCESS)
}

// Ends the agent's work and campaigning, then says so.
async fn stop(swarm: &Swarm, task: &mut tokio::task::JoinHandle<()>) {
    swarm.done.send_replace(true);
    // The stalled agent's late completion, the leader's resign.
    let _ = timeout(swarm.lease * 3, task).await;
    print(&Line::Stopped);
}
