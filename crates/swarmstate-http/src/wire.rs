//! The HTTP API's wire format, shared by the server and the client: JSON bodies, header
//! names, how values, TTLs and revisions are written, and how an [`Error`] travels as an
//! `application/problem+json` document and comes back as the same variant.
//!
//! The format is described for people in `docs/http-api.md` and for tools by the OpenAPI
//! document the server serves at `/v1/openapi.json`.
//!
//! Requests are read strictly (an unknown field in a transaction is an error, never ignored);
//! answers are read leniently (a field or an event this version does not know is skipped), so
//! that a newer server can add to them without breaking older clients.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use swarmstate_core::{
    Capabilities, Condition, Entry, Error, ErrorKind, Key, Revision, TxnAction, TxnOp, TxnResult,
    WatchEvent,
};

/// The header carrying an idempotency key on a write.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header giving an entry's time left to live, in whole milliseconds (rounded down).
pub const EXPIRES_IN: &str = "swarmstate-expires-in-ms";
/// The media type of error bodies (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The page size of a listing when the request names none.
pub const DEFAULT_PAGE: usize = 1000;
/// The largest page a listing hands out at once.
pub const MAX_PAGE: usize = 10_000;

/// How a value is written in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The value is UTF-8 text, written as a JSON string as it is.
    #[default]
    Utf8,
    /// The value is arbitrary bytes, written as standard base64 with padding.
    Base64,
}

/// A value as JSON writes it: text when it is UTF-8, base64 otherwise, and always says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireValue {
    /// The value as written.
    pub value: String,
    /// How `value` encodes the bytes.
    pub encoding: Encoding,
}

impl WireValue {
    /// Encodes `bytes`: as text when they are valid UTF-8.
    pub fn encode(bytes: &[u8]) -> WireValue {
        match std::str::from_utf8(bytes) {
            Ok(text) => WireValue {
                value: text.to_owned(),
                encoding: Encoding::Utf8,
            },
            Err(_) => WireValue {
                value: BASE64.encode(bytes),
                encoding: Encoding::Base64,
            },
        }
    }
}

/// Decodes a JSON value written with `encoding`; `what` names it in the error.
pub fn decode_value(value: &str, encoding: Encoding, what: &str) -> Result<Bytes, String> {
    match encoding {
        Encoding::Utf8 => Ok(Bytes::copy_from_slice(value.as_bytes())),
        Encoding::Base64 => BASE64
            .decode(value)
            .map(Bytes::from)
            .map_err(|err| format!("{what} is not valid base64: {err}")),
    }
}

/// An entry in a listing or a watch event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// The key.
    pub key: String,
    /// The revision that wrote the value.
    pub revision: u64,
    /// The value, as `encoding` says.
    pub value: String,
    /// How `value` encodes the bytes.
    pub encoding: Encoding,
    /// Time left to live in whole milliseconds (rounded down), if the entry carries a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

impl WireEntry {
    /// The wire form of `entry`.
    pub fn from_entry(entry: &Entry) -> WireEntry {
        let WireValue { value, encoding } = WireValue::encode(&entry.value);
        WireEntry {
            key: entry.key.as_str().to_owned(),
            revision: entry.revision.get(),
            value,
            encoding,
            expires_in_ms: entry.expires_in.map(millis),
        }
    }

    /// The entry back; a malformed one (only a broken server sends one) is an error text.
    pub fn into_entry(self) -> Result<Entry, String> {
        let key = Key::new_reserved(&self.key).map_err(|err| err.to_string())?;
        Ok(Entry {
            value: decode_value(&self.value, self.encoding, &format!("the value of {key}"))?,
            revision: revision(self.revision)?,
            expires_in: self.expires_in_ms.map(Duration::from_millis),
            key,
        })
    }
}

/// Whole milliseconds of `duration`, rounded down.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The revision `n`; 0 is an error text.
pub fn revision(n: u64) -> Result<Revision, String> {
    Revision::new(n).ok_or_else(|| "0 is never a revision".to_owned())
}

/// The answer to a write: its revision, or `null` for a delete that found nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAnswer {
    /// The write's revision.
    pub revision: Option<u64>,
}

