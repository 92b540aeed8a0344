//! Cases for time to live: an entry never disappears before its TTL and is gone within its TTL
//! plus the backend's granularity.
//!
//! Lower bounds ("still there") are asserted only when the read finished before the TTL could
//! have run out, measured from just before the write; otherwise the attempt is repeated with a
//! doubled TTL. Upper bounds ("gone") are asserted after sleeping the TTL plus one granularity
//! step past the moment the write was acknowledged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::support::{
    TIMING_ATTEMPTS, assert_no_event_before_sentinel, assert_put, entry_of, expect_err,
    expiry_slack, granularity, key, list, next_event, next_event_within, sleep_until, ttl_unit,
    ttl_unit_for_attempt, watch,
};
use swarmstate_core::{
    Error, MAX_TTL, MIN_TTL, PutOptions, StateStore, StateStoreExt, TxnOp, WatchEvent, WatchStart,
};

fn too_slow(case: &str, store: &dyn StateStore) -> ! {
    panic!(
        "{case}: in {TIMING_ATTEMPTS} attempts (TTLs up to {:?}) no read finished before the TTL \
         could run out; the machine is too slow to check this",
        ttl_unit_for_attempt(store, TIMING_ATTEMPTS - 1)
    )
}

/// An entry with a TTL is present (reporting its time left) until the TTL runs out, and gone
/// from `get` and `keys` once the TTL plus the granularity has passed.
pub async fn ttl_entry_is_visible_before_its_ttl_and_gone_after(store: Arc<dyn StateStore>) {
    let step = granularity(&*store);
    for attempt in 0..TIMING_ATTEMPTS {
        let ttl = ttl_unit_for_attempt(&*store, attempt);
        let k = key(&format!("cache.result-{attempt}"));
        let started = Instant::now();
        let revision = store
            .put(
                &k,
                Bytes::from_static(b"v"),
                PutOptions::overwrite().ttl(ttl),
            )
            .await
            .unwrap();
        let written = Instant::now();
        let read = store.get(&k).await.unwrap();
        let listed = list(&*store, "cache.*").await;
        if started.elapsed() >= ttl {
            continue;
        }
        let entry = read.unwrap_or_else(|| {
            panic!(
                "an entry with TTL {ttl:?} disappeared within {:?}",
                started.elapsed()
            )
        });
        assert_eq!(entry.revision, revision);
        let left = entry
            .expires_in
            .unwrap_or_else(|| panic!("an entry with a TTL reports the time it has left"));
        assert!(left <= ttl + step, "{left:?} left of a {ttl:?} TTL");
        assert!(
            listed.contains(&k.to_string()),
            "{k} missing from {listed:?}"
        );

        sleep_until(written + ttl + step).await;
        assert_eq!(
            store.get(&k).await.unwrap(),
            None,
            "an entry with TTL {ttl:?} must be gone {step:?} after its TTL"
        );
        assert!(!list(&*store, "cache.*").await.contains(&k.to_string()));
        return;
    }
    too_slow(
        "ttl_entry_is_visible_before_its_ttl_and_gone_after",
        &*store,
    );
}

/// An update or overwrite without a TTL makes a key that had one permanent: it outlives the old
/// TTL, reports no expiry, and no expire event is sent.
pub async fn write_without_ttl_makes_a_key_permanent(store: Arc<dyn StateStore>) {
    let step = granularity(&*store);
    for attempt in 0..TIMING_ATTEMPTS {
        let ttl = ttl_unit_for_attempt(&*store, attempt);
        // A prefix per attempt, so that an earlier attempt's expiry cannot reach this watcher.
        let prefix = format!("sessions-{attempt}");
        let updated = key(&format!("{prefix}.updated"));
        let overwritten = key(&format!("{prefix}.overwritten"));
        let mut events = watch(&*store, &format!("{prefix}.*"), WatchStart::Now).await;
        let started = Instant::now();
        let first = store
            .put(&updated, "t".into(), PutOptions::create().ttl(ttl))
            .await
            .unwrap();
        store
            .put(&overwritten, "t".into(), PutOptions::overwrite().ttl(ttl))
            .await
            .unwrap();
        let made_permanent = store.update(&updated, "permanent", first).await;
        let overwrite = store.set(&overwritten, "permanent").await.unwrap();
        if started.elapsed() >= ttl {
            continue;
        }
        let update = made_permanent.unwrap_or_else(|err| panic!("update before the TTL: {err}"));
        let written = Instant::now();
        // Well past the old deadline, and past when a store's expiry process would act on it.
        sleep_until(written + ttl + step * 2 + Duration::from_millis(50)).await;
        for (k, revision) in [(&updated, update), (&overwritten, overwrite)] {
            let entry = entry_of(&*store, k).await;
            assert_eq!(&entry.value[..], b"permanent", "{k}");
            assert_eq!(entry.revision, revision, "{k}");
            assert_eq!(entry.expires_in, None, "{k} was made permanent");
        }
        for _ in 0..4 {
            let event = next_event(&mut events).await;
            assert!(matches!(event, WatchEvent::Put(_)), "{event:?}");
        }
        let sentinel = key(&format!("{prefix}.sentinel"));
        assert_no_event_before_sentinel(&*store, &mut events, &sentinel).await;
        return;
    }
    too_slow("write_without_ttl_makes_a_key_permanent", &*store);
}

