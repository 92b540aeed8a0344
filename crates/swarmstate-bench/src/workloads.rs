//! The workloads, each measured for one target at a time: closed loops of tasks doing one
//! operation after another, a lock contended by four tasks, and a watch fan-out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use swarmstate_core::{Pattern, WatchEvent, WatchStart};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::drivers::{Client, LockKind};
use crate::stats::Round;

/// The size of every value written.
pub(crate) const VALUE_SIZE: usize = 256;

/// A closed-loop workload: each task does one of these after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// An unconditional write of the task's own key.
    Put,
    /// A read of the task's own key (written before the clock starts).
    Get,
    /// A compare-and-set of the task's own key: the write expects the version its previous
    /// write produced (read once at the start), so it never conflicts.
    CasOwn,
    /// Every task on one key: read the version, write expecting it, again until it commits.
    CasShared,
    /// Take and release the task's own lock.
    LockCycle(LockKind),
}

/// A system under test, as the table names it.
#[derive(Clone)]
pub(crate) struct Entrant {
    pub(crate) name: String,
    pub(crate) client: Client,
    /// The lock this entrant takes in the lock rows.
    pub(crate) lock: LockKind,
}

/// What one task did.
#[derive(Default)]
struct TaskRun {
    ops: u64,
    attempts: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Runs `op` for `duration` on `in_flight` tasks sharing the entrant's client, keys under
/// `tag` (distinct per row, so rows do not see each other's data). The clock starts when every
/// task has done its set-up.
pub(crate) async fn closed_loop(
    entrant: &Entrant,
    op: Op,
    in_flight: usize,
    duration: Duration,
    tag: &str,
) -> Result<Round> {
    let value = Bytes::from(vec![b'v'; VALUE_SIZE]);
    let barrier = Arc::new(Barrier::new(in_flight));
    let mut tasks = JoinSet::new();
    for task in 0..in_flight {
        let mut client = entrant.client.clone();
        let barrier = barrier.clone();
        let value = value.clone();
        let key = match op {
            Op::CasShared => format!("bench.{tag}.shared"),
            _ => format!("bench.{tag}.t{task}"),
        };
        let owner = format!("bench-{tag}-t{task}");
        tasks.spawn(async move {
            let mut version = 0;
            let session = match op {
                Op::Get => {
                    client.put(&key, &value).await?;
                    None
                }
                Op::CasOwn => {
                    version = client.cas_read(&key).await?;
                    None
                }
                Op::LockCycle(kind) => Some(client.begin_session(kind, owner).await?),
                Op::Put | Op::CasShared => None,
            };
            barrier.wait().await;
            let start = Instant::now();
            let deadline = start + duration;
            let mut run = TaskRun::default();
            while Instant::now() < deadline {
                let began = Instant::now();
                let attempts = match op {
                    Op::Put => client.put(&key, &value).await.map(|()| 1)?,
                    Op::Get => client.get(&key).await.map(|()| 1)?,
                    Op::CasOwn => {
                        version = client
                            .cas_write(&key, version, &value)
                            .await?
                            .with_context(|| {
                                format!("a CAS of {key}, which nobody else writes, conflicted")
                            })?;
                        1
                    }
                    Op::CasShared => {
                        let mut attempts = 0;
                        loop {
                            attempts += 1;
                            let seen = client.cas_read(&key).await?;
                            if client.cas_write(&key, seen, &value).await?.is_some() {
                                break attempts;
                            }
                        }
                    }
                    Op::LockCycle(kind) => {
                        let session = session.as_ref().context("a lock row without a session")?;
                        let held = client.lock(kind, &key, session, false).await?;
                        client.unlock(held).await?;
                        1
                    }
                };
                run.latencies.push(began.elapsed());
                run.ops += 1;
                run.attempts += attempts;
            }
            run.elapsed = start.elapsed();
            if let Some(session) = session {
                client.end_session(session).await?;
            }
            anyhow::Ok(run)
        });
    }
    gather(tasks).await
}

async fn gather(mut tasks: JoinSet<Result<TaskRun>>) -> Result<Round> {
    let (mut ops, mut attempts, mut elapsed) = (0, 0, Duration::ZERO);
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let run = joined??;
        ops += run.ops;
        attempts += run.attempts;
        elapsed = elapsed.max(run.elapsed);
        latencies.extend(run.latencies);
    }
    Ok(Round::new(ops, attempts, elapsed, latencies))
}

