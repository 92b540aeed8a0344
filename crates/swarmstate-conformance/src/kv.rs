//! Cases for reads, plain and conditional writes, values and the store's lifecycle.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use super::support::{
    assert_entry, assert_no_event_before_sentinel, assert_put, drain_to_end, entry_of, expect_err,
    key, list, next_event, pattern, watch,
};
use swarmstate_core::{
    Condition, Error, PutOptions, Revision, StateStore, StateStoreExt, TxnOp, WatchEvent,
    WatchStart,
};
use swarmstate_recipes::lock::acquire_lock;

/// `get` of a key that was never written is `None`, and a store starts empty.
pub async fn get_of_a_missing_key_is_none(store: Arc<dyn StateStore>) {
    assert_eq!(store.get(&key("never.written")).await.unwrap(), None);
    assert_eq!(list(&*store, "*").await, Vec::<String>::new());
}

/// A put returns its revision; `get` returns the value at that revision, without a TTL.
pub async fn put_then_get_returns_the_value_and_its_revision(store: Arc<dyn StateStore>) {
    let k = key("config.agent-pool.timeout");
    let revision = store
        .put(&k, Bytes::from_static(b"30s"), PutOptions::overwrite())
        .await
        .unwrap();
    let entry = entry_of(&*store, &k).await;
    assert_eq!(entry.key, k);
    assert_eq!(&entry.value[..], b"30s");
    assert_eq!(entry.revision, revision);
    assert_eq!(entry.expires_in, None, "a write without TTL has no expiry");
}

/// Overwriting a key gives it a higher revision and the new value.
pub async fn overwrite_gives_a_higher_revision(store: Arc<dyn StateStore>) {
    let k = key("config.mode");
    let first = store.set(&k, "a").await.unwrap();
    let second = store.set(&k, "b").await.unwrap();
    assert!(second > first, "{second:?} after {first:?}");
    assert_entry(&*store, &k, b"b", second).await;
}

/// Every change (put, delete, on any key) gets a revision greater than every earlier one,
/// and 0 is never a revision.
pub async fn revisions_strictly_increase_across_keys_and_are_never_zero(
    store: Arc<dyn StateStore>,
) {
    let mut seen: Vec<Revision> = Vec::new();
    for round in 0..5 {
        for name in ["a", "b.c", "d.e.f"] {
            let k = key(name);
            seen.push(store.set(&k, format!("{round}")).await.unwrap());
            if round % 2 == 1 {
                let deleted = store.delete(&k, None).await.unwrap();
                seen.push(deleted.expect("the key was present"));
            }
        }
    }
    for revision in &seen {
        assert!(revision.get() > 0, "0 is never a revision");
    }
    for pair in seen.windows(2) {
        assert!(pair[0] < pair[1], "revisions out of order: {seen:?}");
    }
}

/// `current_revision` lies between what was acknowledged before it and what is written after
/// it: at least the revision of every change acknowledged before the call (whatever the key:
/// a put, a delete), and below the revision of every change made after it returned. (A
/// backend whose own bookkeeping takes revisions, as NATS's read barriers do, may name one of
/// those, so the case does not require it to equal the last change's.)
pub async fn current_revision_is_the_last_change(store: Arc<dyn StateStore>) {
    let before = store.current_revision().await.unwrap();
    let a = key("rev.a");
    let put = store.set(&a, "1").await.unwrap();
    assert!(
        before.is_none_or(|before| before < put),
        "{before:?} then {put:?}"
    );
    let after_put = store.current_revision().await.unwrap().expect("written");
    assert!(after_put >= put, "{after_put:?} after a put at {put:?}");
    let other = store.set(&key("rev.b"), "2").await.unwrap();
    assert!(other > after_put, "a put at {other:?} after {after_put:?}");
    expect_err(store.create(&a, "again").await, "a create of a present key");
    let after_refusal = store.current_revision().await.unwrap().expect("written");
    assert!(after_refusal >= other);
    let deleted = store
        .delete(&a, None)
        .await
        .unwrap()
        .expect("a was present");
    assert!(deleted > after_refusal);
    let last = store.current_revision().await.unwrap().expect("written");
    assert!(last >= deleted, "{last:?} after a delete at {deleted:?}");
}

