//! swarmstate's tools for LLM agents, over the Model Context Protocol.
//!
//! The same operations as the library and the HTTP API, as MCP tools: read and write keys
//! (with an expected revision), list keys, wait for a change (a long poll: a model cannot hold
//! a stream), locks with fencing tokens, fenced writes, work queues and elections. The recipes
//! run here, on any [`StateStore`], with the library's key layout, so a lock taken through MCP
//! and one taken by a Rust agent or over HTTP contend correctly.
//!
//! A model cannot hold an object, so each MCP session keeps what it holds (locks, claims,
//! leaderships) in a table keyed by name and token, and the tools take the name and the token.
//! Nothing is kept alive in the background: the model refreshes within the TTL it was given.
//! When a session ends, what it still holds is released (in the background, best effort; else
//! it expires after its TTL). Over stdio the session is the process.
//!
//! [`serve_stdio`] speaks MCP on stdin and stdout (`swarmstate mcp`); [`http_service`] is the
//! streamable HTTP transport a server mounts (`swarmstate serve` at `/mcp`).
//!
//! Results are compact JSON text. An error is a tool error (`isError`) whose text is JSON with
//! the error's stable kind in `error` and its message, plus the fields of its kind (a lock's
//! `holder` and `expires_in_ms`, a mismatch's `actual` revision).

mod answer;
mod holdings;
mod tools;

use std::sync::Arc;

use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use swarmstate_core::StateStore;

pub use tools::SwarmstateMcp;

/// The longest a tool may wait (for a lock, a claim, a leadership, a change), in seconds:
/// MCP clients time tool calls out, so a model that needs longer calls again.
pub const MAX_WAIT_SECONDS: f64 = 60.0;

/// Serves one MCP session on stdin and stdout until the client closes it, then releases the
/// locks and leaderships the session held, waiting for the releases. Nothing but MCP messages
/// is written to stdout.
///
/// Errors: the transport's, as text (the session could not start or broke).
pub async fn serve_stdio(store: Arc<dyn StateStore>) -> Result<(), String> {
    let session = SwarmstateMcp::new(store);
    let service = session
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|err| format!("the MCP session did not start: {err}"))?;
    let ended = service.waiting().await;
    // The process ends with the session: release now, not in the background.
    session.release_all().await;
    ended.map_err(|err| format!("the MCP session failed: {err}"))?;
    Ok(())
}

/// The streamable HTTP transport of MCP on `store`, a tower service to mount at a path of an
/// axum router (`Router::nest_service("/mcp", service)`). Each MCP session gets its own
/// [`SwarmstateMcp`], so its holdings are its own; sessions live in memory and end when the
/// client deletes them, or when `shutdown` is cancelled (then every open stream ends, so a
/// server's graceful shutdown does not wait for them).
///
/// It answers only requests whose `Host` is a loopback name (`localhost`, `127.0.0.1`,
/// `::1`), which guards a loopback server against DNS rebinding.
pub fn http_service(
    store: Arc<dyn StateStore>,
    shutdown: CancellationToken,
) -> StreamableHttpService<SwarmstateMcp, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default().with_cancellation_token(shutdown);
    StreamableHttpService::new(
        move || Ok(SwarmstateMcp::new(store.clone())),
        Arc::default(),
        config,
    )
}
