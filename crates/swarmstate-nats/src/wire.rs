//! How the contract maps onto JetStream messages: subjects, headers, what a stored message
//! means for its key, pub acks, and the request that tells a request that never left
//! (nothing applied) from one that got no answer (outcome unknown).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::message::StreamMessage;
use async_nats::{HeaderMap, client::RequestErrorKind};
use bytes::Bytes;
use serde_json::Value;
use swarmstate_core::{Entry, Key, Revision};

use crate::error::{ApiError, NatsError};

pub(crate) const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
pub(crate) const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";
pub(crate) const TTL: &str = "Nats-TTL";
/// The server's de-duplication id: every attempt of one write carries the same one.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";
pub(crate) const MARKER_REASON: &str = "Nats-Marker-Reason";
pub(crate) const KV_OPERATION: &str = "KV-Operation";
pub(crate) const BATCH_ID: &str = "Nats-Batch-Id";
pub(crate) const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
pub(crate) const BATCH_COMMIT: &str = "Nats-Batch-Commit";
/// On a read's commit barrier: the sequences of the earlier barriers on the same reserved
/// subject, newest first (the newest is the one this barrier replaces, history 1 removing it;
/// the others were replaced before), so that a watcher can tell the holes they leave from lost
/// changes to keys. See [`encode_sequences`].
pub(crate) const REPLACES: &str = "Swarmstate-Replaces";
/// How many earlier barriers a barrier lists: a watcher that missed more of one client's
/// barriers in a row than this lags.
pub(crate) const REPLACES_KEPT: usize = 128;
/// The reserved keys that carry reads' commit barriers, one subject per client and slot.
pub(crate) const BARRIER_KEYS: &str = "_swarmstate.barrier.";

/// What a stored message means for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Put,
    Delete,
    Expire,
}

pub(crate) fn kind(headers: Option<&HeaderMap>) -> Kind {
    let Some(headers) = headers else {
        return Kind::Put;
    };
    if let Some(reason) = headers.get(MARKER_REASON) {
        return if reason.as_str() == "MaxAge" {
            Kind::Expire
        } else {
            Kind::Delete
        };
    }
    match headers.get(KV_OPERATION).map(|v| v.as_str()) {
        Some("DEL") | Some("PURGE") => Kind::Delete,
        _ => Kind::Put,
    }
}

/// Strictly decreasing sequences as text: the first, then each one's distance below the one
/// before it (`"1050 3 7"` is 1050, 1047, 1040), which keeps a list of nearby sequences short.
pub(crate) fn encode_sequences<'a>(sequences: impl IntoIterator<Item = &'a u64>) -> String {
    let mut text = String::new();
    let mut previous = None;
    for &sequence in sequences {
        let number = previous.map_or(sequence, |previous: u64| previous - sequence);
        if previous.is_some() {
            text.push(' ');
        }
        text.push_str(&number.to_string());
        previous = Some(sequence);
    }
    text
}

/// The sequences [`encode_sequences`] wrote; `None` for anything else.
pub(crate) fn decode_sequences(text: &str) -> Option<Vec<u64>> {
    let mut sequences: Vec<u64> = Vec::new();
    for number in text.split(' ') {
        let number: u64 = number.parse().ok()?;
        let sequence = match sequences.last() {
            None => number,
            Some(previous) => previous.checked_sub(number).filter(|_| number > 0)?,
        };
        sequences.push(sequence);
    }
    Some(sequences)
}

/// TTLs are whole seconds on NATS, rounded up.
pub(crate) fn ttl_seconds(ttl: Duration) -> u64 {
    ttl.as_nanos().div_ceil(1_000_000_000).max(1) as u64
}

fn parse_ttl(value: &str) -> Option<Duration> {
    let value = value.trim();
    let secs = value.strip_suffix('s').unwrap_or(value);
    secs.parse::<u64>().ok().map(Duration::from_secs)
}

