//! Fault tests of `NatsStore` on real `nats-server` processes: a node killed with SIGKILL under
//! write load and restarted, a node frozen with SIGSTOP, the stream leader of an R3 bucket
//! killed, and watches across a restart and a failover.
//!
//! What they hold the backend to (DESIGN.md, section 2): nothing acknowledged is lost; a write
//! that fails is `Ambiguous` (sent, no answer: it may have applied) or `Unavailable` (never
//! sent: it did not apply), and never reported as a success; a watcher delivers every event
//! once, in revision order, or ends with `Lagged` at exactly the first revision it did not
//! deliver.
//!
//! Each write here writes a value no other write uses, so whatever a key holds afterwards names
//! the one write that put it there. All tests together take about 30 s.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use swarmstate_core::{
    Entry, Error, Key, Pattern, PutMode, PutOptions, Revision, StateStore, StateStoreExt,
    WatchEvent, WatchStart,
};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsCluster, NatsServer, require_server};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a write waits for its answer: long enough for a loaded 2-core machine, short enough
/// that the writes in flight at a kill end soon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a client may take to reconnect to a restarted node: async-nats waits up to 4 s
/// between attempts.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long an R3 bucket may take to accept writes again after its stream leader dies: 4.5-7.5 s
/// in runs on this machine, so 30 s leaves room for a loaded one.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a node may take to catch up and lead the stream, or a watcher whose consumer is
/// being recreated to catch up. A watcher on a cluster waits for a new stream leader and then
/// for the client's backoff between attempts to recreate its consumer (0.5 s, 1 s, 1.5 s, 2 s,
/// then 10 s); one on a restarted node whose reconnect went unnoticed waits for two missed
/// idle heartbeats (10 s).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

fn key(text: &str) -> Key {
    Key::new(text).unwrap_or_else(|err| panic!("{err}"))
}

/// Whether a failed write ended the way a fault may end it: sent without an answer, or never
/// sent.
fn is_fault_outcome(err: &Error) -> bool {
    matches!(err, Error::Ambiguous { .. } | Error::Unavailable { .. })
}

/// How one write attempt ended.
#[derive(Debug, Clone)]
enum Outcome {
    Acked(Revision),
    Ambiguous,
    Unavailable,
    /// Any other error: a bug in these tests' eyes, as every writer owns its keys.
    Failed(String),
}

/// One write attempt of a load.
#[derive(Debug, Clone)]
struct Attempt {
    key: Key,
    value: Bytes,
    started: Instant,
    outcome: Outcome,
}

/// Every write attempt of a load, in the order each writer made them.
#[derive(Debug, Clone, Default)]
struct Log(Arc<Mutex<Vec<Attempt>>>);

impl Log {
    fn push(&self, attempt: Attempt) {
        self.0.lock().expect("log lock").push(attempt);
    }

    fn snapshot(&self) -> Vec<Attempt> {
        self.0.lock().expect("log lock").clone()
    }

    /// When the first write started at or after `since` was acknowledged, if one was.
    fn first_ack_started_after(&self, since: Instant) -> Option<Instant> {
        self.0
            .lock()
            .expect("log lock")
            .iter()
            .find(|a| a.started >= since && matches!(a.outcome, Outcome::Acked(_)))
            .map(|a| a.started)
    }
}

/// Writers that each write their own keys in a loop until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    log: Log,
    writers: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(store: &NatsStore, writers: usize, keys_per_writer: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Log::default();
        let writers = (0..writers)
            .map(|writer| {
                let keys = (0..keys_per_writer)
                    .map(|k| key(&format!("load.w{writer}.k{k}")))
                    .collect();
                tokio::spawn(write_until_stopped(
                    store.clone(),
                    writer,
                    keys,
                    stop.clone(),
                    log.clone(),
                ))
            })
            .collect();
        Load { stop, log, writers }
    }

    async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Release);
        for writer in self.writers {
            writer.await.expect("writer task");
        }
        self.log.snapshot()
    }
}

