//! The held lock: refresh, release, fenced writes, and the release in the background when a
//! guard is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

use swarmstate_core::{
    Condition, Error, Key, PutOptions, Result, Revision, StateStore, TxnAction, TxnOp, TxnResult,
};

use super::fencing::FencingToken;

/// A held lock as plain data: who holds which lock, with which token, and the lock key's
/// revision as of the holder's last write. See [`LockGuard::into_handle`] and
/// [`LockGuard::from_handle`].
///
/// A handle names one holding: a later holder of the same key has a greater token, and every
/// refresh gives a greater revision, so a handle that is not the newest one of the current
/// holding never passes a fenced write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHandle {
    /// The lock key.
    pub key: Key,
    /// The holder's name, which is the lock key's value.
    pub owner: String,
    /// How long the lock lives after each acquisition or refresh.
    pub ttl: Duration,
    /// The fencing token: the revision at which the lock was acquired.
    pub token: FencingToken,
    /// The lock key's revision as of the holder's last write to it.
    pub revision: Revision,
}

/// A held lock.
///
/// Prefer [`release`](LockGuard::release), which reports whether the lock was still ours.
/// Dropping a guard that was neither released nor found lost releases the lock in the
/// background, best effort: the drop spawns the conditional delete on the current Tokio
/// runtime (if there is one; the delete applies only if the lock is still this guard's). Without
/// a runtime, or if that delete fails, the lock simply expires after its TTL.
#[derive(Debug)]
pub struct LockGuard {
    pub(super) store: Arc<dyn StateStore>,
    pub(super) key: Key,
    owner: String,
    // What acquisition and refresh write to the lock key: the owner name, or a recipe's own
    // encoding of it (an election writes the term beside the candidate).
    value: Bytes,
    pub(super) ttl: Duration,
    token: FencingToken,
    // Invariant: the lock key's revision as of our last successful write to it. A refresh
    // moves it; the token stays.
    revision: Mutex<Revision>,
    // Refreshes and releases hold it exclusively, fenced writes shared: a fenced write that
    // read `revision` while a refresh was in flight would be refused although the lock is ours.
    writing: tokio::sync::RwLock<()>,
    // Set once the guard was released or found lost, so that drop does not release again.
    pub(super) finished: AtomicBool,
    // The delete of the waiter's ticket that took this lock, still running in the background.
    // A release (or drop) waits for it before it deletes the lock: the next waiter must never
    // find our stale ticket still first in the queue when the lock is free, or it would wait
    // for nothing until the ticket's delete or expiry shows on its watch.
    pub(super) ticket_removal: Mutex<Option<JoinHandle<()>>>,
}

impl LockGuard {
    pub(super) fn new(
        store: &Arc<dyn StateStore>,
        key: &Key,
        owner: &str,
        value: Bytes,
        ttl: Duration,
        revision: Revision,
    ) -> LockGuard {
        LockGuard {
            store: store.clone(),
            key: key.clone(),
            owner: owner.to_owned(),
            value,
            ttl,
            token: FencingToken(revision),
            revision: Mutex::new(revision),
            writing: tokio::sync::RwLock::new(()),
            finished: AtomicBool::new(false),
            ticket_removal: Mutex::new(None),
        }
    }

    /// Sets what later refreshes write to the lock key.
    /// A guard for a holding known only by its handle, for a process that acts for a holder
    /// it does not keep in memory (a server answering stateless requests). Its refresh writes
    /// the owner name, as [`acquire_lock`](super::acquire_lock) does. Nothing is read or written
    /// here: whether the handle is still the holding shows on the guard's first write, which
    /// is [`Error::LockLost`] if it is not.
    ///
    /// The guard is as any other: dropping it releases the lock in the background. Turn it back
    /// into a handle with [`into_handle`](LockGuard::into_handle) to leave the lock held.
    ///
    /// Errors: [`Error::InvalidInput`] for an owner that is empty, too long or not printable, a TTL out of range, or a revision
    /// below the token (no holding has one).
    pub fn from_handle(store: &Arc<dyn StateStore>, handle: &LockHandle) -> Result<LockGuard> {
        let value = Bytes::from(handle.owner.clone());
        LockGuard::resumed(store, handle, value)
    }

    /// [`from_handle`](LockGuard::from_handle) with the value a recipe writes on refresh.
    pub(crate) fn resumed(
        store: &Arc<dyn StateStore>,
        handle: &LockHandle,
        value: Bytes,
    ) -> Result<LockGuard> {
        super::validate_lock_input(&handle.owner, handle.ttl)?;
        if handle.revision < handle.token.0 {
            return Err(Error::InvalidInput {
                message: format!(
                    "lock {} handle: revision {} is below its token {}, which no holding has",
                    handle.key, handle.revision, handle.token
                ),
            });
        }
        let mut guard = LockGuard::new(
            store,
            &handle.key,
            &handle.owner,
            value,
            handle.ttl,
            handle.token.0,
        );
        *guard.revision.get_mut().unwrap_or_else(|e| e.into_inner()) = handle.revision;
        Ok(guard)
    }

