//! The demo with every agent a separate OS process talking HTTP to a `swarmstate serve`
//! process: by default one this demo starts on a temporary data directory, and kills with
//! SIGKILL and restarts halfway; or a server at a URL the user gave (never restarted).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use swarmstate::{Key, PutOptions, StateStore};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{Instant, sleep, timeout};

use super::agent::Line;
use super::invariants::{Restart, check_invariants};
use super::{
    DemoArgs, RETRY, Report, Step, Swarm, Watching, agent_name, choose_victims,
    replay_dead_leaders_write, supervise, transient,
};
use crate::server_process::ServerProcess;

/// An agent process.
struct AgentProcess {
    name: String,
    child: Child,
    orders: Option<ChildStdin>,
}

/// Runs the demo with agents as processes. `url`: a server the user runs; `None`: start one.
pub(super) async fn run(args: &DemoArgs, url: Option<String>) -> anyhow::Result<Report> {
    let started = Instant::now();
    // The data of the server started here lives as long as the run.
    let dir = tempfile::Builder::new()
        .prefix("swarmstate-demo-")
        .tempdir()
        .context("making a temporary directory for the server's data")?;
    let (mut server, url) = match url {
        Some(url) => (None, url),
        None => {
            let server = ServerProcess::start(dir.path(), 0).await?;
            let url = server.url().to_owned();
            (Some(server), url)
        }
    };
    eprintln!(
        "swarmstate demo: {} agent processes on {url}{}",
        args.agents,
        if server.is_some() {
            " (swarmstate serve on a temporary directory, killed and restarted halfway)"
        } else {
            ""
        }
    );
    let (swarm, results) = supervise(&url, args).await?;
    let lease = swarm.lease;
    let views: Views = Arc::default();
    let stopped: Stopped = Arc::default();
    let mut agents = Vec::with_capacity(args.agents);
    for n in 0..args.agents {
        agents.push(spawn_agent(
            &swarm,
            &url,
            &agent_name(n),
            args,
            (views.clone(), stopped.clone()),
        )?);
    }

    let mut watching = Watching::new(&swarm, &results, args, started, Duration::from_secs(60));
    let mut killed: Vec<String> = Vec::new();
    let mut restart = None;
    while watching.next(killed.len()).await? == Step::Halfway {
        killed = kill_halfway(&swarm, &mut agents, args.kill).await?;
        watching
            .progress
            .note(&format!("killed {} (SIGKILL)", killed.join(", ")));
        if let Some(server) = &mut server {
            let acknowledged = restart_server(&swarm, server).await?;
            watching.progress.note(&format!(
                "killed the server (SIGKILL) and restarted it on the same data in {} ms",
                acknowledged.downtime.as_millis()
            ));
            restart = Some(acknowledged);
        }
    }

    // Done, in two steps. "done" tells every agent to stop working and campaigning (the
    // leader publishes once more and resigns); only once every survivor has stopped does the
    // end of their stdin ask for their views. Otherwise an agent still campaigning could win
    // a term after the others compared their views with the store, and publish a newer config.
    for agent in &mut agents {
        if let Some(orders) = &mut agent.orders {
            // An agent that died has closed its stdin; the invariants tell.
            let _ = orders.write_all(b"done\n").await;
        }
    }
    let survivors: BTreeSet<String> = agents
        .iter()
        .map(|agent| agent.name.clone())
        .filter(|name| !killed.contains(name))
        .collect();
    let deadline = Instant::now() + lease * 3 + Duration::from_secs(20);
    while Instant::now() < deadline {
        let all_stopped = survivors.is_subset(&stopped.lock().unwrap_or_else(|e| e.into_inner()));
        if all_stopped {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    for agent in &mut agents {
        agent.orders = None;
    }
    for agent in &mut agents {
        if killed.contains(&agent.name) {
            continue;
        }
        let status = timeout(lease * 3 + Duration::from_secs(20), agent.child.wait())
            .await
            .with_context(|| format!("{} did not finish", agent.name))??;
        if !status.success() {
            swarm.record(super::Record::Failed {
                error: format!("{} exited with {status}", agent.name),
            });
        }
    }
    let views: Vec<(String, BTreeMap<String, String>)> = views
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(name, view)| (name.clone(), view.clone()))
        .collect();
    let checks = check_invariants(&swarm, &views, args.agents, &killed, restart).await?;
    drop(results);
    swarm.store.close().await?;
    if let Some(server) = server {
        server.stop().await?;
    }
    Ok(Report {
        checks,
        elapsed: started.elapsed(),
    })
}

/// Each agent's final view of the config, by name.
type Views = Arc<Mutex<BTreeMap<String, BTreeMap<String, String>>>>;

/// The agents that have stopped writing.
type Stopped = Arc<Mutex<BTreeSet<String>>>;

/// Starts one agent process and a task that adds what it prints to the ledger, its view and
/// whether it stopped.
fn spawn_agent(
    swarm: &Arc<Swarm>,
    url: &str,
    name: &str,
    args: &DemoArgs,
    (views, stopped): (Views, Stopped),
) -> anyhow::Result<AgentProcess> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("demo-agent")
        .args(["--store", url])
        .args(["--prefix", &swarm.keys.prefix])
        .args(["--name", name])
        .args(["--items", &swarm.items.to_string()])
        .args(["--work", &format!("{}ms", args.work.as_millis())])
        .args(["--lease", &format!("{}ms", swarm.lease.as_millis())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let orders = child.stdin.take();
    let stdout = child.stdout.take().expect("piped");
    let swarm = swarm.clone();
    let agent = name.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Record(record)) => swarm.record(record),
                Ok(Line::Stopped) => {
                    stopped
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(agent.clone());
                }
                Ok(Line::View(view)) => {
                    views
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(agent.clone(), view);
                }
                Err(err) => swarm.record(super::Record::Failed {
                    error: format!("{agent} printed {line:?}: {err}"),
                }),
            }
        }
    });
    Ok(AgentProcess {
        name: name.to_owned(),
        child,
        orders,
    })
}

