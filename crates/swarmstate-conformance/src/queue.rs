//! Cases for the work queue, through [`WorkQueue`]: one item per id, one claimant per item,
//! concurrent claimers, leases kept by heartbeats and lost by expiry, fenced completion, retries
//! and dead-lettering, listing, and waiting for work without polling.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::support::{
    TIMING_ATTEMPTS, expect_err, expiry_slack, granularity, key, list, sleep_until, too_slow,
    ttl_unit, ttl_unit_for_attempt,
};
use swarmstate_core::{Condition, Error, KeyStream, Pattern, Result, Revision, StateStore, TxnOp};
use swarmstate_recipes::queue::{Claim, ItemState, ItemStatus, WorkQueue};

/// A lease no case waits out.
const LONG_LEASE: Duration = Duration::from_secs(30);

fn queue(store: &Arc<dyn StateStore>) -> WorkQueue {
    WorkQueue::new(store.clone(), key("jobs"))
}

async fn enqueue(queue: &WorkQueue, id: &str, payload: &str) {
    let added = queue
        .enqueue(id, payload.to_owned())
        .await
        .unwrap_or_else(|err| panic!("enqueue {id}: {err}"));
    assert!(added, "{id} was new, so enqueue must add it");
}

async fn claim(queue: &WorkQueue, worker: &str, lease: Duration) -> Claim {
    queue
        .claim(worker, lease)
        .await
        .unwrap_or_else(|err| panic!("{worker} claiming: {err}"))
        .unwrap_or_else(|| panic!("{worker} found nothing to claim"))
}

async fn status(queue: &WorkQueue, id: &str) -> ItemStatus {
    queue
        .status(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("item {id} should exist"))
}

/// Asserts the item's state, attempts and claimant.
async fn assert_status(
    queue: &WorkQueue,
    id: &str,
    state: ItemState,
    attempts: u32,
    claimant: Option<&str>,
) {
    let status = status(queue, id).await;
    assert_eq!(
        (status.state, status.attempts, status.claimant.as_deref()),
        (state, attempts, claimant),
        "status of {id}: {status:?}"
    );
}

/// Claims with the shortest lease the store keeps exactly and returns when that lease has
/// surely expired.
async fn claim_and_let_expire(queue: &WorkQueue, store: &dyn StateStore, worker: &str) -> Claim {
    let lease = ttl_unit(store);
    let claim = claim(queue, worker, lease).await;
    let claimed = Instant::now();
    sleep_until(claimed + lease + granularity(store)).await;
    claim
}

/// Enqueuing an id that exists, in any state, adds nothing and keeps the first payload.
pub async fn enqueue_of_the_same_id_twice_is_one_item(store: Arc<dyn StateStore>) {
    let queue = queue(&store);
    enqueue(&queue, "a", "first").await;
    assert!(!queue.enqueue("a", "second").await.unwrap());
    let items = queue.list().await.unwrap();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (items[0].id.as_str(), items[0].state, items[0].attempts),
        ("a", ItemState::Pending, 0)
    );

    let first = claim(&queue, "worker-1", LONG_LEASE).await;
    assert_eq!(&first.payload[..], b"first");
    assert!(!queue.enqueue("a", "third").await.unwrap(), "while claimed");
    queue.complete(first).await.unwrap();
    assert!(!queue.enqueue("a", "fourth").await.unwrap(), "once done");
    assert_status(&queue, "a", ItemState::Done, 1, None).await;
    assert!(queue.claim("worker-2", LONG_LEASE).await.unwrap().is_none());
}

