//! A `swarmstate serve` process this command starts itself (from its own executable), on a
//! data directory it names, and can SIGKILL and restart on the same data and port, or freeze
//! with SIGSTOP: the demo's server, and the server `swarmstate check --store serve-local://`
//! injects faults into.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use swarmstate_nats_local::all_threads_stopped;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// A `swarmstate serve` process of our own, serving `file://DIR/data` (durable) and logging
/// to `DIR/serve.log`. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    // Invariant: `None` only between `kill` and `restart`; while `Some`, the child has not
    // been reaped, so its PID names no other process.
    child: Option<Child>,
    /// Whether the server is frozen by SIGSTOP.
    paused: bool,
    url: String,
    port: u16,
    dir: PathBuf,
}

impl ServerProcess {
    /// Starts `swarmstate serve` on `dir`, on `port` (0: any free one), and waits for it to
    /// say where it listens. Its log goes to `dir/serve.log`.
    pub(crate) async fn start(dir: &Path, port: u16) -> anyhow::Result<ServerProcess> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .context("opening the server's log")?;
        let data = dir.join("data");
        let mut child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--progress-interval", "1s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting swarmstate serve")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("swarmstate serve did not start within 30 s")??;
        let Some(url) = line
            .as_deref()
            .and_then(|line| line.strip_prefix("listening on "))
        else {
            let log = std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default();
            anyhow::bail!("swarmstate serve did not start: {line:?}\n{log}");
        };
        let url = url.to_owned();
        let port = url
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .with_context(|| format!("no port in {url}"))?;
        Ok(ServerProcess {
            child: Some(child),
            paused: false,
            url,
            port,
            dir: dir.to_owned(),
        })
    }

    /// `http://127.0.0.1:PORT`, the same across restarts.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// SIGKILL, then a new server on the same data directory and port. Returns how long the
    /// server was away.
    pub(crate) async fn kill_and_restart(&mut self) -> anyhow::Result<Duration> {
        let killed = Instant::now();
        self.kill().await?;
        self.restart().await?;
        Ok(killed.elapsed())
    }

    /// SIGKILL, and wait until the process is gone. Nothing answers on the port until
    /// [`restart`](Self::restart).
    pub(crate) async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // `Child::start_kill` signals exactly the process we spawned, by its PID.
            child.start_kill()?;
            child.wait().await?;
        }
        self.paused = false;
        Ok(())
    }

    /// Starts a new server on the same data directory and port, after [`kill`](Self::kill).
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the server is still running");
        // The port was ours a moment ago; another process may bind it meanwhile, so retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        let next = loop {
            match ServerProcess::start(&self.dir, self.port).await {
                Ok(next) => break next,
                Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(100)).await,
                Err(err) => return Err(err.context("restarting the server")),
            }
        };
        *self = next;
        Ok(())
    }

    /// Freezes the server with SIGSTOP: it keeps its sockets open (the kernel still accepts
    /// connections into the listen backlog) but answers nothing. Returns once every thread of
    /// the process has stopped, since the kernel delivers the signal after `kill` returns and
    /// a thread still running meanwhile would answer a request sent right after the pause.
    /// Undo with [`resume`](Self::resume).
    pub(crate) async fn pause(&mut self) -> anyhow::Result<()> {
        let pid = self.signal("STOP").await?;
        self.paused = true;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "swarmstate serve (pid {pid}) did not stop within 10 s of SIGSTOP"
            );
            sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Continues a server frozen by [`pause`](Self::pause) (SIGCONT).
    pub(crate) async fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("CONT").await?;
        self.paused = false;
        Ok(())
    }

    /// SIGTERM, and wait for a graceful stop (a paused server is continued first; a killed
    /// one is left as it is).
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if self.paused {
            self.resume().await?;
        }
        if self.child.is_none() {
            return Ok(());
        }
        self.signal("TERM").await?;
        let mut child = self.child.take().expect("checked above");
        let status = timeout(Duration::from_secs(30), child.wait())
            .await
            .context("the server did not stop within 30 s of SIGTERM")??;
        anyhow::ensure!(status.success(), "the server stopped with {status}");
        Ok(())
    }

    /// Sends `SIG<signal>` to the server; returns its PID.
    async fn signal(&self, signal: &str) -> anyhow::Result<u32> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .with_context(|| format!("cannot send SIG{signal} to the server: not running"))?;
        // The PID is our unreaped child's (see the invariant on `child`), so it cannot name
        // another process.
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .with_context(|| format!("running kill -{signal} {pid}"))?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
        Ok(pid)
    }
}
