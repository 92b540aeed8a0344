//! Whether a lock key is present, followed across lags: what wakes a waiter and tells a
//! keep-alive its lock is gone.

use std::sync::Arc;

use swarmstate_core::{Error, Key, Result, StateStore};

use crate::follow::KeyFollower;

/// Whether a lock key is present, followed through a [`KeyFollower`] (which reads the key
/// afresh after a lag).
pub(crate) struct LockWatch {
    key: Key,
    follower: KeyFollower,
    // Set once the follower ended (the store closed, or refused a watch): nothing more will
    // be known.
    gone: bool,
}

impl LockWatch {
    /// A snapshot watch of exactly `key`, opened by the first call to `next`.
    pub(crate) fn open(store: &Arc<dyn StateStore>, key: &Key) -> LockWatch {
        LockWatch {
            key: key.clone(),
            follower: KeyFollower::open_later(store, key),
            gone: false,
        }
    }

    /// Opens a snapshot watch of exactly `key`, failing if the store refuses it.
    pub(crate) async fn try_open(store: &Arc<dyn StateStore>, key: &Key) -> Result<LockWatch> {
        Ok(LockWatch {
            key: key.clone(),
            follower: KeyFollower::open(store, key).await?,
            gone: false,
        })
    }

    /// The key's presence after its next change: `true` when written, `false` when deleted,
    /// expired, or absent from a snapshot (the first, or a fresh one after a lag). Never
    /// resolves once the watch is gone. Cancel-safe: a call cancelled at any point loses no
    /// change.
    pub(crate) async fn next(&mut self) -> bool {
        if !self.gone {
            match self.follower.next().await {
                Ok(entry) => return entry.is_some(),
                Err(Error::Closed) => {}
                Err(err) => tracing::debug!(key = %self.key, %err, "cannot watch the lock key"),
            }
            self.gone = true;
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use swarmstate_core::{MemoryStore, Pattern, PutOptions, WatchStart, WatchStream};

    use super::*;

    /// A store whose watches take a while to open, so that a caller can be cancelled while
    /// one is opening.
    #[derive(Debug)]
    struct SlowWatches(MemoryStore);

    #[async_trait::async_trait]
    impl StateStore for SlowWatches {
        async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.0.watch(pattern, start).await
        }
        swarmstate_core::forward_state_store!(|s| &s.0;
        capabilities, get, put, delete, keys, txn, close);
    }

    /// A waiter selects on its lock watch and other wake-ups, so `LockWatch::next` is often
    /// cancelled. Cancelled while re-opening its watch after a lag, it must not fall back to
    /// the ended stream: the release that follows would go unseen and the waiter would sleep
    /// until its deadline.
    #[tokio::test(start_paused = true)]
    async fn lock_watch_cancelled_while_reopening_still_sees_the_release() {
        let store: Arc<dyn StateStore> =
            Arc::new(SlowWatches(MemoryStore::builder().watch_buffer(1).build()));
        let lock = Key::new("locks.reopen").unwrap();
        let mut revision = store
            .put(&lock, Bytes::from_static(b"a"), PutOptions::create())
            .await
            .unwrap();
        let mut watch = LockWatch::try_open(&store, &lock).await.unwrap();
        assert!(watch.next().await);
        // Overflow the one-event buffer: the watch lags.
        for _ in 0..4 {
            revision = store
                .put(
                    &lock,
                    Bytes::from_static(b"a"),
                    PutOptions::update(revision),
                )
                .await
                .unwrap();
        }
        // Read until a call blocks: the lag was met and the reopen is under way. Cancel it
        // there, as a waiter's select does when another wake-up comes first.
        let mut reads = 0;
        while tokio::time::timeout(Duration::from_millis(10), watch.next())
            .await
            .is_ok()
        {
            reads += 1;
            assert!(reads < 10, "the watch never lagged");
        }
        assert!(watch.follower.is_opening());
        store.delete(&lock, Some(revision)).await.unwrap();
        let released = tokio::time::timeout(Duration::from_secs(5), async {
            while watch.next().await {}
        })
        .await;
        assert!(released.is_ok(), "the release was never seen");
    }
}
