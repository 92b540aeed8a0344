//! The routes of API v1 and their handlers (watches are in `watch.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::watch;

use swarmstate_core::{
    Error, Key, Pattern, PutMode, PutOptions, Revision, StateStore, StateStoreExt, TxnOp,
    TxnResult, WatchEvent, WatchStart,
};
use swarmstate_http::wire::{
    DEFAULT_PAGE, EXPIRES_IN, EntriesPage, IDEMPOTENCY_KEY, KeysPage, MAX_PAGE, Status, TxnAnswer,
    TxnRequest, WireCapabilities, WireEntry, WireOp, WireResult, WriteAnswer, etag, json, millis,
    parse_ttl,
};

use crate::input::{self, Precondition, TooLarge};
use crate::problem::ApiError;

/// The OpenAPI document of API v1.
pub(crate) const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) store: Arc<dyn StateStore>,
    pub(crate) instance: Arc<str>,
    pub(crate) progress_interval: Duration,
    pub(crate) max_txn_body: usize,
    /// Turns true when the server starts shutting down; watch streams end on it.
    pub(crate) shutdown: watch::Receiver<bool>,
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/kv/{*key}",
            get(get_kv)
                .put(put_kv)
                .delete(delete_kv)
                .fallback(method_not_allowed),
        )
        .route("/v1/keys", get(list_keys).fallback(method_not_allowed))
        .route(
            "/v1/entries",
            get(list_entries).fallback(method_not_allowed),
        )
        .route(
            "/v1/txn",
            axum::routing::post(txn).fallback(method_not_allowed),
        )
        .route(
            "/v1/watch",
            get(crate::watch::watch).fallback(method_not_allowed),
        )
        .route("/v1/status", get(status).fallback(method_not_allowed))
        .route(
            "/v1/openapi.json",
            get(openapi).fallback(method_not_allowed),
        )
        .route("/healthz", get(healthz).fallback(method_not_allowed))
        .merge(crate::recipes::routes())
        .fallback(no_route)
        .with_state(state)
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::bad(format!(
        "no such endpoint {}; see /v1/openapi.json",
        uri.path()
    ))
    .with_status(StatusCode::NOT_FOUND)
}

pub(crate) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::bad(format!("{} does not take {method}", uri.path()))
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// A route that takes no query parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutParams {
    ttl: Option<String>,
}

fn path_key(
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Key, ApiError> {
    let Path(text) = path.map_err(|err| ApiError::bad(format!("bad key in the path: {err}")))?;
    input::key(&text)
}

async fn get_kv(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    let NoParams {} = input::query(raw.as_deref())?;
    let Some(entry) = state.store.get(&key).await? else {
        return Err(Error::NotFound { key }.into());
    };
    let mut response = (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        entry.value,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, header_value(&etag(entry.revision)));
    if let Some(left) = entry.expires_in {
        headers.insert(EXPIRES_IN, header_value(&millis(left).to_string()));
    }
    Ok(response)
}

async fn put_kv(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    let params: PutParams = input::query(raw.as_deref())?;
    let mode = match input::precondition(&headers)? {
        Precondition::None => PutMode::Overwrite,
        Precondition::Absent => PutMode::Create,
        Precondition::At(revision) => PutMode::Update(revision),
    };
    let mut options = PutOptions::with_mode(mode);
    if let Some(text) = &params.ttl {
        options.ttl = Some(parse_ttl(text).map_err(ApiError::bad)?);
    }
    if let Some(id) = input::header_text(&headers, IDEMPOTENCY_KEY)? {
        options.idempotency_key = Some(id.to_owned());
    }
    options.validate()?;
    let limit = state.store.capabilities().max_value_size;
    let value = match input::body(&headers, body, limit).await? {
        Ok(value) => value,
        Err(TooLarge(size)) => {
            return Err(Error::ValueTooLarge { key, size, limit }.into());
        }
    };
    let revision = state.store.put(&key, value, options).await?;
    Ok(written(Some(revision)))
}

async fn delete_kv(
    State(state): State<AppState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = path_key(path)?;
    let NoParams {} = input::query(raw.as_deref())?;
    input::no_idempotency_key(&headers, "a delete")?;
    let expected = match input::precondition(&headers)? {
        Precondition::None => None,
        Precondition::At(revision) => Some(revision),
        Precondition::Absent => {
            return Err(ApiError::bad(
                "If-None-Match: * makes no sense on a delete; use If-Match: \"<revision>\"",
            ));
        }
    };
    let revision = state.store.delete(&key, expected).await?;
    Ok(written(revision))
}

/// The answer to a write: its revision as JSON and as the ETag.
fn written(revision: Option<Revision>) -> Response {
    let answer = WriteAnswer {
        revision: revision.map(Revision::get),
    };
    let mut response = json_response(StatusCode::OK, &answer);
    if let Some(revision) = revision {
        response
            .headers_mut()
            .insert(header::ETAG, header_value(&etag(revision)));
    }
    response
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json(body),
    )
        .into_response()
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("revisions and numbers are valid header values")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    pattern: String,
    limit: Option<String>,
    after: Option<String>,
}