/// Time left before a message with a `Nats-TTL` expires, by this machine's clock; `Some(ZERO)`
/// once the deadline passed (the server removes it within about a second).
pub(crate) fn expires_in(headers: Option<&HeaderMap>, published_nanos: i128) -> Option<Duration> {
    let ttl = parse_ttl(headers?.get(TTL)?.as_str())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    let left = published_nanos + ttl.as_nanos() as i128 - now;
    Some(Duration::from_nanos(left.clamp(0, u64::MAX as i128) as u64))
}

/// The entry a stored message holds, or `None` for a delete or an expiry marker.
///
/// A value past its TTL by this machine's clock is still returned (with `expires_in` zero)
/// until the server removes it: the server decides when it expires, and a conditional write
/// at its revision succeeds until then. Hiding it earlier would let a read report the key
/// absent and a later update at the old revision bring it back, which no order of the two
/// explains.
pub(crate) fn live_entry(
    key: &Key,
    sequence: u64,
    headers: Option<&HeaderMap>,
    payload: &Bytes,
    published_nanos: i128,
) -> Option<Entry> {
    if kind(headers) != Kind::Put {
        return None;
    }
    let expires_in = expires_in(headers, published_nanos);
    Some(Entry {
        key: key.clone(),
        value: payload.clone(),
        revision: Revision::new(sequence)?,
        expires_in,
    })
}

/// The last message stored for a key, whatever it is.
#[derive(Debug, Clone)]
pub(crate) struct Last {
    pub(crate) sequence: u64,
    pub(crate) live: Option<Entry>,
    /// When the value's TTL ends, on this machine's monotonic clock, if it has one.
    pub(crate) deadline: Option<Instant>,
    /// The `Nats-Msg-Id` of the write that stored it, if any.
    pub(crate) write_id: Option<String>,
}

impl Last {
    /// What the stored message `message` of `key`'s subject means.
    pub(crate) fn of(key: &Key, message: &StreamMessage) -> Last {
        Last::stored(
            key,
            message.sequence,
            Some(&message.headers),
            &message.payload,
            message.time.unix_timestamp_nanos(),
        )
    }

    /// What a message of `key`'s subject stored at `sequence` means (as read or delivered).
    pub(crate) fn stored(
        key: &Key,
        sequence: u64,
        headers: Option<&HeaderMap>,
        payload: &Bytes,
        published_nanos: i128,
    ) -> Last {
        let live = live_entry(key, sequence, headers, payload, published_nanos);
        let deadline = live
            .as_ref()
            .and_then(|entry| entry.expires_in)
            .map(|left| Instant::now() + left);
        let write_id = headers
            .and_then(|headers| headers.get(MSG_ID))
            .map(|id| id.as_str().to_owned());
        Last {
            sequence,
            live,
            deadline,
            write_id,
        }
    }

    /// The revision of the value it holds; `None` for a tombstone or an expiry marker.
    pub(crate) fn revision(&self) -> Option<Revision> {
        self.live.as_ref().map(|entry| entry.revision)
    }

    /// The value it holds, with the time left on its TTL as of now (zero once past it: see
    /// [`live_entry`]).
    pub(crate) fn live_now(&self) -> Option<Entry> {
        let mut entry = self.live.clone()?;
        entry.expires_in = self
            .deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()));
        Some(entry)
    }
}

/// A successful pub ack.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    pub(crate) sequence: u64,
}

/// The acknowledgement in a publish's answer. Errors: [`NatsError::Api`] for a refusal (nothing
/// was stored), [`NatsError::BadReply`] for an answer that is neither.
pub(crate) fn parse_ack(payload: &[u8], operation: &str) -> Result<Ack, NatsError> {
    let value: Value = serde_json::from_slice(payload).map_err(|err| NatsError::BadReply {
        operation: operation.to_owned(),
        message: format!(
            "unreadable pub ack ({err}): {}",
            String::from_utf8_lossy(payload)
        ),
    })?;
    if let Some(error) = value.get("error") {
        return Err(NatsError::Api {
            operation: operation.to_owned(),
            error: ApiError {
                code: error.get("code").and_then(Value::as_u64).unwrap_or(0),
                err_code: error.get("err_code").and_then(Value::as_u64).unwrap_or(0),
                description: error
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            },
        });
    }
    match value.get("seq").and_then(Value::as_u64) {
        Some(sequence) if sequence > 0 => Ok(Ack { sequence }),
        _ => Err(NatsError::BadReply {
            operation: operation.to_owned(),
            message: format!("pub ack without a sequence: {value}"),
        }),
    }
}

