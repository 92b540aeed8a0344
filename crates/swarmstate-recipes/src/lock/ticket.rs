//! A waiter's ticket in the queue of a lock: its value, its place, its removal and its id.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use swarmstate_core::{Entry, Error, Key, Result, Revision, StateStore};

/// One of our tickets, as we last wrote it.
pub(super) struct Ticket {
    pub(super) key: Key,
    // The revision that created the ticket: its place in the queue.
    pub(super) order: Revision,
    // Invariant: the ticket's revision as of our last write to it.
    pub(super) revision: Revision,
    pub(super) refresh_at: Instant,
}

/// A ticket's value: the revision that created it (`0` for "this entry's own revision") and
/// the owner.
pub(super) fn ticket_value(created: u64, owner: &str) -> Bytes {
    Bytes::from(format!("{created} {owner}"))
}

/// A ticket's place in the queue: the creation revision its value records, else its own.
pub(super) fn ticket_order(entry: &Entry) -> u64 {
    std::str::from_utf8(&entry.value)
        .ok()
        .and_then(|text| text.split(' ').next())
        .and_then(|created| created.parse::<u64>().ok())
        .filter(|&created| created != 0)
        .unwrap_or(entry.revision.get())
}

/// Deletes one of our tickets, best effort (a ticket left behind expires on its own).
///
/// The delete is conditional on the ticket's last known revision, which spares the store a
/// read of the key first (a round trip on NATS). A mismatch means the ticket expired, or that
/// a refresh whose answer was lost applied after all. Since ids are reused (see
/// [`ticket_id`]), an expired ticket's key may by then hold another waiter's ticket: only an
/// entry that records our ticket's creation revision is ours to delete.
pub(super) async fn remove_ticket(store: &Arc<dyn StateStore>, ticket: Ticket) {
    let removed = match store.delete(&ticket.key, Some(ticket.revision)).await {
        Ok(_) | Err(Error::RevisionMismatch { actual: None, .. }) => Ok(()),
        Err(Error::RevisionMismatch { .. }) => remove_if_ours(store, &ticket).await,
        Err(err) => Err(err),
    };
    if let Err(err) = removed {
        tracing::debug!(key = %ticket.key, %err, "removing a lock ticket failed");
    }
}

/// Deletes whatever is at our ticket's key if it is our ticket: the revisions that created
/// tickets are distinct, so an entry whose recorded order is ours was written by us.
async fn remove_if_ours(store: &Arc<dyn StateStore>, ticket: &Ticket) -> Result<()> {
    match store.get(&ticket.key).await? {
        Some(entry) if ticket_order(&entry) == ticket.order.get() => store
            .delete(&ticket.key, Some(entry.revision))
            .await
            .map(drop),
        _ => Ok(()),
    }
}

/// The id of a waiter's ticket: for `owner`, the candidate numbered `attempt` (from 0), in
/// 16 hex digits.
///
/// Choosing an id needs no state shared between waiters, in one process or in many: a ticket
/// is written with a create, which only one writer of a key can win, so two live tickets never
/// share a key however their ids were chosen, and a waiter whose candidate is taken tries the
/// next one. What the choice does decide is how many keys a lock's queue wears out. A deleted
/// key can leave a marker behind (a NATS bucket keeps one tombstone per key) that every later
/// snapshot of the queue, which each waiter opens, reads past, so a new key for every wait
/// would make each wait on a busy lock slower than the last. Derived from the owner name, an
/// owner's ids are the same in every wait and in every process: a lock's queue uses about one
/// key per owner that ever waited on it, more only for an owner with several waits queued at
/// once (each of those pays one refused create per candidate taken before its own). The pool of
/// removed ids this replaces was shared by every store in the process and started empty in
/// every new one. The hash is FNV-1a, fixed by its definition, where `RandomState` or
/// `DefaultHasher` may differ between processes or Rust versions.
pub(super) fn ticket_id(owner: &str, attempt: u64) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = owner.bytes().chain([0xff]).chain(attempt.to_le_bytes());
    let hash = bytes.fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use swarmstate_core::{MemoryStore, PutOptions};

    use super::*;

    fn ticket(key: &Key, order: Revision, revision: Revision) -> Ticket {
        Ticket {
            key: key.clone(),
            order,
            revision,
            refresh_at: Instant::now(),
        }
    }

    /// A ticket that expired may have its key taken by another waiter of the same owner before
    /// its own waiter removes it: the removal must leave the other ticket alone, and still
    /// delete our own ticket after a refresh whose answer was lost.
    #[tokio::test]
    async fn removing_a_stale_ticket_deletes_only_our_own() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let key = Key::new("locks.a.waiters.0123456789abcdef").unwrap();
        let value = || Bytes::from_static(b"0 agent");
        let ours = store
            .put(&key, value(), PutOptions::create())
            .await
            .unwrap();
        store.delete(&key, Some(ours)).await.unwrap();
        let theirs = store
            .put(&key, value(), PutOptions::create())
            .await
            .unwrap();
        remove_ticket(&store, ticket(&key, ours, ours)).await;
        let left = store.get(&key).await.unwrap().expect("their ticket stays");
        assert_eq!(left.revision, theirs);

        store.delete(&key, Some(theirs)).await.unwrap();
        let created = store
            .put(&key, value(), PutOptions::create())
            .await
            .unwrap();
        // Our refresh applied, but we never learned its revision.
        let refreshed = ticket_value(created.get(), "agent");
        store
            .put(&key, refreshed, PutOptions::update(created))
            .await
            .unwrap();
        remove_ticket(&store, ticket(&key, created, created)).await;
        assert_eq!(store.get(&key).await.unwrap(), None);
    }

    #[test]
    fn ticket_ids_are_fixed_per_owner_and_attempt() {
        assert_eq!(ticket_id("agent-1", 0), ticket_id("agent-1", 0));
        assert_eq!(ticket_id("agent-1", 0).len(), 16);
        let ids: std::collections::HashSet<String> = ["agent-1", "agent-2", "agent-10"]
            .iter()
            .flat_map(|owner| (0..3).map(move |attempt| ticket_id(owner, attempt)))
            .collect();
        assert_eq!(ids.len(), 9, "{ids:?}");
    }
}
