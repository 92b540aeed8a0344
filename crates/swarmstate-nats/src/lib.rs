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
//!
//! # Layers
//!
//! Each module uses only the modules listed before it:
//!
//! 1. `error` (`NatsError`: what a failed request says about its outcome, and the one
//!    conversion into `swarmstate_core::Error`), `wire` (subjects, headers, what a stored
//!    message means, pub acks, the request that tells "never sent" from "no answer") and
//!    `config` (the builder's settings, URLs, the bucket settings and opening the stream).
//! 2. Bookkeeping without I/O: `attempts` (how long a refused request keeps trying), `seen`
//!    (the hint cache of each key's last message), `slots` (the read barriers' reserved
//!    subjects).
//! 3. The connection: `bucket` (`Bucket`: requests, leader reads, commit barriers and
//!    confirmed reads), then `batch` (atomic batches, sent on a bucket's connection).
//! 4. What an answer proves: `expiry` (the guard against the server's late expiry marker) and
//!    `refused` (whether a refused write was applied anyway).
//! 5. `hub` (`Hub`: the store's one consumer of the bucket, its view of every key, the
//!    in-process fan-out to watchers, and batched read barriers).
//! 6. The operations: `write` (put, delete), `txn`, `watch` (watches and key listings).
//! 7. `store`: [`NatsStore`], the `StateStore` impl that hands each call to its operation,
//!    and the builder's `connect`.

// In layer order (see above).
mod config;
mod error;
mod wire;

mod attempts;
mod seen;
mod slots;

mod batch;
mod bucket;

mod expiry;
mod refused;

mod hub;

mod txn;
mod watch;
mod write;

mod store;

pub use config::{DEFAULT_BUCKET, IDEMPOTENCY_WINDOW, NatsStoreBuilder, ReadConsistency};
pub use store::NatsStore;
