//! [`Hub`]: the one change feed of a store's connection. A single ordered consumer reads the
//! whole bucket into a view of every key's last message, and hands each change to the
//! watchers of this store that select it; reads, listings and snapshots are answered from the
//! view once it has applied a read barrier committed after they began.
//!
//! So a store costs the servers one consumer, and each write is delivered to it once, however
//! many watches, lock waiters and readers it has: a watch is an entry in an in-process index
//! ([`WatchHub`]), a change costs in proportion to the watchers it selects.
//!
//! # Why the consumer reads the whole bucket
//!
//! The bucket keeps one message per key, so a message overwritten before it was delivered (the
//! consumer was recreated after a reconnect, or its replica was behind) is gone: only the hole
//! it leaves in the stream sequence shows that a change was missed. A consumer filtered to a
//! narrow pattern cannot see that hole (the sequences it skips are other keys' messages as far
//! as it can tell), so it would skip a change silently. Reading every subject makes every
//! sequence arrive or leave a hole. Holes left by read barriers (each replaces the previous one
//! on its reserved subject) are claimed by the next barrier of that subject
//! ([`wire::REPLACES`]); a hole nothing claims ends every watch with `Lagged` there.
//!
//! # What the view proves
//!
//! While no hole is unclaimed, the view holds the last message of every key as of the last
//! sequence the consumer delivered ([`State::position`]): its replica had applied everything up
//! to there. A read barrier committed at `S` after a read began lies after every write
//! acknowledged before the read. Once the view's position is at least `S - 1`, the view is the
//! state at a moment after the read began and before it ends: a linearizable answer. At
//! exactly `S - 1` that moment is just before the barrier's commit (nothing was committed
//! between the two, and the barrier was sent after the read began); further on, it is the
//! commit of the position's message. So a read usually has its answer as soon as the
//! barrier's acknowledgement arrives, without waiting for the barrier's own delivery. A hole that stays unclaimed until the
//! consumer has nothing pending no longer matters to the view: the message that removed the
//! missing one was stored before it, so it has been delivered by then. ("Nothing pending" is
//! the server's count on the last delivery, or the stream's last sequence reached when that
//! count is stale: see [`Quiet`].)
//!
//! Barriers are batched ([`ReadGate`]): every read waiting when a barrier is sent shares it, so
//! a burst of reads costs one replicated write, and the barrier reaches this process once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedErrorKind;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy, push};
use async_nats::jetstream::stream;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use swarmstate_core::backend::{WatchFeed, WatchHub};
use swarmstate_core::{Entry, Key, Pattern, Revision, WatchEvent};
use tokio::sync::{oneshot, watch as signal};

use crate::bucket::{Bucket, View};
use crate::error::NatsError;
use crate::seen::Seen;
use crate::wire::{self, Kind, Last};

/// Missing sequences, and changes held back behind them, a reader of the bucket keeps while
/// it waits for read barriers to claim the holes; beyond that it lags.
const MAX_UNEXPLAINED: usize = 1024;

/// How many delivered messages the hub applies under one hold of its lock, at most.
const APPLIED_AT_ONCE: usize = 256;

/// How long the hub waits before recreating a consumer that could not be created, at most.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// A store's change feed, view and read barriers. Clones of a store share one.
#[derive(Debug)]
pub(crate) struct Hub {
    shared: Arc<Shared>,
    source: Source,
    closing: signal::Receiver<bool>,
    started: OnceLock<()>,
}

/// What a consumer of the bucket needs of the connection. Not the `Bucket`: the hub's task
/// holding it would keep the connection open after the store was dropped.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    client: async_nats::Client,
    stream: stream::Stream,
    name: String,
    prefix: String,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    // Bumped whenever the state moves on; what waiting reads and registrations wait for.
    moved: signal::Sender<u64>,
    gate: ReadGate,
    // For the read barriers of confirmed reads that come through the bucket (see `View`);
    // weak, since the bucket holds this.
    bucket: Weak<Bucket>,
}

