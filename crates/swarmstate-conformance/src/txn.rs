//! Cases for transactions (all-or-nothing, events together and in order) and idempotent
//! retries.

use std::sync::Arc;

use super::support::{
    assert_entry, assert_no_event_before_sentinel, assert_put, collect_events, expect_err, key,
    next_event, revisions, watch,
};
use swarmstate_core::{
    Condition, Error, PutOptions, Revision, StateStore, StateStoreExt, TxnOp, TxnResult,
    WatchEvent, WatchStart,
};

/// The revision of a put result.
fn put_revision(result: &TxnResult) -> Revision {
    match result {
        TxnResult::Put(revision) => *revision,
        other => panic!("expected a put result, got {other:?}"),
    }
}

/// A transaction applies every write; each gets its own revision, consecutive in the order
/// given, after every earlier change.
pub async fn txn_applies_every_write_with_consecutive_revisions(store: Arc<dyn StateStore>) {
    let (a, b, c) = (key("deploy.a"), key("deploy.b"), key("deploy.c"));
    let before = store.set(&c, "old").await.unwrap();
    let results = store
        .txn(vec![
            TxnOp::put(&a, "1"),
            TxnOp::put(&b, "2"),
            TxnOp::delete(&c),
        ])
        .await
        .unwrap();
    let [
        TxnResult::Put(ra),
        TxnResult::Put(rb),
        TxnResult::Deleted(rc),
    ] = results[..]
    else {
        panic!("expected [Put, Put, Deleted], got {results:?}");
    };
    assert!(ra > before, "{ra:?} after {before:?}");
    assert_eq!(
        [rb.get(), rc.get()],
        [ra.get() + 1, ra.get() + 2],
        "a transaction's revisions are consecutive in the order given: {results:?}"
    );
    assert_entry(&*store, &a, b"1", ra).await;
    assert_entry(&*store, &b, b"2", rb).await;
    assert_eq!(store.get(&c).await.unwrap(), None);
}

/// One stale condition among several good ones fails the whole transaction with
/// `RevisionMismatch` naming that key; nothing is written and no event is sent.
pub async fn txn_with_one_stale_condition_applies_nothing(store: Arc<dyn StateStore>) {
    let (a, b, c, d) = (key("t.a"), key("t.b"), key("t.c"), key("t.d"));
    let ra = store.set(&a, "1").await.unwrap();
    let stale = store.set(&b, "1").await.unwrap();
    let rb = store.set(&b, "2").await.unwrap();
    let rd = store.set(&d, "1").await.unwrap();
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    let ops = vec![
        TxnOp::put(&a, "x").when(Condition::At(ra)),
        TxnOp::put(&c, "x").when(Condition::Absent),
        TxnOp::put(&b, "x").when(Condition::At(stale)),
        TxnOp::delete(&d),
    ];
    let err = expect_err(store.txn(ops).await, "txn with a stale condition");
    assert!(
        matches!(&err, Error::RevisionMismatch { key: at, expected, actual }
            if *at == b && *expected == stale && *actual == Some(rb)),
        "{err}"
    );
    assert_entry(&*store, &a, b"1", ra).await;
    assert_entry(&*store, &b, b"2", rb).await;
    assert_eq!(store.get(&c).await.unwrap(), None);
    assert_entry(&*store, &d, b"1", rd).await;
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel")).await;
}

/// When several conditions fail, the error names the first failing key in the order given.
pub async fn txn_error_names_the_first_failing_key(store: Arc<dyn StateStore>) {
    let (x, y) = (key("t.x"), key("t.y"));
    let stale = store.set(&x, "1").await.unwrap();
    store.set(&x, "2").await.unwrap();
    let ry = store.set(&y, "1").await.unwrap();
    let stale_x = TxnOp::put(&x, "z").when(Condition::At(stale));
    let absent_y = TxnOp::put(&y, "z").when(Condition::Absent);

    let err = expect_err(
        store.txn(vec![stale_x.clone(), absent_y.clone()]).await,
        "txn",
    );
    assert!(
        matches!(&err, Error::RevisionMismatch { key, .. } if *key == x),
        "{err}"
    );
    let err = expect_err(store.txn(vec![absent_y, stale_x]).await, "txn");
    assert!(
        matches!(&err, Error::AlreadyExists { key, revision } if *key == y && *revision == ry),
        "{err}"
    );
}