/// SIGKILLs `count` agents (the leader first), tells the others it is halfway (the staller
/// waits for that), and replays the dead leader's next write.
async fn kill_halfway(
    swarm: &Swarm,
    agents: &mut [AgentProcess],
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = agents.iter().map(|agent| agent.name.clone()).collect();
    let leader = retry(|| swarm.election.leader()).await?;
    let leader_key = swarm.keys.leader();
    let held_at = retry(|| swarm.store.get(&leader_key)).await?;
    let victims = choose_victims(swarm, &names, leader.as_ref(), count);
    for &victim in &victims {
        let agent = &mut agents[victim];
        agent.child.start_kill()?;
        agent.child.wait().await?;
        agent.orders = None;
    }
    for agent in agents.iter_mut() {
        if let Some(orders) = &mut agent.orders {
            // An agent that died on its own has closed its stdin; the invariants tell.
            let _ = orders.write_all(b"halfway\n").await;
            let _ = orders.flush().await;
        }
    }
    replay_dead_leaders_write(swarm, leader, held_at).await?;
    Ok(victims.iter().map(|&i| names[i].clone()).collect())
}

/// Notes what was acknowledged (every completion so far, and a marker written now), then
/// kills the server with SIGKILL and restarts it on the same data and port.
async fn restart_server(swarm: &Swarm, server: &mut ServerProcess) -> anyhow::Result<Restart> {
    let marker = Key::new(format!("{}.restart-marker", swarm.keys.prefix))?;
    let value = "written just before the server was killed".to_owned();
    let revision = retry(|| {
        swarm.store.put(
            &marker,
            value.clone().into(),
            // A retry after an unknown outcome must not write it twice.
            PutOptions::overwrite().idempotency_key("restart-marker"),
        )
    })
    .await?;
    let completions: Vec<(String, String)> = swarm
        .ledger()
        .completions
        .iter()
        .flat_map(|(item, by)| by.iter().map(|by| (item.clone(), by.clone())))
        .collect();
    let downtime = server.kill_and_restart().await?;
    Ok(Restart {
        completions,
        marker: Some((marker, revision, value)),
        downtime,
    })
}

/// Runs `call` until it succeeds or fails for good, through a moment without the server.
async fn retry<T, F, Fut>(mut call: F) -> swarmstate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = swarmstate::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Err(err) if transient(&err) && Instant::now() < deadline => sleep(RETRY).await,
            other => return other,
        }
    }
}
