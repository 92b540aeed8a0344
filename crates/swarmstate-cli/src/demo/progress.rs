//! The demo's progress on stderr.

use std::io::{IsTerminal, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A live status line on a terminal; a line per second otherwise.
pub(super) struct Progress {
    terminal: bool,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: Mutex::new(None),
        }
    }

    pub(super) fn show(
        &self,
        started: Instant,
        done: usize,
        items: usize,
        alive: usize,
        leader: &Option<swarmstate::election::Leader>,
    ) {
        let leader = match leader {
            Some(leader) => format!("{} (term {})", leader.candidate, leader.term),
            None => "none".to_owned(),
        };
        let line = format!(
            "{:5.1} s  items {done}/{items}  agents alive {alive}  leader {leader}",
            started.elapsed().as_secs_f64()
        );
        let mut stderr = std::io::stderr();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
            let _ = stderr.flush();
        } else {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                *last = Some(Instant::now());
                let _ = writeln!(stderr, "{line}");
            }
        }
    }

    pub(super) fn note(&self, text: &str) {
        let mut stderr = std::io::stderr();
        if self.terminal {
            let _ = writeln!(stderr, "\r\x1b[2K{text}");
        } else {
            let _ = writeln!(stderr, "{text}");
        }
    }

    pub(super) fn finish(&self) {
        if self.terminal {
            let _ = writeln!(std::io::stderr());
        }
    }
}
