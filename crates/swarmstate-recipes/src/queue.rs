//! A work queue with leased claims, written only against [`StateStore`], so it behaves the same
//! on every backend.
//!
//! Workers [`claim`](WorkQueue::claim) items for a lease, keep the lease alive with
//! [`heartbeat`](WorkQueue::heartbeat), and finish with [`complete`](WorkQueue::complete) or
//! [`fail`](WorkQueue::fail). A worker that stalls or dies simply stops renewing its lease: the
//! lease key expires on its own (no sweeper), the item becomes claimable again, and the next
//! claim gets a higher [`FencingToken`]. Completion and failure are fenced by the lease, so a
//! worker whose lease ran out cannot finish an item someone else now holds.
//!
//! # Layout in the store
//!
//! Every key lives under the queue's name `Q`; an item id is one key token (no dot):
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `Q.item.<id>` | the item record (below); the authority on the item's state | permanent |
//! | `Q.payload.<id>` | the payload, written once by `enqueue` | permanent |
//! | `Q.pending.<id>` | empty; present while the item waits to be claimed | index |
//! | `Q.claimed.<id>` | empty; present while the item's record says claimed | index |
//! | `Q.lease.<id>` | the claimant's name; the lease, with the lease as its TTL | TTL |
//!
//! The item record is text, one `field=value` per line, in this order:
//! `state=pending|claimed|done|dead`, `attempts=<n>`, `claimant=<worker>` (only while claimed),
//! and optionally `error=<the last failure reason>`, which runs to the end of the value (it may
//! hold newlines).
//!
//! Every change touching more than one key is one [`StateStore::txn`] conditioned on the item
//! record's revision (and on the lease), so a crash never leaves half a transition, and two
//! claimers can never both win one item. The claim's fencing token is the revision that created
//! the lease key: revisions are store-wide and strictly increasing, so every later claim of the
//! item has a higher token.
//!
//! A claimed item whose lease expired needs no write to be claimable: the next claim finds it
//! through the `claimed` index without a live lease. If it has used up its attempts, that claim
//! moves it to `dead` instead; until then [`status`](WorkQueue::status) and
//! [`list`](WorkQueue::list) already report it as [`ItemState::Dead`].

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::time::Instant;

use crate::lock::FencingToken;
use swarmstate_core::backend::validate_ttl;
use swarmstate_core::{
    Condition, Entry, Error, Key, Pattern, PutOptions, Result, Revision, StateStore, TxnOp,
    TxnResult, WatchEvent, WatchStart,
};

/// The default number of attempts an item gets before it is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The longest worker name, in bytes.
const MAX_WORKER_LEN: usize = 256;

/// The longest failure reason kept, in bytes; a longer one is cut at a character boundary.
pub const MAX_REASON_LEN: usize = 4096;

/// How many times in a row [`WorkQueue::claim`] may lose every candidate of an index listing
/// that did not change before it reports nothing claimable.
const MAX_UNCHANGED_ROUNDS: u32 = 3;

/// How many item records [`WorkQueue::list`] reads at once.
const LIST_CONCURRENCY: usize = 16;

/// A work queue of items identified by id, each claimed by one worker at a time under a lease.
///
/// Cloning is cheap; clones share the store. Every handle on one queue (in every process)
/// should use the same [`max_attempts`](WorkQueue::max_attempts), because whoever finishes or
/// reclaims an item applies its own limit.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use swarmstate::{Key, MemoryStore, StateStore};
/// use swarmstate::queue::{ItemState, WorkQueue};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
/// let queue = WorkQueue::new(store, Key::new("jobs")?).max_attempts(2);
/// assert!(queue.enqueue("resize-42", "s3://bucket/42.png").await?);
/// assert!(!queue.enqueue("resize-42", "again").await?); // one item per id
///
/// let claim = queue.claim("agent-7", Duration::from_secs(30)).await?.expect("pending");
/// assert_eq!((claim.id.as_str(), claim.attempt), ("resize-42", 1));
/// assert_eq!(queue.fail(claim, "timeout").await?, ItemState::Pending); // retried later
///
/// let claim = queue.claim("agent-8", Duration::from_secs(30)).await?.expect("retry");
/// queue.complete(claim).await?;
/// assert_eq!(queue.status("resize-42").await?.unwrap().state, ItemState::Done);
/// # Ok::<_, swarmstate::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct WorkQueue {
    store: Arc<dyn StateStore>,
    name: Key,
    // Invariant: at least 1.
    max_attempts: u32,
}