    /// The lock key's revision as of this guard's last write to it (the token until the first
    /// refresh).
    pub fn revision(&self) -> Revision {
        self.current()
    }

    /// This holding as plain data, leaving the lock held: nothing is released, and the lock
    /// expires after its TTL unless a guard made again with
    /// [`from_handle`](LockGuard::from_handle) refreshes or releases it. Waits until the
    /// waiter's ticket of a blocking acquire is removed, so the handle is returned with nothing
    /// else of the acquisition left behind.
    pub async fn into_handle(self) -> LockHandle {
        self.finished.store(true, Ordering::Relaxed);
        self.ticket_removed().await;
        LockHandle {
            key: self.key.clone(),
            owner: self.owner.clone(),
            ttl: self.ttl,
            token: self.token,
            revision: self.current(),
        }
    }

    pub(crate) fn set_value(&mut self, value: Bytes) {
        self.value = value;
    }

    /// The lock key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The owner name this guard holds the lock as.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The TTL each acquisition and refresh sets.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The fencing token of this acquisition.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    fn current(&self) -> Revision {
        *self.revision.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lost(&self) -> Error {
        self.finished.store(true, Ordering::Relaxed);
        Error::LockLost {
            key: self.key.clone(),
        }
    }

    /// Waits until the ticket this lock was taken with is gone (or its delete failed).
    async fn ticket_removed(&self) {
        let removal = self
            .ticket_removal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(removal) = removal {
            let _ = removal.await;
        }
    }

    /// Extends the lock by its TTL from now, if it is still ours; otherwise
    /// [`Error::LockLost`] and nothing changes.
    pub async fn refresh(&self) -> Result<()> {
        let _writing = self.writing.write().await;
        let options = PutOptions::update(self.current()).ttl(self.ttl);
        match self.store.put(&self.key, self.value.clone(), options).await {
            Ok(revision) => {
                *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = revision;
                Ok(())
            }
            Err(Error::RevisionMismatch { .. }) => Err(self.lost()),
            Err(other) => Err(other),
        }
    }

    /// Releases the lock if it is still ours; otherwise [`Error::LockLost`] and nothing
    /// changes (a later holder keeps its lock).
    pub async fn release(self) -> Result<()> {
        self.release_now().await
    }

    pub(super) async fn release_now(&self) -> Result<()> {
        let _writing = self.writing.write().await;
        self.finished.store(true, Ordering::Relaxed);
        self.ticket_removed().await;
        match self.store.delete(&self.key, Some(self.current())).await {
            Ok(_) => Ok(()),
            Err(Error::RevisionMismatch { .. }) => Err(self.lost()),
            Err(other) => Err(other),
        }
    }

    /// Writes `value` to `key` only while this lock is still held by this guard, atomically.
    /// A stale holder gets [`Error::LockLost`] and nothing is written.
    pub async fn fenced_put(&self, key: &Key, value: impl Into<Bytes>) -> Result<Revision> {
        let results = self.fenced_txn(vec![TxnOp::put(key, value)]).await?;
        match results.last() {
            Some(TxnResult::Put(revision)) => Ok(*revision),
            other => unreachable!("a put in a transaction yields Put, got {other:?}"),
        }
    }

    /// Applies `ops` as one transaction that also requires this lock to still be held by this
    /// guard. Returns the results of `ops` (without the lock check). If the lock was lost, the
    /// error is [`Error::LockLost`]; other conditions fail as in [`StateStore::txn`]. A fenced
    /// write issued while a refresh of this guard is in flight waits for the refresh.
    pub async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        if ops.iter().any(|op| op.key == self.key) {
            return Err(Error::InvalidInput {
                message: format!(
                    "a fenced transaction must not touch its own lock {}",
                    self.key
                ),
            });
        }
        let _writing = self.writing.read().await;
        let mut all = Vec::with_capacity(ops.len() + 1);
        all.push(TxnOp {
            key: self.key.clone(),
            action: TxnAction::Check,
            condition: Condition::At(self.current()),
        });
        all.extend(ops);
        match self.store.txn(all).await {
            Ok(mut results) => {
                results.remove(0);
                Ok(results)
            }
            Err(Error::RevisionMismatch { key, .. }) if key == self.key => Err(self.lost()),
            Err(other) => Err(other),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        // Without a runtime nothing can be sent; the lock then expires after its TTL.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key, revision) = (self.store.clone(), self.key.clone(), self.current());
        let ticket_removal = self
            .ticket_removal
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let ticket_removal = ticket_removal.take();
        runtime.spawn(async move {
            if let Some(removal) = ticket_removal {
                let _ = removal.await;
            }
            if let Err(err) = store.delete(&key, Some(revision)).await {
                tracing::debug!(%key, %err, "release of a dropped lock guard failed");
            }
        });
    }
}
