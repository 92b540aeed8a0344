//! Ending or extending a claim: heartbeat, complete, fail. Every one is fenced by the claim's
//! lease.

use bytes::Bytes;

use swarmstate_core::{Condition, Error, PutOptions, Result, TxnOp, TxnResult};

use super::WorkQueue;
use super::claim::Claim;
use super::layout::Slot;
use super::record::{ItemState, Record};

/// The longest failure reason kept, in bytes; a longer one is cut at a character boundary.
pub const MAX_REASON_LEN: usize = 4096;

impl WorkQueue {
    /// Extends the claim's lease to `lease` from now, if the claim is still current; otherwise
    /// [`Error::LockLost`] (the lease expired, and perhaps someone else claimed the item) and
    /// nothing changes.
    pub async fn heartbeat(&self, claim: &Claim) -> Result<()> {
        self.check_claim(claim)?;
        let lease_key = self.layout.key(Slot::Lease, &claim.id)?;
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
    ///
    /// [`StateStore::txn`]: swarmstate_core::StateStore::txn
    pub async fn complete_with(&self, claim: Claim, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        self.check_claim(&claim)?;
        if let Some(op) = ops.iter().find(|op| self.layout.owns(&op.key)) {
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
            TxnOp::put(&self.layout.key(Slot::Item, &claim.id)?, record.encode())
                .when(Condition::At(claim.item_revision)),
            TxnOp::delete(&self.layout.key(Slot::Lease, &claim.id)?)
                .when(Condition::At(claim.lease_revision())),
            TxnOp::delete(&self.layout.key(Slot::Claimed, &claim.id)?),
        ];
        if retry {
            ops.push(TxnOp::put(
                &self.layout.key(Slot::Pending, &claim.id)?,
                Bytes::new(),
            ));
        }
        Ok(ops)
    }

    /// Applies a transaction whose first operations end `claim`; a failed condition on the
    /// queue's own keys means the claim is stale.
    async fn fenced_txn(&self, claim: &Claim, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        let lease_key = self.layout.key(Slot::Lease, &claim.id)?;
        match self.store.txn(ops).await {
            Err(Error::RevisionMismatch { key, .. } | Error::AlreadyExists { key, .. })
                if self.layout.owns(&key) =>
            {
                Err(Error::LockLost { key: lease_key })
            }
            other => other,
        }
    }

    fn check_claim(&self, claim: &Claim) -> Result<()> {
        if &claim.queue != self.layout.name() {
            return Err(Error::InvalidInput {
                message: format!(
                    "claim of item {} belongs to queue {}, not {}",
                    claim.id,
                    claim.queue,
                    self.layout.name()
                ),
            });
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aéb", 3), "aé");
    }
}