/// Sends a request. A request that provably never left (no connection at the time) is
/// [`NatsError::NotApplied`]; one that was sent and got no answer is [`NatsError::Unknown`].
///
/// "No responders" (nothing subscribes to the subject: a replicated stream between leaders,
/// or one whose new leader's interest has not reached this server yet) means no server took
/// the message, so it is sent again, pausing 5 ms and doubling to 100 ms, until `timeout` has
/// passed since the call began; then it is [`NatsError::NotApplied`].
pub(crate) async fn request(
    client: &async_nats::Client,
    timeout: Duration,
    operation: &str,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<async_nats::Message, NatsError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if client.connection_state() != async_nats::connection::State::Connected {
            return Err(NatsError::NotApplied {
                message: format!("{operation}: not connected to NATS"),
            });
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let request = async_nats::Request::new()
            .headers(headers.clone())
            .payload(payload.clone())
            .timeout(Some(left.max(Duration::from_millis(1))));
        let err = match client.send_request(subject.clone(), request).await {
            Ok(reply) => return Ok(reply),
            Err(err) => err,
        };
        if err.kind() == RequestErrorKind::NoResponders && left > pause {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
            continue;
        }
        return Err(match err.kind() {
            // Nobody was listening on the subject: the stream did not take the message.
            RequestErrorKind::NoResponders => NatsError::NotApplied {
                message: format!(
                    "{operation}: no JetStream server answered within {timeout:?} (no responders)"
                ),
            },
            RequestErrorKind::TimedOut => NatsError::Unknown {
                operation: operation.to_owned(),
                message: format!("no answer within {timeout:?}"),
            },
            // Refused by the client before sending.
            RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                NatsError::Unsendable {
                    message: format!("{operation}: {err}"),
                }
            }
            RequestErrorKind::Other => NatsError::Unknown {
                operation: operation.to_owned(),
                message: err.to_string(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn acks_and_errors_parse() {
        let ack = parse_ack(br#"{"stream":"KV_x","seq":42}"#, "put").unwrap();
        assert_eq!(ack.sequence, 42);
        let err = parse_ack(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}}"#,
            "put",
        )
        .unwrap_err();
        let NatsError::Api { error, .. } = err else {
            panic!("not an API error: {err}");
        };
        assert!(error.is_conflict(), "{error}");
        assert_eq!(error.reported_last(), Some(3));
        let err = parse_ack(b"not json", "put").unwrap_err();
        assert!(matches!(err, NatsError::BadReply { .. }), "{err}");
    }

    #[test]
    fn barrier_sequences_round_trip() {
        let sequences = [1050u64, 1047, 1040, 3, 1];
        let text = encode_sequences(&sequences);
        assert_eq!(text, "1050 3 7 1037 2");
        assert_eq!(decode_sequences(&text), Some(sequences.to_vec()));
        assert_eq!(decode_sequences("7"), Some(vec![7]));
        for bad in ["", "x", "5 6", "5 0", "5  1"] {
            assert_eq!(decode_sequences(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn markers_and_tombstones_are_told_apart() {
        let mut headers = HeaderMap::new();
        assert_eq!(kind(Some(&headers)), Kind::Put);
        headers.insert(KV_OPERATION, "DEL");
        assert_eq!(kind(Some(&headers)), Kind::Delete);
        let mut marker = HeaderMap::new();
        marker.insert(KV_OPERATION, "PURGE");
        marker.insert(MARKER_REASON, "MaxAge");
        assert_eq!(kind(Some(&marker)), Kind::Expire);
    }
}
