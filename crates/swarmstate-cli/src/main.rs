//! The `swarmstate` command-line tool.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod check;
mod demo;
mod lock;
mod open;

use open::DEFAULT_STORE;

/// Shared state for agent swarms: configuration, work claims, leader election, TTL caches,
/// watches and fenced locks behind one API.
#[derive(Debug, Parser)]
#[command(name = "swarmstate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a swarm of agents that share config, elect a leader and work a queue with claims;
    /// kill some of them halfway, then check and print the invariants. Exits 1 if one fails.
    Demo {
        /// The store: memory:// (in-process), file://DIR (embedded, durable) or nats://HOST:PORT/BUCKET.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: String,
        /// How many agents.
        #[arg(long, default_value_t = 16)]
        agents: usize,
        /// How many work items.
        #[arg(long, default_value_t = 400)]
        items: usize,
        /// How many agents to kill halfway (the leader first).
        #[arg(long, default_value_t = 4)]
        kill: usize,
        /// How long one item takes to process.
        #[arg(long, default_value = "20ms", value_parser = parse_duration)]
        work: Duration,
    },
    /// Hold a lock while a command runs (or until Ctrl-C without one). Prints
    /// `locked KEY token N`; the command sees SWARMSTATE_LOCK_KEY and SWARMSTATE_FENCING_TOKEN.
    /// Exits with the command's status, or 3 if the lock was lost (the command is killed).
    Lock {
        /// The store: memory:// (in-process), file://DIR (embedded, durable) or nats://HOST:PORT/BUCKET.
        #[arg(long, default_value = DEFAULT_STORE)]
        store: String,
        /// The lock's TTL; it is refreshed every third of it while held.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
        /// How long to wait for the lock before giving up (exit status 2).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        wait: Duration,
        /// The owner name recorded in the lock (default: swarmstate-PID).
        #[arg(long)]
        owner: Option<String>,
        /// The lock key, e.g. locks.deploy.
        key: String,
        /// The command to run while holding the lock.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run concurrent clients against a store while injecting faults, record what they did and
    /// saw, and check the history for linearizability. Exit status: 0 linearizable, 1 a
    /// violation (the history is saved and its path printed), 3 unknown (the checker ran out of
    /// time).
    Check {
        /// The store: memory://, file://DIR, nats://HOST:PORT/BUCKET (no faults), or
        /// nats-local://N to start N local nats-server nodes for this run (faults need these).
        #[arg(long, default_value = DEFAULT_STORE)]
        store: String,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Distinct keys (many keys keep checking fast; one hot key makes it exponential).
        #[arg(long, default_value_t = 100)]
        keys: usize,
        /// How long the clients run.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Faults to inject, spread over the run, comma-separated: kill, kill-leader, pause,
        /// partition. Needs --store nats-local://N.
        #[arg(long, value_delimiter = ',')]
        faults: Vec<check::Fault>,
        /// The seed of the clients' choices.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Print the version of this build.
    Version,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{text:?} is not a duration: {err}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("swarmstate: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Version => {
            println!("swarmstate {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            store,
            agents,
            items,
            kill,
            work,
        } => runtime()?.block_on(async {
            let args = demo::DemoArgs {
                store,
                agents,
                items,
                kill,
                work,
            };
            eprintln!(
                "swarmstate demo: {} agents, {} items on {}, killing {} halfway",
                args.agents, args.items, args.store, args.kill
            );
            let report = demo::run(args).await?;
            println!("{report}");
            Ok(if report.all_held() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }),
        Command::Check {
            store,
            clients,
            keys,
            duration,
            faults,
            seed,
        } => runtime()?.block_on(check::run_check(check::CheckArgs {
            store,
            clients,
            keys,
            duration,
            faults,
            seed,
        })),
        Command::Lock {
            store,
            ttl,
            wait,
            owner,
            key,
            command,
        } => runtime()?.block_on(lock::run(lock::LockArgs {
            store,
            key,
            owner: owner.unwrap_or_else(|| format!("swarmstate-{}", std::process::id())),
            ttl,
            wait,
            command,
        })),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_subcommand_parses() {
        let cli = Cli::try_parse_from(["swarmstate", "version"]).unwrap();
        assert!(matches!(cli.command, Command::Version), "{cli:?}");
    }

    #[test]
    fn unknown_subcommand_is_an_error() {
        let err = Cli::try_parse_from(["swarmstate", "frobnicate"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn demo_defaults_are_16_agents_on_memory() {
        let cli = Cli::try_parse_from(["swarmstate", "demo"]).unwrap();
        match cli.command {
            Command::Demo { store, agents, .. } => {
                assert_eq!(store, "memory://");
                assert_eq!(agents, 16);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn check_takes_a_comma_separated_fault_list() {
        let cli = Cli::try_parse_from([
            "swarmstate",
            "check",
            "--store",
            "nats-local://3",
            "--faults",
            "kill,partition",
        ])
        .unwrap();
        match cli.command {
            Command::Check { faults, .. } => {
                assert_eq!(faults, [check::Fault::Kill, check::Fault::Partition]);
            }
            other => panic!("parsed as {other:?}"),
        }
        let err = Cli::try_parse_from(["swarmstate", "check", "--faults", "meteor"]).unwrap_err();
        assert!(err.to_string().contains("meteor"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_text() {
        let err = Cli::try_parse_from(["swarmstate", "lock", "--ttl", "soon", "locks.a"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn lock_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from(["swarmstate", "lock", "locks.a", "--", "echo", "-n", "hi"])
            .unwrap();
        match cli.command {
            Command::Lock { key, command, .. } => {
                assert_eq!(key, "locks.a");
                assert_eq!(command, ["echo", "-n", "hi"]);
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
