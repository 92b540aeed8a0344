//! The blocking acquire: waiters queue as tickets under `<lock key>.waiters`, first come, first
//! served, and only the first one takes the lock, woken by watches of the lock key and the queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use swarmstate_core::{Error, Key, Pattern, PutOptions, Result, Revision, StateStore, WatchEvent};

use super::acquire::{try_acquire, validate_lock_input};
use super::guard::LockGuard;
use super::ticket::{Ticket, remove_ticket, ticket_id, ticket_order, ticket_value};
use super::watch::LockWatch;
use crate::follow::{Followed, Follower, OnLag, Start};

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
/// does not wait for); the two watches it needs open concurrently with the ticket write.
/// Ticket ids derive from the owner name, so an owner's waits reuse the same ticket keys (a
/// deleted key can leave a marker each later snapshot of the queue reads past); a wait whose
/// owner already has waits queued on the lock costs one refused create per such wait.
/// [`acquire_lock`] does not queue: it may take a free lock ahead of waiters (see there).
///
/// Errors besides `LockHeld`: [`Error::InvalidInput`] for an owner that is empty, too long or not printable, or a TTL out of
/// range, [`Error::InvalidKey`] for a lock key too long to have tickets, and any store error
/// (the ticket is then removed, best effort).
///
/// [`acquire_lock`]: super::acquire_lock
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
    // The other tickets and their order (creation revision). A ticket that held our key
    // before our ticket was created is another's (see `is_ours`).
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

/// What woke a waiter.
enum Wake {
    Deadline,
    Lock(bool),
    Ticket(Result<Followed>),
    Refresh,
}

impl Waiter {
    async fn wait_until(&mut self, deadline: Instant) -> Result<LockGuard> {
        let tickets = Pattern::prefix(&self.prefix);
        // The two watches open while the ticket is written: the ticket watch sees every
        // ticket older than ours, either in its snapshot or live before our own. A lag of
        // either is answered by a fresh snapshot rather than trust in a gap.
        let (store, lock) = (self.store.clone(), self.lock.clone());
        let (joined, queue, lock_watch) = tokio::join!(
            self.join_queue(),
            Follower::open(&store, tickets, Start::Snapshot, OnLag::Restart),
            LockWatch::try_open(&store, &lock),
        );
        joined?;
        let mut queue = queue?;
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
                followed = queue.next() => Wake::Ticket(followed),
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
                Wake::Lock(present) => self.lock_present = Some(present),
                Wake::Ticket(followed) => match followed? {
                    Followed::Event(event) => self.on_ticket_event(event).await?,
                    Followed::Restarted => {
                        // A fresh snapshot of the queue follows.
                        tracing::debug!(lock = %self.lock, "lock waiter re-reads the queue");
                        self.others.clear();
                        self.snapshot_done = false;
                    }
                    Followed::Resumed => {}
                },
                Wake::Refresh => self.refresh_ticket().await?,
            }
        }
    }

    /// Writes a new ticket at the back of the queue, under the first of the owner's ticket ids
    /// whose key is free (see [`ticket_id`]).
    async fn join_queue(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            let id = ticket_id(&self.owner, attempt);
            let key = Key::new(format!("{}.{}", self.prefix, id))?;
            let value = ticket_value(0, &self.owner);
            let options = PutOptions::create().ttl(self.ticket_ttl);
            match self.store.put(&key, value, options).await {
                Ok(revision) => {
                    self.ticket = Some(Ticket {
                        key,
                        order: revision,
                        revision,
                        refresh_at: Instant::now() + self.ticket_ttl / 3,
                    });
                    return Ok(());
                }
                // Taken: another wait of this owner is queued, the ticket of its last wait is
                // not deleted yet, or (rarely) another owner's id hashes alike. Try the next.
                Err(Error::AlreadyExists { .. }) => attempt += 1,
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
        match event {
            WatchEvent::Put(entry) => {
                if !self.is_ours(&entry.key, entry.revision) {
                    let order = ticket_order(&entry);
                    self.others.insert(entry.key, order);
                }
            }
            WatchEvent::Delete { key, revision } | WatchEvent::Expire { key, revision } => {
                if self.is_ours(&key, revision) {
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

    /// Whether a change of `key` at `revision` is one of our current ticket. Ticket ids are
    /// reused, so the same key may have held an earlier ticket (ours before a rejoin, or
    /// another waiter's): its changes came before our ticket was created.
    fn is_ours(&self, key: &Key, revision: Revision) -> bool {
        self.ticket
            .as_ref()
            .is_some_and(|ticket| ticket.key == *key && revision >= ticket.order)
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

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use swarmstate_core::{MemoryStore, WatchStart};

    use super::*;
    use crate::lock::acquire_lock;

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

    /// Waits of one owner queued at once share its ticket ids: each takes the first one free,
    /// and they are served in the order they queued like any others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waits_of_one_owner_take_distinct_tickets_and_are_served_in_order() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let lock = Key::new("locks.one-owner").unwrap();
        let ttl = Duration::from_secs(30);
        let holder = acquire_lock(&store, &lock, "holder", ttl).await.unwrap();
        let prefix = Pattern::prefix(&lock_waiters_prefix(&lock).unwrap());
        let served = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (task_store, task_lock, served) = (store.clone(), lock.clone(), served.clone());
            waiters.push(tokio::spawn(async move {
                let guard = acquire_lock_wait(&task_store, &task_lock, "same", ttl, ttl)
                    .await
                    .unwrap();
                served.lock().unwrap().push((i, guard.token()));
                guard.release().await.unwrap();
            }));
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
        assert_eq!(
            served.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(served.windows(2).all(|pair| pair[0].1 < pair[1].1));
        assert!(served[0].1 > first);
        assert_eq!(store.keys(&prefix).await.unwrap().count().await, 0);
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
        // One owner waiting again and again takes the same id each time (the last ticket is
        // gone before the next wait begins).
        assert!(
            keys.len() <= waits / 2,
            "{} ticket keys for {waits} waits",
            keys.len()
        );
        assert_eq!(store.keys(&prefix).await.unwrap().count().await, 0);
    }
}
