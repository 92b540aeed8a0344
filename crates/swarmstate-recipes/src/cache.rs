//! A cache of computed values with a TTL, shared by the whole swarm, that computes each missing
//! value once however many agents miss it at the same moment (single-flight).
//!
//! Written only against [`StateStore`]. Layout under the cache's prefix `p`:
//!
//! - `p.<name>` — the cached value, written with the entry's TTL; the store expires it.
//! - `p.<name>._fill` — the fill lock ([`acquire_lock`]) held by the one agent computing
//!   `<name>`, with the cache's fill timeout as its TTL.
//!
//! A miss takes the fill lock at once or, if someone holds it, watches the entry and the lock
//! (no polling) until the value appears or the lock goes away, and then tries again. The
//! filler stores the value and deletes its lock in one transaction, so no crash leaves a value
//! without a released lock or a released lock without the value; a filler that dies holds
//! everyone up for at most the lock's TTL.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use swarmstate_core::backend::validate_ttl;
use swarmstate_core::{Condition, Error, Key, Result, StateStore, TxnOp};

use crate::follow::KeyFollower;
use crate::lock::{LockGuard, acquire_lock};

/// The fill timeout of a new [`TtlCache`].
pub const DEFAULT_FILL_TIMEOUT: Duration = Duration::from_secs(30);

/// The last token of a fill lock's key. Names may not use tokens that start with `_`, so no
/// entry can collide with a lock.
const FILL_TOKEN: &str = "_fill";

/// What a waiter allows beyond the holder's TTL for the store to expire the lock.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// Why [`TtlCache::get_or_compute`] returned no value.
#[derive(Debug, thiserror::Error)]
pub enum CacheError<E> {
    /// The store failed; nothing is known about the value.
    #[error("cache store error: {0}")]
    Store(#[from] Error),
    /// This caller computed the value and the computation failed. Nothing was cached, and the
    /// fill lock was released at once, so the next caller computes afresh.
    #[error("computing the cached value failed: {0}")]
    Compute(E),
}

/// A cache of computed values in a store, with single-flight fills across every client of the
/// store. Cloning is cheap; clones share the fill timeout and the owner name.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use swarmstate::{Key, MemoryStore, StateStore};
/// # use swarmstate::cache::TtlCache;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
/// let cache = TtlCache::new(store, Key::new("cache")?);
/// let compute = || async { Ok::<_, std::io::Error>("42".into()) };
/// let value = cache.get_or_compute("answer", Duration::from_secs(60), compute).await?;
/// assert_eq!(&value[..], b"42");
/// assert_eq!(cache.get("answer").await?.as_deref(), Some(&b"42"[..]));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct TtlCache {
    store: Arc<dyn StateStore>,
    prefix: Key,
    fill_timeout: Duration,
    owner: Arc<str>,
}

impl TtlCache {
    /// A cache whose entries live at `prefix.<name>`, with a fill timeout of
    /// [`DEFAULT_FILL_TIMEOUT`].
    pub fn new(store: Arc<dyn StateStore>, prefix: Key) -> TtlCache {
        // A random suffix, not a counter shared by every cache in the process: the name only
        // tells holders apart in `LockHeld` (the fill lock's create decides who fills).
        // `RandomState` is seeded from the operating system's randomness.
        let random = RandomState::new().hash_one((std::process::id(), Instant::now()));
        let owner = format!("ttl-cache-{}-{random:016x}", std::process::id());
        TtlCache {
            store,
            prefix,
            fill_timeout: DEFAULT_FILL_TIMEOUT,
            owner: owner.into(),
        }
    }

    /// Sets the TTL of the fill lock: how long one computation may take before another caller
    /// may take over, and so the longest a dead filler holds the others up. A computation that
    /// outlives it still returns its value to its caller, but does not cache it.
    pub fn fill_timeout(mut self, timeout: Duration) -> TtlCache {
        self.fill_timeout = timeout;
        self
    }

