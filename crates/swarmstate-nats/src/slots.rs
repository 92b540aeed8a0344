//! The reserved subjects that carry this client's read barriers (see
//! [`Bucket::barrier`](crate::bucket::Bucket::barrier)), and what each remembers of the barriers
//! it carried.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::wire;

/// How long a read barrier stays in the bucket when its slot is not used again: long enough
/// that a reused slot finds its own last barrier there (see [`BarrierSlots::take`]), short
/// enough that the slots of clients that went away do not pile up.
pub(crate) const BARRIER_TTL: Duration = Duration::from_secs(600);

/// A reserved subject that carries this client's read barriers, one read at a time.
#[derive(Debug)]
pub(crate) struct BarrierSlot {
    pub(crate) id: u64,
    // The sequences of the barriers acknowledged on this subject, newest first, at most
    // `wire::REPLACES_KEPT`: the newest is the message the next barrier replaces, the others
    // were replaced before. Each barrier lists them all, so that a watcher that missed several
    // in a row can still tell every hole they left.
    pub(crate) earlier: VecDeque<u64>,
    used: Instant,
}

impl BarrierSlot {
    /// Records the barrier the server acknowledged at `sequence` on this slot.
    pub(crate) fn acknowledged(&mut self, sequence: u64) {
        self.earlier.push_front(sequence);
        self.earlier.truncate(wire::REPLACES_KEPT);
        self.used = Instant::now();
    }
}

/// The barrier slots not in use. A slot is one reserved subject, used by one read at a time, so
/// that each barrier knows which earlier barrier it replaces.
#[derive(Debug, Default)]
pub(crate) struct BarrierSlots {
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    slots: Vec<BarrierSlot>,
    next_id: u64,
}

impl BarrierSlots {
    /// A slot for one barrier: an idle one, or a new one.
    pub(crate) fn take(&self) -> BarrierSlot {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(slot) = idle.slots.pop() {
            // Its last barrier may have expired (leaving a marker the next one would replace
            // unannounced): start a new slot rather than guess.
            if slot.used.elapsed() < BARRIER_TTL / 2 {
                return slot;
            }
        }
        idle.next_id += 1;
        BarrierSlot {
            id: idle.next_id,
            earlier: Default::default(),
            used: Instant::now(),
        }
    }

    /// Makes `slot` available again. Only a slot whose every barrier's outcome is known may be
    /// given back: the next barrier on it must know which messages it replaces.
    pub(crate) fn give_back(&self, slot: BarrierSlot) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.slots.push(slot);
    }
}
