//! `HttpStore`: the [`StateStore`] contract over the server's HTTP API.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream;
use reqwest::header::{ETAG, HeaderMap, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use swarmstate_core::{
    Capabilities, Entry, Error, Key, KeyStream, Pattern, PutMode, PutOptions, Result, Revision,
    StateStore, TxnOp, TxnResult, WatchStart, WatchStream,
};

use crate::watch::run_watch;
use crate::wire::{
    self, EXPIRES_IN, EntriesPage, IDEMPOTENCY_KEY, KeysPage, PROBLEM_JSON, Problem, Status,
    TxnAnswer, TxnRequest, WireOp, WriteAnswer, backend_name, etag, format_ttl, parse_etag,
};

/// The default time one request may take before its outcome is reported unknown.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default time a watch keeps trying to reconnect before it ends with `Lagged`.
pub const DEFAULT_RECONNECT_FOR: Duration = Duration::from_secs(30);

/// A store on a `swarmstate serve` server, reached over HTTP: `http://HOST:PORT`.
///
/// Every method maps the server's answer back to the [`Error`] variant the store behind the
/// server returned. Where the server's answer is missing:
/// - a connection that could not be made is [`Error::Unavailable`] (nothing was sent);
/// - a write sent without an answer (the connection broke, the request timed out) is
///   [`Error::Ambiguous`]: it may or may not have applied; retry with the same idempotency key,
///   or re-read;
/// - a read sent without an answer is [`Error::Unavailable`], since a read changes nothing.
///
/// Watches reconnect by themselves when their connection drops (a server restart, a network
/// blip) and resume right after the last change they delivered, so the watcher sees every
/// change once, in order. A watch that cannot resume ends with `Lagged` (it kept failing for
/// the reconnect window, or the history it needs was compacted), and a watch of a volatile
/// server that restarted ends plainly (its store is gone). The watcher's buffer is this
/// client's: a watcher that falls behind it is lagged here, as on any store.
#[derive(Debug, Clone)]
pub struct HttpStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) capabilities: Capabilities,
    pub(crate) status: Status,
    pub(crate) request_timeout: Duration,
    pub(crate) reconnect_for: Duration,
    closed: AtomicBool,
    pub(crate) close_signal: watch::Sender<bool>,
}

/// Settings of an [`HttpStore`]; see [`HttpStore::builder`].
#[derive(Debug, Clone)]
pub struct HttpStoreBuilder {
    url: String,
    request_timeout: Duration,
    reconnect_for: Duration,
    watch_buffer: Option<usize>,
}

impl HttpStoreBuilder {
    /// How long one request may take (default 30 s). A write that takes longer is
    /// [`Error::Ambiguous`]. Watches are not bounded by it.
    pub fn request_timeout(mut self, timeout: Duration) -> HttpStoreBuilder {
        self.request_timeout = timeout;
        self
    }

    /// How long a watch whose connection dropped keeps trying to resume (default 30 s) before
    /// it ends with `Lagged`.
    pub fn reconnect_for(mut self, window: Duration) -> HttpStoreBuilder {
        self.reconnect_for = window;
        self
    }

    /// How many events a watcher may have buffered in this client before it is lagged
    /// (default: the server's store's buffer, at least 64). The server's store lags a watch
    /// that falls behind its own buffer too, and the client passes that on.
    pub fn watch_buffer(mut self, events: usize) -> HttpStoreBuilder {
        self.watch_buffer = Some(events.max(1));
        self
    }

