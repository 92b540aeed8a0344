//! A work queue shared by several clients, each on its own connection to one real server:
//! every item is completed exactly once, and a worker that stalls past its lease cannot
//! complete the item it had claimed once someone else has taken it over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmstate_core::{Condition, Error, Key, StateStore, TxnOp};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsServer, require_server};
use swarmstate_recipes::lock::FenceGate;
use swarmstate_recipes::queue::{ItemState, WorkQueue};

const BUCKET: &str = "contention";
const ITEMS: usize = 60;
const WORKERS: usize = 4;
/// A lease no healthy worker runs out.
const LONG_LEASE: Duration = Duration::from_secs(30);

async fn client(server: &NatsServer) -> Arc<dyn StateStore> {
    Arc::new(
        NatsStore::builder(server.url())
            .bucket(BUCKET)
            .connect()
            .await
            .expect("connect to the test server"),
    )
}

fn result_key(id: &str) -> Key {
    Key::new(format!("results.{id}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_separate_connections_complete_every_item_once_and_a_stalled_one_is_fenced() {
    if require_server().is_none() {
        return;
    }
    let server = NatsServer::start().await;
    let name = Key::new("jobs").unwrap();
    let admin = WorkQueue::new(client(&server).await, name.clone());
    for i in 0..ITEMS {
        assert!(
            admin
                .enqueue(&format!("item-{i:02}"), format!("job {i}"))
                .await
                .unwrap()
        );
    }

    // The stalling worker claims first, with the shortest lease the backend keeps exactly.
    let stalled_store = client(&server).await;
    let stalled_queue = WorkQueue::new(stalled_store.clone(), name.clone());
    let granularity = stalled_store.capabilities().ttl_granularity;
    let short_lease = granularity.max(Duration::from_millis(200));
    let stalled = stalled_queue
        .claim("stalled", short_lease)
        .await
        .unwrap()
        .expect("items are pending");
    let claimed_at = Instant::now();

    // Healthy workers, each on its own connection, drain the queue. They wait for work rather
    // than stop at the first empty look, so they pick up the stalled item once its lease ends.
    // The shared gate stands for the resource the results go to: it must never see a token
    // go backwards for one item.
    let gates: Arc<BTreeMap<String, FenceGate>> = Arc::new(
        (0..ITEMS)
            .map(|i| (format!("item-{i:02}"), FenceGate::new()))
            .collect(),
    );
    gates[&stalled.id].admit(stalled.token).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let queue = WorkQueue::new(client(&server).await, name.clone());
        let gates = gates.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("worker-{w}");
            let mut done = Vec::new();
            while let Some(claim) = queue
                .claim_wait(&worker, LONG_LEASE, short_lease + granularity * 4)
                .await
                .unwrap()
            {
                gates[&claim.id].admit(claim.token).unwrap();
                let ops = vec![
                    TxnOp::put(&result_key(&claim.id), worker.clone()).when(Condition::Absent),
                ];
                let (id, attempt) = (claim.id.clone(), claim.attempt);
                queue
                    .complete_with(claim, ops)
                    .await
                    .unwrap_or_else(|err| panic!("{worker} completing {id}: {err}"));
                done.push((id, attempt, Instant::now()));
            }
            (worker, done)
        }));
    }

    // The stalled worker wakes after its lease ran out and tries to finish anyway.
    tokio::time::sleep_until((claimed_at + short_lease + granularity * 2).into()).await;
    let taken_over = wait_until_taken_over(&stalled_queue, &stalled.id).await;
    let err = stalled_queue
        .complete_with(
            stalled.clone(),
            vec![TxnOp::put(&result_key(&stalled.id), "stalled")],
        )
        .await
        .expect_err("a completion after the lease ran out must be rejected");
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    let err = stalled_queue
        .heartbeat(&stalled)
        .await
        .expect_err("a heartbeat after the lease ran out must be rejected");
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    assert!(
        taken_over,
        "a healthy worker reclaims the item once its lease is gone"
    );

    let mut completed_by: BTreeMap<String, (String, u32)> = BTreeMap::new();
    let mut drained = started;
    for task in tasks {
        let (worker, done) = task.await.unwrap();
        for (id, attempt, at) in done {
            if id != stalled.id {
                drained = drained.max(at);
            }
            if let Some((other, _)) = completed_by.insert(id.clone(), (worker.clone(), attempt)) {
                panic!("{id} completed by both {other} and {worker}");
            }
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(
        completed_by.len(),
        ITEMS,
        "every item completed exactly once"
    );
    let (successor, attempt) = &completed_by[&stalled.id];
    assert_eq!(
        *attempt, 2,
        "the stalled item was taken over on its second attempt"
    );
    let refused = gates[&stalled.id]
        .admit(stalled.token)
        .expect_err("the resource has seen the successor's higher token");
    assert!(refused.highest > stalled.token, "{refused}");

    let store = client(&server).await;
    for (id, (worker, _)) in &completed_by {
        let entry = store.get(&result_key(id)).await.unwrap().expect("a result");
        assert_eq!(&entry.value[..], worker.as_bytes(), "result of {id}");
    }
    assert_eq!(
        &store
            .get(&result_key(&stalled.id))
            .await
            .unwrap()
            .unwrap()
            .value[..],
        successor.as_bytes()
    );
    let items = admin.list().await.unwrap();
    assert_eq!(items.len(), ITEMS);
    for item in &items {
        assert_eq!(item.state, ItemState::Done, "{item:?}");
    }
    let per_worker: BTreeMap<&str, usize> =
        completed_by
            .values()
            .fold(BTreeMap::new(), |mut counts, (worker, _)| {
                *counts.entry(worker.as_str()).or_default() += 1;
                counts
            });
    let drain = drained - started;
    eprintln!(
        "{} items besides the stalled one completed by {WORKERS} workers in {drain:?} \
         ({:.0} items/s); all {ITEMS} in {elapsed:?} including the stalled lease and the final \
         idle wait; per worker: {per_worker:?}",
        ITEMS - 1,
        (ITEMS - 1) as f64 / drain.as_secs_f64()
    );
}

/// Waits (bounded) until someone else has claimed the item, so the stale completion is tried
/// against a successor. Returns whether that happened.
async fn wait_until_taken_over(queue: &WorkQueue, id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let status = queue.status(id).await.unwrap().expect("the item exists");
        if status.attempts >= 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