/// Writes `keys` in turn until `stop` is set: a create for a key's first write, then updates at
/// its last acknowledged revision and overwrites in turn. After a failed write to a key only
/// overwrites, since its revision is then unknown.
async fn write_until_stopped(
    store: NatsStore,
    writer: usize,
    keys: Vec<Key>,
    stop: Arc<AtomicBool>,
    log: Log,
) {
    // Per key: the last acknowledged revision, and whether a write to it has failed.
    let mut last: Vec<(Option<Revision>, bool)> = vec![(None, false); keys.len()];
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) {
        let slot = n % keys.len();
        let key = &keys[slot];
        let mode = match last[slot] {
            (_, true) => PutMode::Overwrite,
            (None, false) => PutMode::Create,
            (Some(revision), false) if n.is_multiple_of(2) => PutMode::Update(revision),
            (Some(_), false) => PutMode::Overwrite,
        };
        let value = Bytes::from(format!("w{writer}-n{n}"));
        let started = Instant::now();
        let outcome = match store
            .put(key, value.clone(), PutOptions::with_mode(mode))
            .await
        {
            Ok(revision) => {
                last[slot].0 = Some(revision);
                Outcome::Acked(revision)
            }
            Err(err) => {
                last[slot].1 = true;
                match err {
                    Error::Ambiguous { .. } => Outcome::Ambiguous,
                    Error::Unavailable { .. } => Outcome::Unavailable,
                    other => Outcome::Failed(format!("{mode:?} {key}: {other}")),
                }
            }
        };
        let failed = !matches!(outcome, Outcome::Acked(_));
        log.push(Attempt {
            key: key.clone(),
            value,
            started,
            outcome,
        });
        if failed {
            // An unavailable store answers at once; do not spin on it.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        n += 1;
    }
}

/// How the attempts of a load ended.
#[derive(Debug, Default)]
struct Counts {
    acked: usize,
    ambiguous: usize,
    unavailable: usize,
    failed: Vec<String>,
}

impl Counts {
    fn of(attempts: &[Attempt]) -> Counts {
        let mut counts = Counts::default();
        for attempt in attempts {
            match &attempt.outcome {
                Outcome::Acked(_) => counts.acked += 1,
                Outcome::Ambiguous => counts.ambiguous += 1,
                Outcome::Unavailable => counts.unavailable += 1,
                Outcome::Failed(err) => counts.failed.push(err.clone()),
            }
        }
        counts
    }
}

/// What a key may hold after a load.
#[derive(Debug, Default)]
struct Expectation {
    /// The last acknowledged write: its revision and value.
    acked: Option<(Revision, Bytes)>,
    /// Values of writes whose outcome is unknown; one of them may have landed after `acked`.
    ambiguous: HashSet<Bytes>,
    /// Values of writes that were never sent; none of them may be there.
    unavailable: HashSet<Bytes>,
}

impl Expectation {
    /// Every key's expectation; checks on the way that each key's acknowledged revisions
    /// strictly increase (each key has one writer, so its attempts are in program order).
    fn of(attempts: &[Attempt]) -> BTreeMap<Key, Expectation> {
        let mut expectations: BTreeMap<Key, Expectation> = BTreeMap::new();
        for attempt in attempts {
            let expectation = expectations.entry(attempt.key.clone()).or_default();
            match attempt.outcome {
                Outcome::Acked(revision) => {
                    if let Some((previous, _)) = &expectation.acked {
                        assert!(
                            revision > *previous,
                            "{}: acknowledged at {revision} after {previous}",
                            attempt.key
                        );
                    }
                    expectation.acked = Some((revision, attempt.value.clone()));
                }
                Outcome::Ambiguous => {
                    expectation.ambiguous.insert(attempt.value.clone());
                }
                Outcome::Unavailable => {
                    expectation.unavailable.insert(attempt.value.clone());
                }
                Outcome::Failed(_) => {}
            }
        }
        expectations
    }

