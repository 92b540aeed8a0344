//! The sequential model one key must behave like: a register holding a value and the revision
//! that wrote it, or nothing and the revision that removed it.
//!
//! Revisions are store-wide and strictly increasing, so every change to a key must carry a
//! revision above the key's current one. An operation whose outcome is unknown is optional to
//! the checker (left out, it did not apply); the model only says what happens if it applied:
//! its revision is unknown, so the register then knows only a lower bound, which a later read
//! of that revision makes exact again.

use swarmstate_core::{Condition, PutMode};

/// A value, interned per key so that model states are small and cheap to hash.
pub(crate) type ValueId = u32;

/// The state of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Register {
    /// The value, or `None` when the key is absent.
    pub(crate) value: Option<ValueId>,
    /// Invariant: when `exact`, the key's current revision (of the write that produced the
    /// value, or of the change that removed it; 0 before any change). Otherwise the current
    /// revision is unknown but strictly above this one.
    pub(crate) revision: u64,
    pub(crate) exact: bool,
}

impl Register {
    /// A key that has never been written.
    pub(crate) const INITIAL: Register = Register {
        value: None,
        revision: 0,
        exact: true,
    };

    /// This state if the key's revision can be `revision`, made exact.
    fn at(self, revision: u64) -> Option<Register> {
        let possible = if self.exact {
            self.revision == revision
        } else {
            revision > self.revision
        };
        possible.then_some(Register {
            revision,
            exact: true,
            ..self
        })
    }

    /// The state after a change at `revision` left `value`, if `revision` can follow this one.
    fn changed(self, value: Option<ValueId>, revision: u64) -> Option<Register> {
        (revision > self.revision).then_some(Register {
            value,
            revision,
            exact: true,
        })
    }

    /// The state after a change at an unknown revision left `value`.
    fn changed_unknown(self, value: Option<ValueId>) -> Register {
        Register {
            value,
            revision: self.revision,
            exact: false,
        }
    }
}

/// An operation's input with its value interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepInput {
    Get,
    Put {
        value: ValueId,
        mode: PutMode,
    },
    Delete {
        expected: Option<u64>,
    },
    Check {
        condition: Condition,
    },
    /// `revision` is 0 for an expiry that may have been missed.
    Expire {
        written: u64,
        revision: u64,
    },
    /// A possible expiry of the entry holding `value` (see `Input::ExpireOf`).
    ExpireOf {
        value: ValueId,
    },
}

/// An operation's output with its value interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepOutput {
    Value(Option<(ValueId, u64)>),
    Written(u64),
    Deleted(Option<u64>),
    Exists(u64),
    Mismatch(Option<u64>),
    Checked,
    Expired,
    Unknown,
}

/// The state an operation leads to from `state`, or `None` when its output cannot be
/// explained there. For an operation whose outcome is unknown: the state if it applied.
pub(crate) fn step(state: Register, input: StepInput, output: StepOutput) -> Option<Register> {
    use StepInput as I;
    use StepOutput as O;
    match (input, output) {
        (I::Get, O::Value(None)) => state.value.is_none().then_some(state),
        (I::Get, O::Value(Some((value, revision)))) => {
            (state.value == Some(value)).then_some(())?;
            state.at(revision)
        }
        (I::Get, O::Unknown) => Some(state),
        (I::Put { value, mode }, O::Written(revision)) => {
            precondition(state, mode)?.changed(Some(value), revision)
        }
        (I::Put { value, mode }, O::Unknown) => {
            Some(precondition(state, mode)?.changed_unknown(Some(value)))
        }
        (
            I::Put {
                mode: PutMode::Create,
                ..
            },
            O::Exists(revision),
        ) => {
            state.value?;
            state.at(revision)
        }
        (
            I::Put {
                mode: PutMode::Update(expected),
                ..
            },
            O::Mismatch(actual),
        ) => mismatch(state, expected.get(), actual),
        (
            I::Delete {
                expected: Some(expected),
            },
            O::Mismatch(actual),
        ) => mismatch(state, expected, actual),
        (I::Delete { expected }, O::Deleted(Some(revision))) => {
            present_at(state, expected)?.changed(None, revision)
        }
        (I::Delete { expected: None }, O::Deleted(None)) => state.value.is_none().then_some(state),
        (I::Delete { expected }, O::Unknown) => {
            Some(present_at(state, expected)?.changed_unknown(None))
        }
        (I::Check { condition }, O::Checked) => match condition {
            Condition::Any => Some(state),
            Condition::Absent => state.value.is_none().then_some(state),
            Condition::At(expected) => present_at(state, Some(expected.get())),
        },
        (
            I::Check {
                condition: Condition::At(expected),
            },
            O::Mismatch(actual),
        ) => mismatch(state, expected.get(), actual),
        (
            I::Check {
                condition: Condition::Absent,
            },
            O::Exists(revision),
        ) => {
            state.value?;
            state.at(revision)
        }
        // A check changes nothing, applied or not.
        (I::Check { .. }, O::Unknown) => Some(state),
        (I::Expire { written, revision }, O::Expired) => {
            present_at(state, Some(written))?.changed(None, revision)
        }
        (I::Expire { written, .. }, O::Unknown) => {
            Some(present_at(state, Some(written))?.changed_unknown(None))
        }
        (I::ExpireOf { value }, O::Unknown) => {
            (state.value == Some(value)).then_some(state.changed_unknown(None))
        }
        _ => None,
    }
}

