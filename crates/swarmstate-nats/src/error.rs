//! [`NatsError`]: how a request to JetStream failed, and what that says about its outcome.
//!
//! Every JetStream failure is one of these. The layers below the operations return it; the
//! operations (`write`, `txn`, `watch`, opening the stream in `config`) and the store hand it
//! on as a [`swarmstate_core::Error`] through `From<NatsError> for Error`, the one place where
//! each kind of failure gets its category (`Unavailable`: nothing applied; `Ambiguous`: it
//! may have; `InvalidInput`: the client would not send it; `Backend`: an answer no caller can
//! act on, with the JetStream API error, code and description, as its source). What the
//! operations decide themselves (a condition that does not hold, a transaction too large for
//! one batch, a bucket refused for its settings) is a `swarmstate_core::Error` from the start.

use swarmstate_core::Error;

/// JetStream's "wrong last sequence" error; on R3 a lost race may also come back as 10164.
const WRONG_LAST_SEQUENCE: u64 = 10071;
const WRONG_LAST_SEQUENCE_CLUSTERED: u64 = 10164;
/// An earlier message with the same `Nats-Msg-Id` is being proposed and not yet applied.
const DUPLICATE_IN_PROCESS: u64 = 10158;

/// An error the JetStream API answered a publish with (nothing was stored).
#[derive(Debug, Clone, thiserror::Error)]
#[error("JetStream error {err_code} ({code}): {description}")]
pub(crate) struct ApiError {
    pub(crate) code: u64,
    pub(crate) err_code: u64,
    pub(crate) description: String,
}

impl ApiError {
    /// Refused because of the subject's state, or of a write to it still in flight: the caller
    /// reads again and decides again.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(
            self.err_code,
            WRONG_LAST_SEQUENCE | WRONG_LAST_SEQUENCE_CLUSTERED | DUPLICATE_IN_PROCESS
        )
    }

    /// Refused without comparing, because another write to the subject (or an earlier attempt
    /// of this very write) was still in flight: it says nothing about the subject's sequence.
    pub(crate) fn is_in_flight(&self) -> bool {
        matches!(
            self.err_code,
            WRONG_LAST_SEQUENCE_CLUSTERED | DUPLICATE_IN_PROCESS
        )
    }

    /// The last sequence of the subject as the refusing server had it ("wrong last sequence:
    /// N"), for a refusal that compared.
    pub(crate) fn reported_last(&self) -> Option<u64> {
        if self.err_code != WRONG_LAST_SEQUENCE {
            return None;
        }
        self.description
            .rsplit(": ")
            .next()
            .and_then(|n| n.trim().parse().ok())
    }
}

/// A failed request to JetStream. Each variant says what is known about the outcome.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NatsError {
    /// The store was closed; nothing was sent.
    #[error("the store is closed")]
    Closed,

    /// Nothing was applied: the request never left (no connection, no responders), every
    /// attempt was refused, or nothing that was sent can have changed a key (a read, a read
    /// barrier, a batch whose commit was not sent).
    #[error("{message}")]
    NotApplied { message: String },

    /// Sent, and whether it was applied is unknown: no answer came, or the answers that did
    /// could not settle it.
    #[error("{operation}: {message}")]
    Unknown { operation: String, message: String },

    /// The client library would not send it (an invalid subject, a message over the server's
    /// `max_payload`).
    #[error("{message}")]
    Unsendable { message: String },

    /// The JetStream API refused it. Conflicts ([`ApiError::is_conflict`]) are answered by the
    /// caller; any other refusal is reported as it is.
    #[error("{operation}: {error}")]
    Api {
        operation: String,
        #[source]
        error: ApiError,
    },

    /// An answer that is neither an acknowledgement nor an API error.
    #[error("{operation}: {message}")]
    BadReply { operation: String, message: String },
}

impl From<NatsError> for Error {
    fn from(err: NatsError) -> Error {
        match err {
            NatsError::Closed => Error::Closed,
            NatsError::NotApplied { message } => Error::Unavailable { message },
            NatsError::Unknown { operation, message } => Error::Ambiguous { operation, message },
            NatsError::Unsendable { message } => Error::InvalidInput { message },
            err @ (NatsError::Api { .. } | NatsError::BadReply { .. }) => Error::backend(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn refusal(err_code: u64, description: &str) -> ApiError {
        ApiError {
            code: 400,
            err_code,
            description: description.to_owned(),
        }
    }

    #[test]
    fn refusals_are_told_apart_by_their_error_code() {
        let stale = refusal(WRONG_LAST_SEQUENCE, "wrong last sequence: 3");
        assert!(stale.is_conflict() && !stale.is_in_flight(), "{stale}");
        assert_eq!(stale.reported_last(), Some(3));
        for code in [WRONG_LAST_SEQUENCE_CLUSTERED, DUPLICATE_IN_PROCESS] {
            let in_flight = refusal(code, "in flight");
            assert!(
                in_flight.is_conflict() && in_flight.is_in_flight(),
                "{in_flight}"
            );
            assert_eq!(in_flight.reported_last(), None);
        }
        let other = refusal(10077, "message size exceeds maximum allowed");
        assert!(!other.is_conflict(), "{other}");
    }

    #[test]
    fn an_api_error_is_a_backend_error_whose_source_keeps_the_code() {
        let err = Error::from(NatsError::Api {
            operation: "put k".to_owned(),
            error: refusal(10077, "message size exceeds maximum allowed"),
        });
        assert!(matches!(err, Error::Backend { .. }), "{err}");
        assert!(
            err.to_string().contains("put k: JetStream error 10077"),
            "{err}"
        );
        let nats = err.source().expect("the NATS error");
        let api = nats.source().expect("the API error");
        assert_eq!(
            api.to_string(),
            "JetStream error 10077 (400): message size exceeds maximum allowed"
        );
    }

    #[test]
    fn each_failure_keeps_its_category() {
        let cases = [
            (NatsError::Closed, "closed"),
            (
                NatsError::NotApplied {
                    message: "get k: not connected to NATS".to_owned(),
                },
                "unavailable",
            ),
            (
                NatsError::Unknown {
                    operation: "put k".to_owned(),
                    message: "no answer within 5s".to_owned(),
                },
                "ambiguous",
            ),
            (
                NatsError::Unsendable {
                    message: "put k: maximum payload exceeded".to_owned(),
                },
                "invalid_input",
            ),
            (
                NatsError::BadReply {
                    operation: "put k".to_owned(),
                    message: "unreadable pub ack".to_owned(),
                },
                "backend",
            ),
        ];
        for (nats, kind) in cases {
            let err = Error::from(nats);
            assert_eq!(err.kind().as_str(), kind, "{err}");
        }
    }
}