/// A delete returns a higher revision and the key is gone from `get` and `keys`.
pub async fn delete_removes_the_key(store: Arc<dyn StateStore>) {
    let k = key("jobs.17");
    let written = store.set(&k, "claimed").await.unwrap();
    let deleted = store.delete(&k, None).await.unwrap();
    assert!(
        deleted.is_some_and(|deleted| deleted > written),
        "delete of a present key returns a higher revision, got {deleted:?} after {written:?}"
    );
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert_eq!(list(&*store, "*").await, Vec::<String>::new());
}

/// An unconditional delete of an absent key (never written, or already deleted) returns
/// `None`, changes nothing and emits no event.
pub async fn delete_of_a_missing_key_returns_none_and_emits_no_event(store: Arc<dyn StateStore>) {
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    let k = key("jobs.missing");
    assert_eq!(store.delete(&k, None).await.unwrap(), None);
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel.one")).await;

    let written = store.set(&k, "x").await.unwrap();
    let deleted = store.delete(&k, None).await.unwrap().expect("present");
    assert_put(&next_event(&mut events).await, &k, b"x", written);
    assert_eq!(
        next_event(&mut events).await,
        WatchEvent::Delete {
            key: k.clone(),
            revision: deleted
        }
    );
    assert_eq!(store.delete(&k, None).await.unwrap(), None, "second delete");
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel.two")).await;
}

/// A delete conditioned on the key's current revision applies.
pub async fn delete_at_the_current_revision_succeeds(store: Arc<dyn StateStore>) {
    let k = key("leases.worker-3");
    store.set(&k, "1").await.unwrap();
    let current = store.set(&k, "2").await.unwrap();
    let deleted = store.delete(&k, Some(current)).await.unwrap();
    assert!(
        deleted.is_some_and(|deleted| deleted > current),
        "{deleted:?} after {current:?}"
    );
    assert_eq!(store.get(&k).await.unwrap(), None);
}

/// A delete conditioned on an old revision fails with `RevisionMismatch` (expected and actual)
/// and the value stays.
pub async fn delete_at_a_stale_revision_conflicts_and_keeps_the_value(store: Arc<dyn StateStore>) {
    let k = key("leases.worker-3");
    let stale = store.set(&k, "1").await.unwrap();
    let current = store.set(&k, "2").await.unwrap();
    let err = expect_err(store.delete(&k, Some(stale)).await, "stale delete");
    assert!(
        matches!(&err, Error::RevisionMismatch { key: at, expected, actual }
            if *at == k && *expected == stale && *actual == Some(current)),
        "{err}"
    );
    assert!(err.is_conflict(), "{err}");
    assert_entry(&*store, &k, b"2", current).await;
}

/// A conditional delete of an absent key fails with `RevisionMismatch { actual: None }`.
pub async fn conditional_delete_of_a_missing_key_conflicts(store: Arc<dyn StateStore>) {
    let other = store.set(&key("other"), "x").await.unwrap();
    let k = key("missing");
    let err = expect_err(store.delete(&k, Some(other)).await, "conditional delete");
    assert!(
        matches!(&err, Error::RevisionMismatch { key: at, expected, actual: None }
            if *at == k && *expected == other),
        "{err}"
    );
    assert_eq!(store.get(&k).await.unwrap(), None);
}

/// Create on an absent key writes it.
pub async fn create_on_an_absent_key_succeeds(store: Arc<dyn StateStore>) {
    let k = key("claims.item-1");
    let revision = store.create(&k, "worker-1").await.unwrap();
    assert_entry(&*store, &k, b"worker-1", revision).await;
}

/// Create on a present key fails with `AlreadyExists` naming the present revision, and
/// changes nothing.
pub async fn create_on_an_existing_key_is_already_exists(store: Arc<dyn StateStore>) {
    let k = key("claims.item-1");
    let first = store.create(&k, "worker-1").await.unwrap();
    let err = expect_err(store.create(&k, "worker-2").await, "second create");
    assert!(
        matches!(&err, Error::AlreadyExists { key: at, revision } if *at == k && *revision == first),
        "{err}"
    );
    assert!(err.is_conflict(), "{err}");
    assert_entry(&*store, &k, b"worker-1", first).await;
}

