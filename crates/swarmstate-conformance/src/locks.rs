//! Cases for locks with fencing tokens, through [`acquire_lock`], [`acquire_lock_wait`] and
//! [`LockGuard`]: contention, expiry and takeover, refresh, release, fenced writes, strictly
//! increasing tokens, the first-come-first-served queue of blocking acquires, and release on
//! drop.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, timeout};

use super::support::{
    EVENT_TIMEOUT, assert_entry, entry_of, expect_err, expiry_slack, granularity, key, list,
    next_event, sleep_until, ttl_unit,
};
use swarmstate_core::{
    Error, Key, Pattern, PutOptions, StateStore, StateStoreExt, TxnOp, TxnResult, WatchEvent,
    WatchStart,
};
use swarmstate_recipes::lock::{
    FencingToken, LockGuard, acquire_lock, acquire_lock_wait, lock_waiters_prefix,
};

/// A TTL no case waits out.
const LONG_TTL: Duration = Duration::from_secs(30);

async fn lock(store: &Arc<dyn StateStore>, k: &Key, owner: &str, ttl: Duration) -> LockGuard {
    acquire_lock(store, k, owner, ttl)
        .await
        .unwrap_or_else(|err| panic!("{owner} acquiring {k}: {err}"))
}

/// Acquires with the shortest TTL the store keeps exactly and returns when that lock has surely
/// expired.
async fn lock_and_let_expire(store: &Arc<dyn StateStore>, k: &Key, owner: &str) -> LockGuard {
    let ttl = ttl_unit(&**store);
    let guard = lock(store, k, owner, ttl).await;
    let acquired = Instant::now();
    sleep_until(acquired + ttl + granularity(&**store)).await;
    guard
}

/// Asserts that acquiring `k` fails with `LockHeld` naming `holder`.
async fn assert_held_by(store: &Arc<dyn StateStore>, k: &Key, holder: &str) {
    let err = expect_err(
        acquire_lock(store, k, "intruder", LONG_TTL).await,
        "acquire",
    );
    assert!(
        matches!(&err, Error::LockHeld { key, holder: named, .. } if key == k && named == holder),
        "{err}"
    );
}

/// A second owner fails at once with `LockHeld` naming the holder and the time it has left.
pub async fn lock_contention_reports_the_holder_and_time_left(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let guard = lock(&store, &k, "agent-1", LONG_TTL).await;
    let err = expect_err(
        acquire_lock(&store, &k, "agent-2", LONG_TTL).await,
        "acquire",
    );
    assert!(
        matches!(&err, Error::LockHeld { key, holder, expires_in: Some(left) }
            if *key == k && holder == "agent-1"
                && *left <= LONG_TTL + granularity(&*store)
                && *left > LONG_TTL / 2),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("agent-1"), "{message}");
    assert_eq!(guard.owner(), "agent-1");
    guard.release().await.unwrap();
}

/// Once a lock's TTL has run out, another owner takes it with a strictly higher fencing token,
/// and the old holder can no longer write through it.
pub async fn expired_lock_can_be_taken_with_a_higher_token(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let old = lock_and_let_expire(&store, &k, "agent-1").await;
    let new = lock(&store, &k, "agent-2", LONG_TTL).await;
    assert!(
        new.token() > old.token(),
        "{} after {}",
        new.token(),
        old.token()
    );
    assert_held_by(&store, &k, "agent-2").await;
    let err = expect_err(
        old.fenced_put(&key("deploy.version"), "v1").await,
        "fenced put",
    );
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
}

/// Refresh of a lock that expired fails with `LockLost` and changes nothing, whether the lock
/// is vacant or someone else took it.
pub async fn refresh_after_losing_the_lock_fails_with_lock_lost(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let old = lock_and_let_expire(&store, &k, "agent-1").await;
    let err = expect_err(old.refresh().await, "refresh of an expired lock");
    assert!(
        matches!(&err, Error::LockLost { key } if *key == k),
        "{err}"
    );
    assert_eq!(
        store.get(&k).await.unwrap(),
        None,
        "a failed refresh writes nothing"
    );

    let new = lock(&store, &k, "agent-2", LONG_TTL).await;
    let err = expect_err(old.refresh().await, "refresh of a lock taken over");
    assert!(
        matches!(&err, Error::LockLost { key } if *key == k),
        "{err}"
    );
    assert_entry(&*store, &k, b"agent-2", new.token().0).await;
    assert_held_by(&store, &k, "agent-2").await;
}

