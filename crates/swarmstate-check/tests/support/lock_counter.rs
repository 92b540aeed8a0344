//! The lock workload shared by `recipes.rs` and `nats.rs`: workers increment a counter under
//! the blocking lock, through recording clients.

use std::sync::Arc;
use std::time::Duration;

use swarmstate_check::{History, Recorder};
use swarmstate_core::{Key, StateStore};
use swarmstate_recipes::lock::acquire_lock_wait;

/// `workers` workers, each with a recording client of its own, take the lock `rounds` times
/// each through `acquire_lock_wait`, read the counter, and write it one higher with a fenced
/// put. Returns the history and the counter's final value, read from the store itself.
pub(crate) async fn counter_under_the_lock(
    store: Arc<dyn StateStore>,
    workers: usize,
    rounds: usize,
) -> (History, u64) {
    let recorder = Recorder::new(store.clone()).await.unwrap();
    let lock = Key::new("jobs.lock").unwrap();
    let counter = Key::new("jobs.counter").unwrap();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let client: Arc<dyn StateStore> = Arc::new(recorder.client());
        let (lock, counter) = (lock.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                let owner = format!("w{worker}");
                let guard = acquire_lock_wait(
                    &client,
                    &lock,
                    &owner,
                    Duration::from_secs(10),
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
                let count = match client.get(&counter).await.unwrap() {
                    Some(entry) => count_of(&entry.value),
                    None => 0,
                };
                // Hold the lock a little, so that the others queue up behind it.
                tokio::time::sleep(Duration::from_millis(1)).await;
                // Unique values, so that an explanation tells the writes apart.
                let value = format!("{} {owner}-{round}", count + 1);
                guard.fenced_put(&counter, value).await.unwrap();
                guard.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let history = recorder.finish().await;
    let last = store.get(&counter).await.unwrap();
    (history, last.map_or(0, |entry| count_of(&entry.value)))
}

fn count_of(value: &[u8]) -> u64 {
    let text = std::str::from_utf8(value).unwrap();
    text.split(' ').next().unwrap().parse().unwrap()
}
