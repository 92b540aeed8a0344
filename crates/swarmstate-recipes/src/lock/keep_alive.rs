//! Keeping a lock alive in the background, and signalling its loss.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use swarmstate_core::{Error, Result};

use super::guard::LockGuard;
use super::watch::LockWatch;

/// Keeps a lock alive in the background: refreshes it every third of its TTL and signals the
/// moment the lock is known lost, so the holder can stop its work. Besides the refreshes it
/// watches the lock key, so a delete or an expiry of the lock is known as soon as the store
/// reports it, not only at the next refresh.
///
/// [`release`](KeepAlive::release) stops refreshing and releases at once. Dropping it stops
/// refreshing and, like dropping a [`LockGuard`], releases the lock in the background if a
/// Tokio runtime is current and the lock is not known lost; otherwise the lock expires after
/// its TTL.
#[derive(Debug)]
pub struct KeepAlive {
    guard: Arc<LockGuard>,
    lost: watch::Receiver<bool>,
    // Invariant: `Some` until `release` or drop has stopped the task.
    task: Option<JoinHandle<()>>,
    // Sending (or dropping) it stops the task between refreshes, never in the middle of one,
    // so that no refresh lands after a release.
    stop: Option<oneshot::Sender<()>>,
}

impl LockGuard {
    /// Starts refreshing this lock every `ttl / 3`. A refresh that finds the lock taken, or a
    /// delete or expiry of the lock key seen by the watch, marks it lost at once; refreshes
    /// that fail for other reasons (the store unreachable) are retried until the lock's TTL
    /// since the last successful refresh has run out, and then it is marked lost too, because
    /// by then it may have expired.
    pub fn keep_alive(self) -> KeepAlive {
        let guard = Arc::new(self);
        let (lost_sender, lost) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(refresh_loop(guard.clone(), lost_sender, stopped));
        KeepAlive {
            guard,
            lost,
            task: Some(task),
            stop: Some(stop),
        }
    }
}

async fn refresh_loop(
    guard: Arc<LockGuard>,
    lost: watch::Sender<bool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let period = guard.ttl / 3;
    let mut valid_until = Instant::now() + guard.ttl;
    let mut next_refresh = Instant::now() + period;
    let mut events = LockWatch::open(&guard.store, &guard.key);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep_until(next_refresh) => {
                let attempt = Instant::now();
                match guard.refresh().await {
                    Ok(()) => valid_until = attempt + guard.ttl,
                    Err(Error::LockLost { .. }) => break,
                    Err(err) if Instant::now() < valid_until => {
                        tracing::warn!(key = %guard.key, %err, "lock refresh failed; retrying");
                    }
                    Err(_) => break,
                }
                next_refresh = attempt + period;
            }
            present = events.next() => {
                if !present {
                    // A lock key is never deleted or expired while it is still ours.
                    guard.finished.store(true, Ordering::Relaxed);
                    break;
                }
            }
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
        self.stop.take();
        if let Some(task) = self.task.take() {
            // The task ends after any refresh in flight, so none lands after the release.
            let _ = task.await;
        }
        self.guard.release_now().await
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.take();
        let Some(task) = self.task.take() else {
            return;
        };
        if self.guard.finished.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let guard = self.guard.clone();
            runtime.spawn(async move {
                // The task ends after any refresh in flight, so none lands after the release.
                let _ = task.await;
                if let Err(err) = guard.release_now().await {
                    tracing::debug!(key = %guard.key, %err, "release of a dropped keep-alive failed");
                }
            });
        }
    }
}