/// One worker's claim on one item: the item's payload, which attempt this is, and the fencing
/// token of the claim. Hand it back to [`WorkQueue::complete`] or [`WorkQueue::fail`].
///
/// Clones share the lease: a [`heartbeat`](WorkQueue::heartbeat) through one clone is seen by
/// the others.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The item's id.
    pub id: String,
    /// The item's payload, as enqueued.
    pub payload: Bytes,
    /// The worker holding the claim.
    pub worker: String,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The revision that created this claim's lease: strictly greater than the token of every
    /// earlier claim of the item. A resource the worker writes to can keep the highest token
    /// it has seen (see [`FenceGate`](crate::lock::FenceGate)).
    pub token: FencingToken,
    queue: Key,
    lease: Duration,
    // The item record's revision as this claim wrote it; it does not change while claimed.
    item_revision: Revision,
    // The lease key's current revision: the token at first, then each heartbeat's.
    lease_revision: Arc<Mutex<Revision>>,
}

impl Claim {
    /// The lease each heartbeat renews.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lease_revision(&self) -> Revision {
        *self
            .lease_revision
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemState {
    /// Waiting to be claimed (never claimed, failed with attempts left, or its lease expired
    /// with attempts left).
    Pending,
    /// Claimed by a worker whose lease is live.
    Claimed,
    /// Completed; never handed out again.
    Done,
    /// Failed or abandoned on its last attempt: the dead-letter set. Never handed out again.
    Dead,
}

impl ItemState {
    fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Claimed => "claimed",
            ItemState::Done => "done",
            ItemState::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Option<ItemState> {
        Some(match text {
            "pending" => ItemState::Pending,
            "claimed" => ItemState::Claimed,
            "done" => ItemState::Done,
            "dead" => ItemState::Dead,
            _ => return None,
        })
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An item as [`WorkQueue::status`] and [`WorkQueue::list`] see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemStatus {
    /// The item's id.
    pub id: String,
    /// The item's state. A claim whose lease expired shows as `Pending` (attempts left) or
    /// `Dead` (none left), even before a claim has moved it.
    pub state: ItemState,
    /// How many times the item has been claimed.
    pub attempts: u32,
    /// The worker holding it, while `Claimed`.
    pub claimant: Option<String>,
    /// How long the claimant's lease has left when read, while `Claimed`.
    pub lease_left: Option<Duration>,
    /// The reason given by the last [`fail`](WorkQueue::fail), if any.
    pub last_error: Option<String>,
}

/// The item record, as stored under `Q.item.<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    state: ItemState,
    attempts: u32,
    claimant: Option<String>,
    error: Option<String>,
}

impl Record {
    fn encode(&self) -> Bytes {
        let mut text = format!("state={}\nattempts={}\n", self.state, self.attempts);
        if let Some(claimant) = &self.claimant {
            text.push_str(&format!("claimant={claimant}\n"));
        }
        if let Some(error) = &self.error {
            text.push_str(&format!("error={error}"));
        }
        Bytes::from(text)
    }

