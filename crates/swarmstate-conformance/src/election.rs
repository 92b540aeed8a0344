//! Cases for leader election through [`Election`] and [`Leadership`]: winning, hand-over on
//! resign, strictly increasing terms, deadlines, deposed leaders, and observing changes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::{Instant, timeout};

use super::lock_wait::wait_for_waiters;
use super::support::{
    EVENT_TIMEOUT, Renewals, TIMING_ATTEMPTS, entry_of, expect_err, granularity, keep_alive_ttl,
    key, list, too_slow, ttl_unit,
};
use swarmstate_core::{Error, Result, StateStore, StateStoreExt};
use swarmstate_recipes::election::{Election, Leader, Leadership};
use swarmstate_recipes::lock::{FencingToken, lock_waiters_prefix};

/// A TTL no case waits out.
const LONG_TTL: Duration = Duration::from_secs(30);

/// How long a campaign may wait in these cases: far longer than any hand-over.
const LONG_WAIT: Duration = Duration::from_secs(60);

fn election(store: &Arc<dyn StateStore>) -> Election {
    Election::new(store.clone(), key("service.leader"))
}

async fn win(election: &Election, candidate: &str, ttl: Duration) -> Leadership {
    election
        .campaign(candidate, ttl, LONG_WAIT)
        .await
        .unwrap_or_else(|err| panic!("{candidate} campaigning: {err}"))
}

fn leader(candidate: &str, term: FencingToken) -> Option<Leader> {
    Some(Leader {
        candidate: candidate.to_owned(),
        term,
    })
}

/// The next item of an observe stream, within [`EVENT_TIMEOUT`].
async fn next_leader(stream: &mut BoxStream<'static, Result<Option<Leader>>>) -> Option<Leader> {
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(leader))) => leader,
        Ok(Some(Err(err))) => panic!("observe failed: {err}"),
        Ok(None) => panic!("the observe stream ended"),
        Err(_) => panic!("no change of leader observed within {EVENT_TIMEOUT:?}"),
    }
}

/// Campaigning for a vacant election wins at once; `leader` reports the candidate and the
/// term, which is the revision that created the leader key; after resigning there is none.
pub async fn campaign_of_a_vacant_election_wins_and_leader_reports_it(store: Arc<dyn StateStore>) {
    let election = election(&store);
    assert_eq!(election.leader().await.unwrap(), None);
    let leadership = win(&election, "node-a", LONG_TTL).await;
    assert_eq!(leadership.candidate(), "node-a");
    assert!(!leadership.is_lost());
    let entry = entry_of(&*store, election.name()).await;
    assert_eq!(leadership.term(), FencingToken(entry.revision));
    assert_eq!(
        election.leader().await.unwrap(),
        leader("node-a", leadership.term())
    );
    let written = leadership
        .fenced_put(&key("service.config"), "by node-a")
        .await
        .unwrap();
    assert!(written > leadership.term().0);
    leadership.resign().await.unwrap();
    assert_eq!(election.leader().await.unwrap(), None);
}

/// A campaigner waiting behind the leader takes over as soon as the leader resigns, long
/// before the leader's TTL, with a higher term.
pub async fn resign_hands_over_to_the_next_campaigner_before_the_ttl(store: Arc<dyn StateStore>) {
    let election = election(&store);
    let first = win(&election, "node-a", LONG_TTL).await;
    let next = {
        let election = election.clone();
        tokio::spawn(async move { election.campaign("node-b", LONG_TTL, LONG_WAIT).await })
    };
    wait_for_waiters(&store, election.name(), 1).await;
    assert!(
        !next.is_finished(),
        "a campaign waits while there is a leader"
    );
    let first_term = first.term();
    let resigned = Instant::now();
    first.resign().await.unwrap();
    let second = timeout(EVENT_TIMEOUT, next)
        .await
        .expect("the next campaigner takes over soon after the resignation")
        .unwrap()
        .unwrap();
    assert!(resigned.elapsed() < LONG_TTL / 2);
    assert!(second.term() > first_term);
    assert_eq!(
        election.leader().await.unwrap(),
        leader("node-b", second.term())
    );
    second.resign().await.unwrap();
}

