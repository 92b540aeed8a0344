//! Choosing a backend from a store URL.

use std::sync::Arc;

use swarmstate::StateStore;

/// The store URL `demo` and `check` use when none is given.
pub(crate) const DEFAULT_STORE: &str = "memory://";

/// The store URL the commands that talk to someone else's store (`get`, `put`, `lock`, ...)
/// use when neither `--store` nor `SWARMSTATE_STORE` names one: a local `swarmstate serve`.
pub(crate) const CLIENT_STORE: &str = "http://127.0.0.1:7700";

/// Opens the store `url` names (see [`swarmstate::open`]): `memory://` (a fresh in-process
/// store, gone when the command ends), `file://DIR` (the embedded durable store) or
/// `nats://HOST:PORT[,HOST:PORT...]/BUCKET`.
pub(crate) async fn open_store(url: &str) -> anyhow::Result<Arc<dyn StateStore>> {
    Ok(swarmstate::open(url).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_url_opens_an_empty_store() {
        let store = open_store("memory://").await.unwrap();
        assert_eq!(store.capabilities().backend, "memory");
    }

    #[tokio::test]
    async fn unknown_scheme_is_a_clear_error() {
        let err = open_store("redis://localhost").await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("redis"), "{message}");
        assert!(message.contains("nats://"), "{message}");
    }

    #[tokio::test]
    async fn malformed_nats_url_is_an_error_naming_it() {
        let err = open_store("nats:///bucket").await.unwrap_err();
        assert!(format!("{err:#}").contains("nats:///bucket"), "{err:#}");
    }
}