/// Refresh while held succeeds, keeps the fencing token, and the lock stays held and usable.
pub async fn refresh_while_held_keeps_the_lock_and_its_token(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let guard = lock(&store, &k, "agent-1", LONG_TTL).await;
    let token = guard.token();
    guard.refresh().await.unwrap();
    guard.refresh().await.unwrap();
    assert_eq!(guard.token(), token, "refresh keeps the token");
    let entry = entry_of(&*store, &k).await;
    assert_eq!(&entry.value[..], b"agent-1");
    assert!(
        entry.expires_in.is_some(),
        "a refreshed lock still has a TTL"
    );
    assert_held_by(&store, &k, "agent-1").await;
    guard
        .fenced_put(&key("deploy.version"), "v2")
        .await
        .unwrap();
    guard.release().await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), None);
}

/// Release of a lock that expired and was taken over fails with `LockLost`; the new holder
/// keeps the lock (same value and revision) and can still use it.
pub async fn release_of_a_lock_no_longer_ours_fails_and_the_new_holder_keeps_it(
    store: Arc<dyn StateStore>,
) {
    let k = key("locks.deploy");
    let old = lock_and_let_expire(&store, &k, "agent-1").await;
    let new = lock(&store, &k, "agent-2", LONG_TTL).await;
    let err = expect_err(old.release().await, "release of a lock taken over");
    assert!(
        matches!(&err, Error::LockLost { key } if *key == k),
        "{err}"
    );
    assert_entry(&*store, &k, b"agent-2", new.token().0).await;
    assert_held_by(&store, &k, "agent-2").await;
    new.fenced_put(&key("deploy.version"), "v3").await.unwrap();
    new.release().await.unwrap();
}

/// A fenced write by a guard whose lock expired (vacant, then taken over) is `LockLost` and
/// writes nothing.
pub async fn fenced_write_with_a_stale_guard_is_rejected_and_writes_nothing(
    store: Arc<dyn StateStore>,
) {
    let k = key("locks.deploy");
    let target = key("deploy.version");
    let old = lock_and_let_expire(&store, &k, "agent-1").await;
    let err = expect_err(old.fenced_put(&target, "stale-1").await, "fenced put");
    assert!(
        matches!(&err, Error::LockLost { key } if *key == k),
        "{err}"
    );
    assert_eq!(store.get(&target).await.unwrap(), None);

    let new = lock(&store, &k, "agent-2", LONG_TTL).await;
    let written = new.fenced_put(&target, "fresh").await.unwrap();
    let err = expect_err(old.fenced_put(&target, "stale-2").await, "fenced put");
    assert!(
        matches!(&err, Error::LockLost { key } if *key == k),
        "{err}"
    );
    let err = expect_err(
        old.fenced_txn(vec![
            TxnOp::put(&target, "stale-3"),
            TxnOp::delete(&key("other")),
        ])
        .await,
        "fenced txn",
    );
    assert!(
        matches!(&err, Error::LockLost { key } if *key == k),
        "{err}"
    );
    assert_entry(&*store, &target, b"fresh", written).await;
    assert_entry(&*store, &k, b"agent-2", new.token().0).await;
}

/// While the lock is held, fenced writes apply at revisions above the token, and a fenced
/// transaction applies all its operations.
pub async fn fenced_write_while_held_succeeds(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let (version, notes) = (key("deploy.version"), key("deploy.notes"));
    let guard = lock(&store, &k, "agent-1", LONG_TTL).await;
    let written = guard.fenced_put(&version, "v1").await.unwrap();
    assert!(
        written > guard.token().0,
        "{written:?} after token {}",
        guard.token()
    );
    assert_entry(&*store, &version, b"v1", written).await;

    let results = guard
        .fenced_txn(vec![
            TxnOp::put(&version, "v2"),
            TxnOp::put(&notes, "rolled"),
        ])
        .await
        .unwrap();
    let [TxnResult::Put(rv), TxnResult::Put(rn)] = results[..] else {
        panic!("expected two puts, got {results:?}");
    };
    assert_entry(&*store, &version, b"v2", rv).await;
    assert_entry(&*store, &notes, b"rolled", rn).await;
    let err = expect_err(
        guard.fenced_txn(vec![TxnOp::put(&k, "x")]).await,
        "a fenced txn touching its own lock",
    );
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert_entry(&*store, &k, b"agent-1", guard.token().0).await;
    guard.release().await.unwrap();
}

