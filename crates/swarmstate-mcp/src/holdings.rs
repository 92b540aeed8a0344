//! What one MCP session holds: its locks, leaderships and claims, by name and token.
//!
//! Dropping the table (the session ended) drops the guards, which release their locks in the
//! background; a claim is simply left to its lease.

use std::collections::HashMap;

use swarmstate_recipes::lock::LockGuard;
use swarmstate_recipes::queue::Claim;

/// A session's holdings. Behind one async mutex per session: the operations on a holding are
/// short (a wait never holds it), and serializing them keeps a refresh and a fenced write of
/// one lock from racing.
#[derive(Debug, Default)]
pub(crate) struct Holdings {
    /// Locks and leaderships (an election's name is its leader lock's key; a term is a token).
    pub(crate) locks: HashMap<(String, u64), LockGuard>,
    /// Claims by queue, item id and token.
    pub(crate) claims: HashMap<(String, String, u64), Claim>,
}
