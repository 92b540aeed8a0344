//! `GET /v1/watch`: a watch as Server-Sent Events.
//!
//! Every change event carries `id: <revision>` (except inside a snapshot, which cannot be
//! resumed halfway), so a reconnect with `Last-Event-ID` resumes right after it. A watch from
//! now starts at the store's revision when the request arrived, announced by a `ready` event
//! whose `id` is that revision, so it too resumes exactly.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use swarmstate_core::{Error, Revision, WatchEvent, WatchStart, WatchStream};
use swarmstate_http::INSTANCE;
use swarmstate_http::wire::{EventData, WireEvent, event, json, parse_etag};

use crate::api::{AppState, current_revision};
use crate::input;
use crate::problem::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchParams {
    pattern: String,
    start: Option<String>,
}

fn parse_start(text: Option<&str>) -> Result<WatchStart, ApiError> {
    match text {
        None | Some("now") => Ok(WatchStart::Now),
        Some("snapshot") => Ok(WatchStart::Snapshot),
        Some(text) => match text.parse::<u64>().ok().and_then(Revision::new) {
            Some(revision) => Ok(WatchStart::FromRevision(revision)),
            None => Err(ApiError::bad(format!(
                "start {text:?} is not now, snapshot or a revision (a number from 1)"
            ))),
        },
    }
}

pub(crate) async fn watch(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let params: WatchParams = input::query(raw.as_deref())?;
    let pattern = input::pattern(&params.pattern)?;
    let mut start = parse_start(params.start.as_deref())?;
    if let Some(last) = input::header_text(&headers, "last-event-id")? {
        // A reconnect: everything after the last event the client saw.
        let last =
            parse_etag(last).map_err(|err| ApiError::bad(format!("Last-Event-ID: {err}")))?;
        start = WatchStart::FromRevision(last.next());
    }
    let (events, ready) = match start {
        WatchStart::Now => {
            // Follow from the revision now, so that the stream has a resume point from its
            // first byte; a backend that cannot replay that far (a NATS key overwritten in
            // between) gets a plain watch from now, without one.
            let at = current_revision(&*state.store).await?;
            let from = at.map_or(Revision::FIRST, Revision::next);
            match state
                .store
                .watch(&pattern, WatchStart::FromRevision(from))
                .await
            {
                Ok(events) => (events, Some(at)),
                Err(Error::Compacted { .. }) => {
                    (state.store.watch(&pattern, WatchStart::Now).await?, None)
                }
                Err(err) => return Err(err.into()),
            }
        }
        WatchStart::FromRevision(from) => (
            state.store.watch(&pattern, start).await?,
            Some(Revision::new(from.get() - 1)),
        ),
        WatchStart::Snapshot => (state.store.watch(&pattern, start).await?, None),
    };
    let instance = state.instance.clone();
    let stream = sse_events(events, ready, start == WatchStart::Snapshot, state);
    let mut response = Sse::new(stream).into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&instance) {
        headers.insert(INSTANCE, value);
    }
    Ok(response)
}

/// Resolves once `signal` turns true (or its sender is gone).
pub(crate) async fn stopped(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stopping| *stopping).await;
}

fn sse(wire: WireEvent) -> Event {
    let event = Event::default().event(wire.name).data(wire.data);
    match wire.id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
}

fn marker(name: &'static str, data: EventData) -> Event {
    Event::default().event(name).data(json(&data))
}

struct Streaming {
    events: WatchStream,
    in_snapshot: bool,
    progress_every: Duration,
    next_progress: Instant,
    shutdown: watch::Receiver<bool>,
    state: AppState,
    done: bool,
}

/// The SSE stream of one watch: a `ready` event first (when the start has a resume point),
/// then each watch event, `progress` while nothing changes, and `shutdown` when the server
/// stops. It ends after `lagged`, after `shutdown`, and when the store's stream ends.
fn sse_events(
    events: WatchStream,
    ready: Option<Option<Revision>>,
    in_snapshot: bool,
    state: AppState,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = ready.map(|at| {
        let event = marker(
            event::READY,
            EventData {
                revision: at.map(Revision::get),
                ..EventData::default()
            },
        );
        match at {
            Some(revision) => event.id(revision.to_string()),
            None => event,
        }
    });
    let streaming = Streaming {
        events,
        in_snapshot,
        progress_every: state.progress_interval,
        next_progress: Instant::now() + state.progress_interval,
        shutdown: state.shutdown.clone(),
        state,
        done: false,
    };
    let rest = stream::unfold(streaming, |mut streaming| async move {
        if streaming.done {
            return None;
        }
        let event = streaming.next().await;
        Some((Ok(event), streaming))
    });
    stream::iter(first.map(Ok)).chain(rest)
}

impl Streaming {
    async fn next(&mut self) -> Event {
        loop {
            tokio::select! {
                biased;
                () = stopped(&mut self.shutdown) => {
                    self.done = true;
                    return marker(event::SHUTDOWN, EventData {
                        reason: Some("the server is shutting down; reconnect with Last-Event-ID to resume".into()),
                        ..EventData::default()
                    });
                }
                next = self.events.next() => {
                    self.next_progress = Instant::now() + self.progress_every;
                    let Some(watch_event) = next else {
                        self.done = true;
                        return marker(event::SHUTDOWN, EventData {
                            reason: Some("the store closed".into()),
                            ..EventData::default()
                        });
                    };
                    if matches!(watch_event, WatchEvent::Lagged { .. }) {
                        self.done = true;
                    }
                    let wire = WireEvent::from_event(&watch_event, self.in_snapshot);
                    if matches!(watch_event, WatchEvent::CaughtUp { .. }) {
                        self.in_snapshot = false;
                    }
                    return sse(wire);
                }
                _ = sleep_until(self.next_progress) => {
                    self.next_progress = Instant::now() + self.progress_every;
                    if let Ok(revision) = current_revision(&*self.state.store).await {
                        return marker(event::PROGRESS, EventData {
                            revision: revision.map(Revision::get),
                            ..EventData::default()
                        });
                    }
                }
            }
        }
    }
}
