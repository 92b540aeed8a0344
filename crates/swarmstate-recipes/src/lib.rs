//! The coordination recipes of swarmstate, written only against the public
//! [`StateStore`](swarmstate_core::StateStore) trait, so they behave the same on every backend:
//!
//! - [`lock`]: locks with fencing tokens, a fair blocking acquire, keep-alive, fenced writes;
//! - [`election`]: leader election with terms, on the blocking lock;
//! - [`queue`]: a work queue with claims, leases, retries and dead letters;
//! - [`cache`]: a TTL cache with single-flight fills;
//! - [`config`]: a typed, live view of a key pattern.
//!
//! Users reach these through the `swarmstate` facade (`swarmstate::lock`, ...).
//!
//! Every recipe that waits for a change of the store does so through one follower of a key or
//! a pattern (the private `follow` module): waiting is driven by watches, never by polling,
//! and a watch that lags is answered by re-reading, never by hanging or guessing.

pub mod cache;
pub mod config;
pub mod election;
mod follow;
pub mod lock;
pub mod queue;
