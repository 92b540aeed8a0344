//! `ConfigWatch` on `MemoryStore` with a 2-event watch buffer, where a single transaction
//! overflows a watcher at once: both ways of recovering from a lag (resuming from the
//! revision the store names, and a fresh snapshot when that revision is no longer kept) end
//! with the map a fresh snapshot shows. And the background task ends with its last handle.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use swarmstate_core::{
    Key, MemoryStore, Pattern, Revision, StateStore, StateStoreExt, TxnOp, TxnResult,
};
use swarmstate_recipes::config::{ConfigSnapshot, ConfigWatch};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(5);

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

fn decode(_: &Key, value: &Bytes) -> Result<String, String> {
    String::from_utf8(value.to_vec()).map_err(|err| err.to_string())
}

async fn start(store: &Arc<dyn StateStore>) -> ConfigWatch<String> {
    ConfigWatch::start(store.clone(), Pattern::new("config.*").unwrap(), decode)
        .await
        .unwrap()
}

fn contents(view: &ConfigSnapshot<String>) -> Vec<(Key, String, Option<Revision>)> {
    view.iter()
        .map(|(k, v)| (k.clone(), v.clone(), view.revision_of(k)))
        .collect()
}

/// Writes `rounds` transactions of six puts and a delete each (more than the buffer at once),
/// waiting after each until the view reflects it, and compares the view with a fresh snapshot.
async fn overflow_and_compare(store: &Arc<dyn StateStore>, rounds: usize) {
    let mut config = start(store).await;
    for round in 0..rounds {
        let mut ops: Vec<TxnOp> = (0..6)
            .map(|i| TxnOp::put(&key(&format!("config.k{i}")), format!("r{round}-{i}")))
            .collect();
        ops.push(TxnOp::delete(&key(&format!("config.k{}", 6 + round % 2))));
        ops.push(TxnOp::put(&key(&format!("config.k{}", 7 - round % 2)), "x"));
        let results = store.txn(ops).await.unwrap();
        let last = results.iter().rev().find_map(|result| match result {
            TxnResult::Put(revision) | TxnResult::Deleted(revision) => Some(*revision),
            _ => None,
        });
        let mut view = config.current();
        while view.revision() < last {
            view = timeout(LIMIT, config.changed())
                .await
                .expect("the view catches up")
                .unwrap();
        }
    }
    let view = config.current();
    let fresh = start(store).await;
    assert_eq!(contents(&view), contents(&fresh.current()));
    assert_eq!(
        config.lag_recoveries(),
        rounds as u64,
        "every transaction larger than the buffer lags the view once"
    );
}

// On the current-thread runtime: MemoryStore hands a transaction's events to a watcher one by
// one, without yielding, so a view task that cannot run meanwhile is sure to overflow its
// buffer on every transaction. On a multi-threaded runtime the view task may drain the buffer
// while the events arrive and keep up (no lag, which is correct), and the count of
// recoveries this test asserts would depend on timing.
#[tokio::test]
async fn a_lagged_view_resumes_from_the_revision_the_store_names() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::builder().watch_buffer(2).build());
    overflow_and_compare(&store, 5).await;
}

// On the current-thread runtime, for the reason given above.
#[tokio::test]
async fn a_lagged_view_whose_resume_point_is_gone_takes_a_fresh_snapshot() {
    // A history of two events cannot replay a transaction of eight: resuming is refused as
    // compacted, and the view re-snapshots.
    let store: Arc<dyn StateStore> =
        Arc::new(MemoryStore::builder().watch_buffer(2).history(2).build());
    overflow_and_compare(&store, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_task_ends_when_the_last_handle_is_dropped() {
    let memory = Arc::new(MemoryStore::new());
    let store: Arc<dyn StateStore> = memory.clone();
    let idle = Arc::strong_count(&memory);
    store.set(&key("config.a"), "1").await.unwrap();
    let config = start(&store).await;
    let subscriber = config.subscribe();
    let clone = config.clone();
    assert_eq!(
        Arc::strong_count(&memory),
        idle + 1,
        "the task holds the store"
    );
    drop(config);
    drop(clone);
    // The subscriber still reads live changes.
    let mut subscriber = subscriber;
    store.set(&key("config.a"), "2").await.unwrap();
    timeout(LIMIT, subscriber.changed()).await.unwrap().unwrap();
    assert_eq!(
        subscriber
            .borrow()
            .get(&key("config.a"))
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(Arc::strong_count(&memory), idle + 1);
    drop(subscriber);
    timeout(LIMIT, async {
        while Arc::strong_count(&memory) > idle {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the task ends and lets go of the store");
}
