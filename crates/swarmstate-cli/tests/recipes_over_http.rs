//! The recipes across OS processes through one `swarmstate serve`: worker processes (this test
//! binary run again, one role per child) contend for one lock and work one queue over HTTP,
//! each printing on stdout what it did. The parent SIGKILLs one worker while it holds the lock
//! or a claim and checks that another worker takes over with a higher fencing token, that the
//! dead worker's late write (replayed by the parent exactly as the recipe would send it) is
//! refused, and that no acknowledged increment or completion is lost or doubled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use swarmstate::lock::acquire_lock_wait;
use swarmstate::queue::{ItemState, WorkQueue};
use swarmstate::{
    Condition, Error, Key, Pattern, Revision, StateStore, StateStoreExt, TxnOp, WatchEvent,
    WatchStart,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[path = "support/serve.rs"]
mod serve;

use serve::Served;

/// The worker's name; set only in a child, so it also tells a child run from a direct one.
const WORKER_VAR: &str = "SWARMSTATE_RECIPE_WORKER";
/// The server's URL.
const URL_VAR: &str = "SWARMSTATE_RECIPE_URL";
/// For the worker to be killed: how many rounds it finishes before it stalls holding the lock
/// (or a claim) until the parent kills it.
const STALL_AFTER_VAR: &str = "SWARMSTATE_RECIPE_STALL_AFTER";

/// How long any one wait of the parent (and any child's whole run) may take: generous, since
/// every wait is for a condition, never a sleep.
const LIMIT: Duration = Duration::from_secs(30);
/// The lock's TTL, and the claims' lease. It is also the parent's margin between reading the
/// worker's "stalling" line and killing it, for the kill to land while the lock is held.
const TTL: Duration = Duration::from_secs(2);
/// The survivors that keep working after one worker is killed.
const SURVIVORS: usize = 3;
/// How many rounds the worker to be killed completes before it stalls.
const ROUNDS_BEFORE_STALL: u32 = 2;
const ITEMS: usize = 60;

fn lock_key() -> Key {
    Key::new("locks.counter").unwrap()
}

fn counter_key() -> Key {
    Key::new("counter").unwrap()
}

fn queue_name() -> Key {
    Key::new("jobs").unwrap()
}

fn result_key(id: &str) -> Key {
    Key::new(format!("results.{id}")).unwrap()
}

/// Set by the parent when the survivors should finish their round and exit.
fn stop_key() -> Key {
    Key::new("test.stop").unwrap()
}

// ---------------------------------------------------------------------------------------------
// The children.

/// What a child is told through its environment.
struct Assignment {
    worker: String,
    url: String,
    stall_after: Option<u32>,
}

impl Assignment {
    fn from_env() -> Assignment {
        let worker = std::env::var(WORKER_VAR).unwrap_or_else(|_| {
            panic!(
                "this is a child process entry point of recipes_over_http, started by its \
                 parent tests with {WORKER_VAR} set; it is not a test of its own"
            )
        });
        Assignment {
            worker,
            url: std::env::var(URL_VAR).expect("the parent sets the server's URL"),
            stall_after: std::env::var(STALL_AFTER_VAR)
                .ok()
                .map(|n| n.parse().expect("a number of rounds")),
        }
    }
}

fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One line on stdout, whole and flushed before the worker goes on, so that the parent knows
/// everything the worker had done when it kills it. Written to the handle rather than through
/// `println!`, which the test harness may capture.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Holds what it acquired until the parent kills this process; a parent that never does (it
/// failed) must not leave the child running for ever.
async fn stall_until_killed() -> ! {
    tokio::time::sleep(LIMIT).await;
    panic!("the parent never killed this stalled worker");
}

/// A lock worker: until the parent sets the stop key, takes the lock with `acquire_lock_wait`
/// and, holding it, increments the counter with a fenced read-modify-write.
//
// Ignored because it is a child process entry point, not a test: only the lock test runs it,
// in a process of its own, with the worker's assignment in the environment.
#[test]
#[ignore = "child process entry point of the lock test, run only by it with SWARMSTATE_RECIPE_WORKER set"]
fn lock_worker_process() {
    let assignment = Assignment::from_env();
    child_runtime().block_on(lock_worker(assignment));
}

async fn lock_worker(assignment: Assignment) {
    let Assignment {
        worker,
        url,
        stall_after,
    } = assignment;
    let store = swarmstate::open(&url)
        .await
        .expect("open the server's store");
    let (lock, counter, stop) = (lock_key(), counter_key(), stop_key());
    let started = Instant::now();
    let mut written = 0;
    loop {
        assert!(started.elapsed() < LIMIT, "{worker} was never told to stop");
        if store.get(&stop).await.unwrap().is_some() {
            say(format_args!("stopped"));
            return;
        }
        let guard = acquire_lock_wait(&store, &lock, &worker, TTL, LIMIT)
            .await
            .unwrap_or_else(|err| panic!("{worker} could not take the lock: {err}"));
        let token = guard.token();
        say(format_args!("holding token {token}"));
        if stall_after == Some(written) {
            // Neither writes nor refreshes: the lock stays ours until its TTL runs out.
            say(format_args!("stalling token {token}"));
            stall_until_killed().await;
        }
        // Unconditional on the counter: only the lock keeps two holders from interleaving
        // their read and write, so a lock that failed would show as a lost increment.
        let value = match store.get(&counter).await.unwrap() {
            Some(entry) => std::str::from_utf8(&entry.value).unwrap().parse().unwrap(),
            None => 0u64,
        } + 1;
        match guard.fenced_put(&counter, value.to_string()).await {
            Ok(revision) => {
                written += 1;
                say(format_args!(
                    "wrote token {token} value {value} revision {revision}"
                ));
            }
            // Our lock ran out between the read and the write (a slow machine): nothing was
            // written, and the guard knows it is lost.
            Err(Error::LockLost { .. }) => {
                say(format_args!("lost token {token}"));
                continue;
            }
            Err(err) => panic!("{worker}: fenced write failed: {err}"),
        }
        match guard.release().await {
            Ok(()) | Err(Error::LockLost { .. }) => {}
            Err(err) => panic!("{worker}: release failed: {err}"),
        }
    }
}

/// A queue worker: until the parent sets the stop key, claims items with `claim_wait` and
/// completes each with its result written in the completion's transaction.
//
// Ignored because it is a child process entry point, not a test: only the queue test runs it,
// in a process of its own, with the worker's assignment in the environment.
#[test]
#[ignore = "child process entry point of the queue test, run only by it with SWARMSTATE_RECIPE_WORKER set"]
fn queue_worker_process() {
    let assignment = Assignment::from_env();
    child_runtime().block_on(queue_worker(assignment));
}

async fn queue_worker(assignment: Assignment) {
    let Assignment {
        worker,
        url,
        stall_after,
    } = assignment;
    let store = swarmstate::open(&url)
        .await
        .expect("open the server's store");
    let queue = WorkQueue::new(store.clone(), queue_name());
    let stop = stop_key();
    let started = Instant::now();
    let mut completed = 0;
    loop {
        assert!(started.elapsed() < LIMIT, "{worker} was never told to stop");
        if store.get(&stop).await.unwrap().is_some() {
            say(format_args!("stopped"));
            return;
        }
        // A short wait, so that an idle worker looks at the stop key now and then.
        let claim = queue
            .claim_wait(&worker, TTL, Duration::from_millis(500))
            .await
            .unwrap_or_else(|err| panic!("{worker}: claim failed: {err}"));
        let Some(claim) = claim else {
            continue;
        };
        let (id, token, attempt) = (claim.id.clone(), claim.token, claim.attempt);
        say(format_args!("claimed {id} token {token} attempt {attempt}"));
        if stall_after == Some(completed) {
            // What a late completion of this claim conditions the item record on: its
            // revision as this claim wrote it, which stays put while the item is claimed.
            let record = Key::new(format!("{}.item.{id}", queue_name())).unwrap();
            let record = store
                .get(&record)
                .await
                .unwrap()
                .expect("the claimed record");
            say(format_args!(
                "stalling {id} token {token} attempt {attempt} record {}",
                record.revision
            ));
            stall_until_killed().await;
        }
        let result = TxnOp::put(&result_key(&id), format!("{worker} {token}"));
        match queue.complete_with(claim, vec![result]).await {
            Ok(_) => {
                completed += 1;
                say(format_args!("completed {id} token {token}"));
            }
            // The lease ran out before the completion (a slow machine) and someone else may
            // hold the item now: nothing was written.
            Err(Error::LockLost { .. }) => say(format_args!("late {id} token {token}")),
            Err(err) => panic!("{worker}: completion of {id} failed: {err}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent's side: the worker processes and what they print.

/// One line a worker printed.
#[derive(Debug, Clone)]
struct Line {
    worker: String,
    text: String,
}

impl Line {
    fn words(&self) -> Vec<&str> {
        self.text.split_whitespace().collect()
    }
}

enum Said {
    Line(Line),
    /// The worker's stdout closed: it exited or was killed.
    Closed(String),
}

/// The worker processes of one test, each a child running one entry point of this binary,
/// killed when dropped.
struct Workers {
    url: String,
    entry_point: &'static str,
    children: HashMap<String, Child>,
    sender: mpsc::UnboundedSender<Said>,
    receiver: mpsc::UnboundedReceiver<Said>,
    // Every line read so far, in the order the parent read them (which is each worker's own
    // order; lines of different workers interleave as they arrived).
    lines: Vec<Line>,
    closed: BTreeSet<String>,
}

impl Workers {
    fn new(url: &str, entry_point: &'static str) -> Workers {
        let (sender, receiver) = mpsc::unbounded_channel();
        Workers {
            url: url.to_owned(),
            entry_point,
            children: HashMap::new(),
            sender,
            receiver,
            lines: Vec::new(),
            closed: BTreeSet::new(),
        }
    }

    /// Starts worker `name`; with `stall_after`, it stalls after that many rounds until killed.
    fn spawn(&mut self, name: &str, stall_after: Option<u32>) {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                self.entry_point,
                "--ignored",
                "--nocapture",
                "--quiet",
                "--test-threads=1",
            ])
            .env(WORKER_VAR, name)
            .env(URL_VAR, &self.url)
            .env_remove(STALL_AFTER_VAR)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(rounds) = stall_after {
            command.env(STALL_AFTER_VAR, rounds.to_string());
        }
        let mut child = command.spawn().expect("start a worker process");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let sender = self.sender.clone();
        let worker = name.to_owned();
        std::thread::spawn(move || {
            for text in stdout.lines() {
                let Ok(text) = text else { break };
                let line = Line {
                    worker: worker.clone(),
                    text,
                };
                let _ = sender.send(Said::Line(line));
            }
            let _ = sender.send(Said::Closed(worker));
        });
        self.children.insert(name.to_owned(), child);
    }

    fn record(&mut self, said: Said) {
        match said {
            Said::Line(line) => self.lines.push(line),
            Said::Closed(worker) => {
                self.closed.insert(worker);
            }
        }
    }

    fn transcript(&self) -> String {
        let lines: Vec<String> = self
            .lines
            .iter()
            .map(|line| format!("  {}: {}", line.worker, line.text))
            .collect();
        lines.join("\n")
    }

    /// Offers `pick` every line printed so far, in order, then each new one as it arrives,
    /// until it returns something; fails after [`LIMIT`], naming `what` it waited for.
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Line) -> Option<T>) -> T {
        let deadline = Instant::now() + LIMIT;
        let mut offered = 0;
        loop {
            while offered < self.lines.len() {
                offered += 1;
                if let Some(found) = pick(&self.lines[offered - 1]) {
                    return found;
                }
            }
            match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                Ok(Some(said)) => self.record(said),
                Ok(None) => unreachable!("the workers hold a sender"),
                Err(_) => panic!(
                    "waited {LIMIT:?} for {what}; the workers printed:\n{}",
                    self.transcript()
                ),
            }
        }
    }

    /// SIGKILLs worker `name` and reaps it.
    fn kill(&mut self, name: &str) {
        let mut child = self.children.remove(name).expect("a running worker");
        child.kill().expect("SIGKILL the worker");
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{name} died of SIGKILL: {status}");
    }

    /// Waits until every worker still running has exited, and checks that each one exited
    /// successfully.
    async fn finish(&mut self) {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in names {
            let wanted = name.clone();
            let deadline = Instant::now() + LIMIT;
            while !self.closed.contains(&wanted) {
                match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                    Ok(Some(said)) => self.record(said),
                    Ok(None) => unreachable!("the workers hold a sender"),
                    Err(_) => panic!(
                        "waited {LIMIT:?} for {wanted} to exit; the workers printed:\n{}",
                        self.transcript()
                    ),
                }
            }
            // Its stdout is closed, so it has exited (or is exiting): this does not block long.
            let status = self.children.remove(&name).unwrap().wait().unwrap();
            assert!(
                status.success(),
                "{name} failed ({status}); the workers printed:\n{}",
                self.transcript()
            );
        }
    }

    /// The lines of every worker, each split into words.
    fn said(&self) -> Vec<(String, Vec<String>)> {
        self.lines
            .iter()
            .map(|line| {
                let words = line.words().into_iter().map(str::to_owned).collect();
                (line.worker.clone(), words)
            })
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn number(word: &str) -> u64 {
    word.parse()
        .unwrap_or_else(|_| panic!("{word:?} is no number"))
}

fn revision(word: &str) -> Revision {
    Revision::new(number(word)).expect("a revision is never 0")
}

fn survivor_names() -> Vec<String> {
    (1..=SURVIVORS).map(|n| format!("worker-{n}")).collect()
}

/// Every value the key `key` has held, from the first revision, with the revisions that wrote
/// them, until it reached the revision `last`.
async fn history(store: &Arc<dyn StateStore>, key: &Key, last: Revision) -> Vec<(Revision, u64)> {
    let mut values = Vec::new();
    let mut start = Revision::FIRST;
    let deadline = Instant::now() + LIMIT;
    loop {
        let mut events = store
            .watch(&Pattern::exact(key), WatchStart::FromRevision(start))
            .await
            .unwrap();
        loop {
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("the replay of the key's history goes on")
                .expect("a replay ends only after a lag");
            match event {
                WatchEvent::Put(entry) => {
                    let value = number(std::str::from_utf8(&entry.value).unwrap());
                    values.push((entry.revision, value));
                    if entry.revision >= last {
                        return values;
                    }
                }
                // Resume where the lag left us: nothing was skipped.
                WatchEvent::Lagged { resume_from } => {
                    start = resume_from;
                    break;
                }
                other => panic!("the counter is only ever put, got {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_holders_in_separate_processes_lose_no_increment_and_a_killed_holder_is_fenced_out() {
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let server = Served::start(&["--data", data.path().to_str().unwrap()]);
    let store = swarmstate::open(&server.url).await.unwrap();
    let (lock, counter) = (lock_key(), counter_key());

    let mut workers = Workers::new(&server.url, "lock_worker_process");
    workers.spawn("doomed", Some(ROUNDS_BEFORE_STALL));
    let survivors = survivor_names();
    for name in &survivors {
        workers.spawn(name, None);
    }

    // The doomed worker holds the lock, stalled: kill it.
    let dead_token = workers
        .wait_for(
            "the doomed worker stalling with the lock",
            |line| match line.words()[..] {
                ["stalling", "token", token] if line.worker == "doomed" => Some(revision(token)),
                _ => None,
            },
        )
        .await;
    workers.kill("doomed");
    let killed_at = Instant::now();
    // It died holding the lock: the lock key is still the one it created (nothing refreshed
    // it), so the guard's next fenced write would check the lock at exactly this revision.
    let held = store
        .get(&lock)
        .await
        .unwrap()
        .expect("the dead worker's lock has not expired yet");
    assert_eq!(held.revision, dead_token);
    assert_eq!(&held.value[..], b"doomed");

    // Once the lock expires, a survivor takes over with a higher token; wait until every
    // survivor has written under a token above the dead one's.
    for name in &survivors {
        let what = format!("a write by {name} with a token above {dead_token}");
        workers
            .wait_for(&what, |line| match line.words()[..] {
                ["wrote", "token", token, ..] if line.worker == *name => {
                    (revision(token) > dead_token).then_some(())
                }
                _ => None,
            })
            .await;
    }
    let takeover = killed_at.elapsed();

    // The dead holder's next fenced write, as its guard would send it: the lock checked at the
    // dead holder's revision, then the counter. It is refused on the lock key.
    let replay = vec![
        TxnOp::check(&lock, Condition::At(held.revision)),
        TxnOp::put(&counter, "written by a dead lock holder"),
    ];
    let err = store.txn(replay).await.unwrap_err();
    assert!(
        matches!(&err, Error::RevisionMismatch { key, .. } if *key == lock),
        "the replayed write must be refused on the lock key, got {err:?}"
    );

    store.set(&stop_key(), "").await.unwrap();
    workers.finish().await;

    // Every acknowledged increment, in the order of the values written (the order in which
    // the holders took the lock).
    let mut writes: BTreeMap<u64, (String, Revision, Revision)> = BTreeMap::new();
    let mut tokens: BTreeMap<Revision, String> = BTreeMap::new();
    for (worker, words) in workers.said() {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words[..] {
            ["holding", "token", token] => {
                let earlier = tokens.insert(revision(token), worker.clone());
                assert_eq!(earlier, None, "token {token} was handed out twice");
            }
            ["wrote", "token", token, "value", value, "revision", written] => {
                let earlier = writes.insert(
                    number(value),
                    (worker.clone(), revision(token), revision(written)),
                );
                assert_eq!(earlier, None, "value {value} was written twice");
            }
            _ => {}
        }
    }
    let acknowledged = writes.len() as u64;
    let values: Vec<u64> = writes.keys().copied().collect();
    assert_eq!(
        values,
        (1..=acknowledged).collect::<Vec<_>>(),
        "each acknowledged increment wrote the next value"
    );
    let final_entry = store.get(&counter).await.unwrap().expect("the counter");
    assert_eq!(
        &final_entry.value[..],
        acknowledged.to_string().as_bytes(),
        "the counter equals the number of acknowledged increments"
    );
    // The counter's whole history is exactly the acknowledged writes: the replayed write left
    // nothing, and no write went unacknowledged.
    let history = history(&store, &counter, final_entry.revision).await;
    let acknowledged_history: Vec<(Revision, u64)> = writes
        .iter()
        .map(|(value, (_, _, written))| (*written, *value))
        .collect();
    assert_eq!(history, acknowledged_history);
    // Tokens strictly increase in the order the holders took the lock.
    let write_tokens: Vec<Revision> = writes.values().map(|(_, token, _)| *token).collect();
    assert!(
        write_tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens in the order of the increments: {write_tokens:?}"
    );
    assert_eq!(tokens.get(&dead_token).map(String::as_str), Some("doomed"));
    let doomed_writes = writes.values().filter(|(w, ..)| w == "doomed").count();
    assert_eq!(doomed_writes, ROUNDS_BEFORE_STALL as usize);
    let successor = tokens.range(dead_token.next()..).next();
    let (successor_token, successor_name) = successor.expect("a holder after the dead one");
    assert!(survivors.contains(successor_name), "{successor_name}");
    println!(
        "{acknowledged} increments by {} processes; token {dead_token} killed, taken over by \
         {successor_name} with token {successor_token}; every survivor wrote again {takeover:?} \
         after the kill (TTL {TTL:?}); test took {:?}",
        SURVIVORS + 1,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_workers_in_separate_processes_complete_every_item_once_when_one_dies_mid_claim() {
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let server = Served::start(&["--data", data.path().to_str().unwrap()]);
    let store = swarmstate::open(&server.url).await.unwrap();
    let queue = WorkQueue::new(store.clone(), queue_name());
    let ids: Vec<String> = (0..ITEMS).map(|n| format!("item-{n:02}")).collect();
    for id in &ids {
        assert!(queue.enqueue(id, format!("payload of {id}")).await.unwrap());
    }

    // The doomed worker starts alone, so it surely completes its rounds and then holds a claim
    // while most items are still pending; the survivors start as it stalls.
    let mut workers = Workers::new(&server.url, "queue_worker_process");
    workers.spawn("doomed", Some(ROUNDS_BEFORE_STALL));
    let (dead_id, dead_token, dead_attempt, dead_record) = workers
        .wait_for(
            "the doomed worker stalling with a claim",
            |line| match line.words()[..] {
                [
                    "stalling",
                    id,
                    "token",
                    token,
                    "attempt",
                    attempt,
                    "record",
                    record,
                ] if line.worker == "doomed" => Some((
                    id.to_owned(),
                    revision(token),
                    number(attempt),
                    revision(record),
                )),
                _ => None,
            },
        )
        .await;
    let survivors = survivor_names();
    for name in &survivors {
        workers.spawn(name, None);
    }
    workers.kill("doomed");
    // It died holding the claim: its lease is still there, as its claim created it.
    let lease_key = Key::new(format!("{}.lease.{dead_id}", queue_name())).unwrap();
    let lease = store
        .get(&lease_key)
        .await
        .unwrap()
        .expect("the dead worker's lease has not expired yet");
    assert_eq!(lease.revision, dead_token);
    assert_eq!(&lease.value[..], b"doomed");

    // Once the lease expires a survivor claims the item again, with a higher token, and
    // completes it; wait until every item is completed.
    let mut done = BTreeSet::new();
    workers
        .wait_for("every item completed", |line| {
            if let ["completed", id, "token", _] = line.words()[..] {
                done.insert(id.to_owned());
            }
            (done.len() == ITEMS).then_some(())
        })
        .await;

    // The dead worker's completion, as `complete_with` would send it for its claim: the record
    // at the claim's revision, the lease at its token, and the result. Refused: the record
    // has moved on.
    let item_key = Key::new(format!("{}.item.{dead_id}", queue_name())).unwrap();
    let claimed_key = Key::new(format!("{}.claimed.{dead_id}", queue_name())).unwrap();
    let replay = vec![
        TxnOp::put(&item_key, format!("state=done\nattempts={dead_attempt}\n"))
            .when(Condition::At(dead_record)),
        TxnOp::delete(&lease_key).when(Condition::At(dead_token)),
        TxnOp::delete(&claimed_key),
        TxnOp::put(&result_key(&dead_id), format!("doomed {dead_token}")),
    ];
    let err = store.txn(replay).await.unwrap_err();
    assert!(
        matches!(&err, Error::RevisionMismatch { key, .. } if *key == item_key),
        "the replayed completion must be refused on the item record, got {err:?}"
    );

    store.set(&stop_key(), "").await.unwrap();
    workers.finish().await;

    // Every acknowledged completion, by item: each item exactly once.
    let mut completions: BTreeMap<String, (String, Revision)> = BTreeMap::new();
    let mut claims: Vec<(String, String, Revision, u64)> = Vec::new();
    let mut late = 0;
    for (worker, words) in workers.said() {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words[..] {
            ["completed", id, "token", token] => {
                let earlier = completions.insert(id.to_owned(), (worker.clone(), revision(token)));
                assert_eq!(earlier, None, "{id} was completed twice");
            }
            ["claimed", id, "token", token, "attempt", attempt] => {
                claims.push((
                    worker.clone(),
                    id.to_owned(),
                    revision(token),
                    number(attempt),
                ));
            }
            ["late", ..] => late += 1,
            _ => {}
        }
    }
    assert_eq!(
        completions.keys().cloned().collect::<Vec<_>>(),
        ids,
        "every item was completed"
    );
    let doomed_completions = completions.values().filter(|(w, _)| w == "doomed").count();
    assert_eq!(doomed_completions, ROUNDS_BEFORE_STALL as usize);
    // The dead worker's item was claimed again, with a higher token, by a survivor that
    // completed it.
    let (finisher, finisher_token) = completions[&dead_id].clone();
    assert!(survivors.contains(&finisher), "{finisher}");
    assert!(
        finisher_token > dead_token,
        "{finisher_token} > {dead_token}"
    );
    let reclaim = claims
        .iter()
        .find(|(worker, id, token, _)| {
            *id == dead_id && *worker == finisher && *token == finisher_token
        })
        .expect("the finisher's claim");
    assert_eq!(
        reclaim.3,
        dead_attempt + 1,
        "the reclaim is the next attempt"
    );
    // Tokens of each item's claims strictly increase.
    for id in &ids {
        let tokens: Vec<Revision> = claims
            .iter()
            .filter(|claim| claim.1 == *id)
            .map(|claim| claim.2)
            .collect();
        assert!(
            tokens.windows(2).all(|pair| pair[0] < pair[1]),
            "{id}: {tokens:?}"
        );
    }

    // One result per item, written by the acknowledged completion.
    let result_keys = store
        .list_keys(&Pattern::prefix(&Key::new("results").unwrap()))
        .await
        .unwrap();
    assert_eq!(result_keys.len(), ITEMS);
    for (id, (worker, token)) in &completions {
        let result = store.get(&result_key(id)).await.unwrap().expect("a result");
        assert_eq!(
            std::str::from_utf8(&result.value).unwrap(),
            format!("{worker} {token}"),
            "the result of {id}"
        );
    }
    // And the queue agrees: every item done, the dead worker's on its second attempt.
    let statuses = queue.list().await.unwrap();
    assert_eq!(statuses.len(), ITEMS);
    for status in &statuses {
        assert_eq!(status.state, ItemState::Done, "{status:?}");
    }
    let dead_status = statuses.iter().find(|s| s.id == dead_id).unwrap();
    assert_eq!(u64::from(dead_status.attempts), dead_attempt + 1);
    println!(
        "{ITEMS} items by {} processes; {dead_id} (token {dead_token}) killed mid-claim, \
         completed by {finisher} with token {finisher_token}; {late} completions came too \
         late; test took {:?}",
        SURVIVORS + 1,
        started.elapsed()
    );
}