/// A sequence of holders (each releasing, one expiring, with unrelated writes between) gets
/// strictly increasing fencing tokens.
pub async fn lock_tokens_strictly_increase_across_holders(store: Arc<dyn StateStore>) {
    let k = key("locks.leader");
    let mut tokens: Vec<FencingToken> = Vec::new();
    for i in 0..6 {
        let owner = format!("agent-{i}");
        let guard = if i == 3 {
            lock_and_let_expire(&store, &k, &owner).await
        } else {
            lock(&store, &k, &owner, LONG_TTL).await
        };
        tokens.push(guard.token());
        store.set(&key(&format!("noise.k{i}")), "x").await.unwrap();
        if i != 3 {
            guard.fenced_put(&key("leader.term"), owner).await.unwrap();
            guard.release().await.unwrap();
        }
    }
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "tokens must strictly increase: {tokens:?}"
        );
    }
}

/// After a release the lock is free: the key is gone, and the same or another owner can
/// acquire it again, with a higher token.
pub async fn release_then_reacquire_works(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let first = lock(&store, &k, "agent-1", LONG_TTL).await;
    let first_token = first.token();
    first.release().await.unwrap();
    assert_eq!(
        store.get(&k).await.unwrap(),
        None,
        "release deletes the lock key"
    );
    let again = lock(&store, &k, "agent-1", LONG_TTL).await;
    assert!(again.token() > first_token);
    assert_held_by(&store, &k, "agent-1").await;
    again.release().await.unwrap();
    let other = lock(&store, &k, "agent-2", LONG_TTL).await;
    assert_held_by(&store, &k, "agent-2").await;
    other.release().await.unwrap();
}

/// An empty owner or a TTL out of range is `InvalidInput`, and no lock is taken.
pub async fn lock_with_invalid_input_is_rejected(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    for (owner, ttl) in [
        ("", LONG_TTL),
        ("agent-1", Duration::ZERO),
        ("agent-1", swarmstate_core::MAX_TTL + Duration::from_secs(1)),
    ] {
        let err = expect_err(acquire_lock(&store, &k, owner, ttl).await, "acquire");
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{owner:?} {ttl:?}: {err}"
        );
    }
    assert_eq!(store.get(&k).await.unwrap(), None);
    let guard = lock(&store, &k, "agent-1", LONG_TTL).await;
    guard.release().await.unwrap();
}

/// A kept-alive lock outlives its TTL: after two TTLs it is still held, by the same token, and
/// fenced writes still apply; releasing it frees it at once.
pub async fn keep_alive_holds_a_lock_past_its_ttl(store: Arc<dyn StateStore>) {
    let k = key("locks.keepalive");
    let ttl = ttl_unit(&*store) * 3;
    let kept = lock(&store, &k, "agent-1", ttl).await.keep_alive();
    let token = kept.guard().token();
    tokio::time::sleep(ttl * 2).await;
    assert!(
        !kept.is_lost(),
        "a refreshed lock must not be reported lost"
    );
    assert_held_by(&store, &k, "agent-1").await;
    assert_eq!(kept.guard().token(), token, "a refresh keeps the token");
    kept.guard()
        .fenced_put(&key("work.output"), "by agent-1")
        .await
        .unwrap();
    kept.release().await.unwrap();
    let next = lock(&store, &k, "agent-2", LONG_TTL).await;
    assert!(next.token() > token);
}

