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
//!
//! One concern per file: `layout` (every key above, built from a slot and an id, and parsed
//! back), `record` (the item record and its encoding), `claim` (claiming, and waiting for a
//! claimable item), `finish` (heartbeat, complete, fail) and `status` (reading items).
//!
//! [`FencingToken`]: crate::lock::FencingToken

mod claim;
mod finish;
mod layout;
mod record;
mod status;

use std::sync::Arc;

use bytes::Bytes;

use swarmstate_core::{Condition, Error, Key, Result, StateStore, TxnOp};

pub use claim::{Claim, ClaimHandle};
pub use finish::MAX_REASON_LEN;
pub use record::ItemState;
pub use status::ItemStatus;

use layout::{Layout, Slot};
use record::Record;

/// The default number of attempts an item gets before it is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

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
    layout: Layout,
    // Invariant: at least 1.
    max_attempts: u32,
}

impl WorkQueue {
    /// A queue whose keys all live under `name.` in `store`. Nothing is written until the first
    /// [`enqueue`](WorkQueue::enqueue).
    pub fn new(store: Arc<dyn StateStore>, name: Key) -> WorkQueue {
        WorkQueue {
            store,
            layout: Layout::new(name),
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
        self.layout.name()
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
        self.layout.check_fits(id)
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
        let item = self.layout.key(Slot::Item, id)?;
        let record = Record {
            state: ItemState::Pending,
            attempts: 0,
            claimant: None,
            error: None,
        };
        let ops = vec![
            TxnOp::put(&item, record.encode()).when(Condition::Absent),
            TxnOp::put(&self.layout.key(Slot::Payload, id)?, payload),
            TxnOp::put(&self.layout.key(Slot::Pending, id)?, Bytes::new()),
        ];
        match self.store.txn(ops).await {
            Ok(_) => Ok(true),
            Err(Error::AlreadyExists { key, .. }) if key == item => Ok(false),
            Err(other) => Err(other),
        }
    }
}
