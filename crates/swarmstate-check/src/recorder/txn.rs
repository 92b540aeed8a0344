//! What a transaction stands for on each key it touches, so that the per-key register model
//! can check it: its writes as puts and deletes, its conditions on keys it does not write as
//! checks, and a refusal as an observation of the one key it names.

use swarmstate_core::{Condition, Error, PutMode, Result, TxnAction, TxnOp, TxnResult};

use super::KeyOp;
use super::client::{Recorded, classify};
use crate::history::{Input, Output};

/// The per-key operation `op` stands for, or `None` for a check without a condition, which
/// asks nothing of its key.
fn input(op: &TxnOp) -> Option<Input> {
    match (&op.action, op.condition) {
        (TxnAction::Put { value, ttl }, condition) => Some(Input::Put {
            value: value.clone(),
            mode: match condition {
                Condition::Any => PutMode::Overwrite,
                Condition::Absent => PutMode::Create,
                Condition::At(revision) => PutMode::Update(revision),
            },
            ttl: *ttl,
        }),
        (TxnAction::Delete, Condition::Any) => Some(Input::Delete { expected: None }),
        (TxnAction::Delete, Condition::At(revision)) => Some(Input::Delete {
            expected: Some(revision),
        }),
        (TxnAction::Check, Condition::Any) => None,
        // Deleting a key that must be absent changes nothing: it only checks.
        (TxnAction::Check | TxnAction::Delete, condition) => Some(Input::Check { condition }),
    }
}

/// What a transaction leaves if its answer never comes: each write it would make, with an
/// unknown outcome. Checks change nothing, applied or not, so they leave nothing.
pub(super) fn unknown(ops: &[TxnOp]) -> Vec<KeyOp> {
    ops.iter()
        .filter_map(|op| {
            let input = input(op)?;
            matches!(input, Input::Put { .. } | Input::Delete { .. })
                .then(|| KeyOp::new(&op.key, input, Output::Unknown))
        })
        .collect()
}

/// What the answer `result` to the transaction `ops` says about each key.
pub(super) fn recorded(ops: &[TxnOp], result: &Result<Vec<TxnResult>>) -> Recorded {
    match result {
        Ok(results) if results.len() == ops.len() => Recorded::Answered(
            ops.iter()
                .zip(results)
                .filter_map(|(op, result)| {
                    let input = input(op)?;
                    let output = committed(&input, result);
                    Some(KeyOp::new(&op.key, input, output))
                })
                .collect(),
        ),
        // An answer that does not say which result is whose: what applied is not known.
        Ok(_) => Recorded::Unknown,
        Err(Error::AlreadyExists { key, revision }) => {
            refused(ops, key, Output::Exists(*revision), |condition| {
                condition == Condition::Absent
            })
        }
        Err(Error::RevisionMismatch { key, actual, .. }) => {
            refused(ops, key, Output::Mismatch(*actual), |condition| {
                matches!(condition, Condition::At(_))
            })
        }
        Err(err) => classify(err),
    }
}

/// One committed operation's answer. An answer of the wrong kind (a put answered as a
/// delete) is recorded as given, and no state of the register explains it.
fn committed(input: &Input, result: &TxnResult) -> Output {
    match (input, result) {
        (_, TxnResult::Put(revision)) => Output::Written(*revision),
        (_, TxnResult::Deleted(revision)) => Output::Deleted(Some(*revision)),
        (Input::Check { .. }, TxnResult::NotFound) | (_, TxnResult::Checked) => Output::Checked,
        (_, TxnResult::NotFound) => Output::Deleted(None),
    }
}

