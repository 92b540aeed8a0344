//! Work queues: enqueue, claim (at once or waiting), heartbeat, complete, fail, and the items'
//! status.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use swarmstate_core::{Error, Key};
use swarmstate_http::wire::{WireResult, decode_value};
use swarmstate_recipes::queue::{DEFAULT_MAX_ATTEMPTS, WorkQueue};

use super::locks::{SMALL_BODY, unless_shutdown};
use super::wire::{
    ClaimRequest, CompleteRequest, Completed, EnqueueRequest, Enqueued, FailRequest, Failed,
    WireClaim, WireItem, WireItems,
};
use super::{duration, json_body, path_key, wait};
use crate::api::{AppState, NoParams, json_response, txn_answer, txn_ops};
use crate::input;
use crate::problem::ApiError;

/// The most attempts a request may give an item.
const MAX_ATTEMPTS: u32 = 1000;

/// The queue a path names, with `max_attempts` checked.
fn queue(state: &AppState, name: Key, max_attempts: Option<u32>) -> Result<WorkQueue, ApiError> {
    let attempts = max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=MAX_ATTEMPTS).contains(&attempts) {
        return Err(ApiError::bad(format!(
            "max_attempts must be 1 to {MAX_ATTEMPTS}, got {attempts}"
        )));
    }
    Ok(WorkQueue::new(state.store.clone(), name).max_attempts(attempts))
}

pub(crate) async fn enqueue(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = path_key(path)?;
    let NoParams {} = input::query(raw.as_deref())?;
    // The payload is a value: it may be as large as the store takes.
    let limit = state.store.capabilities().max_value_size * 2 + SMALL_BODY;
    let request: EnqueueRequest = json_body(&headers, body, limit, "the item").await?;
    let payload = decode_value(
        &request.payload,
        request.encoding.unwrap_or_default(),
        "the payload",
    )
    .map_err(ApiError::bad)?;
    let created = queue(&state, name, None)?
        .enqueue(&request.id, payload)
        .await?;
    Ok(json_response(StatusCode::OK, &Enqueued { created }))
}

pub(crate) async fn claim(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = path_key(path)?;
    let NoParams {} = input::query(raw.as_deref())?;
    let request: ClaimRequest = json_body(&headers, body, SMALL_BODY, "the request").await?;
    let lease = duration("lease", &request.lease)?;
    let wait = wait(request.wait.as_deref())?;
    let queue = queue(&state, name, request.max_attempts)?;
    let claim = match wait {
        None => queue.claim(&request.worker, lease).await?,
        Some(wait) => {
            let waiting = queue.claim_wait(&request.worker, lease, wait);
            unless_shutdown(&state, waiting).await?
        }
    };
    Ok(match claim {
        Some(claim) => json_response(StatusCode::OK, &WireClaim::from_claim(&claim)),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

pub(crate) async fn heartbeat(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = path_key(path)?;
    let NoParams {} = input::query(raw.as_deref())?;
    let wire: WireClaim = json_body(&headers, body, SMALL_BODY, "the claim").await?;
    let claim = wire.into_claim(&name)?;
    queue(&state, name, None)?.heartbeat(&claim).await?;
    Ok(json_response(
        StatusCode::OK,
        &WireClaim::from_handle(&claim.handle()),
    ))
}

pub(crate) async fn complete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = path_key(path)?;
    let NoParams {} = input::query(raw.as_deref())?;
    input::no_idempotency_key(&headers, "a completion")?;
    let request: CompleteRequest =
        json_body(&headers, body, state.max_txn_body, "the completion").await?;
    let claim = request.claim.into_claim(&name)?;
    let ops = txn_ops(request.ops)?;
    if !ops.is_empty() {
        let max_value_size = state.store.capabilities().max_value_size;
        if let Err(err) = swarmstate_core::backend::validate_txn(&ops, max_value_size) {
            return txn_answer(Err(err), &ops);
        }
    }
    let outcome = queue(&state, name, None)?
        .complete_with(claim, ops.clone())
        .await;
    match outcome {
        Ok(results) => Ok(json_response(
            StatusCode::OK,
            &Completed {
                results: results.iter().map(WireResult::from_result).collect(),
            },
        )),
        Err(err) => txn_answer(Err(err), &ops),
    }
}

pub(crate) async fn fail(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = path_key(path)?;
    let NoParams {} = input::query(raw.as_deref())?;
    let request: FailRequest = json_body(&headers, body, SMALL_BODY, "the failure").await?;
    let claim = request.claim.into_claim(&name)?;
    let state = queue(&state, name, request.max_attempts)?
        .fail(claim, &request.reason)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &Failed {
            state: state.to_string(),
        },
    ))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let name = path_key(path)?;
    let NoParams {} = input::query(raw.as_deref())?;
    let items = queue(&state, name, None)?.list().await?;
    let items = WireItems {
        items: items.iter().map(WireItem::from_status).collect(),
    };
    Ok(json_response(StatusCode::OK, &items))
}

pub(crate) async fn item(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let Path((name, id)) =
        path.map_err(|err| ApiError::bad(format!("bad queue or item in the path: {err}")))?;
    let name = input::key(&name)?;
    let NoParams {} = input::query(raw.as_deref())?;
    let queue = queue(&state, name.clone(), None)?;
    let Some(status) = queue.status(&id).await? else {
        return Err(Error::NotFound {
            key: Key::new_reserved(format!("{name}.item.{id}")).unwrap_or(name),
        }
        .into());
    };
    Ok(json_response(
        StatusCode::OK,
        &WireItem::from_status(&status),
    ))
}
