//! A store and the temporary directory it lives in, removed when the store is dropped.

#![allow(dead_code, unreachable_pub)]

use swarmstate_core::StateStore;
use swarmstate_disk::DiskStore;
use tempfile::TempDir;

#[derive(Debug)]
pub struct InTempDir {
    pub store: DiskStore,
    pub dir: TempDir,
}

impl StateStore for InTempDir {
    swarmstate_core::forward_state_store!(|s| &s.store);
}
