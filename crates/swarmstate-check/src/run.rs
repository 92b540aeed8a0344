//! One call for tools: run a workload against a store while faults are injected, check the
//! history, and keep it on disk when it is wrong.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmstate_core::{Result, Revision, StateStore};

use crate::checker::{Checked, check};
use crate::history::{History, Input, Output};
use crate::workload::Workload;

/// The outcome of [`run`]: the verdict, the counts, and where the history was saved.
#[derive(Debug, Clone)]
pub struct Report {
    /// The verdict and what was checked.
    pub checked: Checked,
    /// How long the workload ran.
    pub recorded_for: Duration,
    /// Where the history was written, when the verdict is not `Ok`. Check it again with
    /// `History::load(path)` and [`check`].
    pub history_path: Option<PathBuf>,
    /// How many expiries the history shows against how many must have happened.
    pub expiries: Expiries,
}

/// Expiries seen by the recorder's watcher against those the workload made certain.
///
/// An acknowledged write with a TTL *must* expire when nothing else wrote or deleted its key
/// (or may have) from its call until its TTL, plus the store's TTL granularity and a second of
/// slack, had passed after it returned, all before the recording ended. Those are the
/// `required` ones; `seen` counts how many of them the watcher saw. Every expiry the watcher
/// did not see is optional to the search (a possible expiry) when the history is marked
/// incomplete, so `seen` below `required` then means TTL behaviour was checked less than it
/// could have been. Without a gap, `seen` below `required` means the store never reported an
/// expiry that was due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expiries {
    /// Acknowledged writes with a TTL.
    pub ttl_writes: usize,
    /// Of those, the ones that must have expired before the recording ended.
    pub required: usize,
    /// Of the required ones, those whose expiry the watcher saw.
    pub seen: usize,
    /// Expiries the watcher saw in all.
    pub seen_in_all: usize,
    /// Whether the watcher lagged past a gap, so that some expiries could not be seen.
    pub incomplete: bool,
}

impl Expiries {
    /// Counts them in `history`, for a store whose TTLs end up to `granularity` late.
    pub fn count(history: &History, granularity: Duration) -> Expiries {
        use std::collections::{HashMap, HashSet};
        let slack = (granularity + Duration::from_secs(1)).as_nanos() as u64;
        let end = history
            .operations
            .iter()
            .flat_map(|op| [Some(op.call), op.ret])
            .flatten()
            .max()
            .unwrap_or(0);
        let seen: HashSet<(&str, Revision)> = history
            .operations
            .iter()
            .filter_map(|op| match (&op.input, &op.output) {
                (
                    Input::Expire {
                        written,
                        revision: Some(_),
                    },
                    Output::Expired,
                ) => Some((op.key.as_str(), *written)),
                _ => None,
            })
            .collect();
        // The calls of everything that wrote or deleted a key, or may have.
        let mut changes: HashMap<&str, Vec<u64>> = HashMap::new();
        for op in &history.operations {
            let changed = matches!(
                (&op.input, &op.output),
                (
                    Input::Put { .. } | Input::Delete { .. },
                    Output::Written(_) | Output::Deleted(_) | Output::Unknown
                )
            );
            if changed {
                changes.entry(op.key.as_str()).or_default().push(op.call);
            }
        }
        let mut expiries = Expiries {
            seen_in_all: seen.len(),
            incomplete: history.expiries_incomplete,
            ..Expiries::default()
        };
        for op in &history.operations {
            let (Input::Put { ttl: Some(ttl), .. }, Output::Written(written), Some(ret)) =
                (&op.input, &op.output, op.ret)
            else {
                continue;
            };
            expiries.ttl_writes += 1;
            let due = ret + ttl.as_nanos() as u64 + slack;
            let untouched = changes
                .get(op.key.as_str())
                .into_iter()
                .flatten()
                .all(|&call| call <= op.call || call >= due);
            if untouched && due < end {
                expiries.required += 1;
                if seen.contains(&(op.key.as_str(), *written)) {
                    expiries.seen += 1;
                }
            }
        }
        expiries
    }
}

impl fmt::Display for Expiries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expiries: {} of {} required seen ({} TTL writes, {} expiries seen in all)",
            self.seen, self.required, self.ttl_writes, self.seen_in_all
        )?;
        if self.incomplete {
            write!(
                f,
                "; the watcher lagged past a gap, so expiries it did not see were optional"
            )?;
        }
        Ok(())
    }
}

impl Report {
    /// Whether the history was shown linearizable.
    pub fn is_ok(&self) -> bool {
        self.checked.verdict.is_ok()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "recorded for {:.3?}", self.recorded_for)?;
        writeln!(f, "{}", self.checked.counts)?;
        writeln!(f, "{}", self.expiries)?;
        write!(f, "{}", self.checked.verdict)?;
        if let Some(path) = &self.history_path {
            write!(f, "\nhistory saved to {}", path.display())?;
        }
        Ok(())
    }
}

/// How long [`run`] lets the checker search before it answers `Unknown`.
pub const CHECK_TIME_LIMIT: Duration = Duration::from_secs(60);

/// Runs `workload` against `store` while `faults` runs beside it (a future that kills, pauses
/// or partitions servers; it is dropped when the workload ends, so it may loop forever; pass
/// `async {}` for none), then checks the history.
///
/// When the verdict is not `Ok`, the history is saved in the system's temporary directory and
/// its path is in the report.
///
/// Errors: only when the workload cannot start (see [`Workload::record`]).
pub async fn run(
    store: Arc<dyn StateStore>,
    workload: &Workload,
    faults: impl Future<Output = ()> + Send,
) -> Result<Report> {
    let started = Instant::now();
    let granularity = store.capabilities().ttl_granularity;
    let recording = workload.record(store);
    let history = {
        tokio::pin!(recording);
        let faults = async {
            faults.await;
            std::future::pending::<()>().await
        };
        tokio::select! {
            history = &mut recording => history?,
            () = faults => unreachable!("the fault future never completes"),
        }
    };
    Ok(report(history, started, granularity))
}

/// Like [`run`], but `faults` must complete, and the clients go on past the workload's
/// duration until it has (see [`Workload::record_until`]): no fault is cut short by the end of
/// the recording, however long the servers took to come back. A fault future that wants the
/// clients to see the recovered servers for a while sleeps that long after its last fault.
pub async fn run_until(
    store: Arc<dyn StateStore>,
    workload: &Workload,
    faults: impl Future<Output = ()> + Send,
) -> Result<Report> {
    let started = Instant::now();
    let granularity = store.capabilities().ttl_granularity;
    let history = workload.record_until(store, faults).await?;
    Ok(report(history, started, granularity))
}

/// Checks `history`, recorded since `started`, and saves it when the verdict is not `Ok`.
fn report(history: History, started: Instant, granularity: Duration) -> Report {
    let recorded_for = started.elapsed();
    let checked = check(&history, CHECK_TIME_LIMIT);
    let expiries = Expiries::count(&history, granularity);
    let history_path = if checked.verdict.is_ok() {
        None
    } else {
        let path = std::env::temp_dir().join(format!(
            "swarmstate-check-{}-{}.history",
            std::process::id(),
            started.elapsed().as_nanos()
        ));
        history.save(&path).ok().map(|()| path)
    };
    Report {
        checked,
        recorded_for,
        history_path,
        expiries,
    }
}
