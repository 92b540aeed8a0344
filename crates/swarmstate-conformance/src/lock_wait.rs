//! Cases for the blocking acquire ([`acquire_lock_wait`]): the first-come-first-served queue of
//! waiters, deadlines, dead waiters, try-acquire beside the queue, release on drop, and never two
//! holders under contention.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, timeout};

use super::support::{
    EVENT_TIMEOUT, TIMING_ATTEMPTS, assert_entry, entry_of, expect_err, expiry_slack, key, list,
    next_event, too_slow, ttl_unit, ttl_unit_for_attempt,
};
use swarmstate_core::{Error, Key, Pattern, PutOptions, StateStore, WatchEvent, WatchStart};
use swarmstate_recipes::lock::{FencingToken, acquire_lock_wait, lock_waiters_prefix};

use super::locks::{LONG_TTL, assert_held_by, lock};

/// How long the blocking-acquire cases let a waiter wait: far longer than any hand-over.
const LONG_WAIT: Duration = Duration::from_secs(60);

/// Waits (on a watch, within [`EVENT_TIMEOUT`] per event) until exactly `count` waiters'
/// tickets are queued on lock `k`.
pub(super) async fn wait_for_waiters(store: &Arc<dyn StateStore>, k: &Key, count: usize) {
    wait_for_waiters_beside(store, k, count, None).await;
}

/// As [`wait_for_waiters`], but while `ticket` (if given) is queued: returns `false` as soon
/// as it is not (deleted, expired, or gone before the watch opened), `true` once `count`
/// tickets are queued with it.
async fn wait_for_waiters_beside(
    store: &Arc<dyn StateStore>,
    k: &Key,
    count: usize,
    ticket: Option<&Key>,
) -> bool {
    let prefix = lock_waiters_prefix(k).unwrap();
    let mut events = store
        .watch(&Pattern::prefix(&prefix), WatchStart::Snapshot)
        .await
        .unwrap();
    let mut present = HashSet::new();
    let mut caught_up = false;
    loop {
        if caught_up {
            if ticket.is_some_and(|ticket| !present.contains(ticket)) {
                return false;
            }
            if present.len() == count {
                return true;
            }
        }
        match next_event(&mut events).await {
            WatchEvent::Put(entry) => {
                present.insert(entry.key);
            }
            WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
                present.remove(&key);
            }
            WatchEvent::CaughtUp { .. } => caught_up = true,
            WatchEvent::Lagged { .. } => panic!("a handful of tickets lagged a watcher"),
        }
    }
}

/// The waiters' tickets queued on lock `k` now.
async fn tickets(store: &Arc<dyn StateStore>, k: &Key) -> Vec<String> {
    list(&**store, &format!("{}.*", lock_waiters_prefix(k).unwrap())).await
}

