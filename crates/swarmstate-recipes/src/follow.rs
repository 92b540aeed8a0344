//! Following a pattern or one key through watches, across lags and re-opens: the one loop
//! every recipe that waits on the store goes through (the lock's waiters and keep-alive, the
//! election's observers, the cache's fill waiters, the queue's `claim_wait` and the config
//! view).
//!
//! A watch ends with [`WatchEvent::Lagged`] when its watcher fell behind, and plainly when the
//! store closed (or the stream could not go on). A [`Follower`] answers either by opening a new
//! watch, and tells its consumer what that means instead of passing the `Lagged` on: after a
//! lag it replays the gap from the revision the store names ([`OnLag::Resume`], for a view that
//! must see every change) or starts afresh ([`OnLag::Restart`], for a consumer that only needs
//! the current state); after a plain end it starts afresh, and a store that closed refuses
//! that with [`Error::Closed`], which ends the follower. A gap is always answered by
//! re-reading, never by waiting on or guessing across it.
//!
//! [`KeyFollower`] reduces a follower of one key to what its users want: the key's entry now,
//! and after each change.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;

use swarmstate_core::{
    Entry, Error, Key, Pattern, Result, Revision, StateStore, WatchEvent, WatchStart, WatchStream,
};

/// The first wait after a failed attempt to open a watch again, when failures that may pass are
/// retried ([`Follower::retry_transient`]); doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a follower's watches start: the first one, and each one after a gap that is not
/// replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// The current entries, then [`WatchEvent::CaughtUp`], then live changes.
    Snapshot,
    /// Live changes only.
    Now,
}

/// What a follower does after its watch lagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnLag {
    /// Replays the gap: resumes from the revision the store names, so no change is lost. It
    /// starts afresh only when the store no longer keeps that revision ([`Error::Compacted`]),
    /// or when the lag came in the middle of a snapshot (whose entries are no run of revisions
    /// to resume).
    Resume,
    /// Starts afresh: for a consumer that needs the current state, not how it came about. The
    /// changes in the gap are never handed out.
    Restart,
}

/// What [`Follower::next`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Followed {
    /// An event of the watch: a change, an entry of a snapshot, or the `CaughtUp` that ends
    /// one. Never [`WatchEvent::Lagged`].
    Event(WatchEvent),
    /// The watch lagged and the gap is being replayed: the events go on as if there had been
    /// no lag.
    Resumed,
    /// A new watch is open after a gap that is not replayed. What the consumer learned from
    /// earlier events may be stale: a [`Start::Snapshot`] follower's next events are a fresh
    /// snapshot (entries, then `CaughtUp`); a [`Start::Now`] follower's are changes from now
    /// on, so its consumer reads again what it needs.
    Restarted,
}

/// A pattern followed through watches; see the module doc.
pub(crate) struct Follower {
    store: Arc<dyn StateStore>,
    pattern: Pattern,
    start: Start,
    on_lag: OnLag,
    // Whether opening a watch again retries failures that may pass, instead of ending.
    retry_transient: bool,
    state: State,
    // Whether the open watch is still giving its snapshot: a lag there cannot be resumed.
    in_snapshot: bool,
}

enum State {
    Open(WatchStream),
    // A watch being opened. It lives here, not in `next`'s future, so that a `next` cancelled
    // while waiting for it (callers select on several wake-ups) resumes the same opening:
    // dropping it would leave the ended stream behind, and with it every later change unseen.
    Opening(BoxFuture<'static, Result<(WatchStream, Opened)>>),
    // Ended for good (the store closed, or refused a watch): every call fails with this.
    Ended(Error),
}

/// How the watch being opened came about.
enum Opened {
    First,
    Resumed,
    Restarted,
}

impl Follower {
    /// Opens the first watch of `pattern` now. Errors are those of [`StateStore::watch`].
    pub(crate) async fn open(
        store: &Arc<dyn StateStore>,
        pattern: Pattern,
        start: Start,
        on_lag: OnLag,
    ) -> Result<Follower> {
        let stream = watch(&**store, &pattern, start).await?;
        Ok(Follower {
            store: store.clone(),
            pattern,
            start,
            on_lag,
            retry_transient: false,
            state: State::Open(stream),
            in_snapshot: start == Start::Snapshot,
        })
    }

