//! The one markdown table the benchmark prints: a row per workload, concurrency and target,
//! with swarmstate's ratio to each peer and the verdict on each goal.

use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::{Summary, format_count, format_duration, format_rate, format_ratio};

/// A goal a row is judged by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Goal {
    /// swarmstate's rate is at least `times` this (peer) row's rate.
    RatioAtLeast(f64),
    /// This row's median p99 is below the limit.
    P99Below(Duration),
}

impl Goal {
    /// Whether `row` meets the goal, given swarmstate's `ratio` to it (swarmstate's rate ÷
    /// the row's). A ratio goal with no ratio (a row without a swarmstate row beside it, or a
    /// peer that did nothing) is missed, and so is a latency goal without latencies.
    pub(crate) fn met(self, row: &Summary, ratio: Option<f64>) -> bool {
        match self {
            Goal::RatioAtLeast(times) => ratio.is_some_and(|ratio| ratio >= times),
            Goal::P99Below(limit) => row.p99.is_some_and(|p99| p99 < limit),
        }
    }

    fn describe(self) -> String {
        match self {
            Goal::RatioAtLeast(times) => format!("≥ {}", format_ratio(times)),
            Goal::P99Below(limit) => format!("p99 < {}", format_duration(limit)),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) workload: String,
    pub(crate) in_flight: String,
    pub(crate) target: String,
    /// What the rate counts, e.g. "ops", "commits", "acquisitions", "deliveries".
    pub(crate) unit: &'static str,
    /// What p50 and p99 time, when it is not the operation itself (e.g. "hand-over").
    pub(crate) latency_of: Option<&'static str>,
    pub(crate) summary: Summary,
    /// swarmstate's rate ÷ this row's, on peer rows.
    pub(crate) ratio: Option<f64>,
    pub(crate) goal: Option<Goal>,
    /// Set when a round failed; the message replaces the figures.
    pub(crate) failure: Option<String>,
}

impl Row {
    /// The verdict cell: `≥ 3.0×: met`, `p99 < 5.00 ms: **missed**`, or empty.
    fn verdict(&self) -> String {
        match self.goal {
            None => String::new(),
            Some(goal) if self.failure.is_none() && goal.met(&self.summary, self.ratio) => {
                format!("{}: met", goal.describe())
            }
            Some(goal) => format!("{}: **missed**", goal.describe()),
        }
    }
}

const HEADER: [&str; 9] = [
    "workload",
    "in flight",
    "target",
    "rate (median)",
    "rate min–max",
    "p50",
    "p99 (min–max)",
    "swarmstate ÷ target",
    "goal",
];

/// The table in GitHub markdown: numbers right-aligned, one line per row, in the order given.
pub(crate) fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let alignment: Vec<&str> = HEADER
        .iter()
        .enumerate()
        .map(|(i, _)| if (3..8).contains(&i) { "---:" } else { "---" })
        .collect();
    let _ = writeln!(out, "|{}|", alignment.join("|"));
    for row in rows {
        let cells = cells(row);
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

fn cells(row: &Row) -> Vec<String> {
    let workload = match row.latency_of {
        Some(what) => format!("{} (latency: {what})", row.workload),
        None => row.workload.clone(),
    };
    let mut cells = vec![workload, row.in_flight.clone(), row.target.clone()];
    if let Some(failure) = &row.failure {
        cells.push(format!("failed: {}", failure.replace('|', "/")));
        cells.extend(std::iter::repeat_n("—".to_owned(), 4));
        cells.push(row.verdict());
        return cells;
    }
    let summary = &row.summary;
    let mut rate = format_rate(summary.rate, row.unit);
    if let Some(attempts) = summary.attempts_per_op {
        let _ = write!(rate, ", {attempts:.2} attempts each");
    }
    cells.push(rate);
    let (lo, hi) = summary.rate_spread;
    cells.push(format!("{}–{}", format_count(lo), format_count(hi)));
    cells.push(summary.p50.map_or("—".to_owned(), format_duration));
    cells.push(match (summary.p99, summary.p99_spread) {
        (Some(p99), Some((lo, hi))) => format!(
            "{} ({}–{})",
            format_duration(p99),
            format_duration(lo),
            format_duration(hi)
        ),
        _ => "—".to_owned(),
    });
    cells.push(row.ratio.map_or(String::new(), format_ratio));
    cells.push(row.verdict());
    cells
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Round;

    fn row(target: &str, rate_per_round: &[u64], p99_ms: u64) -> Row {
        let rounds: Vec<Round> = rate_per_round
            .iter()
            .map(|&ops| {
                Round::new(
                    ops,
                    ops,
                    Duration::from_secs(1),
                    vec![Duration::from_millis(p99_ms)],
                )
            })
            .collect();
        Row {
            workload: "put".to_owned(),
            in_flight: "16".to_owned(),
            target: target.to_owned(),
            unit: "ops",
            latency_of: None,
            summary: Summary::of(&rounds),
            ratio: None,
            goal: None,
            failure: None,
        }
    }

    #[test]
    fn ratio_goals_need_the_ratio() {
        let peer = row("etcd", &[1_000], 2);
        let goal = Goal::RatioAtLeast(3.0);
        assert!(goal.met(&peer.summary, Some(3.0)));
        assert!(!goal.met(&peer.summary, Some(2.99)));
        assert!(!goal.met(&peer.summary, None));
    }

    #[test]
    fn latency_goals_are_strict() {
        let ours = row("swarmstate", &[1_000], 5);
        assert!(!Goal::P99Below(Duration::from_millis(5)).met(&ours.summary, None));
        assert!(Goal::P99Below(Duration::from_millis(6)).met(&ours.summary, None));
    }

    #[test]
    fn the_table_has_a_header_an_alignment_line_and_a_line_per_row() {
        let mut peer = row("etcd", &[900, 1_100, 1_000], 2);
        peer.ratio = Some(4.0);
        peer.goal = Some(Goal::RatioAtLeast(3.0));
        let mut failed = row("redis", &[], 0);
        failed.failure = Some("connection refused | twice".to_owned());
        failed.goal = Some(Goal::RatioAtLeast(1.0));
        let ours = row("swarmstate", &[4_000], 1);
        let table = render(&[ours, peer, failed]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        for line in &lines {
            // Every line has the same number of cells; a `|` in a message must not add one.
            assert_eq!(line.matches('|').count(), HEADER.len() + 1, "{line}");
        }
        assert!(lines[1].starts_with("|---|---|---|---:|"), "{}", lines[1]);
        assert!(
            lines[3].contains("| 1,000 ops/s | 900–1,100 |"),
            "{}",
            lines[3]
        );
        assert!(lines[3].ends_with("| 4.0× | ≥ 3.0×: met |"), "{}", lines[3]);
        assert!(lines[4].contains("failed: connection refused / twice"));
        assert!(lines[4].ends_with("≥ 1.0×: **missed** |"), "{}", lines[4]);
    }

    #[test]
    fn retries_and_what_latency_means_are_shown() {
        let mut contended = row("swarmstate", &[], 0);
        contended.summary = Summary::of(&[Round::new(
            100,
            250,
            Duration::from_secs(1),
            vec![Duration::from_millis(1)],
        )]);
        contended.latency_of = Some("hand-over");
        let table = render(&[contended]);
        assert!(table.contains("put (latency: hand-over)"), "{table}");
        assert!(table.contains("100 ops/s, 2.50 attempts each"), "{table}");
    }
}
