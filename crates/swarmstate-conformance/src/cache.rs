//! Cases for [`TtlCache`]: misses compute and hits do not, concurrent misses compute once,
//! values expire and are computed again, failed or abandoned fills do not block anyone for
//! long, invalidation, and bad input.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Barrier, oneshot};
use tokio::time::{Instant, timeout};

use super::support::{
    EVENT_TIMEOUT, TIMING_ATTEMPTS, expiry_slack, granularity, key, sleep_until, too_slow,
    ttl_unit, ttl_unit_for_attempt,
};
use swarmstate_core::{Error, StateStore};
use swarmstate_recipes::cache::{CacheError, TtlCache};
use swarmstate_recipes::lock::acquire_lock;

/// A TTL no case waits out.
const LONG_TTL: Duration = Duration::from_secs(60);

fn cache(store: &Arc<dyn StateStore>) -> TtlCache {
    TtlCache::new(store.clone(), key("cache"))
}

/// Computes `value` and counts the call.
async fn counted(calls: &AtomicUsize, value: &str) -> Result<Bytes, String> {
    calls.fetch_add(1, Ordering::SeqCst);
    Ok(Bytes::from(value.to_owned()))
}

/// `get_or_compute` that must succeed.
async fn fetch(
    cache: &TtlCache,
    name: &str,
    ttl: Duration,
    calls: &AtomicUsize,
    value: &str,
) -> Bytes {
    cache
        .get_or_compute(name, ttl, || counted(calls, value))
        .await
        .unwrap_or_else(|err| panic!("get_or_compute {name}: {err}"))
}

/// A miss computes and stores the value with its TTL, releasing the fill lock in the same
/// write; a hit returns the stored value without computing.
pub async fn cache_miss_computes_and_a_hit_does_not(store: Arc<dyn StateStore>) {
    let cache = cache(&store);
    let calls = AtomicUsize::new(0);
    assert_eq!(cache.get("answer").await.unwrap(), None);
    let value = fetch(&cache, "answer", LONG_TTL, &calls, "42").await;
    assert_eq!(&value[..], b"42");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let entry = store
        .get(&cache.entry_key("answer").unwrap())
        .await
        .unwrap()
        .expect("the value is stored");
    assert_eq!(&entry.value[..], b"42");
    let left = entry.expires_in.expect("a cached value carries its TTL");
    assert!(left <= LONG_TTL + granularity(&*store), "{left:?}");
    let lock = cache.fill_lock_key("answer").unwrap();
    assert_eq!(
        store.get(&lock).await.unwrap(),
        None,
        "the fill lock is gone once the value is stored"
    );

    for _ in 0..3 {
        let again = fetch(&cache, "answer", LONG_TTL, &calls, "other").await;
        assert_eq!(&again[..], b"42");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "hits do not compute");
    assert_eq!(
        cache.get("answer").await.unwrap().as_deref(),
        Some(&b"42"[..])
    );
    // Names are independent.
    let other = fetch(&cache, "question", LONG_TTL, &calls, "unknown").await;
    assert_eq!(&other[..], b"unknown");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Sixteen callers, each with its own cache handle (as separate agents would have), miss the
/// same name at once: exactly one computes, and all get its value.
pub async fn concurrent_cache_misses_compute_exactly_once(store: Arc<dyn StateStore>) {
    const CALLERS: usize = 16;
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let cache = cache(&store).owner(format!("agent-{i}"));
            let (calls, start) = (calls.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                cache
                    .get_or_compute("report", LONG_TTL, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Long enough for every other caller to miss meanwhile.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, String>(Bytes::from(format!("by agent-{i}")))
                    })
                    .await
            })
        })
        .collect();
    let mut values = Vec::new();
    for task in tasks {
        let value = timeout(EVENT_TIMEOUT * 3, task)
            .await
            .expect("every caller returns")
            .expect("no caller panics")
            .unwrap_or_else(|err| panic!("get_or_compute: {err}"));
        values.push(value);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one computation for all callers"
    );
    assert!(
        values.iter().all(|value| *value == values[0]),
        "every caller gets the one computed value: {values:?}"
    );
}

