//! Test fixtures that run real `nats-server` processes: a single node ([`NatsServer`]) and a
//! cluster ([`NatsCluster`]), each node on free `127.0.0.1` ports with its own temporary store
//! directory and `jetstream { sync_interval: always }` (fsync before every acknowledgement, the
//! setting swarmstate documents and tests its durability with).
//!
//! Compiled only with the crate's `testing` feature. Tests start with [`require_server`]:
//!
//! ```no_run
//! # async fn example() {
//! use swarmstate_nats::testing::{require_server, NatsServer};
//!
//! let Some(_) = require_server() else { return }; // skipped locally, a failure under CI
//! let mut server = NatsServer::start().await;
//! let client = server.connect().await;
//! // ... use the client; inject faults with server.kill(), server.restart().await, server.pause()
//! # drop(client);
//! # }
//! ```
//!
//! Network partitions: [`NatsCluster::start_partitionable`] puts a TCP proxy on `127.0.0.1`
//! in every route between two nodes, which [`NatsCluster::partition`] cuts and
//! [`NatsCluster::heal`] restores. Proxies rather than network namespaces, because the servers
//! bind `127.0.0.1` only and nothing may send traffic to another address, while processes in
//! separate namespaces could only reach each other over veth addresses of their own.
//!
//! Finding the server: [`nats_server_binary`] looks at `SWARMSTATE_NATS_SERVER`, then the copy
//! `scripts/install-nats-server` puts in `.tools/nats`, then `nats-server` on `PATH`, and refuses
//! anything older than 2.12.1.
//!
//! Every process is started by the fixture, signalled only through the PID of the
//! [`std::process::Child`] it holds (never by name), and killed and reaped when the fixture is
//! dropped. Each node's output goes to `server.log` in its temporary directory; startup failures
//! include it in the panic message, and a fixture dropped during a panic (a failing test)
//! prints the end of it to stderr.

