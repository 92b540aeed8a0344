//! The [`StateStore`] contract every backend keeps, and the conveniences built on it.

use std::fmt::Debug;
use std::future::Future;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use crate::{
    Capabilities, Entry, Error, Key, Pattern, PutOptions, Result, Revision, TxnOp, TxnResult,
    WatchEvent, WatchStart,
};

/// A stream of watch events; see [`StateStore::watch`].
pub type WatchStream = BoxStream<'static, WatchEvent>;

/// A stream of keys; see [`StateStore::keys`].
pub type KeyStream = BoxStream<'static, Result<Key>>;

/// The primitives a backend must make atomic. Everything else is built on these in
/// [`StateStoreExt`] and the recipes.
///
/// Object-safe: servers and tools hold an `Arc<dyn StateStore>` chosen at run time.
///
/// Every method validates its input before anything is sent or changed; bad input is an
/// error ([`Error::InvalidInput`], [`Error::ValueTooLarge`]) and leaves the store unchanged.
/// After [`close`](StateStore::close) every method fails with [`Error::Closed`].
#[async_trait]
pub trait StateStore: Send + Sync + Debug {
    /// What the backend is and what it promises.
    fn capabilities(&self) -> Capabilities;

    /// The key's current entry, or `None` if it is absent (never written, deleted, expired).
    ///
    /// Linearizable: never older than a write acknowledged before the call began.
    async fn get(&self, key: &Key) -> Result<Option<Entry>>;

    /// Writes `value` under `options.mode`; returns the write's revision.
    ///
    /// Errors: [`Error::AlreadyExists`] (create found the key),
    /// [`Error::RevisionMismatch`] (update found another revision or no key),
    /// [`Error::ValueTooLarge`], [`Error::InvalidInput`] (TTL out of range). A failed write
    /// changes nothing. With an idempotency key, a retry returns the first outcome.
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision>;

    /// Deletes the key. With `expected`, only if the key is at that revision (otherwise
    /// [`Error::RevisionMismatch`], nothing changed). Returns the delete's revision, or `None`
    /// when an unconditional delete found the key absent (nothing changed, no event).
    async fn delete(&self, key: &Key, expected: Option<Revision>) -> Result<Option<Revision>>;

    /// The keys selected by `pattern` that are present now, in key order.
    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream>;

    /// Changes to keys selected by `pattern`, from `start`, in revision order.
    ///
    /// The stream never skips silently: a watcher that falls more than the store's buffer
    /// behind gets [`WatchEvent::Lagged`] and then the stream ends. The stream also ends when
    /// the store closes. Errors: [`Error::Compacted`] for a start revision older than the kept
    /// history.
    async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream>;

    /// Applies every operation or none: if any condition fails, nothing is written and the
    /// error names the first failing key ([`Error::AlreadyExists`] for `Absent`,
    /// [`Error::RevisionMismatch`] for `At`). Each write gets its own revision, consecutive
    /// in the order given, and watchers see the events together and in that order.
    ///
    /// Shape: 1 to [`MAX_TXN_OPS`](crate::MAX_TXN_OPS) operations, each key at most once.
    /// A backend that cannot apply a shape atomically returns [`Error::Unsupported`] and
    /// applies nothing.
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>>;

    /// Closes the store: every watch stream ends and every later call fails with
    /// [`Error::Closed`]. Closing twice is fine.
    async fn close(&self) -> Result<()>;
}

/// Conveniences on every [`StateStore`]. Implemented for all stores; never implement it by
/// hand.
#[async_trait]
pub trait StateStoreExt: StateStore {
    /// Writes `value` whatever is there.
    async fn set(&self, key: &Key, value: impl Into<Bytes> + Send) -> Result<Revision> {
        self.put(key, value.into(), PutOptions::overwrite()).await
    }

    /// Writes `value` only if the key is absent.
    async fn create(&self, key: &Key, value: impl Into<Bytes> + Send) -> Result<Revision> {
        self.put(key, value.into(), PutOptions::create()).await
    }