/// A page of keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysPage {
    /// The keys, in key order.
    pub keys: Vec<String>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// A page of entries, all from one snapshot at `revision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntriesPage {
    /// The entries, in key order.
    pub entries: Vec<WireEntry>,
    /// The store's revision at the snapshot; `null` for a store never written.
    pub revision: Option<u64>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// The body of `POST /v1/txn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    /// The operations, applied all or none.
    pub ops: Vec<WireOp>,
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Write `value`.
    Put,
    /// Delete the key (nothing happens to an absent key).
    Delete,
    /// Change nothing; only require the condition.
    Check,
}

/// One transaction operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireOp {
    /// What to do.
    pub op: OpKind,
    /// The key.
    pub key: String,
    /// The value of a put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// How `value` is encoded (default `utf8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// A put's TTL, e.g. `30s` or `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Require the key to be absent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub if_absent: bool,
    /// Require the key to be at this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_revision: Option<u64>,
}

impl WireOp {
    /// The wire form of `op`.
    pub fn from_op(op: &TxnOp) -> WireOp {
        let (kind, value, ttl) = match &op.action {
            TxnAction::Put { value, ttl } => (OpKind::Put, Some(WireValue::encode(value)), *ttl),
            TxnAction::Delete => (OpKind::Delete, None, None),
            TxnAction::Check => (OpKind::Check, None, None),
        };
        let (if_absent, if_revision) = match op.condition {
            Condition::Any => (false, None),
            Condition::Absent => (true, None),
            Condition::At(revision) => (false, Some(revision.get())),
        };
        WireOp {
            op: kind,
            key: op.key.as_str().to_owned(),
            encoding: value.as_ref().map(|value| value.encoding),
            value: value.map(|value| value.value),
            ttl: ttl.map(format_ttl),
            if_absent,
            if_revision,
        }
    }

    /// The operation back, or what is wrong with it (for operation `index`).
    pub fn into_op(self, index: usize) -> Result<TxnOp, Error> {
        let bad = |message: String| Error::InvalidInput {
            message: format!("operation {index} ({:?} {}): {message}", self.op, self.key),
        };
        let key = Key::new_reserved(&self.key)?;
        let condition = match (self.if_absent, self.if_revision) {
            (true, Some(_)) => {
                return Err(bad("if_absent and if_revision cannot both be given".into()));
            }
            (true, None) => Condition::Absent,
            (false, Some(n)) => Condition::At(revision(n).map_err(bad)?),
            (false, None) => Condition::Any,
        };
        let action = match self.op {
            OpKind::Put => {
                let Some(value) = &self.value else {
                    return Err(bad("a put needs a value".into()));
                };
                let value = decode_value(value, self.encoding.unwrap_or_default(), "the value")
                    .map_err(bad)?;
                let ttl = match &self.ttl {
                    Some(text) => Some(parse_ttl(text).map_err(bad)?),
                    None => None,
                };
                TxnAction::Put { value, ttl }
            }
            OpKind::Delete | OpKind::Check => {
                if self.value.is_some() || self.encoding.is_some() || self.ttl.is_some() {
                    return Err(bad(format!(
                        "a {} takes no value, encoding or ttl",
                        if self.op == OpKind::Delete {
                            "delete"
                        } else {
                            "check"
                        }
                    )));
                }
                if self.op == OpKind::Delete {
                    TxnAction::Delete
                } else {
                    TxnAction::Check
                }
            }
        };
        Ok(TxnOp {
            key,
            action,
            condition,
        })
    }
}

/// The answer to a committed transaction: one result per operation, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnAnswer {
    /// The results.
    pub results: Vec<WireResult>,
}

/// The result of one operation of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireResult {
    /// What the operation did.
    pub op: OpKind,
    /// The write's revision; `null` for a check, and for a delete that found the key absent.
    pub revision: Option<u64>,
}

