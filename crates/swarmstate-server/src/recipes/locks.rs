//! Locks and elections: an election's leadership is its leader key held as a lock, so both
//! share the shape of their handlers.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use swarmstate_core::{Error, Result as StoreResult, TxnOp, TxnResult};
use swarmstate_http::wire::{Problem, json};
use swarmstate_recipes::election::Election;
use swarmstate_recipes::lock::{LockGuard, LockHandle, acquire_lock, acquire_lock_wait};

use super::wire::{
    AcquireRequest, CampaignRequest, LeadershipTxnRequest, LockTxnRequest, WireElection,
    WireHolder, WireLeader, WireLeadership, WireLock,
};
use super::{Call, Named, duration, wait};
use crate::api::{AppState, json_response, txn_answer, txn_ops, txn_shape};
use crate::problem::ApiError;
use crate::watch::stopped;

/// Runs a request's wait unless the server starts shutting down first, which answers 503: a
/// waiter must not hold the shutdown up, and dropping its future gives up its place.
pub(super) async fn unless_shutdown<T>(
    state: &AppState,
    wait: impl Future<Output = StoreResult<T>>,
) -> Result<T, ApiError> {
    let mut shutdown = state.shutdown.clone();
    tokio::select! {
        outcome = wait => Ok(outcome?),
        () = stopped(&mut shutdown) => Err(Error::Unavailable {
            message: "the server is shutting down; ask again".into(),
        }.into()),
    }
}

/// Applies `ops` through `guard` (one transaction that also requires the holding), checking
/// their shape first so a malformed transaction never reaches the store, and hands the guard
/// back as a handle: a fenced write never releases.
async fn fenced(state: &AppState, guard: LockGuard, ops: Vec<TxnOp>) -> Result<Response, ApiError> {
    let outcome: StoreResult<Vec<TxnResult>> = match txn_shape(state, &ops) {
        Ok(()) => guard.fenced_txn(ops.clone()).await,
        Err(err) => Err(err),
    };
    guard.into_handle().await;
    txn_answer(outcome, &ops)
}

/// Refreshes the holding `guard` rebuilt and answers its new handle.
async fn refreshed(guard: LockGuard) -> StoreResult<LockHandle> {
    let outcome = guard.refresh().await;
    let handle = guard.into_handle().await;
    outcome.map(|()| handle)
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) async fn acquire(
    State(state): State<AppState>,
    Call { key, body }: Call<AcquireRequest>,
) -> Result<Response, ApiError> {
    let ttl = duration("ttl", &body.ttl)?;
    let guard = match wait(body.wait.as_deref())? {
        None => acquire_lock(&state.store, &key, &body.owner, ttl).await?,
        Some(wait) => {
            let waiting = acquire_lock_wait(&state.store, &key, &body.owner, ttl, wait);
            unless_shutdown(&state, waiting).await?
        }
    };
    let handle = guard.into_handle().await;
    Ok(json_response(
        StatusCode::OK,
        &WireLock::from_handle(&handle),
    ))
}

pub(crate) async fn refresh(
    State(state): State<AppState>,
    Call { key, body }: Call<WireLock>,
) -> Result<Response, ApiError> {
    let guard = LockGuard::from_handle(&state.store, &body.into_handle(&key)?)?;
    let handle = refreshed(guard).await?;
    Ok(json_response(
        StatusCode::OK,
        &WireLock::from_handle(&handle),
    ))
}

pub(crate) async fn release(
    State(state): State<AppState>,
    Call { key, body }: Call<WireLock>,
) -> Result<Response, ApiError> {
    let guard = LockGuard::from_handle(&state.store, &body.into_handle(&key)?)?;
    guard.release().await?;
    Ok(no_content())
}

pub(crate) async fn txn(
    State(state): State<AppState>,
    Call { key, body }: Call<LockTxnRequest>,
) -> Result<Response, ApiError> {
    let handle = body.lock.into_handle(&key)?;
    let ops = txn_ops(body.ops)?;
    let guard = LockGuard::from_handle(&state.store, &handle)?;
    fenced(&state, guard, ops).await
}