    /// Sets the owner name the fill lock is taken under (shown in [`Error::LockHeld`] and in
    /// the lock's value); by default `ttl-cache-<process id>-<64 random bits>`, unique per
    /// cache.
    pub fn owner(mut self, owner: impl Into<String>) -> TtlCache {
        self.owner = owner.into().into();
        self
    }

    /// The key of `name`'s entry: `prefix.<name>`.
    ///
    /// Errors: [`Error::InvalidKey`] if `prefix.<name>` is no valid key,
    /// [`Error::InvalidInput`] if a token of `name` starts with `_` (kept for the fill lock).
    pub fn entry_key(&self, name: &str) -> Result<Key> {
        let key = Key::new(format!("{}.{name}", self.prefix))?;
        if let Some(token) = name.split('.').find(|token| token.starts_with('_')) {
            return Err(Error::InvalidInput {
                message: format!(
                    "cache name {name:?} has the token {token:?}; tokens starting with `_` are \
                     kept for the cache's fill locks"
                ),
            });
        }
        Ok(key)
    }

    /// The key of `name`'s fill lock: `prefix.<name>._fill`. Errors as for
    /// [`entry_key`](TtlCache::entry_key).
    pub fn fill_lock_key(&self, name: &str) -> Result<Key> {
        let entry = self.entry_key(name)?;
        Key::new(format!("{entry}.{FILL_TOKEN}"))
    }

    /// The cached value of `name`, if present and not expired.
    pub async fn get(&self, name: &str) -> Result<Option<Bytes>> {
        let key = self.entry_key(name)?;
        Ok(self.store.get(&key).await?.map(|entry| entry.value))
    }

    /// Removes `name`'s value and cancels a fill in flight, in one transaction: the filler's
    /// value is still returned to its caller but not cached, and callers waiting on it compute
    /// afresh (one of them).
    pub async fn invalidate(&self, name: &str) -> Result<()> {
        let entry = self.entry_key(name)?;
        let lock = self.fill_lock_key(name)?;
        self.store
            .txn(vec![TxnOp::delete(&entry), TxnOp::delete(&lock)])
            .await?;
        Ok(())
    }

