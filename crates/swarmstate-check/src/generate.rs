//! Synthetic histories for testing and measuring the checker: a sequential execution against
//! a reference register, with each operation's interval stretched around its linearization
//! point so that operations overlap, and mutations that make a history wrong.

use std::collections::HashMap;

use bytes::Bytes;
use swarmstate_core::{Condition, PutMode, Revision};

use crate::history::{History, Input, Operation, Output};

/// A small, fast, seedable pseudo-random generator (SplitMix64). Not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// The shape of a synthetic history.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// How many operations (expiries included).
    pub operations: usize,
    /// Over how many keys.
    pub keys: usize,
    /// How far, in nanoseconds, an interval may stretch on each side of its linearization point;
    /// linearization points are 100 ns apart, so 300 lets about six operations overlap.
    pub overlap: u64,
    /// The share of writes whose outcome is recorded as unknown (half of them applied).
    pub ambiguous: f64,
    /// The share of operations that are expiries of a present key.
    pub expiries: f64,
    /// The share of the other operations that are checks (a transaction's condition on a key
    /// it does not write): of absence, or of a current or stale revision.
    pub checks: f64,
    /// The seed.
    pub seed: u64,
}

impl Default for Synthetic {
    fn default() -> Self {
        Synthetic {
            operations: 1000,
            keys: 10,
            overlap: 300,
            ambiguous: 0.02,
            expiries: 0.03,
            checks: 0.0,
            seed: 1,
        }
    }
}

/// The reference state of one key during generation.
#[derive(Default)]
struct Reference {
    value: Option<Bytes>,
    revision: u64,
    /// The call time of the write that produced the value.
    written_at: u64,
    /// Whether that write's outcome is unknown, so that a missed expiry names its value.
    written_unknown: bool,
}

