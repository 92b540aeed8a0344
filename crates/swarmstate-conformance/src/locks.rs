//! Cases for locks with fencing tokens, through [`acquire_lock`] and [`LockGuard`]:
//! contention, expiry and takeover, refresh, release, fenced writes, strictly increasing
//! tokens, keep-alive and the fence gate. The blocking acquire is in `lock_wait.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::support::{
    Renewals, TIMING_ATTEMPTS, assert_entry, entry_of, expect_err, granularity, keep_alive_ttl,
    key, sleep_until, too_slow, ttl_unit,
};
use swarmstate_core::{Error, Key, Result, StateStore, StateStoreExt, TxnOp, TxnResult};
use swarmstate_recipes::lock::{FencingToken, LockGuard, acquire_lock};

/// A TTL no case waits out.
pub(super) const LONG_TTL: Duration = Duration::from_secs(30);

pub(super) async fn lock(
    store: &Arc<dyn StateStore>,
    k: &Key,
    owner: &str,
    ttl: Duration,
) -> LockGuard {
    acquire_lock(store, k, owner, ttl)
        .await
        .unwrap_or_else(|err| panic!("{owner} acquiring {k}: {err}"))
}

/// Acquires with the shortest TTL the store keeps exactly and returns when that lock has surely
/// expired.
pub(super) async fn lock_and_let_expire(
    store: &Arc<dyn StateStore>,
    k: &Key,
    owner: &str,
) -> LockGuard {
    let ttl = ttl_unit(&**store);
    let guard = lock(store, k, owner, ttl).await;
    let acquired = Instant::now();
    sleep_until(acquired + ttl + granularity(&**store)).await;
    guard
}

/// Asserts that acquiring `k` fails with `LockHeld` naming `holder`.
pub(super) async fn assert_held_by(store: &Arc<dyn StateStore>, k: &Key, holder: &str) {
    assert_refused_as_held(
        acquire_lock(store, k, "intruder", LONG_TTL).await,
        k,
        holder,
    );
}

/// Asserts that `acquired`, an intruder's acquire of lock `k`, failed with `LockHeld` naming
/// `holder`.
fn assert_refused_as_held(acquired: Result<LockGuard>, k: &Key, holder: &str) {
    let err = expect_err(acquired, "acquire");
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
///
/// The refreshes are the keep-alive's, so the store is wrapped to note when each was sent (a
/// successful refresh proves the lease held until it was sent). The checks are judged only if
/// the release finished within a TTL of the last refresh sent; a machine that stalled the
/// refreshes longer repeats the attempt with a doubled TTL, on a lock of its own.
pub async fn keep_alive_holds_a_lock_past_its_ttl(store: Arc<dyn StateStore>) {
    for attempt in 0..TIMING_ATTEMPTS {
        let ttl = keep_alive_ttl(&*store, attempt);
        let k = key(&format!("locks.keepalive-{attempt}"));
        let renewals = Renewals::new(&store, &k);
        let timed: Arc<dyn StateStore> = renewals.clone();
        let kept = lock(&timed, &k, "agent-1", ttl).await.keep_alive();
        let token = kept.guard().token();
        tokio::time::sleep(ttl * 2).await;
        let lost = kept.is_lost();
        let intruder = acquire_lock(&store, &k, "intruder", LONG_TTL).await;
        let kept_token = kept.guard().token();
        let written = kept
            .guard()
            .fenced_put(&key(&format!("work.output-{attempt}")), "by agent-1")
            .await;
        let released = kept.release().await;
        if renewals.last_sent().elapsed() >= ttl {
            continue;
        }
        assert!(!lost, "a refreshed lock must not be reported lost");
        assert_refused_as_held(intruder, &k, "agent-1");
        assert_eq!(kept_token, token, "a refresh keeps the token");
        written.unwrap_or_else(|err| panic!("fenced put while kept alive: {err}"));
        released.unwrap_or_else(|err| panic!("release of a kept-alive lock: {err}"));
        let next = lock(&store, &k, "agent-2", LONG_TTL).await;
        assert!(next.token() > token);
        return;
    }
    too_slow(
        "keep_alive_holds_a_lock_past_its_ttl",
        "the release never came within a TTL of the keep-alive's last refresh (or the \
         keep-alive does not refresh every third of its TTL)",
        keep_alive_ttl(&*store, TIMING_ATTEMPTS - 1),
    );
}

/// When the lock is taken from under a kept-alive holder, its lost signal fires within one
/// refresh period (a third of the TTL) plus a granularity step, and its release changes
/// nothing for the new holder.
///
/// The lock is removed right after it was taken, so it must be found unless a TTL has passed
/// since its acquisition began; a machine that stalled that long repeats the attempt with a
/// doubled TTL, on a lock of its own.
pub async fn keep_alive_signals_the_moment_the_lock_is_lost(store: Arc<dyn StateStore>) {
    for attempt in 0..TIMING_ATTEMPTS {
        let ttl = keep_alive_ttl(&*store, attempt);
        let k = key(&format!("locks.keepalive-{attempt}"));
        let started = Instant::now();
        let mut kept = lock(&store, &k, "agent-1", ttl).await.keep_alive();
        // Someone removes the lock behind the holder's back and takes it.
        let removed = store.delete(&k, None).await.unwrap();
        if removed.is_none() && started.elapsed() >= ttl {
            continue;
        }
        removed.expect("the lock was there within its TTL");
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
        return;
    }
    too_slow(
        "keep_alive_signals_the_moment_the_lock_is_lost",
        "the lock was never removed within a TTL of its acquisition",
        keep_alive_ttl(&*store, TIMING_ATTEMPTS - 1),
    );
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
