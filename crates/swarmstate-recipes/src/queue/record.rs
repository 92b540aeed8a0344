//! The item record under `Q.item.<id>`, the authority on an item's state, and its text
//! encoding.

use std::fmt;

use bytes::Bytes;

use swarmstate_core::{Error, Key, Result};

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemState {
    /// Waiting to be claimed (never claimed, failed with attempts left, or its lease expired
    /// with attempts left).
    Pending,
    /// Claimed by a worker whose lease is live.
    Claimed,
    /// Completed; never handed out again.
    Done,
    /// Failed or abandoned on its last attempt: the dead-letter set. Never handed out again.
    Dead,
}

impl ItemState {
    fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Claimed => "claimed",
            ItemState::Done => "done",
            ItemState::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Option<ItemState> {
        Some(match text {
            "pending" => ItemState::Pending,
            "claimed" => ItemState::Claimed,
            "done" => ItemState::Done,
            "dead" => ItemState::Dead,
            _ => return None,
        })
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The item record, as stored under `Q.item.<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) state: ItemState,
    pub(super) attempts: u32,
    pub(super) claimant: Option<String>,
    pub(super) error: Option<String>,
}

impl Record {
    pub(super) fn encode(&self) -> Bytes {
        let mut text = format!("state={}\nattempts={}\n", self.state, self.attempts);
        if let Some(claimant) = &self.claimant {
            text.push_str(&format!("claimant={claimant}\n"));
        }
        if let Some(error) = &self.error {
            text.push_str(&format!("error={error}"));
        }
        Bytes::from(text)
    }

    pub(super) fn decode(key: &Key, value: &[u8]) -> Result<Record> {
        let corrupt = |what: &str| Error::Corrupt {
            what: format!("work item record {key}"),
            message: format!("malformed ({what})"),
        };
        let text = std::str::from_utf8(value).map_err(|_| corrupt("not UTF-8"))?;
        let mut rest = text;
        let mut field = |name: &str| -> Option<&str> {
            let line_end = rest.find('\n')?;
            let value = rest[..line_end].strip_prefix(name)?.strip_prefix('=')?;
            rest = &rest[line_end + 1..];
            Some(value)
        };
        let state = field("state")
            .and_then(ItemState::parse)
            .ok_or_else(|| corrupt("state"))?;
        let attempts = field("attempts")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("attempts"))?;
        let claimant = field("claimant").map(str::to_owned);
        let error = match rest.strip_prefix("error=") {
            Some(error) => Some(error.to_owned()),
            None if rest.is_empty() => None,
            None => return Err(corrupt("trailing text")),
        };
        Ok(Record {
            state,
            attempts,
            claimant,
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: ItemState, claimant: Option<&str>, error: Option<&str>) -> Record {
        Record {
            state,
            attempts: 2,
            claimant: claimant.map(str::to_owned),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn records_round_trip_through_their_text_encoding() {
        let key = Key::new("jobs.item.a").unwrap();
        for record in [
            record(ItemState::Pending, None, None),
            record(ItemState::Claimed, Some("worker-1"), None),
            record(
                ItemState::Claimed,
                Some("w"),
                Some("timeout\nsecond line\n"),
            ),
            record(ItemState::Dead, None, Some("")),
            record(ItemState::Done, None, Some("error=inside")),
        ] {
            let encoded = record.encode();
            assert_eq!(
                Record::decode(&key, &encoded).unwrap(),
                record,
                "{encoded:?}"
            );
        }
        assert_eq!(
            &record(ItemState::Claimed, Some("w-1"), Some("boom")).encode()[..],
            b"state=claimed\nattempts=2\nclaimant=w-1\nerror=boom"
        );
    }

    #[test]
    fn malformed_records_are_reported() {
        let key = Key::new("jobs.item.a").unwrap();
        for text in [
            &b""[..],
            b"state=lost\nattempts=1\n",
            b"state=done\nattempts=x\n",
            b"state=done\nattempts=1\nnoise",
            b"\xff",
        ] {
            let err = Record::decode(&key, text).unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { what, .. } if what.contains("jobs.item.a")),
                "{err}"
            );
        }
    }
}
