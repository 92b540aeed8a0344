//! Errors as `application/problem+json` responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use swarmstate_core::{Error, ErrorKind};
use swarmstate_http::wire::{PROBLEM_JSON, Problem, etag, json};

/// An error on its way to the client: the store's [`Error`], or a mistake in the request that
/// never reached the store, with the status it is answered with.
#[derive(Debug)]
pub(crate) struct ApiError {
    error: Error,
    status: Option<StatusCode>,
    index: Option<usize>,
}

impl ApiError {
    /// A request the client got wrong: 400 with `invalid_input`.
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::from(Error::InvalidInput {
            message: message.into(),
        })
    }

    /// Answers with `status` instead of the kind's own.
    pub(crate) fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }

    /// Names the transaction operation that failed.
    pub(crate) fn at_index(mut self, index: usize) -> ApiError {
        self.index = Some(index);
        self
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        ApiError {
            error,
            status: None,
            index: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut problem = Problem::from_error(&self.error);
        if let Some(status) = self.status {
            problem.status = status.as_u16();
        }
        problem.index = self.index;
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, json(&problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self.error {
            Error::AlreadyExists { revision, .. } => {
                // The current revision, as a successful read would give it.
                if let Ok(value) = HeaderValue::from_str(&etag(*revision)) {
                    headers.insert(header::ETAG, value);
                }
            }
            Error::RevisionMismatch {
                actual: Some(revision),
                ..
            } => {
                if let Ok(value) = HeaderValue::from_str(&etag(*revision)) {
                    headers.insert(header::ETAG, value);
                }
            }
            _ => {}
        }
        if matches!(
            self.error.kind(),
            ErrorKind::Unavailable | ErrorKind::Closed
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The answer to a handler that panicked: whether it changed the store is unknown.
pub(crate) fn panicked(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let operation = "the request".to_owned();
    ApiError::from(Error::Ambiguous {
        operation,
        message: "the server failed while handling the request; it may or may not have applied"
            .into(),
    })
    .with_status(StatusCode::INTERNAL_SERVER_ERROR)
    .into_response()
}