    /// Writes `value` only if the key is at `revision`.
    async fn update(
        &self,
        key: &Key,
        value: impl Into<Bytes> + Send,
        revision: Revision,
    ) -> Result<Revision> {
        self.put(key, value.into(), PutOptions::update(revision))
            .await
    }

    /// Collects [`keys`](StateStore::keys) into a vector.
    async fn list_keys(&self, pattern: &Pattern) -> Result<Vec<Key>> {
        use futures::TryStreamExt;
        self.keys(pattern).await?.try_collect().await
    }

    /// The store's current revision (`None` for a store never written): at least the revision
    /// of every change acknowledged before the call, and below the revision of every change
    /// made after it returns. It is the `CaughtUp` of a snapshot watch of one reserved key
    /// nobody writes, as linearizable as the backend's snapshots. On a backend whose own
    /// bookkeeping takes revisions (NATS's read barriers), it may name one of those rather
    /// than the last change's.
    async fn current_revision(&self) -> Result<Option<Revision>> {
        use futures::StreamExt;
        let probe = Key::new_reserved("_swarmstate.probe")?;
        let mut events = self
            .watch(&Pattern::exact(&probe), crate::WatchStart::Snapshot)
            .await?;
        while let Some(event) = events.next().await {
            if let WatchEvent::CaughtUp { revision } = event {
                return Ok(revision);
            }
        }
        Err(Error::Unavailable {
            message: "the store ended a snapshot before it caught up (is it closing?)".into(),
        })
    }

    /// The optimistic-concurrency loop: reads the key, asks `f` for the new value given the
    /// current one (`None` when absent), and writes it conditioned on what was read (create
    /// when absent, update at the read revision). On a lost race it re-reads and calls `f`
    /// again. `f` returning an error stops the loop with that error.
    ///
    /// ```
    /// # use swarmstate_core::{Key, MemoryStore, StateStoreExt};
    /// # tokio_test_block_on(async {
    /// let store = MemoryStore::new();
    /// let counter = Key::new("jobs.done")?;
    /// for _ in 0..3 {
    ///     store
    ///         .compare_and_swap(&counter, |current| {
    ///             let n: u64 = match current {
    ///                 Some(bytes) => std::str::from_utf8(bytes).unwrap().parse().unwrap(),
    ///                 None => 0,
    ///             };
    ///             Ok((n + 1).to_string().into())
    ///         })
    ///         .await?;
    /// }
    /// assert_eq!(&store.get(&counter).await?.unwrap().value[..], b"3");
    /// # Ok::<_, swarmstate_core::Error>(())
    /// # });
    /// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    /// # }
    /// # use swarmstate_core::StateStore;
    /// ```
    async fn compare_and_swap<F>(&self, key: &Key, mut f: F) -> Result<Revision>
    where
        F: FnMut(Option<&Bytes>) -> Result<Bytes> + Send,
    {
        loop {
            let current = self.get(key).await?;
            let value = f(current.as_ref().map(|entry| &entry.value))?;
            let options = match &current {
                Some(entry) => PutOptions::update(entry.revision),
                None => PutOptions::create(),
            };
            match self.put(key, value, options).await {
                Err(err) if err.is_conflict() => continue,
                other => return other,
            }
        }
    }
}

impl<S: StateStore + ?Sized> StateStoreExt for S {}

/// Runs `attempt` until it succeeds or fails with something other than a conflict.
/// For multi-key read-decide-write loops built on [`StateStore::txn`].
pub async fn retry_on_conflict<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    loop {
        match attempt().await {
            Err(err) if err.is_conflict() => continue,
            other => return other,
        }
    }
}

/// Returns [`Error::Closed`] when `closed` is set. A small helper for backends.
pub fn ensure_open(closed: bool) -> Result<()> {
    if closed { Err(Error::Closed) } else { Ok(()) }
}
