//! Locks with fencing tokens, written only against [`StateStore`], so they behave the same on
//! every backend.
//!
//! A lock is a key created with a TTL; its value is the holder's owner name. The
//! [`FencingToken`] is the revision at which the lock was created: revisions are store-wide
//! and strictly increasing, so every later holder's token is greater. A holder that stalled
//! past its TTL can no longer do harm through the store: [`LockGuard::fenced_put`] and
//! [`LockGuard::fenced_txn`] apply only while the lock key is still the guard's.
//!
//! [`acquire_lock`] tries once. [`acquire_lock_wait`] queues first come, first served and is
//! woken by watches, never by polling; its waiters' tickets live under `<lock key>.waiters`.
//! [`LockGuard::keep_alive`] refreshes a lock in the background and signals its loss. A guard
//! or keep-alive that is dropped releases its lock in the background.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use swarmstate_core::backend::validate_ttl;
use swarmstate_core::{
    Condition, Entry, Error, Key, Pattern, PutOptions, Result, Revision, StateStore, TxnAction,
    TxnOp, TxnResult, WatchEvent, WatchStart, WatchStream,
};

/// The revision at which a lock was acquired: strictly greater than every earlier holder's.
/// Hand it to a protected resource so it can keep the highest token it has seen and refuse
/// a stale holder's lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken(pub Revision);