/// The state refined by what a put's mode requires, if the put can apply from `state`.
fn precondition(state: Register, mode: PutMode) -> Option<Register> {
    match mode {
        PutMode::Overwrite => Some(state),
        PutMode::Create => state.value.is_none().then_some(state),
        PutMode::Update(expected) => present_at(state, Some(expected.get())),
    }
}

/// The state refined to `expected`, if the key is present (and at `expected`, if given).
fn present_at(state: Register, expected: Option<u64>) -> Option<Register> {
    state.value?;
    match expected {
        Some(expected) => state.at(expected),
        None => Some(state),
    }
}

/// Whether a conditional operation expecting `expected` can have found `actual`.
fn mismatch(state: Register, expected: u64, actual: Option<u64>) -> Option<Register> {
    match actual {
        None => state.value.is_none().then_some(state),
        Some(actual) if actual == expected => None,
        Some(actual) => state.value.and(state.at(actual)),
    }
}

#[cfg(test)]
mod tests {
    use swarmstate_core::Revision;

    use super::*;

    fn present(value: ValueId, revision: u64) -> Register {
        Register {
            value: Some(value),
            revision,
            exact: true,
        }
    }

    fn only(next: Option<Register>) -> Option<Register> {
        next
    }

    fn put(value: ValueId, mode: PutMode) -> StepInput {
        StepInput::Put { value, mode }
    }

    fn update(revision: u64) -> PutMode {
        PutMode::Update(Revision::new(revision).unwrap())
    }

    #[test]
    fn a_put_needs_a_revision_above_the_current_one() {
        let state = present(1, 5);
        assert_eq!(
            only(step(
                state,
                put(2, PutMode::Overwrite),
                StepOutput::Written(7)
            )),
            Some(present(2, 7))
        );
        assert_eq!(
            only(step(
                state,
                put(2, PutMode::Overwrite),
                StepOutput::Written(5)
            )),
            None
        );
    }

    #[test]
    fn create_and_update_follow_the_register() {
        let absent = Register::INITIAL;
        assert!(
            only(step(
                absent,
                put(1, PutMode::Create),
                StepOutput::Written(1)
            ))
            .is_some()
        );
        assert!(
            only(step(
                present(1, 1),
                put(2, PutMode::Create),
                StepOutput::Written(2)
            ))
            .is_none()
        );
        assert!(
            only(step(
                present(1, 1),
                put(2, PutMode::Create),
                StepOutput::Exists(1)
            ))
            .is_some()
        );
        assert!(only(step(absent, put(2, PutMode::Create), StepOutput::Exists(1))).is_none());
        assert!(
            only(step(
                present(1, 3),
                put(2, update(3)),
                StepOutput::Written(4)
            ))
            .is_some()
        );
        assert!(
            only(step(
                present(1, 3),
                put(2, update(2)),
                StepOutput::Written(4)
            ))
            .is_none()
        );
        assert!(
            only(step(
                present(1, 3),
                put(2, update(2)),
                StepOutput::Mismatch(Some(3))
            ))
            .is_some()
        );
        assert!(
            only(step(
                present(1, 3),
                put(2, update(3)),
                StepOutput::Mismatch(Some(3))
            ))
            .is_none()
        );
        assert!(only(step(absent, put(2, update(3)), StepOutput::Mismatch(None))).is_some());
        assert!(
            only(step(
                present(1, 3),
                put(2, update(2)),
                StepOutput::Mismatch(None)
            ))
            .is_none()
        );
    }

