//! The linearizability checker: Wing & Gong's search with Lowe's memoisation, as porcupine
//! does it.
//!
//! A key-value store is linearizable exactly when each key is (linearizability is local), so
//! the history is split per key and each part is checked on its own. In a part, call and return
//! entries sit in time order in a doubly linked list. The search linearizes the earliest call
//! it can, lifting the call and its return out of the list; when it meets a return whose call
//! was not linearized it backtracks. A set of (linearized operations, model state) pairs it has
//! already explored cuts every branch that leads back to a known dead end.
//!
//! An operation whose outcome is unknown has no return entry: it may be linearized (applied)
//! anywhere after its call, or never, and the search succeeds once every other operation is
//! placed. Such operations would multiply the explored pairs (applied-then-overwritten and
//! never-applied reach the same state), so the memo keeps, per (definite operations placed,
//! state), the sets of unknown operations applied, and cuts a branch when an explored one
//! applied a subset of them: it had every option this one has. The search tries unknown
//! operations only after every definite candidate, so the branches that apply fewer of them
//! come first and cut the rest.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::fast::RandomState;
use swarmstate_core::Revision;

use crate::explain::{EXPLAIN_PLACED, Violation, explain};
use crate::history::{History, Input, Operation, Output};
use crate::model::{Register, StepInput, StepOutput, ValueId, step};

/// What the checker concluded.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Every key's operations can be placed in one order that respects real time and the model.
    Ok,
    /// Some key's operations cannot; the explanation says which and why.
    Violation(Box<Violation>),
    /// The time limit ran out (or expiries were missed) before a verdict: never read as `Ok`.
    Unknown(String),
}

impl Verdict {
    /// Whether the history was shown linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, Verdict::Ok)
    }

    /// Whether the history was shown not linearizable.
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::Violation(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Ok => write!(f, "OK: linearizable"),
            Verdict::Violation(violation) => write!(f, "VIOLATION: {violation}"),
            Verdict::Unknown(why) => write!(f, "UNKNOWN: {why}"),
        }
    }
}

/// How much was checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Operations in the history (expiries included).
    pub operations: usize,
    /// Operations whose outcome is unknown.
    pub ambiguous: usize,
    /// Expiries observed by the watcher (possible expiries it may have missed count as
    /// ambiguous).
    pub expiries: usize,
    /// Distinct keys.
    pub keys: usize,
    /// How long the check took.
    pub elapsed: Duration,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} operations ({} ambiguous, {} expiries) over {} keys, checked in {:.3?}",
            self.operations, self.ambiguous, self.expiries, self.keys, self.elapsed
        )
    }
}

/// A verdict with the counts behind it.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The verdict.
    pub verdict: Verdict,
    /// What was checked.
    pub counts: Counts,
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.counts)?;
        write!(f, "{}", self.verdict)
    }
}

/// Checks `history` for linearizability against the per-key register model, giving up after
/// `time_limit` with [`Verdict::Unknown`] (never `Ok`).
///
/// The model (see the crate docs): get, put (overwrite, create, update at a revision), delete
/// (optionally at a revision), checks (a condition on the key's revision or absence, from a
/// transaction), failed conditional writes and checks (explained by the state at their
/// linearization point), and expiries seen by a watcher. Revisions are store-wide, so every
/// change must carry a revision above the key's current one. Operations with an unknown
/// outcome may apply at any point after their call, or never. Every key is assumed absent when
/// the recording started.
///
/// Keys are checked one after the other; the first violation found is returned.
pub fn check(history: &History, time_limit: Duration) -> Checked {
    let started = Instant::now();
    let deadline = started + time_limit;
    let mut parts: HashMap<&str, Vec<&Operation>, RandomState> = HashMap::default();
    for op in &history.operations {
        parts.entry(op.key.as_str()).or_default().push(op);
    }
    let mut counts = Counts {
        operations: history.operations.len(),
        ambiguous: history
            .operations
            .iter()
            .filter(|op| op.is_ambiguous())
            .count(),
        expiries: history
            .operations
            .iter()
            .filter(|op| {
                matches!(
                    op.input,
                    Input::Expire {
                        revision: Some(_),
                        ..
                    }
                )
            })
            .count(),
        keys: parts.len(),
        elapsed: Duration::ZERO,
    };
    let mut keys: Vec<&str> = parts.keys().copied().collect();
    keys.sort_unstable();
    let mut verdict = Verdict::Ok;
    for key in keys {
        let ops = &parts[key];
        match check_key(ops, deadline) {
            KeyVerdict::Ok => {}
            KeyVerdict::Unknown => {
                verdict = Verdict::Unknown(format!(
                    "the time limit of {time_limit:?} ran out while checking key {key}"
                ));
                break;
            }
            KeyVerdict::Violation(violation) => {
                verdict = Verdict::Violation(violation);
                break;
            }
        }
    }
    counts.elapsed = started.elapsed();
    Checked { verdict, counts }
}

enum KeyVerdict {
    Ok,
    Violation(Box<Violation>),
    Unknown,
}

