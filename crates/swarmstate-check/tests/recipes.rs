//! The recipes recorded through recording clients and checked: the blocking lock with fenced
//! writes and the work queue, whose every transition is a transaction, are linearizable on
//! `MemoryStore`; a store that acknowledges transactions it did not apply is caught.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use swarmstate_check::{Input, Output, Recorder, check};
use swarmstate_core::{
    Condition, Error, Key, MemoryStore, PutOptions, Result, StateStore, TxnAction, TxnOp, TxnResult,
};
use swarmstate_recipes::lock::{acquire_lock, acquire_lock_wait};
use swarmstate_recipes::queue::{ItemState, WorkQueue};

#[path = "support/lock_counter.rs"]
mod lock_counter;

use lock_counter::counter_under_the_lock;

const LIMIT: Duration = Duration::from_secs(30);

/// Forwards everything to a `MemoryStore`, but acknowledges every `drop_every`-th transaction
/// that writes without applying its writes: it checks the transaction's conditions for real,
/// then writes each value to a sink key instead, so that each acknowledged revision is real and
/// fresh, and the keys never change.
#[derive(Debug)]
struct AcknowledgesTxnsItDrops {
    inner: MemoryStore,
    txns: AtomicU64,
    drop_every: u64,
}

#[async_trait]
impl StateStore for AcknowledgesTxnsItDrops {
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        let writes = ops.iter().any(|op| op.action != TxnAction::Check);
        let n = self.txns.fetch_add(1, Ordering::Relaxed);
        if !writes || !n.is_multiple_of(self.drop_every) {
            return self.inner.txn(ops).await;
        }
        let checks = ops
            .iter()
            .map(|op| TxnOp::check(&op.key, op.condition))
            .collect();
        self.inner.txn(checks).await?;
        let sink = Key::new("dropped.writes")?;
        let mut results = Vec::with_capacity(ops.len());
        for op in &ops {
            results.push(match &op.action {
                TxnAction::Put { value, .. } => TxnResult::Put(
                    self.inner
                        .put(&sink, value.clone(), PutOptions::overwrite())
                        .await?,
                ),
                TxnAction::Delete => TxnResult::NotFound,
                TxnAction::Check => TxnResult::Checked,
            });
        }
        Ok(results)
    }
    swarmstate_core::forward_state_store!(|s| &s.inner;
        capabilities, get, put, delete, keys, watch, close);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lock_recipe_with_fenced_writes_is_linearizable_on_memory_store() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let (history, count) = counter_under_the_lock(store, 4, 8).await;
    assert_eq!(count, 32, "every increment under the lock counts");
    let fenced = history
        .operations
        .iter()
        .filter(|op| {
            op.key == "jobs.lock" && matches!(op.input, swarmstate_check::Input::Check { .. })
        })
        .count();
    assert_eq!(fenced, 32, "each fenced put checks the lock:\n{history}");
    let checked = check(&history, LIMIT);
    println!("{checked}");
    assert!(checked.verdict.is_ok(), "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_stalls_past_its_ttl_is_fenced_off_and_the_history_is_linearizable() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let recorder = Recorder::new(store).await.unwrap();
    let (stalled, next): (Arc<dyn StateStore>, Arc<dyn StateStore>) =
        (Arc::new(recorder.client()), Arc::new(recorder.client()));
    let lock = Key::new("jobs.lock").unwrap();
    let data = Key::new("jobs.data").unwrap();
    let old = acquire_lock(&stalled, &lock, "old", Duration::from_millis(200))
        .await
        .unwrap();
    old.fenced_put(&data, "old-1").await.unwrap();
    // The lock expires while its holder stalls; the next holder takes it and writes.
    let new = acquire_lock_wait(
        &next,
        &lock,
        "new",
        Duration::from_secs(10),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    new.fenced_put(&data, "new-1").await.unwrap();
    let err = old.fenced_put(&data, "old-2").await.unwrap_err();
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    new.release().await.unwrap();
    assert_eq!(&next.get(&data).await.unwrap().unwrap().value[..], b"new-1");
    let history = recorder.finish().await;
    // The refusal is an observation of the lock key, and the expiry is in the history too.
    assert!(
        history.operations.iter().any(|op| op.key == "jobs.lock"
            && matches!(op.input, Input::Check { .. })
            && matches!(op.output, Output::Mismatch(_))),
        "{history}"
    );
    assert!(
        history
            .operations
            .iter()
            .any(|op| op.key == "jobs.lock" && op.output == Output::Expired),
        "{history}"
    );
    let checked = check(&history, LIMIT);
    println!("{checked}");
    assert!(checked.verdict.is_ok(), "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_acknowledges_transactions_it_drops_is_caught() {
    let store: Arc<dyn StateStore> = Arc::new(AcknowledgesTxnsItDrops {
        inner: MemoryStore::new(),
        txns: AtomicU64::new(1),
        drop_every: 5,
    });
    let (history, count) = counter_under_the_lock(store, 3, 6).await;
    assert!(count < 18, "increments were dropped: {count}");
    let checked = check(&history, LIMIT);
    println!("{checked}");
    assert!(checked.verdict.is_violation(), "{checked}");
    assert!(
        checked.verdict.to_string().contains("jobs.counter"),
        "{checked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_work_queue_claimed_and_completed_by_workers_is_linearizable() {
    const ITEMS: usize = 24;
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let recorder = Recorder::new(store.clone()).await.unwrap();
    let name = Key::new("work").unwrap();
    let producer = WorkQueue::new(Arc::new(recorder.client()), name.clone());
    for item in 0..ITEMS {
        assert!(
            producer
                .enqueue(&format!("i{item}"), "payload")
                .await
                .unwrap()
        );
    }
    assert!(!producer.enqueue("i0", "again").await.unwrap());
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let queue = WorkQueue::new(Arc::new(recorder.client()), name.clone());
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{worker}");
            let mut done = 0;
            while let Some(claim) = queue.claim(&worker, Duration::from_secs(10)).await.unwrap() {
                // The result is written in the completion's transaction, once per item.
                let result = Key::new(format!("results.{}", claim.id)).unwrap();
                let ops = vec![TxnOp::put(&result, worker.clone()).when(Condition::Absent)];
                queue.complete_with(claim, ops).await.unwrap();
                done += 1;
            }
            done
        }));
    }
    let mut done = 0;
    for task in tasks {
        done += task.await.unwrap();
    }
    let history = recorder.finish().await;
    assert_eq!(done, ITEMS, "every item was completed exactly once");
    let queue = WorkQueue::new(store.clone(), name);
    for item in 0..ITEMS {
        let status = queue.status(&format!("i{item}")).await.unwrap().unwrap();
        assert_eq!(status.state, ItemState::Done, "{status:?}");
    }
    let checked = check(&history, LIMIT);
    println!("{checked}");
    assert!(checked.verdict.is_ok(), "{checked}");
    assert!(checked.counts.keys > 4 * ITEMS, "{checked}");
}
