//! The `swarmstate` command-line tool.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod check;
mod demo;
mod exit;
mod kv;
mod lock;
mod open;
mod serve;
mod server_process;

use kv::Output;
use open::{CLIENT_STORE, DEFAULT_STORE};
use swarmstate::WatchStart;

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
    ///
    /// By default the agents are OS processes talking HTTP to a swarmstate server the demo
    /// starts on a temporary data directory, and kills and restarts halfway. With --store the
    /// agents are tasks of this process on that store (http://HOST:PORT: processes again, on
    /// that server).
    Demo {
        /// The store: memory:// (in-process), file://DIR (embedded, durable),
        /// nats://HOST:PORT/BUCKET, or http://HOST:PORT (a server someone runs).
        #[arg(long)]
        store: Option<String>,
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
    /// Serve a store over HTTP (API v1, watches as Server-Sent Events) to agents in other
    /// processes and languages. Prints `listening on http://ADDR`; stops gracefully on Ctrl-C
    /// or SIGTERM.
    Serve {
        /// The store to serve: file://DIR (embedded, durable), memory:// or
        /// nats://HOST:PORT/BUCKET (a gateway to a cluster).
        #[arg(long, default_value = serve::DEFAULT_SERVE_STORE, conflicts_with = "data")]
        store: String,
        /// Shorthand for --store file://DIR.
        #[arg(long)]
        data: Option<String>,
        /// HOST:PORT to listen on; loopback only (there is no authentication yet). Port 0
        /// picks a free one.
        #[arg(long, default_value = swarmstate_server::DEFAULT_LISTEN)]
        listen: String,
        /// How often an idle watch stream carries a progress event.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        progress_interval: Duration,
    },
    /// Print a key's value (exit 1 if it is absent).
    Get {
        #[command(flatten)]
        store: StoreArg,
        /// The key.
        key: String,
        /// text: the value as it is; json: the entry with its revision and TTL left.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Write a key; prints the new revision (exit 1 if --create or --if-rev failed).
    Put {
        #[command(flatten)]
        store: StoreArg,
        /// The key.
        key: String,
        /// The value, or - to read it from stdin.
        value: String,
        /// Time to live (30s, 5m, ...); without it the key is permanent.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Only if the key is absent.
        #[arg(long, conflicts_with = "if_rev")]
        create: bool,
        /// Only if the key is at this revision.
        #[arg(long)]
        if_rev: Option<u64>,
        /// A retry with the same idempotency key returns the first write's revision.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Delete a key; prints the delete's revision (exit 1 if it was absent or --if-rev failed).
    Del {
        #[command(flatten)]
        store: StoreArg,
        /// The key.
        key: String,
        /// Only if the key is at this revision.
        #[arg(long)]
        if_rev: Option<u64>,
    },
    /// List the keys a pattern selects (`*`, `prefix.*`, or one key), one per line.
    Keys {
        #[command(flatten)]
        store: StoreArg,
        /// The pattern.
        pattern: String,
    },
    /// Print changes to the keys a pattern selects, one per line, until Ctrl-C. Exits 2 if
    /// the watch fell behind (it says where to resume).
    Watch {
        #[command(flatten)]
        store: StoreArg,
        /// The pattern: `*`, `prefix.*`, or one key.
        pattern: String,
        /// Start with the current entries, then `caught-up`, then changes.
        #[arg(long, conflicts_with = "from")]
        snapshot: bool,
        /// Start from this revision (replayed from the store's history).
        #[arg(long)]
        from: Option<u64>,
        /// text: `put KEY REV VALUE`, `delete KEY REV`, ...; json: one object per line.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Apply operations all or none, read as JSON from stdin:
    /// {"ops": [{"op": "put", "key": "a", "value": "1", "if_absent": true}, {"op": "delete",
    /// "key": "b", "if_revision": 7}, {"op": "check", "key": "c", "if_revision": 3}]}.
    /// Prints the results as JSON (exit 1 if a condition failed, naming it).
    Txn {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Print what the store (or the server) is and its current revision.
    Status {
        #[command(flatten)]
        store: StoreArg,
        /// text or json.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Hold a lock while a command runs (or until Ctrl-C without one). Prints
    /// `locked KEY token N`; the command sees SWARMSTATE_LOCK_KEY and SWARMSTATE_FENCING_TOKEN.
    /// Exits with the command's status, 1 if the lock stayed held past --wait, or 3 if the lock
    /// was lost (the command is killed).
    Lock {
        #[command(flatten)]
        store: StoreArg,
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
    ///
    /// Faults need servers this command starts itself. serve-local:// runs one swarmstate
    /// serve process on a temporary, durable data directory (file://), reached over HTTP; its
    /// faults are kill (SIGKILL, then a restart on the same data and port a second later) and
    /// pause (SIGSTOP past the workload's TTLs and the clients' 1 s request timeout, then
    /// SIGCONT); the run goes on past --duration until they are over. Calls that get no answer
    /// are recorded as ambiguous, refused ones as not applied. nats-local://N runs N
    /// nats-server nodes and takes every fault.
    ///
    /// Example: swarmstate check --store serve-local:// --faults kill,pause --duration 10s
    Check {
        /// The store: memory://, file://DIR, nats://HOST:PORT/BUCKET (no faults), or a server
        /// of this run's own that faults can be injected into: serve-local:// (a swarmstate
        /// serve process) or nats-local://N (N local nats-server nodes).
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
        /// partition. Needs --store serve-local:// (kill, pause) or nats-local://N (all four;
        /// partition needs N > 1).
        #[arg(long, value_delimiter = ',')]
        faults: Vec<check::Fault>,
        /// The seed of the clients' choices.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// One agent of `demo`, as a process of its own (started by the demo).
    #[command(hide = true)]
    DemoAgent {
        #[arg(long)]
        store: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        items: usize,
        #[arg(long, value_parser = parse_duration)]
        work: Duration,
        #[arg(long, value_parser = parse_duration)]
        lease: Duration,
    },
    /// Speak MCP (the Model Context Protocol) on stdin and stdout: tools for LLM agents to read
    /// and write keys, wait for changes, hold locks with fencing tokens, work queues and run
    /// elections on the store. Add it to an agent's MCP configuration as the command
    /// `swarmstate mcp --store http://127.0.0.1:7700`. What a session holds is released when it
    /// ends. Logs go to stderr; stdout carries MCP alone.
    Mcp {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Print the version of this build.
    Version,
}

/// `--store` of the commands that talk to a store someone else runs.
#[derive(Debug, clap::Args)]
struct StoreArg {
    /// The store: http://HOST:PORT (a swarmstate server), file://DIR, nats://HOST:PORT/BUCKET
    /// or memory://.
    #[arg(long = "store", env = "SWARMSTATE_STORE", default_value = CLIENT_STORE)]
    url: String,
}

/// `swarmstate mcp`: one MCP session on stdio, then the store is closed.
async fn mcp(url: &str) -> anyhow::Result<ExitCode> {
    let store = open::open_store(url).await?;
    let served = swarmstate_mcp::serve_stdio(store.clone()).await;
    store.close().await?;
    served.map_err(anyhow::Error::msg)?;
    Ok(ExitCode::SUCCESS)
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
            exit::of_error(&err)
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
                args.agents,
                args.items,
                args.store.as_deref().unwrap_or("a server of its own"),
                args.kill
            );
            let report = demo::run(args).await?;
            println!("{report}");
            Ok(if report.all_held() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }),
        Command::DemoAgent {
            store,
            prefix,
            name,
            items,
            work,
            lease,
        } => runtime()?.block_on(demo::agent::run(demo::agent::AgentArgs {
            store,
            prefix,
            name,
            items,
            work,
            lease,
        })),
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
        Command::Serve {
            store,
            data,
            listen,
            progress_interval,
        } => {
            let store = data.map_or(store, |dir| format!("file://{dir}"));
            runtime()?.block_on(serve::run(&store, &listen, progress_interval))
        }
        Command::Get { store, key, output } => {
            runtime()?.block_on(kv::get(&store.url, &key, output))
        }
        Command::Put {
            store,
            key,
            value,
            ttl,
            create,
            if_rev,
            idempotency_key,
        } => runtime()?.block_on(kv::put(
            &store.url,
            kv::PutArgs {
                key,
                value,
                ttl,
                create,
                if_rev,
                idempotency_key,
            },
        )),
        Command::Del { store, key, if_rev } => {
            runtime()?.block_on(kv::del(&store.url, &key, if_rev))
        }
        Command::Keys { store, pattern } => runtime()?.block_on(kv::keys(&store.url, &pattern)),
        Command::Watch {
            store,
            pattern,
            snapshot,
            from,
            output,
        } => {
            let start = match (snapshot, from) {
                (true, _) => WatchStart::Snapshot,
                (false, Some(from)) => WatchStart::FromRevision(
                    swarmstate::Revision::new(from)
                        .ok_or_else(|| anyhow::anyhow!("--from 0: revisions start at 1"))?,
                ),
                (false, None) => WatchStart::Now,
            };
            runtime()?.block_on(kv::watch(&store.url, &pattern, start, output))
        }
        Command::Mcp { store } => runtime()?.block_on(mcp(&store.url)),
        Command::Txn { store } => runtime()?.block_on(kv::txn(&store.url)),
        Command::Status { store, output } => runtime()?.block_on(kv::status(&store.url, output)),
        Command::Lock {
            store,
            ttl,
            wait,
            owner,
            key,
            command,
        } => runtime()?.block_on(lock::run(lock::LockArgs {
            store: store.url,
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
    fn demo_defaults_are_16_agents_on_a_server_of_its_own() {
        let cli = Cli::try_parse_from(["swarmstate", "demo"]).unwrap();
        match cli.command {
            Command::Demo { store, agents, .. } => {
                assert_eq!(store, None, "a server of its own");
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