/// Each claim hands out a different item with its payload, attempt 1 and a token; once all are
/// claimed, a claim finds nothing.
pub async fn queue_claim_gives_each_item_to_one_claimant(store: Arc<dyn StateStore>) {
    let queue = queue(&store);
    for id in ["a", "b", "c"] {
        enqueue(&queue, id, &format!("payload-{id}")).await;
    }
    let mut seen = BTreeSet::new();
    let mut tokens = BTreeSet::new();
    for worker in ["worker-1", "worker-2", "worker-3"] {
        let claim = claim(&queue, worker, LONG_LEASE).await;
        assert!(
            seen.insert(claim.id.clone()),
            "{} handed out twice",
            claim.id
        );
        assert!(tokens.insert(claim.token), "token {} reused", claim.token);
        assert_eq!(claim.payload, Bytes::from(format!("payload-{}", claim.id)));
        assert_eq!((claim.worker.as_str(), claim.attempt), (worker, 1));
        assert_status(&queue, &claim.id, ItemState::Claimed, 1, Some(worker)).await;
    }
    assert_eq!(seen.len(), 3);
    assert!(queue.claim("worker-4", LONG_LEASE).await.unwrap().is_none());
}

/// Eight workers drain forty items concurrently: every item is completed exactly once (its
/// result written with the completion), and no item is ever held by two workers at once.
pub async fn concurrent_claimers_complete_every_item_exactly_once(store: Arc<dyn StateStore>) {
    const WORKERS: usize = 8;
    const ITEMS: usize = 40;
    let queue = queue(&store);
    for i in 0..ITEMS {
        enqueue(&queue, &format!("item-{i:02}"), &format!("job {i}")).await;
    }
    let held: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (queue, held) = (queue.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            let worker = format!("worker-{w}");
            let mut done = Vec::new();
            while let Some(claim) = queue.claim(&worker, LONG_LEASE).await.unwrap() {
                assert!(
                    held.lock().unwrap().insert(claim.id.clone()),
                    "{} claimed while another worker held it",
                    claim.id
                );
                let result = key(&format!("results.{}", claim.id));
                let output = format!("{} by {worker}", String::from_utf8_lossy(&claim.payload));
                let id = claim.id.clone();
                queue
                    .complete_with(
                        claim,
                        vec![TxnOp::put(&result, output).when(Condition::Absent)],
                    )
                    .await
                    .unwrap_or_else(|err| panic!("{worker} completing {id}: {err}"));
                held.lock().unwrap().remove(&id);
                done.push(id);
            }
            (worker, done)
        }));
    }
    let mut completed_by: BTreeMap<String, String> = BTreeMap::new();
    for task in tasks {
        let (worker, done) = task.await.unwrap();
        for id in done {
            if let Some(other) = completed_by.insert(id.clone(), worker.clone()) {
                panic!("{id} completed by both {other} and {worker}");
            }
        }
    }
    assert_eq!(completed_by.len(), ITEMS, "every item completed");
    let results = list(&*store, "results.*").await;
    assert_eq!(results.len(), ITEMS, "one result per item: {results:?}");
    for (id, worker) in &completed_by {
        let value = store.get(&key(&format!("results.{id}"))).await.unwrap();
        let value = value.unwrap_or_else(|| panic!("result of {id}"));
        assert!(
            String::from_utf8_lossy(&value.value).ends_with(&format!(" by {worker}")),
            "{id}: {value:?}"
        );
    }
    for item in queue.list().await.unwrap() {
        assert_eq!(
            (item.state, item.attempts),
            (ItemState::Done, 1),
            "{item:?}"
        );
    }
}