/// The list node of a call or return entry.
#[derive(Debug, Clone, Copy)]
struct Node {
    op: usize,
    /// The time of the call or return.
    time: u64,
    is_call: bool,
    /// For a call: its return's node.
    partner: usize,
    prev: usize,
    next: usize,
}

fn check_key(ops: &[&Operation], deadline: Instant) -> KeyVerdict {
    // Reads and checks with an unknown outcome say nothing and change nothing.
    let ops: Vec<&Operation> = ops
        .iter()
        .copied()
        .filter(|op| !(matches!(op.input, Input::Get | Input::Check { .. }) && op.is_ambiguous()))
        .collect();
    let (inputs, outputs) = intern(&ops);
    let n = ops.len();
    // Definite operations live in the linked list; unknown ones, which never return, in their
    // own list by call time. Each kind has its own bit numbering.
    let mut bit = vec![0; n];
    let mut definite = 0;
    let mut unknown: Vec<usize> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        if op.is_ambiguous() {
            unknown.push(index);
        } else {
            bit[index] = definite;
            definite += 1;
        }
    }
    unknown.sort_by_key(|&index| (ops[index].call, index));
    for (position, &index) in unknown.iter().enumerate() {
        bit[index] = position;
    }
    // Entries in time order; at equal times calls first, so touching intervals overlap.
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * definite);
    for (index, op) in ops.iter().enumerate() {
        if !op.is_ambiguous() {
            entries.push((op.call, true, index));
            entries.push((op.ret.unwrap_or(u64::MAX).max(op.call), false, index));
        }
    }
    entries.sort_unstable_by_key(|&(time, is_call, index)| (time, !is_call, index));
    let head = entries.len();
    let end = head + 1;
    let mut nodes: Vec<Node> = entries
        .iter()
        .enumerate()
        .map(|(at, &(time, is_call, op))| Node {
            op,
            time,
            is_call,
            partner: usize::MAX,
            prev: if at == 0 { head } else { at - 1 },
            next: if at + 1 == head { end } else { at + 1 },
        })
        .collect();
    let mut return_of = vec![usize::MAX; n];
    for (at, node) in nodes.iter().enumerate() {
        if !node.is_call {
            return_of[node.op] = at;
        }
    }
    for node in nodes.iter_mut() {
        if node.is_call {
            node.partner = return_of[node.op];
        }
    }
    let sentinel = |prev, next| Node {
        op: usize::MAX,
        time: u64::MAX,
        is_call: false,
        partner: usize::MAX,
        prev,
        next,
    };
    nodes.push(sentinel(usize::MAX, if head == 0 { end } else { 0 }));
    nodes.push(sentinel(head.checked_sub(1).unwrap_or(head), usize::MAX));

    let mut placed_definite = vec![0u64; definite.div_ceil(64)];
    let mut applied_unknown = vec![0u64; unknown.len().div_ceil(64)];
    let mut remaining = definite;
    let mut seen: Memo = HashMap::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = Register::INITIAL;
    let mut entry = nodes[head].next;
    // While `Some`, the search stands at the return entry `entry` (every definite candidate
    // before it tried) and tries unknown operations called before it, from this position.
    let mut unknown_cursor: Option<usize> = None;
    let mut best: Option<(usize, usize, Register, Vec<usize>)> = None;
    let mut steps: u64 = 0;

    while remaining > 0 {
        steps += 1;
        if steps.is_multiple_of(4096) && Instant::now() >= deadline {
            return KeyVerdict::Unknown;
        }
        let node = nodes[entry];
        let Some(cursor) = unknown_cursor else {
            if !node.is_call {
                unknown_cursor = Some(0);
                continue;
            }
            let op = node.op;
            if let Some(next_state) = step(state, inputs[op], outputs[op]) {
                set(&mut placed_definite, bit[op], true);
                if remember(&mut seen, &placed_definite, &applied_unknown, next_state) {
                    stack.push(Frame::Definite {
                        call: entry,
                        before: state,
                    });
                    state = next_state;
                    lift(&mut nodes, entry);
                    remaining -= 1;
                    entry = nodes[head].next;
                    continue;
                }
                set(&mut placed_definite, bit[op], false);
            }
            entry = node.next;
            continue;
        };
        // Unknown operations are tried only after every definite candidate, so that the
        // branches where they stay unapplied are explored first and dominate the others.
        let mut advanced = false;
        let mut position = cursor;
        while let Some(&op) = unknown.get(position) {
            if ops[op].call > node.time {
                break;
            }
            if !get(&applied_unknown, position)
                && let Some(next_state) = step(state, inputs[op], outputs[op])
            {
                set(&mut applied_unknown, position, true);
                if remember(&mut seen, &placed_definite, &applied_unknown, next_state) {
                    stack.push(Frame::Unknown {
                        position,
                        at: entry,
                        before: state,
                    });
                    state = next_state;
                    unknown_cursor = None;
                    entry = nodes[head].next;
                    advanced = true;
                    break;
                }
                set(&mut applied_unknown, position, false);
            }
            position += 1;
        }
        if advanced {
            continue;
        }
        // A dead end: the operation returning here cannot be placed.
        if best.as_ref().is_none_or(|(depth, ..)| stack.len() > *depth) {
            let placed = stack
                .iter()
                .rev()
                .take(EXPLAIN_PLACED)
                .rev()
                .map(|frame| match *frame {
                    Frame::Definite { call, .. } => nodes[call].op,
                    Frame::Unknown { position, .. } => unknown[position],
                })
                .collect();
            best = Some((stack.len(), node.op, state, placed));
        }
        match stack.pop() {
            None => return KeyVerdict::Violation(Box::new(explain(&ops, &inputs, best))),
            Some(Frame::Definite { call, before }) => {
                set(&mut placed_definite, bit[nodes[call].op], false);
                remaining += 1;
                state = before;
                unlift(&mut nodes, call);
                entry = nodes[call].next;
                unknown_cursor = None;
            }
            Some(Frame::Unknown {
                position,
                at,
                before,
            }) => {
                set(&mut applied_unknown, position, false);
                state = before;
                entry = at;
                unknown_cursor = Some(position + 1);
            }
        }
    }
    KeyVerdict::Ok
}