/// A deleted key counts as absent: create succeeds again, at a higher revision.
pub async fn create_after_delete_succeeds(store: Arc<dyn StateStore>) {
    let k = key("claims.item-1");
    store.create(&k, "worker-1").await.unwrap();
    let deleted = store.delete(&k, None).await.unwrap().expect("present");
    let recreated = store.create(&k, "worker-2").await.unwrap();
    assert!(recreated > deleted, "{recreated:?} after {deleted:?}");
    assert_entry(&*store, &k, b"worker-2", recreated).await;
}

/// An update at the key's current revision applies, and can be chained.
pub async fn update_at_the_current_revision_succeeds(store: Arc<dyn StateStore>) {
    let k = key("config.replicas");
    let first = store.create(&k, "1").await.unwrap();
    let second = store.update(&k, "2", first).await.unwrap();
    let third = store.update(&k, "3", second).await.unwrap();
    assert!(
        first < second && second < third,
        "{first:?} {second:?} {third:?}"
    );
    assert_entry(&*store, &k, b"3", third).await;
}

/// An update at an old revision fails with `RevisionMismatch` carrying expected and actual,
/// and the value stays.
pub async fn update_with_a_stale_revision_conflicts(store: Arc<dyn StateStore>) {
    let k = key("config.replicas");
    let stale = store.set(&k, "1").await.unwrap();
    let current = store.update(&k, "2", stale).await.unwrap();
    let err = expect_err(store.update(&k, "3", stale).await, "stale update");
    assert!(
        matches!(&err, Error::RevisionMismatch { key: at, expected, actual }
            if *at == k && *expected == stale && *actual == Some(current)),
        "{err}"
    );
    assert!(err.is_conflict(), "{err}");
    assert_entry(&*store, &k, b"2", current).await;
}

/// An update of a key that was never written fails with `RevisionMismatch { actual: None }`
/// and does not create it.
pub async fn update_of_a_missing_key_conflicts(store: Arc<dyn StateStore>) {
    let some_revision = store.set(&key("other"), "x").await.unwrap();
    let k = key("config.replicas");
    let err = expect_err(store.update(&k, "1", some_revision).await, "update");
    assert!(
        matches!(&err, Error::RevisionMismatch { key: at, expected, actual: None }
            if *at == k && *expected == some_revision),
        "{err}"
    );
    assert_eq!(store.get(&k).await.unwrap(), None);
}

/// An update at the revision a key had before it was deleted conflicts; the key stays absent.
pub async fn update_of_a_deleted_key_conflicts(store: Arc<dyn StateStore>) {
    let k = key("config.replicas");
    let written = store.set(&k, "1").await.unwrap();
    store.delete(&k, None).await.unwrap();
    let err = expect_err(store.update(&k, "2", written).await, "update");
    assert!(
        matches!(&err, Error::RevisionMismatch { key: at, expected, actual: None }
            if *at == k && *expected == written),
        "{err}"
    );
    assert_eq!(store.get(&k).await.unwrap(), None);
}

/// Failed conditional writes (stale update, create over a present key, stale delete, stale
/// txn) change neither value nor revision and emit no event.
pub async fn failed_conditional_writes_change_nothing(store: Arc<dyn StateStore>) {
    let k = key("config.replicas");
    let stale = store.set(&k, "1").await.unwrap();
    let current = store.set(&k, "2").await.unwrap();
    let mut events = watch(&*store, "*", WatchStart::Now).await;

    let err = expect_err(store.update(&k, "3", stale).await, "stale update");
    assert!(matches!(err, Error::RevisionMismatch { .. }), "{err}");
    let err = expect_err(store.create(&k, "3").await, "create");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let err = expect_err(store.delete(&k, Some(stale)).await, "stale delete");
    assert!(matches!(err, Error::RevisionMismatch { .. }), "{err}");
    let ops = vec![TxnOp::put(&k, "3").when(Condition::At(stale))];
    let err = expect_err(store.txn(ops).await, "stale txn");
    assert!(matches!(err, Error::RevisionMismatch { .. }), "{err}");

    assert_entry(&*store, &k, b"2", current).await;
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel")).await;
    assert_entry(&*store, &k, b"2", current).await;
}

