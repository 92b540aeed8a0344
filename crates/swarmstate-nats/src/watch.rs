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
//!
//! A consumer is served by one replica of the stream, chosen by the cluster, and that replica
//! may not have applied the newest committed writes yet (a follower the quorum went on
//! without, a deposed leader catching up). So a listing, and the snapshot a watch starts with,
//! begin with a read barrier ([`Bucket::read_barrier`]) and read through a consumer that also
//! delivers the barrier's subject: they are complete only once that consumer has delivered
//! the barrier, which proves its replica applied every write acknowledged before the call. If
//! the replica was behind when the consumer started, the changes after its starting point
//! arrive as live messages before the barrier, and are applied too.

use std::sync::Arc;

use async_nats::jetstream::consumer::push::OrderedErrorKind;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use futures::stream::{self, StreamExt};
use serde_json::{Value, json};
use swarmstate_core::backend::{WatchFeed, watch_feed};
use swarmstate_core::{
    Entry, Error, Key, KeyStream, Pattern, Result, Revision, WatchEvent, WatchStart, WatchStream,
};

use crate::bucket::{BarrierMark, Bucket};
use crate::config::ReadConsistency;
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

/// The subjects a listing of `pattern` reads: the pattern's, and the barrier's unless the
/// pattern's already covers it (the server refuses overlapping filters).
fn listing_filters(
    bucket: &Bucket,
    pattern: &Pattern,
    barrier: Option<&BarrierMark>,
) -> Vec<String> {
    let mut filters = vec![filter_subject(bucket, pattern)];
    if let Some(barrier) = barrier {
        let covered = match pattern {
            Pattern::All => true,
            _ => barrier
                .subject
                .strip_prefix(bucket.prefix.as_str())
                .and_then(|key| Key::new_reserved(key).ok())
                .is_some_and(|key| pattern.matches(&key)),
        };
        if !covered {
            filters.push(barrier.subject.clone());
        }
    }
    filters
}

/// The read barrier a listing or a snapshot starts with, unless the store was built with
/// [`ReadConsistency::Leader`] (whose reads write nothing).
async fn start_barrier(bucket: &Bucket, operation: &str) -> Result<Option<BarrierMark>> {
    match bucket.read_consistency {
        ReadConsistency::Linearizable => Ok(Some(bucket.read_barrier(operation).await?)),
        ReadConsistency::Leader => Ok(None),
    }
}

