//! Launches local `nats-server` processes and clusters on loopback, for tests, benchmarks and
//! `swarmstate check --store nats-local://N`: a single node ([`NatsServer`]) and a cluster
//! ([`NatsCluster`]), each node on free `127.0.0.1` ports with its own temporary store
//! directory and `jetstream { sync_interval: always }` (fsync before every acknowledgement, the
//! setting swarmstate documents and tests its durability with).
//!
//! It only starts and signals processes; it knows nothing of swarmstate's stores. Tests start
//! with [`require_server`]:
//!
//! ```no_run
//! # async fn example() {
//! use swarmstate_nats_local::{require_server, NatsServer};
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

mod binary;
mod cluster;
mod ports;
mod proxy;
mod server;

pub use binary::{MINIMUM_SERVER_VERSION, SERVER_ENV, nats_server_binary, require_server};
pub use cluster::NatsCluster;
pub use server::{NatsServer, all_threads_stopped};