impl WireResult {
    /// The wire form of `result`.
    pub fn from_result(result: &TxnResult) -> WireResult {
        let (op, revision) = match result {
            TxnResult::Put(revision) => (OpKind::Put, Some(revision.get())),
            TxnResult::Deleted(revision) => (OpKind::Delete, Some(revision.get())),
            TxnResult::NotFound => (OpKind::Delete, None),
            TxnResult::Checked => (OpKind::Check, None),
        };
        WireResult { op, revision }
    }

    /// The result back.
    pub fn into_result(self) -> Result<TxnResult, String> {
        Ok(match (self.op, self.revision) {
            (OpKind::Put, Some(n)) => TxnResult::Put(revision(n)?),
            (OpKind::Delete, Some(n)) => TxnResult::Deleted(revision(n)?),
            (OpKind::Delete, None) => TxnResult::NotFound,
            (OpKind::Check, None) => TxnResult::Checked,
            (op, revision) => return Err(format!("no such result: {op:?} at {revision:?}")),
        })
    }
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The server's version.
    pub version: String,
    /// The backend behind the server (`memory`, `disk`, `nats`).
    pub backend: String,
    /// The store's current revision; `null` for a store never written.
    pub revision: Option<u64>,
    /// What the store behind the server promises.
    pub capabilities: WireCapabilities,
    /// A random id of this server process: it changes on every start.
    pub instance: String,
    /// How often an idle watch stream carries a `progress` event, in milliseconds.
    pub watch_progress_ms: u64,
}

/// [`Capabilities`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCapabilities {
    /// TTLs are rounded up to a multiple of this, in milliseconds.
    pub ttl_granularity_ms: u64,
    /// The largest value accepted, in bytes.
    pub max_value_size: usize,
    /// How many events the store buffers for one watcher before it is lagged.
    pub watch_buffer: usize,
    /// Whether writes survive a restart once acknowledged.
    pub durable: bool,
    /// Whether a watch can start from a revision whose key has since changed.
    pub replays_overwritten: bool,
}

impl WireCapabilities {
    /// The wire form of `capabilities`.
    pub fn from_capabilities(capabilities: &Capabilities) -> WireCapabilities {
        WireCapabilities {
            ttl_granularity_ms: millis(capabilities.ttl_granularity),
            max_value_size: capabilities.max_value_size,
            watch_buffer: capabilities.watch_buffer,
            durable: capabilities.durable,
            replays_overwritten: capabilities.replays_overwritten,
        }
    }
}

/// The SSE event names of a watch stream.
pub mod event {
    /// A key was written (data: an entry).
    pub const PUT: &str = "put";
    /// A key was deleted (data: key and revision).
    pub const DELETE: &str = "delete";
    /// A key's TTL ran out (data: key and revision).
    pub const EXPIRE: &str = "expire";
    /// A snapshot is complete (data: the revision).
    pub const CAUGHT_UP: &str = "caught_up";
    /// The watch fell behind; the stream ends (data: `resume_from`).
    pub const LAGGED: &str = "lagged";
    /// The stream is established (data: the revision it follows from; `id` is that revision
    /// when there is one, so a reconnect resumes right after it).
    pub const READY: &str = "ready";
    /// Nothing changed for a while (data: the store's current revision). Not a resume point.
    pub const PROGRESS: &str = "progress";
    /// The server is shutting down or its store closed; the stream ends. Reconnect with
    /// `Last-Event-ID` to resume.
    pub const SHUTDOWN: &str = "shutdown";
}

/// The data of a `delete`, `expire`, `caught_up`, `ready`, `progress` or `lagged` event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    /// The key (delete, expire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The revision of the change or marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Where to resume (lagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_from: Option<u64>,
    /// Why the stream ends (shutdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A watch event as SSE sends it: the event name, the `id` (the change's revision, set when a
/// reconnect may resume right after it) and the JSON data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEvent {
    /// The SSE event name (see [`event`]).
    pub name: &'static str,
    /// The SSE `id`.
    pub id: Option<u64>,
    /// The JSON data.
    pub data: String,
}

