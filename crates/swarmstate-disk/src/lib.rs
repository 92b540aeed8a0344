//! `DiskStore`: swarmstate's embedded durable store, the default for one server. The state
//! lives in memory (the same engine as `MemoryStore`) and in one [redb] file; every write is
//! on disk before it is acknowledged, and many concurrent writes share one fsync.
//!
//! ```no_run
//! # use swarmstate_core::{Key, StateStore, StateStoreExt};
//! # async fn run() -> swarmstate_core::Result<()> {
//! let store = swarmstate_disk::DiskStore::open("./swarmstate-data").await?;
//! let revision = store.set(&Key::new("config.mode")?, "fast").await?;
//! store.close().await?; // releases the directory for the next open
//! # Ok(()) }
//! ```
//!
//! # What is guaranteed
//!
//! - **Durable before acknowledged.** A write returns only after the redb commit holding it has
//!   returned with `Durability::Immediate` (an fdatasync). Reads are served from memory and
//!   never see a write that is not yet durable, so no read returns a value a crash can take
//!   back.
//! - **Group commit.** One writer takes every write waiting at that moment (no timer: an idle
//!   store commits a lone write at once), decides them in order against the committed state
//!   plus the group so far (a refused write fails alone, with its own error), commits the
//!   group in one transaction, then applies, acknowledges and publishes. A group is bounded by
//!   [`DiskStoreBuilder::max_batch_writes`] and [`DiskStoreBuilder::max_batch_bytes`].
//! - **What survives a restart:** entries (value, revision, deadline), the revision counter,
//!   the recent history (a watch from a revision resumes across a restart; older starts are
//!   `Compacted`), and idempotency records for their window (a retry after a restart returns
//!   the first outcome).
//! - **TTLs across restarts.** Deadlines are stored as wall-clock time. An entry past its
//!   deadline when the store opens expires at a new revision, with its expire event in the
//!   history, before `open` returns.
//! - **A failed commit poisons the store**: the writes of that commit fail as `Ambiguous` (they
//!   may or may not be on disk), and every later call fails with `Unavailable` naming the
//!   cause. Nothing is retried silently; reopen the store to go on.
//! - **One process per data directory**: `open` takes a lock on `DIR/LOCK`; a second open
//!   fails at once with `Unavailable` naming the process that holds it.
//! - **A size quota** (default 1 GiB of keys and values): a write that would pass it fails
//!   with `QuotaExceeded` and writes nothing; reads, deletes and expiries keep working.
//! - **Damaged files are refused**: a data file that is truncated, corrupted (redb checks
//!   every page's checksum at open) or of an unknown format fails `open` with `Corrupt` naming
//!   the file and the problem. Never a panic, never a silently empty store.
//!
//! # Clocks
//!
//! While the store runs, deadlines are timed on the monotonic clock from the wall-clock time
//! at open: setting the system clock does not make entries expire early or late. Deadlines are
//! persisted as wall-clock time, so across a restart a step of the system clock counts: if the
//! clock was set forward while the store was closed, entries expire that much earlier (at the
//! open, if their deadline has passed); set back, they live that much longer. The monotonic
//! clock may drift from the wall clock over a long run (NTP slewing); the deadlines written
//! carry that drift.
//!
//! # Files
//!
//! `DIR/data.redb` (the data, one redb file) and `DIR/LOCK` (the lock, holding the process
//! id). The data file is created under a temporary name and renamed into place once
//! initialized, so a file named `data.redb` is never legitimately empty.

mod layout;
mod lock;
mod open;
mod persist;

use std::path::{Path, PathBuf};
use std::time::Duration;

use swarmstate_core::backend::{Clock, Engine, EngineConfig, KvState, StateLimits};
use swarmstate_core::{Error, Result, StateStore};

use crate::lock::DirLock;
use crate::open::{Loaded, Storage, corrupt, data_file};
use crate::persist::RedbPersistence;

/// The storage backends redb can run on, for [`DiskStoreBuilder::storage`]: tests that drop
/// unsynced writes, benchmarks that add a delay to each sync.
pub mod storage {
    pub use redb::StorageBackend;
    pub use redb::backends::{FileBackend, InMemoryBackend};
}

/// The default quota: 1 GiB of keys and values in live entries.
pub const DEFAULT_QUOTA: u64 = 1024 * 1024 * 1024;

/// The embedded durable store (`file://PATH`). See the [crate documentation](crate) for what it
/// guarantees.
///
/// Clones share one store. Needs a Tokio runtime (multi-threaded or current-thread). Close it
/// with [`close`](StateStore::close) before opening the same directory again in this process:
/// the lock is released when the close returns.
#[derive(Debug, Clone)]
pub struct DiskStore {
    engine: Engine<RedbPersistence>,
    dir: PathBuf,
}

