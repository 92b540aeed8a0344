//! [`NatsCluster`]: several `nats-server` nodes routed to each other on loopback, optionally
//! through proxies a test can cut to make partitions.

use std::{
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::{Client, ToServerAddrs, jetstream};
use tokio::net::TcpSocket;

use crate::binary::expect_binary;
use crate::ports::{free_ports, local_port, unreachable_port};
use crate::proxy::Proxy;
use crate::server::{
    CLUSTER_READY_TIMEOUT, ClusterConfig, NatsServer, PORT_ATTEMPTS, Readiness, StartError, connect,
};

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
    ///
    /// [`require_server`]: crate::require_server
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
    /// # use swarmstate_nats_local::NatsCluster;
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
                    let name = node.name().to_owned();
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
        self.nodes.iter().position(|node| node.name() == leader)
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
