//! Watches and key listings through JetStream ordered consumers.
//!
//! A watch runs one task that reads an ordered push consumer (which recreates itself after a
//! reconnect or a missed heartbeat, from the last sequence it delivered) and feeds a bounded
//! channel. A watcher that lets the channel fill up, or whose consumer fails for good, gets
//! `Lagged` with the first revision it has not seen, and its stream ends.
//!
//! The recreated consumer may deliver messages the watcher must not see again: async-nats
//! recreates one that has delivered nothing yet from the start of the stream (not from where
//! the watch began), so the task drops every message below the first revision it has not
//! given the watcher.

use std::sync::Arc;

use async_nats::jetstream::consumer::push::OrderedErrorKind;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};
use swarmstate_core::backend::{WatchFeed, watch_feed};
use swarmstate_core::{
    Entry, Error, Key, KeyStream, Pattern, Result, Revision, WatchEvent, WatchStart, WatchStream,
};

use crate::bucket::Bucket;
use crate::error::NatsError;
use crate::wire::{self, Kind};

fn filter_subject(bucket: &Bucket, pattern: &Pattern) -> String {
    let prefix = &bucket.prefix;
    match pattern {
        Pattern::All => format!("{prefix}>"),
        Pattern::Prefix(key) => format!("{prefix}{key}.>"),
        Pattern::Exact(key) => format!("{prefix}{key}"),
    }
}

/// An ordered consumer over `pattern`: its messages, the messages pending at its start, and
/// its name (for deleting it when done).
async fn ordered_consumer(
    bucket: &Bucket,
    pattern: &Pattern,
    deliver_policy: DeliverPolicy,
    headers_only: bool,
) -> Result<(push::Ordered, u64, String)> {
    let consumer = bucket
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: bucket.client.new_inbox(),
            filter_subject: filter_subject(bucket, pattern),
            deliver_policy,
            replay_policy: ReplayPolicy::Instant,
            headers_only,
            ..Default::default()
        })
        .await
        .map_err(|err| NatsError::NotApplied {
            message: format!("cannot start a consumer on {}: {err}", bucket.name),
        })?;
    let pending = consumer.cached_info().num_pending;
    let name = consumer.cached_info().name.clone();
    let messages = consumer
        .messages()
        .await
        .map_err(|err| NatsError::NotApplied {
            message: format!("cannot read a consumer on {}: {err}", bucket.name),
        })?;
    Ok((messages, pending, name))
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

/// One delivered message: its stream sequence, the messages still pending after it, and the
/// change it is to a key — `None` for a subject that is no key of ours or that the pattern
/// does not select (`*` skips reserved keys).
fn decode(
    bucket: &Bucket,
    pattern: &Pattern,
    message: &async_nats::jetstream::Message,
) -> Option<(u64, u64, Option<WatchEvent>)> {
    let info = message.info().ok()?;
    let event = (|| {
        let subject = message.subject.strip_prefix(bucket.prefix.as_str())?;
        let key = Key::new_reserved(subject).ok()?;
        if !pattern.matches(&key) {
            return None;
        }
        let revision = Revision::new(info.stream_sequence)?;
        let headers = message.headers.as_ref();
        Some(match wire::kind(headers) {
            Kind::Put => WatchEvent::Put(Entry {
                key,
                value: message.payload.clone(),
                revision,
                expires_in: wire::expires_in(headers, info.published.unix_timestamp_nanos()),
            }),
            Kind::Delete => WatchEvent::Delete { key, revision },
            Kind::Expire => WatchEvent::Expire { key, revision },
        })
    })();
    Some((info.stream_sequence, info.pending, event))
}

pub(crate) async fn keys(bucket: &Bucket, pattern: &Pattern) -> Result<KeyStream> {
    let (mut messages, mut pending, name) =
        ordered_consumer(bucket, pattern, DeliverPolicy::LastPerSubject, true).await?;
    let listed = list_keys(bucket, pattern, &mut messages, &mut pending).await;
    drop(messages);
    release_consumer(bucket, name);
    let mut keys = listed?;
    keys.sort_unstable();
    Ok(stream::iter(keys.into_iter().map(Ok)).boxed())
}

