//! The key-value workload: concurrent clients doing mixed reads and writes over many keys,
//! recorded for the checker.
//!
//! This is the register workload. A recipe (lock, queue) is recorded by handing it recording
//! clients instead of the store ([`RecordingClient`] is a `StateStore`), and its history checked
//! like this one's; invariants of its own (one holder at a time, each item done once) it checks
//! beside (see `tests/recipes.rs`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use swarmstate_core::{Error, Key, PutOptions, Result, Revision, StateStore};

use crate::generate::Rng;
use crate::history::History;
use crate::recorder::{Recorder, RecordingClient};

/// How often each kind of operation is chosen, as relative weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Reads.
    pub get: u32,
    /// Unconditional writes.
    pub overwrite: u32,
    /// Writes only if absent.
    pub create: u32,
    /// Writes at the revision the client last saw (compare-and-set).
    pub update: u32,
    /// Unconditional deletes.
    pub delete: u32,
    /// Deletes at the revision the client last saw.
    pub delete_at: u32,
}

impl Default for Mix {
    /// 40 % gets, 15 % overwrites, 10 % creates, 20 % updates, 7 % deletes, 8 % deletes at a
    /// revision.
    fn default() -> Self {
        Mix {
            get: 40,
            overwrite: 15,
            create: 10,
            update: 20,
            delete: 7,
            delete_at: 8,
        }
    }
}

/// A concurrent key-value workload.
///
/// Each client loops until `duration` has passed (or `max_operations` have been started in
/// all): it picks a key (half of the time from the hottest tenth, so that clients collide) and
/// an operation by `mix`; conditional operations use the revision the client last saw for the
/// key. A share `ttl_fraction` of the writes carries `ttl`. Every value written is unique. A
/// client told [`Error::Unavailable`] waits 20 ms before its next operation.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys.
    pub keys: usize,
    /// How long the clients run.
    pub duration: Duration,
    /// Stop once this many operations have been started, if set.
    pub max_operations: Option<usize>,
    /// The share of writes that carry a TTL (0 to 1).
    pub ttl_fraction: f64,
    /// The TTL of those writes; `None` picks the store's TTL granularity, at least 200 ms.
    pub ttl: Option<Duration>,
    /// Keys are `<prefix>.k<n>`; `None` picks a fresh `check.r<time>` so runs do not meet.
    pub prefix: Option<String>,
    /// Abandon an operation (recorded as ambiguous) after this long.
    pub operation_timeout: Duration,
    /// How often each kind of operation is chosen.
    pub mix: Mix,
    /// The seed of the clients' choices.
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 8,
            keys: 100,
            duration: Duration::from_secs(2),
            max_operations: None,
            ttl_fraction: 0.1,
            ttl: None,
            prefix: None,
            operation_timeout: crate::recorder::DEFAULT_OPERATION_TIMEOUT,
            mix: Mix::default(),
            seed: 7,
        }
    }
}

/// How long a client that was told [`Error::Unavailable`] (nothing applied: the store is down
/// or unreachable) waits before its next operation, so that a store that refuses connections
/// at once is not hammered while it restarts.
const UNAVAILABLE_BACKOFF: Duration = Duration::from_millis(20);

impl Workload {
    /// The TTL the workload's TTL writes carry on `store`: [`Workload::ttl`], or the store's
    /// TTL granularity, at least 200 ms. A fault meant to outlast every TTL (a pause) uses this.
    pub fn ttl_on(&self, store: &dyn StateStore) -> Duration {
        self.ttl.unwrap_or_else(|| {
            store
                .capabilities()
                .ttl_granularity
                .max(Duration::from_millis(200))
        })
    }

    /// Runs the workload against `store` and returns the recorded history (expiries included).
    ///
    /// Errors: only when the recorder cannot start (the store refuses a watch) or a key cannot
    /// be formed from the prefix. Failed operations are part of the history, not errors.
    pub async fn record(&self, store: Arc<dyn StateStore>) -> Result<History> {
        self.record_until(store, async {}).await
    }