/// A cached value is gone once its TTL has run out (within the store's granularity), and the
/// next call computes it again.
///
/// The second call is judged a hit only if it finished within the TTL of the moment the fill
/// began; on a machine that stalled longer it may have missed and cached a value of its own,
/// which would outlive the first one's TTL, so the attempt is repeated with a doubled TTL, on
/// a name of its own.
pub async fn cached_value_expires_after_its_ttl_and_is_recomputed(store: Arc<dyn StateStore>) {
    let cache = cache(&store);
    for attempt in 0..TIMING_ATTEMPTS {
        let name = format!("weather-{attempt}");
        let calls = AtomicUsize::new(0);
        let ttl = ttl_unit_for_attempt(&*store, attempt);
        let before = Instant::now();
        assert_eq!(
            &fetch(&cache, &name, ttl, &calls, "sunny").await[..],
            b"sunny"
        );
        let filled = Instant::now();
        let hit = fetch(&cache, &name, ttl, &calls, "rain").await;
        if before.elapsed() >= ttl {
            continue;
        }
        assert_eq!(&hit[..], b"sunny", "a value within its TTL is a hit");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        sleep_until(filled + ttl + granularity(&*store)).await;
        assert_eq!(
            cache.get(&name).await.unwrap(),
            None,
            "expired after its TTL"
        );
        assert_eq!(
            &fetch(&cache, &name, ttl, &calls, "snow").await[..],
            b"snow"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "recomputed");
        return;
    }
    too_slow(
        "cached_value_expires_after_its_ttl_and_is_recomputed",
        "the second call never finished within the TTL of the fill",
        ttl_unit_for_attempt(&*store, TIMING_ATTEMPTS - 1),
    );
}

/// A computation that fails is not cached and releases the fill lock at once: the next caller
/// computes without waiting for the fill timeout, and so does a caller that was waiting on the
/// failed fill.
pub async fn failing_compute_is_not_cached_and_the_next_caller_computes(
    store: Arc<dyn StateStore>,
) {
    let cache = cache(&store).fill_timeout(Duration::from_secs(30));
    let err = cache
        .get_or_compute("flaky", LONG_TTL, || async {
            Err::<Bytes, _>("boom".to_owned())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CacheError::Compute(message) if message == "boom"),
        "{err}"
    );
    assert_eq!(
        cache.get("flaky").await.unwrap(),
        None,
        "a failure is not cached"
    );
    let lock = cache.fill_lock_key("flaky").unwrap();
    assert_eq!(
        store.get(&lock).await.unwrap(),
        None,
        "the fill lock is released"
    );

    // A fill that fails while another caller waits on it: the waiter takes over promptly.
    let (started, has_started) = oneshot::channel();
    let (fail, failing) = oneshot::channel::<()>();
    let filler = {
        let cache = cache.clone().owner("filler");
        tokio::spawn(async move {
            cache
                .get_or_compute("flaky", LONG_TTL, || async move {
                    started.send(()).unwrap();
                    failing.await.unwrap();
                    Err::<Bytes, _>("boom again".to_owned())
                })
                .await
        })
    };
    has_started.await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let waiter = {
        let (cache, calls) = (cache.clone().owner("waiter"), calls.clone());
        tokio::spawn(async move {
            cache
                .get_or_compute("flaky", LONG_TTL, || async move {
                    counted(&calls, "fine").await
                })
                .await
        })
    };
    // Give the waiter time to find the lock held and start waiting on it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let failed_at = Instant::now();
    fail.send(()).unwrap();
    let err = filler.await.unwrap().unwrap_err();
    assert!(matches!(err, CacheError::Compute(_)), "{err}");
    let value = timeout(EVENT_TIMEOUT, waiter)
        .await
        .expect("the waiter takes over long before the fill timeout")
        .unwrap()
        .unwrap();
    assert!(failed_at.elapsed() < Duration::from_secs(30));
    assert_eq!(&value[..], b"fine");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.get("flaky").await.unwrap().as_deref(),
        Some(&b"fine"[..])
    );
}

