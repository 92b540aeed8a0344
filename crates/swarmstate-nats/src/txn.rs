//! Transactions as JetStream atomic batches (server 2.12 or newer).
//!
//! Every write of the transaction is one message of the batch. Each message can carry one
//! expected-last-sequence check: on its own subject (`Nats-Expected-Last-Subject-Sequence`),
//! or on another key's subject (`...-Subject`), which is how a `Check` (for example the lock
//! key of a fenced write) rides along on a write. The server evaluates every check at commit,
//! under the stream's lock, so the batch applies whole or not at all.
//!
//! Conditions are first decided on a fresh read of every key; the batch then pins each key
//! it depends on or writes to the sequence that was read. If anything moved in between, the
//! commit fails and the transaction is decided again from a new read. A conflict is reported
//! only after a confirmed read of the key (a deposed leader can answer from old state), and a
//! key holding a value whose TTL is about to end is not written until the server expired it
//! (see `crate::expiry`).

use std::time::Instant;

use async_nats::HeaderMap;
use bytes::Bytes;
use swarmstate_core::{Condition, Error, Key, Result, TxnAction, TxnOp, TxnResult};

use crate::NatsStore;
use crate::expiry::Seen;
use crate::store::Last;
use crate::wire;

/// A key the batch must find at a given last sequence (0: no message at all).
#[derive(Debug, Clone)]
struct Pin {
    key: Key,
    sequence: u64,
}

#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    // The op's index, to place the message's revision in the results, or CHECK_ONLY.
    pub(crate) op: usize,
}

/// Marks a scratch message that only carries a check.
pub(crate) const CHECK_ONLY: usize = usize::MAX;