    /// Whether `found` is what the key may hold: its last acknowledged write at exactly that
    /// revision, or a write of unknown outcome at a later one (absent only if nothing was
    /// acknowledged).
    fn check(&self, key: &Key, found: Option<&Entry>) -> Result<(), String> {
        let lands = |entry: &Entry| {
            if self.unavailable.contains(&entry.value) {
                return Err(format!(
                    "{key} holds {entry:?}, written by a put reported Unavailable"
                ));
            }
            if self.ambiguous.contains(&entry.value) {
                return Ok(());
            }
            Err(format!(
                "{key} holds {entry:?}, which no write of this key produced"
            ))
        };
        match (&self.acked, found) {
            (None, None) => Ok(()),
            (None, Some(entry)) => lands(entry),
            (Some((revision, value)), None) => Err(format!(
                "{key} is gone; it was acknowledged at {revision} with {value:?}"
            )),
            (Some((revision, value)), Some(entry)) if entry.value == *value => {
                if entry.revision == *revision {
                    Ok(())
                } else {
                    Err(format!(
                        "{key} holds its acknowledged value at {} instead of {revision}",
                        entry.revision
                    ))
                }
            }
            (Some((revision, value)), Some(entry)) => {
                if entry.revision <= *revision {
                    return Err(format!(
                        "{key} holds {entry:?}, older than its acknowledged {value:?} at \
                         {revision}"
                    ));
                }
                lands(entry)
            }
        }
    }
}