impl WireEvent {
    /// The wire form of `event`. `in_snapshot` is true before the snapshot's `CaughtUp`: those
    /// events carry no `id`, since a snapshot cannot be resumed halfway.
    pub fn from_event(event: &WatchEvent, in_snapshot: bool) -> WireEvent {
        let change_id = |revision: Revision| (!in_snapshot).then_some(revision.get());
        let plain = |name, key: &Key, revision: Revision| WireEvent {
            name,
            id: change_id(revision),
            data: json(&EventData {
                key: Some(key.as_str().to_owned()),
                revision: Some(revision.get()),
                ..EventData::default()
            }),
        };
        match event {
            WatchEvent::Put(entry) => WireEvent {
                name: event::PUT,
                id: change_id(entry.revision),
                data: json(&WireEntry::from_entry(entry)),
            },
            WatchEvent::Delete { key, revision } => plain(event::DELETE, key, *revision),
            WatchEvent::Expire { key, revision } => plain(event::EXPIRE, key, *revision),
            WatchEvent::CaughtUp { revision } => WireEvent {
                name: event::CAUGHT_UP,
                id: revision.map(Revision::get),
                data: json(&EventData {
                    revision: revision.map(Revision::get),
                    ..EventData::default()
                }),
            },
            WatchEvent::Lagged { resume_from } => WireEvent {
                name: event::LAGGED,
                id: None,
                data: json(&EventData {
                    resume_from: Some(resume_from.get()),
                    ..EventData::default()
                }),
            },
        }
    }
}

/// What a client makes of one SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEvent {
    /// A watch event to hand to the watcher.
    Event(WatchEvent),
    /// The stream is established, following from this revision.
    Ready(Option<Revision>),
    /// The store's current revision, while nothing changes.
    Progress,
    /// The server is going away; resume elsewhere or later.
    Shutdown,
    /// An event this version does not know (a newer server's): skip it.
    Unknown,
}

/// Parses one SSE event of a watch stream.
pub fn read_event(name: &str, data: &str) -> Result<ReadEvent, String> {
    let bad = |err: serde_json::Error| format!("malformed {name} event {data:?}: {err}");
    let marker = || -> Result<EventData, String> { serde_json::from_str(data).map_err(bad) };
    let key_revision = |data: EventData| -> Result<(Key, Revision), String> {
        let key = data.key.ok_or("no key")?;
        let key = Key::new_reserved(&key).map_err(|err| err.to_string())?;
        Ok((key, revision(data.revision.ok_or("no revision")?)?))
    };
    let optional = |n: Option<u64>| n.map(revision).transpose();
    Ok(match name {
        event::PUT => {
            let entry: WireEntry = serde_json::from_str(data).map_err(bad)?;
            ReadEvent::Event(WatchEvent::Put(entry.into_entry()?))
        }
        event::DELETE => {
            let (key, revision) = key_revision(marker()?)?;
            ReadEvent::Event(WatchEvent::Delete { key, revision })
        }
        event::EXPIRE => {
            let (key, revision) = key_revision(marker()?)?;
            ReadEvent::Event(WatchEvent::Expire { key, revision })
        }
        event::CAUGHT_UP => ReadEvent::Event(WatchEvent::CaughtUp {
            revision: optional(marker()?.revision)?,
        }),
        event::LAGGED => {
            let resume_from = marker()?
                .resume_from
                .ok_or("a lagged event without resume_from")?;
            ReadEvent::Event(WatchEvent::Lagged {
                resume_from: revision(resume_from)?,
            })
        }
        event::READY => ReadEvent::Ready(optional(marker()?.revision)?),
        event::PROGRESS => ReadEvent::Progress,
        event::SHUTDOWN => ReadEvent::Shutdown,
        _ => ReadEvent::Unknown,
    })
}

