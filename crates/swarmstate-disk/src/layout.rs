//! The data file's tables and how each record is encoded. Everything here is the on-disk
//! format: a change is a new [`FORMAT`].
//!
//! - `meta`: `format` → [`FORMAT`], written once when the file is made.
//! - `entries`: key → flags (u8), revision (u64), deadline (u64 nanoseconds since the epoch,
//!   present if the flag says so), value bytes.
//! - `history`: revision → kind (u8), deadline as above, key length (u32), key, value.
//!   Holds the recent changes, contiguous, ending at the last revision: the revision counter
//!   is the last key of this table (the engine always keeps the newest change).
//! - `remembered`: (decided at, key, idempotency key) → revision, in the order decided.
//!
//! Integers are little-endian.

use bytes::Bytes;
use redb::TableDefinition;
use swarmstate_core::backend::{Change, Remembered, StoredEntry, Timestamp};
use swarmstate_core::{Key, Revision};

/// The format of the file's records. A file of another format is refused at open.
pub(crate) const FORMAT: u64 = 1;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
pub(crate) const REMEMBERED: TableDefinition<(u64, &str, &str), u64> =
    TableDefinition::new("remembered");

pub(crate) const FORMAT_KEY: &str = "format";

const HAS_DEADLINE: u8 = 1;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const EXPIRE: u8 = 3;

/// A record that does not decode: what is wrong, for an error that names the file.
#[derive(Debug)]
pub(crate) struct Undecodable(pub(crate) String);

/// An entry's record: flags, revision, optional deadline, value.
pub(crate) fn encode_entry(
    out: &mut Vec<u8>,
    revision: Revision,
    deadline: Option<Timestamp>,
    value: &[u8],
) {
    out.clear();
    put_deadline_flag(out, deadline);
    out.extend_from_slice(&revision.get().to_le_bytes());
    if let Some(at) = deadline {
        out.extend_from_slice(&at.as_nanos().to_le_bytes());
    }
    out.extend_from_slice(value);
}

pub(crate) fn decode_entry(key: &str, record: &[u8]) -> Result<StoredEntry, Undecodable> {
    let what = || format!("the entry of key {key:?}");
    let key = Key::new(key).map_err(|err| Undecodable(format!("{}: {err}", what())))?;
    let mut reader = Reader::new(record, what);
    let flags = reader.u8()?;
    let revision = reader.revision()?;
    let expires_at = reader.deadline(flags)?;
    Ok(StoredEntry {
        key,
        value: Bytes::copy_from_slice(reader.rest()),
        revision,
        expires_at,
    })
}

/// A change's record, kept in the history under its revision.
pub(crate) fn encode_change(out: &mut Vec<u8>, change: &Change) {
    out.clear();
    let (kind, key, deadline, value): (u8, &Key, Option<Timestamp>, &[u8]) = match change {
        Change::Put {
            key,
            value,
            expires_at,
            ..
        } => (PUT, key, *expires_at, value),
        Change::Delete { key, .. } => (DELETE, key, None, &[]),
        Change::Expire { key, .. } => (EXPIRE, key, None, &[]),
    };
    out.push(kind);
    put_deadline_flag(out, deadline);
    if let Some(at) = deadline {
        out.extend_from_slice(&at.as_nanos().to_le_bytes());
    }
    let key = key.as_str().as_bytes();
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

pub(crate) fn decode_change(revision: u64, record: &[u8]) -> Result<Change, Undecodable> {
    let what = || format!("the change at revision {revision}");
    let revision =
        Revision::new(revision).ok_or_else(|| Undecodable(format!("{}: revision 0", what())))?;
    let mut reader = Reader::new(record, what);
    let kind = reader.u8()?;
    let flags = reader.u8()?;
    let expires_at = reader.deadline(flags)?;
    let key_len = reader.u32()? as usize;
    let key = reader.take(key_len)?;
    let key = std::str::from_utf8(key)
        .ok()
        .and_then(|key| Key::new(key).ok())
        .ok_or_else(|| Undecodable(format!("{}: the key is not a valid key", what())))?;
    let value = reader.rest();
    match kind {
        PUT => Ok(Change::Put {
            key,
            value: Bytes::copy_from_slice(value),
            revision,
            expires_at,
        }),
        DELETE | EXPIRE if value.is_empty() && expires_at.is_none() => Ok(if kind == DELETE {
            Change::Delete { key, revision }
        } else {
            Change::Expire { key, revision }
        }),
        _ => Err(Undecodable(format!(
            "{}: unknown kind {kind} or stray bytes",
            what()
        ))),
    }
}

pub(crate) fn decode_remembered(
    at: u64,
    key: &str,
    idempotency_key: &str,
    revision: u64,
) -> Result<Remembered, Undecodable> {
    let what = || format!("the idempotency record {idempotency_key:?} of key {key:?}");
    Ok(Remembered {
        key: Key::new(key).map_err(|err| Undecodable(format!("{}: {err}", what())))?,
        idempotency_key: idempotency_key.to_owned(),
        revision: Revision::new(revision)
            .ok_or_else(|| Undecodable(format!("{}: revision 0", what())))?,
        at: Timestamp::from_nanos(at),
    })
}

fn put_deadline_flag(out: &mut Vec<u8>, deadline: Option<Timestamp>) {
    out.push(if deadline.is_some() { HAS_DEADLINE } else { 0 });
}

struct Reader<'a, W> {
    bytes: &'a [u8],
    what: W,
}