impl FencingToken {
    /// The token as a number.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A held lock.
///
/// Prefer [`release`](LockGuard::release), which reports whether the lock was still ours.
/// Dropping a guard that was neither released nor found lost releases the lock in the
/// background, best effort: the drop spawns the conditional delete on the current Tokio
/// runtime (if there is one; the delete applies only if the lock is still this guard's). Without
/// a runtime, or if that delete fails, the lock simply expires after its TTL.
#[derive(Debug)]
pub struct LockGuard {
    store: Arc<dyn StateStore>,
    key: Key,
    owner: String,
    // What acquisition and refresh write to the lock key: the owner name, or a recipe's own
    // encoding of it (an election writes the term beside the candidate).
    value: Bytes,
    ttl: Duration,
    token: FencingToken,
    // Invariant: the lock key's revision as of our last successful write to it. A refresh
    // moves it; the token stays.
    revision: Mutex<Revision>,
    // Refreshes and releases hold it exclusively, fenced writes shared: a fenced write that
    // read `revision` while a refresh was in flight would be refused although the lock is ours.
    writing: tokio::sync::RwLock<()>,
    // Set once the guard was released or found lost, so that drop does not release again.
    finished: AtomicBool,
    // The delete of the waiter's ticket that took this lock, still running in the background.
    // A release (or drop) waits for it before it deletes the lock: the next waiter must never
    // find our stale ticket still first in the queue when the lock is free, or it would wait
    // for nothing until the ticket's delete or expiry shows on its watch.
    ticket_removal: Mutex<Option<JoinHandle<()>>>,
}

/// Acquires the lock `key` for `owner` with `ttl`, or fails at once with [`Error::LockHeld`]
/// naming the holder and the time it has left. One write (plus a read to describe a holder).
///
/// It does not look at the waiters of [`acquire_lock_wait`]: a lock that is free is taken, even
/// while waiters are queued. The lock is only free with waiters queued during a hand-over (one
/// watch event and one write long) or while the first waiter is dead and its ticket has not yet
/// expired; taking it then is safe (tokens still increase, the waiters see the new holder on
/// their watch and keep their places), and refusing would cost every try-acquire a listing of
/// the queue.
///
/// Errors besides `LockHeld`: [`Error::InvalidInput`] for an empty owner or a TTL out of range.
pub async fn acquire_lock(
    store: &Arc<dyn StateStore>,
    key: &Key,
    owner: &str,
    ttl: Duration,
) -> Result<LockGuard> {
    validate_lock_input(owner, ttl)?;
    try_acquire(store, key, owner, Bytes::from(owner.to_owned()), ttl).await
}

pub(crate) fn validate_lock_input(owner: &str, ttl: Duration) -> Result<()> {
    validate_ttl(ttl)?;
    if owner.is_empty() {
        return Err(Error::InvalidInput {
            message: "a lock owner must not be empty".into(),
        });
    }
    Ok(())
}

/// One attempt to create the lock key holding `value`; `LockHeld` if it is there.
pub(crate) async fn try_acquire(
    store: &Arc<dyn StateStore>,
    key: &Key,
    owner: &str,
    value: Bytes,
    ttl: Duration,
) -> Result<LockGuard> {
    loop {
        let options = PutOptions::create().ttl(ttl);
        match store.put(key, value.clone(), options).await {
            Ok(revision) => return Ok(LockGuard::new(store, key, owner, value, ttl, revision)),
            Err(Error::AlreadyExists { .. }) => {
                // Describe the holder; if the lock vanished meanwhile, try again.
                if let Some(entry) = store.get(key).await? {
                    return Err(held_by(key, &entry));
                }
            }
            Err(other) => return Err(other),
        }
    }
}

fn held_by(key: &Key, entry: &Entry) -> Error {
    Error::LockHeld {
        key: key.clone(),
        holder: String::from_utf8_lossy(&entry.value).into_owned(),
        expires_in: entry.expires_in,
    }
}

/// The name of the token under a lock key that holds its waiters' tickets:
/// `<lock key>.waiters.<id>`.
pub const LOCK_WAITERS_TOKEN: &str = "waiters";

/// The longest TTL a waiter's ticket carries, whatever the lock's TTL: a waiter that dies
/// holds up the queue for at most this long (rounded up to the store's TTL granularity).
pub const MAX_TICKET_TTL: Duration = Duration::from_secs(10);

/// The prefix under which the waiters of lock `key` keep their tickets: `<key>.waiters`.
/// Watch or list `Pattern::prefix(&lock_waiters_prefix(key)?)` to see the queue.
///
/// Errors: [`Error::InvalidKey`] when the lock key is too long to have tickets.
pub fn lock_waiters_prefix(key: &Key) -> Result<Key> {
    Key::new(format!("{key}.{LOCK_WAITERS_TOKEN}"))
}

/// Waits up to `wait` for the lock; on deadline fails with [`Error::LockHeld`] describing the
/// holder then.
///
/// Waiters are served first come, first served. Each waiter writes a ticket
/// `<key>.waiters.<id>` (see [`lock_waiters_prefix`]) with a TTL of the lock's TTL capped at
/// [`MAX_TICKET_TTL`], and refreshes it every third of that TTL while it waits. Tickets are
/// ordered by the revision that created them (a refresh keeps the creation revision in the
/// ticket's value, `<created revision> <owner>`; `0` means the ticket's own revision). Only
/// the waiter whose ticket is first takes the lock, when a watch of the lock key shows it
/// absent, with a conditional create of the lock key, and then deletes its ticket in the
/// background, so the hand-over after a release costs one watch event and one write. The
/// guard's release (or drop) waits for that delete before it deletes the lock, so the next
/// waiter never finds the lock free behind a stale ticket. No waiter polls: every
/// waiter watches the lock key and the queue, and only the first one writes. A watch that
/// lags is answered by re-reading (a fresh snapshot). The tickets are the only keys written
/// besides the lock key; a watch or listing of exactly the lock key sees only the lock, and
/// nothing else should be stored under `<key>.waiters`.
///
/// A waiter that dies stops refreshing: its ticket expires and the next waiter, watching the
/// tickets, moves up. A waiter whose deadline passes deletes its ticket and tries once more
/// (as [`acquire_lock`] does), then fails with [`Error::LockHeld`] naming the holder. A waiter
/// whose future is dropped deletes its ticket in the background if a Tokio runtime is
/// current; otherwise the ticket expires. A waiter whose own ticket expired (it stalled past
/// the ticket's TTL) joins the queue again at the back.
///
/// Uncontended, it costs three writes (the ticket, the lock, and the ticket's delete, which it
/// does not wait for); the two watches it needs open concurrently with the ticket write. [`acquire_lock`] does not queue: it may
/// take a free lock ahead of waiters (see there).
///
/// Errors besides `LockHeld`: [`Error::InvalidInput`] for an empty owner or a TTL out of
/// range, [`Error::InvalidKey`] for a lock key too long to have tickets, and any store error
/// (the ticket is then removed, best effort).
pub async fn acquire_lock_wait(
    store: &Arc<dyn StateStore>,
    key: &Key,
    owner: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<LockGuard> {
    validate_lock_input(owner, ttl)?;
    acquire_waiting(store, key, owner, Bytes::from(owner.to_owned()), ttl, wait).await
}

/// [`acquire_lock_wait`] writing `value` to the lock key instead of the owner name.
pub(crate) async fn acquire_waiting(
    store: &Arc<dyn StateStore>,
    key: &Key,
    owner: &str,
    value: Bytes,
    ttl: Duration,
    wait: Duration,
) -> Result<LockGuard> {
    let deadline = Instant::now() + wait;
    let prefix = lock_waiters_prefix(key)?;
    let mut waiter = Waiter {
        store: store.clone(),
        lock: key.clone(),
        prefix,
        owner: owner.to_owned(),
        value,
        ttl,
        ticket_ttl: ttl
            .min(MAX_TICKET_TTL)
            .max(store.capabilities().ttl_granularity),
        ticket: None,
        others: HashMap::new(),
        snapshot_done: false,
        seen: None,
        lock_present: None,
    };
    let outcome = waiter.wait_until(deadline).await;
    if outcome.is_err() {
        waiter.leave().await;
    }
    outcome
}

/// One waiter's view of the queue and of the lock.
struct Waiter {
    store: Arc<dyn StateStore>,
    lock: Key,
    prefix: Key,
    owner: String,
    value: Bytes,
    ttl: Duration,
    ticket_ttl: Duration,
    // Our ticket while we are queued; dropped (and deleted) when we leave.
    ticket: Option<Ticket>,
    // The other tickets and their order (creation revision).
    others: HashMap<Key, u64>,
    // Whether the current ticket snapshot is complete.
    snapshot_done: bool,
    // The highest revision the ticket watch has reached. Invariant for deciding who is
    // first: once it reaches our ticket's creation revision, `others` holds every older ticket
    // still alive.
    seen: Option<Revision>,
    // Whether the lock key is present, `None` until the lock watch has told.
    lock_present: Option<bool>,
}

struct Ticket {
    // The last token of `key`.
    id: String,
    key: Key,
    // The revision that created the ticket: its place in the queue.
    order: Revision,
    // Invariant: the ticket's revision as of our last write to it.
    revision: Revision,
    refresh_at: Instant,
}

/// What woke a waiter.
enum Wake {
    Deadline,
    Lock(Option<bool>),
    Ticket(Option<WatchEvent>),
    Refresh,
}

impl Waiter {
    async fn wait_until(&mut self, deadline: Instant) -> Result<LockGuard> {
        let tickets = Pattern::prefix(&self.prefix);
        // The two watches open while the ticket is written: the ticket watch sees every
        // ticket older than ours, either in its snapshot or live before our own.
        let (store, lock) = (self.store.clone(), self.lock.clone());
        let (joined, ticket_stream, lock_watch) = tokio::join!(
            self.join_queue(),
            store.watch(&tickets, WatchStart::Snapshot),
            LockWatch::try_open(&store, &lock),
        );
        joined?;
        let mut ticket_stream = ticket_stream?;
        let mut lock_watch = lock_watch?;
        loop {
            if self.is_first() && self.lock_present == Some(false) {
                if let Some(guard) = self.take().await? {
                    return Ok(guard);
                }
                continue;
            }
            let refresh_at = self.ticket.as_ref().map_or(deadline, |t| t.refresh_at);
            let wake = tokio::select! {
                biased;
                () = tokio::time::sleep_until(deadline) => Wake::Deadline,
                present = lock_watch.next() => Wake::Lock(present),
                event = ticket_stream.next() => Wake::Ticket(event),
                () = tokio::time::sleep_until(refresh_at) => Wake::Refresh,
            };
            match wake {
                Wake::Deadline => {
                    self.leave().await;
                    return try_acquire(
                        &self.store,
                        &self.lock,
                        &self.owner,
                        self.value.clone(),
                        self.ttl,
                    )
                    .await;
                }
                Wake::Lock(present) => self.lock_present = present.or(self.lock_present),
                Wake::Ticket(Some(WatchEvent::Lagged { .. }) | None) => {
                    // Re-read the queue from a fresh snapshot rather than trust a gap.
                    tracing::debug!(lock = %self.lock, "lock waiter re-reads the queue");
                    self.others.clear();
                    self.snapshot_done = false;
                    ticket_stream = self.store.watch(&tickets, WatchStart::Snapshot).await?;
                }
                Wake::Ticket(Some(event)) => self.on_ticket_event(event).await?,
                Wake::Refresh => self.refresh_ticket().await?,
            }
        }
    }

    /// Writes a new ticket at the back of the queue.
    async fn join_queue(&mut self) -> Result<()> {
        loop {
            let id = spare_ticket_id().unwrap_or_else(ticket_id);
            let key = Key::new(format!("{}.{}", self.prefix, id))?;
            let value = ticket_value(0, &self.owner);
            let options = PutOptions::create().ttl(self.ticket_ttl);
            match self.store.put(&key, value, options).await {
                Ok(revision) => {
                    self.ticket = Some(Ticket {
                        id,
                        key,
                        order: revision,
                        revision,
                        refresh_at: Instant::now() + self.ticket_ttl / 3,
                    });
                    return Ok(());
                }
                // A spare id whose ticket is there after all (the key was written by someone
                // else, or the store reported the delete before it applied): take another.
                Err(Error::AlreadyExists { .. }) => {}
                Err(other) => return Err(other),
            }
        }
    }

    /// Whether our ticket is first among those alive, as far as a complete view shows.
    fn is_first(&self) -> bool {
        let Some(ticket) = &self.ticket else {
            return false;
        };
        self.snapshot_done
            && self.seen >= Some(ticket.order)
            && self
                .others
                .values()
                .all(|&order| order > ticket.order.get())
    }

    /// Takes the lock with one conditional create, then deletes our ticket in the background;
    /// `None` if someone was faster (the lock is there).
    ///
    /// The two writes are deliberately not one transaction. The create alone decides who
    /// holds the lock (at most one create of an absent key succeeds), so safety does not need
    /// the ticket in it; and a multi-write transaction can cost far more than a write (on an
    /// R1 NATS bucket the server stages every atomic batch on disk, 10–20 ms), which would
    /// dominate the hand-over. For the same reason the caller does not wait for the ticket's
    /// delete; the guard's release does. A crash between the two leaves a ticket nobody refreshes: it
    /// expires within the ticket TTL, which is at most the lock's, so it delays the queue no
    /// longer than the dead holder's lock does anyway.
    async fn take(&mut self) -> Result<Option<LockGuard>> {
        if self.ticket.is_none() {
            return Ok(None);
        }
        let options = PutOptions::create().ttl(self.ttl);
        match self
            .store
            .put(&self.lock, self.value.clone(), options)
            .await
        {
            Ok(revision) => {
                let mut guard = LockGuard::new(
                    &self.store,
                    &self.lock,
                    &self.owner,
                    self.value.clone(),
                    self.ttl,
                    revision,
                );
                // Waiters behind us move up once the ticket is gone; an error here only
                // delays them until it expires. The delete runs in the background, so that
                // the caller has the lock one write after the release it waited for; the
                // guard's release waits for it (see `LockGuard::ticket_removal`).
                if let Some(ticket) = self.ticket.take() {
                    let store = self.store.clone();
                    guard.ticket_removal = Mutex::new(Some(tokio::spawn(async move {
                        remove_ticket(&store, ticket).await;
                    })));
                }
                Ok(Some(guard))
            }
            Err(Error::AlreadyExists { .. }) => {
                // Taken ahead of us by a try-acquire; its release will show on the watch.
                self.lock_present = Some(true);
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    async fn on_ticket_event(&mut self, event: WatchEvent) -> Result<()> {
        self.seen = self.seen.max(event.revision());
        let ours = self.ticket.as_ref().map(|ticket| &ticket.key);
        match event {
            WatchEvent::Put(entry) => {
                if Some(&entry.key) != ours {
                    let order = ticket_order(&entry);
                    self.others.insert(entry.key, order);
                }
            }
            WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
                if Some(&key) == ours {
                    self.rejoin().await?;
                } else {
                    self.others.remove(&key);
                }
            }
            WatchEvent::CaughtUp { .. } => self.snapshot_done = true,
            WatchEvent::Lagged { .. } => {}
        }
        Ok(())
    }

    async fn refresh_ticket(&mut self) -> Result<()> {
        let Some(ticket) = &mut self.ticket else {
            return Ok(());
        };
        let value = ticket_value(ticket.order.get(), &self.owner);
        let options = PutOptions::update(ticket.revision).ttl(self.ticket_ttl);
        let attempt = Instant::now();
        match self.store.put(&ticket.key, value, options).await {
            Ok(revision) => {
                ticket.revision = revision;
                ticket.refresh_at = attempt + self.ticket_ttl / 3;
                Ok(())
            }
            Err(Error::RevisionMismatch { .. }) => self.rejoin().await,
            Err(err @ (Error::Unavailable { .. } | Error::Ambiguous { .. })) => {
                // The ticket may still be alive; if it expires meanwhile, we queue again.
                tracing::warn!(key = %ticket.key, %err, "ticket refresh failed; retrying");
                ticket.refresh_at = attempt + self.ticket_ttl / 3;
                Ok(())
            }
            Err(other) => Err(other),
        }
    }

    /// Our ticket vanished (we stalled past its TTL): queue again, at the back.
    async fn rejoin(&mut self) -> Result<()> {
        if let Some(old) = self.ticket.take() {
            tracing::warn!(key = %old.key, "lock ticket lost while waiting; queueing again");
            remove_ticket(&self.store, old).await;
        }
        self.join_queue().await
    }

    /// Deletes our ticket, if we still have one.
    async fn leave(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            remove_ticket(&self.store, ticket).await;
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // A waiter dropped while queued (its future was cancelled) removes its ticket.
        if let Some(ticket) = self.ticket.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let store = self.store.clone();
            runtime.spawn(async move { remove_ticket(&store, ticket).await });
        }
    }
}

/// A ticket's value: the revision that created it (`0` for "this entry's own revision") and
/// the owner.
fn ticket_value(created: u64, owner: &str) -> Bytes {
    Bytes::from(format!("{created} {owner}"))
}

/// A ticket's place in the queue: the creation revision its value records, else its own.
fn ticket_order(entry: &Entry) -> u64 {
    std::str::from_utf8(&entry.value)
        .ok()
        .and_then(|text| text.split(' ').next())
        .and_then(|created| created.parse::<u64>().ok())
        .filter(|&created| created != 0)
        .unwrap_or(entry.revision.get())
}

/// Deletes one of our tickets; once it is known gone, its id becomes spare.
///
/// The delete is conditional on the ticket's last known revision, which spares the store a
/// read of the key first (a round trip on NATS). The ticket is ours alone, so a mismatch
/// means it expired, or that a refresh whose answer was lost applied after all: then delete
/// whatever is there.
async fn remove_ticket(store: &Arc<dyn StateStore>, ticket: Ticket) {
    let removed = match store.delete(&ticket.key, Some(ticket.revision)).await {
        Ok(_) | Err(Error::RevisionMismatch { actual: None, .. }) => Ok(()),
        Err(Error::RevisionMismatch { .. }) => store.delete(&ticket.key, None).await.map(|_| ()),
        Err(err) => Err(err),
    };
    match removed {
        Ok(()) => {
            let mut spare = SPARE_TICKET_IDS.lock().unwrap_or_else(|e| e.into_inner());
            if spare.len() < MAX_SPARE_TICKET_IDS {
                spare.push(ticket.id);
            }
        }
        Err(err) => tracing::debug!(key = %ticket.key, %err, "removing a lock ticket failed"),
    }
}

/// Ids of tickets this process removed, for its next tickets. A deleted key can leave a
/// marker behind (a NATS bucket keeps one tombstone per key), and a snapshot watch of the
/// queue, which every waiter opens, reads past all of them: a fresh id for every wait would
/// make each wait on a busy lock slower than the last. Reusing an id is safe, since its ticket
/// is gone; `join_queue` takes another if it finds one there after all.
static SPARE_TICKET_IDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How many spare ticket ids a process keeps: about as many as it has waiters at once.
const MAX_SPARE_TICKET_IDS: usize = 64;

fn spare_ticket_id() -> Option<String> {
    SPARE_TICKET_IDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
}

/// A ticket id unique across processes: 64 random bits in hex.
fn ticket_id() -> String {
    use std::hash::BuildHasher;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `RandomState` is seeded from the operating system's randomness.
    let random = std::collections::hash_map::RandomState::new().hash_one((
        n,
        std::process::id(),
        std::time::SystemTime::now(),
    ));
    format!("{random:016x}")
}

impl LockGuard {
    fn new(
        store: &Arc<dyn StateStore>,
        key: &Key,
        owner: &str,
        value: Bytes,
        ttl: Duration,
        revision: Revision,
    ) -> LockGuard {
        LockGuard {
            store: store.clone(),
            key: key.clone(),
            owner: owner.to_owned(),
            value,
            ttl,
            token: FencingToken(revision),
            revision: Mutex::new(revision),
            writing: tokio::sync::RwLock::new(()),
            finished: AtomicBool::new(false),
            ticket_removal: Mutex::new(None),
        }
    }

    /// Sets what later refreshes write to the lock key.
    pub(crate) fn set_value(&mut self, value: Bytes) {
        self.value = value;
    }

    /// The lock key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The owner name this guard holds the lock as.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The TTL each acquisition and refresh sets.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The fencing token of this acquisition.
    pub fn token(&self) -> FencingToken {
        self.token
    }

    fn current(&self) -> Revision {
        *self.revision.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lost(&self) -> Error {
        self.finished.store(true, Ordering::Relaxed);
        Error::LockLost {
            key: self.key.clone(),
        }
    }

    /// Waits until the ticket this lock was taken with is gone (or its delete failed).
    async fn ticket_removed(&self) {
        let removal = self
            .ticket_removal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(removal) = removal {
            let _ = removal.await;
        }
    }

    /// Extends the lock by its TTL from now, if it is still ours; otherwise
    /// [`Error::LockLost`] and nothing changes.
    pub async fn refresh(&self) -> Result<()> {
        let _writing = self.writing.write().await;
        let options = PutOptions::update(self.current()).ttl(self.ttl);
        match self.store.put(&self.key, self.value.clone(), options).await {
            Ok(revision) => {
                *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = revision;
                Ok(())
            }
            Err(Error::RevisionMismatch { .. }) => Err(self.lost()),
            Err(other) => Err(other),
        }
    }

    /// Releases the lock if it is still ours; otherwise [`Error::LockLost`] and nothing
    /// changes (a later holder keeps its lock).
    pub async fn release(self) -> Result<()> {
        self.release_now().await
    }

    async fn release_now(&self) -> Result<()> {
        let _writing = self.writing.write().await;
        self.finished.store(true, Ordering::Relaxed);
        self.ticket_removed().await;
        match self.store.delete(&self.key, Some(self.current())).await {
            Ok(_) => Ok(()),
            Err(Error::RevisionMismatch { .. }) => Err(self.lost()),
            Err(other) => Err(other),
        }
    }

    /// Writes `value` to `key` only while this lock is still held by this guard, atomically.
    /// A stale holder gets [`Error::LockLost`] and nothing is written.
    pub async fn fenced_put(&self, key: &Key, value: impl Into<Bytes>) -> Result<Revision> {
        let results = self.fenced_txn(vec![TxnOp::put(key, value)]).await?;
        match results.last() {
            Some(TxnResult::Put(revision)) => Ok(*revision),
            other => unreachable!("a put in a transaction yields Put, got {other:?}"),
        }
    }

    /// Applies `ops` as one transaction that also requires this lock to still be held by this
    /// guard. Returns the results of `ops` (without the lock check). If the lock was lost, the
    /// error is [`Error::LockLost`]; other conditions fail as in [`StateStore::txn`]. A fenced
    /// write issued while a refresh of this guard is in flight waits for the refresh.
    pub async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        if ops.iter().any(|op| op.key == self.key) {
            return Err(Error::InvalidInput {
                message: format!(
                    "a fenced transaction must not touch its own lock {}",
                    self.key
                ),
            });
        }
        let _writing = self.writing.read().await;
        let mut all = Vec::with_capacity(ops.len() + 1);
        all.push(TxnOp {
            key: self.key.clone(),
            action: TxnAction::Check,
            condition: Condition::At(self.current()),
        });
        all.extend(ops);
        match self.store.txn(all).await {
            Ok(mut results) => {
                results.remove(0);
                Ok(results)
            }
            Err(Error::RevisionMismatch { key, .. }) if key == self.key => Err(self.lost()),
            Err(other) => Err(other),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.finished.swap(true, Ordering::Relaxed) {
            return;
        }
        // Without a runtime nothing can be sent; the lock then expires after its TTL.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, key, revision) = (self.store.clone(), self.key.clone(), self.current());
        let ticket_removal = self
            .ticket_removal
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        let ticket_removal = ticket_removal.take();
        runtime.spawn(async move {
            if let Some(removal) = ticket_removal {
                let _ = removal.await;
            }
            if let Err(err) = store.delete(&key, Some(revision)).await {
                tracing::debug!(%key, %err, "release of a dropped lock guard failed");
            }
        });
    }
}

/// Keeps a lock alive in the background: refreshes it every third of its TTL and signals the
/// moment the lock is known lost, so the holder can stop its work. Besides the refreshes it
/// watches the lock key, so a delete or an expiry of the lock is known as soon as the store
/// reports it, not only at the next refresh.
///
/// [`release`](KeepAlive::release) stops refreshing and releases at once. Dropping it stops
/// refreshing and, like dropping a [`LockGuard`], releases the lock in the background if a
/// Tokio runtime is current and the lock is not known lost; otherwise the lock expires after
/// its TTL.
#[derive(Debug)]
pub struct KeepAlive {
    guard: Arc<LockGuard>,
    lost: watch::Receiver<bool>,
    // Invariant: `Some` until `release` or drop has stopped the task.
    task: Option<JoinHandle<()>>,
    // Sending (or dropping) it stops the task between refreshes, never in the middle of one,
    // so that no refresh lands after a release.
    stop: Option<oneshot::Sender<()>>,
}

impl LockGuard {
    /// Starts refreshing this lock every `ttl / 3`. A refresh that finds the lock taken, or a
    /// delete or expiry of the lock key seen by the watch, marks it lost at once; refreshes
    /// that fail for other reasons (the store unreachable) are retried until the lock's TTL
    /// since the last successful refresh has run out, and then it is marked lost too, because
    /// by then it may have expired.
    pub fn keep_alive(self) -> KeepAlive {
        let guard = Arc::new(self);
        let (lost_sender, lost) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(refresh_loop(guard.clone(), lost_sender, stopped));
        KeepAlive {
            guard,
            lost,
            task: Some(task),
            stop: Some(stop),
        }
    }
}

async fn refresh_loop(
    guard: Arc<LockGuard>,
    lost: watch::Sender<bool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let period = guard.ttl / 3;
    let mut valid_until = Instant::now() + guard.ttl;
    let mut next_refresh = Instant::now() + period;
    let mut events = LockWatch::open(&guard.store, &guard.key);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep_until(next_refresh) => {
                let attempt = Instant::now();
                match guard.refresh().await {
                    Ok(()) => valid_until = attempt + guard.ttl,
                    Err(Error::LockLost { .. }) => break,
                    Err(err) if Instant::now() < valid_until => {
                        tracing::warn!(key = %guard.key, %err, "lock refresh failed; retrying");
                    }
                    Err(_) => break,
                }
                next_refresh = attempt + period;
            }
            present = events.next() => {
                if present == Some(false) {
                    // A lock key is never deleted or expired while it is still ours.
                    guard.finished.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
    lost.send_replace(true);
}

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

impl KeepAlive {
    /// The guard, for its token and fenced writes.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// Whether the lock is known lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves the moment the lock is known lost. Cancel-safe.
    pub async fn lost(&mut self) {
        // The sender lives in the refresh task, which marks the loss before it ends.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops refreshing and releases the lock if it is still ours; [`Error::LockLost`]
    /// otherwise.
    pub async fn release(mut self) -> Result<()> {
        self.stop.take();
        if let Some(task) = self.task.take() {
            // The task ends after any refresh in flight, so none lands after the release.
            let _ = task.await;
        }
        self.guard.release_now().await
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.stop.take();
        let Some(task) = self.task.take() else {
            return;
        };
        if self.guard.finished.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let guard = self.guard.clone();
            runtime.spawn(async move {
                // The task ends after any refresh in flight, so none lands after the release.
                let _ = task.await;
                if let Err(err) = guard.release_now().await {
                    tracing::debug!(key = %guard.key, %err, "release of a dropped keep-alive failed");
                }
            });
        }
    }
}

/// Guards a resource against stale lock holders: it remembers the highest fencing token it
/// has admitted and refuses any lower one. Equal tokens are admitted (one holder may act many
/// times). Keep one gate per protected resource, next to the resource.
#[derive(Debug, Default)]
pub struct FenceGate {
    highest: Mutex<Option<FencingToken>>,
}

/// A [`FenceGate`] refused a token lower than one it had already admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fencing token {token} is stale: token {highest} was already admitted")]
pub struct StaleToken {
    /// The token refused.
    pub token: FencingToken,
    /// The highest token admitted so far.
    pub highest: FencingToken,
}

impl FenceGate {
    /// A gate that has admitted nothing.
    pub fn new() -> FenceGate {
        FenceGate::default()
    }

    /// Admits `token` if it is at least the highest admitted so far, and remembers it.
    pub fn admit(&self, token: FencingToken) -> Result<(), StaleToken> {
        let mut highest = self.highest.lock().unwrap_or_else(|e| e.into_inner());
        match *highest {
            Some(seen) if token < seen => Err(StaleToken {
                token,
                highest: seen,
            }),
            _ => {
                *highest = Some(token);
                Ok(())
            }
        }
    }

    /// The highest token admitted so far.
    pub fn highest(&self) -> Option<FencingToken> {
        *self.highest.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstate_core::MemoryStore;

    fn token(n: u64) -> FencingToken {
        FencingToken(Revision::new(n).unwrap())
    }

    #[test]
    fn fence_gate_refuses_lower_tokens_and_admits_equal_or_higher() {
        let gate = FenceGate::new();
        assert_eq!(gate.highest(), None);
        gate.admit(token(5)).unwrap();
        gate.admit(token(5)).unwrap();
        let err = gate.admit(token(4)).unwrap_err();
        assert_eq!(
            err,
            StaleToken {
                token: token(4),
                highest: token(5)
            }
        );
        assert!(err.to_string().contains("stale"), "{err}");
        gate.admit(token(9)).unwrap();
        assert!(gate.admit(token(5)).is_err());
        assert_eq!(gate.highest(), Some(token(9)));
    }

    /// With a one-event watch buffer every waiter's watches lag again and again while the
    /// queue churns; waiters re-read the queue and the lock, and are still served one at a
    /// time, in the order they queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_whose_watches_lag_are_still_served_in_order() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::builder().watch_buffer(1).build());
        let lock = Key::new("locks.lagging").unwrap();
        let ttl = Duration::from_secs(30);
        let holder = acquire_lock(&store, &lock, "holder", ttl).await.unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..6 {
            let (task_store, task_lock, served) = (store.clone(), lock.clone(), served.clone());
            waiters.push(tokio::spawn(async move {
                let owner = format!("waiter-{i}");
                let guard = acquire_lock_wait(&task_store, &task_lock, &owner, ttl, ttl)
                    .await
                    .unwrap();
                served.lock().unwrap().push((owner, guard.token()));
                // Churn the queue's and the lock's watchers while holding.
                for _ in 0..3 {
                    guard.refresh().await.unwrap();
                }
                guard.release().await.unwrap();
            }));
            // Queue strictly one after another.
            let prefix = Pattern::prefix(&lock_waiters_prefix(&lock).unwrap());
            while store.keys(&prefix).await.unwrap().count().await < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        let first = holder.token();
        holder.release().await.unwrap();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(10), waiter)
                .await
                .expect("every waiter is served")
                .unwrap();
        }
        let served = served.lock().unwrap().clone();
        let names: Vec<String> = (0..6).map(|i| format!("waiter-{i}")).collect();
        assert_eq!(
            served
                .iter()
                .map(|(owner, _)| owner.clone())
                .collect::<Vec<_>>(),
            names
        );
        let mut last = first;
        for (_, token) in served {
            assert!(token > last);
            last = token;
        }
    }

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

    /// Every delete can leave a marker per key behind (a NATS tombstone) that each new snapshot
    /// watch of the queue reads: waits one after another reuse the ids of removed tickets
    /// rather than leave a new key each time.
    #[tokio::test]
    async fn waits_one_after_another_reuse_ticket_ids() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let lock = Key::new("locks.reuse").unwrap();
        let prefix = Pattern::prefix(&lock_waiters_prefix(&lock).unwrap());
        let mut tickets = store.watch(&prefix, WatchStart::Now).await.unwrap();
        let ttl = Duration::from_secs(30);
        let waits = 20;
        for _ in 0..waits {
            let guard = acquire_lock_wait(&store, &lock, "one", ttl, ttl)
                .await
                .unwrap();
            guard.release().await.unwrap();
        }
        let mut keys = std::collections::HashSet::new();
        let mut puts = 0;
        while puts < waits {
            match tickets.next().await.unwrap() {
                WatchEvent::Put(entry) => {
                    puts += 1;
                    keys.insert(entry.key);
                }
                WatchEvent::Lagged { .. } => panic!("the ticket watch lagged"),
                _ => {}
            }
        }
        // Other tests in this process may take a spare id in between, never most of them.
        assert!(
            keys.len() <= waits / 2,
            "{} ticket keys for {waits} waits",
            keys.len()
        );
        assert_eq!(store.keys(&prefix).await.unwrap().count().await, 0);
    }
}