    /// Connects: asks the server for its status (version, backend, capabilities).
    ///
    /// Errors: [`Error::InvalidInput`] for a URL that is not `http://HOST:PORT`,
    /// [`Error::Unavailable`] when the server cannot be reached or is not a swarmstate server.
    pub async fn open(self) -> Result<HttpStore> {
        let base = base_url(&self.url)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Shorter than the server's idle timeout, so a pooled connection is not reused
            // just as the server closes it.
            .pool_idle_timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .map_err(|err| Error::Unavailable {
                message: format!("cannot build an HTTP client: {err}"),
            })?;
        let response = client
            .get(format!("{base}/v1/status"))
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|err| Error::Unavailable {
                message: format!("cannot reach the swarmstate server at {base}: {err}"),
            })?;
        let status: Status = match decode(response).await {
            Ok(status) => status,
            Err(err) => {
                return Err(Error::Unavailable {
                    message: format!("{base} did not answer as a swarmstate server: {err}"),
                });
            }
        };
        let capabilities = Capabilities {
            backend: "http",
            ttl_granularity: Duration::from_millis(status.capabilities.ttl_granularity_ms),
            max_value_size: status.capabilities.max_value_size,
            // Events reach the client in bursts (one read of the socket can hold many), so a
            // buffer smaller than the default would lag a watcher that keeps up.
            watch_buffer: self.watch_buffer.unwrap_or(
                status
                    .capabilities
                    .watch_buffer
                    .max(swarmstate_core::DEFAULT_WATCH_BUFFER),
            ),
            durable: status.capabilities.durable,
            replays_overwritten: status.capabilities.replays_overwritten,
        };
        Ok(HttpStore {
            inner: Arc::new(Inner {
                base,
                client,
                capabilities,
                status,
                request_timeout: self.request_timeout,
                reconnect_for: self.reconnect_for,
                closed: AtomicBool::new(false),
                close_signal: watch::Sender::new(false),
            }),
        })
    }
}

fn base_url(url: &str) -> Result<String> {
    let invalid = |why: &str| Error::InvalidInput {
        message: format!("cannot use {url:?} as a server address: {why}; write http://HOST:PORT"),
    };
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(invalid(
                "this build speaks plain HTTP only (the server serves loopback addresses without TLS)",
            ));
        }
        _ => return Err(invalid("it is not an http:// URL")),
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(invalid("it must name only a host and a port"));
    }
    Ok(format!("http://{authority}"))
}

impl HttpStore {
    /// Connects to the server at `url` with the default settings.
    pub async fn open(url: &str) -> Result<HttpStore> {
        HttpStore::builder(url).open().await
    }

    /// Settings for a store at `url` (`http://HOST:PORT`).
    pub fn builder(url: &str) -> HttpStoreBuilder {
        HttpStoreBuilder {
            url: url.to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reconnect_for: DEFAULT_RECONNECT_FOR,
            watch_buffer: None,
        }
    }

    /// What the server said about itself when this client connected.
    pub fn server_status(&self) -> &Status {
        &self.inner.status
    }

    /// The server's current status.
    pub async fn status(&self) -> Result<Status> {
        let request = self.inner.request(Method::GET, "/v1/status");
        self.inner.read("status", request).await
    }

    /// The name of the backend behind the server (`memory`, `disk`, `nats`).
    pub fn remote_backend(&self) -> &'static str {
        backend_name(&self.inner.status.backend)
    }
}

/// Whether an operation may change the store, which decides what a missing answer means.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    Reads,
    Writes,
}

impl Inner {
    pub(crate) fn ensure_open(&self) -> Result<()> {
        swarmstate_core::backend::ensure_open(self.closed.load(Ordering::Acquire))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .timeout(self.request_timeout)
    }

