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
//!
//! One concern per file: `fencing` (tokens and the gate a resource keeps), `acquire` (try
//! once), `wait` and `ticket` (the queue of waiters and the blocking acquire), `guard` (the
//! held lock and fenced writes), `keep_alive`, and `watch` (the lock key's presence, for the
//! waiters and the keep-alive).
//!
//! [`StateStore`]: swarmstate_core::StateStore

mod acquire;
mod fencing;
mod guard;
mod keep_alive;
mod ticket;
mod wait;
mod watch;

pub use acquire::{MAX_OWNER_LEN, acquire_lock};
pub use fencing::{FenceGate, FencingToken, StaleToken};
pub use guard::{LockGuard, LockHandle};
pub use keep_alive::KeepAlive;
pub use wait::{LOCK_WAITERS_TOKEN, MAX_TICKET_TTL, acquire_lock_wait, lock_waiters_prefix};

pub(crate) use acquire::validate_lock_input;
pub(crate) use wait::acquire_waiting;
