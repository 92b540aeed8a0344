//! Runs the conformance suite against `MemoryStore`: once with the default limits, and once
//! with small ones, to show the suite adapts to a backend's capabilities.

use std::collections::HashSet;
use std::sync::Arc;

use proptest::test_runner::Config;
use proptest_state_machine::prop_state_machine;
use swarmstate_conformance::CASES;
use swarmstate_conformance::model::{ModelBackend, ModelTest};
use swarmstate_core::{MemoryStore, StateStore};

async fn fresh_store() -> Arc<dyn StateStore> {
    Arc::new(MemoryStore::new())
}

swarmstate_conformance::conformance_tests!(fresh_store);

struct Memory;

impl ModelBackend for Memory {
    fn open(_: &tokio::runtime::Runtime) -> Arc<dyn StateStore> {
        Arc::new(MemoryStore::new())
    }
}

prop_state_machine! {
    #![proptest_config(Config::with_cases(256))]

    #[test]
    fn memory_store_agrees_with_the_model(sequential 1..40 => ModelTest<Memory>);
}

/// The suite again, on stores with a 4-event watch buffer and 1 KiB values.
mod small_limits {
    use std::sync::Arc;

    use swarmstate_core::MemoryStore;

    swarmstate_conformance::conformance_tests!(|| async {
        Arc::new(
            MemoryStore::builder()
                .watch_buffer(4)
                .max_value_size(1024)
                .build(),
        )
    });
}

#[test]
fn the_suite_has_at_least_forty_cases() {
    assert!(CASES.len() >= 40, "only {} cases", CASES.len());
}

#[test]
fn the_macro_generates_a_test_for_every_case_once() {
    let names: Vec<&str> = CASES.iter().map(|case| case.name).collect();
    assert_eq!(GENERATED_CASES, &names[..]);
    assert_eq!(small_limits::GENERATED_CASES, &names[..]);
    let unique: HashSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "case names are unique");
}

#[test]
fn case_names_are_sentences() {
    for case in CASES {
        assert!(
            case.name.split('_').count() >= 3
                && case
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{} is not a snake-case sentence",
            case.name
        );
    }
}

#[tokio::test]
async fn cases_run_from_the_list_too() {
    let case = CASES
        .iter()
        .find(|case| case.name == "update_with_a_stale_revision_conflicts")
        .expect("listed");
    (case.run)(fresh_store().await).await;
}
