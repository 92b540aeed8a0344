//! Leader election with terms, built on the blocking lock of [`acquire_lock_wait`] and written
//! only against [`StateStore`], so it behaves the same on every backend.
//!
//! The leader key is the election's name; holding it as a lock is being the leader. The term
//! is the lock's [`FencingToken`], so terms strictly increase across leaders and at most one
//! leader holds any term. The key's value is `<term> <candidate>`, where the term `0` stands
//! for "the revision of this entry": the winner cannot know its term before its write lands,
//! so it writes `0` and its first refresh records the term. Campaigners queue first come, first
//! served, under `<name>.waiters` (see [`acquire_lock_wait`]).
//!
//! [`acquire_lock_wait`]: crate::lock::acquire_lock_wait

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use swarmstate_core::{Entry, Error, Key, Result, Revision, StateStore, TxnOp, TxnResult};

use crate::follow::KeyFollower;
use crate::lock::{
    FencingToken, KeepAlive, LockGuard, LockHandle, acquire_waiting, validate_lock_input,
};

/// One election: the leader key `name` in a store.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use swarmstate::{Key, MemoryStore, StateStore};
/// use swarmstate::election::Election;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
/// let election = Election::new(store, Key::new("service.leader")?);
/// let ttl = Duration::from_secs(10);
/// let leadership = election.campaign("node-a", ttl, Duration::from_secs(30)).await?;
/// let leader = election.leader().await?.expect("node-a leads");
/// assert_eq!((leader.candidate.as_str(), leader.term), ("node-a", leadership.term()));
/// // Applies only while node-a still leads, atomically.
/// leadership.fenced_put(&Key::new("service.owner")?, "node-a").await?;
/// leadership.resign().await?; // the next campaigner takes over at once
/// assert_eq!(election.leader().await?, None);
/// # Ok::<_, swarmstate::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    store: Arc<dyn StateStore>,
    name: Key,
}

/// A leader as others see it: who, and in which term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The candidate name the leader campaigned with.
    pub candidate: String,
    /// The leader's term: its lock's fencing token, strictly greater than every earlier
    /// leader's.
    pub term: FencingToken,
}

/// Being the leader: the leader key held as a lock and kept alive in the background.
///
/// Dropping it stops the keep-alive and resigns in the background if a Tokio runtime is
/// current (see [`KeepAlive`]); otherwise the leadership expires after its TTL. Prefer
/// [`resign`](Leadership::resign), which reports the outcome.
#[derive(Debug)]
pub struct Leadership {
    kept: KeepAlive,
    candidate: String,
    term: FencingToken,
}

impl Election {
    /// The election whose leader key is `name`.
    pub fn new(store: Arc<dyn StateStore>, name: Key) -> Election {
        Election { store, name }
    }

    /// The leader key.
    pub fn name(&self) -> &Key {
        &self.name
    }

