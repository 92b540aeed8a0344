//! Locks with fencing tokens, written only against [`StateStore`], so they behave the same on
//! every backend.
//!
//! A lock is a key created with a TTL; its value is the holder's owner name. The
//! [`FencingToken`] is the revision at which the lock was created: revisions are store-wide
//! and strictly increasing, so every later holder's token is greater. A holder that stalled
//! past its TTL can no longer do harm through the store: [`LockGuard::fenced_put`] and
//! [`LockGuard::fenced_txn`] apply only while the lock key is still the guard's.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::types::validate_ttl;
use crate::{
    Condition, Error, Key, PutOptions, Result, Revision, StateStore, TxnAction, TxnOp, TxnResult,
};

/// The revision at which a lock was acquired: strictly greater than every earlier holder's.
/// Hand it to a protected resource so it can keep the highest token it has seen and refuse
/// a stale holder's lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken(pub Revision);

impl FencingToken {
    /// The token as a number.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A held lock. Dropping it does not release the lock (that needs a round trip); call
/// [`release`](LockGuard::release), or let the TTL run out.
#[derive(Debug)]
pub struct LockGuard {
    store: Arc<dyn StateStore>,
    key: Key,
    owner: String,
    ttl: Duration,
    token: FencingToken,
    // Invariant: the lock key's revision as of our last successful write to it. A refresh
    // moves it; the token stays.
    revision: Mutex<Revision>,
}

/// Acquires the lock `key` for `owner` with `ttl`, or fails at once with [`Error::LockHeld`]
/// naming the holder and the time it has left.
///
/// Errors besides `LockHeld`: [`Error::InvalidInput`] for an empty owner or a TTL out of range.
pub async fn acquire_lock(
    store: &Arc<dyn StateStore>,
    key: &Key,
    owner: &str,
    ttl: Duration,
) -> Result<LockGuard> {
    validate_ttl(ttl)?;
    if owner.is_empty() {
        return Err(Error::InvalidInput {
            message: "a lock owner must not be empty".into(),
        });
    }
    loop {
        let options = PutOptions::create().ttl(ttl);
        match store.put(key, Bytes::from(owner.to_owned()), options).await {
            Ok(revision) => {
                return Ok(LockGuard {
                    store: store.clone(),
                    key: key.clone(),
                    owner: owner.to_owned(),
                    ttl,
                    token: FencingToken(revision),
                    revision: Mutex::new(revision),
                });
            }
            Err(Error::AlreadyExists { .. }) => {
                // Describe the holder; if the lock vanished meanwhile, try again.
                if let Some(entry) = store.get(key).await? {
                    return Err(Error::LockHeld {
                        key: key.clone(),
                        holder: String::from_utf8_lossy(&entry.value).into_owned(),
                        expires_in: entry.expires_in,
                    });
                }
            }
            Err(other) => return Err(other),
        }
    }
}

impl LockGuard {
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
        Error::LockLost {
            key: self.key.clone(),
        }
    }

    /// Extends the lock by its TTL from now, if it is still ours; otherwise
    /// [`Error::LockLost`] and nothing changes.
    pub async fn refresh(&self) -> Result<()> {
        let options = PutOptions::update(self.current()).ttl(self.ttl);
        match self
            .store
            .put(&self.key, Bytes::from(self.owner.clone()), options)
            .await
        {
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
    /// error is [`Error::LockLost`]; other conditions fail as in [`StateStore::txn`].
    pub async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        if ops.iter().any(|op| op.key == self.key) {
            return Err(Error::InvalidInput {
                message: format!(
                    "a fenced transaction must not touch its own lock {}",
                    self.key
                ),
            });
        }
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