pub(crate) async fn holder(
    State(state): State<AppState>,
    Named(key): Named,
) -> Result<Response, ApiError> {
    let Some(entry) = state.store.get(&key).await? else {
        return Err(Error::NotFound { key }.into());
    };
    let holder = WireHolder {
        key: key.as_str().to_owned(),
        holder: String::from_utf8_lossy(&entry.value).into_owned(),
        revision: entry.revision.get(),
        expires_in_ms: entry.expires_in.map(swarmstate_http::wire::millis),
    };
    Ok(json_response(StatusCode::OK, &holder))
}

pub(crate) async fn campaign(
    State(state): State<AppState>,
    Call { key, body }: Call<CampaignRequest>,
) -> Result<Response, ApiError> {
    let ttl = duration("ttl", &body.ttl)?;
    let wait = wait(body.wait.as_deref())?.unwrap_or(Duration::ZERO);
    let election = Election::new(state.store.clone(), key);
    let campaigning = election.campaign_handle(&body.candidate, ttl, wait);
    let handle = unless_shutdown(&state, campaigning).await?;
    Ok(json_response(
        StatusCode::OK,
        &WireLeadership::from_handle(&handle),
    ))
}

pub(crate) async fn refresh_leadership(
    State(state): State<AppState>,
    Call { key, body }: Call<WireLeadership>,
) -> Result<Response, ApiError> {
    let handle = body.into_handle(&key)?;
    let guard = Election::new(state.store.clone(), key).resume(&handle)?;
    let handle = refreshed(guard).await?;
    Ok(json_response(
        StatusCode::OK,
        &WireLeadership::from_handle(&handle),
    ))
}

pub(crate) async fn resign(
    State(state): State<AppState>,
    Call { key, body }: Call<WireLeadership>,
) -> Result<Response, ApiError> {
    let handle = body.into_handle(&key)?;
    let guard = Election::new(state.store.clone(), key).resume(&handle)?;
    guard.release().await?;
    Ok(no_content())
}

pub(crate) async fn leadership_txn(
    State(state): State<AppState>,
    Call { key, body }: Call<LeadershipTxnRequest>,
) -> Result<Response, ApiError> {
    let handle = body.leadership.into_handle(&key)?;
    let ops = txn_ops(body.ops)?;
    let guard = Election::new(state.store.clone(), key).resume(&handle)?;
    fenced(&state, guard, ops).await
}

pub(crate) async fn leader(
    State(state): State<AppState>,
    Named(name): Named,
) -> Result<Response, ApiError> {
    let leader = Election::new(state.store.clone(), name.clone())
        .leader()
        .await?;
    let answer = WireElection {
        name: name.as_str().to_owned(),
        leader: leader.as_ref().map(WireLeader::from_leader),
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// The SSE event names of an election's observe stream.
mod event {
    pub(super) const LEADER: &str = "leader";
    pub(super) const PROGRESS: &str = "progress";
    pub(super) const ERROR: &str = "error";
    pub(super) const SHUTDOWN: &str = "shutdown";
}

pub(crate) async fn observe(
    State(state): State<AppState>,
    Named(name): Named,
) -> Result<Response, ApiError> {
    let changes = Election::new(state.store.clone(), name).observe().await?;
    let shutdown = state.shutdown.clone();
    let every = state.progress_interval;
    // Each change of leader, `progress` while none comes (so a client can tell an idle stream
    // from a dead one), then a last event: `shutdown` when the server stops or the store's
    // stream ends, `error` (a problem document) when it failed.
    let events = futures::stream::unfold(
        (changes, shutdown, false),
        move |(mut changes, mut shutdown, done)| async move {
            if done {
                return None;
            }
            let event = tokio::select! {
                biased;
                () = stopped(&mut shutdown) => None,
                next = changes.next() => next.map(Some),
                () = tokio::time::sleep(every) => Some(None),
            };
            let (event, done) = match event {
                Some(None) => (Event::default().event(event::PROGRESS).data("{}"), false),
                Some(Some(Ok(leader))) => {
                    let data = json(&leader.as_ref().map(WireLeader::from_leader));
                    (Event::default().event(event::LEADER).data(data), false)
                }
                Some(Some(Err(err))) => {
                    let data = json(&Problem::from_error(&err));
                    (Event::default().event(event::ERROR).data(data), true)
                }
                None => (Event::default().event(event::SHUTDOWN).data("{}"), true),
            };
            Some((Ok::<_, Infallible>(event), (changes, shutdown, done)))
        },
    );
    let mut response = Sse::new(events).into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    Ok(response)
}
