//! Watches over Server-Sent Events, resumed by revision when the connection drops.

use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use tokio::time::{Instant, sleep, timeout};

use swarmstate_core::backend::{FeedEnded, WatchFeed, watch_feed};
use swarmstate_core::{Error, Pattern, Result, Revision, WatchEvent, WatchStart, WatchStream};

use crate::client::{Effect, Inner, failure};
use crate::wire::{ReadEvent, read_event};

/// The header in which a watch response names the server process it came from.
pub const INSTANCE: &str = "swarmstate-instance";

/// Where a dropped watch can resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Nowhere exact: inside a snapshot that has not caught up, or before the first event.
    Nowhere,
    /// Every change after this revision (`None`: from the first revision) is still to come.
    After(Option<Revision>),
}

impl Resume {
    fn start(self) -> Option<WatchStart> {
        match self {
            Resume::Nowhere => None,
            Resume::After(revision) => Some(WatchStart::FromRevision(
                revision.map_or(Revision::FIRST, Revision::next),
            )),
        }
    }
}

/// Opens a watch: the first connection is made here, so that a compacted start or bad input
/// is this call's error; the stream then runs in a task that reconnects as needed.
pub(crate) async fn run_watch(
    inner: Arc<Inner>,
    pattern: Pattern,
    start: WatchStart,
) -> Result<WatchStream> {
    let response = connect(&inner, &pattern, start).await?;
    let buffer = inner.capabilities.watch_buffer;
    let (feed, stream) = watch_feed(buffer);
    let resume = match start {
        // A watch from now learns where it follows from with the `ready` event.
        WatchStart::Snapshot | WatchStart::Now => Resume::Nowhere,
        WatchStart::FromRevision(from) => Resume::After(Revision::new(from.get() - 1)),
    };
    let task = Watch {
        inner,
        pattern,
        feed,
        resume,
        in_snapshot: start == WatchStart::Snapshot,
    };
    tokio::spawn(task.run(response));
    Ok(stream)
}

struct Watch {
    inner: Arc<Inner>,
    pattern: Pattern,
    feed: WatchFeed,
    resume: Resume,
    // Before a snapshot's `CaughtUp`: its events are no resume points and must not lag.
    in_snapshot: bool,
}

/// Why one connection's stream stopped.
enum Stop {
    /// The watch is over (lagged, the watcher left, the client closed).
    Done,
    /// The connection dropped or the server went away: resume.
    Dropped,
}

impl Watch {
    async fn run(mut self, first: reqwest::Response) {
        let instance = instance_of(&first);
        let mut response = first;
        loop {
            match self.follow(response).await {
                Stop::Done => return,
                Stop::Dropped => {}
            }
            let Some(start) = self.resume.start() else {
                // A snapshot cut short cannot be completed: a new one would miss deletes made
                // in between. Lag to the beginning; the watcher re-snapshots.
                self.feed.lag(Revision::FIRST);
                return;
            };
            match self.reconnect(start).await {
                Some(next) => {
                    if instance_of(&next) != instance && !self.inner.capabilities.durable {
                        // A volatile store restarted: what we watched is gone. End plainly,
                        // as a closed store's watch does.
                        return;
                    }
                    response = next;
                }
                None => return,
            }
        }
    }