/// The view and the watchers, as of the last message the consumer delivered.
#[derive(Debug, Default)]
pub(crate) struct State {
    // The last message of every key but the read barriers', tombstones and expiry markers too
    // (what a write replaces, see `crate::seen`).
    view: BTreeMap<Key, Last>,
    watchers: WatchHub,
    // Whether the consumer's first pass (the last message of each subject) is over.
    ready: bool,
    // The last sequence the consumer delivered; 0 before the first.
    looked_at: u64,
    holes: Holes,
    // Set when too much went missing to keep track: the view is trusted again once the
    // consumer has nothing pending.
    resyncing: bool,
}

/// One message as the consumer delivered it.
struct Delivered<'a> {
    sequence: u64,
    // How many messages the consumer's replica held after this one when it sent it.
    pending: u64,
    published_nanos: i128,
    // `None` for a subject that is no key of ours.
    key: Option<Key>,
    headers: Option<&'a async_nats::HeaderMap>,
    payload: &'a bytes::Bytes,
}

/// What a reader of the whole bucket has not seen: the sequences that never arrived and that
/// no read barrier has claimed yet, and the changes after the first of them, held back until
/// it is claimed (if it never is, the reader lags there, and nothing after it may have been
/// handed out). The hub keeps one, and so does a watch replaying from a revision.
#[derive(Debug, Default)]
pub(crate) struct Holes {
    unexplained: BTreeSet<u64>,
    held: Vec<WatchEvent>,
}

/// More went missing, or is held back, than a reader keeps track of: it lags.
#[derive(Debug)]
pub(crate) struct TooMany;

impl Holes {
    /// Records `sequence` arriving where `next` was expected: every sequence between them is
    /// missing. On [`TooMany`], `next` is recorded as the first missing one.
    pub(crate) fn skipped(&mut self, next: u64, sequence: u64) -> Result<(), TooMany> {
        if sequence <= next {
            return Ok(());
        }
        if self.unexplained.len() + (sequence - next) as usize > MAX_UNEXPLAINED {
            self.unexplained.insert(next);
            return Err(TooMany);
        }
        self.unexplained.extend(next..sequence);
        Ok(())
    }

    /// The holes a read barrier (a message to a `_swarmstate.barrier.*` key) with `headers`
    /// says were earlier barriers of its slot: none of them was a change to a key.
    pub(crate) fn claim(&mut self, headers: Option<&async_nats::HeaderMap>) {
        for sequence in replaced(headers) {
            self.unexplained.remove(&sequence);
        }
    }

    /// The changes held back, once nothing is missing any more; hand them out before any
    /// later one.
    pub(crate) fn released(&mut self) -> Vec<WatchEvent> {
        if self.unexplained.is_empty() {
            std::mem::take(&mut self.held)
        } else {
            Vec::new()
        }
    }

    /// `event` to hand out now, or `None` while it is held back behind a hole.
    pub(crate) fn pass(&mut self, event: WatchEvent) -> Result<Option<WatchEvent>, TooMany> {
        if self.unexplained.is_empty() {
            return Ok(Some(event));
        }
        self.held.push(event);
        if self.held.len() > MAX_UNEXPLAINED {
            return Err(TooMany);
        }
        Ok(None)
    }

    /// The first missing sequence, if any.
    pub(crate) fn first(&self) -> Option<u64> {
        self.unexplained.first().copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.unexplained.is_empty()
    }
}

/// The sequences a read barrier with `headers` says were earlier barriers of its slot.
pub(crate) fn replaced(headers: Option<&async_nats::HeaderMap>) -> Vec<u64> {
    headers
        .and_then(|headers| headers.get(wire::REPLACES))
        .and_then(|claimed| wire::decode_sequences(claimed.as_str()))
        .unwrap_or_default()
}

/// The change a message stored at `last.sequence` for `key` is, with its `headers`.
pub(crate) fn change(key: Key, last: &Last, headers: Option<&async_nats::HeaderMap>) -> WatchEvent {
    let revision = Revision::new(last.sequence).expect("never 0");
    match (wire::kind(headers), &last.live) {
        (Kind::Put, Some(entry)) => WatchEvent::Put(entry.clone()),
        (Kind::Expire, _) => WatchEvent::Expire { key, revision },
        _ => WatchEvent::Delete { key, revision },
    }
}

