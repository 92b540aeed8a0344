//! The oracle: `stateright`'s linearizability tester over a plainly written register.

use bytes::Bytes;
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};
use swarmstate_check::{History, Input, Output};
use swarmstate_core::{Condition, PutMode};

/// One key: its value and revision. After an operation with an unknown outcome applied, the
/// revision is unknown but above `revision` (`exact` false).
#[derive(Debug, Clone)]
pub(crate) struct Register {
    value: Option<Bytes>,
    revision: u64,
    exact: bool,
}

impl Default for Register {
    fn default() -> Self {
        Register {
            value: None,
            revision: 0,
            exact: true,
        }
    }
}

impl Register {
    fn could_be_at(&self, revision: u64) -> bool {
        if self.exact {
            self.revision == revision
        } else {
            revision > self.revision
        }
    }

    fn pin(&mut self, revision: u64) {
        self.revision = revision;
        self.exact = true;
    }

    /// A delete or expiry that removed the key at `revision`, if it can have.
    fn remove(&mut self, input: &Input, revision: u64) -> bool {
        match self.can_apply(input) {
            Some(above) if revision > above => {
                self.value = None;
                self.pin(revision);
                true
            }
            _ => false,
        }
    }

    /// Whether `input` can apply now, and the revision its change must exceed.
    fn can_apply(&self, input: &Input) -> Option<u64> {
        match input {
            Input::Put { mode, .. } => match mode {
                PutMode::Overwrite => Some(self.revision),
                PutMode::Create => self.value.is_none().then_some(self.revision),
                PutMode::Update(at) => {
                    (self.value.is_some() && self.could_be_at(at.get())).then_some(at.get())
                }
            },
            Input::Delete { expected } => match expected {
                _ if self.value.is_none() => None,
                None => Some(self.revision),
                Some(at) => self.could_be_at(at.get()).then_some(at.get()),
            },
            Input::Expire { written, .. } => {
                (self.value.is_some() && self.could_be_at(written.get())).then_some(written.get())
            }
            Input::ExpireOf { value } => {
                (self.value.as_ref() == Some(value)).then_some(self.revision)
            }
            Input::Get | Input::Check { .. } => None,
        }
    }
}

impl SequentialSpec for Register {
    type Op = Input;
    type Ret = Output;

    /// Only operations still in flight (outcome unknown) are invoked: they apply if they can,
    /// at a revision nobody was told.
    fn invoke(&mut self, input: &Input) -> Output {
        if let Some(above) = self.can_apply(input) {
            self.value = match input {
                Input::Put { value, .. } => Some(value.clone()),
                _ => None,
            };
            self.revision = above;
            self.exact = false;
        }
        Output::Unknown
    }

    fn is_valid_step(&mut self, input: &Input, output: &Output) -> bool {
        match (input, output) {
            (Input::Check { condition }, Output::Checked) => match condition {
                Condition::Any => true,
                Condition::Absent => self.value.is_none(),
                Condition::At(at) => {
                    let fits = self.value.is_some() && self.could_be_at(at.get());
                    if fits {
                        self.pin(at.get());
                    }
                    fits
                }
            },
            (Input::Get, Output::Value(None)) => self.value.is_none(),
            (Input::Get, Output::Value(Some((value, revision)))) => {
                let fits = self.value.as_ref() == Some(value) && self.could_be_at(revision.get());
                if fits {
                    self.pin(revision.get());
                }
                fits
            }
            (Input::Put { value, .. }, Output::Written(revision)) => match self.can_apply(input) {
                Some(above) if revision.get() > above => {
                    self.value = Some(value.clone());
                    self.pin(revision.get());
                    true
                }
                _ => false,
            },
            (Input::Delete { .. }, Output::Deleted(Some(revision))) => {
                self.remove(input, revision.get())
            }
            (
                Input::Expire {
                    revision: Some(revision),
                    ..
                },
                Output::Expired,
            ) => self.remove(input, revision.get()),
            (Input::Delete { expected: None }, Output::Deleted(None)) => self.value.is_none(),
            (
                Input::Put {
                    mode: PutMode::Create,
                    ..
                }
                | Input::Check {
                    condition: Condition::Absent,
                },
                Output::Exists(revision),
            ) => {
                let fits = self.value.is_some() && self.could_be_at(revision.get());
                if fits {
                    self.pin(revision.get());
                }
                fits
            }
            (
                Input::Put {
                    mode: PutMode::Update(expected),
                    ..
                }
                | Input::Delete {
                    expected: Some(expected),
                }
                | Input::Check {
                    condition: Condition::At(expected),
                },
                Output::Mismatch(actual),
            ) => match actual {
                None => self.value.is_none(),
                Some(actual) => {
                    let fits = actual != expected
                        && self.value.is_some()
                        && self.could_be_at(actual.get());
                    if fits {
                        self.pin(actual.get());
                    }
                    fits
                }
            },
            _ => false,
        }
    }
}

/// Whether the oracle finds `history` linearizable (it must be a single key's).
pub(crate) fn linearizable(history: &History) -> bool {
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    for (index, op) in history.operations.iter().enumerate() {
        events.push((op.call, true, index));
        if let Some(ret) = op.ret {
            events.push((ret, false, index));
        }
    }
    // Calls before returns at equal times, as the checker orders them.
    events.sort_by_key(|&(time, is_call, index)| (time, !is_call, index));
    let mut tester = LinearizabilityTester::new(Register::default());
    for (_, is_call, index) in events {
        let op = &history.operations[index];
        // Reads and checks in flight say nothing; the checker drops them too.
        if matches!(op.input, Input::Get | Input::Check { .. }) && op.ret.is_none() {
            continue;
        }
        if is_call {
            tester.on_invoke(op.client, op.input.clone()).unwrap();
        } else {
            tester.on_return(op.client, op.output.clone()).unwrap();
        }
    }
    tester.is_consistent()
}