async fn list_keys(
    bucket: &Bucket,
    pattern: &Pattern,
    messages: &mut push::Ordered,
    pending: &mut u64,
) -> Result<Vec<Key>> {
    let mut keys = Vec::new();
    while *pending > 0 {
        let message = match messages.next().await {
            Some(Ok(message)) => message,
            Some(Err(err)) => {
                return Err(NatsError::NotApplied {
                    message: format!("listing keys: {err}"),
                }
                .into());
            }
            None => break,
        };
        *pending = message.info().map(|i| i.pending).unwrap_or(0);
        // Like `get`, listing trusts the server on expiry (see `wire::live_entry`).
        if let Some((_, _, Some(WatchEvent::Put(entry)))) = decode(bucket, pattern, &message) {
            keys.push(entry.key);
        }
    }
    Ok(keys)
}

/// Revisions at or after `from` that the stream no longer holds (history is one message per
/// key, so overwritten and expired messages are gone): a replay from there would skip.
async fn check_replayable(bucket: &Bucket, from: Revision) -> Result<()> {
    let subject = format!("STREAM.INFO.{}", crate::config::stream_name(&bucket.name));
    let info: Value = bucket
        .context
        .request(subject, &json!({ "deleted_details": true }))
        .await
        .map_err(|err| NatsError::NotApplied {
            message: format!("cannot read the stream state: {err}"),
        })?;
    let state = &info["state"];
    let first = state["first_seq"].as_u64().unwrap_or(0);
    let last = state["last_seq"].as_u64().unwrap_or(0);
    let newest_gone = state["deleted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .filter(|seq| *seq >= from.get())
        .max();
    let oldest = match newest_gone {
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

pub(crate) async fn watch(
    bucket: &Arc<Bucket>,
    pattern: &Pattern,
    start: WatchStart,
) -> Result<WatchStream> {
    let (policy, snapshot) = match start {
        WatchStart::Now => (DeliverPolicy::New, false),
        WatchStart::FromRevision(from) => {
            check_replayable(bucket, from).await?;
            (
                DeliverPolicy::ByStartSequence {
                    start_sequence: from.get(),
                },
                false,
            )
        }
        WatchStart::Snapshot => (DeliverPolicy::LastPerSubject, true),
    };
    // Read before the consumer exists: every change up to here is in a snapshot, and a
    // watch from now has seen nothing before the next one.
    let mut stream = bucket.stream.clone();
    let floor = stream
        .info()
        .await
        .map_err(|err| NatsError::NotApplied {
            message: format!("cannot read the stream state: {err}"),
        })?
        .state
        .last_sequence;
    // Every watch reads the whole bucket and selects keys itself: then every stream sequence
    // must arrive, and a message removed before delivery (a key overwritten while the watcher
    // was behind or reconnecting; the bucket keeps one message per key) shows up as a hole
    // instead of vanishing. Small state makes the extra traffic cheap.
    let (messages, pending, consumer) =
        ordered_consumer(bucket, &Pattern::All, policy, false).await?;
    let (feed, events) = watch_feed(bucket.watch_buffer);
    let task = Feed {
        bucket: bucket.clone(),
        pattern: pattern.clone(),
        feed,
        next: match start {
            WatchStart::FromRevision(from) => from.get(),
            WatchStart::Now => floor + 1,
            // A snapshot cut short cannot be resumed from a revision; 1 asks for everything,
            // which the caller answers by snapshotting again.
            WatchStart::Snapshot => 1,
        },
        contiguous: matches!(start, WatchStart::FromRevision(_)),
        unexplained: Default::default(),
        held: Vec::new(),
    };
    let bucket = bucket.clone();
    tokio::spawn(async move {
        task.run(messages, snapshot.then_some((pending, floor)))
            .await;
        release_consumer(&bucket, consumer);
    });
    Ok(events)
}

struct Feed {
    bucket: Arc<Bucket>,
    pattern: Pattern,
    feed: WatchFeed,
    // Invariant: the first revision not yet looked at; never 0. The watcher has been given
    // every selected change below it, except those held back in `held`.
    next: u64,
    // Whether every sequence from `next` on must arrive: true once the watch is live (or
    // from its start revision), since the consumer covers the whole stream.
    contiguous: bool,
    // Sequences that never arrived and that no read barrier has claimed yet (see `run`).
    unexplained: std::collections::BTreeSet<u64>,
    // Events after the first unexplained hole, held back until it is claimed: if it never is,
    // the watch lags there, and the watcher must not have seen anything after it.
    held: Vec<WatchEvent>,
}

/// Missing sequences, and events behind them, a watch keeps while it waits for read barriers
/// to claim the holes; beyond that it lags.
const MAX_UNEXPLAINED: usize = 1024;

/// The sequences a read barrier (a reserved `_swarmstate.barrier.*` message) says were
/// earlier barriers of its slot: holes there are not changes to any key.
fn claimed_barriers(bucket: &Bucket, message: &async_nats::jetstream::Message) -> Vec<u64> {
    let claimed = || {
        let subject = message.subject.strip_prefix(bucket.prefix.as_str())?;
        if !subject.starts_with(wire::BARRIER_KEYS) {
            return None;
        }
        wire::decode_sequences(message.headers.as_ref()?.get(wire::REPLACES)?.as_str())
    };
    claimed().unwrap_or_default()
}

impl Feed {
    async fn run(mut self, mut messages: push::Ordered, snapshot: Option<(u64, u64)>) {
        let mut closing = self.bucket.closing.subscribe();
        let mut catching_up = snapshot;
        if let Some((0, floor)) = catching_up {
            catching_up = None;
            if !self.deliver(WatchEvent::CaughtUp {
                revision: Revision::new(floor),
            }) {
                return;
            }
        }
        loop {
            let message = tokio::select! {
                _ = closing.wait_for(|closed| *closed) => return,
                // The watcher dropped its stream: stop, and let the consumer go.
                _ = self.feed.closed() => return,
                message = messages.next() => message,
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
            let Some((sequence, pending, event)) = decode(&self.bucket, &self.pattern, &message)
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
            if self.contiguous && sequence > self.next {
                let gap = (sequence - self.next) as usize;
                if self.unexplained.len() + gap > MAX_UNEXPLAINED {
                    self.lag_here();
                    return;
                }
                self.unexplained.extend(self.next..sequence);
            }
            for claimed in claimed_barriers(&self.bucket, &message) {
                self.unexplained.remove(&claimed);
            }
            let in_snapshot = catching_up.is_some();
            if let Some(event) = event {
                // A snapshot lists what exists; deletes and expiries before it are not changes.
                let skip = in_snapshot && !matches!(event, WatchEvent::Put(_));
                if !skip && !self.deliver(event) {
                    return;
                }
            }
            self.next = sequence + 1;
            if !in_snapshot {
                self.contiguous = true;
            }
            if self.unexplained.is_empty() {
                if !self.release_held() {
                    return;
                }
            } else if pending == 0 || self.held.len() > MAX_UNEXPLAINED {
                // Every message stored so far was looked at (or too much is waiting), and
                // the barriers among them left these holes unclaimed.
                self.lag_here();
                return;
            }
            if let Some((_, floor)) = catching_up
                && pending == 0
            {
                catching_up = None;
                if !self.deliver(WatchEvent::CaughtUp {
                    revision: Revision::new(floor.max(sequence)),
                }) {
                    return;
                }
            }
        }
    }

    /// Hands one event to the watcher, or holds it back behind an unclaimed hole; false once
    /// the watch is over.
    fn deliver(&mut self, event: WatchEvent) -> bool {
        if !self.unexplained.is_empty() {
            self.held.push(event);
            return true;
        }
        self.send(event)
    }

    /// Hands the held-back events to the watcher, in order; false once the watch is over.
    fn release_held(&mut self) -> bool {
        let held = std::mem::take(&mut self.held);
        held.into_iter().all(|event| self.send(event))
    }

    fn send(&mut self, event: WatchEvent) -> bool {
        let fallback = Revision::new(self.next).expect("never 0");
        self.feed.send(event, fallback).is_ok()
    }

    /// Ends the watch at the first revision the watcher has not been given.
    fn lag_here(&self) {
        let first = self.unexplained.first().copied().unwrap_or(self.next);
        self.feed.lag(Revision::new(first).expect("never 0"));
    }
}