/// Terms strictly increase across leaders, whether the previous one resigned or its
/// leadership was dropped; `leader` always reports the leadership's own term.
pub async fn terms_strictly_increase_across_leaders(store: Arc<dyn StateStore>) {
    let election = election(&store);
    let mut terms = Vec::new();
    for round in 0..5 {
        let candidate = format!("node-{}", round % 2);
        let leadership = win(&election, &candidate, LONG_TTL).await;
        assert_eq!(
            election.leader().await.unwrap(),
            leader(&candidate, leadership.term())
        );
        store.set(&key("noise.k"), "x").await.unwrap();
        terms.push(leadership.term());
        if round % 2 == 0 {
            leadership.resign().await.unwrap();
        } else {
            // The next campaign waits for the background resignation, not for the TTL.
            drop(leadership);
        }
    }
    for pair in terms.windows(2) {
        assert!(pair[0] < pair[1], "terms must strictly increase: {terms:?}");
    }
}

/// A kept-alive leadership keeps its term through refreshes: `leader` still reports it, and
/// observers see no change.
///
/// The refreshes are the keep-alive's, so the store is wrapped to note when each was sent (a
/// successful refresh proves the lease held until it was sent). The checks are judged only if
/// a refresh was answered before the leader key was read and the resignation finished within
/// a TTL of the last refresh sent; a machine that stalled the refreshes longer repeats the
/// attempt with a doubled TTL, on an election of its own.
pub async fn refreshes_keep_the_term_and_are_not_reported_as_changes(store: Arc<dyn StateStore>) {
    for attempt in 0..TIMING_ATTEMPTS {
        let ttl = keep_alive_ttl(&*store, attempt);
        let name = key(&format!("service.leader-{attempt}"));
        let renewals = Renewals::new(&store, &name);
        let election = Election::new(renewals.clone(), name);
        let mut changes = election.observe().await.unwrap();
        assert_eq!(next_leader(&mut changes).await, None);
        let leadership = win(&election, "node-a", ttl).await;
        let term = leadership.term();
        assert_eq!(next_leader(&mut changes).await, leader("node-a", term));
        // Two refreshes at least (every third of the TTL).
        tokio::time::sleep(ttl).await;
        let read = Instant::now();
        let entry = store.get(election.name()).await.unwrap();
        let lost = leadership.is_lost();
        let current = election.leader().await.unwrap();
        let quiet = granularity(&*store) + Duration::from_millis(200);
        let change = timeout(quiet, changes.next()).await.ok();
        let resigned = leadership.resign().await;
        if !renewals.refreshed_before(read) || renewals.last_sent().elapsed() >= ttl {
            continue;
        }
        let entry = entry.expect("the leader key of a kept-alive leadership is present");
        assert!(
            entry.revision > term.0,
            "the leader key should have been refreshed"
        );
        assert!(!lost, "a refreshed leadership must not be reported lost");
        assert_eq!(current, leader("node-a", term));
        if let Some(item) = change {
            panic!("a refresh was reported as a change: {item:?}");
        }
        resigned.unwrap_or_else(|err| panic!("resignation of a kept-alive leadership: {err}"));
        assert_eq!(next_leader(&mut changes).await, None);
        return;
    }
    too_slow(
        "refreshes_keep_the_term_and_are_not_reported_as_changes",
        "the keep-alive's refreshes never kept up with its TTL (or it does not refresh every \
         third of its TTL)",
        keep_alive_ttl(&*store, TIMING_ATTEMPTS - 1),
    );
}

