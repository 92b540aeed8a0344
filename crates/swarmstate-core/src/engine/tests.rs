//! The engine's durable path, on a persistence that the test holds back, fails or records.

use std::sync::{Condvar, Mutex};

use std::time::Duration;

use super::*;
use futures::StreamExt;

use crate::{Key, Pattern, PutOptions, StateStore, StateStoreExt, TxnOp, WatchStart};

/// Records every change set; each `persist` waits for a permit, so a test can hold a write
/// between deciding and applying.
#[derive(Debug, Default)]
struct HeldBack {
    persisted: Mutex<Vec<ChangeSet>>,
    // Permits left, and how many persists have started.
    gate: Mutex<(usize, usize)>,
    changed: Condvar,
    fail: AtomicBool,
    panic: AtomicBool,
}

impl HeldBack {
    fn add_permits(&self, permits: usize) {
        self.gate.lock().unwrap().0 += permits;
        self.changed.notify_all();
    }

    // Waits (on a blocking thread) until `count` persists have started.
    async fn entered(self: &Arc<Self>, count: usize) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let gate = this.gate.lock().unwrap();
            let _gate = this
                .changed
                .wait_timeout_while(gate, Duration::from_secs(60), |gate| gate.1 < count)
                .unwrap();
        })
        .await
        .unwrap();
        assert!(
            self.gate.lock().unwrap().1 >= count,
            "{count} persists started"
        );
    }
}

#[derive(Debug)]
struct Held(Arc<HeldBack>);

impl Persistence for Held {
    fn backend(&self) -> &'static str {
        "held-back"
    }

    fn durable(&self) -> bool {
        true
    }

    fn persist(&mut self, commit: &Commit<'_>) -> Result<()> {
        let mut gate = self.0.gate.lock().unwrap();
        gate.1 += 1;
        self.0.changed.notify_all();
        let mut gate = self.0.changed.wait_while(gate, |gate| gate.0 == 0).unwrap();
        gate.0 -= 1;
        drop(gate);
        if self.0.panic.load(Ordering::SeqCst) {
            panic!("a bug in the persistence");
        }
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(Error::backend(std::io::Error::other("disk full")));
        }
        self.0
            .persisted
            .lock()
            .unwrap()
            .push(commit.changes.clone());
        Ok(())
    }
}

fn engine(permits: usize) -> (Engine<Held>, Arc<HeldBack>) {
    engine_with(
        permits,
        EngineConfig {
            max_value_size: 1024,
            watch_buffer: 16,
            ..EngineConfig::default()
        },
    )
}

fn engine_with(permits: usize, config: EngineConfig) -> (Engine<Held>, Arc<HeldBack>) {
    let persistence = Arc::new(HeldBack::default());
    persistence.add_permits(permits);
    let state = KvState::new(config.limits.clone());
    let engine = Engine::new(Held(persistence.clone()), config, state, Clock::new());
    (engine, persistence)
}
fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

async fn a_write_is_visible_and_acknowledged_only_after_it_is_persisted() {
    let (engine, persistence) = engine(0);
    let mut watch = engine.watch(&Pattern::All, WatchStart::Now).await.unwrap();
    let writer = tokio::spawn({
        let engine = engine.clone();
        async move { engine.set(&key("a"), "1").await }
    });
    // The write is decided and waits in persist: readers still see the state before it.
    persistence.entered(1).await;
    assert!(!writer.is_finished());
    assert_eq!(engine.get(&key("a")).await.unwrap(), None);
    persistence.add_permits(1);
    let revision = writer.await.unwrap().unwrap();
    assert_eq!(
        engine.get(&key("a")).await.unwrap().unwrap().revision,
        revision
    );
    assert_eq!(watch.next().await.unwrap().revision(), Some(revision));
    let persisted = persistence.persisted.lock().unwrap();
    assert_eq!(persisted.len(), 1);
    assert_eq!(persisted[0].last_revision(), Some(revision));
    assert_eq!(engine.capabilities().backend, "held-back");
    assert!(engine.capabilities().durable);
}