/// Spawns a blocking acquire by `owner` that holds the lock until told, then releases it.
/// Returns the task (yielding the token it held) and the sender that makes it release.
fn spawn_waiter(
    store: &Arc<dyn StateStore>,
    k: &Key,
    owner: &str,
    order: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<FencingToken> {
    let (store, k, owner) = (store.clone(), k.clone(), owner.to_owned());
    tokio::spawn(async move {
        let guard = acquire_lock_wait(&store, &k, &owner, LONG_TTL, LONG_WAIT)
            .await
            .unwrap_or_else(|err| panic!("{owner} waiting for {k}: {err}"));
        order.lock().unwrap().push(owner.clone());
        let token = guard.token();
        guard.release().await.unwrap();
        token
    })
}

/// A blocking acquire waits while the lock is held and takes it as soon as the holder
/// releases (long before the holder's TTL), with a higher token; its ticket is gone after.
pub async fn blocking_acquire_waits_and_gets_the_lock_when_the_holder_releases(
    store: Arc<dyn StateStore>,
) {
    let k = key("locks.deploy");
    let holder = lock(&store, &k, "agent-1", LONG_TTL).await;
    let waiter = {
        let (store, k) = (store.clone(), k.clone());
        tokio::spawn(
            async move { acquire_lock_wait(&store, &k, "agent-2", LONG_TTL, LONG_WAIT).await },
        )
    };
    wait_for_waiters(&store, &k, 1).await;
    assert!(
        !waiter.is_finished(),
        "the waiter must wait while the lock is held"
    );
    assert_held_by(&store, &k, "agent-1").await;
    let released = Instant::now();
    let holder_token = holder.token();
    holder.release().await.unwrap();
    let guard = timeout(EVENT_TIMEOUT, waiter)
        .await
        .expect("the waiter takes the lock soon after the release")
        .unwrap()
        .unwrap();
    assert!(released.elapsed() < LONG_TTL / 2);
    assert!(
        guard.token() > holder_token,
        "{} after {holder_token}",
        guard.token()
    );
    assert_entry(&*store, &k, b"agent-2", guard.token().0).await;
    // The ticket's delete may still be under way; the release waits for it.
    assert!(tickets(&store, &k).await.len() <= 1);
    guard.release().await.unwrap();
    assert_eq!(tickets(&store, &k).await, Vec::<String>::new());
}

/// Waiters are served in the order they queued, each with a higher token than the one before.
pub async fn blocking_acquire_serves_waiters_in_arrival_order(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let holder = lock(&store, &k, "holder", LONG_TTL).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    let names: Vec<String> = (0..4).map(|i| format!("waiter-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        waiters.push(spawn_waiter(&store, &k, name, order.clone()));
        wait_for_waiters(&store, &k, i + 1).await;
    }
    let mut last = holder.token();
    holder.release().await.unwrap();
    for waiter in waiters {
        let token = timeout(EVENT_TIMEOUT * 2, waiter)
            .await
            .expect("every waiter gets the lock in turn")
            .unwrap();
        assert!(token > last, "tokens must increase: {token} after {last}");
        last = token;
    }
    assert_eq!(*order.lock().unwrap(), names);
    assert_eq!(tickets(&store, &k).await, Vec::<String>::new());
}

/// The TTL of the dead waiter's ticket in attempt `attempt`: three TTL units, long enough for
/// the real waiter to queue behind it.
fn ghost_ttl(store: &dyn StateStore, attempt: u32) -> Duration {
    ttl_unit_for_attempt(store, attempt) * 3
}

/// A queued waiter that dies does not stall those behind it: a ticket nobody refreshes
/// expires and the next waiter moves up; a waiter whose task is aborted removes its ticket at
/// once.
///
/// The dead ticket shows something only if it is still queued when the real waiter has queued
/// behind it and the holder has released; a machine that stalled past its TTL before that
/// repeats the attempt with a doubled TTL, on a lock of its own.
pub async fn dead_waiter_does_not_stall_the_queue(store: Arc<dyn StateStore>) {
    let mut attempt = 0;
    while !waiter_behind_a_dead_ticket_moves_up(&store, attempt).await {
        attempt += 1;
        if attempt == TIMING_ATTEMPTS {
            too_slow(
                "dead_waiter_does_not_stall_the_queue",
                "the dead ticket never outlived the queueing behind it and the release",
                ghost_ttl(&*store, TIMING_ATTEMPTS - 1),
            );
        }
    }

    // A waiter whose task is aborted while queued.
    let k = key("locks.deploy");
    let order = Arc::new(Mutex::new(Vec::new()));
    let holder = lock(&store, &k, "holder", LONG_TTL).await;
    let aborted = spawn_waiter(&store, &k, "aborted", order.clone());
    wait_for_waiters(&store, &k, 1).await;
    let next = spawn_waiter(&store, &k, "next", order.clone());
    wait_for_waiters(&store, &k, 2).await;
    aborted.abort();
    assert!(aborted.await.unwrap_err().is_cancelled());
    wait_for_waiters(&store, &k, 1).await;
    holder.release().await.unwrap();
    // Well before the aborted waiter's ticket could have expired.
    timeout(EVENT_TIMEOUT, next)
        .await
        .expect("the waiter behind an aborted one gets the lock at once")
        .unwrap();
    assert_eq!(*order.lock().unwrap(), ["next"]);
    assert_eq!(tickets(&store, &k).await, Vec::<String>::new());
}

/// The dead-ticket half of [`dead_waiter_does_not_stall_the_queue`], on a lock of attempt
/// `attempt`'s own: `false` if the machine was too slow for the ticket to be queued ahead of
/// the waiter at the release.
async fn waiter_behind_a_dead_ticket_moves_up(store: &Arc<dyn StateStore>, attempt: u32) -> bool {
    let k = key(&format!("locks.ghosted-{attempt}"));
    let order = Arc::new(Mutex::new(Vec::new()));
    // A waiter that stopped refreshing: a ticket in the documented layout, never refreshed.
    let holder = lock(store, &k, "holder", LONG_TTL).await;
    let ghost_ttl = ghost_ttl(&**store, attempt);
    let ghost = Key::new(format!("{}.ghost", lock_waiters_prefix(&k).unwrap())).unwrap();
    // Before the put: the store starts the TTL somewhere between sending and answering, so
    // only the time since sending is sure to cover it.
    let ghost_sent = Instant::now();
    store
        .put(
            &ghost,
            "0 ghost".into(),
            PutOptions::create().ttl(ghost_ttl),
        )
        .await
        .unwrap();
    let behind = spawn_waiter(store, &k, "behind-ghost", order.clone());
    let queued = wait_for_waiters_beside(store, &k, 2, Some(&ghost)).await;
    assert!(
        queued || ghost_sent.elapsed() >= ghost_ttl,
        "the dead ticket left the queue {:?} after it was written, before its TTL of \
         {ghost_ttl:?}",
        ghost_sent.elapsed()
    );
    holder.release().await.unwrap();
    let released = ghost_sent.elapsed();
    let limit = ghost_ttl + expiry_slack(&**store) + EVENT_TIMEOUT;
    timeout(limit, behind)
        .await
        .unwrap_or_else(|_| panic!("the waiter behind a dead ticket got no lock within {limit:?}"))
        .unwrap();
    if !queued || released >= ghost_ttl {
        return false;
    }
    assert!(
        ghost_sent.elapsed() >= ghost_ttl,
        "the waiter behind the ghost must wait for its ticket to expire ({:?} of {ghost_ttl:?})",
        ghost_sent.elapsed()
    );
    assert_eq!(*order.lock().unwrap(), ["behind-ghost"]);
    assert_eq!(tickets(store, &k).await, Vec::<String>::new());
    true
}

/// A blocking acquire whose wait runs out fails with `LockHeld` naming the holder, after
/// waiting the full time, and leaves no ticket behind.
pub async fn blocking_acquire_hits_its_deadline_with_lock_held_and_leaves_no_ticket(
    store: Arc<dyn StateStore>,
) {
    let k = key("locks.deploy");
    let holder = lock(&store, &k, "agent-1", LONG_TTL).await;
    let wait = ttl_unit(&*store);
    let started = Instant::now();
    let err = expect_err(
        acquire_lock_wait(&store, &k, "agent-2", LONG_TTL, wait).await,
        "a blocking acquire of a held lock",
    );
    assert!(
        started.elapsed() >= wait,
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, Error::LockHeld { key, holder, expires_in: Some(_) } if *key == k && holder == "agent-1"),
        "{err}"
    );
    assert_eq!(tickets(&store, &k).await, Vec::<String>::new());
    assert_held_by(&store, &k, "agent-1").await;
    holder.release().await.unwrap();
}

/// A blocking acquire of a free lock takes it at once, and its ticket is gone once the lock is
/// released; bad input is rejected before anything is written.
pub async fn blocking_acquire_of_a_free_lock_takes_it_at_once(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let started = Instant::now();
    let guard = acquire_lock_wait(&store, &k, "agent-1", LONG_TTL, LONG_WAIT)
        .await
        .unwrap();
    assert!(started.elapsed() < EVENT_TIMEOUT);
    assert_entry(&*store, &k, b"agent-1", guard.token().0).await;
    // The ticket's delete may still be under way; the release waits for it.
    assert!(tickets(&store, &k).await.len() <= 1);
    guard.release().await.unwrap();
    assert_eq!(tickets(&store, &k).await, Vec::<String>::new());
    for (owner, ttl) in [("", LONG_TTL), ("agent-1", Duration::ZERO)] {
        let err = expect_err(
            acquire_lock_wait(&store, &k, owner, ttl, LONG_WAIT).await,
            "a blocking acquire with bad input",
        );
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    }
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert_eq!(tickets(&store, &k).await, Vec::<String>::new());
}

/// `acquire_lock` does not queue: it takes a free lock even while a waiter's ticket is queued
/// (here one that is not refreshed, so the lock stays free).
pub async fn try_acquire_may_take_a_free_lock_ahead_of_queued_waiters(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let queued = Key::new(format!("{}.queued", lock_waiters_prefix(&k).unwrap())).unwrap();
    store
        .put(
            &queued,
            "0 queued".into(),
            PutOptions::create().ttl(LONG_TTL),
        )
        .await
        .unwrap();
    let guard = lock(&store, &k, "agent-1", LONG_TTL).await;
    assert_held_by(&store, &k, "agent-1").await;
    guard.release().await.unwrap();
    store.delete(&queued, None).await.unwrap();
}

/// Dropping a guard (or a keep-alive) that was not released releases the lock in the
/// background: another owner gets it long before the TTL. A released guard's drop does not
/// touch the next holder's lock.
pub async fn dropping_a_guard_releases_the_lock(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let dropped = lock(&store, &k, "agent-1", LONG_TTL).await;
    let first = dropped.token();
    drop(dropped);
    let started = Instant::now();
    let next = acquire_lock_wait(&store, &k, "agent-2", LONG_TTL, EVENT_TIMEOUT)
        .await
        .unwrap();
    assert!(next.token() > first);

    let kept = next.keep_alive();
    let second = kept.guard().token();
    drop(kept);
    let last = acquire_lock_wait(&store, &k, "agent-3", LONG_TTL, EVENT_TIMEOUT)
        .await
        .unwrap();
    assert!(last.token() > second);
    assert!(started.elapsed() < LONG_TTL / 2);

    let released = last.token();
    last.release().await.unwrap();
    let holder = lock(&store, &k, "agent-4", LONG_TTL).await;
    assert!(holder.token() > released);
    assert_entry(&*store, &k, b"agent-4", holder.token().0).await;
    holder.release().await.unwrap();
}

/// N tasks each take one lock several times with blocking acquires: never two holders at
/// once, every fenced write applies, and tokens strictly increase in the order held.
pub async fn blocking_acquire_under_contention_never_has_two_holders(store: Arc<dyn StateStore>) {
    const TASKS: usize = 8;
    const ROUNDS: usize = 3;
    let k = key("locks.contended");
    let counter = key("work.counter");
    let holders = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(swarmstate_recipes::lock::FenceGate::new());
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, k, counter) = (store.clone(), k.clone(), counter.clone());
        let (holders, tokens, gate) = (holders.clone(), tokens.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("task-{task}");
            for _ in 0..ROUNDS {
                let guard = acquire_lock_wait(&store, &k, &owner, LONG_TTL, LONG_WAIT)
                    .await
                    .unwrap_or_else(|err| panic!("{owner}: {err}"));
                assert_eq!(
                    holders.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                gate.admit(guard.token()).unwrap();
                tokens.lock().unwrap().push(guard.token());
                let current = store.get(&counter).await.unwrap();
                let n: usize = current.map_or(0, |entry| {
                    std::str::from_utf8(&entry.value).unwrap().parse().unwrap()
                });
                guard
                    .fenced_put(&counter, (n + 1).to_string())
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
                assert_eq!(
                    holders.fetch_sub(1, Ordering::SeqCst),
                    1,
                    "two holders at once"
                );
                guard.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        timeout(LONG_WAIT, task)
            .await
            .expect("contention finishes")
            .unwrap();
    }
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), TASKS * ROUNDS);
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "tokens must strictly increase: {tokens:?}"
        );
    }
    let total = entry_of(&*store, &counter).await;
    assert_eq!(&total.value[..], (TASKS * ROUNDS).to_string().as_bytes());
    assert_eq!(tickets(&store, &k).await, Vec::<String>::new());
}
