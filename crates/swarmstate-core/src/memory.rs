//! [`MemoryStore`]: the in-process backend, for tests and single-process swarms: the
//! [`Engine`] with no persistence.

use std::time::Duration;

use crate::StateStore;
use crate::engine::{Clock, Engine, EngineConfig, KvState, Volatile};

/// The default largest value: 1 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
/// The default number of events a watcher may have buffered before it is lagged.
pub const DEFAULT_WATCH_BUFFER: usize = 64;

/// An in-process store. Volatile: everything is gone when the last clone is dropped.
///
/// Clones share one store. Needs a Tokio runtime for watches and TTL expiry.
///
/// ```
/// # use swarmstate_core::{Key, MemoryStore, StateStore, StateStoreExt};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let key = Key::new("config.timeout")?;
/// let first = store.create(&key, "30s").await?;
/// let second = store.update(&key, "45s", first).await?;
/// assert!(second > first);
/// assert!(store.update(&key, "60s", first).await.unwrap_err().is_conflict());
/// # Ok::<_, swarmstate_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    engine: Engine<Volatile>,
}

/// Builds a [`MemoryStore`] with non-default limits.
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    config: EngineConfig,
}

impl MemoryStoreBuilder {
    /// The largest value accepted, in bytes (default 1 MiB).
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.config.max_value_size = bytes;
        self
    }

    /// Events a watcher may have buffered before it is lagged (default 64, at least 1).
    pub fn watch_buffer(mut self, events: usize) -> Self {
        self.config.watch_buffer = events.max(1);
        self
    }

    /// Recent events kept for watches that start from a revision (default 10,000, at least 1).
    pub fn history(mut self, events: usize) -> Self {
        self.config.limits.history = events.max(1);
        self
    }

    /// How long a successful idempotent write is remembered (default 2 minutes).
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.config.limits.idempotency_window = window;
        self
    }

    /// The most bytes of keys and values the live entries may hold (default: no limit). A
    /// write past it fails with [`Error::QuotaExceeded`](crate::Error::QuotaExceeded).
    pub fn quota(mut self, bytes: u64) -> Self {
        self.config.limits.quota = Some(bytes);
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let state = KvState::new(self.config.limits.clone());
        MemoryStore {
            engine: Engine::new(Volatile, self.config, state, Clock::new()),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// A store with the default limits.
    pub fn new() -> MemoryStore {
        MemoryStore::builder().build()
    }

    /// A builder for non-default limits.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            config: EngineConfig {
                max_value_size: DEFAULT_MAX_VALUE_SIZE,
                watch_buffer: DEFAULT_WATCH_BUFFER,
                ..EngineConfig::default()
            },
        }
    }
}

impl StateStore for MemoryStore {
    crate::forward_state_store!(|s| &s.engine);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::time::Instant;

    use super::*;
    use crate::{Key, Pattern, PutOptions, StateStoreExt, WatchEvent, WatchStart};

    fn key(text: &str) -> Key {
        Key::new(text).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_task_removes_entries_and_emits_events_on_time() {
        let store = MemoryStore::new();
        let mut watch = store.watch(&Pattern::All, WatchStart::Now).await.unwrap();
        let a = key("cache.a");
        let put = store
            .put(
                &a,
                "v".into(),
                PutOptions::overwrite().ttl(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert_eq!(watch.next().await.unwrap().revision(), Some(put));
        let started = Instant::now();
        tokio::time::advance(Duration::from_millis(4999)).await;
        assert!(store.get(&a).await.unwrap().is_some());
        let event = watch.next().await.unwrap();
        assert_eq!(
            event,
            WatchEvent::Expire {
                key: a.clone(),
                revision: put.next()
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(store.get(&a).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn overwriting_a_ttl_entry_moves_its_deadline() {
        let store = MemoryStore::new();
        let a = key("cache.a");
        let ttl = |secs| PutOptions::overwrite().ttl(Duration::from_secs(secs));
        store.put(&a, "1".into(), ttl(1)).await.unwrap();
        store.put(&a, "2".into(), ttl(10)).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(&store.get(&a).await.unwrap().unwrap().value[..], b"2");
        store.set(&a, "3").await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(&store.get(&a).await.unwrap().unwrap().value[..], b"3");
    }

    #[tokio::test]
    async fn watch_from_a_revision_older_than_the_history_is_compacted() {
        let store = MemoryStore::builder().history(3).build();
        let a = key("a");
        let first = store.set(&a, "1").await.unwrap();
        for value in ["2", "3", "4"] {
            store.set(&a, value).await.unwrap();
        }
        let err = store
            .watch(&Pattern::All, WatchStart::FromRevision(first))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, crate::Error::Compacted { requested, oldest } if requested == first && oldest.get() == 2),
            "{err}"
        );
        let replay: Vec<_> = store
            .watch(&Pattern::All, WatchStart::FromRevision(first.next()))
            .await
            .unwrap()
            .take(3)
            .collect()
            .await;
        assert_eq!(replay.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn idempotency_is_forgotten_after_the_window() {
        let store = MemoryStore::builder()
            .idempotency_window(Duration::from_secs(120))
            .build();
        let a = key("a");
        let options = PutOptions::create().idempotency_key("req-1");
        let first = store.put(&a, "x".into(), options.clone()).await.unwrap();
        tokio::time::advance(Duration::from_secs(119)).await;
        assert_eq!(
            store.put(&a, "x".into(), options.clone()).await.unwrap(),
            first
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        let err = store.put(&a, "x".into(), options).await.unwrap_err();
        assert!(matches!(err, crate::Error::AlreadyExists { .. }), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_store_ends_the_expiry_task() {
        let store = MemoryStore::new();
        let a = key("a");
        store
            .put(
                &a,
                "x".into(),
                PutOptions::overwrite().ttl(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        let weak = store.engine.downgrade();
        drop(store);
        assert!(
            weak.upgrade().is_none(),
            "the expiry task must not keep the store alive"
        );
    }
}
