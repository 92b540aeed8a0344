//! Transactions as JetStream atomic batches (server 2.12 or newer).
//!
//! Every write of the transaction is one message of the batch. Each message can carry one
//! expected-last-sequence check: on its own subject (`Nats-Expected-Last-Subject-Sequence`),
//! or on another key's subject (`...-Subject`), which is how a `Check` (for example the lock
//! key of a fenced write) rides along on a write. The server evaluates every check at commit,
//! under the stream's lock, so the batch applies whole or not at all.
//!
//! Conditions are first decided on what this client knows of every key (the seen cache and
//! the hub's view, `Bucket::hint`; a leader read where it knows nothing); the batch then pins
//! each key it depends on or writes to the sequence that was read. If anything moved in
//! between, or a hint was stale, the commit fails and the transaction is decided again from
//! fresh leader reads. A conflict is reported
//! only after a confirmed read of the key (a deposed leader can answer from old state), and a
//! key holding a value whose TTL is about to end is not written until the server expired it
//! (see `crate::expiry`).

use std::time::Instant;

use async_nats::HeaderMap;
use bytes::Bytes;
use swarmstate_core::{Condition, Error, Key, Result, TxnAction, TxnOp, TxnResult};

use crate::attempts::Attempts;
use crate::batch::{CHECK_ONLY, Message, publish_batch};
use crate::bucket::Bucket;
use crate::error::NatsError;
use crate::expiry::{confirm_written, outlast};
use crate::seen::Seen;
use crate::wire::{self, Last};

/// A key the batch must find at a given last sequence (0: no message at all).
#[derive(Debug, Clone)]
struct Pin {
    key: Key,
    sequence: u64,
}