/// Heartbeats keep a claim alive for several times its lease: it stays claimed by the same
/// worker, nobody else can claim it, and it can still be completed.
///
/// Each step is judged only if it finished within a lease of the last renewal that began
/// before it; a machine stalled longer than that repeats the attempt with a doubled lease, on
/// a queue of its own.
pub async fn heartbeat_extends_a_claim_past_its_lease(store: Arc<dyn StateStore>) {
    let step = granularity(&*store);
    'attempts: for attempt in 0..TIMING_ATTEMPTS {
        let lease = ttl_unit_for_attempt(&*store, attempt) * 2;
        let queue = WorkQueue::new(store.clone(), key(&format!("jobs-{attempt}")));
        enqueue(&queue, "a", "payload").await;
        // The lease runs from a moment after this one, so it lasts at least until
        // `renewed + lease`.
        let mut renewed = Instant::now();
        let claim = claim(&queue, "worker-1", lease).await;
        let until = Instant::now() + lease * 2;
        while Instant::now() < until {
            tokio::time::sleep(lease / 4).await;
            let started = Instant::now();
            match queue.heartbeat(&claim).await {
                Ok(()) => renewed = started,
                Err(_) if renewed.elapsed() >= lease => continue 'attempts,
                Err(err) => panic!("heartbeat within the lease: {err}"),
            }
        }
        let item = status(&queue, "a").await;
        let checked = renewed.elapsed();
        let other = queue.claim("worker-2", lease).await.unwrap();
        if renewed.elapsed() >= lease {
            continue;
        }
        assert_eq!(
            (item.state, item.attempts, item.claimant.as_deref()),
            (ItemState::Claimed, 1, Some("worker-1")),
            "{item:?}"
        );
        let left = item.lease_left.expect("a live lease");
        assert!(
            left <= lease + step && left + step >= lease.saturating_sub(checked),
            "{left:?} left of a {lease:?} lease renewed {checked:?} before"
        );
        assert!(other.is_none(), "claimed away from a live lease: {other:?}");

        let copy = claim.clone();
        let started = Instant::now();
        let beat = queue.heartbeat(&copy).await;
        if renewed.elapsed() >= lease {
            continue;
        }
        beat.unwrap_or_else(|err| panic!("heartbeat within the lease: {err}"));
        let completed = queue.complete(claim).await;
        if started.elapsed() >= lease {
            continue;
        }
        completed.unwrap_or_else(|err| panic!("completion within the lease: {err}"));
        assert_status(&queue, "a", ItemState::Done, 1, None).await;
        let err = expect_err(queue.heartbeat(&copy).await, "heartbeat after completion");
        assert!(matches!(err, Error::LockLost { .. }), "{err}");
        return;
    }
    too_slow(
        "heartbeat_extends_a_claim_past_its_lease",
        "no heartbeat came within its lease",
        ttl_unit_for_attempt(&*store, TIMING_ATTEMPTS - 1) * 2,
    );
}

/// When a lease expires the item is claimable again with a higher token; the stalled worker's
/// heartbeat, completion and failure are all `LockLost` and change nothing.
pub async fn expired_claim_is_claimable_again_and_the_stale_completion_is_rejected(
    store: Arc<dyn StateStore>,
) {
    let queue = queue(&store);
    enqueue(&queue, "a", "payload").await;
    let stale = claim_and_let_expire(&queue, &*store, "worker-1").await;
    assert_status(&queue, "a", ItemState::Pending, 1, None).await;
    let result = key("results.a");
    let err = expect_err(
        queue
            .complete_with(stale.clone(), vec![TxnOp::put(&result, "stale")])
            .await,
        "completion after the lease expired",
    );
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    assert_status(&queue, "a", ItemState::Pending, 1, None).await;

    let fresh = claim(&queue, "worker-2", LONG_LEASE).await;
    assert_eq!((fresh.id.as_str(), fresh.attempt), ("a", 2));
    assert!(
        fresh.token > stale.token,
        "{} after {}",
        fresh.token,
        stale.token
    );
    assert_eq!(&fresh.payload[..], b"payload");
    for (what, outcome) in [
        ("heartbeat", queue.heartbeat(&stale).await),
        (
            "completion",
            queue
                .complete_with(stale.clone(), vec![TxnOp::put(&result, "stale")])
                .await
                .map(drop),
        ),
        ("failure", queue.fail(stale.clone(), "late").await.map(drop)),
    ] {
        let err = expect_err(outcome, &format!("stale {what}"));
        assert!(matches!(err, Error::LockLost { .. }), "{what}: {err}");
        assert_status(&queue, "a", ItemState::Claimed, 2, Some("worker-2")).await;
    }
    assert_eq!(store.get(&result).await.unwrap(), None, "no stale result");
    assert_eq!(status(&queue, "a").await.last_error, None);

    queue
        .complete_with(fresh, vec![TxnOp::put(&result, "fresh")])
        .await
        .unwrap();
    assert_status(&queue, "a", ItemState::Done, 2, None).await;
    assert_eq!(
        &store.get(&result).await.unwrap().unwrap().value[..],
        b"fresh"
    );
}

