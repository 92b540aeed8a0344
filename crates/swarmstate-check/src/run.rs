//! One call for tools: run a workload against a store while faults are injected, check the
//! history, and keep it on disk when it is wrong.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmstate_core::{Result, StateStore};

use crate::checker::{Checked, check};
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
    let recorded_for = started.elapsed();
    let checked = check(&history, CHECK_TIME_LIMIT);
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
    Ok(Report {
        checked,
        recorded_for,
        history_path,
    })
}
