//! The invariants the demo checks at the end, from what the agents recorded and from the
//! store, and the report that lists them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use swarmstate::config::ConfigSnapshot;
use swarmstate::queue::ItemState;
use swarmstate::{Key, StateStore, WatchStart};
use tokio::time::timeout;

use super::{Agent, Swarm};

/// The demo's outcome: each invariant with whether it held and what was seen.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) checks: Vec<Check>,
    pub(crate) elapsed: Duration,
}

#[derive(Debug)]
pub(crate) struct Check {
    pub(crate) name: &'static str,
    pub(crate) held: bool,
    pub(crate) detail: String,
}

impl Report {
    pub(crate) fn all_held(&self) -> bool {
        self.checks.iter().all(|check| check.held)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for check in &self.checks {
            let mark = if check.held { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} {}: {}", check.name, check.detail)?;
        }
        write!(f, "finished in {:.1} s", self.elapsed.as_secs_f64())
    }
}

pub(super) async fn check_invariants(
    swarm: &Swarm,
    agents: &[Agent],
    killed: &[String],
) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    // The agents are done or dead: what they recorded is final.
    let ledger = std::mem::take(&mut *swarm.ledger());

    // Every item done exactly once: one acknowledged completion each (or none, when the
    // completion applied just as its agent was killed: the result then names a killed agent),
    // the queue agrees, and the result written with the completion is there.
    let statuses = swarm.queue.list().await?;
    let mut problems = Vec::new();
    let mut unacknowledged = 0;
    for item in 0..swarm.items {
        let id = format!("item-{item:04}");
        match ledger.completions.get(&id).map(Vec::len) {
            Some(1) => {}
            Some(n) => problems.push(format!("{id} completed {n} times")),
            None => {
                let by = swarm.store.get(&swarm.keys.result(&id)).await?;
                match by.map(|entry| String::from_utf8_lossy(&entry.value).into_owned()) {
                    Some(agent) if killed.contains(&agent) => unacknowledged += 1,
                    _ => problems.push(format!("{id} never completed")),
                }
            }
        }
    }
    let done = statuses
        .iter()
        .filter(|status| status.state == ItemState::Done)
        .count();
    if statuses.len() != swarm.items || done != swarm.items {
        problems.push(format!(
            "the queue holds {} items, {done} done",
            statuses.len()
        ));
    }
    let mut results = 0;
    for item in 0..swarm.items {
        if swarm
            .store
            .get(&swarm.keys.result(&format!("item-{item:04}")))
            .await?
            .is_some()
        {
            results += 1;
        }
    }
    if results != swarm.items {
        problems.push(format!(
            "{results} results written for {} items",
            swarm.items
        ));
    }
    checks.push(Check {
        name: "every item done exactly once",
        held: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "{} items, {} completions ({unacknowledged} applied as their agent was killed), \
                 {results} results",
                swarm.items, swarm.items
            )
        } else {
            summarize(&problems)
        },
    });

    let mut by_term: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (term, candidate) in &ledger.terms {
        by_term.entry(*term).or_default().push(candidate);
    }
    let shared: Vec<String> = by_term
        .iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .map(|(term, leaders)| format!("term {term}: {}", leaders.join(", ")))
        .collect();
    let leaders: Vec<String> = by_term
        .iter()
        .map(|(term, leaders)| format!("{} ({term})", leaders[0]))
        .collect();
    checks.push(Check {
        name: "at most one leader per term",
        held: shared.is_empty() && by_term.len() >= 2,
        detail: if !shared.is_empty() {
            summarize(&shared)
        } else if by_term.len() < 2 {
            format!(
                "only {} leadership(s); the leader's death was not exercised",
                by_term.len()
            )
        } else {
            format!("{} terms: {}", by_term.len(), leaders.join(" → "))
        },
    });

    checks.push(Check {
        name: "every stale write rejected",
        held: ledger.stale_accepted.is_empty() && ledger.stale_sent >= 2,
        detail: if !ledger.stale_accepted.is_empty() {
            summarize(&ledger.stale_accepted)
        } else {
            format!(
                "{} of {} rejected (the dead leader's replayed write, a stalled worker's late completion)",
                ledger.stale_rejected, ledger.stale_sent
            )
        },
    });
    let agent_errors = ledger.agent_errors.clone();

    // Config converged: every surviving agent's view equals a fresh read of the store.
    let truth = read_config(swarm).await?;
    let mut diverged = Vec::new();
    let mut live = 0;
    for agent in agents.iter().filter(|a| !killed.contains(&a.name)) {
        let Some(config) = &agent.config else {
            continue;
        };
        live += 1;
        let mut receiver = config.subscribe();
        let caught_up = timeout(Duration::from_secs(5), async {
            loop {
                if snapshot_map(&receiver.borrow()) == truth {
                    return;
                }
                if receiver.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let seen = snapshot_map(&receiver.borrow());
        if caught_up.is_err() || seen != truth {
            diverged.push(format!("{} sees {seen:?}", agent.name));
        }
    }
    let version = truth.get("version").cloned().unwrap_or_default();
    checks.push(Check {
        name: "config converged everywhere",
        held: diverged.is_empty() && !truth.is_empty(),
        detail: if diverged.is_empty() {
            format!(
                "{live} live agents all see version {version} ({} keys)",
                truth.len()
            )
        } else {
            summarize(&diverged)
        },
    });

    checks.push(Check {
        name: "no agent failed",
        held: agent_errors.is_empty(),
        detail: if agent_errors.is_empty() {
            format!(
                "{} agents, {} killed on purpose",
                agents.len(),
                killed.len()
            )
        } else {
            summarize(&agent_errors)
        },
    });
    Ok(checks)
}

/// The config as a plain map from the last key token to the value.
fn snapshot_map(snapshot: &ConfigSnapshot<String>) -> BTreeMap<String, String> {
    snapshot
        .iter()
        .map(|(key, value)| (last_token(key), value.clone()))
        .collect()
}

async fn read_config(swarm: &Swarm) -> anyhow::Result<BTreeMap<String, String>> {
    let mut stream = swarm
        .store
        .watch(&swarm.keys.config(), WatchStart::Snapshot)
        .await?;
    let mut map = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            swarmstate::WatchEvent::Put(entry) => {
                map.insert(
                    last_token(&entry.key),
                    String::from_utf8_lossy(&entry.value).into_owned(),
                );
            }
            swarmstate::WatchEvent::CaughtUp { .. } => break,
            other => anyhow::bail!("unexpected event in a config snapshot: {other:?}"),
        }
    }
    Ok(map)
}

fn last_token(key: &Key) -> String {
    key.as_str()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn summarize(problems: &[String]) -> String {
    let mut text = problems
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > 5 {
        let _ = write!(text, "; and {} more", problems.len() - 5);
    }
    text
}
