//! The tools, their parameters and their descriptions (what a model reads to decide when to
//! use each).

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ProtocolVersion, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use swarmstate_core::{
    Condition, Entry, Error, Key, Pattern, PutOptions, Revision, StateStore, StateStoreExt,
    TxnAction, TxnOp, TxnResult, WatchEvent, WatchStart,
};
use swarmstate_http::wire::{Encoding, WireValue, decode_value};
use swarmstate_recipes::election::Election;
use swarmstate_recipes::lock::{LockGuard, acquire_lock, acquire_lock_wait};
use swarmstate_recipes::queue::{Claim, DEFAULT_MAX_ATTEMPTS, WorkQueue};

use crate::MAX_WAIT_SECONDS;
use crate::answer::{Answer, Failure, result};
use crate::holdings::Holdings;

/// The most keys `list_keys` returns, and the most changes one `wait_for_change` returns.
const MAX_ITEMS: usize = 1000;

/// What every tool description says about tokens, so a model reads it wherever it starts.
const TOKEN: &str = "A fencing token is a number that strictly increases with each new holder: \
                     pass it to fenced_write (and to refresh and release); once the lock has \
                     expired or moved on, a write with an old token is refused, so a stalled \
                     holder can never overwrite its successor's work.";

/// One MCP session's server: the store, and what the session holds.
#[derive(Debug, Clone)]
pub struct SwarmstateMcp {
    store: Arc<dyn StateStore>,
    held: Arc<Mutex<Holdings>>,
    tool_router: ToolRouter<SwarmstateMcp>,
}

impl SwarmstateMcp {
    /// Releases every lock and leadership the session holds, and waits for the releases; its
    /// claims are left to their leases. For a session that ends with its process, where a
    /// release in the background would not run.
    pub async fn release_all(&self) {
        let locks = std::mem::take(&mut self.held.lock().await.locks);
        for ((name, token), guard) in locks {
            if let Err(err) = guard.release().await {
                tracing::debug!(%name, token, %err, "release at the session's end failed");
            }
        }
    }

    /// A session on `store`, holding nothing yet.
    pub fn new(store: Arc<dyn StateStore>) -> SwarmstateMcp {
        SwarmstateMcp {
            store,
            held: Arc::default(),
            tool_router: SwarmstateMcp::tool_router(),
        }
    }
}

fn key(text: &str) -> Result<Key, Failure> {
    Ok(Key::new(text)?)
}