async fn writes_waiting_together_commit_as_one_group_and_a_conflict_fails_alone() {
    let (engine, persistence) = engine(0);
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.set(&key("a"), "1").await }
    });
    persistence.entered(1).await;
    // While the first commit waits on the disk, more writes queue up behind it, in this
    // order: each is spawned once the one before is in the writer's queue (the queue's length
    // shows through the sender's capacity), since tasks on a multi-threaded runtime need not
    // start in the order they were spawned.
    let queue = engine.shared.queue.as_ref().unwrap();
    let capacity = queue.max_capacity();
    let queued = |n: usize| async move {
        tokio::time::timeout(Duration::from_secs(60), async {
            while capacity - queue.capacity() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("write {n} queues up"));
    };
    let create = |name: &'static str| {
        let engine = engine.clone();
        tokio::spawn(async move { engine.create(&key(name), "x").await })
    };
    let b = create("b");
    queued(1).await;
    let b_again = create("b");
    queued(2).await;
    let c = create("c");
    queued(3).await;
    let txn = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .txn(vec![TxnOp::put(&key("d"), "4"), TxnOp::delete(&key("c"))])
                .await
        }
    });
    queued(4).await;
    persistence.add_permits(8);
    let first = first.await.unwrap().unwrap();
    let b = b.await.unwrap().unwrap();
    let err = b_again.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { key: k, revision } if k.as_str() == "b" && *revision == b),
        "the second create of b sees the first, decided in the same group: {err}"
    );
    let c = c.await.unwrap().unwrap();
    let txn = txn.await.unwrap().unwrap();
    assert_eq!(txn.len(), 2);
    let persisted = persistence.persisted.lock().unwrap().clone();
    assert_eq!(
        persisted.len(),
        2,
        "one commit alone, then one group: {persisted:?}"
    );
    let revisions: Vec<u64> = persisted[1]
        .changes
        .iter()
        .map(|change| change.revision().get())
        .collect();
    assert_eq!(
        revisions,
        [
            first.get() + 1,
            first.get() + 2,
            first.get() + 3,
            first.get() + 4
        ]
    );
    assert_eq!((b.get(), c.get()), (first.get() + 1, first.get() + 2));
    assert_eq!(engine.get(&key("c")).await.unwrap(), None);
    assert!(engine.get(&key("d")).await.unwrap().is_some());
}

async fn a_failed_persist_poisons_the_engine_and_applies_nothing() {
    let (engine, persistence) = engine(usize::MAX >> 4);
    engine.set(&key("a"), "1").await.unwrap();
    persistence.fail.store(true, Ordering::SeqCst);
    let err = engine.set(&key("a"), "2").await.unwrap_err();
    assert!(
        matches!(err, Error::Ambiguous { .. }),
        "a write whose commit failed may be on disk: {err}"
    );
    assert!(err.to_string().contains("disk full"), "{err}");
    for err in [
        engine.get(&key("a")).await.unwrap_err(),
        engine.set(&key("b"), "3").await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert!(
            err.to_string().contains("disk full"),
            "every later call fails naming the cause: {err}"
        );
    }
    assert_eq!(persistence.persisted.lock().unwrap().len(), 1);
}

async fn a_caller_that_stops_waiting_does_not_cancel_its_write() {
    let (engine, persistence) = engine(0);
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), engine.set(&key("a"), "1")).await;
    assert!(cancelled.is_err(), "the write waits for its persist");
    persistence.add_permits(8);
    // Queued after the abandoned write, so answered after it was applied.
    engine.set(&key("b"), "2").await.unwrap();
    assert!(engine.get(&key("a")).await.unwrap().is_some());
    assert_eq!(persistence.persisted.lock().unwrap().len(), 2);
}

async fn close_commits_what_was_queued_and_then_releases_the_persistence() {
    let (engine, persistence) = engine(0);
    let queued = tokio::spawn({
        let engine = engine.clone();
        async move { engine.set(&key("a"), "1").await }
    });
    persistence.entered(1).await;
    let closing = tokio::spawn({
        let engine = engine.clone();
        async move { engine.close().await }
    });
    persistence.add_permits(1);
    closing.await.unwrap().unwrap();
    assert!(
        queued.await.unwrap().is_ok(),
        "a write queued before the close commits"
    );
    assert_eq!(
        Arc::strong_count(&persistence),
        1,
        "the writer dropped its persistence"
    );
    assert!(matches!(
        engine.set(&key("b"), "2").await.unwrap_err(),
        Error::Closed
    ));
}

