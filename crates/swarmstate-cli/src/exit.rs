//! Exit statuses, the same for every command:
//!
//! | status | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | not found, or a condition failed (the key exists, another revision, the lock is held) |
//! | 2 | an error: bad input, the store unavailable, an outcome unknown, ... |
//! | 3 | the lock was lost (`lock`) |
//!
//! `check` has its own (0 linearizable, 1 a violation, 3 unknown), and `demo` exits 1 when an
//! invariant failed.

use std::process::ExitCode;

use swarmstate::Error;

/// Not found, or a condition failed.
pub(crate) const NOT_FOUND: u8 = 1;
/// An error.
pub(crate) const ERROR: u8 = 2;
/// The lock was lost.
pub(crate) const LOCK_LOST: u8 = 3;

/// The status a command that failed with `err` exits with.
pub(crate) fn of_error(err: &anyhow::Error) -> ExitCode {
    ExitCode::from(match err.downcast_ref::<Error>() {
        Some(Error::NotFound { .. } | Error::LockHeld { .. }) => NOT_FOUND,
        Some(err) if err.is_conflict() => NOT_FOUND,
        Some(Error::LockLost { .. }) => LOCK_LOST,
        _ => ERROR,
    })
}
