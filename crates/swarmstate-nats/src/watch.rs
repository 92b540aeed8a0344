//! Watches and key listings.
//!
//! Listings, snapshots and watches from now are served by the store's [`Hub`]: its one
//! consumer's view of the bucket and its in-process fan-out. A listing or a snapshot first
//! takes a read barrier (shared with every read waiting then) and is answered once the view has
//! applied it, so it shows every change acknowledged before the call (see `crate::hub`).
//!
//! A watch from a revision the hub has already handed out (a watcher resuming after `Lagged`,
//! or one replaying history) gets a consumer of its own from that revision, read by one task
//! into a bounded channel. That consumer reads the whole bucket too, for the reason the hub
//! does: every sequence must arrive or leave a hole. A watcher that lets the channel fill up,
//! or whose consumer fails for good, gets `Lagged` with the first revision it has not seen,
//! and its stream ends. The recreated consumer may deliver messages the watcher must not see
//! again: async-nats recreates one that has delivered nothing yet from the start of the stream
//! (not from where the watch began), so the task drops every message below the first revision
//! it has not given the watcher.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_nats::jetstream::consumer::push::OrderedErrorKind;
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};
use swarmstate_core::backend::{WatchFeed, watch_feed};
use swarmstate_core::{
    Entry, Error, Key, KeyStream, Pattern, Result, Revision, WatchEvent, WatchStart, WatchStream,
};

use crate::bucket::Bucket;
use crate::config::ReadConsistency;
use crate::error::NatsError;
use crate::hub::{self, Holes, Hub, Quiet, Source, TooMany, change};
use crate::wire::{self, Last};

/// The sequence the hub's view must reach before a listing or a snapshot is answered: a read
/// barrier's, unless the store was built with [`ReadConsistency::Leader`] (whose reads write
/// nothing; then the view as it is).
async fn read_point(bucket: &Arc<Bucket>, hub: &Hub, operation: &str) -> Result<u64> {
    match bucket.read_consistency {
        ReadConsistency::Linearizable => Ok(hub.barrier(bucket, operation).await?),
        ReadConsistency::Leader => Ok(0),
    }
}

/// The keys `pattern` selects, as of a moment within the call: no older than any write or
/// delete acknowledged before it began, unless the store was built with
/// [`ReadConsistency::Leader`] (then as the hub's view has them).
///
/// Cost: a share of one read barrier, then a walk of the selected part of the view.
pub(crate) async fn keys(bucket: &Arc<Bucket>, hub: &Hub, pattern: &Pattern) -> Result<KeyStream> {
    let operation = format!("list {pattern}");
    let at = read_point(bucket, hub, &operation).await?;
    let keys: Vec<Key> = hub
        .read(at, bucket.request_timeout, &operation, |state| {
            state.entries(pattern).map(|entry| entry.key).collect()
        })
        .await?;
    Ok(stream::iter(keys.into_iter().map(Ok)).boxed())
}

/// The last sequence of the stream, as its leader has it now.
async fn last_sequence(bucket: &Bucket) -> Result<u64> {
    let mut stream = bucket.stream.clone();
    Ok(stream
        .info()
        .await
        .map_err(|err| NatsError::NotApplied {
            message: format!("cannot read the stream state: {err}"),
        })?
        .state
        .last_sequence)
}

pub(crate) async fn watch(
    bucket: &Arc<Bucket>,
    hub: &Hub,
    pattern: &Pattern,
    start: WatchStart,
) -> Result<WatchStream> {
    let operation = format!("watch {pattern}");
    let timeout = bucket.request_timeout;
    let (feed, events) = watch_feed(bucket.watch_buffer);
    match start {
        WatchStart::Now => {
            // Read before registering: the watcher sees nothing committed before this, and
            // everything after it (the hub's replica may not have delivered it yet).
            let last = last_sequence(bucket).await?;
            hub.read(0, timeout, &operation, |state| {
                state.register(pattern.clone(), feed, last + 1);
            })
            .await?;
            Ok(events)
        }
        WatchStart::Snapshot => {
            let at = read_point(bucket, hub, &operation).await?;
            let backlog = hub
                .read(at, timeout, &operation, |state| {
                    let mut entries: Vec<Entry> = state.entries(pattern).collect();
                    entries.sort_unstable_by_key(|entry| entry.revision);
                    let position = state.position();
                    state.register(pattern.clone(), feed, position + 1);
                    let caught_up = WatchEvent::CaughtUp {
                        revision: Revision::new(position),
                    };
                    entries
                        .into_iter()
                        .map(WatchEvent::Put)
                        .chain(std::iter::once(caught_up))
                        .collect::<Vec<_>>()
                })
                .await?;
            Ok(stream::iter(backlog).chain(events).boxed())
        }
        WatchStart::FromRevision(from) => {
            // The hub serves it if it has not handed out `from` yet.
            let feed = hub
                .read(0, timeout, &operation, |state| {
                    if from.get() > state.position() {
                        state.register(pattern.clone(), feed, from.get());
                        None
                    } else {
                        Some(feed)
                    }
                })
                .await?;
            match feed {
                None => Ok(events),
                Some(feed) => {
                    replay(bucket, pattern, from, feed).await?;
                    Ok(events)
                }
            }
        }
    }
}

