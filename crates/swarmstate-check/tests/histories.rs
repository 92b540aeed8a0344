//! The checker on hand-written histories whose verdict is known, and on synthetic ones:
//! linearizable by construction (must pass) and with one read corrupted (must fail).

use std::time::Duration;

use bytes::Bytes;
use swarmstate_check::generate::{Rng, Synthetic, corrupt_one_read, synthetic};
use swarmstate_check::{History, Input, Operation, Output, Verdict, check};
use swarmstate_core::{Condition, PutMode, Revision};

const LIMIT: Duration = Duration::from_secs(20);

fn r(n: u64) -> Revision {
    Revision::new(n).unwrap()
}

fn v(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

fn op(client: u64, call: u64, ret: Option<u64>, input: Input, output: Output) -> Operation {
    Operation {
        client,
        call,
        ret,
        key: "k".to_owned(),
        input,
        output,
    }
}

fn put(value: &'static str, mode: PutMode) -> Input {
    Input::Put {
        value: v(value),
        mode,
        ttl: None,
    }
}

fn put_ttl(value: &'static str) -> Input {
    Input::Put {
        value: v(value),
        mode: PutMode::Overwrite,
        ttl: Some(Duration::from_secs(1)),
    }
}

fn read(value: &'static str, revision: u64) -> Output {
    Output::Value(Some((v(value), r(revision))))
}

fn history(operations: Vec<Operation>) -> History {
    History {
        operations,
        expiries_incomplete: false,
    }
}

fn assert_ok(operations: Vec<Operation>) {
    let checked = check(&history(operations), LIMIT);
    assert!(checked.verdict.is_ok(), "{checked}");
}

fn assert_violation(operations: Vec<Operation>) -> String {
    let checked = check(&history(operations), LIMIT);
    assert!(checked.verdict.is_violation(), "{checked}");
    checked.verdict.to_string()
}

#[test]
fn a_read_after_an_acknowledged_write_sees_it() {
    assert_ok(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(2, 20, Some(30), Input::Get, read("a", 1)),
    ]);
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for output in [read("a", 1), read("b", 4)] {
        assert_ok(vec![
            op(
                1,
                0,
                Some(10),
                put("a", PutMode::Overwrite),
                Output::Written(r(1)),
            ),
            op(
                1,
                20,
                Some(40),
                put("b", PutMode::Overwrite),
                Output::Written(r(4)),
            ),
            op(2, 30, Some(50), Input::Get, output),
        ]);
    }
}

#[test]
fn of_two_racing_updates_at_one_revision_one_wins() {
    assert_ok(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(
            2,
            20,
            Some(40),
            put("b", PutMode::Update(r(1))),
            Output::Written(r(2)),
        ),
        op(
            3,
            20,
            Some(40),
            put("c", PutMode::Update(r(1))),
            Output::Mismatch(Some(r(2))),
        ),
        op(4, 50, Some(60), Input::Get, read("b", 2)),
    ]);
}

fn check_at(revision: u64) -> Input {
    Input::Check {
        condition: Condition::At(r(revision)),
    }
}

#[test]
fn a_check_sees_the_revision_a_write_left_and_a_concurrent_one_may_see_either() {
    assert_ok(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(2, 20, Some(30), check_at(1), Output::Checked),
        op(
            1,
            40,
            Some(60),
            put("b", PutMode::Overwrite),
            Output::Written(r(2)),
        ),
        op(2, 45, Some(55), check_at(1), Output::Checked),
        op(3, 45, Some(55), check_at(1), Output::Mismatch(Some(r(2)))),
        op(
            2,
            70,
            Some(80),
            Input::Check {
                condition: Condition::Absent,
            },
            Output::Exists(r(2)),
        ),
    ]);
}

#[test]
fn a_check_that_holds_on_an_overwritten_revision_is_a_violation() {
    // What a fenced write on a store that serves stale conditions looks like: the lock key was
    // rewritten before the check began, and the check still held at the old revision.
    let why = assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(
            2,
            20,
            Some(30),
            put("b", PutMode::Update(r(1))),
            Output::Written(r(2)),
        ),
        op(3, 40, Some(50), check_at(1), Output::Checked),
    ]);
    assert!(why.contains("check at r1 -> held"), "{why}");
}

#[test]
fn a_check_for_absence_that_holds_on_a_present_key_is_a_violation() {
    assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(
            2,
            20,
            Some(30),
            Input::Check {
                condition: Condition::Absent,
            },
            Output::Checked,
        ),
    ]);
}

#[test]
fn a_write_with_an_unknown_outcome_may_show_up_later_or_never() {
    // Seen later, at a revision nobody was told.
    assert_ok(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Overwrite),
            Output::Written(r(1)),
        ),
        op(2, 20, None, put("b", PutMode::Overwrite), Output::Unknown),
        op(3, 100, Some(110), Input::Get, read("b", 5)),
    ]);
    // Never seen.
    assert_ok(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Overwrite),
            Output::Written(r(1)),
        ),
        op(2, 20, None, put("b", PutMode::Overwrite), Output::Unknown),
        op(3, 100, Some(110), Input::Get, read("a", 1)),
        op(3, 120, Some(130), Input::Get, read("a", 1)),
    ]);
}

#[test]
fn an_expiry_removes_the_key_between_the_write_and_the_watcher() {
    assert_ok(vec![
        op(1, 0, Some(10), put_ttl("a"), Output::Written(r(1))),
        op(2, 20, Some(30), Input::Get, read("a", 1)),
        op(
            u64::MAX,
            0,
            Some(1000),
            Input::Expire {
                written: r(1),
                revision: Some(r(2)),
            },
            Output::Expired,
        ),
        op(2, 500, Some(510), Input::Get, Output::Value(None)),
        op(
            2,
            1100,
            Some(1110),
            put("b", PutMode::Create),
            Output::Written(r(3)),
        ),
    ]);
}

