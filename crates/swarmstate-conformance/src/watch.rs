//! Cases for watch: starts, patterns, ordering, and the lagged signal that replaces any silent
//! skip.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::time::timeout;

use super::support::{
    EVENT_TIMEOUT, assert_put, assert_strictly_increasing, collect_events, expect_end, key,
    next_event, revisions, watch,
};
use swarmstate_core::{
    Entry, Key, Revision, StateStore, StateStoreExt, TxnOp, TxnResult, WatchEvent, WatchStart,
    WatchStream,
};

/// A watch from `Now` delivers changes made after it was established, not earlier ones.
pub async fn watch_now_sees_only_new_events(store: Arc<dyn StateStore>) {
    let a = key("config.a");
    let b = key("config.b");
    store.set(&a, "old").await.unwrap();
    store.set(&b, "old").await.unwrap();
    let mut events = watch(&*store, "*", WatchStart::Now).await;
    let first = store.set(&b, "new").await.unwrap();
    assert_put(&next_event(&mut events).await, &b, b"new", first);
    let second = store.set(&a, "newer").await.unwrap();
    assert_put(&next_event(&mut events).await, &a, b"newer", second);
}

/// A watch from a revision replays every selected change at or after it (puts and deletes),
/// then delivers live changes.
pub async fn watch_from_a_revision_replays_then_goes_live(store: Arc<dyn StateStore>) {
    let a = key("config.a");
    let b = key("config.b");
    let r1 = store.set(&a, "1").await.unwrap();
    let r2 = store.set(&b, "1").await.unwrap();
    let r3 = store.set(&a, "2").await.unwrap();
    let r4 = store.delete(&b, None).await.unwrap().expect("present");

    if !store.capabilities().replays_overwritten {
        // r1 and r2 were overwritten: such a backend must refuse, never replay with holes.
        for (pattern, from) in [("*", r2), ("config.a", r1)] {
            let err = store
                .watch(&pattern.parse().unwrap(), WatchStart::FromRevision(from))
                .await
                .err()
                .expect("a replay over overwritten revisions must be refused");
            assert!(
                matches!(err, swarmstate_core::Error::Compacted { requested, .. } if requested == from),
                "{err}"
            );
        }
        // Revisions nobody overwrote replay in full.
        let (c, d) = (key("config.c"), key("config.d"));
        let r5 = store.set(&c, "1").await.unwrap();
        let r6 = store.set(&d, "1").await.unwrap();
        let mut all = watch(&*store, "*", WatchStart::FromRevision(r5)).await;
        assert_put(&next_event(&mut all).await, &c, b"1", r5);
        assert_put(&next_event(&mut all).await, &d, b"1", r6);
        let r7 = store.set(&key("config.e"), "live").await.unwrap();
        assert_put(&next_event(&mut all).await, &key("config.e"), b"live", r7);
        return;
    }

    let mut all = watch(&*store, "*", WatchStart::FromRevision(r2)).await;
    let mut only_a = watch(&*store, "config.a", WatchStart::FromRevision(r1)).await;
    assert_put(&next_event(&mut all).await, &b, b"1", r2);
    assert_put(&next_event(&mut all).await, &a, b"2", r3);
    assert_eq!(
        next_event(&mut all).await,
        WatchEvent::Delete {
            key: b.clone(),
            revision: r4
        }
    );
    assert_put(&next_event(&mut only_a).await, &a, b"1", r1);
    assert_put(&next_event(&mut only_a).await, &a, b"2", r3);

    let c = key("config.c");
    let r5 = store.set(&c, "live").await.unwrap();
    let r6 = store.set(&a, "3").await.unwrap();
    assert_put(&next_event(&mut all).await, &c, b"live", r5);
    assert_put(&next_event(&mut all).await, &a, b"3", r6);
    assert_put(&next_event(&mut only_a).await, &a, b"3", r6);
}

/// A watch from a revision the store has not reached yet delivers the changes at or after that
/// revision, and none before it.
pub async fn watch_from_a_future_revision_delivers_nothing_before_it(store: Arc<dyn StateStore>) {
    let current = store.set(&key("seq.start"), "0").await.unwrap();
    let from = Revision::new(current.get() + 3).expect("not 0");
    let events = watch(&*store, "*", WatchStart::FromRevision(from)).await;
    let mut written = Vec::new();
    for i in 0..64 {
        written.push(store.set(&key(&format!("seq.k{i}")), "x").await.unwrap());
        if written.iter().filter(|revision| **revision >= from).count() >= 2 {
            break;
        }
    }
    let last = *written.last().expect("written");
    let expected: Vec<Revision> = written.into_iter().filter(|r| *r >= from).collect();
    assert!(expected.len() >= 2, "the store never reached {from:?}");
    let got = collect_events(&*store, events, "*", |events| {
        events
            .last()
            .and_then(WatchEvent::revision)
            .is_some_and(|revision| revision >= last)
    })
    .await;
    assert_eq!(
        revisions(&got),
        expected,
        "a watch from {from:?} must deliver exactly the changes at or after it"
    );
}

