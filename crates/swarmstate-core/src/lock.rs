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
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
        self.release_now().await
    }

    async fn release_now(&self) -> Result<()> {
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

/// Keeps a lock alive in the background: refreshes it every third of its TTL and signals the
/// moment the lock is known lost, so the holder can stop its work.
///
/// Dropping it stops refreshing (the lock then expires after its TTL);
/// [`release`](KeepAlive::release) stops refreshing and releases at once.
#[derive(Debug)]
pub struct KeepAlive {
    guard: Arc<LockGuard>,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl LockGuard {
    /// Starts refreshing this lock every `ttl / 3`. A refresh that finds the lock taken marks it
    /// lost at once; refreshes that fail for other reasons (the store unreachable) are retried
    /// until the lock's TTL since the last successful refresh has run out, and then it is
    /// marked lost too, because by then it may have expired.
    pub fn keep_alive(self) -> KeepAlive {
        let guard = Arc::new(self);
        let (lost_sender, lost) = watch::channel(false);
        let task = tokio::spawn(refresh_loop(guard.clone(), lost_sender));
        KeepAlive { guard, lost, task }
    }
}

async fn refresh_loop(guard: Arc<LockGuard>, lost: watch::Sender<bool>) {
    let period = guard.ttl / 3;
    let mut valid_until = Instant::now() + guard.ttl;
    loop {
        tokio::time::sleep(period).await;
        let attempt = Instant::now();
        match guard.refresh().await {
            Ok(()) => valid_until = attempt + guard.ttl,
            Err(Error::LockLost { .. }) => break,
            Err(err) if Instant::now() < valid_until => {
                tracing::warn!(key = %guard.key, %err, "lock refresh failed; retrying");
            }
            Err(_) => break,
        }
    }
    lost.send_replace(true);
}

impl KeepAlive {
    /// The guard, for its token and fenced writes.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Whether the lock is known lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves the moment the lock is known lost. Cancel-safe.
    pub async fn lost(&mut self) {
        // The sender lives in the refresh task, which marks the loss before it ends.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops refreshing and releases the lock if it is still ours; [`Error::LockLost`]
    /// otherwise.
    pub async fn release(mut self) -> Result<()> {
        self.task.abort();
        // Wait until no refresh is in flight, so none lands after the release.
        let _ = (&mut self.task).await;
        self.guard.release_now().await
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Guards a resource against stale lock holders: it remembers the highest fencing token it
/// has admitted and refuses any lower one. Equal tokens are admitted (one holder may act many
/// times). Keep one gate per protected resource, next to the resource.
#[derive(Debug, Default)]
pub struct FenceGate {
    highest: Mutex<Option<FencingToken>>,
}

/// A [`FenceGate`] refused a token lower than one it had already admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fencing token {token} is stale: token {highest} was already admitted")]
pub struct StaleToken {
    /// The token refused.
    pub token: FencingToken,
    /// The highest token admitted so far.
    pub highest: FencingToken,
}

impl FenceGate {
    /// A gate that has admitted nothing.
    pub fn new() -> FenceGate {
        FenceGate::default()
    }

    /// Admits `token` if it is at least the highest admitted so far, and remembers it.
    pub fn admit(&self, token: FencingToken) -> Result<(), StaleToken> {
        let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        match *highest {
            Some(seen) if token < seen => Err(StaleToken {
                token,
                highest: seen,
            }),
            _ => {
                *highest = Some(token);
                Ok(())
            }
        }
    }

    /// The highest token admitted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        *self.highest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u64) -> FencingToken {
        FencingToken(Revision::new(n).unwrap())
    }

    #[test]
    fn fence_gate_refuses_lower_tokens_and_admits_equal_or_higher() {
        let gate = FenceGate::new();
        assert_eq!(gate.highest(), None);
        gate.admit(token(5)).unwrap();
        gate.admit(token(5)).unwrap();
        let err = gate.admit(token(4)).unwrap_err();
        assert_eq!(
            err,
            StaleToken {
                token: token(4),
                highest: token(5)
            }
        );
        assert!(err.to_string().contains("stale"), "{err}");
        gate.admit(token(9)).unwrap();
        assert!(gate.admit(token(5)).is_err());
        assert_eq!(gate.highest(), Some(token(9)));
    }
}
