//! `swarmstate demo`: a swarm of agents that distribute configuration, elect a leader and work
//! through a queue of items with claims, while some of them are killed halfway. At the end it
//! checks the invariants the recipes promise and reports each one.
//!
//! Every agent has its own view of the store (a config watch, a campaign for leadership, a
//! worker loop). By default the swarm is real: a `swarmstate serve` process on a temporary
//! data directory, and each agent a separate OS process talking HTTP to it (`processes.rs`);
//! halfway some agents are killed with SIGKILL, the leader first, and the server is killed
//! and restarted once. With `--store URL` the agents are tasks of this process on that store,
//! and killing one aborts its task. Either way whatever a dead agent held (leadership, a
//! claim) is left to be released or to expire, and the others take over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use swarmstate::config::ConfigWatch;
use swarmstate::election::{Election, Leadership};
use swarmstate::queue::{ItemState, WorkQueue};
use swarmstate::{Condition, Error, Key, Pattern, StateStore, TxnOp};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

use crate::open::open_store;

pub(crate) mod agent;
mod invariants;
mod processes;
mod progress;

pub(crate) use invariants::Report;
use invariants::{check_invariants, converged_view};
use progress::Progress;

/// How long one campaign waits in the queue before it starts over. Campaigns end early when the
/// swarm is done; a long wait keeps the waiters' queue order instead of churning tickets.
const CAMPAIGN_WAIT: Duration = Duration::from_secs(60);

/// What `swarmstate demo` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct DemoArgs {
    /// The store; `None` for a server of our own with agents as processes.
    pub(crate) store: Option<String>,
    pub(crate) agents: usize,
    pub(crate) items: usize,
    pub(crate) kill: usize,
    pub(crate) work: Duration,
}

/// The keys of one demo run. Each run has its own prefix so runs on a shared store don't mix.
#[derive(Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn key(&self, rest: &str) -> Key {
        Key::new(format!("{}.{rest}", self.prefix)).expect("demo keys are valid")
    }
    fn config(&self) -> Pattern {
        Pattern::new(format!("{}.config.*", self.prefix)).expect("a valid pattern")
    }
    fn config_key(&self, name: &str) -> Key {
        self.key(&format!("config.{name}"))
    }
    fn leader(&self) -> Key {
        self.key("leader")
    }
    fn queue(&self) -> Key {
        self.key("queue")
    }
    fn result(&self, item: &str) -> Key {
        self.key(&format!("results.{item}"))
    }
    fn results(&self) -> Pattern {
        Pattern::new(format!("{}.results.*", self.prefix)).expect("a valid pattern")
    }
}

/// One thing an agent did that the invariants need; an agent process prints each as a JSON
/// line, and the supervisor adds it to its ledger.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Record {
    /// A completion of the item was acknowledged.
    Completed { item: String, by: String },
    /// A completion's outcome is unknown (the server went away while it was sent).
    Ambiguous { item: String, by: String },
    /// Leadership was won at this term.
    Term { term: u64, candidate: String },
    /// A write by a holder that had lost its lease or leadership: refused, or (a violation)
    /// applied.
    Stale { accepted: Option<String> },
    /// An error stopped the agent.
    Failed { error: String },
}

/// What the agents did, as the supervisor needs it for the invariants.
#[derive(Debug, Default)]
struct Ledger {
    /// Item id → the agents whose completion was acknowledged.
    completions: HashMap<String, Vec<String>>,
    /// (item, agent) of completions whose outcome is unknown.
    ambiguous: Vec<(String, String)>,
    /// Every leadership won: (term, candidate), in the order the wins returned.
    terms: Vec<(u64, String)>,
    /// Writes sent by a holder that had lost its lease or leadership, and how many were refused.
    stale_sent: usize,
    stale_rejected: usize,
    stale_accepted: Vec<String>,
    /// Errors that stopped an agent.
    agent_errors: Vec<String>,
}

