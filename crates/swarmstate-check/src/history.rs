//! A recorded history: what each client asked, when, and what it was told. Saved as a small
//! line format so a failing run can be checked again later.
//!
//! Times are nanoseconds on one monotonic clock, counted from the start of the recording; they
//! are never compared with another process's clock. An operation whose outcome is unknown (an
//! ambiguous answer or a time-out) has no return time: it may take effect at any point after
//! its call, or never.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use swarmstate_core::{Condition, PutMode, Revision};

/// The first line of a saved history.
const HEADER: &str = "# swarmstate history v1";
/// A line that marks a history whose record of expiries may have gaps.
const EXPIRIES_INCOMPLETE: &str = "# expiries incomplete";

/// What a client asked of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Read the key.
    Get,
    /// Write a value under a mode.
    Put {
        /// The value written.
        value: Bytes,
        /// Overwrite, create, or update at a revision.
        mode: PutMode,
        /// The write's time to live, kept for the record; the model learns of an expiry only
        /// through [`Input::Expire`].
        ttl: Option<Duration>,
    },
    /// Delete the key, optionally only at a revision.
    Delete {
        /// The revision the key must be at.
        expected: Option<Revision>,
    },
    /// Require a condition of the key without changing it: a transaction's
    /// [`Check`](swarmstate_core::TxnAction::Check) (or its delete conditioned on absence, which
    /// changes nothing either). It observes the key's revision or absence, not its value.
    Check {
        /// What the key's state must be.
        condition: Condition,
    },
    /// The store expired the entry written at `written`; the expiry itself got `revision`.
    /// Observed by a watcher, not asked by a client. With an unknown outcome (and no
    /// `revision`) it stands for an expiry the watcher may have missed.
    Expire {
        /// The revision of the write that expired.
        written: Revision,
        /// The revision of the expiry, when it was seen.
        revision: Option<Revision>,
    },
    /// An expiry the watcher may have missed, always with an unknown outcome, of the entry
    /// holding `value`, written by a TTL write whose own outcome is unknown (so no revision
    /// names it). Values are unique per write in a recorded workload, so the value names the
    /// write; a history that repeats a value lets this expire any entry holding it.
    ExpireOf {
        /// The value the expiring write wrote.
        value: Bytes,
    },
}

/// What a client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A get's answer: the value and its revision, or `None` when the key was absent.
    Value(Option<(Bytes, Revision)>),
    /// A put applied at this revision.
    Written(Revision),
    /// A delete applied at this revision, or (`None`) found the key absent and changed nothing.
    Deleted(Option<Revision>),
    /// A create (or a check for absence) found the key present at this revision.
    Exists(Revision),
    /// A conditional write (or a check at a revision) found the key at another revision, or
    /// (`None`) absent.
    Mismatch(Option<Revision>),
    /// A check's condition held.
    Checked,
    /// An expiry happened.
    Expired,
    /// The outcome is unknown: the operation may or may not have applied.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it. A client that saw an unknown outcome continues under a new
    /// id, so every client's operations are sequential.
    pub client: u64,
    /// When the call was made, in nanoseconds since the recording started.
    pub call: u64,
    /// When the answer came back; `None` when it never did (the outcome is unknown).
    pub ret: Option<u64>,
    /// The key.
    pub key: String,
    /// What was asked.
    pub input: Input,
    /// What was answered.
    pub output: Output,
}

impl Operation {
    /// Whether the operation may or may not have taken effect.
    pub fn is_ambiguous(&self) -> bool {
        self.ret.is_none() || self.output == Output::Unknown
    }
}

/// A recorded history of operations over any number of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The operations, in any order.
    pub operations: Vec<Operation>,
    /// Whether the recorder's watcher lost events it could not replay, so that some expiries
    /// may be missing. The recorder then adds a possible expiry (with an unknown outcome) for
    /// every TTL write whose expiry it did not see: [`Input::Expire`] for an acknowledged one,
    /// [`Input::ExpireOf`] for one whose own outcome is unknown.
    pub expiries_incomplete: bool,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Adds an operation.
    pub fn push(&mut self, operation: Operation) {
        self.operations.push(operation);
    }

    /// Writes the history to `path` in the line format [`History::load`] reads.
    pub fn save(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let mut out = io::BufWriter::new(fs::File::create(path)?);
        out.write_all(self.to_string().as_bytes())?;
        out.flush()
    }

    /// Reads a history saved by [`History::save`].
    ///
    /// Errors: the file's I/O errors, and [`io::ErrorKind::InvalidData`] naming the first line
    /// that is not a well-formed operation.
    pub fn load(path: impl AsRef<Path>) -> io::Result<History> {
        let file = io::BufReader::new(fs::File::open(path)?);
        let mut history = History::new();
        for (number, line) in file.lines().enumerate() {
            let line = line?;
            let line = line.trim();
            if line == EXPIRIES_INCOMPLETE {
                history.expiries_incomplete = true;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let operation = parse_operation(line).map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line {}: {why}: {line:?}", number + 1),
                )
            })?;
            history.push(operation);
        }
        Ok(history)
    }
}

