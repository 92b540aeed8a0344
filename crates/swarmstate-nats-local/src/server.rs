//! [`NatsServer`]: one `nats-server` process on loopback, its config, its log, and the signals
//! a test sends it by PID.

use std::{
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use async_nats::{Client, ConnectOptions, ToServerAddrs, jetstream};
use tempfile::TempDir;

use crate::binary::expect_binary;
use crate::ports::free_ports;

/// How long a single node may take to start and answer JetStream requests.
const SINGLE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a cluster may take to form and accept an R3 bucket (and a restarted cluster node to
/// answer JetStream requests again).
pub(crate) const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often to start over with fresh ports when another process took a port between our
/// probing it and the server binding it.
pub(crate) const PORT_ATTEMPTS: usize = 5;

/// How much of a server's log to print when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// A single `nats-server` node with JetStream, on a free `127.0.0.1` port, storing into a
/// temporary directory that lives as long as this value (so data survives [`kill`](Self::kill)
/// and [`restart`](Self::restart)).
///
/// Dropping it kills (SIGKILL) and reaps the process, then removes the directory.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    /// The `server_name`, also the name JetStream reports for stream leaders.
    name: String,
    port: u16,
    ready_timeout: Duration,
    /// Holds `nats.conf`, `server.log` and the JetStream store `js/`.
    dir: TempDir,
    /// Invariant: `Some` from a spawn until `kill`, and only ever a process this fixture spawned
    /// and has not reaped, so its PID cannot have been reused by another process.
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a single node on a free `127.0.0.1` port and waits (up to about 10 s) until it
    /// answers JetStream requests.
    ///
    /// The config is `listen: 127.0.0.1:PORT`, `server_name: n0` and
    /// `jetstream { store_dir: TMP/js, sync_interval: always }`; no monitoring, cluster or other
    /// listener.
    ///
    /// # Panics
    ///
    /// If no server is found (call [`require_server`] first), or it does not start in time; the
    /// message includes the server's log.
    ///
    /// [`require_server`]: crate::require_server
    pub async fn start() -> NatsServer {
        let binary = expect_binary();
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_ports(1)[0];
            let mut server = NatsServer::prepare(&binary, "n0", port, None, SINGLE_READY_TIMEOUT);
            let offset = server.spawn();
            match server.wait_ready(Readiness::JetStream, offset).await {
                Ok(()) => return server,
                Err(StartError::PortInUse(report)) => last_failure = report,
                Err(StartError::Failed(report)) => panic!("{report}"),
            }
        }
        panic!("gave up after {PORT_ATTEMPTS} attempts to find a free port; last: {last_failure}");
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's `server_name` (`n0` for a single node; `n0`, `n1`, … in a cluster).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PID of the running process, or `None` after [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The JetStream store directory; it survives [`kill`](Self::kill) and
    /// [`restart`](Self::restart).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// The file that captures the server's stdout and stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything the server has logged so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Connects a client to this node (reconnecting forever, as `async_nats` does by default).
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn connect(&self) -> Client {
        connect(self.url())
            .await
            .unwrap_or_else(|err| panic!("connecting to {} ({}): {err}", self.name, self.url()))
    }

    /// Kills the process with SIGKILL (no shutdown, no flush: a crash) and reaps it. Does nothing
    /// if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` signals exactly the process we spawned, by its PID.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again with the same port, config and store directory, killing it first if
    /// it is still running, and waits until it answers JetStream requests again (up to about
    /// 10 s; 30 s for a cluster node, which needs a JetStream meta leader to answer).
    ///
    /// A restarted cluster node answers before it has necessarily caught up its stream replicas:
    /// until it has, direct gets it serves (`kv::Store::get`) can return stale values or none.
    ///
    /// # Panics
    ///
    /// If it does not become ready in time; the message includes the server's log.
    pub async fn restart(&mut self) {
        self.kill();
        // Another process may take the port while the node is down; the config cannot move, so
        // wait for it rather than picking a new one.
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let offset = self.spawn();
            let report = match self.wait_ready(Readiness::JetStream, offset).await {
                Ok(()) => return,
                Err(StartError::PortInUse(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(StartError::PortInUse(report) | StartError::Failed(report)) => report,
            };
            panic!("restart: {report}");
        }
    }

    /// Freezes the process with SIGSTOP: it keeps its sockets open but answers nothing, like a
    /// long GC pause or a stalled VM. Undo with [`resume`](Self::resume).
    ///
    /// # Panics
    ///
    /// If the node is not running or the signal cannot be sent.
    ///
    /// Returns once every thread of the process has stopped: the kernel delivers SIGSTOP
    /// after `kill` returns, and a thread still running meanwhile would answer a request sent
    /// right after the pause.
    pub fn pause(&self) {
        self.signal("STOP");
        let pid = self.pid().expect("signalled just now");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "{} (pid {pid}) did not stop within 10 s of SIGSTOP",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Continues a process frozen by [`pause`](Self::pause) (SIGCONT).
    ///
    /// # Panics
    ///
    /// If the node is not running or the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Creates the temporary directory and writes the config; starts nothing.
    pub(crate) fn prepare(
        binary: &Path,
        name: &str,
        port: u16,
        cluster: Option<ClusterConfig<'_>>,
        ready_timeout: Duration,
    ) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix(&format!("swarmstate-nats-{name}-"))
            .tempdir()
            .unwrap_or_else(|err| panic!("creating a temporary directory for {name}: {err}"));
        let server = NatsServer {
            binary: binary.to_path_buf(),
            name: name.to_string(),
            port,
            ready_timeout,
            dir,
            child: None,
        };
        let config = server.config_text(cluster);
        fs::write(server.config_path(), config)
            .unwrap_or_else(|err| panic!("writing {}: {err}", server.config_path().display()));
        server
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn config_text(&self, cluster: Option<ClusterConfig<'_>>) -> String {
        let mut text = format!(
            "server_name: {name}\n\
             listen: \"127.0.0.1:{port}\"\n\
             max_payload: 2MB\n\
             jetstream {{\n  store_dir: {store}\n  sync_interval: always\n}}\n",
            name = quote(&self.name),
            port = self.port,
            store = quote(&self.store_dir().to_string_lossy()),
        );
        if let Some(cluster) = cluster {
            let routes: Vec<String> = cluster
                .route_ports
                .iter()
                .map(|port| quote(&format!("nats-route://127.0.0.1:{port}")))
                .collect();
            let _ = write!(
                text,
                "cluster {{\n  name: swarm\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n",
                cluster.port,
                routes.join(", ")
            );
            if let Some(port) = cluster.advertise_port {
                let _ = write!(
                    text,
                    "  advertise: \"127.0.0.1:{port}\"\n  no_advertise: true\n"
                );
            }
            text.push_str("}\n");
        }
        text
    }

    /// Whether the process is running; reaps it if it has exited.
    pub(crate) fn is_alive(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                false
            }
            Some(Err(_)) => true, // Unknown; the caller's timeout still bounds the wait.
            None => false,
        }
    }

    /// Spawns the process with its output appended to `server.log`; returns the log's length
    /// before this run, so readiness failures can show only this run's output.
    pub(crate) fn spawn(&mut self) -> u64 {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log_path = self.log_path();
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap_or_else(|err| panic!("opening {}: {err}", log_path.display()))
        };
        let mut log: File = open_log();
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = writeln!(
            log,
            "=== swarmstate fixture: starting {} on {} ===",
            self.name,
            self.url()
        );
        let stderr = open_log();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|err| panic!("spawning {}: {err}", self.binary.display()));
        self.child = Some(child);
        offset
    }

    /// Polls until the node is ready, it exits, or its ready timeout passes.
    pub(crate) async fn wait_ready(
        &mut self,
        readiness: Readiness,
        log_offset: u64,
    ) -> Result<(), StartError> {
        let started = Instant::now();
        let mut last_error;
        loop {
            let child = self.child.as_mut().expect("wait_ready after spawn");
            if let Ok(Some(status)) = child.try_wait() {
                // Reaped: drop the handle so nothing signals a PID that may be reused.
                self.child = None;
                let output = self.log_since(log_offset);
                let report = self.report(&format!("exited during startup ({status})"), &output);
                return Err(if output.contains("address already in use") {
                    StartError::PortInUse(report)
                } else {
                    StartError::Failed(report)
                });
            }
            match probe(&self.url(), readiness).await {
                Ok(()) => return Ok(()),
                Err(error) => last_error = error,
            }
            if started.elapsed() >= self.ready_timeout {
                let output = self.log_since(log_offset);
                let what = format!(
                    "not ready ({readiness:?}) after {:?}; last error: {last_error}",
                    self.ready_timeout
                );
                return Err(StartError::Failed(self.report(&what, &output)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let log = fs::read(self.log_path()).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(log.len());
        String::from_utf8_lossy(&log[start..]).into_owned()
    }

    /// A failure message with everything needed to debug it.
    pub(crate) fn report(&self, what: &str, output: &str) -> String {
        let config = fs::read_to_string(self.config_path()).unwrap_or_default();
        format!(
            "nats-server {name} ({url}) {what}\n\
             binary: {binary}\nconfig {config_path}:\n{config}\
             --- server output ({log}) ---\n{output}--- end of server output ---",
            name = self.name,
            url = self.url(),
            binary = self.binary.display(),
            config_path = self.config_path().display(),
            log = self.log_path().display(),
        )
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("cannot send SIG{signal} to {}: not running", self.name));
        // The PID is our unreaped child's (see the invariant on `child`), so it cannot name
        // another process.
        let status = Command::new("/bin/kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|err| panic!("running /bin/kill -{signal} {pid}: {err}"));
        assert!(
            status.success(),
            "/bin/kill -{signal} {pid} failed: {status}"
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            eprintln!(
                "--- last {LOG_TAIL_LINES} lines of nats-server {} ({}) log ---\n{tail}\n--- end ---",
                self.name,
                self.url()
            );
        }
    }
}

/// What "ready" means for a node being started.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Readiness {
    /// A client can connect.
    Connect,
    /// JetStream answers an account info request.
    JetStream,
}

#[derive(Debug)]
pub(crate) enum StartError {
    /// A port was taken by someone else before the server bound it; retry with others.
    PortInUse(String),
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ClusterConfig<'a> {
    pub(crate) port: u16,
    /// The ports this node routes to: every node's cluster port, this node's included (the
    /// server ignores a route to itself); or, in a partitionable cluster, the proxy in front of
    /// each other node's cluster port.
    pub(crate) route_ports: &'a [u16],
    /// In a partitionable cluster, a port on which nothing listens, for the node to advertise as
    /// its cluster address (see [`NatsCluster::start_partitionable`]); `None` otherwise.
    pub(crate) advertise_port: Option<u16>,
}

async fn probe(url: &str, readiness: Readiness) -> Result<(), String> {
    let client = connect(url)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    if let Readiness::JetStream = readiness {
        let js = jetstream::new(client);
        tokio::time::timeout(Duration::from_secs(2), js.query_account())
            .await
            .map_err(|_| "JetStream account info timed out".to_string())?
            .map_err(|err| format!("JetStream account info: {err}"))?;
    }
    Ok(())
}

/// Connects with a short connection timeout, so a dead or paused node costs a second, not five.
pub(crate) async fn connect(addrs: impl ToServerAddrs) -> Result<Client, async_nats::ConnectError> {
    ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(addrs)
        .await
}

/// A string literal for the NATS config format.
fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// Whether every thread of process `pid` is stopped (state `T` or `t` in
/// `/proc/<pid>/task/<tid>/stat`). A thread that is gone counts as stopped.
///
/// The kernel delivers SIGSTOP after `kill` returns, so a fault that freezes a process waits
/// on this before it counts the process as frozen; any process, not only a nats-server.
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        match std::fs::read_to_string(task.path().join("stat")) {
            // The state follows the command name, which is in parentheses and may hold any
            // character: look after the last `)`.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state == 'T' || state == 't'),
            Err(_) => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_loopback_only_and_syncs_always() {
        let server = NatsServer::prepare(
            Path::new("nats-server"),
            "n1",
            4222,
            Some(ClusterConfig {
                port: 6222,
                route_ports: &[6222, 6223],
                advertise_port: None,
            }),
            SINGLE_READY_TIMEOUT,
        );
        let config = fs::read_to_string(server.config_path()).unwrap();
        assert!(config.contains("listen: \"127.0.0.1:4222\""), "{config}");
        assert!(config.contains("sync_interval: always"), "{config}");
        assert!(config.contains("listen: \"127.0.0.1:6222\""), "{config}");
        assert!(
            config.contains("\"nats-route://127.0.0.1:6223\""),
            "{config}"
        );
        assert!(!config.contains("http"), "{config}");
        assert!(!config.contains("advertise"), "{config}");
    }

    #[test]
    fn partitionable_config_routes_through_proxies_and_advertises_an_unreachable_port() {
        let server = NatsServer::prepare(
            Path::new("nats-server"),
            "n0",
            4222,
            Some(ClusterConfig {
                port: 6222,
                route_ports: &[7001, 7002],
                advertise_port: Some(7100),
            }),
            SINGLE_READY_TIMEOUT,
        );
        let config = fs::read_to_string(server.config_path()).unwrap();
        assert!(config.contains("listen: \"127.0.0.1:6222\""), "{config}");
        assert!(
            config.contains(
                "routes: [\"nats-route://127.0.0.1:7001\", \"nats-route://127.0.0.1:7002\"]"
            ),
            "{config}"
        );
        assert!(config.contains("advertise: \"127.0.0.1:7100\""), "{config}");
        assert!(config.contains("no_advertise: true"), "{config}");
    }
}