/// A snapshot watch delivers the current selected entries (not deleted or unselected ones),
/// then `CaughtUp` at or after the last change, then live changes.
pub async fn watch_snapshot_gives_entries_then_caught_up_then_live(store: Arc<dyn StateStore>) {
    let a = key("app.a");
    let bc = key("app.b.c");
    store.set(&a, "1").await.unwrap();
    let ra = store.set(&a, "3").await.unwrap();
    let rbc = store.set(&bc, "4").await.unwrap();
    store.set(&key("other"), "x").await.unwrap();
    store.set(&key("app.gone"), "g").await.unwrap();
    let last = store
        .delete(&key("app.gone"), None)
        .await
        .unwrap()
        .expect("present");

    let mut events = watch(&*store, "app.*", WatchStart::Snapshot).await;
    let mut snapshot: Vec<Entry> = Vec::new();
    let caught_up = loop {
        match next_event(&mut events).await {
            WatchEvent::Put(entry) => snapshot.push(entry),
            WatchEvent::CaughtUp { revision } => break revision,
            other => panic!("a snapshot holds puts, then CaughtUp; got {other:?}"),
        }
    };
    snapshot.sort_by(|x, y| x.key.cmp(&y.key));
    let summary: Vec<(String, Vec<u8>, Revision)> = snapshot
        .iter()
        .map(|entry| (entry.key.to_string(), entry.value.to_vec(), entry.revision))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("app.a".to_owned(), b"3".to_vec(), ra),
            ("app.b.c".to_owned(), b"4".to_vec(), rbc),
        ]
    );
    assert!(
        caught_up >= Some(last),
        "CaughtUp at {caught_up:?}, before the last change {last:?}"
    );

    store.set(&key("other"), "y").await.unwrap();
    let z = key("app.z");
    let rz = store.set(&z, "live").await.unwrap();
    assert_put(&next_event(&mut events).await, &z, b"live", rz);
    assert!(Some(rz) > caught_up);
}

/// A snapshot that selects nothing is just `CaughtUp`, then live changes; on a fresh store too.
pub async fn watch_snapshot_of_an_empty_selection_is_only_caught_up(store: Arc<dyn StateStore>) {
    let mut fresh = watch(&*store, "*", WatchStart::Snapshot).await;
    let event = next_event(&mut fresh).await;
    assert!(matches!(event, WatchEvent::CaughtUp { .. }), "{event:?}");

    let other = store.set(&key("other"), "x").await.unwrap();
    let mut events = watch(&*store, "app.*", WatchStart::Snapshot).await;
    match next_event(&mut events).await {
        WatchEvent::CaughtUp { revision } => assert!(revision >= Some(other), "{revision:?}"),
        other => panic!("expected CaughtUp, got {other:?}"),
    }
    let a = key("app.a");
    let ra = store.set(&a, "1").await.unwrap();
    assert_put(&next_event(&mut events).await, &a, b"1", ra);
    assert_put(&next_event(&mut fresh).await, &key("other"), b"x", other);
    assert_put(&next_event(&mut fresh).await, &a, b"1", ra);
}

/// A `prefix.*` watch delivers changes to keys under `prefix.` at every depth, and nothing for
/// `prefix` itself or look-alike keys.
pub async fn watch_prefix_pattern_filters_at_every_depth(store: Arc<dyn StateStore>) {
    let events = watch(&*store, "app.*", WatchStart::Now).await;
    let mut expected: Vec<(String, bool)> = Vec::new();
    for text in [
        "app",
        "app.a",
        "apps.x",
        "app.a.b.c",
        "app-x.y",
        "x.app.a",
        "appa",
        "app.z",
    ] {
        store.set(&key(text), text).await.unwrap();
        if text.starts_with("app.") {
            expected.push((text.to_owned(), true));
        }
    }
    for text in ["app.a", "apps.x", "app"] {
        store.delete(&key(text), None).await.unwrap();
        if text.starts_with("app.") {
            expected.push((text.to_owned(), false));
        }
    }
    let last = store.set(&key("app.end"), "end").await.unwrap();
    expected.push(("app.end".to_owned(), true));
    let got = collect_events(&*store, events, "app.*", |events| {
        events.last().and_then(WatchEvent::revision) >= Some(last)
    })
    .await;
    let got: Vec<(String, bool)> = got
        .iter()
        .map(|event| {
            let key = event.key().expect("a change names its key").to_string();
            (key, matches!(event, WatchEvent::Put(_)))
        })
        .collect();
    assert_eq!(got, expected, "(key, is a put) of every event");
}