    #[test]
    fn deletes_and_expiries_need_the_key_present() {
        let delete = |expected| StepInput::Delete { expected };
        assert_eq!(
            only(step(
                present(1, 3),
                delete(None),
                StepOutput::Deleted(Some(4))
            )),
            Some(Register {
                value: None,
                revision: 4,
                exact: true
            })
        );
        assert!(
            only(step(
                Register::INITIAL,
                delete(None),
                StepOutput::Deleted(Some(4))
            ))
            .is_none()
        );
        assert!(
            only(step(
                Register::INITIAL,
                delete(None),
                StepOutput::Deleted(None)
            ))
            .is_some()
        );
        assert!(
            only(step(
                present(1, 3),
                delete(Some(3)),
                StepOutput::Deleted(Some(5))
            ))
            .is_some()
        );
        assert!(
            only(step(
                present(1, 3),
                delete(Some(2)),
                StepOutput::Deleted(Some(5))
            ))
            .is_none()
        );
        let expire = |written| StepInput::Expire {
            written,
            revision: 9,
        };
        assert!(only(step(present(1, 3), expire(3), StepOutput::Expired)).is_some());
        assert!(only(step(present(1, 4), expire(3), StepOutput::Expired)).is_none());
        assert!(only(step(Register::INITIAL, expire(3), StepOutput::Expired)).is_none());
    }

    #[test]
    fn a_possible_expiry_of_a_value_needs_that_value_and_leaves_the_revision_unknown() {
        let expire_of = |value| StepInput::ExpireOf { value };
        let after = step(present(1, 3), expire_of(1), StepOutput::Unknown).unwrap();
        assert_eq!(after.value, None);
        assert!(!after.exact);
        // A later change must still come after the expired write.
        assert!(after.at(3).is_none());
        assert!(after.at(4).is_some());
        assert_eq!(step(present(2, 3), expire_of(1), StepOutput::Unknown), None);
        assert_eq!(
            step(Register::INITIAL, expire_of(1), StepOutput::Unknown),
            None
        );
        assert_eq!(step(present(1, 3), expire_of(1), StepOutput::Expired), None);
    }

    #[test]
    fn a_check_observes_the_revision_or_the_absence_and_changes_nothing() {
        let check = |condition| StepInput::Check { condition };
        let at = |revision| Condition::At(Revision::new(revision).unwrap());
        assert_eq!(
            step(present(1, 3), check(at(3)), StepOutput::Checked),
            Some(present(1, 3))
        );
        assert_eq!(step(present(1, 3), check(at(2)), StepOutput::Checked), None);
        assert_eq!(
            step(Register::INITIAL, check(at(3)), StepOutput::Checked),
            None
        );
        assert_eq!(
            step(
                Register::INITIAL,
                check(Condition::Absent),
                StepOutput::Checked
            ),
            Some(Register::INITIAL)
        );
        assert_eq!(
            step(present(1, 3), check(Condition::Absent), StepOutput::Checked),
            None
        );
        assert_eq!(
            step(
                present(1, 3),
                check(Condition::Absent),
                StepOutput::Exists(3)
            ),
            Some(present(1, 3))
        );
        assert_eq!(
            step(
                present(1, 3),
                check(Condition::Absent),
                StepOutput::Exists(4)
            ),
            None
        );
        assert_eq!(
            step(present(1, 3), check(at(2)), StepOutput::Mismatch(Some(3))),
            Some(present(1, 3))
        );
        assert_eq!(
            step(present(1, 3), check(at(3)), StepOutput::Mismatch(Some(3))),
            None
        );
        assert_eq!(
            step(Register::INITIAL, check(at(2)), StepOutput::Mismatch(None)),
            Some(Register::INITIAL)
        );
        // After a change at an unknown revision, a check that held pins the revision down.
        let applied = step(
            present(1, 3),
            put(2, PutMode::Overwrite),
            StepOutput::Unknown,
        )
        .unwrap();
        assert_eq!(step(applied, check(at(3)), StepOutput::Checked), None);
        assert_eq!(
            step(applied, check(at(6)), StepOutput::Checked),
            Some(present(2, 6))
        );
    }

    #[test]
    fn an_unknown_put_may_apply_at_an_unknown_revision_that_a_read_pins_down() {
        let applied = step(
            present(1, 3),
            put(2, PutMode::Overwrite),
            StepOutput::Unknown,
        )
        .unwrap();
        assert!(!applied.exact);
        assert!(
            only(step(
                applied,
                StepInput::Get,
                StepOutput::Value(Some((2, 3)))
            ))
            .is_none()
        );
        assert_eq!(
            only(step(
                applied,
                StepInput::Get,
                StepOutput::Value(Some((2, 8)))
            )),
            Some(present(2, 8))
        );
        // A create that cannot apply can only have not applied.
        assert_eq!(
            step(present(1, 3), put(2, PutMode::Create), StepOutput::Unknown),
            None
        );
    }
}