/// A refusal naming `key`: an observation of that key, whose condition was found not to hold
/// (`output` says how). `causes` says which conditions can be refused this way; a refusal that
/// names a key outside the transaction, or one whose condition cannot be refused so, is a
/// broken answer, and what applied is then not known.
fn refused(
    ops: &[TxnOp],
    key: &swarmstate_core::Key,
    output: Output,
    causes: impl Fn(Condition) -> bool,
) -> Recorded {
    let Some(op) = ops.iter().find(|op| &op.key == key) else {
        return Recorded::Unknown;
    };
    match input(op) {
        Some(input) if causes(op.condition) => {
            Recorded::Answered(vec![KeyOp::new(key, input, output)])
        }
        _ => Recorded::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use swarmstate_core::{Key, Revision};

    use super::*;

    fn r(n: u64) -> Revision {
        Revision::new(n).unwrap()
    }

    fn key(name: &str) -> Key {
        Key::new(name).unwrap()
    }

    fn answered(recorded: Recorded) -> Vec<(String, Input, Output)> {
        match recorded {
            Recorded::Answered(parts) => parts
                .into_iter()
                .map(|part| (part.key, part.input, part.output))
                .collect(),
            Recorded::Nothing => panic!("nothing recorded"),
            Recorded::Unknown => panic!("recorded as unknown"),
        }
    }

    /// A fenced put (a check of the lock, a put), a conditional delete, an unconditional one
    /// that found nothing, a delete of a key required absent, and a check without condition.
    fn ops() -> Vec<TxnOp> {
        vec![
            TxnOp::check(&key("lock"), Condition::At(r(4))),
            TxnOp::put(&key("data"), "v")
                .when(Condition::Absent)
                .ttl(Duration::from_secs(1)),
            TxnOp::delete(&key("old")).when(Condition::At(r(2))),
            TxnOp::delete(&key("gone")),
            TxnOp::delete(&key("never")).when(Condition::Absent),
            TxnOp::check(&key("any"), Condition::Any),
        ]
    }

    #[test]
    fn a_committed_transaction_is_each_write_at_its_revision_and_each_check_as_held() {
        let results = vec![
            TxnResult::Checked,
            TxnResult::Put(r(7)),
            TxnResult::Deleted(r(8)),
            TxnResult::NotFound,
            TxnResult::NotFound,
            TxnResult::Checked,
        ];
        let parts = answered(recorded(&ops(), &Ok(results)));
        assert_eq!(
            parts,
            vec![
                (
                    "lock".to_owned(),
                    Input::Check {
                        condition: Condition::At(r(4))
                    },
                    Output::Checked
                ),
                (
                    "data".to_owned(),
                    Input::Put {
                        value: Bytes::from_static(b"v"),
                        mode: PutMode::Create,
                        ttl: Some(Duration::from_secs(1))
                    },
                    Output::Written(r(7))
                ),
                (
                    "old".to_owned(),
                    Input::Delete {
                        expected: Some(r(2))
                    },
                    Output::Deleted(Some(r(8)))
                ),
                (
                    "gone".to_owned(),
                    Input::Delete { expected: None },
                    Output::Deleted(None)
                ),
                (
                    "never".to_owned(),
                    Input::Check {
                        condition: Condition::Absent
                    },
                    Output::Checked
                ),
            ]
        );
    }

    #[test]
    fn a_refused_transaction_is_an_observation_of_the_key_it_names_only() {
        let mismatch = Err(Error::RevisionMismatch {
            key: key("lock"),
            expected: r(4),
            actual: Some(r(6)),
        });
        assert_eq!(
            answered(recorded(&ops(), &mismatch)),
            vec![(
                "lock".to_owned(),
                Input::Check {
                    condition: Condition::At(r(4))
                },
                Output::Mismatch(Some(r(6)))
            )]
        );
        let exists = Err(Error::AlreadyExists {
            key: key("data"),
            revision: r(5),
        });
        assert_eq!(
            answered(recorded(&ops(), &exists)),
            vec![(
                "data".to_owned(),
                Input::Put {
                    value: Bytes::from_static(b"v"),
                    mode: PutMode::Create,
                    ttl: Some(Duration::from_secs(1))
                },
                Output::Exists(r(5))
            )]
        );
    }

    #[test]
    fn a_refusal_the_transaction_cannot_cause_is_an_unknown_outcome() {
        // `data` must be absent, so it cannot be refused as a revision mismatch; `elsewhere`
        // is not in the transaction.
        for error in [
            Error::RevisionMismatch {
                key: key("data"),
                expected: r(1),
                actual: Some(r(6)),
            },
            Error::AlreadyExists {
                key: key("elsewhere"),
                revision: r(5),
            },
        ] {
            assert!(matches!(recorded(&ops(), &Err(error)), Recorded::Unknown));
        }
        assert!(matches!(
            recorded(&ops(), &Ok(vec![TxnResult::Checked])),
            Recorded::Unknown
        ));
    }

    #[test]
    fn an_unknown_transaction_may_have_made_each_of_its_writes() {
        let parts: Vec<(String, Input)> = unknown(&ops())
            .into_iter()
            .map(|part| {
                assert_eq!(part.output, Output::Unknown);
                (part.key, part.input)
            })
            .collect();
        let keys: Vec<&str> = parts.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["data", "old", "gone"]);
        let ambiguous = Err(Error::Ambiguous {
            operation: "txn".into(),
            message: "no answer".into(),
        });
        assert!(matches!(recorded(&ops(), &ambiguous), Recorded::Unknown));
        let unavailable = Err(Error::Unavailable {
            message: "never sent".into(),
        });
        assert!(matches!(recorded(&ops(), &unavailable), Recorded::Nothing));
    }
}
