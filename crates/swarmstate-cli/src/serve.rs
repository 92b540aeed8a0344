//! `swarmstate serve`: one store behind the HTTP API, until Ctrl-C or SIGTERM.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use swarmstate_server::{Server, ServerConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::open::open_store;

/// The store `swarmstate serve` serves when none is given.
pub(crate) const DEFAULT_SERVE_STORE: &str = "file://./swarmstate-data";

/// Opens the store, binds `listen`, prints `listening on http://ADDR` on stdout (with port 0,
/// the port picked), and serves until Ctrl-C or SIGTERM; then shuts down gracefully.
pub(crate) async fn run(
    store_url: &str,
    listen: &str,
    progress_interval: Duration,
) -> anyhow::Result<ExitCode> {
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let store = open_store(store_url)
        .await
        .with_context(|| format!("opening {store_url}"))?;
    let config = ServerConfig {
        listen: listen.to_owned(),
        progress_interval,
        ..ServerConfig::default()
    };
    let server = Server::bind(store, config).await?;
    let addr = server.local_addr();
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}")?;
        stdout.flush()?;
    }
    eprintln!("swarmstate serve: {store_url} on http://{addr}; Ctrl-C or SIGTERM stops it");
    server
        .run(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("swarmstate serve: shutting down");
        })
        .await?;
    eprintln!("swarmstate serve: stopped");
    Ok(ExitCode::SUCCESS)
}
