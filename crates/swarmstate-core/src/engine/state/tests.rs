//! `KvState` alone: deciding, applying, restoring. No store, no runtime, no clock: `now` is
//! a number.

use std::time::Duration;

use super::*;

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_nanos(1_000_000_000_000).saturating_add(Duration::from_secs(secs))
}

fn rev(n: u64) -> Revision {
    Revision::new(n).unwrap()
}

fn state() -> KvState {
    KvState::new(StateLimits::default())
}

/// Decides and applies one put at `now`.
fn put(
    state: &mut KvState,
    k: &str,
    value: &str,
    options: PutOptions,
    now: Timestamp,
) -> Result<Revision> {
    let mut batch = state.batch();
    let outcome = state.put(
        &mut batch,
        &key(k),
        Bytes::from(value.to_owned()),
        &options,
        now,
    );
    state.apply(&mut batch, now, None);
    outcome
}

#[test]
fn a_decision_changes_nothing_until_it_is_applied() {
    let mut state = state();
    let mut batch = state.batch();
    let revision = state
        .put(
            &mut batch,
            &key("a"),
            "1".into(),
            &PutOptions::create(),
            at(0),
        )
        .unwrap();
    assert_eq!(state.get(&key("a"), at(0)), None);
    assert_eq!(state.last_revision(), None);
    assert_eq!(
        batch.changes().changes,
        vec![Change::Put {
            key: key("a"),
            value: "1".into(),
            revision,
            expires_at: None,
        }]
    );
    let mut events = Vec::new();
    state.apply(&mut batch, at(0), Some(&mut events));
    assert_eq!(state.get(&key("a"), at(0)).unwrap().revision, revision);
    assert_eq!(state.last_revision(), Some(revision));
    assert_eq!(events.len(), 1);
    assert!(
        batch.is_empty(),
        "an applied batch is ready for the next decisions"
    );
}

#[test]
fn later_decisions_in_a_batch_see_the_earlier_ones() {
    let mut state = state();
    let mut batch = state.batch();
    let a = key("a");
    let first = state
        .put(&mut batch, &a, "1".into(), &PutOptions::create(), at(0))
        .unwrap();
    let err = state
        .put(&mut batch, &a, "2".into(), &PutOptions::create(), at(0))
        .unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists { revision, .. } if revision == first),
        "{err}"
    );
    let second = state
        .put(
            &mut batch,
            &a,
            "2".into(),
            &PutOptions::update(first),
            at(0),
        )
        .unwrap();
    assert_eq!(second, first.next());
    let deleted = state.delete(&mut batch, &a, Some(second), at(0)).unwrap();
    assert_eq!(deleted, Some(second.next()));
    assert_eq!(state.delete(&mut batch, &a, None, at(0)).unwrap(), None);
    state.apply(&mut batch, at(0), None);
    assert_eq!(state.get(&a, at(0)), None);
    assert_eq!(state.last_revision(), Some(rev(3)));
}

#[test]
fn a_failed_decision_adds_only_the_expiries_it_found_due() {
    let mut state = state();
    put(&mut state, "a", "1", PutOptions::overwrite(), at(0)).unwrap();
    put(
        &mut state,
        "t",
        "x",
        PutOptions::overwrite().ttl(Duration::from_secs(5)),
        at(0),
    )
    .unwrap();
    let mut batch = state.batch();
    let ops = vec![
        TxnOp::put(&key("b"), "2"),
        TxnOp::put(&key("a"), "3").when(Condition::At(rev(9))),
    ];
    let err = state.txn(&mut batch, &ops, at(6)).unwrap_err();
    assert!(matches!(err, Error::RevisionMismatch { .. }), "{err}");
    assert_eq!(
        batch.changes().changes,
        vec![Change::Expire {
            key: key("t"),
            revision: rev(3),
        }]
    );
}