/// A campaign whose wait runs out fails with `LockHeld` naming the leader's candidate and
/// leaves no ticket behind; the leader is untouched.
pub async fn campaign_hits_its_deadline_with_lock_held_naming_the_leader(
    store: Arc<dyn StateStore>,
) {
    let election = election(&store);
    let leadership = win(&election, "node-a", LONG_TTL).await;
    let wait = ttl_unit(&*store);
    let started = Instant::now();
    let err = expect_err(
        election.campaign("node-b", LONG_TTL, wait).await,
        "a campaign against a leader",
    );
    assert!(started.elapsed() >= wait);
    assert!(
        matches!(&err, Error::LockHeld { holder, .. } if holder == "node-a"),
        "{err}"
    );
    let prefix = lock_waiters_prefix(election.name()).unwrap();
    assert_eq!(
        list(&*store, &format!("{prefix}.*")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        election.leader().await.unwrap(),
        leader("node-a", leadership.term())
    );
    leadership.resign().await.unwrap();
}

/// A leader whose leader key vanished (as when it stalled past its TTL) and was taken by
/// another is told at once through `lost`, and its fenced writes are rejected with `LockLost`
/// and write nothing, while the new leader's apply.
///
/// The leader key is removed right after it was won, so it must be found unless a TTL has
/// passed since the campaign began; a machine that stalled that long repeats the attempt with
/// a doubled TTL, on an election of its own.
pub async fn deposed_leaders_fenced_writes_are_rejected_and_lost_fires(store: Arc<dyn StateStore>) {
    let target = key("service.config");
    for attempt in 0..TIMING_ATTEMPTS {
        let ttl = keep_alive_ttl(&*store, attempt);
        let election = Election::new(store.clone(), key(&format!("service.leader-{attempt}")));
        let started = Instant::now();
        let mut old = win(&election, "node-a", ttl).await;
        let removed = store.delete(election.name(), None).await.unwrap();
        if removed.is_none() && started.elapsed() >= ttl {
            continue;
        }
        removed.expect("the leader key was there within its TTL");
        let new = win(&election, "node-b", LONG_TTL).await;
        assert!(new.term() > old.term());
        let limit = granularity(&*store) + Duration::from_secs(2);
        timeout(limit, old.lost())
            .await
            .unwrap_or_else(|_| panic!("the deposed leader was not told within {limit:?}"));
        assert!(old.is_lost());
        let err = expect_err(
            old.fenced_put(&target, "stale").await,
            "a deposed leader's fenced put",
        );
        assert!(matches!(err, Error::LockLost { .. }), "{err}");
        assert_eq!(store.get(&target).await.unwrap(), None);
        new.fenced_put(&target, "fresh").await.unwrap();
        let err = expect_err(old.resign().await, "a deposed leader's resignation");
        assert!(matches!(err, Error::LockLost { .. }), "{err}");
        assert_eq!(
            election.leader().await.unwrap(),
            leader("node-b", new.term())
        );
        assert!(!new.is_lost());
        new.resign().await.unwrap();
        return;
    }
    too_slow(
        "deposed_leaders_fenced_writes_are_rejected_and_lost_fires",
        "the leader key was never removed within a TTL of the campaign",
        keep_alive_ttl(&*store, TIMING_ATTEMPTS - 1),
    );
}

/// `observe` gives the current leader first, then every change in order: each new leader
/// with its term, and `None` whenever a leadership ended.
pub async fn observe_reports_each_change_of_leader_in_order(store: Arc<dyn StateStore>) {
    let election = election(&store);
    let first = win(&election, "node-a", LONG_TTL).await;
    let mut changes = election.observe().await.unwrap();
    assert_eq!(
        next_leader(&mut changes).await,
        leader("node-a", first.term())
    );
    let next = {
        let election = election.clone();
        tokio::spawn(async move { election.campaign("node-b", LONG_TTL, LONG_WAIT).await })
    };
    wait_for_waiters(&store, election.name(), 1).await;
    first.resign().await.unwrap();
    assert_eq!(next_leader(&mut changes).await, None);
    let second = timeout(EVENT_TIMEOUT, next)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        next_leader(&mut changes).await,
        leader("node-b", second.term())
    );
    second.resign().await.unwrap();
    assert_eq!(next_leader(&mut changes).await, None);
    let third = win(&election, "node-c", LONG_TTL).await;
    assert_eq!(
        next_leader(&mut changes).await,
        leader("node-c", third.term())
    );
    drop(third);
    assert_eq!(next_leader(&mut changes).await, None);
}
