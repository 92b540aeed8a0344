//! A waiter's ticket in the queue of a lock: its value, its place, its removal and its id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::time::Instant;

use swarmstate_core::{Entry, Error, Key, Revision, StateStore};

/// One of our tickets, as we last wrote it.
pub(super) struct Ticket {
    // The last token of `key`.
    pub(super) id: String,
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

/// Deletes one of our tickets; once it is known gone, its id becomes spare.
///
/// The delete is conditional on the ticket's last known revision, which spares the store a
/// read of the key first (a round trip on NATS). The ticket is ours alone, so a mismatch
/// means it expired, or that a refresh whose answer was lost applied after all: then delete
/// whatever is there.
pub(super) async fn remove_ticket(store: &Arc<dyn StateStore>, ticket: Ticket) {
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

pub(super) fn spare_ticket_id() -> Option<String> {
    SPARE_TICKET_IDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
}

/// A ticket id unique across processes: 64 random bits in hex.
pub(super) fn ticket_id() -> String {
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
