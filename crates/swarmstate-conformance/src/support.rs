//! Helpers shared by the cases: key shorthands, watch-stream readers that time out instead of
//! hanging, TTL timing derived from the store's capabilities, and a store that notes when a
//! recipe's background renewals were made.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{Instant, timeout};

use swarmstate_core::{
    Entry, Error, Key, Pattern, PutOptions, Result, Revision, StateStore, StateStoreExt,
    WatchEvent, WatchStart, WatchStream,
};

/// How long a case waits for a watch event, or for a stream to end, before it fails.
pub(super) const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a timing check is retried with a doubled TTL when the machine was too slow
/// to decide it.
pub(super) const TIMING_ATTEMPTS: u32 = 4;

/// A key for a test; panics on text that is not a valid key (a bug in the case).
pub(super) fn key(text: &str) -> Key {
    Key::new(text).unwrap_or_else(|err| panic!("test key {text:?}: {err}"))
}

/// A pattern for a test; panics on an invalid pattern (a bug in the case).
pub(super) fn pattern(text: &str) -> Pattern {
    Pattern::new(text).unwrap_or_else(|err| panic!("test pattern {text:?}: {err}"))
}

/// The error of an operation the contract requires to fail.
pub(super) fn expect_err<T>(result: Result<T>, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what} succeeded, but the contract requires it to fail"),
        Err(err) => err,
    }
}

/// The key's current entry, which must exist.
pub(super) async fn entry_of(store: &dyn StateStore, key: &Key) -> Entry {
    store
        .get(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} should be present"))
}

/// Asserts the key is at `revision` with `value`.
pub(super) async fn assert_entry(
    store: &dyn StateStore,
    key: &Key,
    value: &[u8],
    revision: Revision,
) {
    let entry = entry_of(store, key).await;
    assert_eq!(entry.key, *key);
    assert_eq!(&entry.value[..], value, "value of {key}");
    assert_eq!(entry.revision, revision, "revision of {key}");
}

/// The keys `pattern` selects now, as text.
pub(super) async fn list(store: &dyn StateStore, pattern_text: &str) -> Vec<String> {
    store
        .list_keys(&pattern(pattern_text))
        .await
        .unwrap()
        .into_iter()
        .map(|key| key.as_str().to_owned())
        .collect()
}

/// Opens a watch, which must succeed.
pub(super) async fn watch(
    store: &dyn StateStore,
    pattern_text: &str,
    start: WatchStart,
) -> WatchStream {
    match store.watch(&pattern(pattern_text), start).await {
        Ok(stream) => stream,
        Err(err) => panic!("watch {pattern_text} from {start:?}: {err}"),
    }
}

/// The next event, within `limit`.
pub(super) async fn next_event_within(stream: &mut WatchStream, limit: Duration) -> WatchEvent {
    match timeout(limit, stream.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the watch stream ended, but another event was expected"),
        Err(_) => panic!("no watch event within {limit:?}"),
    }
}

/// The next event, within [`EVENT_TIMEOUT`].
pub(super) async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    next_event_within(stream, EVENT_TIMEOUT).await
}

/// Asserts the stream ends now: its next item is the end, within [`EVENT_TIMEOUT`].
pub(super) async fn expect_end(stream: &mut WatchStream) {
    match timeout(EVENT_TIMEOUT, stream.next()).await {
        Ok(None) => {}
        Ok(Some(event)) => panic!("the watch stream should have ended, got {event:?}"),
        Err(_) => panic!("the watch stream did not end within {EVENT_TIMEOUT:?}"),
    }
}

/// Reads the stream to its end, which must come within [`EVENT_TIMEOUT`] of the last event.
pub(super) async fn drain_to_end(stream: &mut WatchStream) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    loop {
        match timeout(EVENT_TIMEOUT, stream.next()).await {
            Ok(None) => return events,
            Ok(Some(event)) => events.push(event),
            Err(_) => panic!(
                "the watch stream did not end within {EVENT_TIMEOUT:?} (after {} events)",
                events.len()
            ),
        }
    }
}

/// Asserts `event` is a put of `value` to `key` at `revision`.
pub(super) fn assert_put(event: &WatchEvent, key: &Key, value: &[u8], revision: Revision) {
    match event {
        WatchEvent::Put(entry) => {
            assert_eq!(entry.key, *key, "key of {event:?}");
            assert_eq!(&entry.value[..], value, "value of {event:?}");
            assert_eq!(entry.revision, revision, "revision of {event:?}");
        }
        other => panic!("expected a put of {key} at {revision}, got {other:?}"),
    }
}

/// Proves that nothing reached the watcher since its last event: writes `sentinel` (which the
/// watcher must select) and asserts the very next event is that write.
pub(super) async fn assert_no_event_before_sentinel(
    store: &dyn StateStore,
    stream: &mut WatchStream,
    sentinel: &Key,
) {
    let revision = store.set(sentinel, "sentinel").await.unwrap();
    let event = next_event(stream).await;
    assert!(
        matches!(&event, WatchEvent::Put(entry) if entry.key == *sentinel && entry.revision == revision),
        "an event reached the watcher although nothing should have changed: {event:?}"
    );
}

