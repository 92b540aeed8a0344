//! One agent of a mixed swarm: it shares a lock and a queue with agents written in other
//! languages through a `swarmstate serve` server, using the Rust recipes on an `HttpStore`.
//! The Python client's interop test runs several of these beside Python agents doing the same.
//!
//! ```text
//! interop_agent URL NAME PREFIX ROUNDS
//! ```
//!
//! 1. `ROUNDS` times: take the lock `PREFIX.lock` (waiting, first come first served), read the
//!    counter `PREFIX.counter`, and write it plus one together with the log entry
//!    `PREFIX.log.<new value>` = `<fencing token> <NAME>` in one fenced transaction, then
//!    release. Prints `increment <new value> token <token>` for each.
//! 2. Work the queue `PREFIX.jobs` until nothing is claimable for two seconds: complete each
//!    item together with its result `PREFIX.done.<id>` = `NAME`, created only if absent, so an
//!    item done twice would fail. Prints `done <id>` for each.
//!
//! Any error ends the agent with exit status 1.

use std::process::ExitCode;
use std::time::Duration;

use swarmstate::lock::acquire_lock_wait;
use swarmstate::queue::WorkQueue;
use swarmstate::{Condition, Error, Key, TxnOp};

const LOCK_TTL: Duration = Duration::from_secs(5);
const LOCK_WAIT: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, name, prefix, rounds] = args.as_slice() else {
        eprintln!("usage: interop_agent URL NAME PREFIX ROUNDS");
        return ExitCode::from(2);
    };
    let Ok(rounds) = rounds.parse::<u32>() else {
        eprintln!("ROUNDS must be a number, got {rounds}");
        return ExitCode::from(2);
    };
    match run(url, name, prefix, rounds).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{name}: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, name: &str, prefix: &str, rounds: u32) -> Result<(), Error> {
    let store = swarmstate::open(url).await?;
    let lock = Key::new(format!("{prefix}.lock"))?;
    let counter = Key::new(format!("{prefix}.counter"))?;
    for _ in 0..rounds {
        let guard = acquire_lock_wait(&store, &lock, name, LOCK_TTL, LOCK_WAIT).await?;
        let current = match store.get(&counter).await? {
            Some(entry) => parse_count(&entry.value)?,
            None => 0,
        };
        let next = current + 1;
        let token = guard.token();
        let log = Key::new(format!("{prefix}.log.{next}"))?;
        guard
            .fenced_txn(vec![
                TxnOp::put(&counter, next.to_string()),
                TxnOp::put(&log, format!("{token} {name}")).when(Condition::Absent),
            ])
            .await?;
        guard.release().await?;
        println!("increment {next} token {token}");
    }

    let queue = WorkQueue::new(store.clone(), Key::new(format!("{prefix}.jobs"))?);
    while let Some(claim) = queue.claim_wait(name, LEASE, IDLE).await? {
        let id = claim.id.clone();
        let done = Key::new(format!("{prefix}.done.{id}"))?;
        queue
            .complete_with(
                claim,
                vec![TxnOp::put(&done, name.to_owned()).when(Condition::Absent)],
            )
            .await?;
        println!("done {id}");
    }
    Ok(())
}

fn parse_count(value: &[u8]) -> Result<u64, Error> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| Error::InvalidInput {
            message: format!("the counter holds {value:?}, not a number"),
        })
}