    /// Reconnects from `start`, retrying with backoff for the reconnect window. `None` when
    /// the watch ended meanwhile (lagged on a compacted start, given up, the watcher left).
    async fn reconnect(&mut self, start: WatchStart) -> Option<reqwest::Response> {
        let deadline = Instant::now() + self.inner.reconnect_for;
        let mut backoff = Duration::from_millis(50);
        let mut close = self.inner.close_signal.subscribe();
        loop {
            let attempt = tokio::select! {
                attempt = connect(&self.inner, &self.pattern, start) => attempt,
                () = closed(&mut close) => return None,
                _ = self.feed.closed() => return None,
            };
            match attempt {
                Ok(response) => return Some(response),
                Err(Error::Unavailable { .. } | Error::Closed) if Instant::now() < deadline => {}
                Err(_) => {
                    // Compacted, given up, or an answer that will not change: the watcher
                    // resumes (or re-snapshots) itself.
                    if let WatchStart::FromRevision(from) = start {
                        self.feed.lag(from);
                    }
                    return None;
                }
            }
            tokio::select! {
                _ = sleep(backoff) => {}
                () = closed(&mut close) => return None,
                _ = self.feed.closed() => return None,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Hands one connection's events to the watcher until it stops.
    async fn follow(&mut self, response: reqwest::Response) -> Stop {
        let idle =
            Duration::from_millis(self.inner.status.watch_progress_ms) * 3 + Duration::from_secs(2);
        let mut events = response.bytes_stream().eventsource();
        let mut close = self.inner.close_signal.subscribe();
        loop {
            let next = tokio::select! {
                next = timeout(idle, events.next()) => next,
                () = closed(&mut close) => return Stop::Done,
                _ = self.feed.closed() => return Stop::Done,
            };
            let event = match next {
                Ok(Some(Ok(event))) => event,
                // A broken stream, its end without a shutdown event, or a server that went
                // silent for longer than its progress interval allows.
                Ok(Some(Err(_)) | None) | Err(_) => return Stop::Dropped,
            };
            let read = match read_event(&event.event, &event.data) {
                Ok(read) => read,
                Err(_) => {
                    // A server that sends what it should not will send it again on a
                    // reconnect: end the watch where it can resume, rather than loop.
                    self.feed.lag(match self.resume {
                        Resume::After(Some(revision)) => revision.next(),
                        _ => Revision::FIRST,
                    });
                    return Stop::Done;
                }
            };
            match read {
                // The first event of a watch from now or from a revision.
                ReadEvent::Ready(revision) => self.resume = Resume::After(revision),
                ReadEvent::Progress | ReadEvent::Unknown => {}
                ReadEvent::Shutdown => return Stop::Dropped,
                ReadEvent::Event(watch_event) => {
                    if let Some(stop) = self.deliver(watch_event).await {
                        return stop;
                    }
                }
            }
        }
    }

    /// Hands `event` to the watcher; `Some` when the watch is over.
    async fn deliver(&mut self, event: WatchEvent) -> Option<Stop> {
        let lagged = matches!(event, WatchEvent::Lagged { .. });
        let next = match &event {
            WatchEvent::CaughtUp { revision } => Some(Resume::After(*revision)),
            _ if self.in_snapshot || lagged => None,
            other => Some(Resume::After(other.revision())),
        };
        let caught_up = matches!(event, WatchEvent::CaughtUp { .. });
        let sent = if self.in_snapshot && !lagged {
            // A snapshot has no revision to resume from halfway: wait for the watcher.
            self.feed.send_waiting(event).await
        } else {
            let fallback = match self.resume {
                Resume::After(Some(revision)) => revision.next(),
                _ => Revision::FIRST,
            };
            self.feed.send(event, fallback)
        };
        match sent {
            Ok(()) if lagged => Some(Stop::Done),
            Ok(()) => {
                if let Some(next) = next {
                    self.resume = next;
                }
                if caught_up {
                    self.in_snapshot = false;
                }
                None
            }
            Err(FeedEnded::Lagged | FeedEnded::Gone) => Some(Stop::Done),
        }
    }
}

/// Resolves once the client is closed.
async fn closed(signal: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = signal.wait_for(|closed| *closed).await;
}

fn instance_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(INSTANCE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// One watch request; the response once the server has accepted it.
async fn connect(inner: &Inner, pattern: &Pattern, start: WatchStart) -> Result<reqwest::Response> {
    inner.ensure_open()?;
    let start_text = match start {
        WatchStart::Now => "now".to_owned(),
        WatchStart::Snapshot => "snapshot".to_owned(),
        WatchStart::FromRevision(revision) => revision.to_string(),
    };
    let request = inner
        .client
        .get(inner.url("/v1/watch"))
        .query(&[("pattern", pattern.to_string()), ("start", start_text)])
        // Only the connection and the answer's head are bounded; the stream is not.
        .header(reqwest::header::ACCEPT, "text/event-stream");
    let operation = format!("watch {pattern}");
    let response = timeout(inner.request_timeout, request.send())
        .await
        .map_err(|_| Error::Unavailable {
            message: format!(
                "{operation}: no answer from {} in {:?}",
                inner.base, inner.request_timeout
            ),
        })?
        .map_err(|err| Error::Unavailable {
            message: format!("{operation}: {err} ({})", inner.base),
        })?;
    if response.status().is_success() {
        return Ok(response);
    }
    Err(failure(&operation, Effect::Reads, response).await)
}