/// Puts until one is acknowledged, for at most `limit`: attempt `n` writes `key_for(n)` (a new
/// key per attempt where a landed-but-unknown write must not be overwritten). Every failure on
/// the way must be `Ambiguous` or `Unavailable`. Returns the acknowledged key and revision, and
/// every key attempted.
async fn put_until_acked(
    store: &NatsStore,
    limit: Duration,
    mut key_for: impl FnMut(usize) -> Key,
) -> (Key, Revision, Vec<Key>) {
    let started = Instant::now();
    let mut attempted = Vec::new();
    loop {
        let key = key_for(attempted.len());
        attempted.push(key.clone());
        match store.set(&key, key.as_str().to_owned()).await {
            Ok(revision) => return (key, revision, attempted),
            Err(err) => {
                assert!(is_fault_outcome(&err), "put {key}: {err}");
                assert!(
                    started.elapsed() < limit,
                    "no write acknowledged within {limit:?}; last: {err}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_the_store_keeps_working_after_restart() {
    if require_server().is_none() {
        return;
    }
    let mut server = NatsServer::start().await;
    let store = NatsStore::builder(server.url())
        .bucket("crash")
        .request_timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .expect("connect to the test server");

    let load = Load::start(&store, 4, 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    let killed_at = Instant::now();
    // Long enough for every write in flight to time out and for later ones to find no server.
    tokio::time::sleep(REQUEST_TIMEOUT + Duration::from_millis(500)).await;
    let attempts = load.stop().await;

    let counts = Counts::of(&attempts);
    eprintln!(
        "kill -9 under load: {} acknowledged, {} ambiguous, {} unavailable",
        counts.acked, counts.ambiguous, counts.unavailable
    );
    assert!(
        counts.failed.is_empty(),
        "writes failed other than Ambiguous or Unavailable: {:?}",
        counts.failed
    );
    assert!(
        counts.acked > 0,
        "no write was acknowledged before the kill"
    );
    assert!(
        counts.ambiguous + counts.unavailable > 0,
        "no write failed, so the kill interrupted nothing"
    );
    // Nothing is reported applied that a dead server could not have applied.
    for attempt in &attempts {
        if attempt.started > killed_at {
            assert!(
                !matches!(attempt.outcome, Outcome::Acked(_)),
                "{attempt:?} was acknowledged though it started after the kill"
            );
        }
    }

    server.restart().await;
    // The same store (the same client) reconnects by itself.
    let reconnecting = Instant::now();
    put_until_acked(&store, RECONNECT_TIMEOUT, |_| key("probe.after-restart")).await;
    eprintln!(
        "the store wrote again {:?} after the restart",
        reconnecting.elapsed()
    );

    let expectations = Expectation::of(&attempts);
    for (key, expectation) in &expectations {
        let found = store
            .get(key)
            .await
            .unwrap_or_else(|err| panic!("get {key}: {err}"));
        if let Err(problem) = expectation.check(key, found.as_ref()) {
            panic!("after kill -9 and restart: {problem}");
        }
        // New conditional writes work on top of whatever survived.
        let updated = match found {
            Some(entry) => store.update(key, "after-restart", entry.revision).await,
            None => store.create(key, "after-restart").await,
        }
        .unwrap_or_else(|err| panic!("writing {key} after the restart: {err}"));
        let entry = store.get(key).await.unwrap().expect("just written");
        assert_eq!(
            (entry.revision, &entry.value[..]),
            (updated, &b"after-restart"[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_and_unavailable_are_told_apart() {
    if require_server().is_none() {
        return;
    }
    let request_timeout = Duration::from_millis(500);
    let mut server = NatsServer::start().await;
    let store = NatsStore::builder(server.url())
        .bucket("verdicts")
        .request_timeout(request_timeout)
        .connect()
        .await
        .expect("connect to the test server");
    let mode = key("config.mode");
    let old = store.set(&mode, "old").await.expect("put before the pause");

    // A frozen server takes the request into its socket and never answers: sent, outcome unknown.
    server.pause();
    let sent = Instant::now();
    let paused_put = tokio::time::timeout(Duration::from_secs(10), store.set(&mode, "new"))
        .await
        .expect("the request timeout bounds a put to a paused server");
    let waited = sent.elapsed();
    server.resume();
    let err = paused_put.expect_err("a paused server acknowledged a put");
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    assert!(
        waited >= request_timeout,
        "Ambiguous after {waited:?}, before the request timeout: was it sent?"
    );

    // Whether the paused put applied once the server resumed or not, reads agree on one answer,
    // and the revision goes with the value.
    let first = tokio::time::timeout(Duration::from_secs(10), store.get(&mode))
        .await
        .expect("a resumed server answers")
        .expect("get after resume")
        .expect("the key was acknowledged before the pause");
    let second = store
        .get(&mode)
        .await
        .expect("second get")
        .expect("present");
    assert_eq!(first, second, "two reads after the resume disagree");
    match &first.value[..] {
        b"old" => assert_eq!(first.revision, old),
        b"new" => assert!(first.revision > old, "{first:?} not after {old}"),
        other => panic!("unexpected value {other:?}"),
    }
    eprintln!(
        "the put sent to the paused server {}",
        if &first.value[..] == b"new" {
            "applied after the resume"
        } else {
            "did not apply"
        }
    );
    let resumed = store
        .update(&mode, "after-resume", first.revision)
        .await
        .expect("an update after the resume");

    // A dead server: once the client has noticed, writes are Unavailable (never sent); before
    // that, a write may be sent into the dying connection and be Ambiguous. Never Ok.
    server.kill();
    let killed = Instant::now();
    let mut ambiguous = 0;
    let mut refused = Vec::new();
    for attempt in 0.. {
        let down = key(&format!("down.k{attempt}"));
        match store.set(&down, "never").await {
            Ok(revision) => panic!("a killed server acknowledged {down} at {revision}"),
            Err(Error::Unavailable { .. }) => {
                refused.push(down);
                break;
            }
            Err(Error::Ambiguous { .. }) => ambiguous += 1,
            Err(other) => panic!("put {down} to a killed server: {other}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the client never noticed the server died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "the client noticed the kill after {:?} ({ambiguous} ambiguous puts before)",
        killed.elapsed()
    );
    // While it stays down, every write is refused at once, without waiting for an answer.
    for attempt in 0..5 {
        let down = key(&format!("down.again{attempt}"));
        let started = Instant::now();
        let err = store
            .set(&down, "never")
            .await
            .expect_err("a killed server acknowledged a put");
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert!(
            started.elapsed() < request_timeout / 2,
            "Unavailable took {:?}: it waited for an answer",
            started.elapsed()
        );
        refused.push(down);
    }

    // Unavailable means it did not apply: after a restart, none of those keys exist.
    server.restart().await;
    put_until_acked(&store, RECONNECT_TIMEOUT, |_| key("probe.after-restart")).await;
    for down in &refused {
        assert_eq!(
            store.get(down).await.expect("get after restart"),
            None,
            "{down} was reported Unavailable but exists"
        );
    }
    let entry = store.get(&mode).await.unwrap().expect("present");
    assert_eq!(
        (entry.revision, &entry.value[..]),
        (resumed, &b"after-resume"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_writes_resume_after_the_stream_leader_is_killed_and_nothing_acknowledged_is_lost()
{
    if require_server().is_none() {
        return;
    }
    let mut cluster = NatsCluster::start(3).await;
    let bucket = "failover";
    let store = NatsStore::builder(cluster.connect_url())
        .bucket(bucket)
        .replicas(3)
        .request_timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .expect("connect to the test cluster");
    let leader = stream_leader(&cluster, bucket).await;

    let load = Load::start(&store, 3, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.node_mut(leader).kill();
    let killed_at = Instant::now();
    let failover = loop {
        if let Some(acked) = load.log.first_ack_started_after(killed_at) {
            break acked.duration_since(killed_at);
        }
        assert!(
            killed_at.elapsed() < FAILOVER_TIMEOUT,
            "no write acknowledged within {FAILOVER_TIMEOUT:?} of killing leader n{leader}: {:?}",
            Counts::of(&load.log.snapshot())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("writes acknowledged again {failover:?} after killing stream leader n{leader}");
    let new_leader = cluster.stream_leader(&format!("KV_{bucket}")).await;
    assert!(
        new_leader.is_some_and(|node| node != leader),
        "leader after the kill: {new_leader:?} (killed n{leader})"
    );

    // The killed node rejoins under load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.node_mut(leader).restart().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = load.stop().await;
    let counts = Counts::of(&attempts);
    eprintln!(
        "leader failover under load: {} acknowledged, {} ambiguous, {} unavailable",
        counts.acked, counts.ambiguous, counts.unavailable
    );
    assert!(
        counts.failed.is_empty(),
        "writes failed other than Ambiguous or Unavailable: {:?}",
        counts.failed
    );

    // Every acknowledged write is there, read from the leader (linearizable).
    let expectations = Expectation::of(&attempts);
    let mut current = BTreeMap::new();
    for (key, expectation) in &expectations {
        let found = store
            .get(key)
            .await
            .unwrap_or_else(|err| panic!("get {key}: {err}"));
        if let Err(problem) = expectation.check(key, found.as_ref()) {
            panic!("after the leader failover: {problem}");
        }
        current.insert(key.clone(), found);
    }

    // And every node holds it, the restarted one included. A stale read through a client of
    // one node does not show that: direct gets are spread over all replicas (with the other
    // two nodes frozen, about two in three went unanswered). So each node in turn is made the
    // stream leader, and the linearizable reads, which the leader answers from its own store,
    // must find every write.
    let js = async_nats::jetstream::new(cluster.connect().await);
    let stream = format!("KV_{bucket}");
    for node in 0..cluster.len() {
        let moved = Instant::now();
        move_leader(&cluster, &js, &stream, node).await;
        for (key, wanted) in &current {
            let found = store
                .get(key)
                .await
                .unwrap_or_else(|err| panic!("get {key} from n{node} as leader: {err}"));
            assert_eq!(
                found, *wanted,
                "n{node} (killed and restarted: n{leader}), as leader, answers differently for \
                 {key}"
            );
        }
        eprintln!(
            "n{node} leads after {:?} and holds every write",
            moved.elapsed()
        );
    }
}

/// Makes node `node` the leader of `stream`: asks the current leader to step down in its favour
/// until it leads (it must first have caught up).
async fn move_leader(
    cluster: &NatsCluster,
    js: &async_nats::jetstream::Context,
    stream: &str,
    node: usize,
) {
    let started = Instant::now();
    let mut last_answer = None;
    loop {
        if cluster.stream_leader(stream).await == Some(node) {
            return;
        }
        assert!(
            started.elapsed() < CATCH_UP_TIMEOUT,
            "n{node} did not become the leader of {stream} within {CATCH_UP_TIMEOUT:?}; last \
             answer to a stepdown: {last_answer:?}"
        );
        let request =
            serde_json::json!({ "placement": { "preferred": cluster.node(node).name() } });
        let answer: Result<serde_json::Value, _> = js
            .request(format!("STREAM.LEADER.STEPDOWN.{stream}"), &request)
            .await;
        last_answer = Some(answer.map_err(|err| err.to_string()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The node leading the bucket's stream, waiting for one to be elected.
async fn stream_leader(cluster: &NatsCluster, bucket: &str) -> usize {
    let started = Instant::now();
    loop {
        if let Some(leader) = cluster.stream_leader(&format!("KV_{bucket}")).await {
            return leader;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "KV_{bucket} has no leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a watch stream in a task of its own, so that it is drained while the test injects
/// faults, and hands its events over through an unbounded channel.
fn drain(store: &NatsStore, events: swarmstate_core::WatchStream) -> Watcher {
    let (sender, receiver) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        use futures::StreamExt;
        let mut events = events;
        while let Some(event) = events.next().await {
            if sender.send(event).is_err() {
                return;
            }
        }
    });
    Watcher {
        store: store.clone(),
        receiver,
        task,
    }
}

struct Watcher {
    store: NatsStore,
    receiver: mpsc::UnboundedReceiver<WatchEvent>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Follows the watch until it has delivered the entry at `last`, resuming after a `Lagged`
    /// with `FromRevision(resume_from)` once `resume_from` is checked to be exactly the first
    /// revision not delivered. `first` is the first revision the watch may deliver. Returns the
    /// entries delivered and how often the watch was resumed.
    async fn follow(mut self, first: Revision, last: Revision, label: &str) -> (Vec<Entry>, usize) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        let mut delivered: Vec<Entry> = Vec::new();
        let mut next = first;
        let mut resumed = 0;
        while next <= last {
            let event = tokio::time::timeout_at(deadline, self.receiver.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{label}: only up to {next} of {first}..={last} delivered within \
                         {CATCH_UP_TIMEOUT:?}: {delivered:?}"
                    )
                })
                .unwrap_or_else(|| panic!("{label}: the watch ended without Lagged"));
            match event {
                WatchEvent::Put(entry) => {
                    assert!(
                        entry.revision >= next,
                        "{label}: {entry:?} delivered after revision {} (a repeat, or out of \
                         order, or from before the watch began)",
                        next.get() - 1
                    );
                    next = entry.revision.next();
                    delivered.push(entry);
                }
                WatchEvent::Lagged { resume_from } => {
                    assert_eq!(
                        resume_from, next,
                        "{label}: Lagged must name the first revision not delivered"
                    );
                    resumed += 1;
                    assert!(resumed <= 3, "{label}: lagged {resumed} times");
                    eprintln!("{label}: lagged, resuming from {resume_from}");
                    let events = self.resume(resume_from).await;
                    let store = self.store.clone();
                    self = drain(&store, events);
                }
                other => panic!("{label}: unexpected {other:?}"),
            }
        }
        // Nothing more comes: no write is running, so anything now would be a repeat.
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), self.receiver.recv()).await
        {
            panic!("{label}: {event:?} delivered after everything written");
        }
        (delivered, resumed)
    }

    /// A new watch from `from`, retried while the client is still reconnecting.
    async fn resume(&self, from: Revision) -> swarmstate_core::WatchStream {
        let started = Instant::now();
        loop {
            match self
                .store
                .watch(&Pattern::All, WatchStart::FromRevision(from))
                .await
            {
                Ok(events) => return events,
                Err(err) if is_fault_outcome(&err) && started.elapsed() < RECONNECT_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => panic!("resuming a watch from {from}: {err}"),
            }
        }
    }
}

/// What the store holds for every key attempted, by revision: with one write per key and every
/// key written once, exactly the events a watcher of `*` must deliver.
async fn written(store: &NatsStore, attempted: &[Key]) -> Vec<Entry> {
    let mut entries = Vec::new();
    for key in attempted {
        // A linearizable read writes a barrier, so right after a kill it can meet a cluster
        // still recovering (503); a read is safe to retry.
        let started = Instant::now();
        let read = loop {
            match store.get(key).await {
                Err(err) if is_fault_outcome(&err) && started.elapsed() < RECONNECT_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other,
            }
        };
        if let Some(entry) = read.unwrap_or_else(|err| panic!("get {key}: {err}")) {
            assert_eq!(&entry.value[..], key.as_str().as_bytes());
            entries.push(entry);
        }
    }
    entries.sort_by_key(|entry| entry.revision);
    entries
}

fn delivered_exactly(label: &str, delivered: &[Entry], expected: &[Entry]) {
    let summary = |entries: &[Entry]| -> Vec<(Revision, String)> {
        entries
            .iter()
            .map(|e| (e.revision, e.key.to_string()))
            .collect()
    };
    assert_eq!(
        summary(delivered),
        summary(expected),
        "{label}: delivered (left) differs from written (right)"
    );
    for (got, want) in delivered.iter().zip(expected) {
        assert_eq!(got.value, want.value, "{label}: value of {}", want.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_a_server_restart_without_losing_or_repeating_events() {
    if require_server().is_none() {
        return;
    }
    let mut server = NatsServer::start().await;
    let connect = || {
        NatsStore::builder(server.url())
            .bucket("watched")
            .request_timeout(REQUEST_TIMEOUT)
            .connect()
    };
    let writer = connect().await.expect("connect the writer");
    let watching = connect().await.expect("connect the watcher");

    let watch_now = || async {
        let events = watching
            .watch(&Pattern::All, WatchStart::Now)
            .await
            .expect("watch");
        drain(&watching, events)
    };
    // Three watchers from now, in the three states a restart can find one in. `busy` has
    // been given events before the kill. `long_idle` has been given none for longer than the
    // consumer's idle heartbeat interval (5 s); `short_idle` has been given none for less.
    let busy = watch_now().await;
    let mut attempted = Vec::new();
    for i in 0..20 {
        let key = key(&format!("before.k{i}"));
        writer
            .set(&key, key.as_str().to_owned())
            .await
            .expect("put");
        attempted.push(key);
    }
    let floor = writer
        .get(attempted.last().unwrap())
        .await
        .unwrap()
        .unwrap()
        .revision;
    let long_idle = watch_now().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let short_idle = watch_now().await;

    server.kill();
    server.restart().await;
    let restarted = Instant::now();
    for i in 0..20 {
        let (_, _, keys) = put_until_acked(&writer, RECONNECT_TIMEOUT, |attempt| {
            key(&format!("after.k{i}-{attempt}"))
        })
        .await;
        attempted.extend(keys);
    }

    let expected = written(&writer, &attempted).await;
    assert!(expected.len() >= 40, "{expected:?}");
    let last = expected.last().unwrap().revision;
    let after: Vec<Entry> = expected
        .iter()
        .filter(|e| e.revision > floor)
        .cloned()
        .collect();
    // `busy` began on an empty stream; the others after the last write before the kill.
    for (watcher, label, first, wanted) in [
        (busy, "busy watcher", Revision::FIRST, &expected),
        (
            long_idle,
            "watcher idle past a heartbeat",
            floor.next(),
            &after,
        ),
        (
            short_idle,
            "watcher idle under a heartbeat",
            floor.next(),
            &after,
        ),
    ] {
        let (delivered, resumed) = watcher.follow(first, last, label).await;
        delivered_exactly(label, &delivered, wanted);
        eprintln!(
            "{label}: {} events, resumed {resumed} times, all delivered {:?} after the restart",
            delivered.len(),
            restarted.elapsed()
        );
    }
}

/// A store connected to node `node` and its watch of everything from now, whose change feed's
/// consumer (one per store) the cluster placed on that node too. Placement is the cluster's
/// choice, not always the stream leader: open another store until it lands there.
async fn watch_with_consumer_on(
    cluster: &NatsCluster,
    bucket: &str,
    node: usize,
) -> (NatsStore, Watcher) {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(cluster.connect().await);
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .expect("the bucket's stream");
    let mut seen = HashSet::new();
    let mut placed = Vec::new();
    for _ in 0..20 {
        let watching = NatsStore::builder(cluster.node(node).url())
            .bucket(bucket)
            .replicas(3)
            .request_timeout(REQUEST_TIMEOUT)
            .connect()
            .await
            .expect("connect the watcher");
        let events = watching
            .watch(&Pattern::All, WatchStart::Now)
            .await
            .expect("watch");
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.expect("consumer info");
            if seen.insert(info.name.clone()) {
                placed.push(info.cluster.and_then(|c| c.leader));
            }
        }
        if placed.last().cloned().flatten().as_deref() == Some(cluster.node(node).name()) {
            let watcher = drain(&watching, events);
            return (watching, watcher);
        }
        // Its consumer goes once the connection closes.
        watching.close().await.expect("close");
    }
    panic!("no change feed consumer placed on n{node} in 20 tries: {placed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_connected_to_a_killed_node_loses_nothing() {
    if require_server().is_none() {
        return;
    }
    let mut cluster = NatsCluster::start(3).await;
    let bucket = "watchfail";
    let writer = NatsStore::builder(cluster.connect_url())
        .bucket(bucket)
        .replicas(3)
        .request_timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .expect("connect the writer");
    // The node to kill leads the bucket's stream, holds the watch's consumer, and is the one
    // the watcher's client is connected to: the kill takes all three. Given one URL the client
    // still fails over, as the servers announce each other to their clients (given the whole
    // list, it would pick a node at random).
    let doomed = stream_leader(&cluster, bucket).await;
    // From now on an empty bucket: every write the test makes is an event to deliver.
    let (_watching, watcher) = watch_with_consumer_on(&cluster, bucket, doomed).await;

    // A steady writer of new keys, through the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(Instant, Key)>>> = Arc::default();
    let writing = tokio::spawn({
        let writer = writer.clone();
        let stop = stop.clone();
        let acked = acked.clone();
        async move {
            let mut attempted = Vec::new();
            while !stop.load(Ordering::Acquire) {
                let key = key(&format!("steady.k{}", attempted.len()));
                attempted.push(key.clone());
                match writer.set(&key, key.as_str().to_owned()).await {
                    Ok(_) => acked.lock().unwrap().push((Instant::now(), key)),
                    Err(err) => assert!(is_fault_outcome(&err), "put {key}: {err}"),
                }
                // About 40 writes a second: a steady load, not a flood the watcher lags on.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            attempted
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.node_mut(doomed).kill();
    let killed_at = Instant::now();

    // Writes go on through the failover and a second after it; the killed node stays down, so
    // whatever the watcher delivers after the kill it gets through another node.
    loop {
        let acked_after = acked.lock().unwrap().iter().any(|(at, _)| *at > killed_at);
        if acked_after {
            break;
        }
        assert!(
            killed_at.elapsed() < FAILOVER_TIMEOUT,
            "no write acknowledged within {FAILOVER_TIMEOUT:?} of killing n{doomed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "writes acknowledged again {:?} after killing n{doomed}",
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let attempted = writing.await.expect("writer task");
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} puts attempted, {} acknowledged ({} after the kill)",
        attempted.len(),
        acked.len(),
        acked.iter().filter(|(at, _)| *at > killed_at).count()
    );

    let expected = written(&writer, &attempted).await;
    for (_, key) in &acked {
        assert!(
            expected.iter().any(|e| e.key == *key),
            "acknowledged {key} is gone"
        );
    }
    let last = expected.last().unwrap().revision;
    let (delivered, resumed) = watcher
        .follow(Revision::FIRST, last, "watcher of the killed node")
        .await;
    delivered_exactly("watcher of the killed node", &delivered, &expected);
    eprintln!(
        "watcher of the killed node: {} events, resumed {resumed} times",
        delivered.len()
    );
}