/// A refresh (an update at the current revision carrying a new TTL) extends the entry's life
/// past its first TTL; it is gone once the new TTL has run out.
pub async fn refresh_with_a_new_ttl_extends_life(store: Arc<dyn StateStore>) {
    let step = granularity(&*store);
    for attempt in 0..TIMING_ATTEMPTS {
        let unit = ttl_unit_for_attempt(&*store, attempt);
        let ttl = unit * 2;
        let k = key(&format!("leases.worker-{attempt}"));
        let started = Instant::now();
        let first = store
            .put(&k, "held".into(), PutOptions::create().ttl(ttl))
            .await
            .unwrap();
        let written = Instant::now();
        // Refresh late enough that the new deadline lies beyond the old one plus a step.
        sleep_until(started + unit * 3 / 2).await;
        let refresh_started = Instant::now();
        let refresh = store
            .put(&k, "renewed".into(), PutOptions::update(first).ttl(ttl))
            .await;
        let refreshed = Instant::now();
        let renewed = match refresh {
            Ok(revision) => revision,
            Err(_) if started.elapsed() >= ttl => continue,
            Err(err) => panic!("refresh before the TTL ran out: {err}"),
        };
        assert!(renewed > first);

        sleep_until(written + ttl + step).await;
        let read = store.get(&k).await.unwrap();
        if refresh_started.elapsed() >= ttl {
            continue;
        }
        let entry = read.unwrap_or_else(|| panic!("a refreshed entry must outlive its first TTL"));
        assert_eq!(&entry.value[..], b"renewed");
        assert_eq!(entry.revision, renewed);

        sleep_until(refreshed + ttl + step).await;
        assert_eq!(
            store.get(&k).await.unwrap(),
            None,
            "gone once the refreshed TTL ran out"
        );
        return;
    }
    too_slow("refresh_with_a_new_ttl_extends_life", &*store);
}

/// When a TTL runs out, watchers get an `Expire` event with its own, higher revision, not
/// before the TTL; the key is then absent and later writes get higher revisions still.
pub async fn expiry_emits_an_expire_event_to_watchers(store: Arc<dyn StateStore>) {
    let ttl = ttl_unit(&*store);
    let k = key("cache.hot");
    let mut events = watch(&*store, "cache.*", WatchStart::Now).await;
    let started = Instant::now();
    let written = store
        .put(&k, "v".into(), PutOptions::overwrite().ttl(ttl))
        .await
        .unwrap();
    assert_put(&next_event(&mut events).await, &k, b"v", written);
    let event = next_event_within(&mut events, ttl + expiry_slack(&*store)).await;
    let arrived = Instant::now();
    let expired = match &event {
        WatchEvent::Expire { key: at, revision } if *at == k => *revision,
        other => panic!("expected the expiry of {k}, got {other:?}"),
    };
    assert!(expired > written, "{expired:?} after {written:?}");
    assert!(
        arrived >= started + ttl,
        "the expiry arrived {:?} after the write, before its TTL of {ttl:?}",
        arrived - started
    );
    assert_eq!(store.get(&k).await.unwrap(), None);
    let later = store.set(&key("cache.other"), "x").await.unwrap();
    assert!(later > expired, "{later:?} after the expiry at {expired:?}");
}

/// An expired key counts as absent: create succeeds, without the old TTL.
pub async fn create_after_expiry_succeeds(store: Arc<dyn StateStore>) {
    let ttl = ttl_unit(&*store);
    let step = granularity(&*store);
    let k = key("claims.item-9");
    let first = store
        .put(&k, "worker-1".into(), PutOptions::create().ttl(ttl))
        .await
        .unwrap();
    let written = Instant::now();
    sleep_until(written + ttl + step).await;
    let second = store.create(&k, "worker-2").await.unwrap();
    assert!(second > first, "{second:?} after {first:?}");
    let entry = entry_of(&*store, &k).await;
    assert_eq!(&entry.value[..], b"worker-2");
    assert_eq!(entry.revision, second);
    assert_eq!(entry.expires_in, None);
}

/// An update at the revision of an entry that has expired conflicts with `actual: None`.
pub async fn update_at_the_revision_of_an_expired_entry_conflicts(store: Arc<dyn StateStore>) {
    let ttl = ttl_unit(&*store);
    let step = granularity(&*store);
    let k = key("leases.worker-1");
    let first = store
        .put(&k, "held".into(), PutOptions::create().ttl(ttl))
        .await
        .unwrap();
    let written = Instant::now();
    sleep_until(written + ttl + step).await;
    let err = expect_err(store.update(&k, "late", first).await, "late update");
    assert!(
        matches!(&err, Error::RevisionMismatch { key: at, expected, actual: None }
            if *at == k && *expected == first),
        "{err}"
    );
    assert_eq!(store.get(&k).await.unwrap(), None);
}

