//! Work queues: enqueue, claim (at once or waiting), heartbeat, complete, fail, and the items'
//! status.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use swarmstate_core::{Error, Key};
use swarmstate_http::wire::decode_value;
use swarmstate_recipes::queue::{DEFAULT_MAX_ATTEMPTS, WorkQueue};

use super::locks::unless_shutdown;
use super::wire::{
    ClaimRequest, CompleteRequest, EnqueueRequest, Enqueued, FailRequest, Failed, WireClaim,
    WireItem, WireItems,
};
use super::{Call, Named, duration, wait};
use crate::api::{AppState, NoParams, json_response, txn_answer, txn_ops, txn_shape};
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
    Call { key, body }: Call<EnqueueRequest>,
) -> Result<Response, ApiError> {
    let encoding = body.encoding.unwrap_or_default();
    let payload = decode_value(&body.payload, encoding, "the payload").map_err(ApiError::bad)?;
    let created = queue(&state, key, None)?.enqueue(&body.id, payload).await?;
    Ok(json_response(StatusCode::OK, &Enqueued { created }))
}

pub(crate) async fn claim(
    State(state): State<AppState>,
    Call { key, body }: Call<ClaimRequest>,
) -> Result<Response, ApiError> {
    let lease = duration("lease", &body.lease)?;
    let wait = wait(body.wait.as_deref())?;
    let queue = queue(&state, key, body.max_attempts)?;
    let claim = match wait {
        None => queue.claim(&body.worker, lease).await?,
        Some(wait) => {
            let waiting = queue.claim_wait(&body.worker, lease, wait);
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
    Call { key, body }: Call<WireClaim>,
) -> Result<Response, ApiError> {
    let claim = body.into_claim(&key)?;
    queue(&state, key, None)?.heartbeat(&claim).await?;
    Ok(json_response(
        StatusCode::OK,
        &WireClaim::from_handle(&claim.handle()),
    ))
}

pub(crate) async fn complete(
    State(state): State<AppState>,
    Call { key, body }: Call<CompleteRequest>,
) -> Result<Response, ApiError> {
    let claim = body.claim.into_claim(&key)?;
    let ops = txn_ops(body.ops)?;
    // No ops is a plain completion; any ops are a transaction's, checked as one.
    if !ops.is_empty()
        && let Err(err) = txn_shape(&state, &ops)
    {
        return txn_answer(Err(err), &ops);
    }
    let outcome = queue(&state, key, None)?
        .complete_with(claim, ops.clone())
        .await;
    // The same answer as a transaction's: the results of `ops`, or the error naming its index.
    txn_answer(outcome, &ops)
}

pub(crate) async fn fail(
    State(state): State<AppState>,
    Call { key, body }: Call<FailRequest>,
) -> Result<Response, ApiError> {
    let claim = body.claim.into_claim(&key)?;
    let state = queue(&state, key, body.max_attempts)?
        .fail(claim, &body.reason)
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
    Named(name): Named,
) -> Result<Response, ApiError> {
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