    fn decode(key: &Key, value: &[u8]) -> Result<Record> {
        let corrupt = |what: &str| Error::InvalidInput {
            message: format!("work item record {key} is malformed ({what})"),
        };
        let text = std::str::from_utf8(value).map_err(|_| corrupt("not UTF-8"))?;
        let mut rest = text;
        let mut field = |name: &str| -> Option<&str> {
            let line_end = rest.find('\n')?;
            let value = rest[..line_end].strip_prefix(name)?.strip_prefix('=')?;
            rest = &rest[line_end + 1..];
            Some(value)
        };
        let state = field("state")
            .and_then(ItemState::parse)
            .ok_or_else(|| corrupt("state"))?;
        let attempts = field("attempts")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("attempts"))?;
        let claimant = field("claimant").map(str::to_owned);
        let error = match rest.strip_prefix("error=") {
            Some(error) => Some(error.to_owned()),
            None if rest.is_empty() => None,
            None => return Err(corrupt("trailing text")),
        };
        Ok(Record {
            state,
            attempts,
            claimant,
            error,
        })
    }
}

impl WorkQueue {
    /// A queue whose keys all live under `name.` in `store`. Nothing is written until the first
    /// [`enqueue`](WorkQueue::enqueue).
    pub fn new(store: Arc<dyn StateStore>, name: Key) -> WorkQueue {
        WorkQueue {
            store,
            name,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Sets how many claims an item gets (default [`DEFAULT_MAX_ATTEMPTS`]): after a failure
    /// or an expired lease on the last attempt, the item is dead-lettered.
    ///
    /// # Panics
    /// If `n` is 0: an item must be claimable at least once.
    pub fn max_attempts(mut self, n: u32) -> WorkQueue {
        assert!(n >= 1, "a work queue needs max_attempts >= 1, got 0");
        self.max_attempts = n;
        self
    }

    /// The queue's name: the prefix of all its keys.
    pub fn name(&self) -> &Key {
        &self.name
    }

    fn key(&self, kind: &str, id: &str) -> Result<Key> {
        Key::new(format!("{}.{kind}.{id}", self.name))
    }

    fn index(&self, kind: &str) -> Result<Pattern> {
        Ok(Pattern::prefix(&Key::new(format!("{}.{kind}", self.name))?))
    }

    /// Checks an item id: one key token (`A-Z a-z 0-9 _ - / =`, no dot), and short enough that
    /// the item's keys stay within the key length limit.
    fn check_id(&self, id: &str) -> Result<()> {
        if id.contains('.') {
            return Err(Error::InvalidInput {
                message: format!("work item id {id:?} must be one key token, without dots"),
            });
        }
        Key::new(id)?;
        // The longest key of an item; if it fits, they all do.
        self.key("payload", id)?;
        Ok(())
    }

    /// Adds an item with `payload`, pending. Returns `true` if it was added and `false` if an
    /// item with this id already exists in any state (also done or dead): enqueuing the same id
    /// twice yields one item, and the first payload stays.
    ///
    /// Atomic: the record, the payload and the pending index are written in one transaction.
    /// Errors: [`Error::InvalidKey`] or [`Error::InvalidInput`] for an id that is not one key
    /// token, [`Error::ValueTooLarge`] for a payload over the store's limit; nothing is written.
    pub async fn enqueue(&self, id: &str, payload: impl Into<Bytes>) -> Result<bool> {
        self.check_id(id)?;
        let item = self.key("item", id)?;
        let record = Record {
            state: ItemState::Pending,
            attempts: 0,
            claimant: None,
            error: None,
        };
        let ops = vec![
            TxnOp::put(&item, record.encode()).when(Condition::Absent),
            TxnOp::put(&self.key("payload", id)?, payload),
            TxnOp::put(&self.key("pending", id)?, Bytes::new()),
        ];
        match self.store.txn(ops).await {
            Ok(_) => Ok(true),
            Err(Error::AlreadyExists { key, .. }) if key == item => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Claims one claimable item for `worker` for `lease`, or returns `None` at once if there is
    /// none. Claimable: pending, or claimed with an expired lease and attempts left (that counts
    /// as a new attempt). An expired claim without attempts left met on the way is moved to the
    /// dead-letter set.
    ///
    /// Two concurrent claimers never get the same item: the claim is one transaction
    /// conditioned on the item record's revision and on the lease key being absent. Items are
    /// handed out in no particular order (each claimer starts at a random place, so concurrent
    /// claimers rarely collide).
    ///
    /// Pending items go first: only when none is pending does it look for expired claims.
    ///
    /// Cost: one key listing of the pending index; only when it is empty, listings of the
    /// `claimed` index and of the live leases. Then, per candidate tried, two reads (record and
    /// payload, concurrently) and one transaction; a candidate lost to another claimer moves on
    /// to the next one.
    ///
    /// Errors: [`Error::InvalidInput`] for an empty or over-long worker name, a worker name with
    /// control characters, or a lease outside the TTL range; nothing is written.
    pub async fn claim(&self, worker: &str, lease: Duration) -> Result<Option<Claim>> {
        check_worker(worker)?;
        validate_ttl(lease)?;
        let mut previous: Option<Vec<String>> = None;
        let mut unchanged_rounds = 0;
        loop {
            let pending = self.ids("pending").await?;
            let (ids, expired) = if pending.is_empty() {
                (self.expired_claims().await?, true)
            } else {
                (pending, false)
            };
            // Every candidate of the last round was lost, so the indexes must have moved on.
            // If they keep reading the same, they disagree with the item records (written
            // around this recipe), and looking again would loop forever.
            if previous.as_ref() == Some(&ids) {
                unchanged_rounds += 1;
            }
            if ids.is_empty() || unchanged_rounds >= MAX_UNCHANGED_ROUNDS {
                return Ok(None);
            }
            let start = random_below(worker, ids.len());
            let mut dead_lettered = false;
            for id in ids[start..].iter().chain(&ids[..start]) {
                match self.try_claim(id, expired, worker, lease).await? {
                    Attempt::Claimed(claim) => return Ok(Some(claim)),
                    Attempt::DeadLettered => dead_lettered = true,
                    Attempt::Lost => {}
                }
            }
            previous = (!dead_lettered).then_some(ids);
        }
    }

    /// The ids of the items in one index (`pending` or `claimed` or `lease`), sorted.
    async fn ids(&self, kind: &str) -> Result<Vec<String>> {
        let pattern = self.index(kind)?;
        let prefix_len = self.name.as_str().len() + kind.len() + 2;
        self.store
            .keys(&pattern)
            .await?
            .map_ok(|key| key.as_str()[prefix_len..].to_owned())
            .try_collect()
            .await
    }

    /// Items whose record says claimed but whose lease is gone.
    async fn expired_claims(&self) -> Result<Vec<String>> {
        let (claimed, leased) = futures::try_join!(self.ids("claimed"), self.ids("lease"))?;
        Ok(claimed
            .into_iter()
            .filter(|id| leased.binary_search(id).is_err())
            .collect())
    }

    /// Tries to claim item `id` found in the pending index, or (`expired`) in the claimed index
    /// without a live lease.
    async fn try_claim(
        &self,
        id: &str,
        expired: bool,
        worker: &str,
        lease: Duration,
    ) -> Result<Attempt> {
        let expected_state = if expired {
            ItemState::Claimed
        } else {
            ItemState::Pending
        };
        let item = self.key("item", id)?;
        let lease_key = self.key("lease", id)?;
        let payload_key = self.key("payload", id)?;
        let (entry, payload) =
            futures::try_join!(self.store.get(&item), self.store.get(&payload_key))?;
        let Some(entry) = entry else {
            return Ok(Attempt::Lost);
        };
        let record = Record::decode(&item, &entry.value)?;
        if record.state != expected_state {
            return Ok(Attempt::Lost);
        }
        let Some(payload) = payload.map(|entry| entry.value) else {
            return Err(Error::NotFound { key: payload_key });
        };
        let mut ops = Vec::with_capacity(4);
        let attempt = record.attempts + 1;
        if record.attempts >= self.max_attempts {
            // An expired last attempt; or a pending item failed by a handle allowing more
            // attempts than this one.
            let dead = Record {
                state: ItemState::Dead,
                claimant: None,
                ..record
            };
            let index = if expired { "claimed" } else { "pending" };
            ops.push(TxnOp::put(&item, dead.encode()).when(Condition::At(entry.revision)));
            ops.push(TxnOp::delete(&self.key(index, id)?));
            ops.push(TxnOp::check(&lease_key, Condition::Absent));
            return match self.store.txn(ops).await {
                Ok(_) => Ok(Attempt::DeadLettered),
                Err(err) if err.is_conflict() => Ok(Attempt::Lost),
                Err(err) => Err(err),
            };
        }
        let claimed = Record {
            state: ItemState::Claimed,
            attempts: attempt,
            claimant: Some(worker.to_owned()),
            error: record.error,
        };
        ops.push(TxnOp::put(&item, claimed.encode()).when(Condition::At(entry.revision)));
        ops.push(
            TxnOp::put(&lease_key, Bytes::from(worker.to_owned()))
                .ttl(lease)
                .when(Condition::Absent),
        );
        if expected_state == ItemState::Pending {
            ops.push(TxnOp::delete(&self.key("pending", id)?));
            ops.push(TxnOp::put(&self.key("claimed", id)?, Bytes::new()));
        }
        let results = match self.store.txn(ops).await {
            Ok(results) => results,
            Err(err) if err.is_conflict() => return Ok(Attempt::Lost),
            Err(err) => return Err(err),
        };
        let (TxnResult::Put(item_revision), TxnResult::Put(token)) = (&results[0], &results[1])
        else {
            unreachable!("puts in a transaction yield Put, got {results:?}");
        };
        Ok(Attempt::Claimed(Claim {
            id: id.to_owned(),
            payload,
            worker: worker.to_owned(),
            attempt,
            token: FencingToken(*token),
            queue: self.name.clone(),
            lease,
            item_revision: *item_revision,
            lease_revision: Arc::new(Mutex::new(*token)),
        }))
    }

    /// Like [`claim`](WorkQueue::claim), but when nothing is claimable waits up to `wait` for an
    /// item to become claimable (enqueued, failed back to pending, or its lease expired) and
    /// claims it. Returns `None` when the wait runs out.
    ///
    /// Driven by a watch on the queue's keys, never by polling: it tries again only when an
    /// item was put in the pending index or a lease expired. Another claimer may win the item
    /// it woke for; then it waits on for the rest of `wait`.
    pub async fn claim_wait(
        &self,
        worker: &str,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Claim>> {
        check_worker(worker)?;
        validate_ttl(lease)?;
        let deadline = Instant::now() + wait;
        let pending = self.index("pending")?;
        let leases = self.index("lease")?;
        // A busy queue answers at once, without the cost of opening a watch.
        if let Some(claim) = self.claim(worker, lease).await? {
            return Ok(Some(claim));
        }
        loop {
            // Watch before looking, so nothing that happens after the look is missed.
            let mut events = self
                .store
                .watch(&Pattern::prefix(&self.name), WatchStart::Now)
                .await?;
            if let Some(claim) = self.claim(worker, lease).await? {
                return Ok(Some(claim));
            }
            loop {
                let event = match tokio::time::timeout_at(deadline, events.next()).await {
                    Err(_) => return Ok(None),
                    // The stream ended or lagged: open a new watch and look again.
                    Ok(None | Some(WatchEvent::Lagged { .. })) => break,
                    Ok(Some(event)) => event,
                };
                let wakes = match &event {
                    WatchEvent::Put(entry) => pending.matches(&entry.key),
                    WatchEvent::Expire { key, .. } => leases.matches(key),
                    _ => false,
                };
                if wakes {
                    if let Some(claim) = self.claim(worker, lease).await? {
                        return Ok(Some(claim));
                    }
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Extends the claim's lease to `lease` from now, if the claim is still current; otherwise
    /// [`Error::LockLost`] (the lease expired, and perhaps someone else claimed the item) and
    /// nothing changes.
    pub async fn heartbeat(&self, claim: &Claim) -> Result<()> {
        self.check_claim(claim)?;
        let lease_key = self.key("lease", &claim.id)?;
        let options = PutOptions::update(claim.lease_revision()).ttl(claim.lease);
        match self
            .store
            .put(&lease_key, Bytes::from(claim.worker.clone()), options)
            .await
        {
            Ok(revision) => {
                *claim
                    .lease_revision
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = revision;
                Ok(())
            }
            Err(Error::RevisionMismatch { .. }) => Err(Error::LockLost { key: lease_key }),
            Err(other) => Err(other),
        }
    }

    /// Marks the claimed item done, if the claim is still current. Fenced and atomic: the
    /// record, the indexes and the lease change in one transaction conditioned on this claim's
    /// lease, so after the lease expired (and perhaps another worker claimed the item) this is
    /// [`Error::LockLost`] and nothing changes.
    pub async fn complete(&self, claim: Claim) -> Result<()> {
        self.complete_with(claim, Vec::new()).await.map(drop)
    }

    /// Like [`complete`](WorkQueue::complete), and applies `ops` in the same transaction: the
    /// item's result is written exactly when the item is completed, and never by a worker whose
    /// claim is stale. Returns the results of `ops`, in order.
    ///
    /// Errors: [`Error::LockLost`] for a stale claim; [`Error::InvalidInput`] if `ops` touch a
    /// key of this queue; a condition of `ops` that fails is reported as by
    /// [`StateStore::txn`]. On any error nothing changes.
    pub async fn complete_with(&self, claim: Claim, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        self.check_claim(&claim)?;
        if let Some(op) = ops
            .iter()
            .find(|op| Pattern::prefix(&self.name).matches(&op.key))
        {
            return Err(Error::InvalidInput {
                message: format!(
                    "an operation completing a work item must not touch the queue's own key {}",
                    op.key
                ),
            });
        }
        let done = Record {
            state: ItemState::Done,
            attempts: claim.attempt,
            claimant: None,
            error: None,
        };
        let own = self.finish_ops(&claim, done, false)?;
        let own_len = own.len();
        let mut all = own;
        all.extend(ops);
        let mut results = self.fenced_txn(&claim, all).await?;
        Ok(results.split_off(own_len))
    }

    /// Gives the claimed item up after a failed attempt, remembering `reason` (kept up to
    /// [`MAX_REASON_LEN`] bytes). Returns the item's new state: [`ItemState::Pending`] for a
    /// retry if it has attempts left, otherwise [`ItemState::Dead`].
    ///
    /// Fenced and atomic like [`complete`](WorkQueue::complete): a stale claim gets
    /// [`Error::LockLost`] and nothing changes.
    pub async fn fail(&self, claim: Claim, reason: &str) -> Result<ItemState> {
        self.check_claim(&claim)?;
        let state = if claim.attempt >= self.max_attempts {
            ItemState::Dead
        } else {
            ItemState::Pending
        };
        let record = Record {
            state,
            attempts: claim.attempt,
            claimant: None,
            error: Some(cut(reason, MAX_REASON_LEN).to_owned()),
        };
        let ops = self.finish_ops(&claim, record, state == ItemState::Pending)?;
        self.fenced_txn(&claim, ops).await?;
        Ok(state)
    }

    /// The operations that end a claim: the new record, the lease and `claimed` index removed,
    /// and the item back in the pending index if `retry`.
    fn finish_ops(&self, claim: &Claim, record: Record, retry: bool) -> Result<Vec<TxnOp>> {
        let mut ops = vec![
            TxnOp::put(&self.key("item", &claim.id)?, record.encode())
                .when(Condition::At(claim.item_revision)),
            TxnOp::delete(&self.key("lease", &claim.id)?)
                .when(Condition::At(claim.lease_revision())),
            TxnOp::delete(&self.key("claimed", &claim.id)?),
        ];
        if retry {
            ops.push(TxnOp::put(&self.key("pending", &claim.id)?, Bytes::new()));
        }
        Ok(ops)
    }

    /// Applies a transaction whose first operations end `claim`; a failed condition on the
    /// queue's own keys means the claim is stale.
    async fn fenced_txn(&self, claim: &Claim, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        let lease_key = self.key("lease", &claim.id)?;
        let own = Pattern::prefix(&self.name);
        match self.store.txn(ops).await {
            Err(Error::RevisionMismatch { key, .. } | Error::AlreadyExists { key, .. })
                if own.matches(&key) =>
            {
                Err(Error::LockLost { key: lease_key })
            }
            other => other,
        }
    }

    fn check_claim(&self, claim: &Claim) -> Result<()> {
        if claim.queue != self.name {
            return Err(Error::InvalidInput {
                message: format!(
                    "claim of item {} belongs to queue {}, not {}",
                    claim.id, claim.queue, self.name
                ),
            });
        }
        Ok(())
    }

    /// The item's status, or `None` if no item has this id. Two reads (record and lease).
    ///
    /// Errors: [`Error::InvalidKey`] or [`Error::InvalidInput`] for an invalid id.
    pub async fn status(&self, id: &str) -> Result<Option<ItemStatus>> {
        self.check_id(id)?;
        let item = self.key("item", id)?;
        let Some(entry) = self.store.get(&item).await? else {
            return Ok(None);
        };
        let lease = match Record::decode(&item, &entry.value)?.state {
            ItemState::Claimed => self.store.get(&self.key("lease", id)?).await?,
            _ => None,
        };
        self.describe(id, &entry, lease).map(Some)
    }

    /// Every item's status, sorted by id.
    ///
    /// Cost: one key listing and one read per item (done and dead items included), at most
    /// 16 at a time, plus one read per claimed item for its lease. Not a snapshot: each item is
    /// read on its own, so items moving meanwhile are seen as of their own read.
    pub async fn list(&self) -> Result<Vec<ItemStatus>> {
        let ids = self.ids("item").await?;
        futures::stream::iter(ids)
            .map(|id| async move {
                let status = self.status(&id).await?;
                Ok::<_, Error>(status)
            })
            .buffered(LIST_CONCURRENCY)
            .try_filter_map(|status| async move { Ok(status) })
            .try_collect()
            .await
    }

    /// The status an item record and its lease (if any) describe.
    fn describe(&self, id: &str, entry: &Entry, lease: Option<Entry>) -> Result<ItemStatus> {
        let record = Record::decode(&entry.key, &entry.value)?;
        let (state, claimant, lease_left) = match (record.state, lease) {
            (ItemState::Claimed, Some(lease)) => (
                ItemState::Claimed,
                record.claimant,
                Some(lease.expires_in.unwrap_or(Duration::ZERO)),
            ),
            // The lease expired: claimable again, or dead once the attempts are used up.
            (ItemState::Claimed, None) if record.attempts >= self.max_attempts => {
                (ItemState::Dead, None, None)
            }
            (ItemState::Claimed, None) => (ItemState::Pending, None, None),
            (state, _) => (state, None, None),
        };
        Ok(ItemStatus {
            id: id.to_owned(),
            state,
            attempts: record.attempts,
            claimant,
            lease_left,
            last_error: record.error,
        })
    }
}

enum Attempt {
    Claimed(Claim),
    DeadLettered,
    Lost,
}

fn check_worker(worker: &str) -> Result<()> {
    if worker.is_empty() || worker.len() > MAX_WORKER_LEN || worker.chars().any(char::is_control) {
        return Err(Error::InvalidInput {
            message: format!(
                "a worker name must be 1 to {MAX_WORKER_LEN} bytes without control characters, \
                 got {worker:?}"
            ),
        });
    }
    Ok(())
}

/// `text` cut to at most `limit` bytes, at a character boundary.
fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A number below `n` (at least 1), different on every call, to spread claimers over items.
fn random_below(worker: &str, n: usize) -> usize {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    worker.hash(&mut hasher);
    Instant::now().hash(&mut hasher);
    (hasher.finish() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: ItemState, claimant: Option<&str>, error: Option<&str>) -> Record {
        Record {
            state,
            attempts: 2,
            claimant: claimant.map(str::to_owned),
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn records_round_trip_through_their_text_encoding() {
        let key = Key::new("jobs.item.a").unwrap();
        for record in [
            record(ItemState::Pending, None, None),
            record(ItemState::Claimed, Some("worker-1"), None),
            record(
                ItemState::Claimed,
                Some("w"),
                Some("timeout\nsecond line\n"),
            ),
            record(ItemState::Dead, None, Some("")),
            record(ItemState::Done, None, Some("error=inside")),
        ] {
            let encoded = record.encode();
            assert_eq!(
                Record::decode(&key, &encoded).unwrap(),
                record,
                "{encoded:?}"
            );
        }
        assert_eq!(
            &record(ItemState::Claimed, Some("w-1"), Some("boom")).encode()[..],
            b"state=claimed\nattempts=2\nclaimant=w-1\nerror=boom"
        );
    }

    #[test]
    fn malformed_records_are_reported() {
        let key = Key::new("jobs.item.a").unwrap();
        for text in [
            &b""[..],
            b"state=lost\nattempts=1\n",
            b"state=done\nattempts=x\n",
            b"state=done\nattempts=1\nnoise",
            b"\xff",
        ] {
            let err = Record::decode(&key, text).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidInput { message } if message.contains("jobs.item.a")),
                "{err}"
            );
        }
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aéb", 3), "aé");
    }
}