    /// Campaigns as `candidate`: waits up to `wait` to become the leader, first come, first
    /// served among campaigners, and then keeps the leadership alive with `ttl` (refreshed every
    /// third of it) until it is resigned, dropped or lost.
    ///
    /// Errors: [`Error::LockHeld`] naming the leader when `wait` ran out;
    /// [`Error::InvalidInput`] for a candidate that is empty, too long or not printable,
    /// or a TTL out of range; store errors.
    pub async fn campaign(
        &self,
        candidate: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Leadership> {
        let guard = self.campaign_held(candidate, ttl, wait).await?;
        let term = guard.token();
        Ok(Leadership {
            kept: guard.keep_alive(),
            candidate: candidate.to_owned(),
            term,
        })
    }

    /// Campaigns as [`campaign`](Election::campaign) does, and returns the leadership as a
    /// handle without keeping it alive: for a caller that refreshes it itself, through
    /// [`resume`](Election::resume), at least once within each `ttl`. The handle's `owner` is
    /// the candidate and its `token` is the term.
    ///
    /// Errors: as [`campaign`](Election::campaign).
    pub async fn campaign_handle(
        &self,
        candidate: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockHandle> {
        Ok(self
            .campaign_held(candidate, ttl, wait)
            .await?
            .into_handle()
            .await)
    }

    /// A guard of the leadership `handle` names (from [`campaign_handle`]), whose refresh
    /// records the term in the leader key as [`campaign`](Election::campaign)'s keep-alive
    /// does, and whose fenced writes and release apply only while that leadership holds. As
    /// with [`LockGuard::from_handle`], dropping the guard resigns in the background; turn it
    /// back into a handle with [`LockGuard::into_handle`] to stay leader.
    ///
    /// Errors: [`Error::InvalidInput`] for a handle of another election's key, an empty
    /// candidate, a TTL out of range or a revision below the term.
    ///
    /// [`campaign_handle`]: Election::campaign_handle
    pub fn resume(&self, handle: &LockHandle) -> Result<LockGuard> {
        if handle.key != self.name {
            return Err(Error::InvalidInput {
                message: format!(
                    "a leadership of {} is not one of election {}",
                    handle.key, self.name
                ),
            });
        }
        let value = leader_value(handle.token.get(), &handle.owner);
        LockGuard::resumed(&self.store, handle, value)
    }

    /// The leader lock, won and not yet kept alive, its value set to record the term on the
    /// first refresh.
    async fn campaign_held(
        &self,
        candidate: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard> {
        validate_lock_input(candidate, ttl)?;
        let value = leader_value(0, candidate);
        let mut guard =
            match acquire_waiting(&self.store, &self.name, candidate, value, ttl, wait).await {
                Err(Error::LockHeld {
                    key,
                    holder,
                    expires_in,
                }) => {
                    // The holder text is the leader key's value; name the candidate alone.
                    let candidate = match holder.split_once(' ') {
                        Some((_, candidate)) => candidate.to_owned(),
                        None => holder,
                    };
                    return Err(Error::LockHeld {
                        key,
                        holder: candidate,
                        expires_in,
                    });
                }
                other => other?,
            };
        let term = guard.token();
        guard.set_value(leader_value(term.get(), candidate));
        Ok(guard)
    }

    /// The current leader and its term, or `None` when there is none. Linearizable, as
    /// [`StateStore::get`].
    pub async fn leader(&self) -> Result<Option<Leader>> {
        Ok(self
            .store
            .get(&self.name)
            .await?
            .map(|entry| decode(&entry)))
    }

    /// The current leader (or `None`) first, then every change of leader in order: a new
    /// leader, or `None` when the leadership ended (resigned, expired) with nobody holding it
    /// yet. Refreshes of a leadership are not changes. A watcher that lags re-reads the current
    /// state and goes on from there, reporting it if it differs from the last item (leaders
    /// that came and went meanwhile are then not reported). The stream ends when the store
    /// closes; an error re-opening the watch is its last item.
    pub async fn observe(&self) -> Result<BoxStream<'static, Result<Option<Leader>>>> {
        let observer = Observer {
            leader_key: Some(KeyFollower::open(&self.store, &self.name).await?),
            last: None,
        };
        Ok(
            futures::stream::unfold(observer, |mut observer| async move {
                let item = observer.next_change().await?;
                Some((item, observer))
            })
            .boxed(),
        )
    }
}

/// The state of an [`Election::observe`] stream.
struct Observer {
    // `None` once the stream has ended.
    leader_key: Option<KeyFollower>,
    // The last item given, `None` before the first.
    last: Option<Option<Leader>>,
}

impl Observer {
    /// The next change to report, or `None` when the stream ends.
    async fn next_change(&mut self) -> Option<Result<Option<Leader>>> {
        loop {
            let leader_key = self.leader_key.as_mut()?;
            // After a lag the follower reads the leader key afresh, so the gap's leaders are
            // skipped and the current one compared with the last reported.
            let now = match leader_key.next().await {
                Ok(entry) => entry.as_ref().map(decode),
                Err(err) => {
                    self.leader_key = None;
                    return match err {
                        Error::Closed => None,
                        err => Some(Err(err)),
                    };
                }
            };
            if self.last.as_ref() != Some(&now) {
                self.last = Some(now.clone());
                return Some(Ok(now));
            }
        }
    }
}

impl Leadership {
    /// This leadership's term: strictly greater than every earlier leader's.
    pub fn term(&self) -> FencingToken {
        self.term
    }

    /// The candidate name this leadership was won with.
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// Whether the leadership is known lost.
    pub fn is_lost(&self) -> bool {
        self.kept.is_lost()
    }

    /// Resolves the moment the leadership is known lost: a refresh found the leader key taken,
    /// the watch of the leader key saw it deleted or expired, or refreshes failed for a whole
    /// TTL. Cancel-safe.
    pub async fn lost(&mut self) {
        self.kept.lost().await;
    }

    /// Writes `value` to `key` only while this leadership holds, atomically; otherwise
    /// [`Error::LockLost`] and nothing is written.
    pub async fn fenced_put(&self, key: &Key, value: impl Into<Bytes>) -> Result<Revision> {
        self.kept.guard().fenced_put(key, value).await
    }

    /// Applies `ops` as one transaction only while this leadership holds; otherwise
    /// [`Error::LockLost`] and nothing is applied. See [`LockGuard::fenced_txn`].
    ///
    /// [`LockGuard::fenced_txn`]: crate::lock::LockGuard::fenced_txn
    pub async fn fenced_txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        self.kept.guard().fenced_txn(ops).await
    }

    /// Resigns at once: deletes the leader key if this leadership still holds it, so the next
    /// campaigner, watching it, takes over without waiting for the TTL. [`Error::LockLost`]
    /// if the leadership was already lost.
    pub async fn resign(self) -> Result<()> {
        self.kept.release().await
    }
}

fn leader_value(term: u64, candidate: &str) -> Bytes {
    Bytes::from(format!("{term} {candidate}"))
}

/// Reads a leader key's entry. A value not in the election's format (written by someone else)
/// counts as a leader named by the whole value, in the term of the entry's revision.
fn decode(entry: &Entry) -> Leader {
    let text = String::from_utf8_lossy(&entry.value);
    let parsed = text
        .split_once(' ')
        .and_then(|(term, candidate)| Some((term.parse::<u64>().ok()?, candidate)));
    match parsed {
        Some((term, candidate)) => Leader {
            candidate: candidate.to_owned(),
            term: Revision::new(term).map_or(FencingToken(entry.revision), FencingToken),
        },
        None => Leader {
            candidate: text.into_owned(),
            term: FencingToken(entry.revision),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstate_core::MemoryStore;

    /// An observer with a one-event buffer that does not read while leaders come and go
    /// lags; it re-reads the current leader and reports it, never a leader out of term order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_observer_that_lags_re_reads_and_reports_the_current_leader() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::builder().watch_buffer(1).build());
        let election = Election::new(store, Key::new("service.leader").unwrap());
        let mut changes = election.observe().await.unwrap();
        assert_eq!(changes.next().await.unwrap().unwrap(), None);
        let (ttl, wait) = (Duration::from_secs(30), Duration::from_secs(5));
        for candidate in ["node-a", "node-b", "node-c"] {
            election
                .campaign(candidate, ttl, wait)
                .await
                .unwrap()
                .resign()
                .await
                .unwrap();
        }
        let last = election.campaign("node-d", ttl, wait).await.unwrap();
        let mut terms = Vec::new();
        loop {
            let change = tokio::time::timeout(Duration::from_secs(5), changes.next())
                .await
                .expect("the observer catches up")
                .unwrap()
                .unwrap();
            if let Some(leader) = change {
                terms.push(leader.term);
                if leader.candidate == "node-d" {
                    assert_eq!(leader.term, last.term());
                    break;
                }
            }
        }
        assert!(
            terms.len() < 4,
            "a lagged observer skips what it missed: {terms:?}"
        );
        assert!(terms.windows(2).all(|pair| pair[0] < pair[1]), "{terms:?}");
    }
}