#[tokio::test(start_paused = true)]
async fn expiries_are_persisted_like_writes() {
    let (engine, persistence) = engine(usize::MAX >> 4);
    let options = PutOptions::overwrite().ttl(Duration::from_secs(5));
    let written = engine.put(&key("t"), "x".into(), options).await.unwrap();
    let mut watch = engine
        .watch(&Pattern::All, WatchStart::FromRevision(written.next()))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, WatchEvent::Expire { .. }), "{event:?}");
    let persisted = persistence.persisted.lock().unwrap();
    assert!(
        matches!(&persisted[1].changes[..], [Change::Expire { revision, .. }] if *revision == written.next()),
        "{persisted:?}"
    );
}

// Spawns a create of each of `names`, each once the one before is in the writer's queue, and
// returns their tasks.
async fn queue_creates(
    engine: &Engine<Held>,
    names: &[&'static str],
) -> Vec<tokio::task::JoinHandle<Result<Revision>>> {
    let queue = engine.shared.queue.as_ref().unwrap();
    let capacity = queue.max_capacity();
    let mut tasks = Vec::new();
    for (n, &name) in names.iter().enumerate() {
        let engine = engine.clone();
        tasks.push(tokio::spawn(
            async move { engine.create(&key(name), "x").await },
        ));
        tokio::time::timeout(Duration::from_secs(60), async {
            while capacity - queue.capacity() < n + 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("write {n} queues up"));
    }
    tasks
}

async fn writes_still_group_after_the_stores_total_passed_the_group_bound() {
    // A group holds at most 100 bytes; lone writes of 11 bytes each add up past that first.
    let config = EngineConfig {
        max_batch_bytes: 100,
        ..EngineConfig::default()
    };
    let (engine, persistence) = engine_with(usize::MAX >> 4, config);
    for n in 0..20 {
        engine
            .set(&key(&format!("lone{n:02}")), "value")
            .await
            .unwrap();
    }
    persistence.gate.lock().unwrap().0 = 0;
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.set(&key("first"), "1").await }
    });
    persistence.entered(21).await;
    let queued = queue_creates(&engine, &["b", "c", "d"]).await;
    persistence.add_permits(8);
    first.await.unwrap().unwrap();
    for task in queued {
        task.await.unwrap().unwrap();
    }
    let groups: Vec<usize> = persistence
        .persisted
        .lock()
        .unwrap()
        .iter()
        .map(|changes| changes.changes.len())
        .collect();
    assert_eq!(
        groups[21..],
        [3],
        "the three writes queued together commit as one group: {groups:?}"
    );
}

async fn a_panicking_persistence_is_a_failed_commit() {
    let (engine, persistence) = engine(usize::MAX >> 4);
    engine.set(&key("a"), "1").await.unwrap();
    persistence.panic.store(true, Ordering::SeqCst);
    let err = engine.set(&key("a"), "2").await.unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    assert!(err.to_string().contains("panicked"), "{err}");
    let err = engine.get(&key("a")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
}

/// Each case on both writers: the task of a current-thread runtime, the thread of a
/// multi-threaded one.
macro_rules! on_both_writers {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn task_writer() {
                    super::$case().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn thread_writer() {
                    super::$case().await;
                }
            }
        )*
    };
}

on_both_writers!(
    a_write_is_visible_and_acknowledged_only_after_it_is_persisted,
    writes_waiting_together_commit_as_one_group_and_a_conflict_fails_alone,
    a_failed_persist_poisons_the_engine_and_applies_nothing,
    a_caller_that_stops_waiting_does_not_cancel_its_write,
    close_commits_what_was_queued_and_then_releases_the_persistence,
    a_panicking_persistence_is_a_failed_commit,
    writes_still_group_after_the_stores_total_passed_the_group_bound,
);
