//! The JSON of the recipe routes: requests (strict: unknown fields refused) and handles, which
//! are answered and sent back, so they are read strictly too.

use serde::{Deserialize, Serialize};

use swarmstate_core::{Key, Revision};
use swarmstate_http::wire::{Encoding, WireOp, format_ttl, millis};
use swarmstate_recipes::election::Leader;
use swarmstate_recipes::lock::{FencingToken, LockHandle};
use swarmstate_recipes::queue::{Claim, ClaimHandle, ItemStatus};

use super::duration;
use crate::problem::ApiError;

/// `POST /v1/locks/{key}/acquire`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AcquireRequest {
    pub(super) owner: String,
    pub(super) ttl: String,
    pub(super) wait: Option<String>,
}

/// `POST /v1/elections/{name}/campaign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CampaignRequest {
    pub(super) candidate: String,
    pub(super) ttl: String,
    pub(super) wait: Option<String>,
}

/// A revision or token from a handle: 0 is none.
fn revision(field: &str, n: u64) -> Result<Revision, ApiError> {
    Revision::new(n)
        .ok_or_else(|| ApiError::bad(format!("{field} must be a revision from 1, got 0")))
}

/// A lock handle.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireLock {
    /// Always answered; optional when sent back, and then it must be the path's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) key: Option<String>,
    pub(super) owner: String,
    pub(super) token: u64,
    pub(super) revision: u64,
    pub(super) ttl: String,
}

impl WireLock {
    pub(super) fn from_handle(handle: &LockHandle) -> WireLock {
        WireLock {
            key: Some(handle.key.as_str().to_owned()),
            owner: handle.owner.clone(),
            token: handle.token.get(),
            revision: handle.revision.get(),
            ttl: format_ttl(handle.ttl),
        }
    }

    pub(super) fn into_handle(self, key: &Key) -> Result<LockHandle, ApiError> {
        super::same_key("lock", self.key.as_deref(), key)?;
        Ok(LockHandle {
            key: key.clone(),
            owner: self.owner,
            ttl: duration("ttl", &self.ttl)?,
            token: FencingToken(revision("token", self.token)?),
            revision: revision("revision", self.revision)?,
        })
    }
}

/// A leadership handle: a lock handle of the leader key, with the election's words.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireLeadership {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    pub(super) candidate: String,
    pub(super) term: u64,
    pub(super) revision: u64,
    pub(super) ttl: String,
}

impl WireLeadership {
    pub(super) fn from_handle(handle: &LockHandle) -> WireLeadership {
        WireLeadership {
            name: Some(handle.key.as_str().to_owned()),
            candidate: handle.owner.clone(),
            term: handle.token.get(),
            revision: handle.revision.get(),
            ttl: format_ttl(handle.ttl),
        }
    }

    pub(super) fn into_handle(self, name: &Key) -> Result<LockHandle, ApiError> {
        super::same_key("leadership", self.name.as_deref(), name)?;
        Ok(LockHandle {
            key: name.clone(),
            owner: self.candidate,
            ttl: duration("ttl", &self.ttl)?,
            token: FencingToken(revision("term", self.term)?),
            revision: revision("revision", self.revision)?,
        })
    }
}

/// `POST /v1/locks/{key}/txn`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LockTxnRequest {
    pub(super) lock: WireLock,
    pub(super) ops: Vec<WireOp>,
}

/// `POST /v1/elections/{name}/txn`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LeadershipTxnRequest {
    pub(super) leadership: WireLeadership,
    pub(super) ops: Vec<WireOp>,
}

/// `GET /v1/locks/{key}`.
#[derive(Debug, Serialize)]
pub(super) struct WireHolder {
    pub(super) key: String,
    pub(super) holder: String,
    pub(super) revision: u64,
    pub(super) expires_in_ms: Option<u64>,
}

/// A leader as others see it.
#[derive(Debug, Serialize)]
pub(super) struct WireLeader {
    pub(super) candidate: String,
    pub(super) term: u64,
}

impl WireLeader {
    pub(super) fn from_leader(leader: &Leader) -> WireLeader {
        WireLeader {
            candidate: leader.candidate.clone(),
            term: leader.term.get(),
        }
    }
}