/// The lost-update race: 8 workers each do 25 compare-and-set increments of one counter (read,
/// then update at the read revision, retrying on conflict). No increment is lost.
pub async fn concurrent_compare_and_set_increments_lose_no_update(store: Arc<dyn StateStore>) {
    const WORKERS: u64 = 8;
    const INCREMENTS: u64 = 25;
    let counter = key("stats.counter");
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let store = store.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut applied = Vec::new();
                for _ in 0..INCREMENTS {
                    loop {
                        let current = store.get(&counter).await.unwrap();
                        let (n, options) = match &current {
                            Some(entry) => (
                                parse_counter(&entry.value),
                                PutOptions::update(entry.revision),
                            ),
                            None => (0, PutOptions::create()),
                        };
                        let next = Bytes::from((n + 1).to_string());
                        // Let other workers run between the read and the write, so that an
                        // in-process store sees the race as often as a networked one.
                        tokio::task::yield_now().await;
                        match store.put(&counter, next, options).await {
                            Ok(revision) => {
                                applied.push(revision);
                                break;
                            }
                            Err(err) if err.is_conflict() => continue,
                            Err(err) => panic!("increment failed: {err}"),
                        }
                    }
                }
                applied
            })
        })
        .collect();
    let mut applied = HashSet::new();
    for worker in workers {
        for revision in worker.await.expect("worker panicked") {
            assert!(applied.insert(revision), "two writes reported {revision:?}");
        }
    }
    let entry = entry_of(&*store, &counter).await;
    assert_eq!(
        parse_counter(&entry.value),
        WORKERS * INCREMENTS,
        "increments were lost"
    );
    assert_eq!(applied.len() as u64, WORKERS * INCREMENTS);
    assert_eq!(Some(&entry.revision), applied.iter().max());
}

fn parse_counter(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("counter holds {value:?}, not a number"))
}