impl State {
    /// The sequence the view is the state at, if it is trustworthy now (see the module doc).
    fn current(&self) -> Option<u64> {
        (self.ready && self.holes.is_empty() && !self.resyncing).then_some(self.looked_at)
    }

    /// Where the view is, for an error message.
    fn describe(&self) -> String {
        let mut text = format!("is at sequence {}", self.looked_at);
        if !self.ready {
            text.push_str(", before the end of its first pass");
        }
        if let Some(first) = self.holes.first() {
            text.push_str(&format!(", missing sequence {first}"));
        }
        if self.resyncing {
            text.push_str(", reading the bucket again");
        }
        text
    }

    /// The sequence the view and the watchers are at. Every change up to it has been handed
    /// to the watchers registered then; a watcher registered now gets every later one.
    pub(crate) fn position(&self) -> u64 {
        self.looked_at
    }

    /// The last message of `key`, if it has one.
    pub(crate) fn last(&self, key: &Key) -> Option<&Last> {
        self.view.get(key)
    }

    /// The live entries `pattern` selects, in key order.
    pub(crate) fn entries<'a>(
        &'a self,
        pattern: &'a Pattern,
    ) -> Box<dyn Iterator<Item = Entry> + 'a> {
        let selected = move |(key, last): (&Key, &Last)| {
            pattern.matches(key).then(|| last.live_now()).flatten()
        };
        match pattern {
            Pattern::All => Box::new(self.view.iter().filter_map(selected)),
            Pattern::Exact(key) => Box::new(
                self.view
                    .get_key_value(key)
                    .into_iter()
                    .filter_map(selected),
            ),
            // The keys under `a` sort among those that start with `a`.
            Pattern::Prefix(prefix) => Box::new(
                self.view
                    .range(prefix.clone()..)
                    .take_while(|(key, _)| key.as_str().starts_with(prefix.as_str()))
                    .filter_map(selected),
            ),
        }
    }

    /// Adds a watcher that gets every change `pattern` selects from revision `from` on, the
    /// changes after [`position`](Self::position) at the earliest.
    pub(crate) fn register(&mut self, pattern: Pattern, feed: WatchFeed, from: u64) {
        let from = Revision::new(from.max(self.looked_at + 1)).expect("never 0");
        self.watchers.register(pattern, feed, Some(from));
    }

    /// Starts over for a new consumer; `empty` when it has nothing to deliver.
    fn restart(&mut self, empty: bool) {
        *self = State {
            ready: empty,
            ..Default::default()
        };
    }

    /// The consumer failed: every watch lags at the first change it may not have been given,
    /// and the view is forgotten until a new consumer has read the bucket again.
    fn fail(&mut self) {
        self.lag_at_first_hole();
        self.view.clear();
        self.ready = false;
    }

    /// Every watch lags at the first unclaimed hole (or the next sequence, if none); nothing
    /// held back is handed out.
    fn lag_at_first_hole(&mut self) {
        let first = self.holes.first().unwrap_or(self.looked_at + 1);
        self.watchers
            .lag_all(Revision::new(first).expect("never 0"));
        self.holes = Holes::default();
    }

    /// Applies one delivered message.
    fn apply_message(&mut self, prefix: &str, message: &async_nats::jetstream::Message) {
        let Ok(info) = message.info() else { return };
        let key = message
            .subject
            .strip_prefix(prefix)
            .and_then(|subject| Key::new_reserved(subject).ok());
        self.apply(Delivered {
            sequence: info.stream_sequence,
            pending: info.pending,
            published_nanos: info.published.unix_timestamp_nanos(),
            key,
            headers: message.headers.as_ref(),
            payload: &message.payload,
        });
    }

    /// Applies one delivered message, decoded.
    fn apply(&mut self, delivered: Delivered<'_>) {
        let Delivered {
            sequence,
            pending,
            published_nanos,
            key,
            headers,
            payload,
        } = delivered;
        // Delivered again by a recreated consumer.
        if sequence <= self.looked_at {
            return;
        }
        let first_pass = !self.ready;
        if !first_pass && self.holes.skipped(self.looked_at + 1, sequence).is_err() {
            self.lag_at_first_hole();
            self.resyncing = true;
        }
        self.looked_at = sequence;
        let event = match key {
            Some(key) if key.as_str().starts_with(wire::BARRIER_KEYS) => {
                self.holes.claim(headers);
                None
            }
            Some(key) => {
                let last = Last::stored(&key, sequence, headers, payload, published_nanos);
                let event = change(key.clone(), &last, headers);
                self.view.insert(key, last);
                Some(event)
            }
            // A subject that is no key of ours.
            None => None,
        };
        if !first_pass && !self.resyncing {
            let released = self.holes.released();
            if !released.is_empty() {
                self.watchers.dispatch(&released);
            }
            match event.map(|event| self.holes.pass(event)) {
                Some(Ok(Some(event))) => self.watchers.dispatch(std::slice::from_ref(&event)),
                Some(Err(TooMany)) => {
                    self.lag_at_first_hole();
                    self.resyncing = true;
                }
                Some(Ok(None)) | None => {}
            }
        }
        if pending == 0 {
            self.caught_up();
        }
    }

    /// Everything the consumer's replica had was delivered: the first pass is over, and holes
    /// nothing claimed by now may have been changes a watcher selects.
    fn caught_up(&mut self) {
        if !self.holes.is_empty() {
            self.lag_at_first_hole();
        }
        self.ready = true;
        self.resyncing = false;
    }
}

