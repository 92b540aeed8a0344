//! The statistics the table reports: percentiles of latency samples, medians and spreads of
//! per-round figures, and how they are written.

use std::time::Duration;

/// The value at percentile `p` (0–100) of `sorted` by the nearest-rank method: the smallest
/// sample with at least `p`% of the samples at or below it. `None` for no samples.
///
/// `sorted` must be in ascending order; the result is always one of the samples.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: ceil(p/100 * n), counted from 1; rank 0 (p = 0) is the first sample.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.saturating_sub(1).min(sorted.len() - 1)])
}

/// The median of `values` (the mean of the two middle ones for an even count); `None` for
/// none. NaNs are not expected and sort last.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

/// The smallest and largest of `values`; `None` for none.
pub(crate) fn spread(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// What one measurement of one row on one target gave.
#[derive(Debug, Clone, Default)]
pub(crate) struct Round {
    /// Operations (or acquisitions, commits, deliveries) per second.
    pub(crate) rate: f64,
    /// Latency percentiles of this round: p50 and p99.
    pub(crate) p50: Option<Duration>,
    pub(crate) p99: Option<Duration>,
    /// Attempts per committed operation, for rows where an operation can be refused and
    /// retried.
    pub(crate) attempts_per_op: Option<f64>,
}

impl Round {
    /// A round of `ops` operations in `elapsed`, with every operation's latency in `latencies`
    /// (any order) and `attempts` attempts in all.
    pub(crate) fn new(
        ops: u64,
        attempts: u64,
        elapsed: Duration,
        mut latencies: Vec<Duration>,
    ) -> Round {
        latencies.sort_unstable();
        let seconds = elapsed.as_secs_f64();
        Round {
            rate: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            attempts_per_op: (ops > 0 && attempts != ops).then(|| attempts as f64 / ops as f64),
        }
    }
}

/// The rounds of one row on one target, summarised: medians over rounds, and the spread of
/// the rate.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub(crate) rounds: usize,
    pub(crate) rate: f64,
    pub(crate) rate_spread: (f64, f64),
    pub(crate) p50: Option<Duration>,
    pub(crate) p99: Option<Duration>,
    pub(crate) p99_spread: Option<(Duration, Duration)>,
    pub(crate) attempts_per_op: Option<f64>,
}

impl Summary {
    /// Summarises `rounds`; a summary of no rounds has a zero rate and no latencies.
    pub(crate) fn of(rounds: &[Round]) -> Summary {
        let rates: Vec<f64> = rounds.iter().map(|round| round.rate).collect();
        let seconds = |pick: fn(&Round) -> Option<Duration>| -> Vec<f64> {
            rounds
                .iter()
                .filter_map(pick)
                .map(|d| d.as_secs_f64())
                .collect()
        };
        let p50s = seconds(|round| round.p50);
        let p99s = seconds(|round| round.p99);
        let attempts: Vec<f64> = rounds.iter().filter_map(|r| r.attempts_per_op).collect();
        Summary {
            rounds: rounds.len(),
            rate: median(&rates).unwrap_or(0.0),
            rate_spread: spread(&rates).unwrap_or((0.0, 0.0)),
            p50: median(&p50s).map(Duration::from_secs_f64),
            p99: median(&p99s).map(Duration::from_secs_f64),
            p99_spread: spread(&p99s)
                .map(|(lo, hi)| (Duration::from_secs_f64(lo), Duration::from_secs_f64(hi))),
            attempts_per_op: median(&attempts),
        }
    }
}

/// A rate of `unit` with thousands separators and a precision that suits its size:
/// `12,345 ops/s`, `987 ops/s`, `3.2 ops/s`.
pub(crate) fn format_rate(rate: f64, unit: &str) -> String {
    if rate >= 100.0 {
        format!("{} {unit}/s", thousands(rate.round() as u64))
    } else {
        format!("{rate:.1} {unit}/s")
    }
}

