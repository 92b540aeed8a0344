//! Put and delete: one message each (an atomic batch with its record for a put with an
//! idempotency key), written over the message it names, and refused only after a confirmed
//! read (see `crate::refused` for why a refusal alone proves nothing).

use std::time::Instant;

use async_nats::HeaderMap;
use bytes::Bytes;
use swarmstate_core::{Condition, Error, Key, PutMode, PutOptions, Result, Revision};

use crate::attempts::Attempts;
use crate::batch::{CHECK_ONLY, Message, publish_batch};
use crate::bucket::Bucket;
use crate::error::NatsError;
use crate::expiry::{confirm_written, outlast};
use crate::refused::{applied_anyway, out_of_attempts, write_id};
use crate::seen::{Held, Seen};
use crate::wire;

/// [`StateStore::put`](swarmstate_core::StateStore::put) on validated input. Each attempt names
/// the message it replaces (remembered, else read from the leader) and is never sent over a
/// value whose TTL is about to end (see `crate::expiry`); a refusal is reported only from a
/// confirmed read (a leader that a partition deposed can refuse from old state), once no
/// attempt turns out to have been applied anyway, and its `actual` revision is the confirmed
/// one.
pub(crate) async fn put(
    bucket: &Bucket,
    key: &Key,
    value: Bytes,
    options: PutOptions,
) -> Result<Revision> {
    bucket.ensure_open()?;
    let operation = format!("put {key}");
    let mut attempts = Attempts::new(bucket.request_timeout);
    let record = options
        .idempotency_key
        .as_ref()
        .map(|id| idempotency_record(key, id));
    // The record's last sequence: a write with an idempotency key also creates its record.
    let mut record_at = 0;
    if let Some(record) = &record {
        match bucket.last(record).await? {
            Some(last) if last.live.is_some() => return revision(last.sequence - 1),
            Some(last) => record_at = last.sequence,
            None => {}
        }
    }
    // Every attempt carries it (see `crate::refused`); a write with a record has the
    // record to tell whether an earlier attempt applied.
    let id = record.is_none().then(|| write_id(bucket));
    // Set once an attempt was refused: it may have been applied anyway.
    let mut refused = None;
    // What the write replaces, as far as this client knows.
    let mut replaces = match (options.mode, bucket.hint(key)) {
        // A create lands only where there is no value, never on one about to expire; a
        // wrong guess costs one refusal.
        (PutMode::Create, Some(seen)) if seen.value().is_none() => seen,
        (PutMode::Create, _) => Seen::NONE,
        (PutMode::Update(wanted), Some(seen)) if seen.holds(wanted) => seen,
        (PutMode::Overwrite, Some(seen)) => seen,
        _ => bucket.read_seen(key).await?,
    };
    loop {
        if let PutMode::Update(wanted) = options.mode
            && !replaces.holds(wanted)
        {
            let last = bucket.confirmed_last(key, &operation).await?;
            if let Some(sequence) =
                applied_anyway(bucket, key, refused, last.as_ref(), &operation).await?
            {
                return revision(sequence);
            }
            let confirmed = Seen::of(last.as_ref());
            Condition::At(wanted).check(key, confirmed.value())?;
            replaces = confirmed;
        }
        if replaces.expiring(Instant::now()) {
            replaces = outlast(bucket, key, replaces, &attempts, &operation).await?;
            continue;
        }
        bucket.before_replacing(replaces.sequence).await;
        let mut headers = HeaderMap::new();
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
            replaces.sequence.to_string().as_str(),
        );
        if let Some(ttl) = options.ttl {
            headers.insert(wire::TTL, format!("{}s", wire::ttl_seconds(ttl)).as_str());
        }
        if let Some(id) = &id {
            headers.insert(wire::MSG_ID, id.as_str());
        }
        let sent = Instant::now();
        let outcome = match &record {
            None => {
                bucket
                    .publish(&operation, key, headers, value.clone())
                    .await
            }
            Some(record) => {
                let messages = [
                    Message {
                        subject: bucket.subject(key),
                        headers,
                        payload: value.clone(),
                        op: 0,
                    },
                    record_message(bucket, record, record_at),
                ];
                publish_batch(bucket, &operation, &messages)
                    .await
                    .map(|last| last - 1)
            }
        };
        match outcome {
            Ok(sequence) => {
                let held = Held::Value {
                    deadline: options.ttl.map(|ttl| sent + ttl),
                };
                return acknowledged(
                    bucket,
                    key,
                    &replaces,
                    sequence,
                    held,
                    &mut attempts,
                    &operation,
                )
                .await;
            }
            Err(NatsError::Api { error, .. }) if error.is_conflict() => {
                bucket.seen.forget(key);
                refused = id.as_deref();
                if attempts.expired() {
                    return revision(
                        out_of_attempts(bucket, key, refused, &error, &operation).await?,
                    );
                }
                attempts.pause_if_in_flight(&error).await;
            }
            Err(err) => return Err(err.into()),
        }
        if let Some(record) = &record {
            match bucket.last(record).await? {
                // An earlier attempt of this very request applied (its answer was lost).
                Some(last) if last.live.is_some() => return revision(last.sequence - 1),
                Some(last) => record_at = last.sequence,
                None => record_at = 0,
            }
        }
        replaces = bucket.read_seen(key).await?;
        if options.mode == PutMode::Create && replaces.value().is_some() {
            let last = bucket.confirmed_last(key, &operation).await?;
            if let Some(sequence) =
                applied_anyway(bucket, key, refused, last.as_ref(), &operation).await?
            {
                return revision(sequence);
            }
            let confirmed = Seen::of(last.as_ref());
            Condition::Absent.check(key, confirmed.value())?;
            replaces = confirmed;
        }
    }
}