    /// A follower whose first watch opens in the first call to [`next`](Follower::next),
    /// which reports the error if it cannot.
    pub(crate) fn open_later(
        store: &Arc<dyn StateStore>,
        pattern: Pattern,
        start: Start,
        on_lag: OnLag,
    ) -> Follower {
        let (opening_store, opening_pattern) = (store.clone(), pattern.clone());
        let opening = Box::pin(async move {
            let stream = watch(&*opening_store, &opening_pattern, start).await?;
            Ok((stream, Opened::First))
        });
        Follower {
            store: store.clone(),
            pattern,
            start,
            on_lag,
            retry_transient: false,
            state: State::Opening(opening),
            in_snapshot: start == Start::Snapshot,
        }
    }

    /// From now on, a failure to open a watch again that may pass ([`Error::Unavailable`],
    /// [`Error::Ambiguous`], [`Error::Backend`]) is retried with backoff (50 ms, doubling up to
    /// 5 s) instead of ending the follower.
    pub(crate) fn retry_transient(&mut self) {
        self.retry_transient = true;
    }

    /// The next event, or what a gap means (see [`Followed`]). Cancel-safe: a call cancelled at
    /// any point loses no event, and a watch being opened goes on opening in the next call.
    ///
    /// Errors end the follower: [`Error::Closed`] once the store closed, or the error opening a
    /// watch again failed with; every later call fails the same way.
    pub(crate) async fn next(&mut self) -> Result<Followed> {
        loop {
            let stream = match &mut self.state {
                State::Open(stream) => stream,
                State::Opening(opening) => {
                    let (stream, opened) = match opening.await {
                        Ok(opened) => opened,
                        Err(err) => {
                            tracing::debug!(pattern = %self.pattern, %err, "cannot watch again");
                            self.state = State::Ended(err.clone());
                            return Err(err);
                        }
                    };
                    self.state = State::Open(stream);
                    self.in_snapshot =
                        self.start == Start::Snapshot && !matches!(opened, Opened::Resumed);
                    match opened {
                        Opened::First => continue,
                        Opened::Resumed => return Ok(Followed::Resumed),
                        Opened::Restarted => return Ok(Followed::Restarted),
                    }
                }
                State::Ended(err) => return Err(err.clone()),
            };
            match stream.next().await {
                Some(WatchEvent::Lagged { resume_from }) => {
                    let resume = self.on_lag == OnLag::Resume && !self.in_snapshot;
                    self.reopen(resume.then_some(resume_from));
                }
                // A plain end means the store closed, as the next watch will tell (`Closed`);
                // if the stream ended for another reason, that watch goes on.
                None => self.reopen(None),
                Some(event) => {
                    if matches!(event, WatchEvent::CaughtUp { .. }) {
                        self.in_snapshot = false;
                    }
                    return Ok(Followed::Event(event));
                }
            }
        }
    }