impl Ledger {
    fn apply(&mut self, record: Record) {
        match record {
            Record::Completed { item, by } => self.completions.entry(item).or_default().push(by),
            Record::Ambiguous { item, by } => self.ambiguous.push((item, by)),
            Record::Term { term, candidate } => self.terms.push((term, candidate)),
            Record::Stale { accepted } => {
                self.stale_sent += 1;
                match accepted {
                    Some(what) => self.stale_accepted.push(what),
                    None => self.stale_rejected += 1,
                }
            }
            Record::Failed { error } => self.agent_errors.push(error),
        }
    }
}

/// Where an agent's records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// The swarm's ledger, in this process.
    Ledger,
    /// Stdout, one JSON line each, for the supervisor of an agent process.
    Stdout,
}

struct Swarm {
    store: Arc<dyn StateStore>,
    sink: Sink,
    keys: Keys,
    queue: WorkQueue,
    election: Election,
    lease: Duration,
    items: usize,
    work: Duration,
    ledger: Mutex<Ledger>,
    /// Set once every item is done: agents stop.
    done: watch::Sender<bool>,
    /// The agent that, on its first claim past halfway, stalls past its lease and then tries
    /// to complete anyway. It does not campaign, so it is never the leader that gets killed.
    staller: String,
    /// Set by the worker whose completion reaches half the items.
    halfway: AtomicBool,
}

impl Swarm {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, record: Record) {
        match self.sink {
            Sink::Ledger => {
                let mut ledger = self.ledger();
                ledger.apply(record);
                if ledger.completions.len() * 2 >= self.items {
                    self.halfway.store(true, Ordering::Release);
                }
            }
            Sink::Stdout => agent::print_line(&record),
        }
    }
}

/// Whether an error is the store being briefly away (a server restart): the agent retries.
fn transient(err: &Error) -> bool {
    matches!(err, Error::Unavailable { .. } | Error::Ambiguous { .. })
}

/// How long an agent waits before it tries again after a transient error.
const RETRY: Duration = Duration::from_millis(100);

struct Agent {
    name: String,
    task: JoinHandle<()>,
    /// The agent's view of the config. It lives outside the task so the supervisor can compare
    /// views at the end; killing the agent drops it.
    config: Option<ConfigWatch<String>>,
}

/// Runs the demo and returns its report. Progress goes to stderr.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.agents >= 2, "the demo needs at least 2 agents");
    anyhow::ensure!(
        args.kill < args.agents,
        "--kill must leave at least one agent alive ({} of {})",
        args.kill,
        args.agents
    );
    anyhow::ensure!(args.items >= 1, "the demo needs at least 1 item");
    match args.store.clone() {
        None => processes::run(&args, None).await,
        Some(url) if url.starts_with("http://") => processes::run(&args, Some(url)).await,
        Some(url) => run_tasks(&args, &url).await,
    }
}

/// The lease of claims and leadership on `store`: long enough that a healthy agent never
/// loses one on a loaded machine, short enough that takeovers are visible within the run.
fn lease_for(store: &dyn StateStore) -> Duration {
    (store.capabilities().ttl_granularity * 2).max(Duration::from_secs(2))
}

/// A new run's key prefix: each run has its own, so runs on a shared store don't mix.
fn run_prefix() -> String {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("demo.run-{run_id}")
}

/// The swarm's shared parts on `store`, for a supervisor or one agent process.
fn new_swarm(
    store: Arc<dyn StateStore>,
    prefix: String,
    items: usize,
    work: Duration,
    lease: Duration,
    sink: Sink,
) -> Arc<Swarm> {
    let keys = Keys { prefix };
    Arc::new(Swarm {
        queue: WorkQueue::new(store.clone(), keys.queue()).max_attempts(5),
        election: Election::new(store.clone(), keys.leader()),
        store,
        sink,
        keys,
        lease,
        items,
        work,
        ledger: Mutex::default(),
        done: watch::channel(false).0,
        staller: agent_name(1),
        halfway: AtomicBool::new(false),
    })
}