    /// Sends `request` and returns the response when it is a success; a problem document
    /// becomes its error, a missing answer an error by `effect`.
    async fn send(
        &self,
        operation: &str,
        effect: Effect,
        request: RequestBuilder,
    ) -> Result<Response> {
        self.ensure_open()?;
        let response = request
            .send()
            .await
            .map_err(|err| self.transport(operation, effect, &err))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(failure(operation, effect, response).await)
        }
    }

    async fn read<T: DeserializeOwned>(
        &self,
        operation: &str,
        request: RequestBuilder,
    ) -> Result<T> {
        let response = self.send(operation, Effect::Reads, request).await?;
        self.body(operation, Effect::Reads, response).await
    }

    async fn write<T: DeserializeOwned>(
        &self,
        operation: &str,
        request: RequestBuilder,
    ) -> Result<T> {
        let response = self.send(operation, Effect::Writes, request).await?;
        self.body(operation, Effect::Writes, response).await
    }

    async fn body<T: DeserializeOwned>(
        &self,
        operation: &str,
        effect: Effect,
        response: Response,
    ) -> Result<T> {
        let bytes = response
            .bytes()
            .await
            .map_err(|err| self.transport(operation, effect, &err))?;
        serde_json::from_slice(&bytes).map_err(|err| {
            wire::remote(format!(
                "{operation}: the server's answer does not decode: {err}"
            ))
        })
    }

    pub(crate) fn transport(&self, operation: &str, effect: Effect, err: &reqwest::Error) -> Error {
        let message = format!("{} ({})", describe(err), self.base);
        if err.is_connect() || effect == Effect::Reads || err.is_builder() {
            Error::Unavailable { message }
        } else {
            Error::Ambiguous {
                operation: operation.to_owned(),
                message,
            }
        }
    }
}

/// The error of a response that is not a success.
pub(crate) async fn failure(operation: &str, effect: Effect, response: Response) -> Error {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with(PROBLEM_JSON));
    let body = response.bytes().await.unwrap_or_default();
    if is_problem && let Ok(problem) = serde_json::from_slice::<Problem>(&body) {
        return problem.into_error();
    }
    let text = String::from_utf8_lossy(&body);
    let message = format!("the server answered {status} without a problem document: {text}");
    if status.is_server_error() && effect == Effect::Writes {
        // Something between us and the store failed; whether the write applied is unknown.
        Error::Ambiguous {
            operation: operation.to_owned(),
            message,
        }
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        Error::Unavailable { message }
    } else {
        wire::remote(message)
    }
}

/// A transport error with its causes, which reqwest keeps in its source chain.
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn decode<T: DeserializeOwned>(response: Response) -> std::result::Result<T, String> {
    let status = response.status();
    let bytes = response.bytes().await.map_err(|err| err.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|err| err.to_string())
}

fn kv_path(key: &Key) -> String {
    // Key tokens hold only A-Z a-z 0-9 _ - / = and dots, all literal in a path.
    format!("/v1/kv/{}", key.as_str())
}

fn header_revision(headers: &HeaderMap) -> Result<Revision> {
    let text = headers
        .get(ETAG)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(|| wire::remote("the server's answer has no ETag"))?;
    parse_etag(text).map_err(wire::remote)
}