/// A watcher sees a transaction's events together (nothing interleaved, even with a concurrent
/// writer) and in the order given.
pub async fn txn_events_are_delivered_together_and_in_order(store: Arc<dyn StateStore>) {
    const TXNS: usize = 10;
    const NOISE: usize = 20;
    let events = watch(&*store, "*", WatchStart::Now).await;
    let noise = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..NOISE {
                store
                    .set(&key(&format!("noise.k{}", i % 3)), "n")
                    .await
                    .unwrap();
            }
        })
    };
    let mut txns = Vec::new();
    for i in 0..TXNS {
        let keys = [
            key(&format!("t{i}.c")),
            key(&format!("t{i}.a")),
            key(&format!("t{i}.b")),
        ];
        let ops = keys.iter().map(|k| TxnOp::put(k, format!("{i}"))).collect();
        let results = store.txn(ops).await.unwrap();
        let written: Vec<Revision> = results.iter().map(put_revision).collect();
        txns.push((keys, written));
    }
    noise.await.expect("noise writer panicked");
    let got = collect_events(&*store, events, "*", |events| {
        events.len() >= TXNS * 3 + NOISE
    })
    .await;
    let revs = revisions(&got);
    for (keys, written) in &txns {
        let start = revs
            .iter()
            .position(|revision| *revision == written[0])
            .unwrap_or_else(|| panic!("the first event of a txn at {written:?} never arrived"));
        let together: Vec<(String, Revision)> = got[start..(start + 3).min(got.len())]
            .iter()
            .map(|event| {
                let k = event.key().expect("a change names its key").to_string();
                (k, event.revision().expect("a change has a revision"))
            })
            .collect();
        let expected: Vec<(String, Revision)> = keys
            .iter()
            .map(ToString::to_string)
            .zip(written.iter().copied())
            .collect();
        assert_eq!(
            together, expected,
            "a transaction's events arrive together and in the order given"
        );
    }
}

/// `Condition::Absent` holds for a never-written or deleted key, and fails with
/// `AlreadyExists` on a present one, writing nothing.
pub async fn txn_absent_condition_requires_an_absent_key(store: Arc<dyn StateStore>) {
    let (k, other) = (key("claims.job-1"), key("claims.job-2"));
    let results = store
        .txn(vec![TxnOp::put(&k, "w1").when(Condition::Absent)])
        .await
        .unwrap();
    let created = put_revision(&results[0]);
    assert_entry(&*store, &k, b"w1", created).await;

    let ops = vec![
        TxnOp::put(&other, "w2"),
        TxnOp::put(&k, "w2").when(Condition::Absent),
    ];
    let err = expect_err(store.txn(ops).await, "txn");
    assert!(
        matches!(&err, Error::AlreadyExists { key, revision } if *key == k && *revision == created),
        "{err}"
    );
    assert_entry(&*store, &k, b"w1", created).await;
    assert_eq!(store.get(&other).await.unwrap(), None);

    store.delete(&k, None).await.unwrap();
    let results = store
        .txn(vec![TxnOp::put(&k, "w3").when(Condition::Absent)])
        .await
        .unwrap();
    assert_entry(&*store, &k, b"w3", put_revision(&results[0])).await;
}