/// A failed item goes back to pending with its reason until its last attempt fails; then it is
/// dead and never handed out again. An item whose last lease expires is dead too.
pub async fn failed_items_are_retried_until_max_attempts_then_dead_lettered(
    store: Arc<dyn StateStore>,
) {
    let queue = queue(&store).max_attempts(2);
    enqueue(&queue, "a", "payload").await;
    let first = claim(&queue, "worker-1", LONG_LEASE).await;
    assert_eq!(
        queue.fail(first, "boom 1").await.unwrap(),
        ItemState::Pending
    );
    let status_a = status(&queue, "a").await;
    assert_eq!(
        (
            status_a.state,
            status_a.attempts,
            status_a.last_error.as_deref()
        ),
        (ItemState::Pending, 1, Some("boom 1"))
    );
    let second = claim(&queue, "worker-2", LONG_LEASE).await;
    assert_eq!((second.id.as_str(), second.attempt), ("a", 2));
    assert_eq!(queue.fail(second, "boom 2").await.unwrap(), ItemState::Dead);
    let status_a = status(&queue, "a").await;
    assert_eq!(
        (
            status_a.state,
            status_a.attempts,
            status_a.last_error.as_deref()
        ),
        (ItemState::Dead, 2, Some("boom 2"))
    );
    assert!(queue.claim("worker-3", LONG_LEASE).await.unwrap().is_none());
    assert!(
        !queue.enqueue("a", "again").await.unwrap(),
        "a dead id stays taken"
    );

    // The last attempt abandoned: dead as soon as its lease is gone, and a claim passing by
    // moves it to the dead-letter set for good.
    let once = WorkQueue::new(store.clone(), key("once")).max_attempts(1);
    enqueue(&once, "b", "payload").await;
    let abandoned = claim_and_let_expire(&once, &*store, "worker-1").await;
    assert_status(&once, "b", ItemState::Dead, 1, None).await;
    assert!(once.claim("worker-2", LONG_LEASE).await.unwrap().is_none());
    assert_status(&once, "b", ItemState::Dead, 1, None).await;
    let err = expect_err(once.complete(abandoned).await, "completion of a dead item");
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    assert_status(&once, "b", ItemState::Dead, 1, None).await;

    // A retry left pending by a handle allowing more attempts is dead to a stricter one.
    let lenient = WorkQueue::new(store.clone(), key("once")).max_attempts(5);
    enqueue(&lenient, "c", "payload").await;
    let first = claim(&lenient, "worker-1", LONG_LEASE).await;
    assert_eq!(
        lenient.fail(first, "boom").await.unwrap(),
        ItemState::Pending
    );
    assert!(once.claim("worker-2", LONG_LEASE).await.unwrap().is_none());
    assert_status(&lenient, "c", ItemState::Dead, 1, None).await;
    assert!(
        lenient
            .claim("worker-3", LONG_LEASE)
            .await
            .unwrap()
            .is_none()
    );
}