/// The line format: a header, then one operation per line as
/// `client call ret key input output`, where `ret` is `-` for an unknown outcome, values are
/// hex, and `-` stands for "none".
impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{HEADER}")?;
        writeln!(f, "# client call_ns return_ns key input output")?;
        if self.expiries_incomplete {
            writeln!(f, "{EXPIRIES_INCOMPLETE}")?;
        }
        for op in &self.operations {
            let ret = op.ret.map_or_else(|| "-".to_owned(), |ret| ret.to_string());
            writeln!(
                f,
                "{} {} {} {} {} {}",
                op.client,
                op.call,
                ret,
                op.key,
                encode_input(&op.input),
                encode_output(&op.output)
            )?;
        }
        Ok(())
    }
}

fn encode_input(input: &Input) -> String {
    match input {
        Input::Get => "get".to_owned(),
        Input::Put { value, mode, ttl } => {
            let mode = match mode {
                PutMode::Overwrite => "overwrite".to_owned(),
                PutMode::Create => "create".to_owned(),
                PutMode::Update(revision) => format!("update={revision}"),
            };
            let ttl = ttl.map_or_else(|| "-".to_owned(), |ttl| ttl.as_nanos().to_string());
            format!("put:{mode}:{ttl}:{}", hex(value))
        }
        Input::Delete { expected } => format!("delete:{}", optional(*expected)),
        Input::Check { condition } => match condition {
            Condition::Any => "check:any".to_owned(),
            Condition::Absent => "check:absent".to_owned(),
            Condition::At(revision) => format!("check:at={revision}"),
        },
        Input::Expire { written, revision } => format!("expire:{written}:{}", optional(*revision)),
        Input::ExpireOf { value } => format!("expire-of:{}", hex(value)),
    }
}

fn encode_output(output: &Output) -> String {
    match output {
        Output::Value(None) => "value:-".to_owned(),
        Output::Value(Some((value, revision))) => format!("value:{revision}:{}", hex(value)),
        Output::Written(revision) => format!("written:{revision}"),
        Output::Deleted(revision) => format!("deleted:{}", optional(*revision)),
        Output::Exists(revision) => format!("exists:{revision}"),
        Output::Mismatch(actual) => format!("mismatch:{}", optional(*actual)),
        Output::Checked => "checked".to_owned(),
        Output::Expired => "expired".to_owned(),
        Output::Unknown => "unknown".to_owned(),
    }
}