/// `keys` lists neither deleted nor expired keys, under any pattern.
pub async fn keys_excludes_deleted_and_expired_keys(store: Arc<dyn StateStore>) {
    let ttl = ttl_unit(&*store);
    let step = granularity(&*store);
    for name in ["jobs.a", "jobs.b", "jobs.d"] {
        store.set(&key(name), "x").await.unwrap();
    }
    store
        .put(&key("jobs.c"), "x".into(), PutOptions::overwrite().ttl(ttl))
        .await
        .unwrap();
    let written = Instant::now();
    store.delete(&key("jobs.b"), None).await.unwrap();
    assert!(!list(&*store, "*").await.contains(&"jobs.b".to_owned()));
    sleep_until(written + ttl + step).await;
    assert_eq!(list(&*store, "*").await, vec!["jobs.a", "jobs.d"]);
    assert_eq!(list(&*store, "jobs.*").await, vec!["jobs.a", "jobs.d"]);
    assert_eq!(list(&*store, "jobs.b").await, Vec::<String>::new());
    assert_eq!(list(&*store, "jobs.c").await, Vec::<String>::new());
}

/// Asserts that every kind of write with `ttl` is `InvalidInput` and writes nothing.
async fn assert_ttl_rejected(store: &dyn StateStore, ttl: Duration) {
    let existing = key("config.existing");
    let current = store.set(&existing, "kept").await.unwrap();
    let mut events = watch(store, "*", WatchStart::Now).await;
    let fresh = key("config.fresh");
    for (k, options) in [
        (&fresh, PutOptions::overwrite().ttl(ttl)),
        (&fresh, PutOptions::create().ttl(ttl)),
        (&existing, PutOptions::overwrite().ttl(ttl)),
        (&existing, PutOptions::update(current).ttl(ttl)),
    ] {
        let err = expect_err(store.put(k, "x".into(), options.clone()).await, "put");
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{options:?}: {err}"
        );
    }
    let ops = vec![
        TxnOp::put(&key("config.other"), "x"),
        TxnOp::put(&fresh, "x").ttl(ttl),
    ];
    let err = expect_err(store.txn(ops).await, "txn");
    assert!(matches!(err, Error::InvalidInput { .. }), "txn: {err}");

    assert_eq!(store.get(&fresh).await.unwrap(), None);
    assert_eq!(store.get(&key("config.other")).await.unwrap(), None);
    let entry = entry_of(store, &existing).await;
    assert_eq!((&entry.value[..], entry.revision), (&b"kept"[..], current));
    assert_eq!(entry.expires_in, None);
    assert_no_event_before_sentinel(store, &mut events, &key("sentinel")).await;
}

/// A TTL of zero is `InvalidInput` on every kind of write, and nothing is written.
pub async fn ttl_of_zero_is_rejected_and_nothing_is_written(store: Arc<dyn StateStore>) {
    assert_ttl_rejected(&*store, Duration::ZERO).await;
}

/// A TTL above `MAX_TTL` is `InvalidInput` on every kind of write, and nothing is written.
pub async fn ttl_above_the_maximum_is_rejected_and_nothing_is_written(store: Arc<dyn StateStore>) {
    assert_ttl_rejected(&*store, MAX_TTL + Duration::from_secs(1)).await;
    assert_ttl_rejected(&*store, Duration::MAX).await;
}

/// `MIN_TTL` and `MAX_TTL` themselves are accepted; an entry with `MAX_TTL` is present and
/// reports its time left.
pub async fn ttl_at_the_bounds_is_accepted(store: Arc<dyn StateStore>) {
    let step = granularity(&*store);
    let longest = key("cache.longest");
    let revision = store
        .put(&longest, "x".into(), PutOptions::overwrite().ttl(MAX_TTL))
        .await
        .unwrap();
    let entry = entry_of(&*store, &longest).await;
    assert_eq!(entry.revision, revision);
    let left = entry
        .expires_in
        .expect("an entry with a TTL reports its time left");
    assert!(left <= MAX_TTL + step, "{left:?}");
    assert!(left > MAX_TTL / 2, "{left:?} left of {MAX_TTL:?}");

    store
        .put(
            &key("cache.shortest"),
            "x".into(),
            PutOptions::overwrite().ttl(MIN_TTL),
        )
        .await
        .unwrap();
    let ops = vec![TxnOp::put(&key("cache.txn"), "x").ttl(MAX_TTL)];
    store.txn(ops).await.unwrap();
    assert!(store.get(&key("cache.txn")).await.unwrap().is_some());
}