impl Hub {
    /// The hub of `bucket`'s connection, which it also takes hints and confirmed reads from
    /// (see [`Bucket::hint`] and [`Bucket::confirmed_last`]). Nothing starts until the first
    /// read or watch.
    pub(crate) fn new(bucket: &Arc<Bucket>) -> Hub {
        let (moved, _) = signal::channel(0);
        let shared = Arc::new(Shared {
            state: Default::default(),
            moved,
            gate: ReadGate::default(),
            bucket: Arc::downgrade(bucket),
        });
        bucket.set_view(shared.clone());
        Hub {
            shared,
            source: Source::of(bucket),
            closing: bucket.closing.subscribe(),
            started: OnceLock::new(),
        }
    }

    /// Waits until the view is trustworthy and at sequence `at` or later, then runs `read` on
    /// it, under the lock that the consumer applies changes under (so a registration in `read`
    /// misses nothing after the position). Starts the consumer on first use.
    ///
    /// Errors: [`NatsError::NotApplied`] when the view does not get there within `timeout`
    /// (the consumer's replica is behind or cut off, or the consumer cannot be created).
    pub(crate) async fn read<T>(
        &self,
        at: u64,
        timeout: Duration,
        operation: &str,
        read: impl FnOnce(&mut State) -> T,
    ) -> Result<T, NatsError> {
        self.start();
        self.shared.read(at, timeout, operation, read).await
    }

    /// A read barrier sent after this call began, shared with every read waiting for one
    /// then; the sequence the view must reach for a linearizable answer (the barrier's, minus
    /// one: see the module doc). Errors: [`NatsError::NotApplied`] (the barrier was not
    /// committed: no quorum, no answer), [`NatsError::Closed`].
    pub(crate) async fn barrier(
        &self,
        bucket: &Arc<Bucket>,
        operation: &str,
    ) -> Result<u64, NatsError> {
        self.shared.gate.barrier(bucket, operation).await
    }

    /// Starts the consumer, if it is not running yet.
    pub(crate) fn start(&self) {
        self.started.get_or_init(|| {
            tokio::spawn(run(
                self.shared.clone(),
                self.source.clone(),
                self.closing.clone(),
            ));
        });
    }
}

impl View for Shared {
    fn seen(&self, key: &Key) -> Option<Seen> {
        let state = self.lock();
        state.current()?;
        Some(Seen::of(state.view.get(key)))
    }

