//! Locks, elections and queues over HTTP: the library's recipes run on the server's store, so
//! agents in any language contend with Rust agents for the same keys.
//!
//! The routes are stateless. Each answer is a handle (a lock, a leadership, a claim) as JSON;
//! later requests send it back, and the recipe rebuilds the holding from it
//! ([`LockGuard::from_handle`], [`Claim::from_handle`]). A handle that is not the current
//! holding fails on the recipe's first write as `lock_lost`, so nothing here needs to remember
//! who holds what, and a server restart or a second server loses nothing.
//!
//! A guard rebuilt from a handle releases its lock when dropped, so every handler that does not
//! mean to release turns its guard back into a handle, whatever the outcome; a waiting acquire
//! whose client went away drops its future, and the recipe removes its ticket and releases
//! whatever it had just won.
//!
//! [`LockGuard::from_handle`]: swarmstate_recipes::lock::LockGuard::from_handle
//! [`Claim::from_handle`]: swarmstate_recipes::queue::Claim::from_handle

mod locks;
mod queues;
mod wire;

use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use swarmstate_core::Key;
use swarmstate_http::wire::parse_ttl;

use crate::api::{AppState, NoParams, method_not_allowed};
use crate::input::{self, TooLarge};
use crate::problem::ApiError;

/// The longest `wait` a request may ask for: a client that needs longer asks again.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(300);

/// The routes of this module, to merge into the API's router.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/locks/{key}",
            get(locks::holder).fallback(method_not_allowed),
        )
        .route(
            "/v1/locks/{key}/acquire",
            post(locks::acquire).fallback(method_not_allowed),
        )
        .route(
            "/v1/locks/{key}/refresh",
            post(locks::refresh).fallback(method_not_allowed),
        )
        .route(
            "/v1/locks/{key}/release",
            post(locks::release).fallback(method_not_allowed),
        )
        .route(
            "/v1/locks/{key}/txn",
            post(locks::txn).fallback(method_not_allowed),
        )
        .route(
            "/v1/elections/{name}",
            get(locks::leader).fallback(method_not_allowed),
        )
        .route(
            "/v1/elections/{name}/campaign",
            post(locks::campaign).fallback(method_not_allowed),
        )
        .route(
            "/v1/elections/{name}/refresh",
            post(locks::refresh_leadership).fallback(method_not_allowed),
        )
        .route(
            "/v1/elections/{name}/resign",
            post(locks::resign).fallback(method_not_allowed),
        )
        .route(
            "/v1/elections/{name}/txn",
            post(locks::leadership_txn).fallback(method_not_allowed),
        )
        .route(
            "/v1/elections/{name}/observe",
            get(locks::observe).fallback(method_not_allowed),
        )
        .route(
            "/v1/queues/{name}/items",
            get(queues::list)
                .post(queues::enqueue)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/queues/{name}/items/{id}",
            get(queues::item).fallback(method_not_allowed),
        )
        .route(
            "/v1/queues/{name}/claim",
            post(queues::claim).fallback(method_not_allowed),
        )
        .route(
            "/v1/queues/{name}/heartbeat",
            post(queues::heartbeat).fallback(method_not_allowed),
        )
        .route(
            "/v1/queues/{name}/complete",
            post(queues::complete).fallback(method_not_allowed),
        )
        .route(
            "/v1/queues/{name}/fail",
            post(queues::fail).fallback(method_not_allowed),
        )
}

/// A recipe request without a body: the key its path names (a lock key, an election or a
/// queue name), and no query parameters.
pub(super) struct Named(pub(super) Key);

impl FromRequestParts<AppState> for Named {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Named, ApiError> {
        let path = Path::<String>::from_request_parts(parts, state).await;
        let Path(text) =
            path.map_err(|err| ApiError::bad(format!("bad key in the path: {err}")))?;
        let NoParams {} = input::query(parts.uri.query())?;
        Ok(Named(input::key(&text)?))
    }
}

/// A recipe request with a JSON body of shape `T` (unknown fields refused), at most the
/// server's transaction body limit, and no query parameters. A request that is not a put
/// takes no `Idempotency-Key` either, so a client is never led to think it applies.
pub(super) struct Call<T> {
    pub(super) key: Key,
    pub(super) body: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for Call<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Call<T>, ApiError> {
        let (mut parts, body) = request.into_parts();
        let Named(key) = Named::from_request_parts(&mut parts, state).await?;
        input::no_idempotency_key(&parts.headers, "a lock, election or queue request")?;
        let limit = state.max_txn_body;
        let bytes = match input::body(&parts.headers, body, limit).await? {
            Ok(bytes) => bytes,
            Err(TooLarge(size)) => {
                return Err(ApiError::bad(format!(
                    "the request is at most {limit} bytes, got at least {size}"
                ))
                .with_status(StatusCode::PAYLOAD_TOO_LARGE));
            }
        };
        let body = serde_json::from_slice(&bytes).map_err(|err| {
            ApiError::bad(format!(
                "the request is not JSON of the expected shape: {err}"
            ))
        })?;
        Ok(Call { key, body })
    }
}

/// A duration field (`ttl`, `lease`, `wait`), written as `?ttl=` is.
fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    parse_ttl(text).map_err(|_| {
        ApiError::bad(format!(
            "{field} {text:?} is not a duration such as 30s or 500ms"
        ))
    })
}

/// A `wait` field: absent or zero means try once; at most [`MAX_WAIT`].
fn wait(text: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let wait = duration("wait", text)?;
    if wait > MAX_WAIT {
        return Err(ApiError::bad(format!(
            "wait {text:?} is longer than the most a request may wait ({}s); ask again instead",
            MAX_WAIT.as_secs()
        )));
    }
    Ok((!wait.is_zero()).then_some(wait))
}

/// Requires a handle's own key, when it names one, to be the path's.
fn same_key(what: &str, named: Option<&str>, path: &Key) -> Result<(), ApiError> {
    match named {
        Some(named) if named != path.as_str() => Err(ApiError::bad(format!(
            "the {what} is of {named}, but the path names {path}"
        ))),
        _ => Ok(()),
    }
}