/// When one acquisition of the contended lock happened, and when its release started and
/// returned.
#[derive(Debug, Clone, Copy, Default)]
struct Tenure {
    acquired: Option<Instant>,
    release_called: Option<Instant>,
    release_returned: Option<Instant>,
}

/// Four tasks take one lock in turn with no hold time, for `duration`: the rate is
/// acquisitions per second and the latencies are hand-overs, from a release returning to the
/// next holder's acquire returning.
///
/// Acquisitions are numbered in the order they happen (the holder takes the next number while
/// it holds the lock, so the numbers follow the lock's order), and each tenure's times go in a
/// shared table. Hand-over n is acquisition n+1's time minus the return of release n, taken
/// after the run: the next holder's acquire can return before the release's own answer
/// reaches the releaser, and that hand-over counts as 0. The hand-overs measured from the
/// moment the release was called are printed to stderr beside them.
pub(crate) async fn contended_lock(
    entrant: &Entrant,
    tasks_count: usize,
    duration: Duration,
    tag: &str,
) -> Result<Round> {
    let tenures: Arc<Mutex<Vec<Tenure>>> = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(tasks_count));
    let key = format!("bench.{tag}.contended");
    let mut tasks = JoinSet::new();
    for task in 0..tasks_count {
        let mut client = entrant.client.clone();
        let barrier = barrier.clone();
        let tenures = tenures.clone();
        let key = key.clone();
        let kind = entrant.lock;
        let owner = format!("bench-{tag}-t{task}");
        tasks.spawn(async move {
            let session = client.begin_session(kind, owner).await?;
            barrier.wait().await;
            let start = Instant::now();
            let deadline = start + duration;
            let mut run = TaskRun::default();
            while Instant::now() < deadline {
                let held = client.lock(kind, &key, &session, true).await?;
                let acquired = Instant::now();
                let number = {
                    let mut tenures = tenures.lock().unwrap();
                    tenures.push(Tenure {
                        acquired: Some(acquired),
                        ..Tenure::default()
                    });
                    tenures.len() - 1
                };
                run.ops += 1;
                run.attempts += 1;
                let called = Instant::now();
                client.unlock(held).await?;
                let returned = Instant::now();
                let mut tenures = tenures.lock().unwrap();
                tenures[number].release_called = Some(called);
                tenures[number].release_returned = Some(returned);
            }
            run.elapsed = start.elapsed();
            client.end_session(session).await?;
            anyhow::Ok(run)
        });
    }
    let mut round = gather(tasks).await?;
    let tenures = tenures.lock().unwrap().clone();
    let hand_overs = |from: fn(&Tenure) -> Option<Instant>| -> Vec<Duration> {
        tenures
            .windows(2)
            .filter_map(|pair| Some(pair[1].acquired?.saturating_duration_since(from(&pair[0])?)))
            .collect()
    };
    let from_return = Round::new(0, 0, Duration::ZERO, hand_overs(|t| t.release_returned));
    let from_call = Round::new(0, 0, Duration::ZERO, hand_overs(|t| t.release_called));
    let show = |d: Option<Duration>| d.map_or("—".to_owned(), crate::stats::format_duration);
    eprintln!(
        "  {} hand-overs; from release returning p50 {} p99 {}; from release called p50 {} p99 {}",
        tenures.len().saturating_sub(1),
        show(from_return.p50),
        show(from_return.p99),
        show(from_call.p50),
        show(from_call.p99),
    );
    round.p50 = from_return.p50;
    round.p99 = from_return.p99;
    Ok(round)
}