#[async_trait]
impl StateStore for HttpStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.clone()
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let operation = format!("get {key}");
        let request = self.inner.request(Method::GET, &kv_path(key));
        match self.inner.send(&operation, Effect::Reads, request).await {
            Ok(response) => {
                let revision = header_revision(response.headers())?;
                let expires_in = response
                    .headers()
                    .get(EXPIRES_IN)
                    .and_then(|value| value.to_str().ok())
                    .map(|text| text.parse().map(Duration::from_millis))
                    .transpose()
                    .map_err(|_| wire::remote("the server's expiry header is not a number"))?;
                let value = response
                    .bytes()
                    .await
                    .map_err(|err| self.inner.transport(&operation, Effect::Reads, &err))?;
                Ok(Some(Entry {
                    key: key.clone(),
                    value,
                    revision,
                    expires_in,
                }))
            }
            Err(Error::NotFound { key: missing }) if missing == *key => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        options.validate()?;
        swarmstate_core::backend::validate_value(
            key,
            &value,
            self.inner.capabilities.max_value_size,
        )?;
        let mut request = self.inner.request(Method::PUT, &kv_path(key)).body(value);
        match options.mode {
            PutMode::Overwrite => {}
            PutMode::Create => request = request.header(IF_NONE_MATCH, "*"),
            PutMode::Update(revision) => request = request.header(IF_MATCH, etag(revision)),
        }
        if let Some(ttl) = options.ttl {
            request = request.query(&[("ttl", format_ttl(ttl))]);
        }
        if let Some(id) = &options.idempotency_key {
            request = request.header(IDEMPOTENCY_KEY, id);
        }
        let answer: WriteAnswer = self.inner.write(&format!("put {key}"), request).await?;
        answer
            .revision
            .and_then(Revision::new)
            .ok_or_else(|| wire::remote("the server answered a put without its revision"))
    }

    async fn delete(&self, key: &Key, expected: Option<Revision>) -> Result<Option<Revision>> {
        let mut request = self.inner.request(Method::DELETE, &kv_path(key));
        if let Some(revision) = expected {
            request = request.header(IF_MATCH, etag(revision));
        }
        let answer: WriteAnswer = self.inner.write(&format!("delete {key}"), request).await?;
        answer
            .revision
            .map(|n| wire::revision(n).map_err(wire::remote))
            .transpose()
    }

    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream> {
        let operation = format!("keys {pattern}");
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("pattern", pattern.to_string())];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let request = self.inner.request(Method::GET, "/v1/keys").query(&query);
            let page: KeysPage = self.inner.read(&operation, request).await?;
            for key in page.keys {
                keys.push(Key::new_reserved(&key).map_err(|err| wire::remote(err.to_string()))?);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(stream::iter(keys.into_iter().map(Ok)).boxed())
    }

    async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
        self.inner.ensure_open()?;
        run_watch(self.inner.clone(), pattern.clone(), start).await
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        swarmstate_core::backend::validate_txn(&ops, self.inner.capabilities.max_value_size)?;
        let operation = match ops.as_slice() {
            [op] => format!("txn on {}", op.key),
            [first, ..] => format!("txn on {} and {} more", first.key, ops.len() - 1),
            [] => "txn".to_owned(),
        };
        let body = TxnRequest {
            ops: ops.iter().map(WireOp::from_op).collect(),
        };
        let request = self
            .inner
            .request(Method::POST, "/v1/txn")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(wire::json(&body));
        let answer: TxnAnswer = self.inner.write(&operation, request).await?;
        if answer.results.len() != ops.len() {
            return Err(wire::remote(format!(
                "the server answered {} results for {} operations",
                answer.results.len(),
                ops.len()
            )));
        }
        answer
            .results
            .into_iter()
            .map(|result| result.into_result().map_err(wire::remote))
            .collect()
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.close_signal.send_replace(true);
        Ok(())
    }
}

impl HttpStore {
    /// Every entry `pattern` selects, in key order, with the store's revision at the snapshot
    /// the last page was read from (`None` for a store never written). Each page of
    /// [`DEFAULT_PAGE`](crate::wire::DEFAULT_PAGE) entries is one snapshot; a selection larger
    /// than a page may span several revisions.
    pub async fn entries(&self, pattern: &Pattern) -> Result<(Vec<Entry>, Option<Revision>)> {
        let operation = format!("entries {pattern}");
        let mut entries = Vec::new();
        let mut after: Option<String> = None;
        let revision = loop {
            let mut query = vec![("pattern", pattern.to_string())];
            if let Some(after) = &after {
                query.push(("after", after.clone()));
            }
            let request = self.inner.request(Method::GET, "/v1/entries").query(&query);
            let page: EntriesPage = self.inner.read(&operation, request).await?;
            for entry in page.entries {
                entries.push(entry.into_entry().map_err(wire::remote)?);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break page.revision.and_then(Revision::new),
            }
        };
        Ok((entries, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_naming_a_host_and_port_are_accepted() {
        assert_eq!(
            base_url("http://127.0.0.1:7700").unwrap(),
            "http://127.0.0.1:7700"
        );
        assert_eq!(
            base_url("http://localhost:7700/").unwrap(),
            "http://localhost:7700"
        );
        for bad in [
            "https://x:1",
            "127.0.0.1:7700",
            "http://",
            "http://a:1/v1",
            "ftp://a",
        ] {
            let err = base_url(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
    }
}