impl ListParams {
    fn limit(&self) -> Result<usize, ApiError> {
        let Some(text) = &self.limit else {
            return Ok(DEFAULT_PAGE);
        };
        match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(format!(
                "limit {text:?} is not a number from 1 to {MAX_PAGE}"
            ))),
        }
    }
}

/// One page of `items` (in key order) after `after`, and where the next page starts.
fn page<T>(
    items: impl Iterator<Item = (String, T)>,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut out = Vec::new();
    let mut last = None;
    for (key, item) in items.filter(|(key, _)| after.is_none_or(|after| key.as_str() > after)) {
        if out.len() == limit {
            return (out, last);
        }
        last = Some(key);
        out.push(item);
    }
    (out, None)
}

async fn list_keys(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params: ListParams = input::query(raw.as_deref())?;
    let pattern = input::pattern(&params.pattern)?;
    let limit = params.limit()?;
    let mut keys = Vec::new();
    let mut stream = state.store.keys(&pattern).await?;
    while let Some(key) = stream.next().await {
        keys.push(key?.as_str().to_owned());
    }
    let (keys, next) = page(
        keys.into_iter().map(|key| (key.clone(), key)),
        params.after.as_deref(),
        limit,
    );
    Ok(json_response(StatusCode::OK, &KeysPage { keys, next }))
}

async fn list_entries(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params: ListParams = input::query(raw.as_deref())?;
    let pattern = input::pattern(&params.pattern)?;
    let limit = params.limit()?;
    let (entries, revision) = snapshot(&*state.store, &pattern).await?;
    let (entries, next) = page(
        entries
            .into_iter()
            .map(|(key, entry)| (key, WireEntry::from_entry(&entry))),
        params.after.as_deref(),
        limit,
    );
    let page = EntriesPage {
        entries,
        revision: revision.map(Revision::get),
        next,
    };
    Ok(json_response(StatusCode::OK, &page))
}

/// The entries `pattern` selects at one revision, by key: a snapshot watch applied up to its
/// `CaughtUp` (a backend may hand out changes made while the snapshot was read before it).
async fn snapshot(
    store: &dyn StateStore,
    pattern: &Pattern,
) -> Result<(BTreeMap<String, swarmstate_core::Entry>, Option<Revision>), Error> {
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        let mut events = store.watch(pattern, WatchStart::Snapshot).await?;
        let mut entries = BTreeMap::new();
        while let Some(event) = events.next().await {
            match event {
                WatchEvent::Put(entry) => {
                    entries.insert(entry.key.as_str().to_owned(), entry);
                }
                WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
                    entries.remove(key.as_str());
                }
                WatchEvent::CaughtUp { revision } => return Ok((entries, revision)),
                // The snapshot was too busy to finish; take another.
                WatchEvent::Lagged { .. } => break,
            }
        }
    }
    Err(Error::Unavailable {
        message: format!("could not read a snapshot of {pattern} in {ATTEMPTS} attempts"),
    })
}

/// The store's current revision.
pub(crate) async fn current_revision(store: &dyn StateStore) -> Result<Option<Revision>, Error> {
    store.current_revision().await
}

async fn txn(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let NoParams {} = input::query(raw.as_deref())?;
    input::no_idempotency_key(&headers, "a transaction")?;
    let bytes = match input::body(&headers, body, state.max_txn_body).await? {
        Ok(bytes) => bytes,
        Err(TooLarge(size)) => {
            return Err(ApiError::bad(format!(
                "a transaction body is at most {} bytes, got at least {size}",
                state.max_txn_body
            ))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE));
        }
    };
    let request: TxnRequest = serde_json::from_slice(&bytes).map_err(|err| {
        ApiError::bad(format!(
            "the transaction is not valid JSON of the expected shape: {err}"
        ))
    })?;
    let ops = txn_ops(request.ops)?;
    let outcome = match txn_shape(&state, &ops) {
        Ok(()) => state.store.txn(ops.clone()).await,
        Err(err) => Err(err),
    };
    txn_answer(outcome, &ops)
}

