//! Writes next to a value that is about to expire: the guard against nats-server's late
//! expiry marker.
//!
//! When a value with a `Nats-TTL` reaches its deadline, the stream leader's store decides that
//! it is the last message of its subject (`fileStore.expireMsgs` → `shouldProcessSdm`,
//! `server/filestore.go`) and proposes a subject delete marker carrying `Nats-Rollup: sub`
//! (`handleRemovalOrSdm`, through the callback `stream.go` registers, which calls
//! `processClusteredInboundMsg`). The decision looks only at what the leader has *applied*;
//! the marker carries no expected sequence; and its rollup, when applied, purges every earlier
//! message of the subject (`processJetStreamMsgWithRollup`, keep 1). So a write to the same
//! key that the leader had proposed but not yet applied at the moment of the decision is
//! applied, acknowledged, and then purged by the marker right behind it: an acknowledged write
//! lost, and an expiry of a value that had no TTL. On R1 the marker is written inline and the
//! window is microseconds; on R3 it is a Raft round trip. A marker re-proposed two seconds
//! later (when the first was lost) has the same flaw. Nothing a client sets on its own
//! messages stops it (rollups and `DiscardNewPer` do not apply to the marker).
//!
//! What the server does check is that a write carrying `Nats-Expected-Last-Subject-Sequence`
//! finds nothing in flight on its subject (otherwise it is refused, error 10164, the marker's
//! proposal included) and the applied last sequence equal to the one expected (10071). And a
//! new stream leader applies every earlier entry before it accepts a proposal, so a marker a
//! deposed leader proposed is either applied before anything the new leader accepts, or never.
//!
//! The guard, used by every write of this crate:
//!
//! - A write names the message it replaces (an expected last subject sequence), so it knows
//!   what it replaces, including whether that is a value with a TTL and when its TTL ends.
//! - It is not sent over a value whose TTL ends within [`SEND_MARGIN`]: it waits until the
//!   server has expired that value (the marker is then in the stream), and goes on top of the
//!   marker instead. Such a write can no longer be purged: the marker it could race with is
//!   already applied.
//! - A write sent in time whose acknowledgement arrives within [`ACK_MARGIN`] of that deadline
//!   (or after it), which only a stalled or partitioned cluster makes happen, is confirmed
//!   before it is returned: a commit barrier expecting the key still at the write's sequence.
//!   While a marker is in flight the barrier is refused (10164) and retried; once it is
//!   applied, the write was purged and the caller gets `Error::Ambiguous` instead of a
//!   revision that no longer exists.
//!
//! Deadlines are the server's (the leader's wall clock at the proposal plus the TTL), compared
//! with this machine's clock: the margins assume the clocks agree within about
//! [`ACK_MARGIN`], as NTP keeps them.

use std::time::{Duration, Instant};

use swarmstate_core::Key;

use crate::attempts::Attempts;
use crate::bucket::Bucket;
use crate::error::NatsError;
use crate::seen::{Held, Seen};

/// A write is not sent over a value whose TTL ends sooner than this: it waits for the expiry.
pub(crate) const SEND_MARGIN: Duration = Duration::from_millis(500);
/// A write over a value with a TTL acknowledged later than this before its deadline is
/// confirmed before it is returned. Also the clock difference the guard tolerates.
pub(crate) const ACK_MARGIN: Duration = Duration::from_millis(250);
/// How often a write waiting for an expiry looks again.
const EXPIRY_POLL: Duration = Duration::from_millis(50);

/// The guard's two decisions about the value a write replaces.
impl Seen {
    /// Whether a write sent now could race with the expiry of the value it replaces.
    pub(crate) fn expiring(&self, now: Instant) -> bool {
        self.deadline()
            .is_some_and(|deadline| deadline < now + SEND_MARGIN)
    }

    /// Whether a write over it acknowledged at `acked` must be confirmed before it is returned.
    pub(crate) fn acknowledged_late(&self, acked: Instant) -> bool {
        self.deadline()
            .is_some_and(|deadline| deadline < acked + ACK_MARGIN)
    }
}

/// Waits until the value `seen` holds is no longer about to expire: the server expired it
/// (or something replaced it). Returns the key's new last message.
///
/// Errors: [`NatsError::NotApplied`] if that has not happened when `attempts` gives up (a
/// stream without a leader expires nothing); nothing was written.
pub(crate) async fn outlast(
    bucket: &Bucket,
    key: &Key,
    mut seen: Seen,
    attempts: &Attempts,
    operation: &str,
) -> Result<Seen, NatsError> {
    while seen.expiring(Instant::now()) {
        if attempts.expired() {
            return Err(NatsError::NotApplied {
                message: format!(
                    "{operation}: the value it replaces (revision {}) reached the end of its \
                     TTL and the server has not expired it yet",
                    seen.sequence
                ),
            });
        }
        let wake = seen
            .deadline()
            .map_or(EXPIRY_POLL, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            })
            .max(EXPIRY_POLL);
        tokio::time::sleep_until((Instant::now() + wake).min(attempts.give_up()).into()).await;
        seen = bucket.read_seen(key).await?;
    }
    Ok(seen)
}

/// Confirms that the write acknowledged at `written` is still the key's last message,
/// through a commit barrier: once the barrier commits, any expiry marker that could purge
/// the write has been applied before it (or will never be).
///
/// Errors: [`NatsError::Unknown`] when the write cannot be confirmed: it was purged by the
/// late marker, or the key changed again before the barrier, or the barrier could not be
/// committed. The write may or may not be in effect; re-read.
pub(crate) async fn confirm_written(
    bucket: &Bucket,
    key: &Key,
    written: u64,
    attempts: &mut Attempts,
    operation: &str,
) -> Result<(), NatsError> {
    loop {
        match bucket.barrier(key, written, operation).await {
            Ok(()) => return Ok(()),
            Err(NatsError::Api { error: refused, .. })
                if refused.is_in_flight() && !attempts.expired() =>
            {
                attempts.pause_if_in_flight(&refused).await;
            }
            Err(NatsError::Api { error: refused, .. }) => {
                let now = bucket.read_seen(key).await.ok();
                let message = match now {
                    Some(Seen {
                        sequence,
                        held: Held::Nothing,
                    }) if sequence > written => format!(
                        "acknowledged at revision {written}, then removed at revision \
                         {sequence} by the server's late expiry of the value it replaced \
                         (a nats-server defect; see the README)"
                    ),
                    _ => format!(
                        "acknowledged at revision {written} right at the end of the TTL of \
                         the value it replaced, and changed again before it could be \
                         confirmed: {}",
                        refused.description
                    ),
                };
                return Err(NatsError::Unknown {
                    operation: operation.to_owned(),
                    message,
                });
            }
            Err(err) => {
                return Err(NatsError::Unknown {
                    operation: operation.to_owned(),
                    message: format!(
                        "acknowledged at revision {written} right at the end of the TTL of \
                         the value it replaced, and not confirmed since: {err}"
                    ),
                });
            }
        }
    }
}
