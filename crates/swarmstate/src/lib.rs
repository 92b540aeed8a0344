//! Shared state for agent swarms: a key-value store that many agents read and write at once,
//! with the coordination recipes they need on top.
//!
//! One contract, [`StateStore`], holds every backend; pick one by URL with [`open`] or build
//! it directly:
//!
//! - `memory://`: [`MemoryStore`], in-process and volatile (always available);
//! - `file://PATH`: `DiskStore`, the embedded durable store in the directory `PATH` (feature
//!   `disk`, on by default);
//! - `http://HOST:PORT`: `HttpStore`, a client of a `swarmstate serve` server, which shares
//!   one store with agents in other processes and languages (feature `http`, on by default);
//! - `nats://HOST:PORT[,HOST:PORT...]/BUCKET`: `NatsStore` on a NATS JetStream cluster
//!   (feature `nats`).
//!
//! Keys are validated once ([`Key::new`]); values are opaque [`Bytes`]; every change
//! gets a store-wide, strictly increasing [`Revision`]. Writes can be conditional
//! ([`PutMode`]), carry a TTL and an idempotency key; [`StateStore::txn`] applies several
//! writes all-or-nothing; [`StateStore::watch`] streams changes and never skips silently.
//!
//! The recipes use only the trait, so they behave the same on every backend: [`lock`] (locks
//! with fencing tokens, a fair blocking acquire, keep-alive), [`election`], [`queue`] (work
//! claims with leases), [`cache`] (TTL cache with single-flight fills) and [`config`] (a live,
//! typed view of a key pattern).
//!
//! ```
//! use std::time::Duration;
//! use swarmstate::lock::acquire_lock;
//! use swarmstate::Key;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = swarmstate::open("memory://").await?;
//! let lock = Key::new("locks.deploy")?;
//! let guard = acquire_lock(&store, &lock, "agent-1", Duration::from_secs(10)).await?;
//! // Applies only while agent-1 still holds the lock, atomically.
//! guard.fenced_put(&Key::new("deploy.version")?, "v2").await?;
//! guard.release().await?;
//! # Ok::<_, swarmstate::Error>(())
//! # }).unwrap();
//! ```
//!
//! Backend authors find the engine, the validators and the watch feed in [`backend`].

use std::sync::Arc;

pub use bytes::Bytes;
pub use swarmstate_core::{
    Capabilities, Condition, DEFAULT_MAX_VALUE_SIZE, DEFAULT_WATCH_BUFFER, Entry, Error, ErrorKind,
    Key, KeyRule, KeyStream, MAX_KEY_LEN, MAX_TTL, MAX_TXN_OPS, MIN_TTL, MemoryStore,
    MemoryStoreBuilder, Pattern, PutMode, PutOptions, Result, Revision, StateStore, StateStoreExt,
    TxnAction, TxnOp, TxnResult, WatchEvent, WatchStart, WatchStream, retry_on_conflict,
};
pub use swarmstate_recipes::{cache, config, election, lock, queue};

/// What a backend implementation needs beyond the contract: the engine, the validators every
/// backend calls first, and the bounded watch feed.
pub mod backend {
    pub use swarmstate_core::backend::*;
}

/// `DiskStore`, the embedded durable store: the engine persisted in one redb file, every
/// write on disk before it is acknowledged.
#[cfg(feature = "disk")]
pub mod disk {
    pub use swarmstate_disk::*;
}

/// `HttpStore`, the client of a `swarmstate serve` server, and the HTTP API's wire format.
#[cfg(feature = "http")]
pub mod http {
    pub use swarmstate_http::*;
}

/// `NatsStore`, the contract on a NATS JetStream key-value bucket.
#[cfg(feature = "nats")]
pub mod nats {
    pub use swarmstate_nats::*;
}

/// The URL schemes [`open`] understands in this build.
pub const SCHEMES: &[&str] = &[
    "memory://",
    #[cfg(feature = "disk")]
    "file://",
    #[cfg(feature = "http")]
    "http://",
    #[cfg(feature = "nats")]
    "nats://",
];