/// The supervisor's side of a run on the store `url`: the swarm (recording into its ledger)
/// and its watch of the results.
///
/// Progress is what the store holds, not what agents were told: a completion can apply just
/// as its agent is killed, and then no agent hears of it.
async fn supervise(
    url: &str,
    args: &DemoArgs,
) -> anyhow::Result<(Arc<Swarm>, ConfigWatch<String>)> {
    let store = open_store(url).await?;
    let lease = lease_for(&*store);
    let swarm = new_swarm(
        store,
        run_prefix(),
        args.items,
        args.work,
        lease,
        Sink::Ledger,
    );
    let results = ConfigWatch::start(swarm.store.clone(), swarm.keys.results(), decode)
        .await
        .context("starting the supervisor's watch of the results")?;
    Ok((swarm, results))
}

/// The demo with every agent a task of this process, on the store `url`.
async fn run_tasks(args: &DemoArgs, url: &str) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (swarm, results) = supervise(url, args).await?;
    let lease = swarm.lease;
    let mut agents = Vec::with_capacity(args.agents);
    for n in 0..args.agents {
        let name = agent_name(n);
        let config = ConfigWatch::start(swarm.store.clone(), swarm.keys.config(), decode)
            .await
            .with_context(|| format!("starting {name}'s config watch"))?;
        let task = tokio::spawn(agent(swarm.clone(), name.clone()));
        agents.push(Agent {
            name,
            task,
            config: Some(config),
        });
    }

    let mut watching = Watching::new(&swarm, &results, args, started, Duration::from_secs(50));
    let mut killed: Vec<String> = Vec::new();
    while watching.next(killed.len()).await? == Step::Halfway {
        killed = kill_halfway(&swarm, &mut agents, args.kill).await?;
        watching
            .progress
            .note(&format!("killed {}", killed.join(", ")));
    }
    swarm.done.send_replace(true);

    // Let the survivors wind down: the stalled agent's late completion, the leader's resign.
    for agent in &mut agents {
        if !agent.task.is_finished() {
            let _ = timeout(lease * 3, &mut agent.task).await;
        }
    }
    let truth = invariants::read_config(&swarm.store, &swarm.keys.config()).await?;
    let mut views = Vec::new();
    for agent in agents.iter().filter(|a| !killed.contains(&a.name)) {
        if let Some(config) = &agent.config {
            views.push((agent.name.clone(), converged_view(config, &truth).await));
        }
    }
    let checks = check_invariants(&swarm, &views, args.agents, &killed, None).await?;
    drop(results);
    Ok(Report {
        checks,
        elapsed: started.elapsed(),
    })
}

/// The supervisor's view of a run: the results as the store holds them, shown as progress.
struct Watching<'a> {
    swarm: &'a Swarm,
    results: &'a ConfigWatch<String>,
    progress: Progress,
    started: Instant,
    deadline: Instant,
    limit: Duration,
    agents: usize,
    tick: u64,
    halfway_seen: bool,
}

/// Where a run got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Half the items are done (once per run): time to kill.
    Halfway,
    /// Every item is done.
    Done,
}