/// A plain number with thousands separators, rounded: `1,234,568`.
pub(crate) fn format_count(value: f64) -> String {
    thousands(value.round() as u64)
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A latency in the unit that keeps three significant figures readable: `850 µs`,
/// `1.23 ms`, `12.3 ms`, `1.50 s`.
pub(crate) fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 10_000.0 {
        format!("{:.2} ms", micros / 1e3)
    } else if micros < 1_000_000.0 {
        format!("{:.1} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// A ratio: `3.4×`, `0.85×`, `12×`.
pub(crate) fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else if ratio >= 1.0 {
        format!("{ratio:.1}×")
    } else {
        format!("{ratio:.2}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&ms| Duration::from_millis(ms)).collect()
    }

    #[test]
    fn percentile_is_the_nearest_rank_sample() {
        let samples = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&samples, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&samples, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(
            percentile(&samples, 100.0),
            Some(Duration::from_millis(100))
        );
        assert_eq!(percentile(&samples, 0.0), Some(Duration::from_millis(1)));
        // With 10 samples the 99th percentile is the largest: ceil(9.9) = rank 10.
        let ten = millis(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(percentile(&ten, 99.0), Some(Duration::from_millis(10)));
        assert_eq!(percentile(&ten, 50.0), Some(Duration::from_millis(5)));
    }

    #[test]
    fn percentile_of_no_samples_is_none_and_of_one_is_that_sample() {
        assert_eq!(percentile(&[], 50.0), None);
        let one = millis(&[7]);
        assert_eq!(percentile(&one, 1.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&one, 99.0), Some(Duration::from_millis(7)));
    }

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn spread_is_min_and_max() {
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[2.0, 8.0, 5.0]), Some((2.0, 8.0)));
    }

    #[test]
    fn a_round_counts_rate_percentiles_and_retries() {
        let round = Round::new(200, 300, Duration::from_secs(2), millis(&[5, 1, 3, 2, 4]));
        assert_eq!(round.rate, 100.0);
        assert_eq!(round.p50, Some(Duration::from_millis(3)));
        assert_eq!(round.p99, Some(Duration::from_millis(5)));
        assert_eq!(round.attempts_per_op, Some(1.5));
        // One attempt per operation is not worth a column.
        let plain = Round::new(10, 10, Duration::from_secs(1), millis(&[1]));
        assert_eq!(plain.attempts_per_op, None);
    }

    #[test]
    fn a_summary_takes_medians_over_rounds() {
        let rounds = [
            Round::new(100, 100, Duration::from_secs(1), millis(&[1, 9])),
            Round::new(300, 100, Duration::from_secs(1), millis(&[3, 3])),
            Round::new(200, 100, Duration::from_secs(1), millis(&[2, 5])),
        ];
        let summary = Summary::of(&rounds);
        assert_eq!(summary.rounds, 3);
        assert_eq!(summary.rate, 200.0);
        assert_eq!(summary.rate_spread, (100.0, 300.0));
        assert_eq!(summary.p99, Some(Duration::from_millis(5)));
        let (lo, hi) = summary.p99_spread.unwrap();
        assert_eq!((lo.as_millis(), hi.as_millis()), (3, 9));
    }

    #[test]
    fn numbers_are_written_for_reading() {
        assert_eq!(format_rate(1_234_567.4, "ops"), "1,234,567 ops/s");
        assert_eq!(format_rate(999.6, "commits"), "1,000 commits/s");
        assert_eq!(format_rate(3.24, "ops"), "3.2 ops/s");
        assert_eq!(format_count(12_000.0), "12,000");
        assert_eq!(format_duration(Duration::from_micros(850)), "850 µs");
        assert_eq!(format_duration(Duration::from_micros(1_234)), "1.23 ms");
        assert_eq!(format_duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(format_duration(Duration::from_millis(1_500)), "1.50 s");
        assert_eq!(format_ratio(12.4), "12×");
        assert_eq!(format_ratio(3.44), "3.4×");
        assert_eq!(format_ratio(0.854), "0.85×");
    }
}
