//! `swarmstate serve`: any store behind the HTTP/JSON API v1, with watches as Server-Sent
//! Events, so that agents in other processes and languages share it.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use swarmstate_core::MemoryStore;
//! use swarmstate_server::{Server, ServerConfig};
//!
//! let server = Server::bind(Arc::new(MemoryStore::new()), ServerConfig::default()).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run(async { tokio::signal::ctrl_c().await.unwrap() }).await?;
//! # Ok(()) }
//! ```
//!
//! The API is described in `docs/http-api.md` and by the OpenAPI document served at
//! `/v1/openapi.json`; `swarmstate_http::HttpStore` is its Rust client.
//!
//! # Guarantees
//! - Every answer is the store's: a write is answered after the store acknowledged it, with
//!   its revision; an error is a problem document with the store's error `kind`.
//! - Bad input never reaches the store: malformed keys, patterns, TTLs, revisions, JSON and
//!   unknown query parameters are 400, a value over the store's limit is 413 (refused from
//!   its `Content-Length`, or as soon as more bytes arrived), and a client mistake is never a
//!   5xx. A handler that panics answers 500 (`ambiguous`: whether it applied is unknown) and
//!   the server keeps serving.
//! - Connections that send no request head within `header_timeout` (idle or slow) are
//!   closed; a body that stalls for `body_timeout` is refused.
//! - Shutdown (the future given to [`Server::run`]) stops accepting, lets requests in flight
//!   finish (for up to `shutdown_grace`), ends every watch stream with a `shutdown` event, and
//!   closes the store.
//! - Without authentication the server listens on loopback addresses only.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use swarmstate_core::StateStore;

mod api;
mod input;
mod problem;
mod recipes;
mod watch;

/// The address `swarmstate serve` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

/// How a server listens and how long it waits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `HOST:PORT` to listen on; it must resolve to loopback addresses only (port 0 picks a
    /// free port).
    pub listen: String,
    /// How often an idle watch stream carries a `progress` event (default 5 s).
    pub progress_interval: Duration,
    /// How long a connection may take to send a request head, and may stay idle between
    /// requests (default 30 s).
    pub header_timeout: Duration,
    /// How long a request body may stall (default 30 s).
    pub body_timeout: Duration,
    /// The largest transaction body, in bytes (default 16 MiB).
    pub max_txn_body: usize,
    /// How long shutdown waits for requests in flight (default 10 s).
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN.to_owned(),
            progress_interval: Duration::from_secs(5),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_txn_body: 16 << 20,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A server bound to its address, ready to [`run`](Server::run).
#[derive(Debug)]
pub struct Server {
    store: Arc<dyn StateStore>,
    config: ServerConfig,
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    /// Binds `config.listen`. Refuses an address that is not loopback (there is no
    /// authentication yet) with [`io::ErrorKind::PermissionDenied`], naming it.
    pub async fn bind(store: Arc<dyn StateStore>, config: ServerConfig) -> io::Result<Server> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&config.listen)
            .await
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!(
                        "cannot resolve the listen address {:?}: {err}",
                        config.listen
                    ),
                )
            })?
            .collect();
        if let Some(public) = addrs.iter().find(|addr| !addr.ip().is_loopback()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "refusing to listen on {public} ({:?}): the server has no authentication \
                     yet, so it serves loopback addresses only (127.0.0.1, [::1], localhost)",
                    config.listen
                ),
            ));
        }
        let listener = TcpListener::bind(&addrs[..]).await.map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot listen on {}: {err}", config.listen),
            )
        })?;
        let addr = listener.local_addr()?;
        Ok(Server {
            store,
            config,
            listener,
            addr,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully (see the crate docs) and
    /// closes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let (stopping, stop_signal) = tokio::sync::watch::channel(false);
        // Ends the MCP sessions' streams when shutdown starts, as `stopping` ends the watches.
        let mcp_stop = tokio_util::sync::CancellationToken::new();
        let state = api::AppState {
            store: self.store.clone(),
            instance: instance_id().into(),
            progress_interval: self.config.progress_interval,
            max_txn_body: self.config.max_txn_body,
            shutdown: stop_signal,
        };
        let service = ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(problem::panicked))
            .layer(RequestBodyTimeoutLayer::new(self.config.body_timeout))
            .service(api::router(state).nest_service(
                "/mcp",
                swarmstate_mcp::http_service(self.store.clone(), mcp_stop.clone()),
            ));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.config.header_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: pass, and try again shortly.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let connection = http.serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(service.clone()),
            );
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!("connection ended: {err}");
                }
            });
        }
        drop(self.listener);
        stopping.send_replace(true);
        mcp_stop.cancel();
        if tokio::time::timeout(self.config.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "requests still in flight after {:?}; closing the store anyway",
                self.config.shutdown_grace
            );
        }
        self.store
            .close()
            .await
            .map_err(|err| io::Error::other(format!("closing the store: {err}")))
    }
}

/// A random-enough id of this server process, different on every start.
fn instance_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}
