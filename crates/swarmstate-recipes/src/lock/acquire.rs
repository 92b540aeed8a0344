//! Acquiring a lock with one attempt: a conditional create of the lock key.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use swarmstate_core::backend::validate_ttl;
use swarmstate_core::{Entry, Error, Key, PutOptions, Result, StateStore};

use super::guard::LockGuard;

/// Acquires the lock `key` for `owner` with `ttl`, or fails at once with [`Error::LockHeld`]
/// naming the holder and the time it has left. One write (plus a read to describe a holder).
///
/// It does not look at the waiters of [`acquire_lock_wait`](super::acquire_lock_wait): a lock that is free is taken, even
/// while waiters are queued. The lock is only free with waiters queued during a hand-over (one
/// watch event and one write long) or while the first waiter is dead and its ticket has not yet
/// expired; taking it then is safe (tokens still increase, the waiters see the new holder on
/// their watch and keep their places), and refusing would cost every try-acquire a listing of
/// the queue.
///
/// Errors besides `LockHeld`: [`Error::InvalidInput`] for an owner that is empty, longer than
/// [`MAX_OWNER_LEN`] or holds control characters, or a TTL out of range.
pub async fn acquire_lock(
    store: &Arc<dyn StateStore>,
    key: &Key,
    owner: &str,
    ttl: Duration,
) -> Result<LockGuard> {
    validate_lock_input(owner, ttl)?;
    try_acquire(store, key, owner, Bytes::from(owner.to_owned()), ttl).await
}

/// The longest lock owner or election candidate name, in bytes: it is shown to others as the
/// holder, so it is kept short and printable.
pub const MAX_OWNER_LEN: usize = 256;

pub(crate) fn validate_lock_input(owner: &str, ttl: Duration) -> Result<()> {
    validate_ttl(ttl)?;
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN || owner.chars().any(char::is_control) {
        return Err(Error::InvalidInput {
            message: format!(
                "a lock owner or election candidate must be 1 to {MAX_OWNER_LEN} bytes without \
                 control characters, got {owner:?}"
            ),
        });
    }
    Ok(())
}

/// One attempt to create the lock key holding `value`; `LockHeld` if it is there.
pub(crate) async fn try_acquire(
    store: &Arc<dyn StateStore>,
    key: &Key,
    owner: &str,
    value: Bytes,
    ttl: Duration,
) -> Result<LockGuard> {
    loop {
        let options = PutOptions::create().ttl(ttl);
        match store.put(key, value.clone(), options).await {
            Ok(revision) => return Ok(LockGuard::new(store, key, owner, value, ttl, revision)),
            Err(Error::AlreadyExists { .. }) => {
                // Describe the holder; if the lock vanished meanwhile, try again.
                if let Some(entry) = store.get(key).await? {
                    return Err(held_by(key, &entry));
                }
            }
            Err(other) => return Err(other),
        }
    }
}

fn held_by(key: &Key, entry: &Entry) -> Error {
    Error::LockHeld {
        key: key.clone(),
        holder: String::from_utf8_lossy(&entry.value).into_owned(),
        expires_in: entry.expires_in,
    }
}