pub(crate) async fn apply(store: &NatsStore, ops: &[TxnOp]) -> Result<Vec<TxnResult>> {
    let mut attempts = wire::Attempts::new(store.inner.request_timeout);
    loop {
        let reads = futures::future::try_join_all(ops.iter().map(|op| store.last(&op.key)));
        let lasts: Vec<Option<Last>> = reads.await?;
        if let Some(op) = ops.iter().zip(&lasts).find_map(|(op, last)| {
            let current = last.as_ref().and_then(Last::revision);
            op.condition.check(&op.key, current).is_err().then_some(op)
        }) {
            let confirmed = store.confirmed_last(&op.key, "txn").await?;
            let current = confirmed.as_ref().and_then(Last::revision);
            op.condition.check(&op.key, current)?;
            continue;
        }
        if let Some((op, last)) = ops.iter().zip(&lasts).find(|(op, last)| {
            !matches!(op.action, TxnAction::Check)
                && Seen::of(last.as_ref()).expiring(Instant::now())
        }) {
            store
                .outlast(&op.key, Seen::of(last.as_ref()), &attempts, "txn")
                .await?;
            continue;
        }
        let (mut messages, results, pins) = plan(store, ops, &lasts);
        if messages.is_empty() {
            match pins.as_slice() {
                [] => return Ok(results),
                // Nothing to write and one key to check: a commit barrier is the check.
                [pin] => match store.barrier(&pin.key, pin.sequence, "txn").await? {
                    Ok(()) => return Ok(results),
                    Err(err) if err.is_conflict() => {
                        attempts.after(&err, || kept_changing(store)).await?;
                        continue;
                    }
                    Err(err) => return Err(err.into_error("txn")),
                },
                _ => {}
            }
        }
        attach(store, &mut messages, pins);
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
        match publish_batch(store, "txn", &messages).await? {
            Ok(last_sequence) => {
                let first = last_sequence + 1 - messages.len() as u64;
                let acked = Instant::now();
                for (offset, message) in messages.iter().enumerate() {
                    if message.op == CHECK_ONLY {
                        continue;
                    }
                    let sequence = first + offset as u64;
                    let op = &ops[message.op];
                    if Seen::of(lasts[message.op].as_ref()).acknowledged_late(acked) {
                        store.forget(&op.key);
                        store
                            .confirm_written(&op.key, sequence, &mut attempts, "txn")
                            .await?;
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
            Err(err) if err.is_conflict() => attempts.after(&err, || kept_changing(store)).await?,
            Err(err) => return Err(err.into_error("txn")),
        }
    }
}

/// What a transaction refused until its time ran out reports.
fn kept_changing(store: &NatsStore) -> String {
    format!(
        "txn: refused for {:?} while its keys kept changing",
        store.inner.request_timeout
    )
}

/// The messages to write, the provisional results, and the keys that must stay as read.
fn plan(
    store: &NatsStore,
    ops: &[TxnOp],
    lasts: &[Option<Last>],
) -> (Vec<Message>, Vec<TxnResult>, Vec<Pin>) {
    let mut messages = Vec::new();
    let mut results = Vec::with_capacity(ops.len());
    let mut pins = Vec::new();
    for (index, (op, last)) in ops.iter().zip(lasts).enumerate() {
        let subject = store.subject(&op.key);
        let read = last.as_ref().map_or(0, |l| l.sequence);
        let present = last.as_ref().is_some_and(|l| l.live.is_some());
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
fn attach(store: &NatsStore, messages: &mut Vec<Message>, pins: Vec<Pin>) {
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
        pin.put_on(store, &mut carrier.headers);
    }
    for (index, pin) in pins.enumerate() {
        let mut headers = HeaderMap::new();
        pin.put_on(store, &mut headers);
        messages.push(Message {
            subject: format!("{}_swarmstate.txn.{index}", store.inner.prefix),
            headers,
            payload: Bytes::new(),
            op: CHECK_ONLY,
        });
    }
}

impl Pin {
    fn put_on(self, store: &NatsStore, headers: &mut HeaderMap) {
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
            self.sequence.to_string().as_str(),
        );
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            store.subject(&self.key).as_str(),
        );
    }
}

/// Publishes the messages as one atomic batch; returns the last message's sequence.
/// A failure before the commit message is sent leaves nothing applied (`Unavailable`); a
/// commit without an answer is `Ambiguous`.
pub(crate) async fn publish_batch(
    store: &NatsStore,
    operation: &str,
    messages: &[Message],
) -> Result<Result<u64, wire::ApiError>> {
    let client = &store.inner.client;
    // Sends one message of the batch and waits for the server's answer.
    let ask = |message: &Message, headers: HeaderMap| {
        wire::request(
            client,
            store.inner.request_timeout,
            operation,
            message.subject.clone(),
            headers,
            message.payload.clone(),
        )
    };
    if let [message] = messages {
        let reply = ask(message, message.headers.clone()).await?;
        return Ok(wire::parse_ack(&reply.payload, operation)?.map(|ack| ack.sequence));
    }
    let inbox = client.new_inbox();
    let batch_id = inbox.rsplit('.').next().unwrap_or(&inbox).to_owned();
    let last = messages.len() - 1;
    for (index, message) in messages.iter().enumerate() {
        let mut headers = message.headers.clone();
        headers.insert(wire::BATCH_ID, batch_id.as_str());
        headers.insert(wire::BATCH_SEQUENCE, (index + 1).to_string().as_str());
        if index == last {
            headers.insert(wire::BATCH_COMMIT, "1");
            let reply = ask(message, headers).await?;
            return Ok(wire::parse_ack(&reply.payload, operation)?.map(|ack| ack.sequence));
        }
        if index == 0 {
            // The server answers the first message: an empty reply starts the batch.
            let reply = ask(message, headers).await.map_err(never_applied)?;
            if !reply.payload.is_empty()
                && let Err(api) = wire::parse_ack(&reply.payload, operation)?
            {
                return Ok(Err(api));
            }
        } else {
            client
                .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                .await
                .map_err(|err| Error::Unavailable {
                    message: format!("txn: batch message not sent: {err}"),
                })?;
        }
    }
    unreachable!("the loop returns at the commit message")
}

/// Before the commit message, nothing can have applied.
fn never_applied(err: Error) -> Error {
    match err {
        Error::Ambiguous { message, .. } => Error::Unavailable {
            message: format!("txn: batch start not acknowledged, nothing applied: {message}"),
        },
        other => other,
    }
}