impl DiskStore {
    /// Opens the store in `dir` (created if missing) with the default settings.
    ///
    /// Errors: [`Error::Unavailable`] when another store holds the directory (naming the
    /// process); [`Error::Corrupt`] naming the file and the problem when the data file is
    /// damaged or of another format; [`Error::Backend`] for I/O failures.
    pub async fn open(dir: impl AsRef<Path>) -> Result<DiskStore> {
        DiskStore::builder(dir).open().await
    }

    /// A builder for non-default settings.
    pub fn builder(dir: impl AsRef<Path>) -> DiskStoreBuilder {
        let mut config = EngineConfig::default();
        config.limits.quota = Some(DEFAULT_QUOTA);
        DiskStoreBuilder {
            dir: dir.as_ref().to_owned(),
            config,
            cache_bytes: 64 * 1024 * 1024,
            storage: None,
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl StateStore for DiskStore {
    swarmstate_core::forward_state_store!(|s| &s.engine);
}

/// Builds a [`DiskStore`] with non-default settings.
pub struct DiskStoreBuilder {
    dir: PathBuf,
    config: EngineConfig,
    cache_bytes: usize,
    storage: Option<Box<dyn open::StorageBackendBox>>,
}

impl std::fmt::Debug for DiskStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStoreBuilder")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("custom_storage", &self.storage.is_some())
            .finish()
    }
}

impl DiskStoreBuilder {
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

    /// Recent changes kept, in memory and on disk, for watches that start from a revision
    /// (default 10,000, at least 1).
    pub fn history(mut self, events: usize) -> Self {
        self.config.limits.history = events.max(1);
        self
    }

    /// The most bytes of keys and values the kept history may hold (default 64 MiB); the
    /// oldest changes are dropped past it.
    pub fn history_bytes(mut self, bytes: u64) -> Self {
        self.config.limits.history_bytes = bytes;
        self
    }

    /// How long a successful idempotent write is remembered (default 2 minutes).
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.config.limits.idempotency_window = window;
        self
    }

    /// The most bytes of keys and values the live entries may hold (default
    /// [`DEFAULT_QUOTA`], 1 GiB); `None` for no limit. The data file holds about this much,
    /// plus the history, plus redb's overhead.
    pub fn quota(mut self, bytes: Option<u64>) -> Self {
        self.config.limits.quota = bytes;
        self
    }

    /// The most writes one group commit takes (default 1,024, at least 1).
    pub fn max_batch_writes(mut self, writes: usize) -> Self {
        self.config.max_batch_writes = writes.max(1);
        self
    }

    /// The most bytes of keys and values one group commit takes (default 8 MiB); a larger
    /// write commits alone.
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_bytes = bytes;
        self
    }

    /// Keeps the data in `storage` instead of `DIR/data.redb` (the directory still holds the
    /// lock). An empty storage is a new store. For tests and benchmarks: a storage that drops
    /// unsynced writes, or delays each sync.
    pub fn storage(mut self, storage: impl storage::StorageBackend) -> Self {
        self.storage = Some(Box::new(storage));
        self
    }

    /// Opens the store: takes the directory's lock, reads the data file back (or makes it),
    /// expires what passed its deadline while the store was closed, and starts serving.
    ///
    /// Errors: as [`DiskStore::open`].
    pub async fn open(self) -> Result<DiskStore> {
        let DiskStoreBuilder {
            dir,
            config,
            cache_bytes,
            storage,
        } = self;
        let opened = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || -> Result<(Loaded, DirLock)> {
                std::fs::create_dir_all(&dir).map_err(|err| Error::Backend {
                    source: std::sync::Arc::new(std::io::Error::new(
                        err.kind(),
                        format!("creating the data directory {}: {err}", dir.display()),
                    )),
                })?;
                let lock = DirLock::acquire(&dir)?;
                let storage = match storage {
                    Some(backend) => Storage::Backend(backend),
                    None => Storage::File,
                };
                // redb checks every page at open, but a panic must still not escape as one.
                let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    open::open_file(&dir, storage, cache_bytes)
                }))
                .unwrap_or_else(|panic| {
                    Err(corrupt(
                        &data_file(&dir),
                        format!("reading it failed: {}", panic_message(&panic)),
                    ))
                })?;
                Ok((loaded, lock))
            })
        };
        let (loaded, lock) = opened.await.map_err(|err| Error::Unavailable {
            message: format!("opening {} did not finish: {err}", dir.display()),
        })??;
        let file = data_file(&dir);
        let limits: StateLimits = config.limits.clone();
        let state = KvState::restore(limits, loaded.persisted).map_err(|err| match err {
            Error::Corrupt { message, .. } => corrupt(&file, message),
            other => other,
        })?;
        let persistence = RedbPersistence::new(
            loaded.db,
            lock,
            file,
            loaded.history_from,
            loaded.remembered_from,
        );
        let engine = Engine::new(persistence, config, state, Clock::new());
        // What passed its deadline while closed expires before anything is served.
        engine
            .commit(0, |state, batch, now| {
                state.expire_due(batch, now);
                Ok(())
            })
            .await?;
        Ok(DiskStore { engine, dir })
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}
