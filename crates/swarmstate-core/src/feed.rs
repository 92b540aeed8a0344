//! The watcher's side of a watch, shared by every backend: a bounded channel that ends with
//! [`WatchEvent::Lagged`] when the watcher falls behind, so no backend can skip silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::stream::{self, StreamExt};
use tokio::sync::mpsc;

use crate::{Revision, WatchEvent, WatchStream};

/// The backend's end of a watch: hands events to one watcher through a bounded buffer.
///
/// When the buffer is full the feed records where the watcher must resume and stops; the
/// watcher reads what was buffered, then `Lagged { resume_from }`, then the stream ends. A
/// feed dropped without a lag ends the stream plainly (the store closed).
#[derive(Debug)]
pub struct WatchFeed {
    sender: mpsc::Sender<WatchEvent>,
    // The revision the watcher must resume from once the feed stopped early; 0 while not.
    lagged_at: Arc<AtomicU64>,
}

/// Why a [`WatchFeed`] took no more events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEnded {
    /// The buffer was full: the watcher will get `Lagged` and must resume.
    Lagged,
    /// The watcher dropped its stream.
    Gone,
}

/// A feed and the stream its watcher reads, with room for `buffer` events (at least 1).
pub fn watch_feed(buffer: usize) -> (WatchFeed, WatchStream) {
    let (sender, receiver) = mpsc::channel(buffer.max(1));
    let lagged_at = Arc::new(AtomicU64::new(0));
    let stream = live_events(receiver, lagged_at.clone()).boxed();
    (WatchFeed { sender, lagged_at }, stream)
}

impl WatchFeed {
    /// Hands `event` to the watcher. On a full buffer, records `event`'s revision (or
    /// `fallback` for a marker without one) as the place to resume, and the feed is over.
    pub fn send(&self, event: WatchEvent, fallback: Revision) -> Result<(), FeedEnded> {
        match self.sender.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(event)) => {
                self.lag(event.revision().unwrap_or(fallback));
                Err(FeedEnded::Lagged)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(FeedEnded::Gone),
        }
    }

    /// Hands `event` to the watcher, waiting for room: for a snapshot, which has no revision
    /// to resume from halfway and so must not lag (a backend waits for the watcher instead,
    /// as the engine's own snapshots do by being handed over whole).
    pub async fn send_waiting(&self, event: WatchEvent) -> Result<(), FeedEnded> {
        self.sender.send(event).await.map_err(|_| FeedEnded::Gone)
    }

    /// Ends the watch with `Lagged { resume_from }` once the buffered events are read (for a
    /// feed that cannot go on, e.g. its source failed for good). Drop the feed afterwards.
    pub fn lag(&self, resume_from: Revision) {
        self.lagged_at.store(resume_from.get(), Ordering::Release);
    }

    /// Whether the watcher has dropped its stream.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Resolves when the watcher has dropped its stream.
    pub async fn closed(&self) {
        self.sender.closed().await;
    }
}

fn live_events(
    receiver: mpsc::Receiver<WatchEvent>,
    lagged_at: Arc<AtomicU64>,
) -> impl futures::Stream<Item = WatchEvent> {
    stream::unfold(Some(receiver), move |receiver| {
        let lagged_at = lagged_at.clone();
        async move {
            let mut receiver = receiver?;
            match receiver.recv().await {
                Some(event) => Some((event, Some(receiver))),
                None => Revision::new(lagged_at.load(Ordering::Acquire))
                    .map(|resume_from| (WatchEvent::Lagged { resume_from }, None)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Key;

    fn delete(n: u64) -> WatchEvent {
        WatchEvent::Delete {
            key: Key::new("a").unwrap(),
            revision: Revision::new(n).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_full_feed_ends_with_lagged_after_the_buffered_events() {
        let (feed, stream) = watch_feed(2);
        feed.send(delete(1), Revision::FIRST).unwrap();
        feed.send(delete(2), Revision::FIRST).unwrap();
        assert_eq!(
            feed.send(delete(3), Revision::FIRST),
            Err(FeedEnded::Lagged)
        );
        drop(feed);
        let events: Vec<_> = stream.collect().await;
        let resume_from = Revision::new(3).unwrap();
        assert_eq!(
            events,
            vec![delete(1), delete(2), WatchEvent::Lagged { resume_from }]
        );
    }

    #[tokio::test]
    async fn a_waiting_send_waits_for_room_instead_of_lagging() {
        let (feed, mut stream) = watch_feed(1);
        feed.send(delete(1), Revision::FIRST).unwrap();
        let second = tokio::spawn(async move {
            feed.send_waiting(delete(2)).await.unwrap();
            feed
        });
        assert_eq!(stream.next().await, Some(delete(1)));
        drop(second.await.unwrap());
        assert_eq!(stream.collect::<Vec<_>>().await, vec![delete(2)]);
    }

    #[tokio::test]
    async fn a_dropped_feed_ends_the_stream_without_lagged() {
        let (feed, stream) = watch_feed(2);
        feed.send(delete(1), Revision::FIRST).unwrap();
        drop(feed);
        assert_eq!(stream.collect::<Vec<_>>().await, vec![delete(1)]);
    }
}
