//! The servers the benchmark starts: `swarmstate serve`, one etcd member and Redis, each on
//! free `127.0.0.1` ports with a temporary directory of its own. NATS comes from
//! `swarmstate-nats-local`.
//!
//! Every process is held as the [`Child`] that started it and is killed and reaped through
//! that handle (never by name) when its fixture is dropped, so an error or a panic anywhere in
//! the benchmark stops what it started.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// How long a server may take to accept its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A started process and its directory; the process is killed and reaped on drop, then the
/// directory is removed.
#[derive(Debug)]
pub(crate) struct Process {
    name: &'static str,
    child: Child,
    // Dropped after the child is reaped (fields drop in order after `Drop::drop`).
    dir: TempDir,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command, dir: TempDir) -> Result<Process> {
        let log = File::create(dir.path().join("server.log"))?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("start {name} ({command:?})"))?;
        Ok(Process { name, child, dir })
    }

    /// The end of the server's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails if the process has exited.
    /// Asks `ready` every 50 ms until it answers yes; fails if the process exits first or
    /// [`READY_TIMEOUT`] passes.
    async fn wait_until_ready<F, Fut>(&mut self, mut ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_running()?;
            if ready().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer within {READY_TIMEOUT:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The process id, for profilers.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now. Another process could take it before the server binds it;
/// the servers report that as a failure to start.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `swarmstate serve --store file://DIR`: the embedded durable store behind the HTTP server.
#[derive(Debug)]
pub(crate) struct Swarmstate {
    pub(crate) process: Process,
    /// `http://127.0.0.1:PORT`.
    pub(crate) url: String,
}

impl Swarmstate {
    /// Starts `binary serve` on a free port and waits for the line naming its address.
    pub(crate) fn start(binary: &Path) -> Result<Swarmstate> {
        let dir = TempDir::new()?;
        let store = format!("file://{}", dir.path().join("data").display());
        let mut child = Command::new(binary)
            .args(["serve", "--store", &store, "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(dir.path().join("server.log"))?)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut process = Process {
            name: "swarmstate serve",
            child,
            dir,
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            process.check_running()?;
            bail!("unexpected first line from swarmstate serve: {line:?}");
        };
        Ok(Swarmstate {
            url: url.to_owned(),
            process,
        })
    }
}

/// One etcd member with its default durability (an fsync of the WAL before each answer).
#[derive(Debug)]
pub(crate) struct Etcd {
    pub(crate) process: Process,
    /// `http://127.0.0.1:PORT`, the client URL.
    pub(crate) url: String,
}

impl Etcd {
    /// Starts `etcd` on two free ports (client and peer) and waits until it answers a request.
    pub(crate) async fn start() -> Result<Etcd> {
        let dir = TempDir::new()?;
        let (client, peer) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new("etcd");
        command
            .arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--log-level", "warn"]);
        let mut process = Process::spawn("etcd", command, dir)?;
        process
            .wait_until_ready(|| async {
                match etcd_client::Client::connect([&url], None).await {
                    Ok(mut client) => client.status().await.is_ok(),
                    Err(_) => false,
                }
            })
            .await?;
        Ok(Etcd { process, url })
    }
}

/// How a Redis server keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RedisPersistence {
    /// An append-only file fsynced before each write is answered, no snapshots.
    AppendFsyncAlways,
    /// Redis's defaults: no append-only file, snapshots now and then.
    Defaults,
}

/// One `redis-server`.
#[derive(Debug)]
pub(crate) struct Redis {
    pub(crate) process: Process,
    /// `redis://127.0.0.1:PORT/`.
    pub(crate) url: String,
}

impl Redis {
    /// Starts `redis-server` on a free port with `persistence` and waits until it answers.
    pub(crate) async fn start(persistence: RedisPersistence) -> Result<Redis> {
        let dir = TempDir::new()?;
        let port = free_port()?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path());
        if persistence == RedisPersistence::AppendFsyncAlways {
            command.args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]);
        }
        let mut process = Process::spawn("redis-server", command, dir)?;
        let url = format!("redis://127.0.0.1:{port}/");
        let client = redis::Client::open(url.as_str())?;
        process
            .wait_until_ready(|| async {
                match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING")
                        .query_async::<String>(&mut connection)
                        .await
                        .is_ok(),
                    Err(_) => false,
                }
            })
            .await?;
        Ok(Redis { process, url })
    }
}

/// The `swarmstate` binary beside this one (both are built into the same target directory by
/// `scripts/bench-peers`).
pub(crate) fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found; build it first (cargo build --release -p swarmstate-cli)",
            path.display()
        );
    }
    Ok(path)
}