/// `list` reports every item sorted by id, with its state, attempts, claimant, lease left and
/// last error; `status` of an unknown id is `None`.
pub async fn queue_list_reports_state_claimant_and_lease_left(store: Arc<dyn StateStore>) {
    let queue = queue(&store).max_attempts(1);
    for id in ["d", "c", "b", "a"] {
        enqueue(&queue, id, "payload").await;
    }
    // Claims are handed out in no particular order, so claim all four and decide by id.
    let mut claims = BTreeMap::new();
    for worker in ["w1", "w2", "w3", "w4"] {
        let claim = claim(&queue, worker, LONG_LEASE).await;
        claims.insert(claim.id.clone(), claim);
    }
    let claimant_b = claims["b"].worker.clone();
    queue.complete(claims.remove("c").unwrap()).await.unwrap();
    queue
        .fail(claims.remove("d").unwrap(), "bad input")
        .await
        .unwrap();
    let a = claims.remove("a").unwrap();
    assert_eq!(
        queue.fail(a, "retry me").await.unwrap(),
        ItemState::Dead,
        "max_attempts 1"
    );
    enqueue(&queue, "e", "payload").await;

    let items = queue.list().await.unwrap();
    let ids: Vec<&str> = items.iter().map(|item| item.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    let summary: Vec<_> = items
        .iter()
        .map(|item| {
            (
                item.state,
                item.attempts,
                item.claimant.as_deref(),
                item.last_error.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (ItemState::Dead, 1, None, Some("retry me")),
            (ItemState::Claimed, 1, Some(claimant_b.as_str()), None),
            (ItemState::Done, 1, None, None),
            (ItemState::Dead, 1, None, Some("bad input")),
            (ItemState::Pending, 0, None, None),
        ]
    );
    let left = items[1].lease_left.expect("a claimed item has a lease");
    assert!(
        left > LONG_LEASE / 2 && left <= LONG_LEASE + granularity(&*store),
        "{left:?}"
    );
    assert!(
        items
            .iter()
            .filter(|i| i.id != "b")
            .all(|i| i.lease_left.is_none())
    );
    assert_eq!(queue.status("zzz").await.unwrap(), None);
    let b = status(&queue, "b").await;
    assert_eq!(
        ItemStatus {
            lease_left: None,
            ..b
        },
        ItemStatus {
            lease_left: None,
            ..items[1].clone()
        }
    );
}

/// The key listings an idle `claim_wait` may make in all: one look before and one after it
/// opens its watch, each listing the pending index, the claimed index and the leases.
const IDLE_WAIT_LISTINGS: usize = 6;

/// `claim_wait` on an empty queue returns `None` when its wait runs out, without polling the
/// store meanwhile; it wakes and claims as soon as an item is enqueued, and when a lease
/// expires.
pub async fn claim_wait_wakes_for_new_work_and_returns_none_on_deadline(
    store: Arc<dyn StateStore>,
) {
    let counting = Arc::new(Counting {
        inner: store.clone(),
        listings: AtomicUsize::new(0),
    });
    let queue = WorkQueue::new(counting.clone(), key("jobs"));
    let wait = ttl_unit(&*store);
    let started = Instant::now();
    assert!(
        queue
            .claim_wait("worker-1", LONG_LEASE, wait)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        started.elapsed() >= wait,
        "returned after {:?}",
        started.elapsed()
    );
    let after_one_look = counting.listings.load(Ordering::SeqCst);
    assert!(
        after_one_look <= IDLE_WAIT_LISTINGS,
        "an idle wait must not poll: {after_one_look} key listings"
    );

    // Wakes for an enqueue, long before its wait runs out.
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let claim = queue
                .claim_wait("worker-1", LONG_LEASE, Duration::from_secs(60))
                .await
                .unwrap();
            (claim, started.elapsed())
        })
    };
    sleep_until(Instant::now() + wait).await;
    let listings = counting.listings.load(Ordering::SeqCst) - after_one_look;
    assert!(
        listings <= IDLE_WAIT_LISTINGS,
        "an idle wait must not poll: {listings} key listings"
    );
    enqueue(&queue, "a", "payload").await;
    let (claim, waited) = waiter.await.unwrap();
    let claim = claim.expect("the waiter claims the new item");
    assert_eq!(
        (claim.id.as_str(), claim.worker.as_str()),
        ("a", "worker-1")
    );
    assert!(
        waited < Duration::from_secs(30),
        "woke only after {waited:?}"
    );

    // Wakes when the holder's lease runs out.
    enqueue(&queue, "b", "payload").await;
    let lease = ttl_unit(&*store);
    let stalled = queue
        .claim("worker-2", lease)
        .await
        .unwrap()
        .expect("b is pending");
    let started = Instant::now();
    let reclaimed = queue
        .claim_wait("worker-3", LONG_LEASE, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the lease runs out within the wait");
    let waited = started.elapsed();
    assert_eq!((reclaimed.id.as_str(), reclaimed.attempt), ("b", 2));
    assert!(reclaimed.token > stalled.token);
    assert!(
        waited <= lease + expiry_slack(&*store) + Duration::from_secs(2),
        "woke only {waited:?} after a lease of {lease:?}"
    );
}