/// An error as an `application/problem+json` document (RFC 9457), with the stable `kind` and
/// the fields of its variant, so that a client can rebuild the same [`Error`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `urn:swarmstate:error:<kind>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// The whole error message.
    pub detail: String,
    /// The stable category: [`ErrorKind::as_str`].
    pub kind: String,
    /// The key concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's current revision (`already_exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The revision a condition required (`revision_mismatch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    /// The key's revision, `null` when absent (`revision_mismatch`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_with_null"
    )]
    pub actual: Option<Option<u64>>,
    /// The value's size and the limit, in bytes (`value_too_large`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The limit, in bytes (`value_too_large`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The size the data would have, in bytes (`quota_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed: Option<u64>,
    /// The quota, in bytes (`quota_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// The revision asked for (`compacted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<u64>,
    /// The oldest revision a watch can start from (`compacted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<u64>,
    /// The lock's holder (`lock_held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The lock's time left, in milliseconds (`lock_held`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// The operation (`ambiguous`, `unsupported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The backend (`unsupported`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Where the bad data is (`corrupt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// The message of `invalid_input`, `unavailable`, `ambiguous`, `corrupt` and `backend`,
    /// without the summary `detail` adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The index of the transaction operation that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

// `actual: null` (absent) and no `actual` at all are different things.
mod serde_with_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Option<u64>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(deserializer).map(Some)
    }
}

/// The short title of a kind.
fn title(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "Not found",
        ErrorKind::AlreadyExists => "Already exists",
        ErrorKind::RevisionMismatch => "Revision mismatch",
        ErrorKind::InvalidKey => "Invalid key",
        ErrorKind::ValueTooLarge => "Value too large",
        ErrorKind::QuotaExceeded => "Quota exceeded",
        ErrorKind::InvalidInput => "Invalid input",
        ErrorKind::Compacted => "Compacted",
        ErrorKind::LockHeld => "Lock held",
        ErrorKind::LockLost => "Lock lost",
        ErrorKind::Closed => "Store closed",
        ErrorKind::Unavailable => "Unavailable",
        ErrorKind::Ambiguous => "Outcome unknown",
        ErrorKind::Unsupported => "Unsupported",
        ErrorKind::Corrupt => "Corrupt data",
        _ => "Backend error",
    }
}

/// The HTTP status of an error. Conflicts of a single-key write are 412 (its precondition
/// failed); a transaction's are 409, which the server decides.
pub fn status_of(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::NotFound => 404,
        ErrorKind::AlreadyExists | ErrorKind::RevisionMismatch => 412,
        ErrorKind::InvalidKey | ErrorKind::InvalidInput => 400,
        ErrorKind::ValueTooLarge => 413,
        ErrorKind::QuotaExceeded => 507,
        ErrorKind::Compacted => 410,
        ErrorKind::LockHeld | ErrorKind::LockLost => 409,
        ErrorKind::Unsupported => 422,
        ErrorKind::Closed | ErrorKind::Unavailable => 503,
        ErrorKind::Ambiguous => 504,
        ErrorKind::Corrupt => 500,
        _ => 502,
    }
}

impl Problem {
    /// The problem document of `err`, with the status [`status_of`] gives.
    pub fn from_error(err: &Error) -> Problem {
        let kind = err.kind();
        let mut problem = Problem {
            type_: format!("urn:swarmstate:error:{kind}"),
            title: title(kind).to_owned(),
            status: status_of(kind),
            detail: err.to_string(),
            kind: kind.as_str().to_owned(),
            ..Problem::default()
        };
        let key = |key: &Key| Some(key.as_str().to_owned());
        match err {
            Error::NotFound { key: k } | Error::LockLost { key: k } => problem.key = key(k),
            Error::AlreadyExists { key: k, revision } => {
                problem.key = key(k);
                problem.revision = Some(revision.get());
            }
            Error::RevisionMismatch {
                key: k,
                expected,
                actual,
            } => {
                problem.key = key(k);
                problem.expected = Some(expected.get());
                problem.actual = Some(actual.map(Revision::get));
            }
            Error::InvalidKey { key: k, .. } => problem.key = Some(k.clone()),
            Error::ValueTooLarge {
                key: k,
                size,
                limit,
            } => {
                problem.key = key(k);
                problem.size = Some(*size as u64);
                problem.limit = Some(*limit as u64);
            }
            Error::QuotaExceeded {
                key: k,
                needed,
                quota,
            } => {
                problem.key = key(k);
                problem.needed = Some(*needed);
                problem.quota = Some(*quota);
            }
            Error::InvalidInput { message } | Error::Unavailable { message } => {
                problem.message = Some(message.clone());
            }
            Error::Backend { source } => problem.message = Some(source.to_string()),
            Error::Compacted { requested, oldest } => {
                problem.requested = Some(requested.get());
                problem.oldest = Some(oldest.get());
            }
            Error::LockHeld {
                key: k,
                holder,
                expires_in,
            } => {
                problem.key = key(k);
                problem.holder = Some(holder.clone());
                problem.expires_in_ms = expires_in.map(millis);
            }
            Error::Ambiguous { operation, message } => {
                problem.operation = Some(operation.clone());
                problem.message = Some(message.clone());
            }
            Error::Unsupported { operation, backend } => {
                problem.operation = Some(operation.clone());
                problem.backend = Some((*backend).to_owned());
            }
            Error::Corrupt { what, message } => {
                problem.what = Some(what.clone());
                problem.message = Some(message.clone());
            }
            _ => {}
        }
        problem
    }

