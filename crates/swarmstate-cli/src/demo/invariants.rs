//! The invariants the demo checks at the end, from what the agents recorded and from the
//! store, and the report that lists them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use swarmstate::config::{ConfigSnapshot, ConfigWatch};
use swarmstate::queue::ItemState;
use swarmstate::{Key, Pattern, Revision, StateStore, WatchStart};
use tokio::time::timeout;

use super::Swarm;

/// What was acknowledged before the server was killed and restarted, to be found after.
#[derive(Debug, Default)]
pub(super) struct Restart {
    /// (item, agent) of every completion acknowledged before the kill.
    pub(super) completions: Vec<(String, String)>,
    /// A key the supervisor wrote just before the kill, its revision and value.
    pub(super) marker: Option<(Key, Revision, String)>,
    /// How long the server took to come back.
    pub(super) downtime: Duration,
}

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

/// Checks the invariants. `views` holds each surviving agent's final view of the config,
/// `agents` how many there were, `killed` those killed on purpose, `restart` what was
/// acknowledged before the server was restarted (when it was).
pub(super) async fn check_invariants(
    swarm: &Swarm,
    views: &[(String, BTreeMap<String, String>)],
    agents: usize,
    killed: &[String],
    restart: Option<Restart>,
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
                    Some(agent)
                        if killed.contains(&agent)
                            || ledger.ambiguous.contains(&(id.clone(), agent.clone())) =>
                    {
                        unacknowledged += 1
                    }
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
                "{} items, {} completions ({unacknowledged} applied unacknowledged: as their \
                 agent was killed or the server went away), {results} results",
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
    let truth = read_config(&swarm.store, &swarm.keys.config()).await?;
    let mut diverged = Vec::new();
    let live = views.len();
    for (name, seen) in views {
        if *seen != truth {
            diverged.push(format!("{name} sees {seen:?}"));
        }
    }
    if live + killed.len() != agents {
        diverged.push(format!(
            "{} of {agents} agents reported a view, {} were killed",
            live,
            killed.len()
        ));
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
            format!("{agents} agents, {} killed on purpose", killed.len())
        } else {
            summarize(&agent_errors)
        },
    });

    if let Some(restart) = restart {
        checks.push(check_restart(swarm, restart).await?);
    }
    Ok(checks)
}

/// No acknowledged write lost across the restart: every completion acknowledged before the
/// kill has its result (by the same agent) and a done item, and the marker is there.
async fn check_restart(swarm: &Swarm, restart: Restart) -> anyhow::Result<Check> {
    let mut lost = Vec::new();
    let statuses = swarm.queue.list().await?;
    for (item, by) in &restart.completions {
        let result = swarm.store.get(&swarm.keys.result(item)).await?;
        let writer = result.map(|entry| String::from_utf8_lossy(&entry.value).into_owned());
        if writer.as_deref() != Some(by.as_str()) {
            lost.push(format!("{item} completed by {by}, result now {writer:?}"));
        }
        let done = statuses
            .iter()
            .any(|status| status.id == *item && status.state == ItemState::Done);
        if !done {
            lost.push(format!("{item} completed by {by} is not done"));
        }
    }
    let marker = match &restart.marker {
        Some((key, revision, value)) => {
            let entry = swarm.store.get(key).await?;
            match entry {
                Some(entry) if entry.revision == *revision && entry.value == value.as_bytes() => {}
                other => lost.push(format!("{key} was {value:?} at {revision}, now {other:?}")),
            }
            1
        }
        None => 0,
    };
    Ok(Check {
        name: "no acknowledged write lost across the restart",
        held: lost.is_empty() && marker == 1,
        detail: if lost.is_empty() {
            format!(
                "{} completions and {marker} marker acknowledged before kill -9 of the server, \
                 all there after it restarted on the same data ({:.1} s later)",
                restart.completions.len(),
                restart.downtime.as_secs_f64()
            )
        } else {
            summarize(&lost)
        },
    })
}

/// The agent's view of the config once it equals `truth`, or as it stands after 10 s.
pub(super) async fn converged_view(
    config: &ConfigWatch<String>,
    truth: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut receiver = config.subscribe();
    let _ = timeout(Duration::from_secs(10), async {
        loop {
            if snapshot_map(&receiver.borrow()) == *truth {
                return;
            }
            if receiver.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    snapshot_map(&receiver.borrow())
}

/// The config as a plain map from the last key token to the value.
fn snapshot_map(snapshot: &ConfigSnapshot<String>) -> BTreeMap<String, String> {
    snapshot
        .iter()
        .map(|(key, value)| (last_token(key), value.clone()))
        .collect()
}

/// The config as the store holds it now.
pub(super) async fn read_config(
    store: &std::sync::Arc<dyn StateStore>,
    pattern: &Pattern,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut stream = store.watch(pattern, WatchStart::Snapshot).await?;
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