#[test]
fn a_delete_then_a_create_is_fine() {
    assert_ok(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(
            1,
            20,
            Some(30),
            Input::Delete {
                expected: Some(r(1)),
            },
            Output::Deleted(Some(r(2))),
        ),
        op(
            2,
            40,
            Some(50),
            Input::Delete { expected: None },
            Output::Deleted(None),
        ),
        op(
            2,
            60,
            Some(70),
            put("b", PutMode::Create),
            Output::Written(r(3)),
        ),
        op(
            3,
            80,
            Some(90),
            put("c", PutMode::Create),
            Output::Exists(r(3)),
        ),
    ]);
}

#[test]
fn a_stale_read_is_a_violation() {
    let explanation = assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Overwrite),
            Output::Written(r(1)),
        ),
        op(
            1,
            20,
            Some(30),
            put("b", PutMode::Overwrite),
            Output::Written(r(2)),
        ),
        op(2, 40, Some(50), Input::Get, read("a", 1)),
    ]);
    assert!(explanation.contains("key k"), "{explanation}");
    assert!(explanation.contains("cannot be placed"), "{explanation}");
    assert!(explanation.contains("\"b\" at r2"), "{explanation}");
}

#[test]
fn a_lost_update_is_a_violation() {
    assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(
            2,
            20,
            Some(40),
            put("b", PutMode::Update(r(1))),
            Output::Written(r(2)),
        ),
        op(
            3,
            20,
            Some(40),
            put("c", PutMode::Update(r(1))),
            Output::Written(r(3)),
        ),
    ]);
}

#[test]
fn a_revision_that_goes_backwards_is_a_violation() {
    assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Overwrite),
            Output::Written(r(5)),
        ),
        op(
            1,
            20,
            Some(30),
            put("b", PutMode::Overwrite),
            Output::Written(r(3)),
        ),
    ]);
}

#[test]
fn a_create_over_a_present_key_is_a_violation() {
    assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(
            2,
            20,
            Some(30),
            put("b", PutMode::Create),
            Output::Written(r(2)),
        ),
    ]);
}

#[test]
fn a_conflict_the_state_cannot_explain_is_a_violation() {
    assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(
            2,
            20,
            Some(30),
            put("b", PutMode::Update(r(1))),
            Output::Mismatch(Some(r(7))),
        ),
    ]);
    assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Create),
            Output::Written(r(1)),
        ),
        op(
            2,
            20,
            Some(30),
            put("b", PutMode::Create),
            Output::Exists(r(2)),
        ),
    ]);
}

#[test]
fn a_key_that_vanishes_without_an_expiry_is_a_violation() {
    assert_violation(vec![
        op(1, 0, Some(10), put_ttl("a"), Output::Written(r(1))),
        op(2, 500, Some(510), Input::Get, Output::Value(None)),
    ]);
}

#[test]
fn a_read_of_an_unknown_write_at_an_old_revision_is_a_violation() {
    assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Overwrite),
            Output::Written(r(4)),
        ),
        op(2, 20, None, put("b", PutMode::Overwrite), Output::Unknown),
        op(3, 100, Some(110), Input::Get, read("b", 3)),
    ]);
}

#[test]
fn a_read_of_a_value_never_written_is_a_violation() {
    assert_violation(vec![
        op(
            1,
            0,
            Some(10),
            put("a", PutMode::Overwrite),
            Output::Written(r(1)),
        ),
        op(2, 5, Some(30), Input::Get, read("z", 1)),
    ]);
}

#[test]
fn a_history_checks_the_same_after_a_save_and_a_load() {
    let mut rng = Rng::new(9);
    let mut history = synthetic(&Synthetic {
        operations: 500,
        checks: 0.1,
        seed: 9,
        ..Synthetic::default()
    });
    assert!(corrupt_one_read(&mut history, &mut rng));
    let path =
        std::env::temp_dir().join(format!("swarmstate-check-{}.history", std::process::id()));
    history.save(&path).unwrap();
    let loaded = History::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded, history);
    assert!(check(&loaded, LIMIT).verdict.is_violation());
}

#[test]
fn a_search_out_of_time_is_unknown_never_ok() {
    let history = synthetic(&Synthetic {
        operations: 20_000,
        keys: 1,
        overlap: 2_000,
        ..Synthetic::default()
    });
    let checked = check(&history, Duration::ZERO);
    assert!(matches!(checked.verdict, Verdict::Unknown(_)), "{checked}");
}

#[test]
fn synthetic_histories_pass_and_fail_once_a_read_is_corrupted() {
    for seed in 0..40 {
        let shape = Synthetic {
            operations: 1500,
            keys: 1 + (seed as usize % 20),
            overlap: 100 + 50 * (seed % 8),
            ambiguous: 0.02,
            expiries: 0.03,
            // Every other seed with transaction checks among the reads and writes.
            checks: if seed % 2 == 0 { 0.0 } else { 0.15 },
            seed,
        };
        let mut history = synthetic(&shape);
        let checked = check(&history, LIMIT);
        assert!(checked.verdict.is_ok(), "seed {seed}: {checked}");
        let mut rng = Rng::new(seed);
        assert!(corrupt_one_read(&mut history, &mut rng));
        let checked = check(&history, LIMIT);
        assert!(checked.verdict.is_violation(), "seed {seed}: {checked}");
    }
}
