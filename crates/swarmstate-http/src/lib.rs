//! `HttpStore`: the swarmstate contract over HTTP, for agents in other processes than the
//! server's (`swarmstate serve`), and the wire format the server and its clients share.
//!
//! ```no_run
//! # async fn example() -> swarmstate_core::Result<()> {
//! use swarmstate_core::{Key, StateStore, StateStoreExt};
//! use swarmstate_http::HttpStore;
//!
//! let store = HttpStore::open("http://127.0.0.1:7700").await?;
//! let key = Key::new("config.model")?;
//! let revision = store.create(&key, "small").await?;
//! store.update(&key, "large", revision).await?;
//! # Ok(()) }
//! ```
//!
//! The API itself (routes, headers, status codes, events) is described in `docs/http-api.md`
//! and by the OpenAPI document every server serves at `/v1/openapi.json`.

mod client;
mod watch;
pub mod wire;

pub use client::{DEFAULT_RECONNECT_FOR, DEFAULT_REQUEST_TIMEOUT, HttpStore, HttpStoreBuilder};
pub use watch::INSTANCE;