/// One writer and `watchers` watchers of the prefix `bench.<tag>`: the writer puts
/// `bench.<tag>.<i>` for i in 0..`puts`, one every `pace`, stamping a shared table just
/// before each put; each watcher takes receive time minus the stamp for every change. The
/// rate is deliveries per second, from the first put to the last delivery. Every watcher must
/// see every change: a missed one fails the round.
pub(crate) async fn watch_fan_out(
    entrant: &Entrant,
    watchers: usize,
    puts: usize,
    pace: Duration,
    tag: &str,
) -> Result<Round> {
    let prefix = format!("bench.{tag}");
    let value = Bytes::from(vec![b'w'; VALUE_SIZE]);
    let stamps: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; puts]));
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..watchers {
        let mut events = watch_keys(&entrant.client, &prefix).await?;
        let stamps = stamps.clone();
        let ready = ready.clone();
        let ready_key = format!("{prefix}.ready");
        let index_of: HashMap<String, usize> =
            (0..puts).map(|i| (format!("{prefix}.{i}"), i)).collect();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(puts);
            let mut is_ready = false;
            let mut last = None;
            while let Some(key) = events.next().await {
                let received = Instant::now();
                let key = key?;
                if key == ready_key {
                    if !is_ready {
                        is_ready = true;
                        ready.add_permits(1);
                    }
                    continue;
                }
                let Some(&index) = index_of.get(&key) else {
                    continue;
                };
                let Some(stamp) = stamps.lock().unwrap()[index] else {
                    bail!("{key} arrived before its put was stamped");
                };
                latencies.push(received - stamp);
                last = Some(received);
                if index == puts - 1 {
                    break;
                }
            }
            anyhow::Ok((latencies, last))
        });
    }

    // Until every watcher has seen a write, a write could be missed by one whose watch is not
    // established yet, whatever its client's call returned.
    let mut writer = entrant.client.clone();
    let set_up = async {
        loop {
            writer.put(&format!("{prefix}.ready"), &value).await?;
            let wait = tokio::time::timeout(
                Duration::from_millis(100),
                ready.acquire_many(watchers as u32),
            );
            if let Ok(permits) = wait.await {
                permits?.forget();
                return anyhow::Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), set_up)
        .await
        .context("the watchers did not all see a first write within 60 s")??;

    let mut ticks = tokio::time::interval(pace);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = Instant::now();
    for i in 0..puts {
        ticks.tick().await;
        stamps.lock().unwrap()[i] = Some(Instant::now());
        writer.put(&format!("{prefix}.{i}"), &value).await?;
    }

    let mut latencies = Vec::with_capacity(watchers * puts);
    let mut last = first;
    let collect = async {
        while let Some(joined) = tasks.join_next().await {
            let (seen, at) = joined??;
            if seen.len() != puts {
                bail!("a watcher saw {} of {puts} changes", seen.len());
            }
            latencies.extend(seen);
            last = last.max(at.unwrap_or(first));
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .context("the watchers did not see every change within 30 s")??;
    let deliveries = latencies.len() as u64;
    Ok(Round::new(deliveries, deliveries, last - first, latencies))
}

/// A stream of the keys changed under `prefix` (the prefix's own key excluded), from one
/// new watch: a `StateStore` watch, an etcd prefix watch, or a Redis pub/sub connection of its
/// own subscribed to the keyspace notifications of `prefix.*`.
async fn watch_keys(client: &Client, prefix: &str) -> Result<BoxStream<'static, Result<String>>> {
    match client {
        Client::Store(store) => {
            let pattern = Pattern::new(format!("{prefix}.*"))?;
            let events = store.watch(&pattern, WatchStart::Now).await?;
            Ok(events
                .filter_map(|event| async move {
                    match event {
                        WatchEvent::Put(entry) => Some(Ok(entry.key.as_str().to_owned())),
                        WatchEvent::Lagged { resume_from } => Some(Err(anyhow::anyhow!(
                            "a watcher lagged (resume from {resume_from})"
                        ))),
                        _ => None,
                    }
                })
                .boxed())
        }
        Client::Etcd(client) => {
            let mut client = client.clone();
            let options = etcd_client::WatchOptions::new().with_prefix();
            let mut stream = client.watch(format!("{prefix}."), Some(options)).await?;
            // The first answer confirms the watch.
            let created = stream.message().await?.context("the etcd watch closed")?;
            if !created.created() {
                bail!("the etcd watch answered before it was created");
            }
            let batches = futures::stream::unfold(stream, |mut stream| async move {
                let batch = match stream.message().await {
                    Ok(Some(response)) => response
                        .events()
                        .iter()
                        .filter_map(|event| event.kv())
                        .map(|kv| Ok(String::from_utf8_lossy(kv.key()).into_owned()))
                        .collect(),
                    Ok(None) => return None,
                    Err(error) => vec![Err(error.into())],
                };
                Some((futures::stream::iter(batch), stream))
            });
            Ok(batches.flatten().boxed())
        }
        Client::Redis(redis) => {
            let mut pubsub = redis.client.get_async_pubsub().await?;
            let channel_prefix = "__keyspace@0__:";
            pubsub
                .psubscribe(format!("{channel_prefix}{prefix}.*"))
                .await?;
            Ok(pubsub
                .into_on_message()
                .map(move |message| {
                    let channel = message.get_channel_name();
                    Ok(channel
                        .strip_prefix(channel_prefix)
                        .unwrap_or(channel)
                        .to_owned())
                })
                .boxed())
        }
    }
}
