//! A server on a free loopback port, in this process, with a client connected to it.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use swarmstate_core::{MemoryStore, StateStore};
use swarmstate_disk::DiskStore;
use swarmstate_http::HttpStore;
use swarmstate_server::{Server, ServerConfig};
use tempfile::TempDir;

/// A client of a server that runs as a task of the test's runtime, and the temporary
/// directory of the server's store, if it has one.
#[derive(Debug)]
pub struct Served {
    pub client: HttpStore,
    pub url: String,
    pub dir: Option<TempDir>,
}

impl StateStore for Served {
    swarmstate_core::forward_state_store!(|s| &s.client);
}

/// Settings for tests: a short progress interval, so that idle streams show it.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".into(),
        progress_interval: Duration::from_millis(500),
        ..ServerConfig::default()
    }
}

/// Serves `store` with `config` and returns the server's URL.
pub async fn start(store: Arc<dyn StateStore>, config: ServerConfig) -> String {
    let server = Server::bind(store, config).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.run(std::future::pending()));
    url
}

pub async fn serve(store: Arc<dyn StateStore>, dir: Option<TempDir>) -> Served {
    let url = start(store, test_config()).await;
    let client = HttpStore::open(&url).await.unwrap();
    Served { client, url, dir }
}

pub async fn serve_memory() -> Served {
    serve(Arc::new(MemoryStore::new()), None).await
}

pub async fn serve_disk() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).await.unwrap();
    serve(Arc::new(store), Some(dir)).await
}