/// A filler that dies while holding the fill lock holds others up only until the lock's TTL
/// runs out; then one of them computes.
pub async fn cache_filler_that_dies_does_not_block_others_forever(store: Arc<dyn StateStore>) {
    let ttl = ttl_unit(&*store);
    let cache = cache(&store).fill_timeout(ttl);
    let lock = cache.fill_lock_key("slow").unwrap();
    let before = Instant::now();
    // The dead filler: it took the lock and will never store a value or release it.
    let dead = acquire_lock(&store, &lock, "dead-filler", ttl)
        .await
        .unwrap();
    let computed_at = Arc::new(std::sync::Mutex::new(None));
    let limit = ttl + expiry_slack(&*store) + EVENT_TIMEOUT;
    let value = timeout(
        limit,
        cache.get_or_compute("slow", LONG_TTL, || {
            let computed_at = computed_at.clone();
            async move {
                *computed_at.lock().unwrap() = Some(Instant::now());
                Ok::<_, String>(Bytes::from_static(b"rescued"))
            }
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("blocked by a dead filler for more than {limit:?}"))
    .unwrap();
    assert_eq!(&value[..], b"rescued");
    let computed_at = computed_at.lock().unwrap().expect("computed");
    assert!(
        computed_at >= before + ttl,
        "computed {:?} after the dead filler locked, before its lock's TTL of {ttl:?} ran out",
        computed_at - before
    );
    assert!(
        dead.token().0
            < store
                .get(&cache.entry_key("slow").unwrap())
                .await
                .unwrap()
                .unwrap()
                .revision
    );
}

/// `invalidate` removes the value, so the next call computes; a fill in flight during the
/// invalidation returns its value to its caller but does not cache it.
pub async fn invalidate_removes_the_value_and_cancels_a_fill_in_flight(store: Arc<dyn StateStore>) {
    let cache = cache(&store);
    let calls = AtomicUsize::new(0);
    fetch(&cache, "plan", LONG_TTL, &calls, "v1").await;
    cache.invalidate("plan").await.unwrap();
    assert_eq!(cache.get("plan").await.unwrap(), None);
    assert_eq!(
        &fetch(&cache, "plan", LONG_TTL, &calls, "v2").await[..],
        b"v2"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    cache.invalidate("never-filled").await.unwrap();

    cache.invalidate("plan").await.unwrap();
    let (started, has_started) = oneshot::channel();
    let (finish, finishing) = oneshot::channel::<()>();
    let filler = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_compute("plan", LONG_TTL, || async move {
                    started.send(()).unwrap();
                    finishing.await.unwrap();
                    Ok::<_, String>(Bytes::from_static(b"computed before the invalidation"))
                })
                .await
        })
    };
    has_started.await.unwrap();
    cache.invalidate("plan").await.unwrap();
    finish.send(()).unwrap();
    let value = filler.await.unwrap().unwrap();
    assert_eq!(&value[..], b"computed before the invalidation");
    assert_eq!(
        cache.get("plan").await.unwrap(),
        None,
        "the stale fill is not cached"
    );
    let lock = cache.fill_lock_key("plan").unwrap();
    assert_eq!(store.get(&lock).await.unwrap(), None);
}

/// Bad names, TTLs and fill timeouts are refused before anything is computed or written.
pub async fn cache_rejects_invalid_names_and_ttls(store: Arc<dyn StateStore>) {
    let calls = AtomicUsize::new(0);
    let cases = [
        (cache(&store), "", LONG_TTL),
        (cache(&store), "a..b", LONG_TTL),
        (cache(&store), "a._fill", LONG_TTL),
        (cache(&store), "_private", LONG_TTL),
        (cache(&store), "fine", Duration::ZERO),
        (cache(&store).fill_timeout(Duration::ZERO), "fine", LONG_TTL),
    ];
    for (cache, name, ttl) in cases {
        let err = cache
            .get_or_compute(name, ttl, || counted(&calls, "x"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CacheError::Store(Error::InvalidKey { .. } | Error::InvalidInput { .. })
            ),
            "{name:?} {ttl:?}: {err}"
        );
    }
    assert!(matches!(
        cache(&store).get("a._fill").await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        cache(&store).invalidate("").await,
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(
        super::support::list(&*store, "*").await.is_empty(),
        "nothing was written"
    );
}

/// A caller dropped while computing (its task aborted) releases the fill lock in the
/// background, so the next caller computes at once instead of after the fill timeout.
pub async fn cancelled_fill_releases_its_lock_at_once(store: Arc<dyn StateStore>) {
    let cache = cache(&store).fill_timeout(Duration::from_secs(30));
    let (started, has_started) = oneshot::channel();
    let abandoned = {
        let cache = cache.clone().owner("abandoned");
        tokio::spawn(async move {
            cache
                .get_or_compute("job", LONG_TTL, || async move {
                    started.send(()).unwrap();
                    std::future::pending::<Result<Bytes, String>>().await
                })
                .await
        })
    };
    has_started.await.unwrap();
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    let calls = AtomicUsize::new(0);
    let value = timeout(
        EVENT_TIMEOUT,
        fetch(&cache, "job", LONG_TTL, &calls, "done"),
    )
    .await
    .expect("the next caller computes long before the 30 s fill timeout");
    assert_eq!(&value[..], b"done");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