    fn confirmed<'a>(
        &'a self,
        key: &'a Key,
        operation: &'a str,
    ) -> Option<BoxFuture<'a, Result<Option<Last>, NatsError>>> {
        self.lock().current()?;
        let bucket = self.bucket.upgrade()?;
        Some(Box::pin(async move {
            let at = self.gate.barrier(&bucket, operation).await?;
            let timeout = bucket.request_timeout;
            self.read(at, timeout, operation, |state| state.last(key).cloned())
                .await
        }))
    }

    fn looked_at<'a>(&'a self, sequence: u64, limit: Duration) -> Option<BoxFuture<'a, ()>> {
        {
            let state = self.lock();
            let behind = state.current().is_some_and(|position| position < sequence);
            if !behind || state.watchers.is_empty() {
                return None;
            }
        }
        Some(Box::pin(async move {
            let _ = self.read(sequence, limit, "write", |_| ()).await;
        }))
    }
}

impl Shared {
    /// As [`Hub::read`], on a consumer already started.
    async fn read<T>(
        &self,
        at: u64,
        timeout: Duration,
        operation: &str,
        read: impl FnOnce(&mut State) -> T,
    ) -> Result<T, NatsError> {
        let mut moved = self.moved.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let mut state = self.lock();
                if state.current().is_some_and(|position| position >= at) {
                    return Ok(read(&mut state));
                }
            }
            match tokio::time::timeout_at(deadline, moved.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(NatsError::Closed),
                Err(_) => {
                    let state = self.lock().describe();
                    let goal = match at {
                        0 => "catch up".to_owned(),
                        at => format!("reach sequence {at}"),
                    };
                    return Err(NatsError::NotApplied {
                        message: format!(
                            "{operation}: this client's view of the bucket did not {goal} \
                             within {timeout:?} (the server delivering it is behind or cut \
                             off; the view {state})"
                        ),
                    });
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn moved(&self) {
        self.moved.send_modify(|n| *n += 1);
    }
}

/// The consumer task: reads the bucket until the store closes or is dropped, recreating the
/// consumer from scratch when it fails for good.
async fn run(shared: Arc<Shared>, source: Source, mut closing: signal::Receiver<bool>) {
    let mut retry = Duration::from_millis(50);
    loop {
        let created = tokio::select! {
            _ = closing.wait_for(|closed| *closed) => break,
            created = source.consumer(DeliverPolicy::LastPerSubject) => created,
        };
        match created {
            Ok((messages, pending, _)) => {
                retry = Duration::from_millis(50);
                shared.lock().restart(pending == 0);
                shared.moved();
                if read(&shared, &source, &mut closing, messages)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(err) => {
                tracing::debug!(%err, "cannot start this client's change feed; retrying");
                tokio::select! {
                    _ = closing.wait_for(|closed| *closed) => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
    // Closed or dropped: the watches end plainly.
    shared.lock().watchers.clear();
    shared.moved();
}

/// Reads one consumer until it fails (`Ok`, after every watch lagged) or the store closes
/// (`Err`).
async fn read(
    shared: &Shared,
    source: &Source,
    closing: &mut signal::Receiver<bool>,
    mut messages: push::Ordered,
) -> Result<(), ()> {
    let mut quiet = Quiet::default();
    'reading: loop {
        let unsettled = shared.lock().current().is_none();
        let mut next = tokio::select! {
            _ = closing.wait_for(|closed| *closed) => return Err(()),
            next = messages.next() => next,
            last = quiet.last_sequence(&source.stream, unsettled) => {
                let mut state = shared.lock();
                let caught_up = last.is_some_and(|last| state.looked_at >= last);
                if caught_up {
                    state.caught_up();
                }
                drop(state);
                quiet.probed(caught_up);
                shared.moved();
                continue 'reading;
            }
        };
        // What has arrived is applied under one hold of the lock, a bounded batch at a time so
        // that readers and writers asking the view for hints are not held up long.
        let mut state = None;
        let mut applied = 0;
        let failed = loop {
            match next {
                Some(Ok(message)) => {
                    let state = state.get_or_insert_with(|| shared.lock());
                    state.apply_message(&source.prefix, &message);
                    applied += 1;
                }
                // The consumer is recreating itself from where it was.
                Some(Err(err)) if err.kind() == OrderedErrorKind::MissingHeartbeat => {
                    tracing::debug!(%err, "change feed missed a heartbeat; recreating it");
                }
                Some(Err(err)) => break Some(err.to_string()),
                None => break Some("the consumer ended".to_owned()),
            }
            if applied >= APPLIED_AT_ONCE {
                break None;
            }
            match messages.next().now_or_never() {
                Some(more) => next = more,
                None => break None,
            }
        };
        drop(state);
        shared.moved();
        if let Some(failure) = failed {
            tracing::warn!(%failure, "change feed failed; every watch lags and it starts over");
            break 'reading;
        }
    }
    shared.lock().fail();
    shared.moved();
    Ok(())
}

/// How long a reader that has not caught up waits for a message before it asks the stream
/// whether anything is left to deliver, at first and at most.
const QUIET_FIRST: Duration = Duration::from_millis(50);
const QUIET_MAX: Duration = Duration::from_secs(1);

/// Asks the stream for its last sequence when a reader that has not caught up has heard
/// nothing for a while. A reader knows it has caught up when a message arrives with nothing
/// pending after it, but nats-server's count of what is pending can be stale (it counted a
/// message that was replaced before it was delivered) until the next message arrives, which
/// on a quiet bucket may be never. A reader that has delivered the stream's last sequence,
/// with nothing arriving while it asked, has caught up.
#[derive(Debug)]
pub(crate) struct Quiet {
    after: Duration,
}

impl Default for Quiet {
    fn default() -> Quiet {
        Quiet { after: QUIET_FIRST }
    }
}

impl Quiet {
    /// Once the reader has been quiet for a while, and only if it is `unsettled`, the stream's
    /// last sequence (`None` if it cannot be read). Cancel it when a message arrives: an
    /// answer then says nothing of what the reader has delivered.
    pub(crate) async fn last_sequence(
        &self,
        stream: &stream::Stream,
        unsettled: bool,
    ) -> Option<u64> {
        if !unsettled {
            return std::future::pending().await;
        }
        tokio::time::sleep(self.after).await;
        let mut stream = stream.clone();
        match tokio::time::timeout(QUIET_MAX, stream.info()).await {
            Ok(Ok(info)) => Some(info.state.last_sequence),
            Ok(Err(err)) => {
                tracing::debug!(%err, "cannot read the stream state");
                None
            }
            Err(_) => None,
        }
    }

    /// Asks again sooner once it did catch up, later while it did not.
    pub(crate) fn probed(&mut self, caught_up: bool) {
        self.after = if caught_up {
            QUIET_FIRST
        } else {
            (self.after * 2).min(QUIET_MAX)
        };
    }
}

impl Source {
    pub(crate) fn of(bucket: &Bucket) -> Source {
        Source {
            client: bucket.client.clone(),
            stream: bucket.stream.clone(),
            name: bucket.name.clone(),
            prefix: bucket.prefix.clone(),
        }
    }

    /// An ordered consumer over every subject of the bucket (so that every sequence arrives
    /// or leaves a hole, see the module doc): its messages, how many it has pending at its
    /// start, and its name.
    pub(crate) async fn consumer(
        &self,
        deliver_policy: DeliverPolicy,
    ) -> Result<(push::Ordered, u64, String), NatsError> {
        let consumer = self
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{}>", self.prefix),
                deliver_policy,
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(|err| NatsError::NotApplied {
                message: format!("cannot start a consumer on {}: {err}", self.name),
            })?;
        let pending = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        let messages = consumer
            .messages()
            .await
            .map_err(|err| NatsError::NotApplied {
                message: format!("cannot read a consumer on {}: {err}", self.name),
            })?;
        Ok((messages, pending, name))
    }
}

/// Batches read barriers: a read joins the next barrier to be sent (never one already in
/// flight, which may have been proposed before the read began), and one barrier is in flight
/// at a time.
#[derive(Debug, Default)]
struct ReadGate {
    gate: Arc<Mutex<Gate>>,
}

#[derive(Debug, Default)]
struct Gate {
    // Whether a task is sending barriers.
    sending: bool,
    // The reads waiting for the next barrier.
    waiting: Vec<oneshot::Sender<Result<u64, Failed>>>,
}

/// A barrier's failure, as each read waiting on it reports it.
#[derive(Debug, Clone)]
enum Failed {
    Closed,
    NotApplied(String),
}

fn lock_gate(gate: &Mutex<Gate>) -> std::sync::MutexGuard<'_, Gate> {
    gate.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReadGate {
    async fn barrier(&self, bucket: &Arc<Bucket>, operation: &str) -> Result<u64, NatsError> {
        bucket.ensure_open()?;
        let (sender, receiver) = oneshot::channel();
        let start = {
            let mut gate = lock_gate(&self.gate);
            gate.waiting.push(sender);
            !std::mem::replace(&mut gate.sending, true)
        };
        // The barriers are sent by a task of their own, so that a read given up does not
        // take the barrier of the others with it.
        if start {
            tokio::spawn(send_barriers(bucket.clone(), self.gate.clone()));
        }
        match receiver.await {
            Ok(Ok(sequence)) => Ok(sequence - 1),
            Ok(Err(Failed::Closed)) => Err(NatsError::Closed),
            Ok(Err(Failed::NotApplied(message))) => Err(NatsError::NotApplied {
                message: format!("{operation}: {message}"),
            }),
            Err(_) => Err(NatsError::NotApplied {
                message: format!("{operation}: the read barrier was abandoned"),
            }),
        }
    }
}

/// Sends one barrier for the reads waiting, then one for those that came meanwhile, until
/// none are waiting.
async fn send_barriers(bucket: Arc<Bucket>, gate: Arc<Mutex<Gate>>) {
    let mut sending = Sending { gate, done: false };
    loop {
        let waiting = {
            let mut gate = lock_gate(&sending.gate);
            if gate.waiting.is_empty() {
                gate.sending = false;
                drop(gate);
                sending.done = true;
                return;
            }
            std::mem::take(&mut gate.waiting)
        };
        let outcome = match bucket.read_barrier("read barrier").await {
            Ok(sequence) => Ok(sequence),
            Err(NatsError::Closed) => Err(Failed::Closed),
            Err(err) => Err(Failed::NotApplied(err.to_string())),
        };
        for read in waiting {
            let _ = read.send(outcome.clone());
        }
    }
}

/// Lets the next read start a new sender if this one is dropped before it is done (its
/// runtime shut down): the reads it was sending for are abandoned.
struct Sending {
    gate: Arc<Mutex<Gate>>,
    done: bool,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if !self.done {
            let mut gate = lock_gate(&self.gate);
            gate.sending = false;
            gate.waiting.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::FutureExt;
    use swarmstate_core::backend::watch_feed;
    use swarmstate_core::{Pattern, WatchStream};

    use super::*;

    const VALUE: Bytes = Bytes::from_static(b"v");

    /// A put of `key` at `sequence` with `pending` messages after it.
    fn put(state: &mut State, sequence: u64, pending: u64, key: &str) {
        state.apply(Delivered {
            sequence,
            pending,
            published_nanos: 0,
            key: Some(Key::new_reserved(key).unwrap()),
            headers: None,
            payload: &VALUE,
        });
    }

    /// A read barrier of slot `slot` at `sequence` that lists `replaces`.
    fn barrier(state: &mut State, sequence: u64, pending: u64, slot: u64, replaces: &[u64]) {
        let mut headers = async_nats::HeaderMap::new();
        if !replaces.is_empty() {
            headers.insert(wire::REPLACES, wire::encode_sequences(replaces).as_str());
        }
        state.apply(Delivered {
            sequence,
            pending,
            published_nanos: 0,
            key: Some(Key::new_reserved(format!("{}c.{slot}", wire::BARRIER_KEYS)).unwrap()),
            headers: Some(&headers),
            payload: &Bytes::new(),
        });
    }

    fn watch(state: &mut State, pattern: &str) -> WatchStream {
        let (feed, stream) = watch_feed(64);
        let from = state.position() + 1;
        state.register(Pattern::new(pattern).unwrap(), feed, from);
        stream
    }

    // What `stream` holds now, without waiting: keys, and `lagged at N`.
    fn received(stream: &mut WatchStream) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some(Some(event)) = stream.next().now_or_never() {
            seen.push(match event {
                WatchEvent::Lagged { resume_from } => format!("lagged at {resume_from}"),
                event => event.key().expect("a change").to_string(),
            });
        }
        seen
    }

    /// A state past its first pass at sequence 2 (one key, `a.x`).
    fn ready() -> State {
        let mut state = State::default();
        put(&mut state, 2, 0, "a.x");
        assert_eq!(state.current(), Some(2));
        state
    }

    #[test]
    fn the_first_pass_builds_the_view_and_hands_nothing_out() {
        let mut state = State::default();
        let mut early = watch(&mut state, "a.*");
        put(&mut state, 3, 2, "a.x");
        assert_eq!(
            state.current(),
            None,
            "not ready before the first pass ends"
        );
        put(&mut state, 7, 1, "a.y");
        put(&mut state, 9, 0, "a.z");
        assert_eq!(state.current(), Some(9));
        let listed: Vec<String> = state
            .entries(&Pattern::new("a.*").unwrap())
            .map(|entry| entry.key.to_string())
            .collect();
        assert_eq!(listed, ["a.x", "a.y", "a.z"]);
        assert!(received(&mut early).is_empty());
    }

    #[test]
    fn a_stale_pending_count_leaves_the_first_pass_open_until_the_reader_has_caught_up() {
        let mut state = State::default();
        // The server still counts a message that was replaced before delivery.
        put(&mut state, 4, 2, "a.x");
        put(&mut state, 6, 1, "a.y");
        assert_eq!(state.current(), None);
        // The stream's last sequence is 6: nothing is left (see `Quiet`).
        state.caught_up();
        assert_eq!(state.current(), Some(6));
    }

    #[test]
    fn a_hole_a_barrier_claims_holds_changes_back_until_it_does() {
        let mut state = ready();
        let mut stream = watch(&mut state, "a.*");
        barrier(&mut state, 3, 0, 1, &[]);
        // 4 (the slot's next barrier) was replaced by 6 before delivery.
        put(&mut state, 5, 1, "a.y");
        assert_eq!(state.current(), None, "a hole makes the view untrusted");
        assert!(received(&mut stream).is_empty(), "held behind the hole");
        barrier(&mut state, 6, 0, 1, &[4, 3]);
        assert_eq!(state.current(), Some(6));
        assert_eq!(received(&mut stream), ["a.y"]);
    }

    #[test]
    fn a_hole_nothing_claims_by_the_end_lags_every_watch_there() {
        let mut state = ready();
        let mut selected = watch(&mut state, "a.*");
        let mut other = watch(&mut state, "b.*");
        put(&mut state, 3, 2, "a.y");
        // 4 is gone, and nothing claims it.
        put(&mut state, 5, 1, "a.z");
        put(&mut state, 6, 0, "b.w");
        assert_eq!(received(&mut selected), ["a.y", "lagged at 4"]);
        assert_eq!(received(&mut other), ["lagged at 4"]);
        // The view is the state at 6 again (what removed 4 was stored before it), and new
        // watchers go on from there.
        assert_eq!(state.current(), Some(6));
        let mut next = watch(&mut state, "a.*");
        put(&mut state, 7, 0, "a.v");
        assert_eq!(received(&mut next), ["a.v"]);
    }

    #[test]
    fn messages_delivered_again_are_dropped() {
        let mut state = ready();
        let mut stream = watch(&mut state, "a.*");
        put(&mut state, 3, 0, "a.y");
        put(&mut state, 2, 1, "a.x");
        put(&mut state, 3, 0, "a.y");
        put(&mut state, 4, 0, "a.z");
        assert_eq!(received(&mut stream), ["a.y", "a.z"]);
        assert_eq!(state.current(), Some(4));
    }

    #[test]
    fn too_much_missing_lags_every_watch_and_waits_for_the_end_to_trust_the_view() {
        let mut state = ready();
        let mut stream = watch(&mut state, "a.*");
        put(&mut state, 3 + MAX_UNEXPLAINED as u64 + 1, 5, "a.y");
        assert_eq!(received(&mut stream), ["lagged at 3"]);
        assert_eq!(state.current(), None);
        put(&mut state, 3 + MAX_UNEXPLAINED as u64 + 2, 0, "a.z");
        assert!(
            state.current().is_some(),
            "trusted again once nothing is pending"
        );
    }
}