/// Checks the shape every backend checks (1 to MAX_TXN_OPS operations, each key once, values
/// within the limit) here first, so that a malformed transaction never reaches the store.
pub(crate) fn txn_shape(state: &AppState, ops: &[TxnOp]) -> Result<(), Error> {
    swarmstate_core::backend::validate_txn(ops, state.store.capabilities().max_value_size)
}

/// A transaction's operations from the wire; a malformed one is 400 naming its index.
pub(crate) fn txn_ops(ops: Vec<WireOp>) -> Result<Vec<TxnOp>, ApiError> {
    ops.into_iter()
        .enumerate()
        .map(|(index, op)| {
            op.into_op(index)
                .map_err(|err| ApiError::from(err).at_index(index))
        })
        .collect()
}

/// The answer to a transaction of `ops`: its results, or its error with the index of the
/// operation it names, a failed condition being 409.
pub(crate) fn txn_answer(
    outcome: Result<Vec<TxnResult>, Error>,
    ops: &[TxnOp],
) -> Result<Response, ApiError> {
    match outcome {
        Ok(results) => Ok(json_response(
            StatusCode::OK,
            &TxnAnswer {
                results: results.iter().map(WireResult::from_result).collect(),
            },
        )),
        Err(err) => {
            let conflict = err.is_conflict();
            let index = failing_key(&err).and_then(|key| ops.iter().position(|op| op.key == *key));
            let mut api = ApiError::from(err);
            if conflict {
                api = api.with_status(StatusCode::CONFLICT);
            }
            if let Some(index) = index {
                api = api.at_index(index);
            }
            Err(api)
        }
    }
}

fn failing_key(err: &Error) -> Option<&Key> {
    match err {
        Error::AlreadyExists { key, .. }
        | Error::RevisionMismatch { key, .. }
        | Error::ValueTooLarge { key, .. }
        | Error::QuotaExceeded { key, .. } => Some(key),
        _ => None,
    }
}

pub(crate) fn status_of(state: &AppState, revision: Option<Revision>) -> Status {
    let capabilities = state.store.capabilities();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: capabilities.backend.to_owned(),
        revision: revision.map(Revision::get),
        capabilities: WireCapabilities::from_capabilities(&capabilities),
        instance: state.instance.to_string(),
        watch_progress_ms: millis(state.progress_interval),
    }
}

async fn status(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let NoParams {} = input::query(raw.as_deref())?;
    let revision = current_revision(&*state.store).await?;
    Ok(json_response(StatusCode::OK, &status_of(&state, revision)))
}

async fn healthz(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let NoParams {} = input::query(raw.as_deref())?;
    current_revision(&*state.store).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "status": "ok" }),
    ))
}

async fn openapi(RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let NoParams {} = input::query(raw.as_deref())?;
    Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_continue_after_the_last_key_given() {
        let keys = ["a", "b", "c", "d", "e"].map(str::to_owned);
        let items = || keys.iter().map(|key| (key.clone(), key.clone()));
        assert_eq!(
            page(items(), None, 2),
            (vec!["a".into(), "b".into()], Some("b".into()))
        );
        assert_eq!(
            page(items(), Some("b"), 2),
            (vec!["c".into(), "d".into()], Some("d".into()))
        );
        assert_eq!(page(items(), Some("d"), 2), (vec!["e".into()], None));
        assert_eq!(page(items(), None, 5).1, None);
        assert_eq!(page(items(), Some("zz"), 5), (vec![], None));
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = document["paths"].as_object().unwrap();
        for route in [
            "/v1/kv/{key}",
            "/v1/keys",
            "/v1/entries",
            "/v1/txn",
            "/v1/watch",
            "/v1/status",
            "/v1/openapi.json",
            "/healthz",
            "/v1/locks/{key}",
            "/v1/locks/{key}/acquire",
            "/v1/locks/{key}/refresh",
            "/v1/locks/{key}/release",
            "/v1/locks/{key}/txn",
            "/v1/elections/{name}",
            "/v1/elections/{name}/campaign",
            "/v1/elections/{name}/refresh",
            "/v1/elections/{name}/resign",
            "/v1/elections/{name}/txn",
            "/v1/elections/{name}/observe",
            "/v1/queues/{name}/items",
            "/v1/queues/{name}/items/{id}",
            "/v1/queues/{name}/claim",
            "/v1/queues/{name}/heartbeat",
            "/v1/queues/{name}/complete",
            "/v1/queues/{name}/fail",
        ] {
            assert!(
                paths.contains_key(route),
                "{route} is not in the OpenAPI document"
            );
        }
        assert_eq!(
            paths.len(),
            25,
            "the document lists a route the server does not serve"
        );
    }
}
