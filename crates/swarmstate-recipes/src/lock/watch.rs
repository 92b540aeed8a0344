//! Whether a lock key is present, followed across lags: what wakes a waiter and tells a
//! keep-alive its lock is gone.

use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;

use swarmstate_core::{Key, Pattern, Result, StateStore, WatchEvent, WatchStart, WatchStream};

/// Whether a lock key is present, followed through a watch that re-snapshots after a lag.
pub(crate) struct LockWatch {
    store: Arc<dyn StateStore>,
    key: Key,
    stream: LockStream,
    // Whether the current snapshot has shown the key yet.
    seen_in_snapshot: bool,
}

enum LockStream {
    Open(WatchStream),
    // A fresh snapshot watch being opened after a lag. It lives here, not in `next`'s future,
    // so that a `next` cancelled while waiting for it (a waiter selects on several wake-ups)
    // resumes the same reopening: dropping it would leave the ended stream behind, and with it
    // every later change of the lock unseen.
    Reopening(BoxFuture<'static, Result<WatchStream>>),
    // The store ended the watch for good (it closed) or refused to open it.
    Gone,
}

impl LockWatch {
    /// A snapshot watch of exactly `key`, opened by the first call to `next`.
    pub(crate) fn open(store: &Arc<dyn StateStore>, key: &Key) -> LockWatch {
        let mut watch = LockWatch {
            store: store.clone(),
            key: key.clone(),
            stream: LockStream::Gone,
            seen_in_snapshot: false,
        };
        watch.reopen();
        watch
    }

    /// Opens a snapshot watch of exactly `key`, failing if the store refuses it.
    pub(crate) async fn try_open(store: &Arc<dyn StateStore>, key: &Key) -> Result<LockWatch> {
        let stream = store
            .watch(&Pattern::exact(key), WatchStart::Snapshot)
            .await?;
        Ok(LockWatch {
            store: store.clone(),
            key: key.clone(),
            stream: LockStream::Open(stream),
            seen_in_snapshot: false,
        })
    }

    /// Starts opening a fresh snapshot watch; `next` completes it.
    fn reopen(&mut self) {
        let (store, key) = (self.store.clone(), self.key.clone());
        self.stream = LockStream::Reopening(Box::pin(async move {
            store
                .watch(&Pattern::exact(&key), WatchStart::Snapshot)
                .await
        }));
    }

    /// The key's presence after its next change: `Some(true)` when written, `Some(false)` when
    /// deleted, expired, or absent from a snapshot. Never resolves once the watch is gone.
    /// Cancel-safe: a call cancelled at any point loses no change.
    pub(crate) async fn next(&mut self) -> Option<bool> {
        loop {
            let stream = match &mut self.stream {
                LockStream::Open(stream) => stream,
                LockStream::Reopening(opening) => {
                    let opened = opening.await;
                    self.seen_in_snapshot = false;
                    self.stream = match opened {
                        Ok(stream) => LockStream::Open(stream),
                        Err(err) => {
                            tracing::debug!(key = %self.key, %err, "cannot watch the lock key");
                            LockStream::Gone
                        }
                    };
                    continue;
                }
                LockStream::Gone => return std::future::pending().await,
            };
            match stream.next().await {
                Some(WatchEvent::Put(_)) => {
                    self.seen_in_snapshot = true;
                    return Some(true);
                }
                Some(WatchEvent::Delete { .. } | WatchEvent::Expire { .. }) => return Some(false),
                Some(WatchEvent::CaughtUp { .. }) => {
                    if !self.seen_in_snapshot {
                        return Some(false);
                    }
                }
                Some(WatchEvent::Lagged { .. }) => self.reopen(),
                None => self.stream = LockStream::Gone,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use swarmstate_core::{Entry, MemoryStore, PutOptions, Revision, TxnOp, TxnResult};

    use super::*;

    /// A store whose watches take a while to open, so that a caller can be cancelled while
    /// one is opening.
    #[derive(Debug)]
    struct SlowWatches(MemoryStore);

    #[async_trait::async_trait]
    impl StateStore for SlowWatches {
        fn capabilities(&self) -> swarmstate_core::Capabilities {
            self.0.capabilities()
        }
        async fn get(&self, key: &Key) -> Result<Option<Entry>> {
            self.0.get(key).await
        }
        async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
            self.0.put(key, value, options).await
        }
        async fn delete(&self, key: &Key, expected: Option<Revision>) -> Result<Option<Revision>> {
            self.0.delete(key, expected).await
        }
        async fn keys(&self, pattern: &Pattern) -> Result<swarmstate_core::KeyStream> {
            self.0.keys(pattern).await
        }
        async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.0.watch(pattern, start).await
        }
        async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
            self.0.txn(ops).await
        }
        async fn close(&self) -> Result<()> {
            self.0.close().await
        }
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
        assert_eq!(watch.next().await, Some(true));
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
        assert!(matches!(watch.stream, LockStream::Reopening(_)));
        store.delete(&lock, Some(revision)).await.unwrap();
        let released = tokio::time::timeout(Duration::from_secs(5), async {
            while watch.next().await != Some(false) {}
        })
        .await;
        assert!(released.is_ok(), "the release was never seen");
    }
}
