//! Explanations of a violation: the longest order the search found, the state it left the key
//! in, and the operation that cannot follow, in words.

use std::collections::HashSet;
use std::fmt;

use swarmstate_core::{Condition, PutMode};

use crate::history::{Input, Operation, Output};
use crate::model::{Register, StepInput};

/// How many of the last placed operations an explanation shows.
pub(crate) const EXPLAIN_PLACED: usize = 6;
/// How many concurrent operations an explanation shows.
const EXPLAIN_CONCURRENT: usize = 8;

/// Why one key's history is not linearizable: the longest prefix the search could place, the
/// state it left the key in, and the operation that could not be placed after it.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// The operation whose answer came back before it could be placed.
    pub stuck: Operation,
    /// The last operations of the longest valid order found, oldest first.
    pub placed: Vec<Operation>,
    /// The key's state after them, in words (what the model allowed).
    pub state: String,
    /// Operations concurrent with `stuck` that had not been placed either.
    pub concurrent: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {} is not linearizable", self.key)?;
        writeln!(
            f,
            "  the longest valid order ends with ({} shown):",
            self.placed.len()
        )?;
        for op in &self.placed {
            writeln!(f, "    {}", Describe(op))?;
        }
        writeln!(f, "  after which the key is {}", self.state)?;
        writeln!(f, "  and this operation cannot be placed:")?;
        writeln!(f, "    {}", Describe(&self.stuck))?;
        if !self.concurrent.is_empty() {
            writeln!(f, "  nor can any of the operations concurrent with it:")?;
            for op in &self.concurrent {
                writeln!(f, "    {}", Describe(op))?;
            }
        }
        Ok(())
    }
}

/// An operation in words, for explanations.
struct Describe<'a>(&'a Operation);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0;
        let ret = op.ret.map_or_else(|| "never".to_owned(), millis);
        write!(f, "client {} [{} .. {}] ", op.client, millis(op.call), ret)?;
        match &op.input {
            Input::Get => write!(f, "get")?,
            Input::Put { value, mode, ttl } => {
                let mode = match mode {
                    PutMode::Overwrite => "overwrite".to_owned(),
                    PutMode::Create => "create".to_owned(),
                    PutMode::Update(revision) => format!("update at r{revision}"),
                };
                write!(f, "put {} ({mode}", text(value))?;
                if let Some(ttl) = ttl {
                    write!(f, ", ttl {ttl:?}")?;
                }
                write!(f, ")")?;
            }
            Input::Delete { expected: None } => write!(f, "delete")?,
            Input::Delete {
                expected: Some(revision),
            } => write!(f, "delete at r{revision}")?,
            Input::Check { condition } => match condition {
                Condition::Any => write!(f, "check")?,
                Condition::Absent => write!(f, "check absent")?,
                Condition::At(revision) => write!(f, "check at r{revision}")?,
            },
            Input::Expire {
                written,
                revision: Some(revision),
            } => write!(f, "expiry of r{written} (seen as r{revision})")?,
            Input::Expire {
                written,
                revision: None,
            } => write!(f, "possible expiry of r{written} (not seen)")?,
            Input::ExpireOf { value } => write!(
                f,
                "possible expiry of {} written at an unknown revision (not seen)",
                text(value)
            )?,
        }
        match &op.output {
            Output::Value(None) => write!(f, " -> absent"),
            Output::Value(Some((value, revision))) => {
                write!(f, " -> {} at r{revision}", text(value))
            }
            Output::Written(revision) => write!(f, " -> written at r{revision}"),
            Output::Deleted(None) => write!(f, " -> nothing to delete"),
            Output::Deleted(Some(revision)) => write!(f, " -> deleted at r{revision}"),
            Output::Exists(revision) => write!(f, " -> already exists at r{revision}"),
            Output::Mismatch(None) => write!(f, " -> mismatch, key absent"),
            Output::Mismatch(Some(revision)) => write!(f, " -> mismatch, key at r{revision}"),
            Output::Checked => write!(f, " -> held"),
            Output::Expired => Ok(()),
            Output::Unknown => write!(f, " -> outcome unknown"),
        }
    }
}

fn millis(nanos: u64) -> String {
    format!("{:.3}ms", nanos as f64 / 1e6)
}

fn text(value: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(value))
}

pub(crate) fn explain(
    ops: &[&Operation],
    inputs: &[StepInput],
    best: Option<(usize, usize, Register, Vec<usize>)>,
) -> Violation {
    let (_, stuck, state, placed) = best.expect("a dead end was recorded before giving up");
    let placed_set: HashSet<usize> = placed.iter().copied().collect();
    let stuck_op = ops[stuck];
    let stuck_ret = stuck_op.ret.unwrap_or(u64::MAX);
    let concurrent = ops
        .iter()
        .enumerate()
        .filter(|&(index, op)| {
            index != stuck && !placed_set.contains(&index) && op.call <= stuck_ret && {
                let ret = op.ret.unwrap_or(u64::MAX);
                ret >= stuck_op.call
            }
        })
        .take(EXPLAIN_CONCURRENT)
        .map(|(_, op)| (*op).clone())
        .collect();
    Violation {
        key: stuck_op.key.clone(),
        stuck: stuck_op.clone(),
        placed: placed.iter().map(|&index| ops[index].clone()).collect(),
        state: describe_state(state, ops, inputs),
        concurrent,
    }
}

/// The register in words, with the value spelled out.
fn describe_state(state: Register, ops: &[&Operation], inputs: &[StepInput]) -> String {
    let revision = if state.exact {
        format!("r{}", state.revision)
    } else {
        format!(
            "a revision above r{} (set by an operation whose outcome is unknown)",
            state.revision
        )
    };
    match state.value {
        None if state.revision == 0 => "absent (never written)".to_owned(),
        None => format!("absent since {revision}"),
        Some(id) => {
            let value = inputs
                .iter()
                .zip(ops)
                .find_map(|(input, op)| match (input, &op.input) {
                    (StepInput::Put { value, .. }, Input::Put { value: bytes, .. })
                        if *value == id =>
                    {
                        Some(text(bytes))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| "an unrecorded value".to_owned());
            format!("{value} at {revision}, so a get would return exactly that")
        }
    }
}