use std::{
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::{Client, ConnectOptions, ToServerAddrs, jetstream};
use tempfile::TempDir;
use tokio::net::TcpSocket;

use self::proxy::Proxy;

mod proxy;

/// The environment variable that names the `nats-server` binary to test with.
pub const SERVER_ENV: &str = "SWARMSTATE_NATS_SERVER";

/// The oldest `nats-server` swarmstate supports: 2.12.1 brought per-message TTLs, delete markers
/// for TTL expiry, and atomic batches with per-key expected revisions.
pub const MINIMUM_SERVER_VERSION: (u32, u32, u32) = (2, 12, 1);

/// How long a single node may take to start and answer JetStream requests.
const SINGLE_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a cluster may take to form and accept an R3 bucket (and a restarted cluster node to
/// answer JetStream requests again).
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often to start over with fresh ports when another process took a port between our
/// probing it and the server binding it.
const PORT_ATTEMPTS: usize = 5;

/// How much of a server's log to print when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Finds the `nats-server` binary to test with, or `None` if there is none.
///
/// In order: the path in the environment variable `SWARMSTATE_NATS_SERVER` (best absolute; a bare
/// name is looked up on `PATH`); the pinned copy `scripts/install-nats-server` installs in `.tools/nats/bin`
/// under the workspace root; `nats-server` on `PATH`. The answer is computed once per process.
///
/// # Panics
///
/// If `SWARMSTATE_NATS_SERVER` names a file that does not exist, or the binary found is older than
/// [`MINIMUM_SERVER_VERSION`] or does not report a version: a wrong server is a setup error to
/// fix, not a reason to skip.
pub fn nats_server_binary() -> Option<PathBuf> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY.get_or_init(find_and_check_binary).clone()
}

/// Returns the `nats-server` binary for a test that needs one, or `None` when the test should
/// return early because none is installed.
///
/// Under CI a missing server is a failure, never a skip: when the environment variable `CI` is
/// set to anything but empty, `false` or `0`, this panics with instructions instead of returning
/// `None`. Elsewhere it prints a loud notice to stderr (past the test harness's output capture)
/// and returns `None`, so that `cargo test` works on a machine without NATS.
///
/// ```no_run
/// # async fn example() {
/// let Some(_) = swarmstate_nats::testing::require_server() else { return };
/// # }
/// ```
///
/// # Panics
///
/// Under CI when no server is found, and in every case where [`nats_server_binary`] panics.
pub fn require_server() -> Option<PathBuf> {
    // Written to the process's stderr directly, not through `eprintln!`, which the test harness
    // captures and shows only for failing tests.
    nats_server_binary().or_else(|| missing_server(running_under_ci(), &mut io::stderr()))
}

/// What [`require_server`] does without a server: under CI, fail; elsewhere, skip loudly.
fn missing_server(ci: bool, notice: &mut dyn Write) -> Option<PathBuf> {
    let how = format!(
        "Install the pinned server with `scripts/install-nats-server` (scripts/test does this), \
         or set {SERVER_ENV}=/path/to/nats-server (version >= {}).",
        version_string(MINIMUM_SERVER_VERSION)
    );
    if ci {
        panic!("no nats-server found, and CI is set, so NATS tests must not be skipped. {how}");
    }
    static ANNOUNCED: AtomicBool = AtomicBool::new(false);
    let message = if ANNOUNCED.swap(true, Ordering::Relaxed) {
        "SKIPPED: NATS test (no nats-server found; see above)\n".to_string()
    } else {
        let rule = "=".repeat(78);
        format!(
            "{rule}\nSKIPPING NATS TESTS: no nats-server found, so tests that need one pass \
             without running.\n{how}\nUnder CI (CI=true) a missing server fails these tests \
             instead.\n{rule}\n"
        )
    };
    let _ = notice.write_all(message.as_bytes());
    None
}

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
    pub fn pause(&self) {
        self.signal("STOP");
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
    fn prepare(
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
    fn is_alive(&mut self) -> bool {
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
    fn spawn(&mut self) -> u64 {
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
    async fn wait_ready(
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
    fn report(&self, what: &str, output: &str) -> String {
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

/// A cluster of `nats-server` nodes with JetStream, named `n0`, `n1`, …, in cluster `swarm`,
/// each on its own free `127.0.0.1` client and cluster ports, with routes to all the others and
/// its own temporary store directory.
///
/// A cluster started with [`start_partitionable`](Self::start_partitionable) routes every
/// connection between two nodes through a proxy the test can cut
/// ([`partition`](Self::partition), [`isolate`](Self::isolate)) and restore
/// ([`heal`](Self::heal)).
///
/// Dropping it kills and reaps every node and stops every proxy.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    /// Empty unless partitionable; then one link per ordered pair of distinct nodes.
    links: Vec<Link>,
    /// The ports partitionable nodes advertise as their cluster address, held bound without
    /// listening so that nothing else takes them and every connection to them is refused.
    advertised: Vec<TcpSocket>,
}

/// The proxy that carries every route connection node `from` opens to node `to`.
#[derive(Debug)]
struct Link {
    from: usize,
    to: usize,
    proxy: Proxy,
}

impl NatsCluster {
    /// Starts `size` nodes and waits (up to about 30 s) until the cluster can create a bucket
    /// replicated on all of them (a JetStream meta leader is elected and every peer is known).
    ///
    /// # Panics
    ///
    /// If `size` is 0, no server is found (call [`require_server`] first), or the cluster does
    /// not form in time; the message includes the servers' logs.
    pub async fn start(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, false).await
    }

    /// Starts `size` nodes whose routes to each other all pass through loopback proxies the
    /// test controls, and waits (up to about 30 s) until the cluster can create a bucket
    /// replicated on all of them. Start with every link open; cut links with
    /// [`partition`](Self::partition) or [`isolate`](Self::isolate), restore them with
    /// [`heal`](Self::heal).
    ///
    /// For each ordered pair of nodes `i`, `j`, node `i`'s configured route to `j` is a proxy on
    /// `127.0.0.1` that forwards to `j`'s cluster port, so every connection `i` opens to `j`
    /// passes through it. Two settings keep the nodes from going around the proxies:
    ///
    /// - `cluster.advertise` names, for each node, a loopback port on which nothing listens.
    ///   Nodes tell each other about their peers' advertised route addresses and connect to a
    ///   peer they have no route to; in a partition that would be exactly the peers cut off, so
    ///   every such attempt must be refused.
    /// - `cluster.no_advertise: true` keeps a node from telling clients the other nodes' client
    ///   URLs, so a client given one node's URL stays on that node: a client of an isolated
    ///   node stays on the isolated side instead of reconnecting to the majority.
    ///
    /// Partitions are made with proxies, not network namespaces, because every server binds
    /// `127.0.0.1` only and no traffic may go to any other address: nodes in separate namespaces
    /// could only reach each other over veth addresses. The proxies are tokio tasks on the
    /// runtime that called this; the runtime must keep running them (a test on the
    /// current-thread runtime must not block its thread while the cluster has to talk).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start); also if the proxies cannot bind a port.
    pub async fn start_partitionable(size: usize) -> NatsCluster {
        NatsCluster::start_with(size, true).await
    }

    async fn start_with(size: usize, partitionable: bool) -> NatsCluster {
        assert!(size > 0, "a cluster needs at least one node");
        let binary = expect_binary();
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match NatsCluster::try_start(&binary, size, partitionable).await {
                Ok(cluster) => return cluster,
                Err(StartError::PortInUse(report)) => last_failure = report,
                Err(StartError::Failed(report)) => panic!("{report}"),
            }
        }
        panic!("gave up after {PORT_ATTEMPTS} attempts to find free ports; last: {last_failure}");
    }

    async fn try_start(
        binary: &Path,
        size: usize,
        partitionable: bool,
    ) -> Result<NatsCluster, StartError> {
        let ports = free_ports(2 * size);
        let (client_ports, cluster_ports) = ports.split_at(size);
        let mut links = Vec::new();
        let mut advertised = Vec::new();
        if partitionable {
            for from in 0..size {
                for to in (0..size).filter(|&to| to != from) {
                    let target = SocketAddr::from(([127, 0, 0, 1], cluster_ports[to]));
                    let proxy = Proxy::start(target).await.unwrap_or_else(|err| {
                        panic!("starting the proxy from n{from} to n{to}: {err}")
                    });
                    links.push(Link { from, to, proxy });
                }
                advertised.push(unreachable_port());
            }
        }
        let mut nodes: Vec<NatsServer> = (0..size)
            .map(|i| {
                let route_ports: Vec<u16> = if partitionable {
                    links
                        .iter()
                        .filter(|link| link.from == i)
                        .map(|link| link.proxy.port())
                        .collect()
                } else {
                    cluster_ports.to_vec()
                };
                let advertise_port = advertised
                    .get(i)
                    .map(|socket: &TcpSocket| local_port(socket));
                let cluster = ClusterConfig {
                    port: cluster_ports[i],
                    route_ports: &route_ports,
                    advertise_port,
                };
                NatsServer::prepare(
                    binary,
                    &format!("n{i}"),
                    client_ports[i],
                    Some(cluster),
                    CLUSTER_READY_TIMEOUT,
                )
            })
            .collect();
        let offsets: Vec<u64> = nodes.iter_mut().map(NatsServer::spawn).collect();
        // Each node accepts clients before the cluster has formed; JetStream readiness is
        // checked for the cluster as a whole below.
        for (node, offset) in nodes.iter_mut().zip(offsets) {
            node.wait_ready(Readiness::Connect, offset).await?;
        }
        let mut cluster = NatsCluster {
            nodes,
            links,
            advertised,
        };
        cluster.wait_for_replicated_jetstream().await?;
        if partitionable {
            cluster.wait_for_proxied_routes().await?;
        }
        Ok(cluster)
    }

    /// Waits until every pair of nodes has connected through its proxies, so that a test starts
    /// with every route up. (That nothing goes around the proxies is `advertise`'s job, and
    /// `tests/partition.rs` checks it with messages across cuts.)
    async fn wait_for_proxied_routes(&self) -> Result<(), StartError> {
        let started = Instant::now();
        loop {
            let missing: Vec<(usize, usize)> = (0..self.nodes.len())
                .flat_map(|a| ((a + 1)..self.nodes.len()).map(move |b| (a, b)))
                .filter(|&(a, b)| self.proxied_connections(a, b) == 0)
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= CLUSTER_READY_TIMEOUT {
                return Err(StartError::Failed(self.report(&format!(
                    "formed, but no route passes through the proxies between these pairs of \
                     nodes after {CLUSTER_READY_TIMEOUT:?}: {missing:?}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Splits the cluster into `groups`: every link between nodes of different groups is cut,
    /// every link within a group is open. A node named in no group is cut off from every other
    /// node. This replaces any earlier partition; [`heal`](Self::heal) undoes it.
    ///
    /// Cutting a link closes every route connection it carries at once, and every connection
    /// a node opens across it while it stays cut is closed as soon as it is accepted (the node
    /// sees the connection end, as on a reset). Client connections are not affected: a client
    /// of a cut-off node stays connected to it. Returns at once; the nodes notice the lost
    /// routes on their own, and JetStream elects new leaders on its own schedule.
    ///
    /// ```no_run
    /// # async fn example() {
    /// # use swarmstate_nats::testing::NatsCluster;
    /// let cluster = NatsCluster::start_partitionable(3).await;
    /// cluster.partition(&[&[0], &[1, 2]]); // n0 alone; n1 and n2 still see each other
    /// // ...
    /// cluster.heal();
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If the cluster was not started with [`start_partitionable`](Self::start_partitionable),
    /// or a group names a node that does not exist or one already named.
    pub fn partition(&self, groups: &[&[usize]]) {
        let group_of = self.groups_of(groups);
        for link in &self.links {
            let together =
                group_of[link.from].is_some() && group_of[link.from] == group_of[link.to];
            link.proxy.set_open(together);
        }
    }

    /// Cuts node `index` off from every other node, leaving the others connected to each other:
    /// `partition(&[&[index], &[every other node]])`.
    ///
    /// # Panics
    ///
    /// If the cluster was not started with [`start_partitionable`](Self::start_partitionable),
    /// or there is no such node.
    pub fn isolate(&self, index: usize) {
        assert!(
            index < self.nodes.len(),
            "isolate: no node {index} in a cluster of {}",
            self.nodes.len()
        );
        let others: Vec<usize> = (0..self.nodes.len()).filter(|&i| i != index).collect();
        self.partition(&[&[index], &others]);
    }

    /// Opens every link again. Returns at once: the nodes reconnect their configured routes on
    /// their own retry schedule (about once a second), and cut-off nodes catch up afterwards.
    ///
    /// # Panics
    ///
    /// If the cluster was not started with [`start_partitionable`](Self::start_partitionable).
    pub fn heal(&self) {
        self.expect_partitionable("heal");
        for link in &self.links {
            link.proxy.set_open(true);
        }
    }

    /// How many connections between nodes `a` and `b` pass through their proxies right now, in
    /// both directions (a route is one or more TCP connections, opened by either node). Nonzero
    /// for every pair once the cluster has started, 0 across a cut, nonzero again once the
    /// nodes have reconnected after a heal.
    ///
    /// # Panics
    ///
    /// If the cluster was not started with [`start_partitionable`](Self::start_partitionable).
    pub fn proxied_connections(&self, a: usize, b: usize) -> usize {
        self.expect_partitionable("proxied_connections");
        self.links
            .iter()
            .filter(|link| (link.from, link.to) == (a, b) || (link.from, link.to) == (b, a))
            .map(|link| link.proxy.carried())
            .sum()
    }

    /// Every node's group index in `groups` (`None` for a node in no group), checking that no
    /// node is named twice or does not exist.
    fn groups_of(&self, groups: &[&[usize]]) -> Vec<Option<usize>> {
        self.expect_partitionable("partition");
        let mut group_of = vec![None; self.nodes.len()];
        for (group, members) in groups.iter().enumerate() {
            for &node in *members {
                let slot = group_of.get_mut(node).unwrap_or_else(|| {
                    panic!(
                        "partition {groups:?}: no node {node} in a cluster of {}",
                        self.nodes.len()
                    )
                });
                assert!(
                    slot.is_none(),
                    "partition {groups:?}: node {node} is in more than one group"
                );
                *slot = Some(group);
            }
        }
        group_of
    }

    fn expect_partitionable(&self, what: &str) {
        assert!(
            !self.advertised.is_empty(),
            "{what}: the cluster was not started with NatsCluster::start_partitionable"
        );
    }

    /// Retries creating (then deleting) a throwaway bucket with one replica per node.
    async fn wait_for_replicated_jetstream(&mut self) -> Result<(), StartError> {
        let started = Instant::now();
        let replicas = self.nodes.len();
        let mut last_error;
        let client = connect(self.urls())
            .await
            .map_err(|err| StartError::Failed(self.report(&format!("connecting: {err}"))))?;
        let js = jetstream::new(client);
        loop {
            let bucket = unique_name("fixture_ready");
            let config = jetstream::kv::Config {
                bucket: bucket.clone(),
                num_replicas: replicas,
                ..Default::default()
            };
            let attempt = tokio::time::timeout(Duration::from_secs(5), js.create_key_value(config));
            match attempt.await {
                Ok(Ok(_)) => {
                    let _ = js.delete_key_value(&bucket).await;
                    return Ok(());
                }
                Ok(Err(err)) => last_error = err.to_string(),
                Err(_) => last_error = "creating the bucket timed out".to_string(),
            }
            for node in &mut self.nodes {
                if !node.is_alive() {
                    let name = node.name.clone();
                    return Err(StartError::Failed(
                        self.report(&format!("node {name} exited while the cluster formed")),
                    ));
                }
            }
            if started.elapsed() >= CLUSTER_READY_TIMEOUT {
                return Err(StartError::Failed(self.report(&format!(
                    "no R{replicas} bucket after {CLUSTER_READY_TIMEOUT:?}; last error: {last_error}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node's client URL, in node order; pass this to [`async_nats::connect`] to connect to
    /// whichever node is up.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Every node's client URL, comma-separated (`nats://127.0.0.1:A,nats://127.0.0.1:B,…`), the
    /// form the `nats` CLI and NATS URL strings use. `async_nats::connect` does not split commas:
    /// give it [`urls`](Self::urls).
    pub fn connect_url(&self) -> String {
        self.urls().join(",")
    }

    /// Connects a client to the cluster; it reconnects to another node when its node dies.
    ///
    /// # Panics
    ///
    /// If no node accepts the connection.
    pub async fn connect(&self) -> Client {
        connect(self.urls())
            .await
            .unwrap_or_else(|err| panic!("connecting to the cluster {:?}: {err}", self.urls()))
    }

    /// Node `index` (named `n{index}`).
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn node(&self, index: usize) -> &NatsServer {
        &self.nodes[index]
    }

    /// Node `index`, to [`kill`](NatsServer::kill), [`restart`](NatsServer::restart),
    /// [`pause`](NatsServer::pause) or [`resume`](NatsServer::resume) it.
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn node_mut(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    /// The index of the node that leads JetStream stream `stream` (a key-value bucket `B` is the
    /// stream `KV_B`), or `None` if it cannot be told right now: no leader (an election is
    /// running), no such stream, or no node answering within a few seconds.
    ///
    /// Asks whichever node a client reaches first; during a partition, ask a node on the side
    /// whose answer you want with [`stream_leader_seen_by`](Self::stream_leader_seen_by).
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.stream_leader_asking(self.urls(), stream).await
    }

    /// Like [`stream_leader`](Self::stream_leader), but asks only node `index`, through a client
    /// connected to it: during a partition, the leader as seen from that node's side. A node cut
    /// off from a quorum of the stream's replicas answers `None`, or, until it notices, the
    /// leader it last knew (itself, if it led).
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub async fn stream_leader_seen_by(&self, index: usize, stream: &str) -> Option<usize> {
        self.stream_leader_asking(self.nodes[index].url(), stream)
            .await
    }

    async fn stream_leader_asking(&self, urls: impl ToServerAddrs, stream: &str) -> Option<usize> {
        let client = connect(urls).await.ok()?;
        let js = jetstream::new(client);
        let stream = tokio::time::timeout(Duration::from_secs(5), js.get_stream(stream))
            .await
            .ok()?
            .ok()?;
        let leader = stream.cached_info().cluster.as_ref()?.leader.as_deref()?;
        self.nodes.iter().position(|node| node.name == leader)
    }

    fn report(&self, what: &str) -> String {
        let mut report = format!("cluster {:?} {what}\n", self.urls());
        for node in &self.nodes {
            report.push_str(&node.report("", &node.log()));
            report.push('\n');
        }
        report
    }
}

/// What "ready" means for a node being started.
#[derive(Debug, Clone, Copy)]
enum Readiness {
    /// A client can connect.
    Connect,
    /// JetStream answers an account info request.
    JetStream,
}

#[derive(Debug)]
enum StartError {
    /// A port was taken by someone else before the server bound it; retry with others.
    PortInUse(String),
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
struct ClusterConfig<'a> {
    port: u16,
    /// The ports this node routes to: every node's cluster port, this node's included (the
    /// server ignores a route to itself); or, in a partitionable cluster, the proxy in front of
    /// each other node's cluster port.
    route_ports: &'a [u16],
    /// In a partitionable cluster, a port on which nothing listens, for the node to advertise as
    /// its cluster address (see [`NatsCluster::start_partitionable`]); `None` otherwise.
    advertise_port: Option<u16>,
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
async fn connect(addrs: impl ToServerAddrs) -> Result<Client, async_nats::ConnectError> {
    ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(addrs)
        .await
}

/// Ports that were free a moment ago: bound together on 127.0.0.1 (so they are distinct), then
/// released for the server to take. Someone else may take one first; callers retry.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| {
            TcpListener::bind(("127.0.0.1", 0))
                .unwrap_or_else(|err| panic!("binding 127.0.0.1:0 to find a free port: {err}"))
        })
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .expect("bound listener has an address")
                .port()
        })
        .collect()
}

/// A socket bound to a free `127.0.0.1` port that never listens: while it is held, no one else
/// can take the port and every connection to it is refused.
fn unreachable_port() -> TcpSocket {
    TcpSocket::new_v4()
        .and_then(|socket| {
            socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            Ok(socket)
        })
        .unwrap_or_else(|err| panic!("binding 127.0.0.1:0 to reserve a port: {err}"))
}

fn local_port(socket: &TcpSocket) -> u16 {
    socket
        .local_addr()
        .expect("a bound socket has an address")
        .port()
}

/// A name no other test in any process is using.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A string literal for the NATS config format.
fn quote(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

fn expect_binary() -> PathBuf {
    nats_server_binary().unwrap_or_else(|| {
        panic!(
            "no nats-server found: start the test with `let Some(_) = require_server() else \
             {{ return }};`, and install one with scripts/install-nats-server"
        )
    })
}

fn running_under_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

/// `CI` set to anything but empty, `0` or `false` (any case) means CI, as CI services set it to
/// `true` (or, on some, `1`).
fn ci_value_means_ci(value: Option<&str>) -> bool {
    value.is_some_and(|value| {
        let value = value.trim();
        !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
    })
}

fn find_and_check_binary() -> Option<PathBuf> {
    let binary = find_binary()?;
    let version = server_version(&binary);
    let minimum = version_string(MINIMUM_SERVER_VERSION);
    match version {
        Some(found) if found >= MINIMUM_SERVER_VERSION => Some(binary),
        Some(found) => panic!(
            "{} is nats-server {}, but swarmstate needs nats-server >= {minimum}. Install the \
             pinned version with scripts/install-nats-server (and unset {SERVER_ENV}), or point \
             {SERVER_ENV} at a newer server.",
            binary.display(),
            version_string(found)
        ),
        None => panic!(
            "`{} --version` did not report a nats-server version; need nats-server >= {minimum}",
            binary.display()
        ),
    }
}

fn find_binary() -> Option<PathBuf> {
    if let Some(value) = std::env::var_os(SERVER_ENV).filter(|value| !value.is_empty()) {
        let named = PathBuf::from(&value);
        let found = if named.components().count() == 1 {
            search_path(&named)
        } else {
            Some(named.clone()).filter(|path| path.is_file())
        };
        return Some(found.unwrap_or_else(|| {
            let problem = if named.components().count() == 1 {
                "names no program on PATH"
            } else {
                "is not a file (a relative path is taken from the test's working directory, the \
                 crate's directory: use an absolute path)"
            };
            panic!(
                "{SERVER_ENV}={} {problem}; point it at a nats-server binary or unset it",
                named.display()
            )
        }));
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/nats/bin/nats-server");
    if installed.is_file() {
        return Some(installed.canonicalize().unwrap_or(installed));
    }
    search_path(Path::new("nats-server"))
}

fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The version `nats-server --version` reports (`nats-server: v2.15.1`).
fn server_version(binary: &Path) -> Option<(u32, u32, u32)> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text)
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let mut numbers = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    let major = numbers.next()?.ok()?;
    let minor = numbers.next()?.ok()?;
    let patch = numbers.next()?.ok()?;
    Some((major, minor, patch))
}

fn version_string((major, minor, patch): (u32, u32, u32)) -> String {
    format!("{major}.{minor}.{patch}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_nats_server_output() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.12.1-RC.3"), Some((2, 12, 1)));
        assert_eq!(parse_version("nats-server: v10.0.12"), Some((10, 0, 12)));
        assert_eq!(parse_version("no version here"), None);
        assert!((2, 9, 10) < MINIMUM_SERVER_VERSION);
        assert!((2, 12, 1) >= MINIMUM_SERVER_VERSION);
    }

    #[test]
    fn ci_means_set_to_anything_but_empty_zero_or_false() {
        for value in ["true", "1", "yes", "TRUE"] {
            assert!(ci_value_means_ci(Some(value)), "{value}");
        }
        for value in [None, Some(""), Some("0"), Some("false"), Some("False")] {
            assert!(!ci_value_means_ci(value), "{value:?}");
        }
    }

    #[test]
    fn missing_server_is_a_skip_locally_and_a_failure_under_ci() {
        let mut notice = Vec::new();
        assert_eq!(missing_server(false, &mut notice), None);
        let notice = String::from_utf8(notice).unwrap();
        assert!(notice.contains("scripts/install-nats-server"), "{notice}");
        let under_ci = std::panic::catch_unwind(|| missing_server(true, &mut io::sink()));
        let message = under_ci.expect_err("a missing server must fail under CI");
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("scripts/install-nats-server"), "{message}");
    }

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

    #[test]
    fn an_unreachable_port_refuses_connections() {
        let socket = unreachable_port();
        let port = local_port(&socket);
        let refused = std::net::TcpStream::connect(("127.0.0.1", port)).expect_err("connected");
        assert_eq!(
            refused.kind(),
            io::ErrorKind::ConnectionRefused,
            "{refused}"
        );
        // Held, so no one else can take it.
        let taken = TcpListener::bind(("127.0.0.1", port)).expect_err("bound a held port");
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse, "{taken}");
    }
}