/// A `Check` makes the transaction require its condition without writing the checked key (no
/// new revision, no event); a failed check applies nothing.
pub async fn txn_check_requires_a_condition_without_writing(store: Arc<dyn StateStore>) {
    let (lock, data) = (key("locks.resource"), key("resource.data"));
    let held = store.set(&lock, "holder").await.unwrap();
    let mut lock_events = watch(&*store, "locks.resource", WatchStart::Now).await;

    let results = store
        .txn(vec![
            TxnOp::check(&lock, Condition::At(held)),
            TxnOp::put(&data, "1"),
        ])
        .await
        .unwrap();
    let [TxnResult::Checked, TxnResult::Put(written)] = results[..] else {
        panic!("expected [Checked, Put], got {results:?}");
    };
    assert_entry(&*store, &lock, b"holder", held).await;
    assert_entry(&*store, &data, b"1", written).await;

    let moved = store.set(&lock, "other").await.unwrap();
    assert_put(&next_event(&mut lock_events).await, &lock, b"other", moved);
    // The check comes last here: every condition counts, wherever it stands.
    let ops = vec![
        TxnOp::put(&data, "2"),
        TxnOp::check(&lock, Condition::At(held)),
    ];
    let err = expect_err(store.txn(ops).await, "txn with a stale check");
    assert!(
        matches!(&err, Error::RevisionMismatch { key, expected, actual }
            if *key == lock && *expected == held && *actual == Some(moved)),
        "{err}"
    );
    let ops = vec![
        TxnOp::put(&data, "3"),
        TxnOp::check(&lock, Condition::Absent),
    ];
    let err = expect_err(store.txn(ops).await, "txn checking a present key is absent");
    assert!(
        matches!(&err, Error::AlreadyExists { key, revision } if *key == lock && *revision == moved),
        "{err}"
    );
    assert_entry(&*store, &data, b"1", written).await;

    let results = store
        .txn(vec![
            TxnOp::check(&key("locks.nobody"), Condition::Absent),
            TxnOp::check(&lock, Condition::At(moved)),
        ])
        .await
        .unwrap();
    assert_eq!(results, vec![TxnResult::Checked, TxnResult::Checked]);
    assert_eq!(store.get(&key("locks.nobody")).await.unwrap(), None);
    assert_entry(&*store, &lock, b"other", moved).await;
    // Only the plain write above changed the lock key.
    let end = store.set(&lock, "end").await.unwrap();
    assert_put(&next_event(&mut lock_events).await, &lock, b"end", end);
}

/// A transaction's delete of an absent key reports `NotFound`, changes nothing and emits no
/// event, while the rest applies.
pub async fn txn_delete_of_an_absent_key_reports_not_found(store: Arc<dyn StateStore>) {
    let (a, missing) = (key("t.a"), key("t.missing"));
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    let results = store
        .txn(vec![TxnOp::put(&a, "1"), TxnOp::delete(&missing)])
        .await
        .unwrap();
    let [TxnResult::Put(written), TxnResult::NotFound] = results[..] else {
        panic!("expected [Put, NotFound], got {results:?}");
    };
    assert_put(&next_event(&mut events).await, &a, b"1", written);
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel")).await;
    assert_eq!(store.get(&missing).await.unwrap(), None);
}

/// A transaction naming a key twice (in any combination of actions) is `InvalidInput`, and
/// nothing is written.
pub async fn txn_with_a_duplicate_key_is_invalid_input(store: Arc<dyn StateStore>) {
    let (a, b) = (key("t.a"), key("t.b"));
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    for ops in [
        vec![TxnOp::put(&a, "1"), TxnOp::put(&a, "2")],
        vec![TxnOp::put(&b, "1"), TxnOp::put(&a, "1"), TxnOp::delete(&a)],
        vec![TxnOp::check(&a, Condition::Absent), TxnOp::put(&a, "1")],
    ] {
        let err = expect_err(store.txn(ops.clone()).await, "txn with a duplicate key");
        assert!(matches!(err, Error::InvalidInput { .. }), "{ops:?}: {err}");
    }
    assert_eq!(store.get(&a).await.unwrap(), None);
    assert_eq!(store.get(&b).await.unwrap(), None);
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel")).await;
}

/// An empty transaction is `InvalidInput`.
pub async fn empty_txn_is_invalid_input(store: Arc<dyn StateStore>) {
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    let err = expect_err(store.txn(Vec::new()).await, "empty txn");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel")).await;
}