impl<'a, W: Fn() -> String> Reader<'a, W> {
    fn new(bytes: &'a [u8], what: W) -> Self {
        Reader { bytes, what }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Undecodable> {
        if self.bytes.len() < len {
            return Err(Undecodable(format!("{} is truncated", (self.what)())));
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, Undecodable> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Undecodable> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, Undecodable> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn revision(&mut self) -> Result<Revision, Undecodable> {
        Revision::new(self.u64()?)
            .ok_or_else(|| Undecodable(format!("{}: revision 0", (self.what)())))
    }

    fn deadline(&mut self, flags: u8) -> Result<Option<Timestamp>, Undecodable> {
        match flags {
            0 => Ok(None),
            HAS_DEADLINE => Ok(Some(Timestamp::from_nanos(self.u64()?))),
            _ => Err(Undecodable(format!(
                "{}: unknown flags {flags}",
                (self.what)()
            ))),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Key {
        Key::new(text).unwrap()
    }

    #[test]
    fn records_round_trip() {
        let mut out = Vec::new();
        let at = Some(Timestamp::from_nanos(42));
        encode_entry(&mut out, Revision::new(7).unwrap(), at, b"value");
        let entry = decode_entry("a.b", &out).unwrap();
        assert_eq!(
            (entry.revision.get(), entry.expires_at, &entry.value[..]),
            (7, at, &b"value"[..])
        );
        let changes = [
            Change::Put {
                key: key("a"),
                value: Bytes::from("v"),
                revision: Revision::new(3).unwrap(),
                expires_at: at,
            },
            Change::Put {
                key: key("a"),
                value: Bytes::new(),
                revision: Revision::new(3).unwrap(),
                expires_at: None,
            },
            Change::Delete {
                key: key("b.c"),
                revision: Revision::new(3).unwrap(),
            },
            Change::Expire {
                key: key("d"),
                revision: Revision::new(3).unwrap(),
            },
        ];
        for change in changes {
            encode_change(&mut out, &change);
            assert_eq!(decode_change(3, &out).unwrap(), change);
        }
    }

    #[test]
    fn damaged_records_are_refused_and_named() {
        let mut out = Vec::new();
        encode_entry(
            &mut out,
            Revision::new(7).unwrap(),
            Some(Timestamp::from_nanos(1)),
            b"",
        );
        let err = decode_entry("k", &out[..5]).unwrap_err();
        assert!(
            err.0.contains("entry of key \"k\" is truncated"),
            "{}",
            err.0
        );
        out[0] = 9;
        assert!(
            decode_entry("k", &out)
                .unwrap_err()
                .0
                .contains("unknown flags 9")
        );
        encode_change(
            &mut out,
            &Change::Delete {
                key: key("k"),
                revision: Revision::new(2).unwrap(),
            },
        );
        out[0] = 77;
        assert!(
            decode_change(2, &out)
                .unwrap_err()
                .0
                .contains("unknown kind 77")
        );
        assert!(decode_change(0, &out).unwrap_err().0.contains("revision 0"));
        assert!(decode_entry("_reserved", &[0; 9]).is_err());
    }
}
