//! Claiming items: one try ([`WorkQueue::claim`]) and the wait for a claimable item
//! ([`WorkQueue::claim_wait`]), driven by a watch of the queue.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use tokio::time::Instant;

use swarmstate_core::backend::validate_ttl;
use swarmstate_core::{Condition, Error, Key, Result, Revision, TxnOp, TxnResult, WatchEvent};

use super::WorkQueue;
use super::layout::Slot;
use super::record::{ItemState, Record};
use crate::follow::{Followed, Follower, OnLag, Start};
use crate::lock::FencingToken;

/// The longest worker name, in bytes.
const MAX_WORKER_LEN: usize = 256;

/// How many times in a row [`WorkQueue::claim`] may lose every candidate of an index listing
/// that did not change before it reports nothing claimable.
const MAX_UNCHANGED_ROUNDS: u32 = 3;

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
    pub(super) queue: Key,
    pub(super) lease: Duration,
    // The item record's revision as this claim wrote it; it does not change while claimed.
    pub(super) item_revision: Revision,
    // The lease key's current revision: the token at first, then each heartbeat's.
    pub(super) lease_revision: Arc<Mutex<Revision>>,
}

/// A claim as plain data, without its payload: what a process that does not keep the
/// [`Claim`] in memory (a server answering stateless requests) needs to act for the worker.
/// See [`Claim::handle`] and [`Claim::from_handle`].
///
/// A handle names one claim: a later claim of the item has a greater token and item revision,
/// and every heartbeat gives a greater lease revision, so only the newest handle of the current
/// claim passes a heartbeat, completion or failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHandle {
    /// The queue's name.
    pub queue: Key,
    /// The item's id.
    pub id: String,
    /// The worker holding the claim.
    pub worker: String,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The claim's fencing token.
    pub token: FencingToken,
    /// The lease each heartbeat renews.
    pub lease: Duration,
    /// The item record's revision as the claim wrote it.
    pub item_revision: Revision,
    /// The lease key's revision as of the last heartbeat (the token before the first).
    pub lease_revision: Revision,
}

impl Claim {
    /// The lease each heartbeat renews.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// This claim as plain data, with the lease revision of its last heartbeat.
    pub fn handle(&self) -> ClaimHandle {
        ClaimHandle {
            queue: self.queue.clone(),
            id: self.id.clone(),
            worker: self.worker.clone(),
            attempt: self.attempt,
            token: self.token,
            lease: self.lease,
            item_revision: self.item_revision,
            lease_revision: self.lease_revision(),
        }
    }

    /// The claim `handle` names, carrying `payload` (which no operation on a claim reads).
    /// Nothing is read or written here: whether it is still the current claim shows on the
    /// first heartbeat, completion or failure, which is [`Error::LockLost`] if it is not.
    ///
    /// Errors: [`Error::InvalidInput`] for an invalid worker name, a lease out of range, an
    /// attempt of 0, or a lease revision below the token (which no claim has).
    pub fn from_handle(handle: &ClaimHandle, payload: Bytes) -> Result<Claim> {
        check_worker(&handle.worker)?;
        validate_ttl(handle.lease)?;
        let token = handle.token.get();
        if handle.attempt == 0 || handle.lease_revision.get() < token {
            return Err(Error::InvalidInput {
                message: format!(
                    "claim of item {} is not one a queue hands out: attempt {}, token {}, lease \
                     revision {}",
                    handle.id, handle.attempt, handle.token, handle.lease_revision
                ),
            });
        }
        Ok(Claim {
            id: handle.id.clone(),
            payload,
            worker: handle.worker.clone(),
            attempt: handle.attempt,
            token: handle.token,
            queue: handle.queue.clone(),
            lease: handle.lease,
            item_revision: handle.item_revision,
            lease_revision: Arc::new(Mutex::new(handle.lease_revision)),
        })
    }

    pub(super) fn lease_revision(&self) -> Revision {
        *self
            .lease_revision
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl WorkQueue {
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
            let pending = self.ids(Slot::Pending).await?;
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

    /// The ids of the items with a key in `slot`, sorted (a listing is in key order, and the
    /// keys of one slot differ only in their id). Keys under the slot that are not in the
    /// layout (written around the recipe) are left out.
    pub(super) async fn ids(&self, slot: Slot) -> Result<Vec<String>> {
        let keys: Vec<Key> = self
            .store
            .keys(&self.layout.slot(slot)?)
            .await?
            .try_collect()
            .await?;
        Ok(keys
            .iter()
            .filter_map(|key| match self.layout.parse(key) {
                Some((listed, id)) if listed == slot => Some(id.to_owned()),
                _ => None,
            })
            .collect())
    }

    fn in_slot(&self, key: &Key, slot: Slot) -> bool {
        matches!(self.layout.parse(key), Some((listed, _)) if listed == slot)
    }

    /// Items whose record says claimed but whose lease is gone.
    async fn expired_claims(&self) -> Result<Vec<String>> {
        let (claimed, leased) = futures::try_join!(self.ids(Slot::Claimed), self.ids(Slot::Lease))?;
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
        let item = self.layout.key(Slot::Item, id)?;
        let lease_key = self.layout.key(Slot::Lease, id)?;
        let payload_key = self.layout.key(Slot::Payload, id)?;
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
            let index = if expired {
                Slot::Claimed
            } else {
                Slot::Pending
            };
            ops.push(TxnOp::put(&item, dead.encode()).when(Condition::At(entry.revision)));
            ops.push(TxnOp::delete(&self.layout.key(index, id)?));
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
            ops.push(TxnOp::delete(&self.layout.key(Slot::Pending, id)?));
            ops.push(TxnOp::put(
                &self.layout.key(Slot::Claimed, id)?,
                Bytes::new(),
            ));
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
            queue: self.layout.name().clone(),
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
        // A busy queue answers at once, without the cost of opening a watch.
        if let Some(claim) = self.claim(worker, lease).await? {
            return Ok(Some(claim));
        }
        // Watch before looking, so nothing that happens after the look is missed. After a lag
        // (or an end) the follower opens a new watch from now, and this looks again.
        let mut changes =
            Follower::open(&self.store, self.layout.all(), Start::Now, OnLag::Restart).await?;
        if let Some(claim) = self.claim(worker, lease).await? {
            return Ok(Some(claim));
        }
        loop {
            let followed = match tokio::time::timeout_at(deadline, changes.next()).await {
                Err(_) => return Ok(None),
                Ok(followed) => followed?,
            };
            let wakes = match &followed {
                Followed::Event(WatchEvent::Put(entry)) => self.in_slot(&entry.key, Slot::Pending),
                Followed::Event(WatchEvent::Expire { key, .. }) => self.in_slot(key, Slot::Lease),
                Followed::Restarted => true,
                Followed::Event(_) | Followed::Resumed => false,
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

/// A number below `n` (at least 1), different on every call, to spread claimers over items.
fn random_below(worker: &str, n: usize) -> usize {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    worker.hash(&mut hasher);
    Instant::now().hash(&mut hasher);
    (hasher.finish() % n as u64) as usize
}
