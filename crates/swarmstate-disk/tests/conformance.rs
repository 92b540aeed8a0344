//! The conformance suite on `DiskStore`, each case on a fresh store in its own temporary
//! directory: once with the defaults, and once with small limits and one-write groups.

use std::sync::Arc;

#[path = "support/temp.rs"]
mod temp;

use swarmstate_core::StateStore;
use swarmstate_disk::{DiskStore, DiskStoreBuilder};
use temp::InTempDir;

async fn fresh(build: impl FnOnce(DiskStoreBuilder) -> DiskStoreBuilder) -> Arc<dyn StateStore> {
    let dir = tempfile::tempdir().unwrap();
    let store = build(DiskStore::builder(dir.path())).open().await.unwrap();
    Arc::new(InTempDir { store, dir })
}

swarmstate_conformance::conformance_tests!(|| fresh(|builder| builder));

/// The suite again with a 4-event watch buffer, 1 KiB values and groups of one write.
mod small_limits {
    use super::fresh;

    swarmstate_conformance::conformance_tests!(|| fresh(|builder| builder
        .watch_buffer(4)
        .max_value_size(1024)
        .max_batch_writes(1)));
}

#[test]
fn every_case_runs_on_disk() {
    let names: Vec<&str> = swarmstate_conformance::CASES
        .iter()
        .map(|case| case.name)
        .collect();
    assert_eq!(GENERATED_CASES, &names[..]);
    assert_eq!(small_limits::GENERATED_CASES, &names[..]);
}