/// An exact watch delivers changes to that key only, not its children or siblings.
pub async fn watch_exact_key_sees_only_that_key(store: Arc<dyn StateStore>) {
    let a = key("app.a");
    let mut events = watch(&*store, "app.a", WatchStart::Now).await;
    for text in ["app.a.b", "app", "app.b", "app.ab"] {
        store.set(&key(text), "x").await.unwrap();
    }
    let written = store.set(&a, "mine").await.unwrap();
    assert_put(&next_event(&mut events).await, &a, b"mine", written);
    store.delete(&key("app.a.b"), None).await.unwrap();
    let deleted = store.delete(&a, None).await.unwrap().expect("present");
    assert_eq!(
        next_event(&mut events).await,
        WatchEvent::Delete {
            key: a.clone(),
            revision: deleted
        }
    );
}

/// `*` never delivers reserved keys; a pattern naming a reserved key does.
pub async fn watch_all_excludes_reserved_keys(store: Arc<dyn StateStore>) {
    let reserved = Key::new_reserved("_conformance.hidden").unwrap();
    let mut all = watch(&*store, "*", WatchStart::Now).await;
    let mut named = watch(&*store, "_conformance.*", WatchStart::Now).await;
    let hidden = store.set(&reserved, "bookkeeping").await.unwrap();
    store.delete(&reserved, None).await.unwrap();
    let visible = key("visible");
    let shown = store.set(&visible, "x").await.unwrap();
    assert_put(&next_event(&mut all).await, &visible, b"x", shown);
    assert_put(
        &next_event(&mut named).await,
        &reserved,
        b"bookkeeping",
        hidden,
    );
}

/// Deletes reach watchers as `Delete` events with the delete's revision, however they were
/// made (unconditional, conditional, in a txn).
pub async fn watch_reports_deletes(store: Arc<dyn StateStore>) {
    let mut events = watch(&*store, "jobs.*", WatchStart::Now).await;
    for (i, name) in ["jobs.a", "jobs.b", "jobs.c"].into_iter().enumerate() {
        let k = key(name);
        let put = store.set(&k, "x").await.unwrap();
        let deleted = match i {
            0 => store.delete(&k, None).await.unwrap().expect("present"),
            1 => store.delete(&k, Some(put)).await.unwrap().expect("present"),
            _ => match store.txn(vec![TxnOp::delete(&k)]).await.unwrap()[..] {
                [TxnResult::Deleted(revision)] => revision,
                ref other => panic!("a txn delete of a present key reports Deleted, got {other:?}"),
            },
        };
        assert!(deleted > put, "{deleted:?} after {put:?}");
        assert_put(&next_event(&mut events).await, &k, b"x", put);
        assert_eq!(
            next_event(&mut events).await,
            WatchEvent::Delete {
                key: k.clone(),
                revision: deleted
            }
        );
    }
}

/// Several watchers of the same changes each receive all of them, in the same order.
pub async fn every_watcher_receives_every_event(store: Arc<dyn StateStore>) {
    let mut watchers = Vec::new();
    for pattern in ["*", "*", "team.*", "*"] {
        watchers.push(watch(&*store, pattern, WatchStart::Now).await);
    }
    // Each change is read by every watcher before the next, so that small buffers do not lag.
    for i in 0..5 {
        let k = key(&format!("team.k{i}"));
        let revision = store.set(&k, format!("{i}")).await.unwrap();
        for events in &mut watchers {
            assert_put(
                &next_event(events).await,
                &k,
                format!("{i}").as_bytes(),
                revision,
            );
        }
    }
}

/// Four writers write concurrently while a watcher reads: the watcher gets every change,
/// exactly once, in strictly increasing revision order, each with its key and value. (A lag is
/// allowed and followed by resuming.)
pub async fn watch_events_arrive_in_revision_order_under_concurrent_writers(
    store: Arc<dyn StateStore>,
) {
    const WRITERS: usize = 4;
    const WRITES: usize = 25;
    let events = watch(&*store, "*", WatchStart::Now).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for i in 0..WRITES {
                    let k = key(&format!("w{w}.k{}", i % 5));
                    let value = format!("{w}:{i}");
                    let revision = store.set(&k, value.clone()).await.unwrap();
                    written.push((revision, (k, value)));
                }
                written
            })
        })
        .collect();
    let got = collect_events(&*store, events, "*", |events| {
        events.len() >= WRITERS * WRITES
    })
    .await;
    let mut written: HashMap<Revision, (Key, String)> = HashMap::new();
    for writer in writers {
        written.extend(writer.await.expect("writer panicked"));
    }
    assert_eq!(
        written.len(),
        WRITERS * WRITES,
        "writes got distinct revisions"
    );
    assert_strictly_increasing(&revisions(&got));
    for event in &got {
        let WatchEvent::Put(entry) = event else {
            panic!("only puts were made, got {event:?}");
        };
        let (k, value) = written
            .get(&entry.revision)
            .unwrap_or_else(|| panic!("an event at a revision nobody wrote: {event:?}"));
        assert_eq!((&entry.key, &entry.value[..]), (k, value.as_bytes()));
    }
}