impl<'a> Watching<'a> {
    fn new(
        swarm: &'a Swarm,
        results: &'a ConfigWatch<String>,
        args: &DemoArgs,
        started: Instant,
        limit: Duration,
    ) -> Watching<'a> {
        Watching {
            swarm,
            results,
            progress: Progress::new(),
            started,
            deadline: started + limit,
            limit,
            agents: args.agents,
            tick: 0,
            halfway_seen: false,
        }
    }

    /// Waits, showing progress, until halfway (the first time) or done; an error past the
    /// run's time limit, listing what is unfinished. `killed`: how many agents are dead.
    async fn next(&mut self, killed: usize) -> anyhow::Result<Step> {
        let items = self.swarm.items;
        loop {
            let done = self.results.current().len();
            if self.tick.is_multiple_of(5) || done >= items {
                let leader = self.swarm.election.leader().await.ok().flatten();
                self.progress
                    .show(self.started, done, items, self.agents - killed, &leader);
            }
            self.tick += 1;
            if done >= items {
                self.progress.finish();
                return Ok(Step::Done);
            }
            if !self.halfway_seen && self.swarm.halfway.load(Ordering::Acquire) {
                self.halfway_seen = true;
                return Ok(Step::Halfway);
            }
            if Instant::now() > self.deadline {
                self.progress.finish();
                anyhow::bail!(
                    "the swarm did not finish within {:?} ({done} of {items} items done){}",
                    self.limit,
                    unfinished(self.swarm).await
                );
            }
            sleep(Duration::from_millis(20)).await;
        }
    }
}

fn agent_name(n: usize) -> String {
    format!("agent-{n:02}")
}

fn decode(_key: &Key, value: &Bytes) -> Result<String, String> {
    String::from_utf8(value.to_vec()).map_err(|err| err.to_string())
}

/// One agent: campaigns for leadership and works the queue at the same time.
async fn agent(swarm: Arc<Swarm>, name: String) {
    let campaigns = async {
        if name == swarm.staller {
            return Ok(());
        }
        campaign(&swarm, &name).await
    };
    let outcome = tokio::try_join!(campaigns, work(&swarm, &name));
    if let Err(err) = outcome {
        swarm.record(Record::Failed {
            error: format!("{name}: {err:#}"),
        });
    }
}

async fn campaign(swarm: &Swarm, name: &str) -> anyhow::Result<()> {
    let mut done = swarm.done.subscribe();
    loop {
        if *done.borrow() {
            return Ok(());
        }
        let won = tokio::select! {
            won = swarm.election.campaign(name, swarm.lease, CAMPAIGN_WAIT) => won,
            () = until_done(&mut done) => return Ok(()),
        };
        match won {
            Ok(leadership) => lead(swarm, name, leadership).await?,
            Err(Error::LockHeld { .. }) => continue,
            Err(err) if transient(&err) => sleep(RETRY).await,
            Err(err) => return Err(err).context("campaigning"),
        }
    }
}

/// The leader's duties: enqueue the items (idempotent, so a new leader simply repeats it) and
/// publish a new config version every 100 ms, fenced by its term. A leader that loses the
/// store for a moment steps down; its leadership expires and the next campaign decides.
async fn lead(swarm: &Swarm, name: &str, leadership: Leadership) -> anyhow::Result<()> {
    match lead_until_done(swarm, name, leadership).await {
        Err(err) if err.downcast_ref::<Error>().is_some_and(transient) => Ok(()),
        other => other,
    }
}

async fn lead_until_done(
    swarm: &Swarm,
    name: &str,
    mut leadership: Leadership,
) -> anyhow::Result<()> {
    let term = leadership.term();
    swarm.record(Record::Term {
        term: term.get(),
        candidate: name.to_owned(),
    });
    let mut version = 0u64;
    let mut done = swarm.done.subscribe();
    publish_config(swarm, &leadership, &mut version).await?;
    for item in 0..swarm.items {
        if leadership.is_lost() {
            return Ok(());
        }
        swarm
            .queue
            .enqueue(&format!("item-{item:04}"), format!("payload {item}"))
            .await?;
    }
    loop {
        tokio::select! {
            () = leadership.lost() => return Ok(()),
            () = until_done(&mut done) => {
                publish_config(swarm, &leadership, &mut version).await?;
                return leadership.resign().await.or_else(ignore_lost).context("resigning");
            }
            () = sleep(Duration::from_millis(100)) => {
                publish_config(swarm, &leadership, &mut version).await?;
            }
        }
    }
}

