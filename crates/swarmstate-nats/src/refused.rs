//! What a refused write proves: nothing, until the store has made sure that no attempt of it
//! was applied anyway.
//!
//! Only the stream leader subscribes to the stream's subjects, but an old leader lets go of
//! its subscription only once its Raft notices the new term, and the new leader subscribes as
//! soon as it leads (`setLeader`, `server/stream.go`). In between (a paused leader resumed, a
//! partition healed) a publish reaches both. The old leader checks the expected sequence
//! against its stale store and refuses at once (10071, `processClusteredInboundMsg` →
//! `checkMsgHeadersPreClusteredProposal`), while the new leader applies the message and
//! answers after its quorum commit; the client takes the first answer, the refusal. So an
//! attempt the client was told was refused may be stored.
//!
//! Every attempt of one write carries the same `Nats-Msg-Id` (`<client>.<n>`). Before a
//! refusal is reported (a mismatch, an existing key, an absent key a delete finds, or giving
//! up), [`applied_anyway`] asks: the confirmed last message may be the write
//! itself; otherwise a probe with the same id and an expectation no subject meets is sent.
//! A replicated stream's leader checks ids before expectations (`checkMsgHeadersPreClustered
//! Proposal`), so one that stored an attempt answers "duplicate" with its sequence, and one
//! that did not refuses, naming its last sequence. (A single-node stream checks the
//! expectation first; but there one server decides everything, a refusal is final, and the
//! probe's refusal is the right answer too.) A
//! refusal naming a sequence below the confirmed one comes from a stale node and is asked
//! again. A new leader has applied every committed message (and so knows every id) before it
//! answers anything.

use bytes::Bytes;
use swarmstate_core::Key;

use crate::attempts::Attempts;
use crate::bucket::Bucket;
use crate::error::{ApiError, NatsError};
use crate::wire::{self, Last};

/// A `Nats-Msg-Id` for one write, the same for all of its attempts.
pub(crate) fn write_id(bucket: &Bucket) -> String {
    let n = bucket
        .writes
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{n}", bucket.client_id)
}

/// Whether a write that was refused at least once (`refused` is its id; `None` when no
/// attempt was refused) was applied after all, given a confirmed read of its key taken
/// after the refusals: `Some(sequence)` of the attempt that applied, `None` if none did.
///
/// Errors: [`NatsError::Unknown`] when that cannot be learned (no answer, or only stale
/// ones, within the request timeout).
pub(crate) async fn applied_anyway(
    bucket: &Bucket,
    key: &Key,
    refused: Option<&str>,
    confirmed: Option<&Last>,
    operation: &str,
) -> Result<Option<u64>, NatsError> {
    let Some(id) = refused else { return Ok(None) };
    if let Some(last) = confirmed
        && last.write_id.as_deref() == Some(id)
    {
        return Ok(Some(last.sequence));
    }
    let floor = confirmed.map_or(0, |last| last.sequence);
    let unknown = |why: String| NatsError::Unknown {
        operation: operation.to_owned(),
        message: format!(
            "refused, and whether an earlier attempt was applied anyway is unknown: {why}"
        ),
    };
    let mut attempts = Attempts::new(bucket.request_timeout);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(wire::MSG_ID, id);
        // No subject is ever at this sequence: the probe itself is never stored.
        headers.insert(
            wire::EXPECTED_LAST_SUBJECT_SEQUENCE,
            u64::MAX.to_string().as_str(),
        );
        match bucket.publish(operation, key, headers, Bytes::new()).await {
            // Only a duplicate can be acknowledged: the attempt stored at `sequence`.
            Ok(sequence) => return Ok(Some(sequence)),
            Err(NatsError::Api { error: refused, .. })
                if refused.reported_last().is_some_and(|last| last >= floor) =>
            {
                return Ok(None);
            }
            // In flight, in process, or a stale node's answer: ask again.
            Err(NatsError::Api { error: refused, .. })
                if refused.is_conflict() && !attempts.expired() =>
            {
                attempts.pause().await;
            }
            Err(NatsError::Api { error: refused, .. }) => {
                return Err(unknown(refused.description));
            }
            Err(err) => return Err(unknown(err.to_string())),
        }
    }
}

/// After the last refused attempt of a write whose time ran out: the sequence of an
/// attempt that was applied anyway, else [`NatsError::NotApplied`] (none was).
pub(crate) async fn out_of_attempts(
    bucket: &Bucket,
    key: &Key,
    refused: Option<&str>,
    last_refusal: &ApiError,
    operation: &str,
) -> Result<u64, NatsError> {
    let confirmed = match refused {
        Some(_) => {
            bucket
                .confirmed_last(key, operation)
                .await
                .map_err(|err| NatsError::Unknown {
                    operation: operation.to_owned(),
                    message: format!("refused, then the key could not be read: {err}"),
                })?
        }
        None => None,
    };
    match applied_anyway(bucket, key, refused, confirmed.as_ref(), operation).await? {
        Some(sequence) => Ok(sequence),
        None => Err(NatsError::NotApplied {
            message: format!(
                "{}: {}",
                kept_changing(bucket, operation),
                last_refusal.description
            ),
        }),
    }
}

/// What a write that was refused until its time ran out reports.
fn kept_changing(bucket: &Bucket, operation: &str) -> String {
    format!(
        "{operation}: refused for {:?} while the key kept changing",
        bucket.request_timeout
    )
}

#[cfg(test)]
mod tests {
    use swarmstate_core::{PutOptions, StateStore};

    use super::*;
    use crate::NatsStore;
    use swarmstate_nats_local::{NatsCluster, require_server};

    /// What the probe relies on, on a replicated stream (the only kind where a refusal can
    /// come from a stale leader): the leader answers a message whose id it has stored with
    /// "duplicate" and the stored sequence before it looks at the message's expectation, and
    /// refuses one whose id it has not stored, naming the subject's last sequence; neither
    /// probe stores anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_probe_finds_a_stored_attempt_by_its_id_and_stores_nothing() {
        let Some(_) = require_server() else { return };
        let cluster = NatsCluster::start(3).await;
        let store = NatsStore::builder(cluster.connect_url())
            .bucket("probe")
            .replicas(3)
            .connect()
            .await
            .unwrap_or_else(|err| panic!("connect: {err}"));
        let key = Key::new("probe.k").unwrap();
        let stored = store
            .put(&key, "v".into(), PutOptions::overwrite())
            .await
            .unwrap();
        let bucket = &store.bucket;
        let last = bucket
            .last(&key)
            .await
            .unwrap()
            .expect("the value is there");
        let id = last
            .write_id
            .clone()
            .expect("every put carries its write id");

        // Its id, with a confirmed read that no longer shows it: the probe finds it.
        let found = applied_anyway(bucket, &key, Some(&id), None, "probe")
            .await
            .unwrap();
        assert_eq!(found, Some(stored.get()));
        // The confirmed read shows it: no probe needed.
        let found = applied_anyway(bucket, &key, Some(&id), Some(&last), "probe")
            .await
            .unwrap();
        assert_eq!(found, Some(stored.get()));
        // An id never stored: not applied.
        let other = write_id(bucket);
        let found = applied_anyway(bucket, &key, Some(&other), Some(&last), "probe")
            .await
            .unwrap();
        assert_eq!(found, None);
        // Nothing was refused: nothing to look for.
        assert_eq!(
            applied_anyway(bucket, &key, None, Some(&last), "probe")
                .await
                .unwrap(),
            None
        );
        let after = bucket.last(&key).await.unwrap().expect("still there");
        assert_eq!(after.sequence, stored.get(), "a probe was stored");
    }
}