/// Eight concurrent creates of one key: exactly one wins, every other gets `AlreadyExists`
/// naming the winner's revision, and the winner's value is stored.
pub async fn concurrent_creates_have_exactly_one_winner(store: Arc<dyn StateStore>) {
    let k = key("election.leader");
    let contenders: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let k = k.clone();
            tokio::spawn(async move { (i, store.create(&k, format!("agent-{i}")).await) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for contender in contenders {
        match contender.await.expect("contender panicked") {
            (i, Ok(revision)) => winners.push((i, revision)),
            (_, Err(err)) => losers.push(err),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    let (winner, revision) = winners[0];
    for err in &losers {
        assert!(
            matches!(err, Error::AlreadyExists { revision: theirs, .. } if *theirs == revision),
            "{err}"
        );
    }
    assert_entry(&*store, &k, format!("agent-{winner}").as_bytes(), revision).await;
}

/// A value of exactly the store's `max_value_size` is accepted and read back whole.
pub async fn value_at_the_size_limit_is_accepted(store: Arc<dyn StateStore>) {
    let limit = store.capabilities().max_value_size;
    let value: Bytes = (0..limit)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let k = key("blobs.largest");
    let revision = store
        .put(&k, value.clone(), PutOptions::overwrite())
        .await
        .unwrap();
    let entry = entry_of(&*store, &k).await;
    assert_eq!(entry.revision, revision);
    assert_eq!(entry.value.len(), limit);
    assert!(entry.value == value, "the largest value came back changed");
}

/// A value one byte over the limit is `ValueTooLarge` (with size and limit), whether the key
/// exists or not, and nothing is written.
pub async fn value_over_the_size_limit_is_rejected_and_nothing_is_written(
    store: Arc<dyn StateStore>,
) {
    let limit = store.capabilities().max_value_size;
    let existing = key("blobs.existing");
    let current = store.set(&existing, "small").await.unwrap();
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    let too_large = Bytes::from(vec![7u8; limit + 1]);
    for (k, options) in [
        (existing.clone(), PutOptions::overwrite()),
        (existing.clone(), PutOptions::update(current)),
        (key("blobs.new"), PutOptions::overwrite()),
        (key("blobs.new"), PutOptions::create()),
    ] {
        let err = expect_err(
            store.put(&k, too_large.clone(), options.clone()).await,
            "oversized put",
        );
        assert!(
            matches!(&err, Error::ValueTooLarge { key: at, size, limit: reported }
                if *at == k && *size == limit + 1 && *reported == limit),
            "{options:?}: {err}"
        );
    }
    assert_entry(&*store, &existing, b"small", current).await;
    assert_eq!(store.get(&key("blobs.new")).await.unwrap(), None);
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel")).await;
}

/// An empty value is a value: the key is present with zero bytes.
pub async fn empty_value_is_allowed(store: Arc<dyn StateStore>) {
    let k = key("flags.empty");
    let created = store.create(&k, Bytes::new()).await.unwrap();
    assert_entry(&*store, &k, b"", created).await;
    let updated = store.update(&k, "x", created).await.unwrap();
    let emptied = store.update(&k, Bytes::new(), updated).await.unwrap();
    assert_entry(&*store, &k, b"", emptied).await;
    assert_eq!(list(&*store, "flags.*").await, vec!["flags.empty"]);
}

/// Values are opaque bytes: every byte value, and text that is not UTF-8, comes back unchanged.
pub async fn binary_values_round_trip_byte_for_byte(store: Arc<dyn StateStore>) {
    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let not_utf8 = vec![0xff, 0xfe, 0x00, 0xc3, 0x28, b'\r', b'\n', 0x80];
    for (name, value) in [("blobs.bytes", every_byte), ("blobs.not-utf8", not_utf8)] {
        let k = key(name);
        let revision = store.set(&k, value.clone()).await.unwrap();
        assert_entry(&*store, &k, &value, revision).await;
    }
}

/// `close` ends every watch stream (after any events it had buffered), whatever its start.
pub async fn close_ends_watch_streams(store: Arc<dyn StateStore>) {
    let k = key("config.mode");
    let first = store.set(&k, "a").await.unwrap();
    let mut streams = vec![
        watch(&*store, "*", WatchStart::Now).await,
        watch(&*store, "config.*", WatchStart::Snapshot).await,
        watch(&*store, "config.mode", WatchStart::FromRevision(first)).await,
        watch(&*store, "elsewhere.*", WatchStart::Now).await,
    ];
    store.set(&k, "b").await.unwrap();
    store.close().await.unwrap();
    for stream in &mut streams {
        let events = drain_to_end(stream).await;
        assert!(
            events
                .iter()
                .all(|event| !matches!(event, WatchEvent::Lagged { .. })),
            "close is not a lag: {events:?}"
        );
    }
}

/// After `close`, every operation fails with `Closed`; closing again is fine.
pub async fn calls_after_close_fail_with_closed(store: Arc<dyn StateStore>) {
    let k = key("config.mode");
    let revision = store.set(&k, "a").await.unwrap();
    store.close().await.unwrap();

    let err = expect_err(store.get(&k).await, "get after close");
    assert!(matches!(err, Error::Closed), "get: {err}");
    let err = expect_err(store.set(&k, "b").await, "put after close");
    assert!(matches!(err, Error::Closed), "put: {err}");
    let err = expect_err(store.create(&key("new"), "b").await, "create after close");
    assert!(matches!(err, Error::Closed), "create: {err}");
    let err = expect_err(store.update(&k, "b", revision).await, "update after close");
    assert!(matches!(err, Error::Closed), "update: {err}");
    let err = expect_err(store.delete(&k, None).await, "delete after close");
    assert!(matches!(err, Error::Closed), "delete: {err}");
    let err = expect_err(store.keys(&pattern("*")).await, "keys after close");
    assert!(matches!(err, Error::Closed), "keys: {err}");
    let err = expect_err(
        store.watch(&pattern("*"), WatchStart::Now).await,
        "watch after close",
    );
    assert!(matches!(err, Error::Closed), "watch: {err}");
    let err = expect_err(
        store.txn(vec![TxnOp::put(&k, "b")]).await,
        "txn after close",
    );
    assert!(matches!(err, Error::Closed), "txn: {err}");
    let err = expect_err(
        acquire_lock(
            &store,
            &key("locks.x"),
            "me",
            std::time::Duration::from_secs(5),
        )
        .await,
        "lock after close",
    );
    assert!(matches!(err, Error::Closed), "lock: {err}");
    store.close().await.unwrap();
}