    /// Starts opening the next watch: from `resume_from` if given (afresh if the store no
    /// longer keeps it), else afresh. `next` completes it.
    fn reopen(&mut self, resume_from: Option<Revision>) {
        tracing::debug!(pattern = %self.pattern, ?resume_from, "watch ended; watching again");
        let (store, pattern) = (self.store.clone(), self.pattern.clone());
        let (start, retry_transient) = (self.start, self.retry_transient);
        self.state = State::Opening(Box::pin(async move {
            let mut resume_from = resume_from;
            let mut backoff = FIRST_BACKOFF;
            loop {
                let opened = match resume_from {
                    Some(from) => store
                        .watch(&pattern, WatchStart::FromRevision(from))
                        .await
                        .map(|stream| (stream, Opened::Resumed)),
                    None => watch(&*store, &pattern, start)
                        .await
                        .map(|stream| (stream, Opened::Restarted)),
                };
                match opened {
                    Err(Error::Compacted { .. }) if resume_from.is_some() => resume_from = None,
                    Err(
                        err @ (Error::Unavailable { .. }
                        | Error::Ambiguous { .. }
                        | Error::Backend { .. }),
                    ) if retry_transient => {
                        tracing::warn!(%pattern, %err, ?backoff, "cannot watch again yet; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    other => return other,
                }
            }
        }));
    }

    /// Whether a watch is being opened, for tests that cancel `next` there.
    #[cfg(test)]
    pub(crate) fn is_opening(&self) -> bool {
        matches!(self.state, State::Opening(_))
    }
}

async fn watch(store: &dyn StateStore, pattern: &Pattern, start: Start) -> Result<WatchStream> {
    let start = match start {
        Start::Snapshot => WatchStart::Snapshot,
        Start::Now => WatchStart::Now,
    };
    store.watch(pattern, start).await
}

/// One key followed: its entry (`None` while absent) as it is now, then after each change.
/// After a gap it reads the key afresh and hands out its state then, which may equal the last
/// one handed out; changes within the gap are not handed out.
pub(crate) struct KeyFollower {
    events: Follower,
    // Whether the current snapshot has shown the key: if not, its `CaughtUp` says it is absent.
    shown: bool,
}

impl KeyFollower {
    /// Opens a snapshot watch of exactly `key` now. Errors are those of [`StateStore::watch`].
    pub(crate) async fn open(store: &Arc<dyn StateStore>, key: &Key) -> Result<KeyFollower> {
        let events =
            Follower::open(store, Pattern::exact(key), Start::Snapshot, OnLag::Restart).await?;
        Ok(KeyFollower {
            events,
            shown: false,
        })
    }

    /// A follower of `key` whose watch opens in the first call to
    /// [`next`](KeyFollower::next), which reports the error if it cannot.
    pub(crate) fn open_later(store: &Arc<dyn StateStore>, key: &Key) -> KeyFollower {
        KeyFollower {
            events: Follower::open_later(
                store,
                Pattern::exact(key),
                Start::Snapshot,
                OnLag::Restart,
            ),
            shown: false,
        }
    }

    /// The key's entry: at first as it is now, then after its next change (written, deleted or
    /// expired), or as it is after a gap. Cancel-safe. Errors as [`Follower::next`]'s.
    pub(crate) async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            match self.events.next().await? {
                Followed::Event(WatchEvent::Put(entry)) => {
                    self.shown = true;
                    return Ok(Some(entry));
                }
                Followed::Event(WatchEvent::Delete { .. } | WatchEvent::Expire { .. }) => {
                    return Ok(None);
                }
                Followed::Event(WatchEvent::CaughtUp { .. }) if !self.shown => {
                    self.shown = true;
                    return Ok(None);
                }
                Followed::Restarted => self.shown = false,
                Followed::Event(WatchEvent::CaughtUp { .. } | WatchEvent::Lagged { .. })
                | Followed::Resumed => {}
            }
        }
    }

