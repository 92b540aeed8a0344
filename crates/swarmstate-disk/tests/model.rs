//! The model-based property test (`swarmstate_conformance::model`) on `DiskStore`: every step
//! goes through the group-commit writer and a real redb file, on paused time (the writer's
//! blocking commits hold the paused clock still, so it moves only when the test advances it).
//! What survives a reopen is checked in `reopen.rs`.

#[path = "support/temp.rs"]
mod temp;

use std::sync::Arc;

use proptest::test_runner::Config;
use proptest_state_machine::prop_state_machine;
use swarmstate_conformance::model::{ModelBackend, ModelTest};
use swarmstate_core::StateStore;
use swarmstate_disk::DiskStore;
use temp::InTempDir;

struct Disk;

impl ModelBackend for Disk {
    fn open(runtime: &tokio::runtime::Runtime) -> Arc<dyn StateStore> {
        let dir = tempfile::tempdir().unwrap();
        let store = runtime.block_on(DiskStore::open(dir.path())).unwrap();
        Arc::new(InTempDir { store, dir })
    }
}

prop_state_machine! {
    #![proptest_config(Config::with_cases(64))]

    #[test]
    fn disk_store_agrees_with_the_model(sequential 1..40 => ModelTest<Disk>);
}
