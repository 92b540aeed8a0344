//! The contract on the engine: validation, then a decision on the volatile path (under one
//! lock) or the durable one (queued to the writer); reads and watches from memory.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use tokio::sync::oneshot;

use super::{Engine, Message, Persistence};
use crate::feed::watch_feed;
use crate::types::{validate_txn, validate_value};
use crate::{
    Capabilities, Entry, Key, KeyStream, Pattern, PutOptions, Result, Revision, StateStore, TxnOp,
    TxnResult, WatchEvent, WatchStart, WatchStream,
};

#[async_trait]
impl<P: Persistence> StateStore for Engine<P> {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: self.shared.backend,
            ttl_granularity: Duration::from_millis(1),
            max_value_size: self.shared.config.max_value_size,
            watch_buffer: self.shared.config.watch_buffer,
            durable: self.shared.durable,
            replays_overwritten: true,
        }
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let read = Cell::new(None);
        let now = self.shared.clock.lazy(&read);
        Ok(self.read()?.state.get(key, now))
    }

    // put, delete and txn are written as `#[async_trait]` would expand them, with one future
    // per path: a volatile engine's future then holds only the call's arguments (an async fn
    // with both paths keeps room for the durable one, allocated and moved on every call).
    fn put<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 Key,
        value: Bytes,
        options: PutOptions,
    ) -> BoxFuture<'async_trait, Result<Revision>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if P::VOLATILE {
            Box::pin(async move {
                options.validate()?;
                validate_value(key, &value, self.shared.config.max_value_size)?;
                self.commit_now(|state, batch, now| state.put(batch, key, value, &options, now))?
            })
        } else {
            Box::pin(async move {
                options.validate()?;
                validate_value(key, &value, self.shared.config.max_value_size)?;
                let bytes = key.as_str().len() + value.len();
                let key = key.clone();
                self.commit_queued(bytes, move |state, batch, now| {
                    state.put(batch, &key, value, &options, now)
                })
                .await
            })
        }
    }

    fn delete<'life0, 'life1, 'async_trait>(
        &'life0 self,
        key: &'life1 Key,
        expected: Option<Revision>,
    ) -> BoxFuture<'async_trait, Result<Option<Revision>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if P::VOLATILE {
            Box::pin(async move {
                self.commit_now(|state, batch, now| state.delete(batch, key, expected, now))?
            })
        } else {
            Box::pin(async move {
                let bytes = key.as_str().len();
                let key = key.clone();
                self.commit_queued(bytes, move |state, batch, now| {
                    state.delete(batch, &key, expected, now)
                })
                .await
            })
        }
    }

    async fn keys(&self, pattern: &Pattern) -> Result<KeyStream> {
        let read = Cell::new(None);
        let now = self.shared.clock.lazy(&read);
        let keys = self.read()?.state.keys(pattern, now);
        Ok(stream::iter(keys.into_iter().map(Ok)).boxed())
    }

    async fn watch(&self, pattern: &Pattern, start: WatchStart) -> Result<WatchStream> {
        let (feed, live) = watch_feed(self.shared.config.watch_buffer);
        let mut inner = self.write()?;
        let now = self.shared.clock.now();
        // Taken under the same lock that registers the watcher, so no change falls between
        // the replayed part and the live part.
        let backlog = match start {
            WatchStart::Now => Vec::new(),
            WatchStart::FromRevision(from) => inner.state.replay(pattern, from, now)?,
            WatchStart::Snapshot => {
                let mut backlog: Vec<WatchEvent> = inner
                    .state
                    .snapshot(pattern, now)
                    .into_iter()
                    .map(WatchEvent::Put)
                    .collect();
                backlog.push(WatchEvent::CaughtUp {
                    revision: inner.state.last_revision(),
                });
                backlog
            }
        };
        let from = match start {
            WatchStart::FromRevision(from) => Some(from),
            WatchStart::Now | WatchStart::Snapshot => None,
        };
        inner.hub.register(pattern.clone(), feed, from);
        drop(inner);
        Ok(stream::iter(backlog).chain(live).boxed())
    }

    fn txn<'life0, 'async_trait>(
        &'life0 self,
        ops: Vec<TxnOp>,
    ) -> BoxFuture<'async_trait, Result<Vec<TxnResult>>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        if P::VOLATILE {
            Box::pin(async move {
                validate_txn(&ops, self.shared.config.max_value_size)?;
                self.commit_now(|state, batch, now| state.txn(batch, &ops, now))?
            })
        } else {
            Box::pin(async move {
                validate_txn(&ops, self.shared.config.max_value_size)?;
                let bytes = ops.iter().map(TxnOp::size).sum();
                self.commit_queued(bytes, move |state, batch, now| state.txn(batch, &ops, now))
                    .await
            })
        }
    }

    async fn close(&self) -> Result<()> {
        {
            let mut inner = self.shared.inner.write().unwrap_or_else(|e| e.into_inner());
            self.shared.closed.store(true, Ordering::Release);
            // Dropping the senders ends every stream once its buffered events are read.
            inner.hub.clear();
        }
        self.shared.expiry_changed.notify_one();
        // Writes queued before the close are committed and answered; then the writer releases
        // the persistence. It is gone already if the engine was poisoned or closed before.
        if let Some(queue) = &self.shared.queue {
            let (done, finished) = oneshot::channel();
            if queue.send(Message::Close(done)).await.is_ok() {
                let _ = finished.await;
            }
        }
        Ok(())
    }
}