/// A transaction with one value over the size limit is `ValueTooLarge` and applies nothing.
pub async fn txn_with_a_value_over_the_size_limit_is_rejected_and_nothing_is_written(
    store: Arc<dyn StateStore>,
) {
    let limit = store.capabilities().max_value_size;
    let (a, b) = (key("t.a"), key("t.b"));
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    let ops = vec![
        TxnOp::put(&a, "small"),
        TxnOp::put(&b, vec![0u8; limit + 1]),
    ];
    let err = expect_err(store.txn(ops).await, "txn with an oversized value");
    assert!(
        matches!(&err, Error::ValueTooLarge { key, size, .. } if *key == b && *size == limit + 1),
        "{err}"
    );
    assert_eq!(store.get(&a).await.unwrap(), None);
    assert_eq!(store.get(&b).await.unwrap(), None);
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel")).await;
}

/// A retry with the same idempotency key on the same key returns the first write's revision
/// and applies nothing again (even with another value, even after the key changed), and no
/// second event is sent.
pub async fn idempotent_retry_applies_once(store: Arc<dyn StateStore>) {
    let k = key("jobs.results.17");
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    let request = || PutOptions::create().idempotency_key("worker-7:attempt-1");
    let first = store.put(&k, "done".into(), request()).await.unwrap();
    assert_put(&next_event(&mut events).await, &k, b"done", first);

    let retry = store.put(&k, "done".into(), request()).await.unwrap();
    assert_eq!(retry, first, "a retry returns the first outcome");
    let retry = store.put(&k, "different".into(), request()).await.unwrap();
    assert_eq!(retry, first, "the retry's value is not compared");
    assert_entry(&*store, &k, b"done", first).await;
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel.one")).await;

    let changed = store.set(&k, "changed").await.unwrap();
    assert_put(&next_event(&mut events).await, &k, b"changed", changed);
    let overwrite = || PutOptions::overwrite().idempotency_key("worker-7:attempt-2");
    let second = store.put(&k, "again".into(), overwrite()).await.unwrap();
    assert_put(&next_event(&mut events).await, &k, b"again", second);
    store.set(&k, "later").await.unwrap();
    next_event(&mut events).await;
    let retry = store.put(&k, "again".into(), overwrite()).await.unwrap();
    assert_eq!(
        retry, second,
        "a retry after later changes returns the first outcome"
    );
    let retry = store.put(&k, "done".into(), request()).await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(
        &store.get(&k).await.unwrap().expect("present").value[..],
        b"later"
    );
    assert_no_event_before_sentinel(&*store, &mut events, &key("sentinel.two")).await;
}

/// An idempotency key is scoped to its key: the same idempotency key on another key applies.
pub async fn idempotency_key_is_scoped_per_key(store: Arc<dyn StateStore>) {
    let (a, b) = (key("jobs.a"), key("jobs.b"));
    let options = PutOptions::overwrite().idempotency_key("request-1");
    let on_a = store.put(&a, "x".into(), options.clone()).await.unwrap();
    let on_b = store.put(&b, "y".into(), options.clone()).await.unwrap();
    assert!(
        on_b > on_a,
        "the write to another key applied: {on_b:?} after {on_a:?}"
    );
    assert_entry(&*store, &a, b"x", on_a).await;
    assert_entry(&*store, &b, b"y", on_b).await;
    assert_eq!(store.put(&b, "y".into(), options).await.unwrap(), on_b);
}

/// A write that failed is not remembered under its idempotency key: its retry is decided
/// afresh.
pub async fn failed_idempotent_write_is_not_remembered(store: Arc<dyn StateStore>) {
    let k = key("claims.item-3");
    let holder = store.create(&k, "someone").await.unwrap();
    let request = || PutOptions::create().idempotency_key("claim-3");
    let err = expect_err(store.put(&k, "me".into(), request()).await, "create");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    store.delete(&k, Some(holder)).await.unwrap();
    let claimed = store.put(&k, "me".into(), request()).await.unwrap();
    assert!(claimed > holder);
    assert_entry(&*store, &k, b"me", claimed).await;
    let events = watch(&*store, "claims.*", WatchStart::FromRevision(claimed)).await;
    let got = collect_events(&*store, events, "claims.*", |events| !events.is_empty()).await;
    assert!(
        matches!(&got[0], WatchEvent::Put(entry) if entry.revision == claimed),
        "{got:?}"
    );
}