/// Explored configurations: per (definite operations placed, state), the sets of unknown
/// operations applied.
type Memo = HashMap<(Box<[u64]>, Register), Vec<Box<[u64]>>, RandomState>;

/// A step of the search, to undo on backtracking.
enum Frame {
    /// A definite operation was placed: its call node was lifted.
    Definite { call: usize, before: Register },
    /// The unknown operation at `position` was applied while standing at return entry `at`.
    Unknown {
        position: usize,
        at: usize,
        before: Register,
    },
}

fn get(bits: &[u64], index: usize) -> bool {
    bits[index / 64] & (1u64 << (index % 64)) != 0
}

/// Records a configuration about to be explored; false when it is dominated by one already
/// explored: the same definite operations placed and the same state, with a subset of the
/// unknown operations applied (so with every option this one has).
fn remember(seen: &mut Memo, definite: &[u64], unknown: &[u64], state: Register) -> bool {
    let applied_sets = seen.entry((definite.into(), state)).or_default();
    let dominated = applied_sets.iter().any(|explored| {
        explored
            .iter()
            .zip(unknown)
            .all(|(explored, now)| explored & !now == 0)
    });
    if dominated {
        return false;
    }
    applied_sets.push(unknown.into());
    true
}

fn set(bits: &mut [u64], index: usize, on: bool) {
    let mask = 1u64 << (index % 64);
    if on {
        bits[index / 64] |= mask;
    } else {
        bits[index / 64] &= !mask;
    }
}

/// Unlinks a call and its return.
fn lift(nodes: &mut [Node], call: usize) {
    let partner = nodes[call].partner;
    for at in [call, partner] {
        let Node { prev, next, .. } = nodes[at];
        nodes[prev].next = next;
        nodes[next].prev = prev;
    }
}

/// Links back a call and its return lifted by [`lift`], in the reverse order.
fn unlift(nodes: &mut [Node], call: usize) {
    let partner = nodes[call].partner;
    for at in [partner, call] {
        let Node { prev, next, .. } = nodes[at];
        nodes[prev].next = at;
        nodes[next].prev = at;
    }
}

/// The operations' inputs and outputs with values interned.
fn intern(ops: &[&Operation]) -> (Vec<StepInput>, Vec<StepOutput>) {
    let mut ids: HashMap<Bytes, ValueId, RandomState> = HashMap::default();
    let mut id_of = |value: &Bytes| -> ValueId {
        let next = ids.len() as ValueId;
        *ids.entry(value.clone()).or_insert(next)
    };
    let mut inputs = Vec::with_capacity(ops.len());
    let mut outputs = Vec::with_capacity(ops.len());
    for op in ops {
        inputs.push(match &op.input {
            Input::Get => StepInput::Get,
            Input::Put { value, mode, .. } => StepInput::Put {
                value: id_of(value),
                mode: *mode,
            },
            Input::Delete { expected } => StepInput::Delete {
                expected: expected.map(Revision::get),
            },
            Input::Check { condition } => StepInput::Check {
                condition: *condition,
            },
            Input::Expire { written, revision } => StepInput::Expire {
                written: written.get(),
                revision: revision.map_or(0, Revision::get),
            },
            Input::ExpireOf { value } => StepInput::ExpireOf {
                value: id_of(value),
            },
        });
        outputs.push(if op.is_ambiguous() {
            StepOutput::Unknown
        } else {
            match &op.output {
                Output::Value(None) => StepOutput::Value(None),
                Output::Value(Some((value, revision))) => {
                    StepOutput::Value(Some((id_of(value), revision.get())))
                }
                Output::Written(revision) => StepOutput::Written(revision.get()),
                Output::Deleted(revision) => StepOutput::Deleted(revision.map(Revision::get)),
                Output::Exists(revision) => StepOutput::Exists(revision.get()),
                Output::Mismatch(actual) => StepOutput::Mismatch(actual.map(Revision::get)),
                Output::Checked => StepOutput::Checked,
                Output::Expired => StepOutput::Expired,
                Output::Unknown => StepOutput::Unknown,
            }
        });
    }
    (inputs, outputs)
}