#[test]
fn deadlines_are_absolute_and_expiry_is_decided_like_a_write() {
    let mut state = state();
    let ttl = PutOptions::overwrite().ttl(Duration::from_secs(5));
    let mut batch = state.batch();
    state
        .put(&mut batch, &key("t"), "x".into(), &ttl, at(10))
        .unwrap();
    let Change::Put { expires_at, .. } = &batch.changes().changes[0] else {
        panic!("a put decides a put: {:?}", batch.changes());
    };
    assert_eq!(*expires_at, Some(at(15)));
    state.apply(&mut batch, at(10), None);
    assert_eq!(state.next_expiry(), Some(at(15)));
    assert_eq!(
        state.get(&key("t"), at(14)).unwrap().expires_in,
        Some(Duration::from_secs(1))
    );
    assert_eq!(state.get(&key("t"), at(15)), None, "gone at its deadline");
    let mut batch = state.batch();
    state.expire_due(&mut batch, at(14));
    assert!(batch.is_empty());
    state.expire_due(&mut batch, at(15));
    state.expire_due(&mut batch, at(16));
    assert_eq!(batch.changes().changes.len(), 1, "an entry expires once");
    let mut events = Vec::new();
    state.apply(&mut batch, at(15), Some(&mut events));
    assert!(matches!(events[..], [WatchEvent::Expire { revision, .. }] if revision == rev(2)));
    assert_eq!(state.next_expiry(), None);
}

#[test]
fn idempotency_records_travel_in_the_change_set_and_expire_after_the_window() {
    let mut state = state();
    let options = PutOptions::create().idempotency_key("req-1");
    let mut batch = state.batch();
    let first = state
        .put(&mut batch, &key("a"), "x".into(), &options, at(0))
        .unwrap();
    assert_eq!(
        batch.changes().remembered,
        vec![Remembered {
            key: key("a"),
            idempotency_key: "req-1".to_owned(),
            revision: first,
            at: at(0),
        }]
    );
    let again = state
        .put(&mut batch, &key("a"), "x".into(), &options, at(0))
        .unwrap();
    assert_eq!(
        again, first,
        "a retry in the same batch is answered from the batch"
    );
    assert_eq!(batch.changes().changes.len(), 1);
    state.apply(&mut batch, at(0), None);
    assert_eq!(
        put(&mut state, "a", "x", options.clone(), at(119)).unwrap(),
        first
    );
    let err = put(&mut state, "a", "x", options, at(120)).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
}

fn listed(state: &KvState, pattern: &str, now: Timestamp) -> Vec<String> {
    let pattern = Pattern::new(pattern).unwrap();
    state
        .keys(&pattern, now)
        .iter()
        .map(|key| key.to_string())
        .collect()
}

#[test]
fn listings_select_by_pattern_in_key_order_and_follow_every_change() {
    let mut state = state();
    // Neighbours of `a.`: '-' sorts before '.', '/' and letters after it.
    for k in ["b.a", "a.b.c", "a-b.c", "a", "a/b", "ab.c", "a.b", "a.a"] {
        put(&mut state, k, "v", PutOptions::overwrite(), at(0)).unwrap();
    }
    let ttl = PutOptions::overwrite().ttl(Duration::from_secs(10));
    put(&mut state, "a.t", "v", ttl, at(0)).unwrap();
    assert_eq!(listed(&state, "a.*", at(5)), ["a.a", "a.b", "a.b.c", "a.t"]);
    assert_eq!(listed(&state, "a.*", at(10)), ["a.a", "a.b", "a.b.c"]);
    assert_eq!(listed(&state, "a.b.*", at(5)), ["a.b.c"]);
    assert_eq!(listed(&state, "a.b", at(5)), ["a.b"]);
    assert_eq!(listed(&state, "zz.*", at(5)), Vec::<String>::new());
    assert_eq!(
        listed(&state, "*", at(5)),
        [
            "a", "a-b.c", "a.a", "a.b", "a.b.c", "a.t", "a/b", "ab.c", "b.a"
        ]
    );

    let mut batch = state.batch();
    state.delete(&mut batch, &key("a.b"), None, at(11)).unwrap();
    state.apply(&mut batch, at(11), None);
    assert_eq!(listed(&state, "a.*", at(11)), ["a.a", "a.b.c"]);
    assert_eq!(
        state.ordered.len(),
        state.entries.len(),
        "an expired and a deleted key leave the index with their entries"
    );
    let restored = KvState::restore(StateLimits::default(), state.persisted()).unwrap();
    assert_eq!(listed(&restored, "a.*", at(11)), ["a.a", "a.b.c"]);
    assert_eq!(restored.ordered, state.ordered);
}