    /// The same [`Error`] variant the server's store returned. A document this version does
    /// not understand (a newer kind, missing fields) becomes [`Error::Backend`] carrying its
    /// text, never a success and never a wrong category.
    pub fn into_error(self) -> Error {
        match self.rebuild() {
            Some(err) => err,
            None => Error::backend(RemoteError(format!(
                "the server answered {} {}: {}",
                self.status, self.kind, self.detail
            ))),
        }
    }

    fn rebuild(&self) -> Option<Error> {
        let key = || Key::new_reserved(self.key.as_deref()?).ok();
        let rev = |n: Option<u64>| Revision::new(n?);
        let message = || self.message.clone().unwrap_or_else(|| self.detail.clone());
        Some(match ErrorKind::from_name(&self.kind)? {
            ErrorKind::NotFound => Error::NotFound { key: key()? },
            ErrorKind::AlreadyExists => Error::AlreadyExists {
                key: key()?,
                revision: rev(self.revision)?,
            },
            ErrorKind::RevisionMismatch => Error::RevisionMismatch {
                key: key()?,
                expected: rev(self.expected)?,
                actual: match self.actual? {
                    Some(n) => Some(Revision::new(n)?),
                    None => None,
                },
            },
            ErrorKind::InvalidKey => {
                // The key's own rules say which one it broke.
                let text = self.key.as_deref()?;
                match Key::new_reserved(text) {
                    Err(err @ Error::InvalidKey { .. }) => err,
                    _ => Error::InvalidInput { message: message() },
                }
            }
            ErrorKind::ValueTooLarge => Error::ValueTooLarge {
                key: key()?,
                size: usize::try_from(self.size?).ok()?,
                limit: usize::try_from(self.limit?).ok()?,
            },
            ErrorKind::QuotaExceeded => Error::QuotaExceeded {
                key: key()?,
                needed: self.needed?,
                quota: self.quota?,
            },
            ErrorKind::InvalidInput => Error::InvalidInput { message: message() },
            ErrorKind::Compacted => Error::Compacted {
                requested: rev(self.requested)?,
                oldest: rev(self.oldest)?,
            },
            ErrorKind::LockHeld => Error::LockHeld {
                key: key()?,
                holder: self.holder.clone()?,
                expires_in: self.expires_in_ms.map(Duration::from_millis),
            },
            ErrorKind::LockLost => Error::LockLost { key: key()? },
            ErrorKind::Closed => Error::Closed,
            ErrorKind::Unavailable => Error::Unavailable { message: message() },
            ErrorKind::Ambiguous => Error::Ambiguous {
                operation: self.operation.clone()?,
                message: message(),
            },
            ErrorKind::Unsupported => Error::Unsupported {
                operation: self.operation.clone()?,
                backend: backend_name(self.backend.as_deref()?),
            },
            ErrorKind::Corrupt => Error::Corrupt {
                what: self.what.clone()?,
                message: message(),
            },
            _ => Error::backend(RemoteError(message())),
        })
    }
}

/// A backend's name as the `'static` text [`Capabilities`] and [`Error::Unsupported`] carry.
pub fn backend_name(name: &str) -> &'static str {
    match name {
        "memory" => "memory",
        "disk" => "disk",
        "nats" => "nats",
        "http" => "http",
        _ => "remote",
    }
}