/// Fails with [`Error::Compacted`] if the stream no longer holds a change at or after `from`
/// (history is one message per key, so overwritten and expired messages are gone): a replay
/// from there would skip it. The messages of replaced read barriers are gone too, but they
/// were no changes: the barriers that replaced them say so.
async fn check_replayable(bucket: &Bucket, from: Revision) -> Result<()> {
    let subject = format!("STREAM.INFO.{}", crate::config::stream_name(&bucket.name));
    let barriers = format!("{}{}>", bucket.prefix, wire::BARRIER_KEYS);
    let info: Value = bucket
        .context
        .request(
            subject,
            &json!({ "deleted_details": true, "subjects_filter": barriers }),
        )
        .await
        .map_err(|err| NatsError::NotApplied {
            message: format!("cannot read the stream state: {err}"),
        })?;
    let state = &info["state"];
    let first = state["first_seq"].as_u64().unwrap_or(0);
    let last = state["last_seq"].as_u64().unwrap_or(0);
    let mut gone: Vec<u64> = state["deleted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .filter(|seq| *seq >= from.get())
        .collect();
    if !gone.is_empty() {
        let slots = state["subjects"]
            .as_object()
            .map(|subjects| subjects.keys().cloned().collect())
            .unwrap_or_default();
        let replaced = replaced_barriers(bucket, slots).await?;
        gone.retain(|seq| !replaced.contains(seq));
    }
    let oldest = match gone.iter().max() {
        Some(gone) => Some(gone + 1),
        None if from.get() < first && first > 1 => Some(first),
        None if last > 0 && first == 0 => Some(last + 1),
        None => None,
    };
    match oldest.and_then(Revision::new) {
        Some(oldest) if oldest > from => Err(Error::Compacted {
            requested: from,
            oldest,
        }),
        _ => Ok(()),
    }
}

/// The sequences that the last barriers of the barrier subjects `slots` say were earlier
/// barriers of their slots. A slot's last barrier lists the slot's earlier barriers that the
/// last [`wire::REPLACES_KEPT`] replaced; a hole an older one left is taken for a lost change.
///
/// Errors: [`NatsError::NotApplied`] when a slot's last barrier cannot be read.
async fn replaced_barriers(bucket: &Bucket, slots: Vec<String>) -> Result<BTreeSet<u64>> {
    let lasts: Vec<_> = stream::iter(slots)
        .map(|subject| async move {
            match bucket.stream.direct_get_last_for_subject(&subject).await {
                Ok(message) => Ok(hub::replaced(Some(&message.headers))),
                // Expired or purged since it was listed: it claims nothing any more.
                Err(err) if err.kind() == DirectGetErrorKind::NotFound => Ok(Vec::new()),
                Err(err) => Err(NatsError::NotApplied {
                    message: format!("cannot read the read barrier {subject}: {err}"),
                }),
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut replaced = BTreeSet::new();
    for last in lasts {
        replaced.extend(last?);
    }
    Ok(replaced)
}

/// Starts the task that replays the bucket from `from` into `feed`, through a consumer of its
/// own. Errors: [`Error::Compacted`] when the stream no longer holds every change since
/// `from`.
async fn replay(
    bucket: &Arc<Bucket>,
    pattern: &Pattern,
    from: Revision,
    feed: WatchFeed,
) -> Result<()> {
    check_replayable(bucket, from).await?;
    // Every sequence must arrive, so that a message removed before delivery (a key overwritten
    // while the watcher was behind or reconnecting; the bucket keeps one message per key)
    // shows up as a hole instead of vanishing.
    let (messages, _, consumer) = Source::of(bucket)
        .consumer(DeliverPolicy::ByStartSequence {
            start_sequence: from.get(),
        })
        .await?;
    let task = Feed {
        bucket: bucket.clone(),
        pattern: pattern.clone(),
        feed,
        next: from.get(),
        holes: Holes::default(),
    };
    let bucket = bucket.clone();
    tokio::spawn(async move {
        task.run(messages).await;
        release_consumer(&bucket, consumer);
    });
    Ok(())
}

/// Deletes a consumer this store created, in the background and best effort. Recipes open
/// many short watches and listings; left to the server, each consumer would linger for its
/// inactivity threshold (30 s for ordered consumers) and count against the server's consumer
/// limit. If the delete fails, that threshold still removes it.
fn release_consumer(bucket: &Bucket, name: String) {
    let stream = bucket.stream.clone();
    tokio::spawn(async move {
        if let Err(err) = stream.delete_consumer(&name).await {
            tracing::debug!(%err, consumer = %name, "could not delete a finished consumer");
        }
    });
}

/// One delivered message: its stream sequence, the messages still pending after it, its key
/// (`None` for a subject that is no key of ours), and the change it is if the pattern selects
/// it (`*` skips reserved keys).
fn decode(
    bucket: &Bucket,
    pattern: &Pattern,
    message: &async_nats::jetstream::Message,
) -> Option<(u64, u64, Option<Key>, Option<WatchEvent>)> {
    let info = message.info().ok()?;
    let key = message
        .subject
        .strip_prefix(bucket.prefix.as_str())
        .and_then(|subject| Key::new_reserved(subject).ok());
    let event = key.as_ref().filter(|key| pattern.matches(key)).map(|key| {
        let headers = message.headers.as_ref();
        let published = info.published.unix_timestamp_nanos();
        let last = Last::stored(
            key,
            info.stream_sequence,
            headers,
            &message.payload,
            published,
        );
        change(key.clone(), &last, headers)
    });
    Some((info.stream_sequence, info.pending, key, event))
}

struct Feed {
    bucket: Arc<Bucket>,
    pattern: Pattern,
    feed: WatchFeed,
    // Invariant: the first revision not yet looked at; never 0. The watcher has been given
    // every selected change below it, except those `holes` holds back.
    next: u64,
    holes: Holes,
}

impl Feed {
    async fn run(mut self, mut messages: push::Ordered) {
        let mut closing = self.bucket.closing.subscribe();
        let mut quiet = Quiet::default();
        loop {
            let unsettled = !self.holes.is_empty();
            let message = tokio::select! {
                _ = closing.wait_for(|closed| *closed) => return,
                // The watcher dropped its stream: stop, and let the consumer go.
                _ = self.feed.closed() => return,
                message = messages.next() => message,
                last = quiet.last_sequence(&self.bucket.stream, unsettled) => {
                    if last.is_some_and(|last| self.next > last) {
                        // Caught up, as below, with holes still unclaimed.
                        self.lag_here();
                        return;
                    }
                    quiet.probed(false);
                    continue;
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                // The consumer is gone (e.g. the server restarted while this watch was idle
                // and the reconnect went unnoticed); the ordered consumer recreates itself on
                // the next read.
                Some(Err(err)) if err.kind() == OrderedErrorKind::MissingHeartbeat => {
                    tracing::debug!(%err, "watch consumer missed a heartbeat; recreating it");
                    continue;
                }
                Some(Err(err)) => {
                    tracing::warn!(%err, "watch consumer failed; ending the watch with Lagged");
                    self.lag_here();
                    return;
                }
                None => {
                    self.lag_here();
                    return;
                }
            };
            let Some((sequence, pending, key, event)) =
                decode(&self.bucket, &self.pattern, &message)
            else {
                continue;
            };
            // Already looked at, or from before the watch began: a recreated consumer that
            // had delivered nothing starts over from the stream's first message.
            if sequence < self.next {
                continue;
            }
            // The consumer sees every message of the stream, so a hole in the sequence is a
            // message removed (overwritten, one message per key) before it was delivered.
            // Reads leave such holes on purpose: each read's barrier replaces the previous one
            // on its reserved subject, and lists the earlier barriers of that subject. A hole
            // no barrier has claimed by the time the watch has caught up may have been a change
            // the watcher selects: say so (lag there) rather than skip it.
            if self.holes.skipped(self.next, sequence).is_err() {
                self.lag_here();
                return;
            }
            if key.is_some_and(|key| key.as_str().starts_with(wire::BARRIER_KEYS)) {
                self.holes.claim(message.headers.as_ref());
            }
            self.next = sequence + 1;
            for event in self.holes.released() {
                if !self.send(event) {
                    return;
                }
            }
            match event.map(|event| self.holes.pass(event)) {
                Some(Ok(Some(event))) => {
                    if !self.send(event) {
                        return;
                    }
                }
                Some(Err(TooMany)) => {
                    self.lag_here();
                    return;
                }
                Some(Ok(None)) | None => {}
            }
            if pending == 0 && !self.holes.is_empty() {
                // Every message stored so far was looked at, and the barriers among them left
                // these holes unclaimed.
                self.lag_here();
                return;
            }
        }
    }

    fn send(&mut self, event: WatchEvent) -> bool {
        let fallback = Revision::new(self.next).expect("never 0");
        self.feed.send(event, fallback).is_ok()
    }

    /// Ends the watch at the first revision the watcher has not been given.
    fn lag_here(&self) {
        let first = self.holes.first().unwrap_or(self.next);
        self.feed.lag(Revision::new(first).expect("never 0"));
    }
}
