//! Reading a request: its query (unknown parameters are an error), its preconditions and its
//! body (refused past a limit before it is read whole).

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use swarmstate_core::{Error, Key, Pattern, Revision};
use swarmstate_http::wire::{IDEMPOTENCY_KEY, parse_etag};

use crate::problem::ApiError;

/// Parses the query string into `T`, whose fields are every parameter the route takes.
pub(crate) fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|err| {
        // serde speaks of fields; a client sent query parameters.
        let reason = err
            .to_string()
            .replace("unknown field", "unknown query parameter")
            .replace("missing field", "missing query parameter")
            .replace("duplicate field", "duplicate query parameter")
            .replace(", there are no fields", "; this endpoint takes none")
            .replace("expected one of", "it takes");
        ApiError::bad(format!("bad query {:?}: {reason}", raw.unwrap_or_default()))
    })
}

/// A key from the request path.
pub(crate) fn key(text: &str) -> Result<Key, ApiError> {
    Ok(Key::new_reserved(text)?)
}

/// A pattern from the query.
pub(crate) fn pattern(text: &str) -> Result<Pattern, ApiError> {
    Ok(Pattern::new(text)?)
}

/// What the preconditions of a write ask of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Precondition {
    None,
    /// `If-None-Match: *`.
    Absent,
    /// `If-Match: "<rev>"`.
    At(Revision),
}

/// Reads `If-Match` and `If-None-Match`.
pub(crate) fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let text = |name: &header::HeaderName| -> Result<Option<&str>, ApiError> {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::bad(format!("{name} may be given once")));
        }
        value
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::bad(format!("{name} is not text")))
    };
    match (text(&header::IF_MATCH)?, text(&header::IF_NONE_MATCH)?) {
        (Some(_), Some(_)) => Err(ApiError::bad(
            "If-Match and If-None-Match cannot both be given",
        )),
        (None, Some(value)) if value.trim() == "*" => Ok(Precondition::Absent),
        (None, Some(value)) => Err(ApiError::bad(format!(
            "If-None-Match: {value:?} is not supported; use If-None-Match: * to create only if \
             the key is absent"
        ))),
        (Some(value), None) if value.trim() == "*" => Err(ApiError::bad(
            "If-Match: * is not supported; use If-Match: \"<revision>\" to write only at that \
             revision",
        )),
        (Some(value), None) => {
            Ok(Precondition::At(parse_etag(value).map_err(|err| {
                ApiError::bad(format!("If-Match: {err}"))
            })?))
        }
        (None, None) => Ok(Precondition::None),
    }
}

/// A header's text, if it is there; given more than once, it is an error.
pub(crate) fn header_text<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad(format!(
            "the {name} header may be given once"
        )));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| ApiError::bad(format!("the {name} header is not text")))
}

/// Refuses an `Idempotency-Key` where the store has none to honour, rather than ignoring it.
pub(crate) fn no_idempotency_key(headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    if headers.contains_key(IDEMPOTENCY_KEY) {
        return Err(ApiError::bad(format!(
            "{what} takes no Idempotency-Key (only a put does); a conditional write \
             (If-Match, or a transaction's if_revision) is safe to retry instead"
        )));
    }
    Ok(())
}

/// A body refused for its size: at least this many bytes were announced or sent.
pub(crate) struct TooLarge(pub(crate) usize);

/// Reads the body, refusing it as soon as it is known to exceed `limit` bytes: at once from
/// `Content-Length`, otherwise when the bytes received pass it.
pub(crate) async fn body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Result<Bytes, TooLarge>, ApiError> {
    if let Some(length) = header_text(headers, header::CONTENT_LENGTH.as_str())? {
        let length: usize = length
            .trim()
            .parse()
            .map_err(|_| ApiError::bad("Content-Length is not a number"))?;
        if length > limit {
            return Ok(Err(TooLarge(length)));
        }
    }
    let mut body = body;
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            ApiError::from(Error::InvalidInput {
                message: format!("the request body was not received whole: {err}"),
            })
            .with_status(StatusCode::REQUEST_TIMEOUT)
        })?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > limit {
                return Ok(Err(TooLarge(bytes.len())));
            }
        }
    }
    Ok(Ok(bytes.freeze()))
}