fn optional(revision: Option<Revision>) -> String {
    revision.map_or_else(|| "-".to_owned(), |revision| revision.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_operation(line: &str) -> Result<Operation, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [client, call, ret, key, input, output] = fields[..] else {
        return Err(format!("expected 6 fields, found {}", fields.len()));
    };
    Ok(Operation {
        client: number(client)?,
        call: number(call)?,
        ret: if ret == "-" { None } else { Some(number(ret)?) },
        key: key.to_owned(),
        input: parse_input(input)?,
        output: parse_output(output)?,
    })
}

fn parse_input(text: &str) -> Result<Input, String> {
    let parts: Vec<&str> = text.split(':').collect();
    match parts[..] {
        ["get"] => Ok(Input::Get),
        ["put", mode, ttl, value] => {
            let mode = match mode {
                "overwrite" => PutMode::Overwrite,
                "create" => PutMode::Create,
                _ => match mode.strip_prefix("update=") {
                    Some(revision) => PutMode::Update(parse_revision(revision)?),
                    None => return Err(format!("unknown put mode {mode:?}")),
                },
            };
            let ttl = match ttl {
                "-" => None,
                nanos => Some(Duration::from_nanos(number(nanos)?)),
            };
            Ok(Input::Put {
                value: unhex(value)?,
                mode,
                ttl,
            })
        }
        ["delete", expected] => Ok(Input::Delete {
            expected: parse_optional(expected)?,
        }),
        ["check", "any"] => Ok(Input::Check {
            condition: Condition::Any,
        }),
        ["check", "absent"] => Ok(Input::Check {
            condition: Condition::Absent,
        }),
        ["check", at] => match at.strip_prefix("at=") {
            Some(revision) => Ok(Input::Check {
                condition: Condition::At(parse_revision(revision)?),
            }),
            None => Err(format!("unknown check condition {at:?}")),
        },
        ["expire", written, revision] => Ok(Input::Expire {
            written: parse_revision(written)?,
            revision: parse_optional(revision)?,
        }),
        ["expire-of", value] => Ok(Input::ExpireOf {
            value: unhex(value)?,
        }),
        _ => Err(format!("unknown input {text:?}")),
    }
}

fn parse_output(text: &str) -> Result<Output, String> {
    let parts: Vec<&str> = text.split(':').collect();
    match parts[..] {
        ["value", "-"] => Ok(Output::Value(None)),
        ["value", revision, value] => Ok(Output::Value(Some((
            unhex(value)?,
            parse_revision(revision)?,
        )))),
        ["written", revision] => Ok(Output::Written(parse_revision(revision)?)),
        ["deleted", revision] => Ok(Output::Deleted(parse_optional(revision)?)),
        ["exists", revision] => Ok(Output::Exists(parse_revision(revision)?)),
        ["mismatch", actual] => Ok(Output::Mismatch(parse_optional(actual)?)),
        ["checked"] => Ok(Output::Checked),
        ["expired"] => Ok(Output::Expired),
        ["unknown"] => Ok(Output::Unknown),
        _ => Err(format!("unknown output {text:?}")),
    }
}

fn number(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a whole number"))
}

fn parse_revision(text: &str) -> Result<Revision, String> {
    Revision::new(number(text)?).ok_or_else(|| "0 is never a revision".to_owned())
}

fn parse_optional(text: &str) -> Result<Option<Revision>, String> {
    if text == "-" {
        Ok(None)
    } else {
        parse_revision(text).map(Some)
    }
}

fn unhex(text: &str) -> Result<Bytes, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {text:?}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|at| {
            u8::from_str_radix(&text[at..at + 2], 16).map_err(|_| format!("bad hex {text:?}"))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(n: u64) -> Revision {
        Revision::new(n).unwrap()
    }

    #[test]
    fn a_saved_history_loads_back_unchanged() {
        let mut history = History::new();
        let inputs = [
            Input::Get,
            Input::Put {
                value: Bytes::from_static(b"v\x00 1"),
                mode: PutMode::Update(revision(3)),
                ttl: Some(Duration::from_millis(1500)),
            },
            Input::Put {
                value: Bytes::new(),
                mode: PutMode::Create,
                ttl: None,
            },
            Input::Delete {
                expected: Some(revision(4)),
            },
            Input::Delete { expected: None },
            Input::Expire {
                written: revision(5),
                revision: Some(revision(6)),
            },
            Input::Expire {
                written: revision(5),
                revision: None,
            },
            Input::ExpireOf {
                value: Bytes::from_static(b"c1-7"),
            },
            Input::Check {
                condition: Condition::Any,
            },
            Input::Check {
                condition: Condition::Absent,
            },
            Input::Check {
                condition: Condition::At(revision(11)),
            },
        ];
        let outputs = [
            Output::Value(None),
            Output::Value(Some((Bytes::from_static(b"x"), revision(2)))),
            Output::Written(revision(7)),
            Output::Deleted(None),
            Output::Deleted(Some(revision(8))),
            Output::Exists(revision(9)),
            Output::Mismatch(None),
            Output::Mismatch(Some(revision(10))),
            Output::Checked,
            Output::Expired,
            Output::Unknown,
        ];
        for (n, input) in inputs.iter().enumerate() {
            for output in &outputs {
                history.push(Operation {
                    client: n as u64,
                    call: 10 * n as u64,
                    ret: (n % 2 == 0).then_some(10 * n as u64 + 5),
                    key: format!("k.{n}"),
                    input: input.clone(),
                    output: output.clone(),
                });
            }
        }
        history.expiries_incomplete = true;
        let dir = std::env::temp_dir().join(format!("swarmstate-history-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("roundtrip.history");
        history.save(&path).unwrap();
        let loaded = History::load(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(loaded, history);
    }

    #[test]
    fn a_malformed_line_is_refused_with_its_number() {
        let dir = std::env::temp_dir().join(format!("swarmstate-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.history");
        fs::write(
            &path,
            format!("{HEADER}\n1 2 3 k get value:-\n1 2 3 k get value:zz\n"),
        )
        .unwrap();
        let err = History::load(&path).unwrap_err();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("line 3"), "{err}");
    }
}