/// A duration in seconds from a model: finite, positive, at most ten years.
fn seconds(field: &str, value: f64) -> Result<Duration, Failure> {
    if !value.is_finite() || value <= 0.0 || value > 315_360_000.0 {
        return Err(Failure::bad(format!(
            "{field} must be a number of seconds above 0, got {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

/// A wait in seconds: absent or 0 tries once; at most [`MAX_WAIT_SECONDS`].
fn wait(value: Option<f64>) -> Result<Option<Duration>, Failure> {
    match value {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 && v <= MAX_WAIT_SECONDS => {
            Ok(Some(Duration::from_secs_f64(v)))
        }
        Some(v) => Err(Failure::bad(format!(
            "wait_seconds must be 0 to {MAX_WAIT_SECONDS}, got {v}; call again to wait longer"
        ))),
    }
}

fn revision(field: &str, n: u64) -> Result<Revision, Failure> {
    Revision::new(n).ok_or_else(|| Failure::bad(format!("{field} must be at least 1, got 0")))
}

/// A value from a model: text, or base64 when `encoding` says so (the wire format's rules).
fn value(text: &str, encoding: Option<&str>) -> Result<bytes::Bytes, Failure> {
    let encoding = match encoding {
        None | Some("utf8") => Encoding::Utf8,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(Failure::bad(format!(
                "encoding must be utf8 or base64, got {other:?}"
            )));
        }
    };
    decode_value(text, encoding, "value").map_err(Failure::bad)
}

/// A value for a model: text when it is UTF-8, else base64, saying which.
fn shown(bytes: &[u8]) -> (String, &'static str) {
    let WireValue { value, encoding } = WireValue::encode(bytes);
    let name = match encoding {
        Encoding::Utf8 => "utf8",
        Encoding::Base64 => "base64",
    };
    (value, name)
}

fn entry_json(entry: &Entry) -> Value {
    let (value, encoding) = shown(&entry.value);
    let mut out =
        json!({"key": entry.key.as_str(), "value": value, "revision": entry.revision.get()});
    if encoding != "utf8" {
        out["encoding"] = encoding.into();
    }
    if let Some(left) = entry.expires_in {
        out["expires_in_ms"] = (left.as_millis() as u64).into();
    }
    out
}

fn results_json(results: &[TxnResult]) -> Value {
    let results: Vec<Value> = results
        .iter()
        .map(|result| match result {
            TxnResult::Put(revision) => json!({"revision": revision.get()}),
            TxnResult::Deleted(revision) => json!({"revision": revision.get()}),
            TxnResult::NotFound => json!({"revision": null}),
            TxnResult::Checked => json!({}),
        })
        .collect();
    json!({ "results": results })
}

/// One write of a fenced write or a completion.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WriteOp {
    /// "put" or "delete".
    pub(crate) op: String,
    /// The key to write.
    pub(crate) key: String,
    /// The value of a put.
    pub(crate) value: Option<String>,
    /// "utf8" (default) or "base64", for the value.
    pub(crate) encoding: Option<String>,
    /// A put's time to live, in seconds; without it the value is permanent.
    pub(crate) ttl_seconds: Option<f64>,
    /// Apply only if the key is at this revision.
    pub(crate) expected_revision: Option<u64>,
}

fn ops(writes: Vec<WriteOp>) -> Result<Vec<TxnOp>, Failure> {
    writes
        .into_iter()
        .enumerate()
        .map(|(index, write)| {
            let target = key(&write.key)?;
            let mut op = match write.op.as_str() {
                "put" => {
                    let Some(text) = &write.value else {
                        return Err(Failure::bad(format!("write {index}: a put needs a value")));
                    };
                    let bytes = value(text, write.encoding.as_deref())?;
                    let ttl = write
                        .ttl_seconds
                        .map(|ttl| seconds("ttl_seconds", ttl))
                        .transpose()?;
                    TxnOp {
                        key: target.clone(),
                        action: TxnAction::Put { value: bytes, ttl },
                        condition: Condition::Any,
                    }
                }
                "delete" => {
                    if write.value.is_some() || write.ttl_seconds.is_some() {
                        return Err(Failure::bad(format!(
                            "write {index}: a delete takes no value or ttl_seconds"
                        )));
                    }
                    TxnOp::delete(&target)
                }
                other => {
                    return Err(Failure::bad(format!(
                        "write {index}: op must be put or delete, got {other:?}"
                    )));
                }
            };
            if let Some(expected) = write.expected_revision {
                op = op.when(Condition::At(revision("expected_revision", expected)?));
            }
            Ok(op)
        })
        .collect()
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct GetParams {
    /// The key, e.g. "config.model": dot-separated tokens of A-Z a-z 0-9 _ - / =.
    pub(crate) key: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct PutParams {
    /// The key to write.
    pub(crate) key: String,
    /// The value.
    pub(crate) value: String,
    /// "utf8" (default) or "base64".
    pub(crate) encoding: Option<String>,
    /// Write only if the key is still at this revision (from get): a safe read-modify-write.
    pub(crate) expected_revision: Option<u64>,
    /// Write only if the key does not exist yet.
    pub(crate) create_only: Option<bool>,
    /// Time to live in seconds; without it the value is permanent.
    pub(crate) ttl_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct DeleteParams {
    /// The key to delete.
    pub(crate) key: String,
    /// Delete only if the key is still at this revision.
    pub(crate) expected_revision: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ListParams {
    /// "*" for every key, "prefix.*" for every key under prefix., or an exact key.
    pub(crate) pattern: String,
    /// At most this many keys (default 100, at most 1000).
    pub(crate) limit: Option<usize>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct WaitParams {
    /// What to wait on: "*", "prefix.*" or an exact key.
    pub(crate) pattern: String,
    /// Return the changes after this revision (the next_after_revision of the previous call,
    /// or a revision from get). Without it, waits for the next change from now.
    pub(crate) after_revision: Option<u64>,
    /// How long to wait for a change, in seconds (default 30, at most 60).
    pub(crate) timeout_seconds: Option<f64>,
    /// At most this many changes (default 100, at most 1000).
    pub(crate) max_changes: Option<usize>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct AcquireParams {
    /// The lock's key, e.g. "locks.deploy".
    pub(crate) key: String,
    /// Who you are, shown to others as the holder.
    pub(crate) owner: String,
    /// How long the lock lives unless refreshed, in seconds.
    pub(crate) ttl_seconds: f64,
    /// How long to wait for it if held, in seconds (0 or absent: try once; at most 60).
    pub(crate) wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct LockParams {
    /// The lock's key.
    pub(crate) key: String,
    /// The fencing token lock_acquire returned.
    pub(crate) token: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct FencedParams {
    /// The lock's key, or the election's name for a leader.
    pub(crate) lock: String,
    /// The fencing token (or the leader's term) you hold it with.
    pub(crate) token: u64,
    /// The writes, applied together or not at all.
    pub(crate) writes: Vec<WriteOp>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct EnqueueParams {
    /// The queue's name: the prefix of its keys, e.g. "jobs".
    pub(crate) queue: String,
    /// The item's id: one key token (A-Z a-z 0-9 _ - / =, no dot). Enqueuing an id twice adds
    /// it once.
    pub(crate) id: String,
    /// The item's payload, as text.
    pub(crate) payload: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ClaimParams {
    /// The queue's name.
    pub(crate) queue: String,
    /// Who you are.
    pub(crate) worker: String,
    /// How long the claim is yours unless you heartbeat, in seconds.
    pub(crate) lease_seconds: f64,
    /// How long to wait for an item, in seconds (0 or absent: look once; at most 60).
    pub(crate) wait_seconds: Option<f64>,
    /// How many claims an item gets before it is dead-lettered (default 3).
    pub(crate) max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ItemParams {
    /// The queue's name.
    pub(crate) queue: String,
    /// The item's id.
    pub(crate) id: String,
    /// The claim's token, from queue_claim.
    pub(crate) token: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct CompleteParams {
    /// The queue's name.
    pub(crate) queue: String,
    /// The item's id.
    pub(crate) id: String,
    /// The claim's token, from queue_claim.
    pub(crate) token: u64,
    /// Result writes applied in the same transaction as the completion (optional).
    pub(crate) result_writes: Option<Vec<WriteOp>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct FailParams {
    /// The queue's name.
    pub(crate) queue: String,
    /// The item's id.
    pub(crate) id: String,
    /// The claim's token, from queue_claim.
    pub(crate) token: u64,
    /// Why it failed, kept with the item.
    pub(crate) reason: String,
    /// How many claims an item gets before it is dead-lettered (default 3).
    pub(crate) max_attempts: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct CampaignParams {
    /// The election's name (its leader key), e.g. "service.leader".
    pub(crate) name: String,
    /// Who you are.
    pub(crate) candidate: String,
    /// How long the leadership lives unless refreshed, in seconds.
    pub(crate) ttl_seconds: f64,
    /// How long to wait to become leader, in seconds (0 or absent: try once; at most 60).
    pub(crate) wait_seconds: Option<f64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct LeadershipParams {
    /// The election's name.
    pub(crate) name: String,
    /// Your term, from election_campaign.
    pub(crate) term: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct LeaderParams {
    /// The election's name.
    pub(crate) name: String,
}

fn queue_of(
    store: &Arc<dyn StateStore>,
    name: &str,
    max_attempts: Option<u32>,
) -> Result<WorkQueue, Failure> {
    let attempts = max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    if !(1..=1000).contains(&attempts) {
        return Err(Failure::bad(format!(
            "max_attempts must be 1 to 1000, got {attempts}"
        )));
    }
    Ok(WorkQueue::new(store.clone(), key(name)?).max_attempts(attempts))
}

fn lock_json(guard: &LockGuard) -> Value {
    json!({
        "key": guard.key().as_str(),
        "owner": guard.owner(),
        "token": guard.token().get(),
        "ttl_seconds": guard.ttl().as_secs_f64(),
    })
}

impl SwarmstateMcp {
    async fn do_get(&self, p: GetParams) -> Answer {
        let key = key(&p.key)?;
        Ok(match self.store.get(&key).await? {
            Some(entry) => entry_json(&entry),
            None => json!({"key": p.key, "absent": true}),
        })
    }

    async fn do_put(&self, p: PutParams) -> Answer {
        let key = key(&p.key)?;
        let mut options = match (p.expected_revision, p.create_only.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(Failure::bad(
                    "give expected_revision or create_only, not both",
                ));
            }
            (Some(expected), false) => PutOptions::update(revision("expected_revision", expected)?),
            (None, true) => PutOptions::create(),
            (None, false) => PutOptions::default(),
        };
        if let Some(ttl) = p.ttl_seconds {
            options = options.ttl(seconds("ttl_seconds", ttl)?);
        }
        let bytes = value(&p.value, p.encoding.as_deref())?;
        let revision = self.store.put(&key, bytes, options).await?;
        Ok(json!({"key": p.key, "revision": revision.get()}))
    }

    async fn do_delete(&self, p: DeleteParams) -> Answer {
        let key = key(&p.key)?;
        let expected = p
            .expected_revision
            .map(|n| revision("expected_revision", n))
            .transpose()?;
        let revision = self.store.delete(&key, expected).await?;
        Ok(
            json!({"key": p.key, "deleted": revision.is_some(), "revision": revision.map(Revision::get)}),
        )
    }

    async fn do_list(&self, p: ListParams) -> Answer {
        let pattern = Pattern::new(&p.pattern)?;
        let limit = p.limit.unwrap_or(100);
        if !(1..=MAX_ITEMS).contains(&limit) {
            return Err(Failure::bad(format!(
                "limit must be 1 to {MAX_ITEMS}, got {limit}"
            )));
        }
        let mut keys = self.store.keys(&pattern).await?;
        let mut out = Vec::new();
        let mut truncated = false;
        while let Some(key) = keys.next().await {
            let key = key?;
            if out.len() == limit {
                truncated = true;
                break;
            }
            out.push(key.as_str().to_owned());
        }
        Ok(json!({"keys": out, "truncated": truncated}))
    }

    async fn do_wait(&self, p: WaitParams) -> Answer {
        let pattern = Pattern::new(&p.pattern)?;
        let timeout = match p.timeout_seconds {
            None => Duration::from_secs(30),
            Some(v) if v.is_finite() && (0.0..=MAX_WAIT_SECONDS).contains(&v) => {
                Duration::from_secs_f64(v)
            }
            Some(v) => {
                return Err(Failure::bad(format!(
                    "timeout_seconds must be 0 to {MAX_WAIT_SECONDS}, got {v}; call again to wait longer"
                )));
            }
        };
        let max = p.max_changes.unwrap_or(100);
        if !(1..=MAX_ITEMS).contains(&max) {
            return Err(Failure::bad(format!(
                "max_changes must be 1 to {MAX_ITEMS}, got {max}"
            )));
        }
        // From a revision, so the answer can always say where the next call goes on.
        let after = match p.after_revision {
            Some(n) => Some(n),
            None => self.store.current_revision().await?.map(Revision::get),
        };
        let from = Revision::new(after.unwrap_or(0) + 1).expect("at least 1");
        let mut events = match self
            .store
            .watch(&pattern, WatchStart::FromRevision(from))
            .await
        {
            Ok(events) => events,
            // A backend that cannot replay from now on (its history of this key is shorter)
            // watches from now, which is the same thing.
            Err(Error::Compacted { .. }) if p.after_revision.is_none() => {
                self.store.watch(&pattern, WatchStart::Now).await?
            }
            Err(err) => return Err(err.into()),
        };
        let mut changes = Vec::new();
        let mut next_after = after.unwrap_or(0);
        let mut lagged = false;
        let first = tokio::time::timeout(timeout, events.next()).await;
        let mut next = match first {
            Err(_) | Ok(None) => None,
            Ok(Some(event)) => Some(event),
        };
        while let Some(event) = next.take() {
            match event {
                WatchEvent::Put(entry) => {
                    next_after = entry.revision.get();
                    let mut change = entry_json(&entry);
                    change["change"] = "put".into();
                    changes.push(change);
                }
                WatchEvent::Delete { key, revision } | WatchEvent::Expire { key, revision } => {
                    next_after = revision.get();
                    changes.push(json!({"change": "delete", "key": key.as_str(), "revision": revision.get()}));
                }
                WatchEvent::Lagged { .. } => {
                    lagged = true;
                    break;
                }
                WatchEvent::CaughtUp { .. } => {}
            }
            if changes.len() == max {
                break;
            }
            // Whatever else is already there comes in the same answer.
            next = events.next().now_or_never().flatten();
        }
        let mut out = json!({"changes": changes, "next_after_revision": next_after});
        if lagged {
            out["lagged"] = true.into();
            out["note"] = "changes were missed (too many too fast): read the keys you care \
                           about again, then wait with after_revision from those reads"
                .into();
        }
        Ok(out)
    }

    async fn do_acquire(&self, p: AcquireParams) -> Answer {
        let key = key(&p.key)?;
        let ttl = seconds("ttl_seconds", p.ttl_seconds)?;
        let guard = match wait(p.wait_seconds)? {
            None => acquire_lock(&self.store, &key, &p.owner, ttl).await?,
            Some(wait) => acquire_lock_wait(&self.store, &key, &p.owner, ttl, wait).await?,
        };
        let answer = lock_json(&guard);
        self.held
            .lock()
            .await
            .locks
            .insert((p.key, guard.token().get()), guard);
        Ok(answer)
    }

    /// Refreshes a held lock or leadership; a lost one leaves the table.
    async fn refresh_held(&self, name: String, token: u64, what: &str) -> Answer {
        let mut held = self.held.lock().await;
        let id = (name, token);
        let Some(guard) = held.locks.get(&id) else {
            return Err(Failure::not_held(&format!(
                "{what} {} with token {token}",
                id.0
            )));
        };
        match guard.refresh().await {
            Ok(()) => Ok(lock_json(guard)),
            Err(err) => {
                if matches!(err, Error::LockLost { .. }) {
                    held.locks.remove(&id);
                }
                Err(err.into())
            }
        }
    }

    async fn release_held(&self, name: String, token: u64, what: &str) -> Answer {
        let guard = self.held.lock().await.locks.remove(&(name.clone(), token));
        let Some(guard) = guard else {
            return Err(Failure::not_held(&format!(
                "{what} {name} with token {token}"
            )));
        };
        guard.release().await?;
        Ok(json!({"released": name}))
    }

    async fn do_fenced(&self, p: FencedParams) -> Answer {
        let ops = ops(p.writes)?;
        let mut held = self.held.lock().await;
        let id = (p.lock, p.token);
        let Some(guard) = held.locks.get(&id) else {
            return Err(Failure::not_held(&format!(
                "lock {} with token {}",
                id.0, id.1
            )));
        };
        match guard.fenced_txn(ops).await {
            Ok(results) => Ok(results_json(&results)),
            Err(err) => {
                if matches!(&err, Error::LockLost { key } if key.as_str() == id.0) {
                    held.locks.remove(&id);
                }
                Err(err.into())
            }
        }
    }

    async fn do_claim(&self, p: ClaimParams) -> Answer {
        let queue = queue_of(&self.store, &p.queue, p.max_attempts)?;
        let lease = seconds("lease_seconds", p.lease_seconds)?;
        let claim = match wait(p.wait_seconds)? {
            None => queue.claim(&p.worker, lease).await?,
            Some(wait) => queue.claim_wait(&p.worker, lease, wait).await?,
        };
        let Some(claim) = claim else {
            return Ok(json!({"claimed": null, "note": "nothing to claim now"}));
        };
        let (payload, encoding) = shown(&claim.payload);
        let mut answer = json!({
            "queue": p.queue,
            "id": claim.id,
            "payload": payload,
            "attempt": claim.attempt,
            "token": claim.token.get(),
            "lease_seconds": lease.as_secs_f64(),
        });
        if encoding != "utf8" {
            answer["encoding"] = encoding.into();
        }
        let id = (p.queue, claim.id.clone(), claim.token.get());
        self.held.lock().await.claims.insert(id, claim);
        Ok(answer)
    }

    /// The claim this session holds, cloned: an operation that ends it takes it by value.
    async fn claim_of(&self, queue: &str, id: &str, token: u64) -> Result<Claim, Failure> {
        let held = self.held.lock().await;
        let ident = (queue.to_owned(), id.to_owned(), token);
        held.claims.get(&ident).cloned().ok_or_else(|| {
            Failure::not_held(&format!(
                "the claim of item {id} of queue {queue} with token {token}"
            ))
        })
    }

    /// Drops a claim from the table once it ended: done, failed, or lost (any other error,
    /// such as an unavailable store, leaves it held, to be tried again).
    async fn forget_claim_if<T>(
        &self,
        queue: &str,
        id: &str,
        token: u64,
        outcome: &Result<T, Error>,
    ) {
        if outcome.is_ok() || matches!(outcome, Err(Error::LockLost { .. })) {
            self.held
                .lock()
                .await
                .claims
                .remove(&(queue.to_owned(), id.to_owned(), token));
        }
    }

    async fn do_heartbeat(&self, p: ItemParams) -> Answer {
        let queue = queue_of(&self.store, &p.queue, None)?;
        let claim = self.claim_of(&p.queue, &p.id, p.token).await?;
        let outcome = queue.heartbeat(&claim).await;
        // A live claim stays; clones share the lease revision, so the table's has the new one.
        if outcome.is_err() {
            self.forget_claim_if(&p.queue, &p.id, p.token, &outcome)
                .await;
        }
        outcome?;
        Ok(json!({"id": p.id, "token": p.token, "lease_seconds": claim.lease().as_secs_f64()}))
    }

    async fn do_complete(&self, p: CompleteParams) -> Answer {
        let queue = queue_of(&self.store, &p.queue, None)?;
        let ops = ops(p.result_writes.unwrap_or_default())?;
        let claim = self.claim_of(&p.queue, &p.id, p.token).await?;
        let outcome = queue.complete_with(claim, ops).await;
        self.forget_claim_if(&p.queue, &p.id, p.token, &outcome)
            .await;
        let mut answer = results_json(&outcome?);
        answer["completed"] = p.id.into();
        Ok(answer)
    }

    async fn do_fail(&self, p: FailParams) -> Answer {
        let queue = queue_of(&self.store, &p.queue, p.max_attempts)?;
        let claim = self.claim_of(&p.queue, &p.id, p.token).await?;
        let outcome = queue.fail(claim, &p.reason).await;
        self.forget_claim_if(&p.queue, &p.id, p.token, &outcome)
            .await;
        Ok(json!({"id": p.id, "state": outcome?.to_string()}))
    }

    async fn do_campaign(&self, p: CampaignParams) -> Answer {
        let name = key(&p.name)?;
        let ttl = seconds("ttl_seconds", p.ttl_seconds)?;
        let wait = wait(p.wait_seconds)?.unwrap_or(Duration::ZERO);
        let election = Election::new(self.store.clone(), name);
        let handle = election.campaign_handle(&p.candidate, ttl, wait).await?;
        let guard = election.resume(&handle)?;
        let term = handle.token.get();
        self.held
            .lock()
            .await
            .locks
            .insert((p.name.clone(), term), guard);
        Ok(
            json!({"name": p.name, "candidate": p.candidate, "term": term, "ttl_seconds": ttl.as_secs_f64()}),
        )
    }

    async fn do_leader(&self, p: LeaderParams) -> Answer {
        let name = key(&p.name)?;
        let leader = Election::new(self.store.clone(), name).leader().await?;
        Ok(json!({
            "name": p.name,
            "leader": leader.map(|leader| json!({"candidate": leader.candidate, "term": leader.term.get()})),
        }))
    }
}

#[tool_router]
impl SwarmstateMcp {
    #[tool(
        description = "Read one key of the shared state. Returns its value and revision (a number that grows with every change anywhere in the store), or absent: true. Use the revision as expected_revision in put to change the key only if nobody changed it since you read it."
    )]
    async fn get(&self, Parameters(p): Parameters<GetParams>) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_get(p).await))
    }

    #[tool(
        description = "Write one key. With expected_revision (from get) the write applies only if the key is still at that revision, otherwise it fails with revision_mismatch naming the actual revision: read again and decide again. create_only writes only if the key is absent. ttl_seconds makes the value expire. Returns the new revision. To write while holding a lock, use fenced_write instead."
    )]
    async fn put(&self, Parameters(p): Parameters<PutParams>) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_put(p).await))
    }

    #[tool(
        description = "Delete one key, optionally only if it is still at expected_revision. Deleting an absent key is not an error (deleted: false)."
    )]
    async fn delete(
        &self,
        Parameters(p): Parameters<DeleteParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_delete(p).await))
    }

    #[tool(
        description = "List keys in key order: pattern \"*\" for all, \"prefix.*\" for every key under prefix. (any depth), or an exact key."
    )]
    async fn list_keys(
        &self,
        Parameters(p): Parameters<ListParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_list(p).await))
    }

    #[tool(
        description = "Wait until keys matching a pattern change, instead of polling: returns the changes (puts with their values, deletes and expiries) after after_revision, as soon as there is at least one, or an empty list when timeout_seconds (at most 60) passed. Pass the returned next_after_revision as after_revision in the next call so no change is missed or repeated. Use it to wait for a config change, for a job result, or for a lock or leader to go away."
    )]
    async fn wait_for_change(
        &self,
        Parameters(p): Parameters<WaitParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_wait(p).await))
    }

    #[tool(
        description = "Take a lock so that only you do something (deploy, edit a file, call a rate-limited API). Returns its fencing token. A fencing token is a number that strictly increases with each new holder: pass it to fenced_write (and to lock_refresh and lock_release); once the lock has expired or moved on, a write with an old token is refused, so a stalled holder can never overwrite its successor's work. The lock expires after ttl_seconds unless you call lock_refresh before then. If someone else holds it, waits up to wait_seconds (first come, first served), else fails with lock_held naming the holder."
    )]
    async fn lock_acquire(
        &self,
        Parameters(p): Parameters<AcquireParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_acquire(p).await))
    }

    #[tool(
        description = "Keep a lock you hold: renews its TTL from now. Call it well within ttl_seconds (every third of it is safe). Fails with lock_lost if the lock expired or was taken over: stop acting as its holder."
    )]
    async fn lock_refresh(
        &self,
        Parameters(p): Parameters<LockParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.refresh_held(p.key, p.token, "lock").await))
    }

    #[tool(
        description = "Release a lock you hold as soon as you are done, so the next waiter gets it at once. Fails with lock_lost if it had already expired or moved on."
    )]
    async fn lock_release(
        &self,
        Parameters(p): Parameters<LockParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.release_held(p.key, p.token, "lock").await))
    }

    #[tool(
        description = "Write keys only while you still hold a lock (or a leadership: pass the election name as lock and the term as token). All writes apply together, and only if the lock is still yours with this token; otherwise nothing is written and it fails with lock_lost. A fencing token is a number that strictly increases with each new holder, so a holder that stalled past its TTL can never overwrite its successor's work. Each write: {op: put|delete, key, value, ttl_seconds, expected_revision}."
    )]
    async fn fenced_write(
        &self,
        Parameters(p): Parameters<FencedParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_fenced(p).await))
    }

    #[tool(
        description = "Add a work item to a queue, so that exactly one worker does it. Enqueuing an id that exists already changes nothing (created: false)."
    )]
    async fn queue_enqueue(
        &self,
        Parameters(p): Parameters<EnqueueParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let answer = async {
            let queue = queue_of(&self.store, &p.queue, None)?;
            let created = queue.enqueue(&p.id, p.payload).await?;
            Ok(json!({"queue": p.queue, "id": p.id, "created": created}))
        };
        Ok(result(answer.await))
    }

    #[tool(
        description = "Claim one work item from a queue: nobody else gets it while your lease lasts. Returns its id, payload, attempt and token (a fencing token: it strictly increases with each new claim of the item). Call queue_heartbeat within lease_seconds to keep it, then queue_complete or queue_fail. If your lease runs out the item goes to another worker and your completion is refused. Waits up to wait_seconds for an item; claimed: null when there is none."
    )]
    async fn queue_claim(
        &self,
        Parameters(p): Parameters<ClaimParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_claim(p).await))
    }

    #[tool(
        description = "Extend the lease of an item you claimed, from now. Fails with lock_lost if the lease already ran out (the item may be someone else's now): stop working on it."
    )]
    async fn queue_heartbeat(
        &self,
        Parameters(p): Parameters<ItemParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_heartbeat(p).await))
    }

    #[tool(
        description = "Mark a claimed item done, and write its results (result_writes) in the same transaction: the results are written exactly when the item is completed, and never by a worker whose lease ran out (that fails with lock_lost and writes nothing)."
    )]
    async fn queue_complete(
        &self,
        Parameters(p): Parameters<CompleteParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_complete(p).await))
    }

    #[tool(
        description = "Give a claimed item up after a failure, with the reason: it is retried by a worker later, or dead-lettered on its last attempt (state: pending or dead)."
    )]
    async fn queue_fail(
        &self,
        Parameters(p): Parameters<FailParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_fail(p).await))
    }

    #[tool(
        description = "Try to become the leader of an election (one leader at a time, e.g. the agent that plans or publishes). Returns your term: a fencing token that strictly increases with each new leader; pass name and term to fenced_write to write only while you still lead. The leadership expires after ttl_seconds unless you call election_refresh. Waits up to wait_seconds (first come, first served), else fails with lock_held naming the leader."
    )]
    async fn election_campaign(
        &self,
        Parameters(p): Parameters<CampaignParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_campaign(p).await))
    }

    #[tool(
        description = "Keep your leadership: renews its TTL from now. Call it well within ttl_seconds. Fails with lock_lost if you are no longer the leader: stop acting as leader."
    )]
    async fn election_refresh(
        &self,
        Parameters(p): Parameters<LeadershipParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(
            self.refresh_held(p.name, p.term, "leadership of").await,
        ))
    }

    #[tool(description = "Step down as leader, so the next candidate takes over at once.")]
    async fn election_resign(
        &self,
        Parameters(p): Parameters<LeadershipParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(
            self.release_held(p.name, p.term, "leadership of").await,
        ))
    }

    #[tool(
        description = "Who leads an election now, and in which term; leader: null when nobody does."
    )]
    async fn election_leader(
        &self,
        Parameters(p): Parameters<LeaderParams>,
    ) -> Result<CallToolResult, ErrorData> {
        Ok(result(self.do_leader(p).await))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SwarmstateMcp {
    // Only versions with sessions: what a session holds must outlive one request, and the
    // sessionless protocol (2026-07-28) would drop it at the end of each.
    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(&[
            ProtocolVersion::V_2025_11_25,
            ProtocolVersion::V_2025_06_18,
            ProtocolVersion::V_2025_03_26,
            ProtocolVersion::V_2024_11_05,
        ])
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            format!(
                "Shared state for a swarm of agents: keys with revisions, waits for changes, \
                 locks with fencing tokens, work queues and elections. {TOKEN} Locks, claims \
                 and leaderships belong to this session and are not kept alive for you: \
                 refresh them within their TTL."
            ),
        )
    }
}
