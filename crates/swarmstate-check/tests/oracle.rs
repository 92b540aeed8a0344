//! Cross-checks the checker against an independent oracle on many small random histories.
//!
//! The oracle is `stateright`'s `LinearizabilityTester`: an exhaustive search over the
//! interleavings of per-thread histories, with operations still in flight allowed to have
//! happened or not. It shares no code and not even the algorithm with our checker (no linked
//! list, no memoisation, no backtracking over lifted entries), which is what an oracle should
//! be; its cost is exponential, so it only sees small histories. The sequential register it
//! checks against is written out again here, plainly.

#[path = "support/oracle.rs"]
mod oracle;

use std::time::Duration;

use swarmstate_check::check;
use swarmstate_check::generate::{Rng, Synthetic, swap_one_read, synthetic};

#[test]
fn the_checker_agrees_with_the_oracle_on_small_random_histories() {
    let mut ok = 0;
    let mut violations = 0;
    let mut expiries_of_values = 0;
    for seed in 0..1000 {
        let mut history = synthetic(&Synthetic {
            operations: 10,
            keys: 1,
            overlap: 100 + 50 * (seed % 5),
            ambiguous: 0.1 + 0.1 * (seed % 3) as f64,
            expiries: 0.1,
            checks: 0.0,
            seed,
        });
        if seed % 3 != 0 {
            let mut rng = Rng::new(seed);
            swap_one_read(&mut history, &mut rng);
        }
        expiries_of_values += history
            .operations
            .iter()
            .filter(|op| matches!(op.input, swarmstate_check::Input::ExpireOf { .. }))
            .count();
        let ours = check(&history, Duration::from_secs(10));
        let theirs = oracle::linearizable(&history);
        assert_eq!(
            ours.verdict.is_ok(),
            theirs,
            "seed {seed}: the checker says {ours}, the oracle says linearizable = {theirs}\n{history}"
        );
        assert!(!matches!(
            ours.verdict,
            swarmstate_check::Verdict::Unknown(_)
        ));
        if theirs {
            ok += 1;
        } else {
            violations += 1;
        }
    }
    // Both kinds of history were sampled, so agreement means something.
    println!("{ok} linearizable, {violations} not, {expiries_of_values} expiries of values");
    assert!(
        expiries_of_values > 10,
        "{expiries_of_values} expiries of values"
    );
    assert!(
        ok > 150 && violations > 100,
        "{ok} linearizable, {violations} not"
    );
}

#[test]
fn the_checker_agrees_with_the_oracle_on_histories_with_checks() {
    let mut ok = 0;
    let mut violations = 0;
    for seed in 0..1000 {
        let mut history = synthetic(&Synthetic {
            operations: 10,
            keys: 1,
            overlap: 100 + 50 * (seed % 5),
            ambiguous: 0.1 + 0.1 * (seed % 3) as f64,
            expiries: 0.1,
            checks: 0.4,
            seed,
        });
        if seed % 3 != 0 {
            let mut rng = Rng::new(seed);
            swap_one_read(&mut history, &mut rng);
        }
        let ours = check(&history, Duration::from_secs(10));
        let theirs = oracle::linearizable(&history);
        assert_eq!(
            ours.verdict.is_ok(),
            theirs,
            "seed {seed}: the checker says {ours}, the oracle says linearizable = {theirs}\n{history}"
        );
        if theirs {
            ok += 1;
        } else {
            violations += 1;
        }
    }
    // Checks replace some of the reads a swap needs, so fewer histories are made wrong.
    println!("{ok} linearizable, {violations} not");
    assert!(
        ok > 150 && violations > 50,
        "{ok} linearizable, {violations} not"
    );
}