/// An error the server reported as a backend failure, kept as its text.
#[derive(Debug, Clone)]
pub struct RemoteError(pub String);

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RemoteError {}

/// Serializes a wire value; these types always serialize.
pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("wire types serialize")
}

/// Parses a TTL such as `30s`, `500ms` or `1h 30m`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("ttl {text:?} is not a duration such as 30s or 500ms: {err}"))
}

/// Writes a TTL so that [`parse_ttl`] reads back the same duration.
pub fn format_ttl(ttl: Duration) -> String {
    if ttl.subsec_nanos() == 0 {
        format!("{}s", ttl.as_secs())
    } else {
        format!("{}ns", ttl.as_nanos())
    }
}

/// Writes a revision as an entity tag: `"<rev>"`.
pub fn etag(revision: Revision) -> String {
    format!("\"{revision}\"")
}

/// Reads an entity tag back into a revision: `"<rev>"`, or the bare number.
pub fn parse_etag(text: &str) -> Result<Revision, String> {
    let trimmed = text.trim();
    let inner = trimmed
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(trimmed);
    let n: u64 = inner.parse().map_err(|_| {
        format!("{text:?} is not a revision (a number from 1, optionally in double quotes: \"42\")")
    })?;
    revision(n)
}

/// A backend error carrying what the server (or its answer) said.
pub fn remote(message: impl Into<String>) -> Error {
    Error::Backend {
        source: Arc::new(RemoteError(message.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Key {
        Key::new_reserved(text).unwrap()
    }

    fn round_trip(err: Error) -> Error {
        let problem = Problem::from_error(&err);
        let text = json(&problem);
        let back: Problem = serde_json::from_str(&text).unwrap();
        assert_eq!(back, problem, "{text}");
        back.into_error()
    }

    #[test]
    fn every_error_comes_back_as_the_same_variant_with_its_fields() {
        let r = |n| Revision::new(n).unwrap();
        let errors = [
            Error::NotFound { key: key("a.b") },
            Error::AlreadyExists {
                key: key("a"),
                revision: r(7),
            },
            Error::RevisionMismatch {
                key: key("a"),
                expected: r(3),
                actual: None,
            },
            Error::RevisionMismatch {
                key: key("a"),
                expected: r(3),
                actual: Some(r(9)),
            },
            Key::new("bad..key").unwrap_err(),
            Error::ValueTooLarge {
                key: key("v"),
                size: 10,
                limit: 5,
            },
            Error::QuotaExceeded {
                key: key("q"),
                needed: 100,
                quota: 50,
            },
            Error::InvalidInput {
                message: "no".into(),
            },
            Error::Compacted {
                requested: r(1),
                oldest: r(5),
            },
            Error::LockHeld {
                key: key("locks.a"),
                holder: "agent-1".into(),
                expires_in: Some(Duration::from_millis(1500)),
            },
            Error::LockLost {
                key: key("locks.a"),
            },
            Error::Closed,
            Error::Unavailable {
                message: "down".into(),
            },
            Error::Ambiguous {
                operation: "put a".into(),
                message: "timeout".into(),
            },
            Error::Unsupported {
                operation: "txn".into(),
                backend: "nats",
            },
            Error::Corrupt {
                what: "file".into(),
                message: "bad".into(),
            },
        ];
        for err in errors {
            let back = round_trip(err.clone());
            assert_eq!(back.kind(), err.kind());
            assert_eq!(back.to_string(), err.to_string());
        }
        let backend = round_trip(Error::backend(std::io::Error::other("disk on fire")));
        assert_eq!(backend.kind(), ErrorKind::Backend);
        assert!(backend.to_string().contains("disk on fire"), "{backend}");
    }

    #[test]
    fn an_unknown_kind_is_a_backend_error_carrying_the_text() {
        let problem = Problem {
            kind: "from_the_future".into(),
            status: 500,
            detail: "something new".into(),
            ..Problem::default()
        };
        let err = problem.into_error();
        assert_eq!(err.kind(), ErrorKind::Backend);
        assert!(err.to_string().contains("something new"), "{err}");
    }

    #[test]
    fn values_are_text_when_utf8_and_base64_otherwise() {
        let text = WireValue::encode("héllo".as_bytes());
        assert_eq!(text.encoding, Encoding::Utf8);
        assert_eq!(text.value, "héllo");
        let bytes = WireValue::encode(&[0xff, 0, 1]);
        assert_eq!(bytes.encoding, Encoding::Base64);
        assert_eq!(
            decode_value(&bytes.value, bytes.encoding, "v").unwrap(),
            Bytes::from_static(&[0xff, 0, 1])
        );
        assert!(decode_value("not base64!", Encoding::Base64, "v").is_err());
    }

    #[test]
    fn txn_ops_round_trip() {
        let ops = [
            TxnOp::put(&key("a"), "x")
                .ttl(Duration::from_millis(1500))
                .when(Condition::Absent),
            TxnOp::put(&key("b"), Bytes::from_static(&[0xfe])),
            TxnOp::delete(&key("c")).when(Condition::At(Revision::FIRST)),
            TxnOp::check(&key("d"), Condition::At(Revision::new(4).unwrap())),
        ];
        for (index, op) in ops.iter().enumerate() {
            let wire = WireOp::from_op(op);
            let text = json(&wire);
            let back: WireOp = serde_json::from_str(&text).unwrap();
            assert_eq!(&back.into_op(index).unwrap(), op, "{text}");
        }
    }

    #[test]
    fn malformed_ops_are_refused_naming_the_operation() {
        let op: WireOp =
            serde_json::from_str(r#"{"op":"put","key":"a","if_absent":true,"if_revision":3}"#)
                .unwrap();
        let err = op.into_op(2).unwrap_err().to_string();
        assert!(err.contains("operation 2"), "{err}");
        let op: WireOp = serde_json::from_str(r#"{"op":"put","key":"a"}"#).unwrap();
        assert!(op.into_op(0).unwrap_err().to_string().contains("value"));
        let op: WireOp = serde_json::from_str(r#"{"op":"delete","key":"a","value":"x"}"#).unwrap();
        assert!(op.into_op(0).is_err());
        assert!(serde_json::from_str::<WireOp>(r#"{"op":"put","key":"a","colour":1}"#).is_err());
    }

    #[test]
    fn watch_events_round_trip_and_snapshot_entries_carry_no_id() {
        let entry = Entry {
            key: key("a"),
            value: Bytes::from_static(b"v"),
            revision: Revision::new(5).unwrap(),
            expires_in: Some(Duration::from_millis(250)),
        };
        let events = [
            WatchEvent::Put(entry.clone()),
            WatchEvent::Delete {
                key: key("a"),
                revision: Revision::new(6).unwrap(),
            },
            WatchEvent::Expire {
                key: key("a"),
                revision: Revision::new(7).unwrap(),
            },
            WatchEvent::CaughtUp { revision: None },
            WatchEvent::CaughtUp {
                revision: Some(Revision::new(7).unwrap()),
            },
            WatchEvent::Lagged {
                resume_from: Revision::new(8).unwrap(),
            },
        ];
        for event in events {
            let wire = WireEvent::from_event(&event, false);
            assert_eq!(
                read_event(wire.name, &wire.data).unwrap(),
                ReadEvent::Event(event)
            );
        }
        assert_eq!(
            WireEvent::from_event(&WatchEvent::Put(entry.clone()), false).id,
            Some(5)
        );
        assert_eq!(
            WireEvent::from_event(&WatchEvent::Put(entry), true).id,
            None
        );
    }

    #[test]
    fn etags_and_ttls_parse_back() {
        let r = Revision::new(42).unwrap();
        assert_eq!(parse_etag(&etag(r)).unwrap(), r);
        assert_eq!(parse_etag("42").unwrap(), r);
        assert!(parse_etag("\"0\"").is_err());
        assert!(parse_etag("W/\"4\"").is_err());
        for ttl in [Duration::from_secs(30), Duration::from_millis(1500)] {
            assert_eq!(parse_ttl(&format_ttl(ttl)).unwrap(), ttl);
        }
        assert!(parse_ttl("30").is_err());
    }
}