    /// The cached value of `name`, or the value `f` computes, cached with `ttl`.
    ///
    /// Single-flight across the swarm: of all callers on all clients that miss `name` at once,
    /// one computes (it holds the fill lock); the others watch the entry and the lock until
    /// the value appears, and return it without computing. If the filler fails, is cancelled,
    /// or dies (its lock expires after the fill timeout), a waiter takes over and computes.
    ///
    /// The filler stores the value with `ttl` and releases the fill lock in one transaction.
    /// The entry disappears within `ttl` plus the store's TTL granularity; the next miss
    /// computes again.
    ///
    /// Errors: [`CacheError::Compute`] when this caller's `f` failed (nothing cached, the lock
    /// released at once); [`CacheError::Store`] for a store failure, an invalid name
    /// ([`Error::InvalidKey`], [`Error::InvalidInput`]) or a `ttl` or fill timeout out of
    /// range ([`Error::InvalidInput`]). A value the store refuses (e.g.
    /// [`Error::ValueTooLarge`]) is a store error too, and is not returned.
    pub async fn get_or_compute<F, Fut, E>(
        &self,
        name: &str,
        ttl: Duration,
        f: F,
    ) -> std::result::Result<Bytes, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Bytes, E>>,
    {
        validate_ttl(ttl)?;
        validate_ttl(self.fill_timeout)?;
        let entry = self.entry_key(name)?;
        let lock = self.fill_lock_key(name)?;
        loop {
            if let Some(found) = self.store.get(&entry).await? {
                return Ok(found.value);
            }
            match acquire_lock(&self.store, &lock, &self.owner, self.fill_timeout).await {
                Ok(guard) => return self.fill(FillLock(Some(guard)), &entry, ttl, f).await,
                Err(Error::LockHeld { expires_in, .. }) => {
                    let wait = expires_in.unwrap_or(self.fill_timeout);
                    if let Some(value) = self.wait_for_fill(&entry, &lock, wait).await? {
                        return Ok(value);
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Computes and stores the value while holding the fill lock.
    async fn fill<F, Fut, E>(
        &self,
        mut lock: FillLock,
        entry: &Key,
        ttl: Duration,
        f: F,
    ) -> std::result::Result<Bytes, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Bytes, E>>,
    {
        // Another filler may have stored the value and released its lock between our miss and
        // our acquisition.
        if let Some(found) = self.store.get(entry).await? {
            lock.release().await;
            return Ok(found.value);
        }
        let value = match f().await {
            Ok(value) => value,
            Err(err) => {
                lock.release().await;
                return Err(CacheError::Compute(err));
            }
        };
        let guard = lock.guard();
        let ops = vec![
            TxnOp::delete(guard.key()).when(Condition::At(guard.token().0)),
            TxnOp::put(entry, value.clone()).ttl(ttl),
        ];
        match self.store.txn(ops).await {
            Ok(_) => {
                lock.disarm();
                Ok(value)
            }
            Err(err) if err.is_conflict() => {
                // The lock expired or was invalidated meanwhile: the value may be stale for
                // whoever fills now, so it is this caller's alone.
                tracing::debug!(key = %entry, "fill lock lost before the value was stored");
                lock.disarm();
                Ok(value)
            }
            // The lock is released in the background when `lock` drops.
            Err(err) => Err(err.into()),
        }
    }

    /// Waits until `entry` is written (its value) or `lock` is gone or the wait ran out
    /// (`None`: try again). `held_for` is how long the holder's lock has left.
    async fn wait_for_fill(
        &self,
        entry: &Key,
        lock: &Key,
        held_for: Duration,
    ) -> Result<Option<Bytes>> {
        let slack = self.store.capabilities().ttl_granularity + EXPIRY_SLACK;
        // Followers start from a snapshot, so the state read and the changes after it leave no
        // gap; after a lag they read the key afresh.
        let mut holder = KeyFollower::open(&self.store, lock).await?;
        let mut deadline = match holder.next().await? {
            Some(lock) => Instant::now() + lock.expires_in.unwrap_or(held_for) + slack,
            None => return Ok(None),
        };
        let mut value = KeyFollower::open(&self.store, entry).await?;
        loop {
            tokio::select! {
                found = value.next() => {
                    if let Some(found) = found? {
                        return Ok(Some(found.value));
                    }
                }
                lock = holder.next() => match lock? {
                    // A new holder took over (or the holder refreshed): wait for it in turn.
                    Some(lock) => {
                        let left = lock.expires_in.unwrap_or(self.fill_timeout);
                        deadline = Instant::now() + left + slack;
                    }
                    // Released (with or without a value) or expired.
                    None => return Ok(None),
                },
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }
}

/// The fill lock while a fill is in progress. If the fill is abandoned (the caller's future
/// dropped, or the store failed), the lock is released in the background, so waiters take
/// over at once instead of after the fill timeout.
struct FillLock(Option<LockGuard>);

impl FillLock {
    fn guard(&self) -> &LockGuard {
        self.0
            .as_ref()
            .expect("the fill lock is held until disarmed")
    }

    /// Forgets the lock: the fill transaction deleted it, or it is no longer ours.
    fn disarm(&mut self) {
        self.0 = None;
    }

    async fn release(&mut self) {
        if let Some(guard) = self.0.take() {
            release(guard).await;
        }
    }
}

impl Drop for FillLock {
    fn drop(&mut self) {
        if let Some(guard) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(release(guard));
        }
    }
}

async fn release(guard: LockGuard) {
    let key = guard.key().clone();
    match guard.release().await {
        Ok(()) | Err(Error::LockLost { .. }) => {}
        // The lock expires after the fill timeout anyway.
        Err(err) => tracing::warn!(%key, %err, "could not release a cache fill lock"),
    }
}