/// Writes more than a watcher's buffer while it reads nothing; returns the stream and the
/// revisions written, in order.
async fn overflow(store: &dyn StateStore) -> (WatchStream, Vec<Revision>) {
    let buffer = store.capabilities().watch_buffer;
    let events = watch(store, "*", WatchStart::Now).await;
    let mut written = Vec::new();
    for i in 0..buffer * 2 + 16 {
        // Distinct keys: a backend that keeps one message per key can still replay them.
        let k = key(&format!("lag.k{i}"));
        written.push(store.set(&k, format!("{i}")).await.unwrap());
    }
    (events, written)
}

/// Reads an overflowed watcher up to its `Lagged`; returns the revisions delivered before it
/// and `resume_from`, after checking that nothing was skipped silently.
async fn read_until_lagged(
    store: &dyn StateStore,
    events: &mut WatchStream,
    written: &[Revision],
) -> (Vec<Revision>, Revision) {
    let buffer = store.capabilities().watch_buffer;
    let mut delivered = Vec::new();
    let resume_from = loop {
        let event = match timeout(EVENT_TIMEOUT, events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!(
                "the stream ended without a Lagged signal after {} of {} events",
                delivered.len(),
                written.len()
            ),
            Err(_) => panic!(
                "a watcher with a buffer of {buffer} events that read nothing while {} events \
                 were written got {} of them and then nothing (no Lagged signal) for {:?}",
                written.len(),
                delivered.len(),
                EVENT_TIMEOUT
            ),
        };
        match event {
            WatchEvent::Lagged { resume_from } => break resume_from,
            WatchEvent::Put(entry) => delivered.push(entry.revision),
            other => panic!("only puts were made, got {other:?}"),
        }
    };
    let n = delivered.len();
    assert!(
        n < written.len(),
        "lagged after delivering every one of the {n} events"
    );
    assert_eq!(
        delivered,
        written[..n],
        "the events before Lagged must be exactly the first {n} changes, none skipped"
    );
    assert!(
        resume_from <= written[n],
        "resume_from {resume_from:?} skips the undelivered change at {:?}",
        written[n]
    );
    if let Some(last) = delivered.last() {
        assert!(
            resume_from > *last,
            "resume_from {resume_from:?} repeats delivered {last:?}"
        );
    }
    (delivered, resume_from)
}

/// A watcher that falls more than its buffer behind receives the changes it had buffered (a
/// contiguous prefix), then `Lagged` carrying the first revision it was not given, and then its
/// stream ends. It is never silently skipped ahead.
pub async fn slow_watcher_is_lagged_and_its_stream_ends(store: Arc<dyn StateStore>) {
    let (mut events, written) = overflow(&*store).await;
    read_until_lagged(&*store, &mut events, &written).await;
    expect_end(&mut events).await;
    // The store itself is unharmed: new watches and writes work.
    let mut fresh = watch(&*store, "*", WatchStart::Now).await;
    let k = key("after.lag");
    let revision = store.set(&k, "x").await.unwrap();
    assert_put(&next_event(&mut fresh).await, &k, b"x", revision);
}

/// A lagged watcher that resumes from `resume_from` gets every remaining change, so that what
/// it saw before and after the lag is every change exactly once, in order; then it is live.
pub async fn lagged_watcher_resumes_from_resume_from_without_gaps(store: Arc<dyn StateStore>) {
    let (mut events, written) = overflow(&*store).await;
    let (delivered, resume_from) = read_until_lagged(&*store, &mut events, &written).await;
    let last = *written.last().expect("written");
    let resumed = watch(&*store, "*", WatchStart::FromRevision(resume_from)).await;
    let rest = collect_events(&*store, resumed, "*", |events| {
        events.last().and_then(WatchEvent::revision) >= Some(last)
    })
    .await;
    let mut seen = delivered;
    seen.extend(revisions(&rest));
    assert_eq!(
        seen, written,
        "every change exactly once, in order, across the lag"
    );

    let mut live = watch(&*store, "*", WatchStart::FromRevision(last.next())).await;
    let k = key("after.lag");
    let revision = store.set(&k, "x").await.unwrap();
    assert_put(&next_event(&mut live).await, &k, b"x", revision);
}