/// A history that is linearizable by construction: each operation's outcome is what a
/// sequential register gives at its linearization point, and its interval contains that
/// point.
pub fn synthetic(shape: &Synthetic) -> History {
    let mut rng = Rng::new(shape.seed);
    let mut keys: HashMap<usize, Reference> = HashMap::new();
    let mut revision = 0u64;
    // Each client's last return time; a client with an unknown outcome never returns.
    let mut clients: Vec<u64> = Vec::new();
    let mut history = History::new();
    for i in 0..shape.operations {
        let t = 100 * (i as u64 + 1) + shape.overlap;
        let key_index = rng.below(shape.keys.max(1) as u64) as usize;
        let key = format!("k{key_index}");
        let state = keys.entry(key_index).or_default();
        let current = Revision::new(state.revision);
        let present = state.value.is_some();
        let roll = rng.below(100);
        if present && rng.chance(shape.expiries) {
            let written = current.unwrap();
            // Some expiries were missed by the watcher: recorded with an unknown outcome,
            // whether or not they happened.
            let missed = rng.chance(shape.ambiguous * 10.0);
            let happened = !missed || rng.chance(0.5);
            let expiry = happened.then(|| new_revision(&mut revision, &mut rng));
            history.push(Operation {
                client: u64::MAX - i as u64,
                call: state.written_at,
                ret: (!missed).then(|| t + rng.below(shape.overlap + 1)),
                key,
                input: match &state.value {
                    Some(value) if missed && state.written_unknown => Input::ExpireOf {
                        value: value.clone(),
                    },
                    _ => Input::Expire {
                        written,
                        revision: expiry.filter(|_| !missed),
                    },
                },
                output: if missed {
                    Output::Unknown
                } else {
                    Output::Expired
                },
            });
            if let Some(expiry) = expiry {
                *state = Reference {
                    value: None,
                    revision: expiry.get(),
                    written_at: 0,
                    written_unknown: false,
                };
            }
            continue;
        }
        let slot = match clients.iter().position(|&last| last < t - shape.overlap) {
            Some(slot) if rng.chance(0.9) => slot,
            _ => {
                clients.push(0);
                clients.len() - 1
            }
        };
        let earliest = clients[slot].max(t - shape.overlap - 1) + 1;
        let call = earliest + rng.below(t - earliest + 1);
        // A stale or a current revision to condition on.
        let expected = match current {
            Some(current) if rng.chance(0.7) => current,
            Some(current) => Revision::new(current.get().saturating_sub(1).max(1)).unwrap(),
            None => Revision::new(1 + rng.below(revision.max(1))).unwrap(),
        };
        let value = Bytes::from(format!("v{i}"));
        // Without checks, no random number is drawn for them, so older seeds give the same
        // histories.
        let is_check = shape.checks > 0.0 && rng.chance(shape.checks);
        let (input, applies, output): (Input, Option<Option<Bytes>>, Output) = match roll {
            _ if is_check => {
                let condition = if rng.chance(0.3) {
                    Condition::Absent
                } else {
                    Condition::At(expected)
                };
                let output = match condition {
                    Condition::Absent if present => Output::Exists(current.unwrap()),
                    Condition::At(expected) if !present || current != Some(expected) => {
                        Output::Mismatch(if present { current } else { None })
                    }
                    _ => Output::Checked,
                };
                (Input::Check { condition }, None, output)
            }
            0..35 => {
                let output =
                    Output::Value(state.value.clone().map(|value| (value, current.unwrap())));
                (Input::Get, None, output)
            }
            35..80 => {
                let mode = match roll {
                    35..50 => PutMode::Overwrite,
                    50..62 => PutMode::Create,
                    _ => PutMode::Update(expected),
                };
                let input = Input::Put {
                    value: value.clone(),
                    mode,
                    ttl: None,
                };
                match mode {
                    PutMode::Create if present => (input, None, Output::Exists(current.unwrap())),
                    PutMode::Update(expected) if current != Some(expected) || !present => {
                        let actual = if present { current } else { None };
                        (input, None, Output::Mismatch(actual))
                    }
                    _ => (input, Some(Some(value)), Output::Written(Revision::FIRST)),
                }
            }
            _ => {
                let conditional = rng.chance(0.5);
                let input = Input::Delete {
                    expected: conditional.then_some(expected),
                };
                if conditional && (!present || current != Some(expected)) {
                    let actual = if present { current } else { None };
                    (input, None, Output::Mismatch(actual))
                } else if !present {
                    (input, None, Output::Deleted(None))
                } else {
                    (input, Some(None), Output::Deleted(Some(Revision::FIRST)))
                }
            }
        };
        let is_write = matches!(input, Input::Put { .. } | Input::Delete { .. });
        let ambiguous = is_write && rng.chance(shape.ambiguous);
        let applied = match (&applies, ambiguous) {
            (Some(_), true) => rng.chance(0.5),
            (Some(_), false) => true,
            (None, _) => false,
        };
        let mut output = output;
        if applied {
            let change = new_revision(&mut revision, &mut rng);
            output = match output {
                Output::Written(_) => Output::Written(change),
                Output::Deleted(_) => Output::Deleted(Some(change)),
                other => other,
            };
            *state = Reference {
                value: applies.flatten(),
                revision: change.get(),
                written_at: call,
                written_unknown: ambiguous,
            };
        }
        let ret = if ambiguous {
            clients[slot] = u64::MAX;
            output = Output::Unknown;
            None
        } else {
            let ret = t + rng.below(shape.overlap + 1);
            clients[slot] = ret;
            Some(ret)
        };
        // A slot is one client; after an unknown outcome it is never free again, so the
        // client continues in a new slot, under a new id.
        history.push(Operation {
            client: slot as u64,
            call,
            ret,
            key,
            input,
            output,
        });
    }
    history
}

/// The next store-wide revision, with gaps.
fn new_revision(revision: &mut u64, rng: &mut Rng) -> Revision {
    *revision += 1 + rng.below(2);
    Revision::new(*revision).unwrap()
}

/// Replaces one read's answer with a value that was never written, which no order explains.
/// Returns false when the history has no read that saw a value or absence.
pub fn corrupt_one_read(history: &mut History, rng: &mut Rng) -> bool {
    let reads: Vec<usize> = reads(history);
    if reads.is_empty() {
        return false;
    }
    let at = reads[rng.below(reads.len() as u64) as usize];
    history.operations[at].output = Output::Value(Some((
        Bytes::from_static(b"never-written"),
        Revision::new(u64::MAX / 2).unwrap(),
    )));
    true
}

/// Replaces one read's answer with another read's answer on the same key (often a stale one),
/// which may or may not be explainable. Returns false when no key has two reads.
pub fn swap_one_read(history: &mut History, rng: &mut Rng) -> bool {
    let reads = reads(history);
    if reads.len() < 2 {
        return false;
    }
    for _ in 0..20 {
        let a = reads[rng.below(reads.len() as u64) as usize];
        let b = reads[rng.below(reads.len() as u64) as usize];
        let (first, second) = (&history.operations[a], &history.operations[b]);
        if a != b && first.key == second.key && first.output != second.output {
            history.operations[a].output = history.operations[b].output.clone();
            return true;
        }
    }
    false
}

fn reads(history: &History) -> Vec<usize> {
    history
        .operations
        .iter()
        .enumerate()
        .filter(|(_, op)| op.input == Input::Get && op.ret.is_some())
        .map(|(index, _)| index)
        .collect()
}