/// An ordered consumer over the subjects `filters`: its messages, the messages pending at its
/// start, and its name (for deleting it when done).
async fn ordered_consumer(
    bucket: &Bucket,
    mut filters: Vec<String>,
    deliver_policy: DeliverPolicy,
    headers_only: bool,
) -> Result<(push::Ordered, u64, String)> {
    // One filter goes in `filter_subject`, several in `filter_subjects` (never both).
    let (filter_subject, filter_subjects) = if filters.len() == 1 {
        (filters.pop().unwrap_or_default(), Vec::new())
    } else {
        (String::new(), filters)
    };
    let consumer = bucket
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: bucket.client.new_inbox(),
            filter_subject,
            filter_subjects,
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

/// The keys `pattern` selects, as of a moment within the call: no older than any write or
/// delete acknowledged before it began, unless the store was built with
/// [`ReadConsistency::Leader`] (then as the replica serving the consumer has them).
///
/// Cost: a read barrier (one replicated write), then a consumer that delivers the last message
/// of every selected key (headers only) and of the barrier's subject.
pub(crate) async fn keys(bucket: &Bucket, pattern: &Pattern) -> Result<KeyStream> {
    let operation = format!("list {pattern}");
    let barrier = start_barrier(bucket, &operation).await?;
    let filters = listing_filters(bucket, pattern, barrier.as_ref());
    let (mut messages, pending, name) =
        ordered_consumer(bucket, filters, DeliverPolicy::LastPerSubject, true).await?;
    let listing = Listing {
        keys: Default::default(),
        next: 1,
        past_start: pending == 0,
        barrier,
    };
    let listed = listing
        .read(bucket, pattern, &operation, &mut messages)
        .await;
    drop(messages);
    release_consumer(bucket, name);
    // A `BTreeSet` is in key order.
    let keys = listed?;
    Ok(stream::iter(keys.into_iter().map(Ok)).boxed())
}

/// A listing being read: the selected keys present as of the last message looked at.
struct Listing {
    keys: std::collections::BTreeSet<Key>,
    // Invariant: the first sequence not looked at; never 0. Messages below it are ones a
    // recreated consumer delivers again.
    next: u64,
    // Whether the consumer is past what its replica held when it started (the messages
    // pending then were delivered, or it started with none): from there on it delivers every
    // message, so the keys are exactly those present at the last sequence looked at.
    past_start: bool,
    // The read barrier the listing waits for; `None` once delivered (or when there is none).
    barrier: Option<BarrierMark>,
}

impl Listing {
    /// Reads until the listing is complete. Errors: [`NatsError::NotApplied`] when the
    /// consumer fails, or delivers nothing for the request timeout while the listing is not
    /// complete (its replica is cut off, or so far behind that it has not applied the
    /// barrier by then).
    async fn read(
        mut self,
        bucket: &Bucket,
        pattern: &Pattern,
        operation: &str,
        messages: &mut push::Ordered,
    ) -> Result<std::collections::BTreeSet<Key>> {
        while !(self.past_start && self.barrier.is_none()) {
            let message = match tokio::time::timeout(bucket.request_timeout, messages.next()).await
            {
                Ok(Some(Ok(message))) => message,
                // The consumer is recreating itself, from where it was.
                Ok(Some(Err(err))) if err.kind() == OrderedErrorKind::MissingHeartbeat => {
                    tracing::debug!(%err, "listing consumer missed a heartbeat; recreating it");
                    continue;
                }
                Ok(Some(Err(err))) => {
                    return Err(NatsError::NotApplied {
                        message: format!("{operation}: {err}"),
                    }
                    .into());
                }
                Ok(None) => {
                    return Err(NatsError::NotApplied {
                        message: format!("{operation}: the consumer ended"),
                    }
                    .into());
                }
                Err(_) => {
                    return Err(NatsError::NotApplied {
                        message: format!(
                            "{operation}: the consumer delivered nothing for {:?} before the \
                             listing was confirmed (its server is behind or cut off)",
                            bucket.request_timeout
                        ),
                    }
                    .into());
                }
            };
            let Some((sequence, pending, event)) = decode(bucket, pattern, &message) else {
                continue;
            };
            if sequence < self.next {
                continue;
            }
            self.next = sequence + 1;
            if self
                .barrier
                .as_ref()
                .is_some_and(|barrier| barrier.reached_by(&message.subject, sequence))
            {
                self.barrier = None;
            }
            // Like `get`, listing trusts the server on expiry (see `wire::live_entry`).
            match event {
                Some(WatchEvent::Put(entry)) => {
                    self.keys.insert(entry.key);
                }
                Some(WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. }) => {
                    self.keys.remove(&key);
                }
                Some(WatchEvent::CaughtUp { .. } | WatchEvent::Lagged { .. }) | None => {}
            }
            if pending == 0 {
                self.past_start = true;
            }
        }
        Ok(self.keys)
    }
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
    // A snapshot starts with a read barrier and is complete once the consumer delivered it:
    // every change acknowledged before the call is in it.
    let barrier = match start {
        WatchStart::Snapshot => start_barrier(bucket, &format!("watch {pattern}")).await?,
        WatchStart::Now | WatchStart::FromRevision(_) => None,
    };
    // Read before the consumer exists: every change up to here is in a snapshot, and a
    // watch from now has seen nothing before the next one. A barrier's sequence is such a
    // point too.
    let floor = match &barrier {
        Some(barrier) => barrier.sequence,
        None => {
            let mut stream = bucket.stream.clone();
            stream
                .info()
                .await
                .map_err(|err| NatsError::NotApplied {
                    message: format!("cannot read the stream state: {err}"),
                })?
                .state
                .last_sequence
        }
    };
    // Every watch reads the whole bucket and selects keys itself: then every stream sequence
    // must arrive, and a message removed before delivery (a key overwritten while the watcher
    // was behind or reconnecting; the bucket keeps one message per key) shows up as a hole
    // instead of vanishing. Small state makes the extra traffic cheap.
    let (messages, pending, consumer) = ordered_consumer(
        bucket,
        vec![filter_subject(bucket, &Pattern::All)],
        policy,
        false,
    )
    .await?;
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
        catching_up: snapshot.then(|| CatchingUp {
            floor,
            past_start: pending == 0,
            held: barrier.as_ref().map(|_| Default::default()),
            barrier,
        }),
    };
    let bucket = bucket.clone();
    tokio::spawn(async move {
        task.run(messages).await;
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
    // A snapshot not yet caught up; `None` for other watches and once `CaughtUp` was given.
    catching_up: Option<CatchingUp>,
}

/// What a snapshot still waits for before its `CaughtUp`.
///
/// The consumer first delivers the last message of each subject as its replica had them when
/// it started, then every message stored after that. A replica that was behind (see the module
/// doc) started before the snapshot's barrier, and the changes it applies until the barrier
/// arrives belong to the snapshot too: the snapshot is complete once the barrier has arrived
/// and the first pass is over.
///
/// So that a snapshot is entries, then `CaughtUp`, even when those changes delete or replace
/// an entry, its entries are held back until then (and the changes applied to them), as long
/// as they fit in half the watch buffer: they go out at once when it completes, into a channel
/// nothing was sent to before. A larger snapshot hands out what it holds and goes on without
/// holding; if its replica turns out to be behind, the changes before the barrier reach the
/// watcher as they are (deletes and expiries too) before `CaughtUp`.
struct CatchingUp {
    // The revision `CaughtUp` names at least.
    floor: u64,
    // Whether the consumer is past what its replica held when it started (its pending count
    // reached 0, or it started with none): from there on every message is a change.
    past_start: bool,
    // The read barrier the snapshot waits for; `None` once delivered (or when there is none).
    barrier: Option<BarrierMark>,
    // The selected entries as of the last message looked at, not yet handed out; `None` once
    // they were (too many to hold), or for a snapshot without a barrier.
    held: Option<std::collections::BTreeMap<Key, Entry>>,
}

impl CatchingUp {
    fn complete(&self) -> bool {
        self.past_start && self.barrier.is_none()
    }
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
    async fn run(mut self, mut messages: push::Ordered) {
        let mut closing = self.bucket.closing.subscribe();
        if self.catching_up.as_ref().is_some_and(CatchingUp::complete) && !self.caught_up(0) {
            return;
        }
        loop {
            let awaiting_barrier = self
                .catching_up
                .as_ref()
                .is_some_and(|c| c.barrier.is_some());
            let message = tokio::select! {
                _ = closing.wait_for(|closed| *closed) => return,
                // The watcher dropped its stream: stop, and let the consumer go.
                _ = self.feed.closed() => return,
                message = messages.next() => message,
                // A snapshot whose replica delivers nothing for the request timeout before its
                // barrier (cut off, or far behind) is given up: the watcher snapshots again,
                // through a new consumer.
                _ = tokio::time::sleep(self.bucket.request_timeout), if awaiting_barrier => {
                    tracing::debug!("a snapshot's barrier did not arrive; ending the watch with Lagged");
                    self.lag_here();
                    return;
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
            // The snapshot's first pass: the last message of each subject.
            let in_snapshot = self.catching_up.as_ref().is_some_and(|c| !c.past_start);
            if let Some(catching_up) = &mut self.catching_up
                && let Some(barrier) = &catching_up.barrier
                && barrier.reached_by(&message.subject, sequence)
            {
                catching_up.barrier = None;
            }
            if let Some(event) = event {
                match self.hold(event) {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(event) => {
                        // A snapshot lists what exists; deletes and expiries before it are not
                        // changes.
                        let skip = in_snapshot && !matches!(event, WatchEvent::Put(_));
                        if !skip && !self.deliver(event) {
                            return;
                        }
                    }
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
            if let Some(catching_up) = &mut self.catching_up
                && pending == 0
            {
                catching_up.past_start = true;
            }
            if self.catching_up.as_ref().is_some_and(CatchingUp::complete)
                && !self.caught_up(sequence)
            {
                return;
            }
        }
    }

    /// Whether a snapshot is holding its entries back (see `CatchingUp`).
    fn holds_entries(&self) -> bool {
        self.catching_up.as_ref().is_some_and(|c| c.held.is_some())
    }

    /// Applies `event` to the snapshot's held entries (see `CatchingUp`), and hands them out
    /// once they outgrow half the watch buffer: `Ok(false)` once the watch is over. The event
    /// back when nothing is held.
    fn hold(&mut self, event: WatchEvent) -> Result<bool, WatchEvent> {
        let Some(held) = self.catching_up.as_mut().and_then(|c| c.held.as_mut()) else {
            return Err(event);
        };
        match event {
            WatchEvent::Put(entry) => {
                held.insert(entry.key.clone(), entry);
            }
            WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
                held.remove(&key);
            }
            WatchEvent::CaughtUp { .. } | WatchEvent::Lagged { .. } => {}
        }
        Ok(held.len() <= self.bucket.watch_buffer / 2 || self.hand_out_held_entries())
    }

    /// Hands the snapshot's held entries to the watcher in revision order, and stops holding.
    /// False once the watch is over.
    fn hand_out_held_entries(&mut self) -> bool {
        let Some(held) = self.catching_up.as_mut().and_then(|c| c.held.take()) else {
            return true;
        };
        let mut entries: Vec<Entry> = held.into_values().collect();
        entries.sort_unstable_by_key(|entry| entry.revision);
        entries
            .into_iter()
            .all(|entry| self.deliver(WatchEvent::Put(entry)))
    }

    /// Ends the snapshot: its held entries, then `CaughtUp` at the floor or at `sequence`, the
    /// last one looked at, whichever is later. False once the watch is over.
    fn caught_up(&mut self, sequence: u64) -> bool {
        if !self.hand_out_held_entries() {
            return false;
        }
        let floor = self.catching_up.take().map_or(0, |c| c.floor);
        self.deliver(WatchEvent::CaughtUp {
            revision: Revision::new(floor.max(sequence)),
        })
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

    /// Ends the watch at the first revision the watcher has not been given: the first one of
    /// all while a snapshot holds its entries back.
    fn lag_here(&self) {
        let first = match self.unexplained.first() {
            _ if self.holds_entries() => 1,
            Some(hole) => *hole,
            None => self.next,
        };
        self.feed.lag(Revision::new(first).expect("never 0"));
    }
}
