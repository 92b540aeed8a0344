//! `swarmstate lock`: hold a lock while a command runs, like `flock`, but across machines and
//! with a fencing token.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use swarmstate::Key;
use swarmstate::lock::acquire_lock_wait;
use tokio::process::Command;

use crate::open::open_store;

/// What `swarmstate lock` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct LockArgs {
    pub(crate) store: String,
    pub(crate) key: String,
    pub(crate) owner: String,
    pub(crate) ttl: Duration,
    pub(crate) wait: Duration,
    pub(crate) command: Vec<String>,
}

/// Acquires the lock (waiting up to `wait`), prints `locked KEY token N` on stdout, keeps the
/// lock alive, and then either runs the command (with `SWARMSTATE_LOCK_KEY` and
/// `SWARMSTATE_FENCING_TOKEN` in its environment) or, without a command, holds the lock until
/// Ctrl-C. The lock is released at the end. If the lock is lost meanwhile, the command is killed
/// and the exit status is 3.
pub(crate) async fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    let key = Key::new(&args.key)?;
    let store = open_store(&args.store).await?;
    let guard = acquire_lock_wait(&store, &key, &args.owner, args.ttl, args.wait)
        .await
        .with_context(|| format!("acquiring the lock {key}"))?;
    let token = guard.token();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "locked {key} token {token}")?;
    stdout.flush()?;
    let mut held = guard.keep_alive();

    let outcome = if let Some((program, rest)) = args.command.split_first() {
        let mut child = Command::new(program)
            .args(rest)
            .env("SWARMSTATE_LOCK_KEY", key.as_str())
            .env("SWARMSTATE_FENCING_TOKEN", token.to_string())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        tokio::select! {
            status = child.wait() => {
                let status = status.with_context(|| format!("waiting for {program}"))?;
                Outcome::Finished(status.code().map_or(1, |code| code.clamp(0, 255) as u8))
            }
            () = held.lost() => {
                // kill_on_drop ends the child when it goes out of scope just below.
                Outcome::Lost
            }
        }
    } else {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for Ctrl-C")?;
                Outcome::Finished(0)
            }
            () = held.lost() => Outcome::Lost,
        }
    };

    match outcome {
        Outcome::Finished(code) => {
            held.release()
                .await
                .with_context(|| format!("releasing the lock {key}"))?;
            Ok(ExitCode::from(code))
        }
        Outcome::Lost => {
            eprintln!("swarmstate: lost the lock {key} (token {token}); stopped");
            Ok(ExitCode::from(crate::exit::LOCK_LOST))
        }
    }
}

enum Outcome {
    Finished(u8),
    Lost,
}
