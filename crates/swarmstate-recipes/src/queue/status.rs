//! Reading items: one item's status, or every item's.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use swarmstate_core::{Entry, Error, Result};

use super::WorkQueue;
use super::layout::Slot;
use super::record::{ItemState, Record};

/// How many item records [`WorkQueue::list`] reads at once.
const LIST_CONCURRENCY: usize = 16;

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

impl WorkQueue {
    /// The item's status, or `None` if no item has this id. Two reads (record and lease).
    ///
    /// Errors: [`Error::InvalidKey`] or [`Error::InvalidInput`] for an invalid id.
    pub async fn status(&self, id: &str) -> Result<Option<ItemStatus>> {
        self.check_id(id)?;
        let item = self.layout.key(Slot::Item, id)?;
        let Some(entry) = self.store.get(&item).await? else {
            return Ok(None);
        };
        let lease = match Record::decode(&item, &entry.value)?.state {
            ItemState::Claimed => self.store.get(&self.layout.key(Slot::Lease, id)?).await?,
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
        let ids = self.ids(Slot::Item).await?;
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