/// Opens the store `url` names.
///
/// - `memory://`: a new, empty [`MemoryStore`] (each call a separate store);
/// - `file://PATH`: opens the `DiskStore` in the directory `PATH` (everything after
///   `file://`: `file://./data` is relative, `file:///var/lib/swarm` absolute), created if
///   missing (feature `disk`). Close it before opening the same directory again.
/// - `http://HOST:PORT`: connects to a `swarmstate serve` server (feature `http`);
///   [`Error::Unavailable`] when it does not answer.
/// - `nats://HOST:PORT[,HOST:PORT...]/BUCKET`: connects to the NATS servers and opens (or
///   creates) the bucket with the settings the contract needs (feature `nats`).
///
/// # Errors
///
/// [`Error::InvalidInput`] naming the URL for a malformed URL, an unknown scheme or a scheme
/// this build has no feature for (and nothing is opened); otherwise the backend's own errors
/// (for NATS: [`Error::Unavailable`] when no server answers).
pub async fn open(url: &str) -> Result<Arc<dyn StateStore>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(url, "it has no scheme"));
    };
    match scheme {
        "memory" if rest.is_empty() => Ok(Arc::new(MemoryStore::new())),
        "memory" => Err(invalid(url, "memory:// takes nothing after the scheme")),
        #[cfg(feature = "disk")]
        "file" if rest.is_empty() => Err(invalid(
            url,
            "file:// needs a directory, e.g. file://./data",
        )),
        #[cfg(feature = "disk")]
        "file" => Ok(Arc::new(swarmstate_disk::DiskStore::open(rest).await?)),
        #[cfg(not(feature = "disk"))]
        "file" => Err(invalid(
            url,
            "this build has no embedded durable store (feature `disk`)",
        )),
        #[cfg(feature = "http")]
        "http" | "https" => Ok(Arc::new(swarmstate_http::HttpStore::open(url).await?)),
        #[cfg(not(feature = "http"))]
        "http" | "https" => Err(invalid(
            url,
            "this build has no HTTP client (feature `http`)",
        )),
        #[cfg(feature = "nats")]
        "nats" => Ok(Arc::new(swarmstate_nats::NatsStore::open(url).await?)),
        #[cfg(not(feature = "nats"))]
        "nats" => Err(invalid(
            url,
            "this build has no NATS support (feature `nats`)",
        )),
        _ => Err(invalid(url, &format!("the scheme {scheme:?} is unknown"))),
    }
}

fn invalid(url: &str, why: &str) -> Error {
    Error::InvalidInput {
        message: format!(
            "cannot open store {url:?}: {why}; use one of {}",
            SCHEMES.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_url_opens_an_empty_store() {
        let store = open("memory://").await.unwrap();
        assert_eq!(store.capabilities().backend, "memory");
        assert!(store.get(&Key::new("a").unwrap()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unknown_scheme_is_a_clear_error_naming_the_url_and_the_choices() {
        let err = open("redis://localhost").await.err().unwrap();
        let message = err.to_string();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(message.contains("redis://localhost"), "{message}");
        assert!(message.contains("memory://"), "{message}");
    }

    #[tokio::test]
    async fn a_url_without_a_scheme_or_with_memory_arguments_is_refused() {
        for url in ["localhost:4222", "memory://somewhere"] {
            let err = open(url).await.err().unwrap();
            assert!(err.to_string().contains(url), "{err}");
        }
    }

    #[cfg(feature = "disk")]
    #[tokio::test]
    async fn file_url_opens_a_durable_store_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("data").display());
        let store = open(&url).await.unwrap();
        assert_eq!(store.capabilities().backend, "disk");
        assert!(store.capabilities().durable);
        let key = Key::new("a").unwrap();
        let revision = store.create(&key, "1").await.unwrap();
        store.close().await.unwrap();
        let store = open(&url).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap().revision, revision);
        let err = open("file://").await.err().unwrap();
        assert!(err.to_string().contains("needs a directory"), "{err}");
    }

    #[cfg(feature = "nats")]
    #[tokio::test]
    async fn malformed_nats_url_is_an_error_naming_it() {
        let err = open("nats:///bucket").await.err().unwrap();
        assert!(err.to_string().contains("nats:///bucket"), "{err}");
    }
}
