//! `NatsStore`: the swarmstate contract on a NATS JetStream key-value bucket, for swarms that
//! outgrow one machine.
//!
//! The bucket is an ordinary JetStream KV stream (`KV_<bucket>`, subjects
//! `$KV.<bucket>.<key>`), created with the settings the contract needs: history 1,
//! per-message TTL with limit markers, atomic batches, a 2-minute duplicate window. Revisions
//! are stream sequences. Durability is the server's: run it with
//! `jetstream { sync_interval: always }` and 3 replicas.
//!
//! ```no_run
//! # async fn demo() -> swarmstate_core::Result<()> {
//! use swarmstate_nats::NatsStore;
//! let store = NatsStore::builder("nats://127.0.0.1:4222")
//!     .bucket("swarm")
//!     .replicas(3)
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```

mod config;
mod expiry;
mod refused;
mod store;
mod txn;
mod watch;
mod wire;

pub use config::{DEFAULT_BUCKET, IDEMPOTENCY_WINDOW, NatsStoreBuilder, ReadConsistency};
pub use store::NatsStore;