#[test]
fn a_restored_state_answers_as_the_original_and_continues_its_revisions() {
    let mut original = state();
    let ttl = PutOptions::overwrite().ttl(Duration::from_secs(30));
    put(&mut original, "a", "1", PutOptions::overwrite(), at(0)).unwrap();
    put(&mut original, "b", "2", ttl, at(0)).unwrap();
    let idempotent = PutOptions::overwrite().idempotency_key("req-1");
    let remembered = put(&mut original, "c", "3", idempotent.clone(), at(1)).unwrap();
    let mut batch = original.batch();
    original.delete(&mut batch, &key("a"), None, at(2)).unwrap();
    original.apply(&mut batch, at(2), None);

    let persisted = original.persisted();
    let mut restored = KvState::restore(StateLimits::default(), persisted.clone()).unwrap();
    assert_eq!(restored.persisted(), persisted);
    for k in ["a", "b", "c"] {
        assert_eq!(
            restored.get(&key(k), at(3)),
            original.get(&key(k), at(3)),
            "{k}"
        );
    }
    assert_eq!(
        restored.replay(&Pattern::All, rev(1), at(3)).unwrap(),
        original.replay(&Pattern::All, rev(1), at(3)).unwrap()
    );
    assert_eq!(restored.next_expiry(), Some(at(30)));
    assert_eq!(
        put(&mut restored, "c", "3", idempotent, at(4)).unwrap(),
        remembered
    );
    let next = put(&mut restored, "d", "4", PutOptions::overwrite(), at(4)).unwrap();
    assert_eq!(next, rev(5));
}

#[test]
fn restoring_inconsistent_data_is_corrupt_and_names_the_problem() {
    let entry = |k: &str, revision: u64| StoredEntry {
        key: key(k),
        value: "v".into(),
        revision: rev(revision),
        expires_at: None,
    };
    let cases = [
        (
            Persisted {
                entries: vec![entry("a", 3)],
                last_revision: Some(rev(2)),
                ..Persisted::default()
            },
            "after the last revision",
        ),
        (
            Persisted {
                entries: vec![entry("a", 1), entry("a", 2)],
                last_revision: Some(rev(2)),
                ..Persisted::default()
            },
            "stored twice",
        ),
        (
            Persisted {
                last_revision: Some(rev(3)),
                history: vec![
                    Change::Delete {
                        key: key("a"),
                        revision: rev(1),
                    },
                    Change::Delete {
                        key: key("a"),
                        revision: rev(3),
                    },
                ],
                ..Persisted::default()
            },
            "where 2 belongs",
        ),
        (
            Persisted {
                last_revision: Some(rev(1)),
                history: vec![
                    Change::Delete {
                        key: key("a"),
                        revision: rev(1),
                    },
                    Change::Delete {
                        key: key("a"),
                        revision: rev(2),
                    },
                ],
                ..Persisted::default()
            },
            "more than the last revision",
        ),
    ];
    for (persisted, problem) in cases {
        let err = KvState::restore(StateLimits::default(), persisted).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(problem), "{err}");
    }
}

#[test]
fn history_is_bounded_and_older_starts_are_compacted() {
    let mut state = KvState::new(StateLimits {
        history: 2,
        ..StateLimits::default()
    });
    for value in ["1", "2", "3"] {
        put(&mut state, "a", value, PutOptions::overwrite(), at(0)).unwrap();
    }
    let err = state.replay(&Pattern::All, rev(1), at(0)).unwrap_err();
    assert!(
        matches!(err, Error::Compacted { oldest, .. } if oldest == rev(2)),
        "{err}"
    );
    assert_eq!(state.replay(&Pattern::All, rev(2), at(0)).unwrap().len(), 2);
    assert_eq!(state.persisted().history.len(), 2);
}