    /// Like [`record`](Self::record), but the clients go on after `duration` until `also` has
    /// completed too (it runs beside them from the start): a fault injector, so that every
    /// fault is over, and the servers recovered, while the clients still run, however long
    /// the faults took. Reaching `max_operations` still ends the run at once, dropping `also`.
    pub async fn record_until(
        &self,
        store: Arc<dyn StateStore>,
        also: impl Future<Output = ()>,
    ) -> Result<History> {
        let prefix = match &self.prefix {
            Some(prefix) => prefix.clone(),
            None => format!(
                "check.r{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ),
        };
        let keys: Vec<Key> = (0..self.keys.max(1))
            .map(|n| Key::new(format!("{prefix}.k{n}")))
            .collect::<Result<_>>()?;
        let ttl = self.ttl_on(&*store);
        let recorder = Recorder::with_timeout(store, self.operation_timeout).await?;
        let keys = Arc::new(keys);
        let started = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for n in 0..self.clients.max(1) {
            let client = Client {
                recording: recorder.client(),
                rng: Rng::new(self.seed.wrapping_mul(1000).wrapping_add(n as u64)),
                keys: keys.clone(),
                last_read: vec![None; keys.len()],
                name: n,
                sequence: 0,
                mix: self.mix,
                ttl,
                ttl_fraction: self.ttl_fraction,
            };
            let started = started.clone();
            let stop = stop.clone();
            let limit = self.max_operations.unwrap_or(usize::MAX);
            tasks.push(tokio::spawn(async move {
                let mut client = client;
                while !stop.load(Ordering::Acquire)
                    && started.fetch_add(1, Ordering::Relaxed) < limit
                {
                    if let Err(Error::Unavailable { .. }) = client.one().await {
                        tokio::time::sleep(UNAVAILABLE_BACKOFF).await;
                    }
                    // An in-process store answers without ever suspending; yielding lets the
                    // other clients and the recorder's watcher keep up.
                    tokio::task::yield_now().await;
                }
            }));
        }
        let clients = async {
            for task in tasks {
                if let Err(err) = task.await
                    && err.is_panic()
                {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
        };
        tokio::pin!(clients);
        let time_is_up = async {
            tokio::join!(tokio::time::sleep(self.duration), also);
        };
        tokio::select! {
            () = &mut clients => {}
            () = time_is_up => {
                stop.store(true, Ordering::Release);
                clients.await;
            }
        }
        Ok(recorder.finish().await)
    }
}

struct Client {
    recording: RecordingClient,
    rng: Rng,
    keys: Arc<Vec<Key>>,
    /// The revision this client last saw per key, for compare-and-set.
    last_read: Vec<Option<Revision>>,
    name: usize,
    sequence: u64,
    mix: Mix,
    ttl: Duration,
    ttl_fraction: f64,
}

impl Client {
    /// One operation; its error, if any (the recorder has recorded it either way).
    async fn one(&mut self) -> Result<()> {
        let hot = (self.keys.len() / 10).max(1) as u64;
        let index = if self.rng.chance(0.5) {
            self.rng.below(hot)
        } else {
            self.rng.below(self.keys.len() as u64)
        } as usize;
        let key = self.keys[index].clone();
        self.sequence += 1;
        let value = Bytes::from(format!("c{}-{}", self.name, self.sequence));
        let expected = self.last_read[index].unwrap_or(Revision::FIRST);
        let Mix {
            get,
            overwrite,
            create,
            update,
            delete,
            delete_at,
        } = self.mix;
        let weights = [get, overwrite, create, update, delete, delete_at];
        let total: u32 = weights.iter().sum();
        let mut roll = self.rng.below(u64::from(total.max(1))) as u32;
        let mut kind = weights.len() - 1;
        for (at, weight) in weights.into_iter().enumerate() {
            if roll < weight {
                kind = at;
                break;
            }
            roll -= weight;
        }
        // Outcomes are recorded by the recorder; the client only learns revisions from them.
        let options = match kind {
            0 => {
                let entry = self.recording.get(&key).await?;
                self.last_read[index] = entry.map(|e| e.revision);
                return Ok(());
            }
            1 => PutOptions::overwrite(),
            2 => PutOptions::create(),
            3 => PutOptions::update(expected),
            _ => {
                let at = (kind == 5).then_some(expected);
                let deleted = self.recording.delete(&key, at).await;
                self.last_read[index] = None;
                return deleted.map(drop);
            }
        };
        let options = if self.rng.chance(self.ttl_fraction) {
            options.ttl(self.ttl)
        } else {
            options
        };
        let written = self.recording.put(&key, value, options).await?;
        self.last_read[index] = Some(written);
        Ok(())
    }
}