    /// Whether the watch is being opened, for tests that cancel `next` there.
    #[cfg(test)]
    pub(crate) fn is_opening(&self) -> bool {
        self.events.is_opening()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::FutureExt;
    use swarmstate_core::{MemoryStore, StateStoreExt};

    use super::*;

    fn key(text: &str) -> Key {
        Key::new(text).unwrap()
    }

    fn store(buffer: usize, history: usize) -> Arc<dyn StateStore> {
        Arc::new(
            MemoryStore::builder()
                .watch_buffer(buffer)
                .history(history)
                .build(),
        )
    }

    /// Writes `n` values to `k` without yielding, so a watcher with a small buffer lags.
    async fn overflow(store: &Arc<dyn StateStore>, k: &Key, n: usize) {
        for i in 0..n {
            store.set(k, format!("v{i}")).await.unwrap();
        }
    }

    /// `first` and whatever else the follower has ready.
    async fn ready_after(follower: &mut Follower, first: Followed) -> Vec<Followed> {
        let mut items = vec![first];
        while let Some(item) = follower.next().now_or_never() {
            items.push(item.unwrap());
        }
        items
    }

    #[tokio::test]
    async fn a_resuming_follower_replays_every_change_of_the_gap() {
        let store = store(1, 100);
        let k = key("a.b");
        let mut follower = Follower::open(
            &store,
            Pattern::prefix(&key("a")),
            Start::Now,
            OnLag::Resume,
        )
        .await
        .unwrap();
        overflow(&store, &k, 5).await;
        let first = follower.next().await.unwrap();
        let items = ready_after(&mut follower, first).await;
        let puts = items
            .iter()
            .filter(|item| matches!(item, Followed::Event(WatchEvent::Put(_))))
            .count();
        assert_eq!(puts, 5, "{items:?}");
        assert!(items.contains(&Followed::Resumed), "{items:?}");
        assert!(!items.contains(&Followed::Restarted), "{items:?}");
    }

    #[tokio::test]
    async fn a_resuming_follower_whose_gap_is_compacted_restarts_from_a_snapshot() {
        let store = store(1, 1);
        let k = key("a.b");
        let mut follower = Follower::open(
            &store,
            Pattern::prefix(&key("a")),
            Start::Snapshot,
            OnLag::Resume,
        )
        .await
        .unwrap();
        assert!(matches!(
            follower.next().await.unwrap(),
            Followed::Event(WatchEvent::CaughtUp { .. })
        ));
        overflow(&store, &k, 5).await;
        let first = follower.next().await.unwrap();
        let items = ready_after(&mut follower, first).await;
        let restarted = items
            .iter()
            .position(|item| *item == Followed::Restarted)
            .unwrap_or_else(|| panic!("no restart: {items:?}"));
        // The fresh snapshot: the key's current value, then `CaughtUp`.
        match &items[restarted + 1..] {
            [
                Followed::Event(WatchEvent::Put(entry)),
                Followed::Event(WatchEvent::CaughtUp { .. }),
            ] => assert_eq!(&entry.value[..], b"v4"),
            rest => panic!("not a fresh snapshot: {rest:?}"),
        }
    }

    #[tokio::test]
    async fn a_restarting_follower_skips_the_gap() {
        let store = store(1, 100);
        let k = key("a.b");
        let mut follower = Follower::open(&store, Pattern::exact(&k), Start::Now, OnLag::Restart)
            .await
            .unwrap();
        overflow(&store, &k, 5).await;
        let first = follower.next().await.unwrap();
        let items = ready_after(&mut follower, first).await;
        assert_eq!(items.last(), Some(&Followed::Restarted), "{items:?}");
        assert!(items.len() < 5, "{items:?}");
    }

    #[tokio::test]
    async fn a_key_follower_hands_out_the_entry_now_after_each_change_and_after_a_gap() {
        let store = store(1, 100);
        let k = key("a.b");
        let mut follower = KeyFollower::open(&store, &k).await.unwrap();
        assert_eq!(follower.next().await.unwrap(), None);
        let revision = store.set(&k, "one").await.unwrap();
        let entry = follower.next().await.unwrap().unwrap();
        assert_eq!((&entry.value[..], entry.revision), (&b"one"[..], revision));
        store.delete(&k, None).await.unwrap();
        assert_eq!(follower.next().await.unwrap(), None);
        overflow(&store, &k, 5).await;
        let mut last = None;
        while let Some(entry) = follower.next().now_or_never() {
            last = entry.unwrap();
        }
        assert_eq!(last.map(|entry| entry.value), Some(Bytes::from("v4")));
    }

    #[tokio::test]
    async fn a_follower_ends_with_closed_when_the_store_closes() {
        let store = store(16, 100);
        let mut follower = KeyFollower::open(&store, &key("a")).await.unwrap();
        assert_eq!(follower.next().await.unwrap(), None);
        store.close().await.unwrap();
        for _ in 0..2 {
            let err = follower.next().await.unwrap_err();
            assert!(matches!(err, Error::Closed), "{err}");
        }
    }
}