/// Reads changes from `stream` (which watches `pattern`) until `done` holds for what was read.
/// A [`WatchEvent::Lagged`] is allowed and followed: the helper checks nothing already given is
/// repeated and resumes with [`WatchStart::FromRevision`]. Returns the changes, without the
/// lagged markers.
pub(super) async fn collect_events(
    store: &dyn StateStore,
    mut stream: WatchStream,
    pattern_text: &str,
    mut done: impl FnMut(&[WatchEvent]) -> bool + Send,
) -> Vec<WatchEvent> {
    let mut events: Vec<WatchEvent> = Vec::new();
    while !done(&events) {
        match next_event(&mut stream).await {
            WatchEvent::Lagged { resume_from } => {
                if let Some(last) = events.last().and_then(WatchEvent::revision) {
                    assert!(
                        resume_from > last,
                        "lagged with resume_from {resume_from} after already delivering {last}"
                    );
                }
                expect_end(&mut stream).await;
                stream = watch(store, pattern_text, WatchStart::FromRevision(resume_from)).await;
            }
            WatchEvent::CaughtUp { .. } => {}
            event => events.push(event),
        }
    }
    events
}

/// The revisions of `events`.
pub(super) fn revisions(events: &[WatchEvent]) -> Vec<Revision> {
    events.iter().filter_map(WatchEvent::revision).collect()
}

/// Asserts `revisions` strictly increase.
pub(super) fn assert_strictly_increasing(revisions: &[Revision]) {
    for pair in revisions.windows(2) {
        assert!(
            pair[0] < pair[1],
            "revisions must strictly increase, got {:?} then {:?} in {revisions:?}",
            pair[0],
            pair[1]
        );
    }
}

/// The store's TTL granularity (at least 1 ms).
pub(super) fn granularity(store: &dyn StateStore) -> Duration {
    store
        .capabilities()
        .ttl_granularity
        .max(Duration::from_millis(1))
}

/// The base TTL of the timing cases: at least 200 ms and a whole number of granularity steps,
/// so that a backend rounding TTLs up does not change it.
pub(super) fn ttl_unit(store: &dyn StateStore) -> Duration {
    let step = granularity(store);
    let floor = Duration::from_millis(200).max(step);
    let steps = floor.as_nanos().div_ceil(step.as_nanos());
    step * u32::try_from(steps).expect("a TTL unit of a sane number of steps")
}

/// The TTL unit of timing attempt `attempt` (0-based): doubled on every retry.
pub(super) fn ttl_unit_for_attempt(store: &dyn StateStore, attempt: u32) -> Duration {
    ttl_unit(store) * 2u32.pow(attempt)
}

/// The TTL of attempt `attempt` of a case whose lock a recipe keeps alive: three TTL units,
/// so a refresh every third of it is a unit apart.
pub(super) fn keep_alive_ttl(store: &dyn StateStore, attempt: u32) -> Duration {
    ttl_unit_for_attempt(store, attempt) * 3
}

/// Sleeps until `deadline` on the runtime's clock (a real clock: the suite never pauses time).
pub(super) async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(deadline).await;
}

/// The time an expiry may take to reach a watcher after the TTL ran out: a few granularity
/// steps for the store's expiry process, plus scheduling slack.
pub(super) fn expiry_slack(store: &dyn StateStore) -> Duration {
    granularity(store) * 4 + Duration::from_secs(1)
}

/// Fails a timing case none of whose [`TIMING_ATTEMPTS`] could be decided: `undecided` says
/// what kept coming too late, `longest_ttl` is the TTL of the last attempt.
pub(super) fn too_slow(case: &str, undecided: &str, longest_ttl: Duration) -> ! {
    panic!(
        "{case}: in {TIMING_ATTEMPTS} attempts (TTLs up to {longest_ttl:?}) {undecided}; the \
         machine is too slow to check this"
    )
}

/// A store that notes when each successful write to one key was sent and answered, for the
/// cases whose lock a recipe keeps alive in the background (a keep-alive's refreshes are not
/// the case's to time).
///
/// A successful refresh is an update at the lock's revision, which an expired lock refuses:
/// so the lock never lapsed before the last successful write, and it lives at least a TTL from
/// the moment that write was sent. A check that finished within that TTL is judged; a later
/// one may have met a lock the machine let lapse.
#[derive(Debug)]
pub(super) struct Renewals {
    inner: Arc<dyn StateStore>,
    key: Key,
    // Each successful write to `key`, in order: when it was sent and when it was answered.
    writes: Mutex<Vec<(Instant, Instant)>>,
}

impl Renewals {
    /// Wraps `inner`, noting the writes to `key`.
    pub(super) fn new(inner: &Arc<dyn StateStore>, key: &Key) -> Arc<Renewals> {
        Arc::new(Renewals {
            inner: inner.clone(),
            key: key.clone(),
            writes: Mutex::new(Vec::new()),
        })
    }

    fn writes(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, Instant)>> {
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the last successful write to the key (the acquisition or a refresh) was sent.
    pub(super) fn last_sent(&self) -> Instant {
        let writes = self.writes();
        let (sent, _) = writes
            .last()
            .expect("the lock was acquired through this store");
        *sent
    }

    /// Whether a write after the first (a refresh after the acquisition) was answered before
    /// `moment`.
    pub(super) fn refreshed_before(&self, moment: Instant) -> bool {
        self.writes()
            .iter()
            .skip(1)
            .any(|&(_, answered)| answered < moment)
    }
}

#[async_trait]
impl StateStore for Renewals {
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        let sent = Instant::now();
        let written = self.inner.put(key, value, options).await;
        if written.is_ok() && *key == self.key {
            self.writes().push((sent, Instant::now()));
        }
        written
    }
    swarmstate_core::forward_state_store!(|s| &s.inner;
        capabilities, get, delete, keys, watch, txn, close);
}