async fn publish_config(
    swarm: &Swarm,
    leadership: &Leadership,
    version: &mut u64,
) -> anyhow::Result<()> {
    let term = leadership.term();
    let current = swarm
        .store
        .get(&swarm.keys.config_key("version"))
        .await?
        .and_then(|entry| std::str::from_utf8(&entry.value).ok()?.parse::<u64>().ok());
    *version = current.unwrap_or(0).max(*version) + 1;
    let ops = vec![
        TxnOp::put(&swarm.keys.config_key("version"), version.to_string()),
        TxnOp::put(
            &swarm.keys.config_key("leader"),
            leadership.candidate().to_owned(),
        ),
        TxnOp::put(&swarm.keys.config_key("term"), term.to_string()),
    ];
    match leadership.fenced_txn(ops).await {
        Ok(_) => Ok(()),
        // Leadership just ended; the next leader publishes.
        Err(Error::LockLost { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The items the queue does not show done, one per line, for an error message.
async fn unfinished(swarm: &Swarm) -> String {
    match swarm.queue.list().await {
        Ok(items) => items
            .iter()
            .filter(|item| item.state != ItemState::Done)
            .map(|item| {
                format!(
                    "\n  {} {:?} attempts {} claimant {:?} lease left {:?} last error {:?}",
                    item.id,
                    item.state,
                    item.attempts,
                    item.claimant,
                    item.lease_left,
                    item.last_error
                )
            })
            .collect(),
        Err(err) => format!("\n  (the queue could not be listed: {err})"),
    }
}

/// Resolves once the swarm is done (or the supervisor is gone).
async fn until_done(done: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await of the caller.
    let _ = done.wait_for(|done| *done).await.map(|_| ());
}

fn ignore_lost(err: Error) -> Result<(), Error> {
    match err {
        Error::LockLost { .. } => Ok(()),
        other => Err(other),
    }
}

async fn work(swarm: &Swarm, name: &str) -> anyhow::Result<()> {
    let done = swarm.done.subscribe();
    let mut stalled = false;
    while !*done.borrow() {
        let claim = match swarm
            .queue
            .claim_wait(name, swarm.lease, Duration::from_millis(500))
            .await
        {
            Ok(claim) => claim,
            Err(err) if transient(&err) => {
                sleep(RETRY).await;
                continue;
            }
            Err(err) => return Err(err).context("claiming"),
        };
        let Some(claim) = claim else { continue };
        let stall = name == swarm.staller && !stalled && swarm.halfway.load(Ordering::Acquire);
        stalled |= stall;
        if stall {
            // Freeze past the lease, as a garbage-collection pause or a swapped-out process
            // would, then carry on as if nothing happened.
            sleep(swarm.lease + swarm.store.capabilities().ttl_granularity * 2).await;
        } else {
            sleep(swarm.work).await;
        }
        let item = claim.id.clone();
        let result = vec![TxnOp::put(&swarm.keys.result(&item), name.to_owned())];
        let by = name.to_owned();
        let mut outcome = swarm
            .queue
            .complete_with(claim.clone(), result.clone())
            .await;
        if stall {
            // A stalled completion cannot apply (its lease ran out), so when the server went
            // away under it (its first write after a restart), asking again tells the truth.
            let deadline = Instant::now() + swarm.lease * 5;
            while matches!(
                outcome,
                Err(Error::Ambiguous { .. } | Error::Unavailable { .. })
            ) && Instant::now() < deadline
            {
                sleep(RETRY).await;
                outcome = swarm
                    .queue
                    .complete_with(claim.clone(), result.clone())
                    .await;
            }
        }
        match outcome {
            Ok(_) => {
                if stall {
                    swarm.record(Record::Stale {
                        accepted: Some(format!("{name} completed {item} after its lease ran out")),
                    });
                }
                swarm.record(Record::Completed { item, by });
            }
            Err(Error::LockLost { .. }) => {
                if stall {
                    swarm.record(Record::Stale { accepted: None });
                }
                // Otherwise this worker was slow past its lease; the item is someone else's.
            }
            // Whether it applied is unknown; the invariants accept either.
            Err(Error::Ambiguous { .. }) => swarm.record(Record::Ambiguous { item, by }),
            // Not applied: the lease runs out and someone claims the item again.
            Err(Error::Unavailable { .. }) => sleep(RETRY).await,
            Err(err) => return Err(err).with_context(|| format!("completing {item}")),
        }
    }
    Ok(())
}

/// Kills `count` agents, the leader first (never the staller), and replays the dead leader's
/// next fenced write once a successor has taken over: it must be refused.
async fn kill_halfway(
    swarm: &Swarm,
    agents: &mut [Agent],
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = agents.iter().map(|agent| agent.name.clone()).collect();
    let leader = swarm.election.leader().await?;
    let held_at = swarm.store.get(&swarm.keys.leader()).await?;
    let victims = choose_victims(swarm, &names, leader.as_ref(), count);
    for &victim in &victims {
        agents[victim].task.abort();
        agents[victim].config = None;
    }
    replay_dead_leaders_write(swarm, leader, held_at).await?;
    Ok(victims.iter().map(|&i| names[i].clone()).collect())
}

/// The indexes of `count` agents to kill: the leader first, never the staller.
fn choose_victims(
    swarm: &Swarm,
    names: &[String],
    leader: Option<&swarmstate::election::Leader>,
    count: usize,
) -> Vec<usize> {
    let mut victims: Vec<usize> = Vec::new();
    if let Some(leader) = leader {
        victims.extend(names.iter().position(|name| *name == leader.candidate));
    }
    let mut n = names.len();
    while victims.len() < count && n > 0 {
        n -= 1;
        if !victims.contains(&n) && names[n] != swarm.staller {
            victims.push(n);
        }
    }
    victims
}

/// Waits for the next leader after the killed `old` one (the election's own change stream,
/// not a polling loop), then replays the dead leader's next fenced write, which checks the
/// leader key as it was when it died (`held_at`): it must be refused.
async fn replay_dead_leaders_write(
    swarm: &Swarm,
    leader: Option<swarmstate::election::Leader>,
    held_at: Option<swarmstate::Entry>,
) -> anyhow::Result<()> {
    let (Some(old), Some(held_at)) = (leader, held_at) else {
        return Ok(());
    };
    let limit = swarm.lease * 4;
    let successor = timeout(limit, async {
        loop {
            let mut changes = match swarm.election.observe().await {
                Ok(changes) => changes,
                Err(err) if transient(&err) => {
                    sleep(RETRY).await;
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            while let Some(change) = changes.next().await {
                match change {
                    Ok(Some(new)) if new.term > old.term => return Ok(()),
                    Ok(_) => {}
                    Err(err) if transient(&err) => break,
                    Err(err) => return Err(anyhow::Error::from(err)),
                }
            }
            sleep(RETRY).await;
        }
    })
    .await;
    match successor {
        Ok(outcome) => outcome?,
        Err(_) => anyhow::bail!(
            "no new leader within {limit:?} of killing {}",
            old.candidate
        ),
    }
    let replay = vec![
        TxnOp::check(&swarm.keys.leader(), Condition::At(held_at.revision)),
        TxnOp::put(&swarm.keys.config_key("version"), "0"),
    ];
    let outcome = swarm.store.txn(replay).await;
    match outcome {
        Err(err) if err.is_conflict() => swarm.record(Record::Stale { accepted: None }),
        Ok(_) => swarm.record(Record::Stale {
            accepted: Some(format!(
                "the dead leader {}'s write (term {}) was applied",
                old.candidate, old.term
            )),
        }),
        Err(err) => return Err(err).context("replaying the dead leader's write"),
    }
    Ok(())
}
