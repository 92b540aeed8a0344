//! The conformance suite through HTTP: HttpStore → a server on loopback → MemoryStore, and
//! → DiskStore; each case on a fresh server and store.

use std::sync::Arc;

mod support;

use swarmstate_core::{MemoryStore, StateStore};

async fn memory() -> Arc<dyn StateStore> {
    Arc::new(support::serve_memory().await)
}

async fn disk() -> Arc<dyn StateStore> {
    Arc::new(support::serve_disk().await)
}

swarmstate_conformance::conformance_tests!(memory);

mod on_disk {
    swarmstate_conformance::conformance_tests!(super::disk);
}

/// The suite again with a small store behind the server (4-event watch buffer, 1 KiB values).
mod small_limits {
    use super::*;

    async fn small() -> Arc<dyn StateStore> {
        let store = MemoryStore::builder()
            .watch_buffer(4)
            .max_value_size(1024)
            .build();
        Arc::new(support::serve(Arc::new(store), None).await)
    }

    swarmstate_conformance::conformance_tests!(small);
}

#[test]
fn every_case_runs_over_http() {
    let names: Vec<&str> = swarmstate_conformance::CASES
        .iter()
        .map(|case| case.name)
        .collect();
    assert_eq!(GENERATED_CASES, &names[..]);
    assert_eq!(on_disk::GENERATED_CASES, &names[..]);
    assert_eq!(small_limits::GENERATED_CASES, &names[..]);
}