/// [`StateStore::txn`](swarmstate_core::StateStore::txn) on validated operations: decides the
/// conditions on fresh reads, then commits one batch pinned to what was read, again from new
/// reads for as long as the batch is refused because something moved.
pub(crate) async fn apply(bucket: &Bucket, ops: &[TxnOp]) -> Result<Vec<TxnResult>> {
    let mut attempts = Attempts::new(bucket.request_timeout);
    // The first attempt starts from what this client knows ([`Bucket::hint`]); a stale hint
    // costs a refused batch, and every later attempt reads from the stream leader.
    let mut hinted = true;
    loop {
        let lasts: Vec<Seen> = futures::future::try_join_all(ops.iter().map(|op| async move {
            match hinted.then(|| bucket.hint(&op.key)).flatten() {
                Some(seen) => Ok::<_, NatsError>(seen),
                None => Ok(Seen::of(bucket.last(&op.key).await?.as_ref())),
            }
        }))
        .await?;
        hinted = false;
        if let Some(op) = ops.iter().zip(&lasts).find_map(|(op, last)| {
            op.condition
                .check(&op.key, last.value())
                .is_err()
                .then_some(op)
        }) {
            let confirmed = bucket.confirmed_last(&op.key, "txn").await?;
            let current = confirmed.as_ref().and_then(Last::revision);
            op.condition.check(&op.key, current)?;
            continue;
        }
        if let Some((op, last)) = ops.iter().zip(&lasts).find(|(op, last)| {
            !matches!(op.action, TxnAction::Check) && last.expiring(Instant::now())
        }) {
            outlast(bucket, &op.key, *last, &attempts, "txn").await?;
            continue;
        }
        let (mut messages, results, pins) = plan(bucket, ops, &lasts);
        if messages.is_empty() {
            match pins.as_slice() {
                [] => return Ok(results),
                // Nothing to write and one key to check: a commit barrier is the check.
                [pin] => match bucket.barrier(&pin.key, pin.sequence, "txn").await {
                    Ok(()) => return Ok(results),
                    Err(NatsError::Api { error, .. }) if error.is_conflict() => {
                        attempts.after(&error, || kept_changing(bucket)).await?;
                        continue;
                    }
                    Err(err) => return Err(err.into()),
                },
                _ => {}
            }
        }
        attach(bucket, &mut messages, pins);
        if messages.len() > swarmstate_core::MAX_TXN_OPS {
            return Err(Error::Unsupported {
                operation: format!(
                    "a transaction needing {} batch messages (at most {})",
                    messages.len(),
                    swarmstate_core::MAX_TXN_OPS
                ),
                backend: "nats",
            });
        }
        let mut results = results;
        let newest_replaced = lasts.iter().map(|last| last.sequence).max().unwrap_or(0);
        bucket.before_replacing(newest_replaced).await;
        match publish_batch(bucket, "txn", &messages).await {
            Ok(last_sequence) => {
                let first = last_sequence + 1 - messages.len() as u64;
                let acked = Instant::now();
                for (offset, message) in messages.iter().enumerate() {
                    if message.op == CHECK_ONLY {
                        continue;
                    }
                    let sequence = first + offset as u64;
                    let op = &ops[message.op];
                    if lasts[message.op].acknowledged_late(acked) {
                        bucket.seen.forget(&op.key);
                        confirm_written(bucket, &op.key, sequence, &mut attempts, "txn").await?;
                    }
                    let revision =
                        swarmstate_core::Revision::new(sequence).expect("sequences start at 1");
                    results[message.op] = match op.action {
                        TxnAction::Delete => TxnResult::Deleted(revision),
                        _ => TxnResult::Put(revision),
                    };
                }
                return Ok(results);
            }
            Err(NatsError::Api { error, .. }) if error.is_conflict() => {
                attempts.after(&error, || kept_changing(bucket)).await?
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// What a transaction refused until its time ran out reports.
fn kept_changing(bucket: &Bucket) -> String {
    format!(
        "txn: refused for {:?} while its keys kept changing",
        bucket.request_timeout
    )
}

/// The messages to write, the provisional results, and the keys that must stay as read.
fn plan(
    bucket: &Bucket,
    ops: &[TxnOp],
    lasts: &[Seen],
) -> (Vec<Message>, Vec<TxnResult>, Vec<Pin>) {
    let mut messages = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    let mut pins = Vec::new();
    for (index, (op, last)) in ops.iter().zip(lasts).enumerate() {
        let subject = bucket.subject(&op.key);
        let read = last.sequence;
        let present = last.value().is_some();
        let conditioned = !matches!(op.condition, Condition::Any);
        match &op.action {
            TxnAction::Put { value, ttl } => {
                let mut headers = HeaderMap::new();
                // Even without a condition: a write must know what it replaces.
                headers.insert(
                    wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
                    read.to_string().as_str(),
                );
                if let Some(ttl) = ttl {
                    headers.insert(wire::TTL, format!("{}s", wire::ttl_seconds(*ttl)).as_str());
                }
                messages.push(Message {
                    subject,
                    headers,
                    payload: value.clone(),
                    op: index,
                });
                results.push(TxnResult::Checked);
            }
            TxnAction::Delete if present => {
                let mut headers = HeaderMap::new();
                headers.insert(wire::KV_OPERATION, "DEL");
                headers.insert(
                    wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
                    read.to_string().as_str(),
                );
                messages.push(Message {
                    subject,
                    headers,
                    payload: Bytes::new(),
                    op: index,
                });
                results.push(TxnResult::Checked);
            }
            TxnAction::Delete => {
                // Absent as read; it must still be absent when the batch commits.
                pins.push(Pin {
                    key: op.key.clone(),
                    sequence: read,
                });
                results.push(TxnResult::NotFound);
            }
            TxnAction::Check => {
                if conditioned {
                    pins.push(Pin {
                        key: op.key.clone(),
                        sequence: read,
                    });
                }
                results.push(TxnResult::Checked);
            }
        }
    }
    (messages, results, pins)
}

/// Puts each pin on a message that has no check of its own; pins left over ride on extra
/// messages to reserved scratch keys (`_swarmstate.txn.N`, never selected by `*`), which
/// exist only to carry a check.
fn attach(bucket: &Bucket, messages: &mut Vec<Message>, pins: Vec<Pin>) {
    let mut pins = pins.into_iter();
    for carrier in messages.iter_mut() {
        if carrier
            .headers
            .get(wire::EXPECTED_LAST_SUBJECT_SEQUENCE)
            .is_some()
        {
            continue;
        }
        let Some(pin) = pins.next() else {
            return;
        };
        pin.put_on(bucket, &mut carrier.headers);
    }
    for (index, pin) in pins.enumerate() {
        let mut headers = HeaderMap::new();
        pin.put_on(bucket, &mut headers);
        messages.push(Message {
            subject: format!("{}_swarmstate.txn.{index}", bucket.prefix),
            headers,
            payload: Bytes::new(),
            op: CHECK_ONLY,
        });
    }
}

impl Pin {
    fn put_on(self, bucket: &Bucket, headers: &mut HeaderMap) {
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.sequence.to_string().as_str(),
        );
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            bucket.subject(&self.key).as_str(),
        );
    }
}