/// [`StateStore::delete`](swarmstate_core::StateStore::delete), as [`put`]: the tombstone
/// names the message it replaces, waits out a value about to expire, and a refusal or an
/// absent key is reported from a confirmed read.
pub(crate) async fn delete(
    bucket: &Bucket,
    key: &Key,
    expected: Option<Revision>,
) -> Result<Option<Revision>> {
    bucket.ensure_open()?;
    let operation = format!("delete {key}");
    let mut attempts = Attempts::new(bucket.request_timeout);
    let id = write_id(bucket);
    // Set once an attempt was refused: it may have been applied anyway.
    let mut refused = None;
    let mut replaces = match (expected, bucket.hint(key)) {
        (Some(wanted), Some(seen)) if seen.holds(wanted) => seen,
        _ => bucket.read_seen(key).await?,
    };
    loop {
        let fits = match expected {
            Some(wanted) => replaces.holds(wanted),
            None => replaces.value().is_some(),
        };
        if !fits {
            let last = bucket.confirmed_last(key, &operation).await?;
            if let Some(sequence) =
                applied_anyway(bucket, key, refused, last.as_ref(), &operation).await?
            {
                return revision(sequence).map(Some);
            }
            replaces = Seen::of(last.as_ref());
            Condition::expecting(expected).check(key, replaces.value())?;
            if replaces.value().is_none() {
                // Only an unconditional delete gets here with nothing to delete.
                return Ok(None);
            }
        }
        if replaces.expiring(Instant::now()) {
            replaces = outlast(bucket, key, replaces, &attempts, &operation).await?;
            continue;
        }
        bucket.before_replacing(replaces.sequence).await;
        let mut headers = HeaderMap::new();
        headers.insert(wire::KV_OPERATION, "DEL");
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
            replaces.sequence.to_string().as_str(),
        );
        headers.insert(wire::MSG_ID, id.as_str());
        match bucket.publish(&operation, key, headers, Bytes::new()).await {
            Ok(sequence) => {
                let held = Held::Nothing;
                return acknowledged(
                    bucket,
                    key,
                    &replaces,
                    sequence,
                    held,
                    &mut attempts,
                    &operation,
                )
                .await
                .map(Some);
            }
            Err(NatsError::Api { error, .. }) if error.is_conflict() => {
                bucket.seen.forget(key);
                refused = Some(id.as_str());
                if attempts.expired() {
                    return revision(
                        out_of_attempts(bucket, key, refused, &error, &operation).await?,
                    )
                    .map(Some);
                }
                attempts.pause_if_in_flight(&error).await;
                replaces = bucket.read_seen(key).await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// The reserved key that records an applied write with an idempotency key: written in the
/// same atomic batch as the write, right after it, so the write's revision is the record's
/// minus one. It expires after the idempotency window.
/// What put and delete do once the stream stored their write at `sequence`: confirm an
/// acknowledgement that came close to the deadline of the message it replaced (the late
/// expiry marker could purge it), then remember the key's new last message.
async fn acknowledged(
    bucket: &Bucket,
    key: &Key,
    replaces: &Seen,
    sequence: u64,
    held: Held,
    attempts: &mut Attempts,
    operation: &str,
) -> Result<Revision> {
    if replaces.acknowledged_late(Instant::now()) {
        bucket.seen.forget(key);
        confirm_written(bucket, key, sequence, attempts, operation).await?;
    }
    bucket.seen.remember(key, Seen { sequence, held });
    revision(sequence)
}

fn idempotency_record(key: &Key, id: &str) -> Key {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(key.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(id.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Key::new_reserved(format!("_swarmstate.idempotency.{hex}")).expect("hex tokens are valid")
}

/// The batch message that creates `record` over its last message `at` (0: none).
fn record_message(bucket: &Bucket, record: &Key, at: u64) -> Message {
    let mut headers = HeaderMap::new();
    headers.insert(
        wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
        at.to_string().as_str(),
    );
    headers.insert(
        wire::TTL,
        format!("{}s", crate::config::IDEMPOTENCY_WINDOW.as_secs()).as_str(),
    );
    Message {
        subject: bucket.subject(record),
        headers,
        payload: Bytes::new(),
        op: CHECK_ONLY,
    }
}

/// An acknowledged sequence as a revision.
fn revision(sequence: u64) -> Result<Revision> {
    Revision::new(sequence)
        .ok_or_else(|| Error::backend(std::io::Error::other("the server acknowledged sequence 0")))
}
