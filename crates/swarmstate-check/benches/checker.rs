//! How fast the checker is, in operations checked per second.
//!
//! `cargo bench -p swarmstate-check --bench checker` prints:
//! - a 10,000-operation history over 100 keys recorded from a real concurrent workload on
//!   `MemoryStore`, and a synthetic one of the same size;
//! - the checker beside the oracle of the tests (stateright's exhaustive
//!   `LinearizabilityTester`) on the same small histories, as a ratio;
//! - how the cost grows with operations of unknown outcome on one key.

#[path = "../tests/support/oracle.rs"]
mod oracle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmstate_check::generate::{Rng, Synthetic, corrupt_one_read, swap_one_read, synthetic};
use swarmstate_check::{History, Verdict, Workload, check};
use swarmstate_core::{MemoryStore, StateStore};

const LIMIT: Duration = Duration::from_secs(120);

/// Checks `history` `rounds` times and returns operations per second.
fn throughput(history: &History, rounds: usize) -> f64 {
    let started = Instant::now();
    for _ in 0..rounds {
        let checked = check(history, LIMIT);
        assert!(checked.verdict.is_ok(), "{checked}");
    }
    (history.operations.len() * rounds) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let recorded = runtime.block_on(async {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        Workload {
            clients: 8,
            keys: 100,
            duration: Duration::from_secs(30),
            max_operations: Some(10_000),
            ttl_fraction: 0.1,
            ttl: Some(Duration::from_millis(5)),
            ..Workload::default()
        }
        .record(store)
        .await
        .unwrap()
    });
    let rate = throughput(&recorded, 20);
    println!(
        "memory workload: {} operations over 100 keys: {rate:.0} operations checked/s",
        recorded.operations.len()
    );

    let generated = synthetic(&Synthetic {
        operations: 10_000,
        keys: 100,
        overlap: 400,
        ambiguous: 0.005,
        expiries: 0.02,
        checks: 0.0,
        seed: 11,
    });
    let rate = throughput(&generated, 20);
    println!(
        "synthetic: {} operations over 100 keys: {rate:.0} operations checked/s",
        generated.operations.len()
    );

    // Beside the oracle on the histories the oracle can afford: a few operations on one key.
    for size in [10, 13] {
        let (ours, oracle) = beside_the_oracle(size);
        println!(
            "{size}-operation histories: checker {ours:.0} ops/s, oracle {oracle:.0} ops/s, \
             ratio {:.1}x",
            ours / oracle
        );
    }

    // Unknown outcomes never return, so they stay concurrent with everything after them: an
    // Ok history is found quickly, but showing a violation means trying every subset of them
    // that could have applied.
    for ambiguous in [0.0, 0.005, 0.01, 0.02] {
        let mut history = synthetic(&Synthetic {
            operations: 2_000,
            keys: 1,
            overlap: 300,
            ambiguous,
            expiries: 0.02,
            checks: 0.0,
            seed: 5,
        });
        let started = Instant::now();
        let ok = check(&history, Duration::from_secs(30));
        let ok_time = started.elapsed();
        corrupt_one_read(&mut history, &mut Rng::new(5));
        let started = Instant::now();
        let corrupted = check(&history, Duration::from_secs(30));
        println!(
            "one key, 2,000 operations, {} unknown outcomes: {} in {ok_time:.3?}; \
             one read corrupted: {} in {:.3?}",
            ok.counts.ambiguous,
            verdict_word(&ok.verdict),
            verdict_word(&corrupted.verdict),
            started.elapsed()
        );
    }
}

fn verdict_word(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Ok => "Ok",
        Verdict::Violation(_) => "Violation",
        Verdict::Unknown(_) => "Unknown (time limit)",
    }
}

/// Operations per second of the checker and of the oracle on the same 300 small histories.
fn beside_the_oracle(size: usize) -> (f64, f64) {
    let small: Vec<History> = (0..300)
        .map(|seed| {
            let mut history = synthetic(&Synthetic {
                operations: size,
                keys: 1,
                overlap: 200,
                ambiguous: 0.1,
                expiries: 0.1,
                checks: 0.0,
                seed,
            });
            if seed % 3 == 0 {
                swap_one_read(&mut history, &mut Rng::new(seed));
            }
            history
        })
        .collect();
    let operations: usize = small.iter().map(|h| h.operations.len()).sum();
    let started = Instant::now();
    let ours: Vec<bool> = small
        .iter()
        .map(|h| check(h, LIMIT).verdict.is_ok())
        .collect();
    let ours_rate = operations as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let theirs: Vec<bool> = small.iter().map(oracle::linearizable).collect();
    let oracle_rate = operations as f64 / started.elapsed().as_secs_f64();
    assert_eq!(ours, theirs, "the checker and the oracle disagree");
    (ours_rate, oracle_rate)
}