/// Bad ids, payloads, workers, leases and foreign claims are rejected and change nothing.
pub async fn queue_rejects_invalid_input_and_changes_nothing(store: Arc<dyn StateStore>) {
    let queue = queue(&store);
    let too_long = "x".repeat(swarmstate_core::MAX_KEY_LEN);
    for id in ["", "a b", "a.b", "é", too_long.as_str()] {
        let err = expect_err(queue.enqueue(id, "payload").await, "enqueue of a bad id");
        assert!(
            matches!(err, Error::InvalidKey { .. } | Error::InvalidInput { .. }),
            "{id:?}: {err}"
        );
        let err = expect_err(queue.status(id).await, "status of a bad id");
        assert!(
            matches!(err, Error::InvalidKey { .. } | Error::InvalidInput { .. }),
            "{id:?}: {err}"
        );
    }
    let limit = store.capabilities().max_value_size;
    let err = expect_err(
        queue.enqueue("big", vec![0u8; limit + 1]).await,
        "enqueue of an oversized payload",
    );
    assert!(matches!(err, Error::ValueTooLarge { .. }), "{err}");
    assert_eq!(
        list(&*store, "*").await,
        Vec::<String>::new(),
        "nothing written"
    );

    enqueue(&queue, "a", "payload").await;
    let before = snapshot(&*store).await;
    for (worker, lease) in [
        ("", LONG_LEASE),
        ("two\nlines", LONG_LEASE),
        ("worker-1", Duration::ZERO),
        (
            "worker-1",
            swarmstate_core::MAX_TTL + Duration::from_secs(1),
        ),
    ] {
        let err = expect_err(queue.claim(worker, lease).await, "claim with bad input");
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{worker:?} {lease:?}: {err}"
        );
        let err = expect_err(
            queue
                .claim_wait(worker, lease, Duration::from_secs(1))
                .await,
            "claim_wait with bad input",
        );
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{worker:?} {lease:?}: {err}"
        );
    }
    assert_eq!(snapshot(&*store).await, before, "bad claims change nothing");

    let claim = claim(&queue, "worker-1", LONG_LEASE).await;
    let before = snapshot(&*store).await;
    let err = expect_err(
        queue
            .complete_with(
                claim.clone(),
                vec![TxnOp::put(&key("jobs.item.a"), "forged")],
            )
            .await,
        "completion touching the queue's own keys",
    );
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let other = WorkQueue::new(store.clone(), key("other"));
    let err = expect_err(
        other.complete(claim.clone()).await,
        "completion on another queue",
    );
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let err = expect_err(other.heartbeat(&claim).await, "heartbeat on another queue");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert_eq!(
        snapshot(&*store).await,
        before,
        "rejected completions change nothing"
    );
    queue.complete(claim).await.unwrap();
}

/// Every non-reserved key with its value and revision.
async fn snapshot(store: &dyn StateStore) -> Vec<(String, Bytes, Revision)> {
    let mut entries = Vec::new();
    for k in list(store, "*").await {
        if let Some(entry) = store.get(&key(&k)).await.unwrap() {
            entries.push((k, entry.value, entry.revision));
        }
    }
    entries
}

/// A store that counts key listings, to show that a waiting claimer does not poll.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn StateStore>,
    listings: AtomicUsize,
}

#[async_trait]
impl StateStore for Counting {
    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream> {
        self.listings.fetch_add(1, Ordering::SeqCst);
        self.inner.keys(pattern).await
    }
    swarmstate_core::forward_state_store!(|s| &s.inner;
        capabilities, get, put, delete, watch, txn, close);
}