/// When the lock is taken from under a kept-alive holder, its lost signal fires within one
/// refresh period (a third of the TTL) plus a granularity step, and its release changes
/// nothing for the new holder.
pub async fn keep_alive_signals_the_moment_the_lock_is_lost(store: Arc<dyn StateStore>) {
    let k = key("locks.keepalive");
    let ttl = ttl_unit(&*store) * 3;
    let mut kept = lock(&store, &k, "agent-1", ttl).await.keep_alive();
    // Someone removes the lock behind the holder's back and takes it.
    store
        .delete(&k, None)
        .await
        .unwrap()
        .expect("the lock was there");
    let thief = lock(&store, &k, "agent-2", LONG_TTL).await;
    let deadline = ttl / 3 + granularity(&*store) + Duration::from_secs(2);
    tokio::time::timeout(deadline, kept.lost())
        .await
        .unwrap_or_else(|_| panic!("no lost signal within {deadline:?}"));
    assert!(kept.is_lost());
    let err = expect_err(kept.release().await, "release of a lost lock");
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    assert_held_by(&store, &k, "agent-2").await;
    assert!(thief.token() > FencingToken(swarmstate_core::Revision::FIRST));
}

/// A resource guarded by a `FenceGate` refuses a stalled holder once it has seen its
/// successor's higher token.
pub async fn fence_gate_refuses_a_stale_holder_after_takeover(store: Arc<dyn StateStore>) {
    let k = key("locks.gate");
    let gate = swarmstate_recipes::lock::FenceGate::new();
    let stalled = lock_and_let_expire(&store, &k, "agent-1").await;
    let successor = lock(&store, &k, "agent-2", LONG_TTL).await;
    gate.admit(successor.token()).unwrap();
    let err = gate.admit(stalled.token()).unwrap_err();
    assert_eq!(
        (err.token, err.highest),
        (stalled.token(), successor.token())
    );
    gate.admit(successor.token()).unwrap();
}

/// How long the blocking-acquire cases let a waiter wait: far longer than any hand-over.
const LONG_WAIT: Duration = Duration::from_secs(60);

/// Waits (on a watch, within [`EVENT_TIMEOUT`] per event) until exactly `count` waiters'
/// tickets are queued on lock `k`.
pub(super) async fn wait_for_waiters(store: &Arc<dyn StateStore>, k: &Key, count: usize) {
    let prefix = lock_waiters_prefix(k).unwrap();
    let mut events = store
        .watch(&Pattern::prefix(&prefix), WatchStart::Snapshot)
        .await
        .unwrap();
    let mut present = HashSet::new();
    let mut caught_up = false;
    loop {
        if caught_up && present.len() == count {
            return;
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

/// A queued waiter that dies does not stall those behind it: a ticket nobody refreshes
/// expires and the next waiter moves up; a waiter whose task is aborted removes its ticket at
/// once.
pub async fn dead_waiter_does_not_stall_the_queue(store: Arc<dyn StateStore>) {
    let k = key("locks.deploy");
    let order = Arc::new(Mutex::new(Vec::new()));

    // A waiter that stopped refreshing: a ticket in the documented layout, never refreshed.
    let holder = lock(&store, &k, "holder", LONG_TTL).await;
    // Long enough for the real waiter to queue behind it on a slow machine.
    let ghost_ttl = ttl_unit(&*store) * 3;
    let ghost = Key::new(format!("{}.ghost", lock_waiters_prefix(&k).unwrap())).unwrap();
    store
        .put(
            &ghost,
            "0 ghost".into(),
            PutOptions::create().ttl(ghost_ttl),
        )
        .await
        .unwrap();
    let ghost_written = Instant::now();
    let behind = spawn_waiter(&store, &k, "behind-ghost", order.clone());
    wait_for_waiters(&store, &k, 2).await;
    holder.release().await.unwrap();
    let limit = ghost_ttl + expiry_slack(&*store) + EVENT_TIMEOUT;
    timeout(limit, behind)
        .await
        .unwrap_or_else(|_| panic!("the waiter behind a dead ticket got no lock within {limit:?}"))
        .unwrap();
    assert!(
        ghost_written.elapsed() >= ghost_ttl,
        "the waiter behind the ghost must wait for its ticket to expire"
    );

    // A waiter whose task is aborted while queued.
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
    assert_eq!(*order.lock().unwrap(), ["behind-ghost", "next"]);
    assert_eq!(tickets(&store, &k).await, Vec::<String>::new());
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