/// `GET /v1/elections/{name}`.
#[derive(Debug, Serialize)]
pub(super) struct WireElection {
    pub(super) name: String,
    pub(super) leader: Option<WireLeader>,
}

/// `POST /v1/queues/{name}/items`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnqueueRequest {
    pub(super) id: String,
    pub(super) payload: String,
    pub(super) encoding: Option<Encoding>,
}

/// The answer to an enqueue.
#[derive(Debug, Serialize)]
pub(super) struct Enqueued {
    pub(super) created: bool,
}

/// `POST /v1/queues/{name}/claim`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClaimRequest {
    pub(super) worker: String,
    pub(super) lease: String,
    pub(super) wait: Option<String>,
    pub(super) max_attempts: Option<u32>,
}

/// A claim handle. Its payload is answered, and may be sent back or left out.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WireClaim {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) queue: Option<String>,
    pub(super) id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) encoding: Option<Encoding>,
    pub(super) worker: String,
    pub(super) attempt: u32,
    pub(super) token: u64,
    pub(super) lease: String,
    pub(super) item_revision: u64,
    pub(super) lease_revision: u64,
}

impl WireClaim {
    pub(super) fn from_claim(claim: &Claim) -> WireClaim {
        let mut wire = WireClaim::from_handle(&claim.handle());
        let value = swarmstate_http::wire::WireValue::encode(&claim.payload);
        wire.payload = Some(value.value);
        wire.encoding = Some(value.encoding);
        wire
    }

    pub(super) fn from_handle(handle: &ClaimHandle) -> WireClaim {
        WireClaim {
            queue: Some(handle.queue.as_str().to_owned()),
            id: handle.id.clone(),
            payload: None,
            encoding: None,
            worker: handle.worker.clone(),
            attempt: handle.attempt,
            token: handle.token.get(),
            lease: format_ttl(handle.lease),
            item_revision: handle.item_revision.get(),
            lease_revision: handle.lease_revision.get(),
        }
    }

    /// The claim this handle names, without its payload (no operation on a claim reads it).
    pub(super) fn into_claim(self, queue: &Key) -> Result<Claim, ApiError> {
        super::same_key("claim", self.queue.as_deref(), queue)?;
        let handle = ClaimHandle {
            queue: queue.clone(),
            id: self.id,
            worker: self.worker,
            attempt: self.attempt,
            token: FencingToken(revision("token", self.token)?),
            lease: duration("lease", &self.lease)?,
            item_revision: revision("item_revision", self.item_revision)?,
            lease_revision: revision("lease_revision", self.lease_revision)?,
        };
        Ok(Claim::from_handle(&handle, bytes::Bytes::new())?)
    }
}

/// `POST /v1/queues/{name}/complete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompleteRequest {
    pub(super) claim: WireClaim,
    #[serde(default)]
    pub(super) ops: Vec<WireOp>,
}

/// `POST /v1/queues/{name}/fail`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FailRequest {
    pub(super) claim: WireClaim,
    pub(super) reason: String,
    pub(super) max_attempts: Option<u32>,
}

/// The answer to a failure: where the item went.
#[derive(Debug, Serialize)]
pub(super) struct Failed {
    pub(super) state: String,
}

/// An item's status.
#[derive(Debug, Serialize)]
pub(super) struct WireItem {
    pub(super) id: String,
    pub(super) state: String,
    pub(super) attempts: u32,
    pub(super) claimant: Option<String>,
    pub(super) lease_left_ms: Option<u64>,
    pub(super) last_error: Option<String>,
}

impl WireItem {
    pub(super) fn from_status(status: &ItemStatus) -> WireItem {
        WireItem {
            id: status.id.clone(),
            state: status.state.to_string(),
            attempts: status.attempts,
            claimant: status.claimant.clone(),
            lease_left_ms: status.lease_left.map(millis),
            last_error: status.last_error.clone(),
        }
    }
}

/// `GET /v1/queues/{name}/items`.
#[derive(Debug, Serialize)]
pub(super) struct WireItems {
    pub(super) items: Vec<WireItem>,
}