#[test]
fn history_is_bounded_in_bytes_but_keeps_the_newest_change() {
    let mut state = KvState::new(StateLimits {
        history_bytes: 10,
        ..StateLimits::default()
    });
    // "a" + 4 bytes: two fit in 10 bytes, a third pushes the oldest out.
    for value in ["1111", "2222", "3333"] {
        put(&mut state, "a", value, PutOptions::overwrite(), at(0)).unwrap();
    }
    assert_eq!(state.oldest_kept(), Some(rev(2)));
    // One change larger than the bound is still kept, alone.
    put(
        &mut state,
        "a",
        "a much longer value",
        PutOptions::overwrite(),
        at(0),
    )
    .unwrap();
    assert_eq!(state.oldest_kept(), Some(rev(4)));
    assert_eq!(state.replay(&Pattern::All, rev(4), at(0)).unwrap().len(), 1);
}

#[test]
fn the_quota_refuses_growth_only_and_leaves_the_state_unchanged() {
    let mut state = KvState::new(StateLimits {
        quota: Some(10),
        ..StateLimits::default()
    });
    put(&mut state, "a", "1234", PutOptions::overwrite(), at(0)).unwrap(); // 5 bytes
    put(&mut state, "b", "1234", PutOptions::overwrite(), at(0)).unwrap(); // 10 bytes
    assert_eq!(state.data_bytes(), 10);
    let err = put(&mut state, "c", "1", PutOptions::overwrite(), at(0)).unwrap_err();
    assert!(
        matches!(&err, Error::QuotaExceeded { key: k, needed: 12, quota: 10 } if k.as_str() == "c"),
        "{err}"
    );
    assert_eq!(state.last_revision(), Some(rev(2)), "nothing was written");
    // Overwriting with a value of the same size or smaller passes; so do deletes.
    put(&mut state, "a", "12", PutOptions::overwrite(), at(0)).unwrap();
    assert_eq!(state.data_bytes(), 8);
    let mut batch = state.batch();
    state.delete(&mut batch, &key("b"), None, at(0)).unwrap();
    // In one batch, later decisions count the earlier ones' sizes.
    state
        .put(
            &mut batch,
            &key("c"),
            Bytes::from("1234"),
            &PutOptions::overwrite(),
            at(0),
        )
        .unwrap();
    let err = state
        .put(
            &mut batch,
            &key("d"),
            Bytes::from("12"),
            &PutOptions::overwrite(),
            at(0),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::QuotaExceeded { needed: 11, .. }),
        "{err}"
    );
    state.apply(&mut batch, at(0), None);
    assert_eq!(state.data_bytes(), 8);
    // A transaction is judged by its net growth: freeing "a" pays for a larger "c".
    let mut batch = state.batch();
    let ops = [TxnOp::delete(&key("a")), TxnOp::put(&key("c"), "1234567")];
    state.txn(&mut batch, &ops, at(0)).unwrap();
    state.apply(&mut batch, at(0), None);
    assert_eq!(state.data_bytes(), 8);
    let ops = [TxnOp::put(&key("e"), "123")];
    let mut batch = state.batch();
    let err = state.txn(&mut batch, &ops, at(0)).unwrap_err();
    assert!(
        matches!(err, Error::QuotaExceeded { needed: 12, .. }),
        "{err}"
    );
    assert!(batch.is_empty());
}

#[test]
fn expiries_free_quota_and_restore_counts_the_data() {
    let mut state = KvState::new(StateLimits {
        quota: Some(10),
        ..StateLimits::default()
    });
    let ttl = PutOptions::overwrite().ttl(Duration::from_secs(1));
    put(&mut state, "a", "12345678", ttl, at(0)).unwrap();
    // At 2 s "a" is due: its expiry, decided first, makes room for "b".
    put(&mut state, "b", "12345678", PutOptions::overwrite(), at(2)).unwrap();
    assert_eq!(state.data_bytes(), 9);
    let restored = KvState::restore(state.limits().clone(), state.persisted()).unwrap();
    assert_eq!(restored.data_bytes(), 9);
}
