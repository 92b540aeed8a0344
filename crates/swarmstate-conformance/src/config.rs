//! Cases for [`ConfigWatch`]: snapshot then live changes, deletes and expiry, values that do
//! not decode, recovery from a lag without a lost update, and the end when the store closes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, timeout};

use super::support::{
    EVENT_TIMEOUT, TIMING_ATTEMPTS, expiry_slack, key, next_event, pattern, ttl_unit, watch,
};
use swarmstate_core::{
    Error, Key, PutOptions, Revision, StateStore, StateStoreExt, TxnOp, WatchEvent, WatchStart,
};
use swarmstate_recipes::config::{ConfigSnapshot, ConfigWatch};

/// Values are UTF-8 text; anything else is refused.
fn decode_text(_: &Key, value: &Bytes) -> Result<String, String> {
    std::str::from_utf8(value)
        .map(str::to_owned)
        .map_err(|err| format!("not UTF-8: {err}"))
}

async fn start(store: &Arc<dyn StateStore>, pattern_text: &str) -> ConfigWatch<String> {
    ConfigWatch::start(store.clone(), pattern(pattern_text), decode_text)
        .await
        .unwrap_or_else(|err| panic!("start a config watch on {pattern_text}: {err}"))
}

/// The view as `(key, value, revision)` triples, in key order.
fn contents(view: &ConfigSnapshot<String>) -> Vec<(String, String, Revision)> {
    view.iter()
        .map(|(k, v)| {
            let revision = view.revision_of(k).expect("a listed key has a revision");
            (k.as_str().to_owned(), v.clone(), revision)
        })
        .collect()
}

/// Waits for changes until `done` holds for the view, within `limit`.
async fn wait_until(
    config: &mut ConfigWatch<String>,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&ConfigSnapshot<String>) -> bool,
) -> Arc<ConfigSnapshot<String>> {
    let deadline = Instant::now() + limit;
    let mut view = config.current();
    while !done(&view) {
        view = match timeout(
            deadline.saturating_duration_since(Instant::now()),
            config.changed(),
        )
        .await
        {
            Ok(Ok(view)) => view,
            Ok(Err(err)) => panic!("the config watch ended while waiting for {what}: {err}"),
            Err(_) => panic!("no config change within {limit:?} brought {what}; view: {view:?}"),
        };
    }
    view
}

/// Asserts the view equals a fresh snapshot of the same pattern, key by key and revision by
/// revision.
async fn assert_same_as_fresh_snapshot(
    store: &Arc<dyn StateStore>,
    pattern_text: &str,
    view: &ConfigSnapshot<String>,
) {
    let fresh = start(store, pattern_text).await;
    assert_eq!(
        contents(view),
        contents(&fresh.current()),
        "the live view differs from a fresh snapshot"
    );
}

/// A config watch starts with the selected keys as of the start (and only those), then applies
/// each later change to them in order, with the revision of the change.
pub async fn config_watch_starts_from_a_snapshot_then_applies_live_changes(
    store: Arc<dyn StateStore>,
) {
    let (a, nested, other) = (key("config.a"), key("config.b.c"), key("other.x"));
    let ra = store.set(&a, "1").await.unwrap();
    let rn = store.set(&nested, "2").await.unwrap();
    let last = store.set(&other, "9").await.unwrap();
    let mut config = start(&store, "config.*").await;
    let view = config.current();
    assert_eq!(
        contents(&view),
        vec![
            ("config.a".to_owned(), "1".to_owned(), ra),
            ("config.b.c".to_owned(), "2".to_owned(), rn),
        ]
    );
    assert!(view.revision() >= Some(last), "{view:?} after {last:?}");
    assert_eq!(config.subscribe().borrow().revision(), view.revision());

    let r2 = store.set(&a, "3").await.unwrap();
    let view = wait_until(&mut config, EVENT_TIMEOUT, "a = 3", |v| {
        v.revision() >= Some(r2)
    })
    .await;
    assert_eq!(view.get(&a).map(String::as_str), Some("3"));
    assert_eq!(view.revision_of(&a), Some(r2));
    assert_eq!(
        view.revision(),
        Some(r2),
        "the view reflects the change it applied"
    );

    // A change outside the pattern is not applied; the next change inside is.
    store.set(&other, "10").await.unwrap();
    let z = key("config.z");
    let rz = store.set(&z, "26").await.unwrap();
    let view = wait_until(&mut config, EVENT_TIMEOUT, "config.z", |v| {
        v.revision() >= Some(rz)
    })
    .await;
    assert_eq!(view.get(&z).map(String::as_str), Some("26"));
    assert_eq!(view.get(&other), None);
    assert_eq!(view.len(), 3);

    let results = store
        .txn(vec![TxnOp::put(&a, "4"), TxnOp::put(&nested, "5")])
        .await
        .unwrap();
    let last = results.last().and_then(|r| match r {
        swarmstate_core::TxnResult::Put(revision) => Some(*revision),
        _ => None,
    });
    let view = wait_until(&mut config, EVENT_TIMEOUT, "the transaction", |v| {
        v.revision() >= last
    })
    .await;
    assert_eq!(view.get(&a).map(String::as_str), Some("4"));
    assert_eq!(view.get(&nested).map(String::as_str), Some("5"));
    assert_same_as_fresh_snapshot(&store, "config.*", &view).await;
}

/// Deleted keys and keys whose TTL ran out leave the view.
pub async fn config_watch_removes_deleted_and_expired_entries(store: Arc<dyn StateStore>) {
    let (kept, deleted, expiring) = (key("config.kept"), key("config.gone"), key("config.temp"));
    store.set(&kept, "k").await.unwrap();
    store.set(&deleted, "d").await.unwrap();
    let ttl = ttl_unit(&*store);
    let written = Instant::now();
    store
        .put(&expiring, "t".into(), PutOptions::overwrite().ttl(ttl))
        .await
        .unwrap();
    let mut config = start(&store, "config.*").await;
    assert!(config.current().get(&expiring).is_some() || written.elapsed() >= ttl);

    store
        .delete(&deleted, None)
        .await
        .unwrap()
        .expect("present");
    wait_until(&mut config, EVENT_TIMEOUT, "the delete", |v| {
        v.get(&deleted).is_none()
    })
    .await;

    let limit = (ttl + expiry_slack(&*store)).saturating_sub(written.elapsed());
    let view = wait_until(&mut config, limit + EVENT_TIMEOUT, "the expiry", |v| {
        v.get(&expiring).is_none()
    })
    .await;
    assert!(
        written.elapsed() >= ttl,
        "{expiring} left the view after {:?}, before its TTL of {ttl:?}",
        written.elapsed()
    );
    assert_eq!(
        view.keys().map(Key::as_str).collect::<Vec<_>>(),
        vec!["config.kept"]
    );
    assert_same_as_fresh_snapshot(&store, "config.*", &view).await;
}

/// A value that does not decode keeps its key out of the map and is listed as rejected with
/// the reason, in the snapshot and live; a later value that decodes brings the key back, and
/// the view goes on.
pub async fn config_watch_keeps_undecodable_values_out_of_the_map_and_reports_them(
    store: Arc<dyn StateStore>,
) {
    let (good, bad) = (key("config.good"), key("config.bad"));
    store.set(&good, "ok").await.unwrap();
    let rb = store.set(&bad, vec![0xff, 0xfe]).await.unwrap();
    let mut config = start(&store, "config.*").await;
    let view = config.current();
    assert_eq!(view.get(&good).map(String::as_str), Some("ok"));
    assert_eq!(view.get(&bad), None);
    assert_eq!(view.revision_of(&bad), Some(rb));
    let rejected: Vec<(&Key, &str)> = view.rejected().collect();
    assert!(
        matches!(&rejected[..], [(k, reason)] if **k == bad && reason.contains("UTF-8")),
        "{rejected:?}"
    );

    let rg = store.set(&good, vec![0xc3]).await.unwrap();
    let view = wait_until(&mut config, EVENT_TIMEOUT, "the bad write", |v| {
        v.revision() >= Some(rg)
    })
    .await;
    assert_eq!(view.get(&good), None, "an undecodable value leaves the map");
    assert_eq!(view.rejected().count(), 2);

    let rg = store.set(&good, "fixed").await.unwrap();
    store.delete(&bad, None).await.unwrap().expect("present");
    let view = wait_until(&mut config, EVENT_TIMEOUT, "the fix", |v| {
        v.rejected().count() == 0
    })
    .await;
    assert_eq!(view.get(&good).map(String::as_str), Some("fixed"));
    assert_eq!(view.revision_of(&good), Some(rg));
    assert!(!config.has_ended());
}

/// A config watch whose reader stalls while more than the store's watch buffer of changes is
/// written is lagged by the store, recovers by itself (resuming or re-snapshotting), and ends
/// with the same map as a fresh snapshot: no update is lost. Then it stays live.
///
/// The stall is a decoder that blocks its thread until the burst is written, so the case needs
/// a multi-threaded runtime (as the generated tests have); the stall is bounded, so a case that
/// went wrong fails instead of hanging. Whether the store's delivery overflowed the watch
/// before the stall ended cannot be observed from outside, so a round without a lag is
/// repeated with a longer stall, a few times.
pub async fn config_watch_recovers_from_a_lag_without_losing_an_update(store: Arc<dyn StateStore>) {
    let buffer = store.capabilities().watch_buffer;
    let gate = Arc::new(Gate::default());
    let decoder_gate = gate.clone();
    let gate_key = key("config.gate");
    let decode = move |k: &Key, value: &Bytes| {
        if *k == key("config.gate") && value.starts_with(b"stall") {
            decoder_gate.stall();
        }
        decode_text(k, value)
    };
    for i in 0..8 {
        store
            .set(&key(&format!("config.k{i}")), "initial")
            .await
            .unwrap();
    }
    let mut config = ConfigWatch::start(store.clone(), pattern("config.*"), decode)
        .await
        .unwrap();
    let burst = buffer * 2 + 16;
    let mut margin = Duration::from_millis(100);
    for round in 0..TIMING_ATTEMPTS {
        // Reads alongside, to know when the burst has reached the store's watchers.
        let mut witness = watch(&*store, "config.*", WatchStart::Now).await;
        gate.arm();
        store
            .set(&gate_key, format!("stall-{round}"))
            .await
            .unwrap();
        let entered = Instant::now() + EVENT_TIMEOUT;
        while !gate.entered.load(Ordering::Acquire) {
            assert!(Instant::now() < entered, "the decoder was not called");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // More changes than the buffer holds: new keys, overwrites and deletes.
        let mut last = None;
        for i in 0..burst {
            let k = key(&format!("config.k{}", i % (buffer + 8)));
            last = Some(if i % 5 == 4 {
                match store.delete(&k, None).await.unwrap() {
                    Some(revision) => revision,
                    None => store.set(&k, format!("re-{round}-{i}")).await.unwrap(),
                }
            } else {
                store.set(&k, format!("v{round}-{i}")).await.unwrap()
            });
        }
        let last = last.expect("written");
        loop {
            match next_event(&mut witness).await {
                WatchEvent::Lagged { .. } => break,
                event if event.revision() >= Some(last) => break,
                _ => {}
            }
        }
        // The witness shows the burst reached this client's watchers; the margin lets the
        // config watch's own feed receive it too before its reader resumes.
        tokio::time::sleep(margin).await;
        gate.release();

        let view = wait_until(&mut config, EVENT_TIMEOUT * 2, "the burst", |v| {
            v.revision() >= Some(last)
        })
        .await;
        assert_same_as_fresh_snapshot(&store, "config.*", &view).await;
        if config.lag_recoveries() >= 1 {
            break;
        }
        margin *= 2;
    }
    assert!(
        config.lag_recoveries() >= 1,
        "a watch that stalled through {burst} changes with a buffer of {buffer} was never \
         lagged in {TIMING_ATTEMPTS} rounds"
    );

    let after = key("config.after");
    let revision = store.set(&after, "live").await.unwrap();
    let view = wait_until(&mut config, EVENT_TIMEOUT, "a change after the lag", |v| {
        v.revision() >= Some(revision)
    })
    .await;
    assert_eq!(view.get(&after).map(String::as_str), Some("live"));
}

/// A decoder stall that blocks its thread once per arming, until released (or a bound runs
/// out).
#[derive(Default)]
struct Gate {
    armed: AtomicBool,
    entered: AtomicBool,
    released: AtomicBool,
}

impl Gate {
    const BOUND: Duration = Duration::from_secs(15);

    fn arm(&self) {
        self.entered.store(false, Ordering::Release);
        self.released.store(false, Ordering::Release);
        self.armed.store(true, Ordering::Release);
    }

    fn stall(&self) {
        if !self.armed.swap(false, Ordering::AcqRel) {
            return;
        }
        self.entered.store(true, Ordering::Release);
        let wait = || {
            let started = std::time::Instant::now();
            while !self.released.load(Ordering::Acquire) && started.elapsed() < Self::BOUND {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // Hand this worker's other tasks to another thread meanwhile, so the stall holds up
        // only the config watch (a current-thread runtime cannot, and waits out the bound).
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => wait(),
            _ => tokio::task::block_in_place(wait),
        }
    }

    fn release(&self) {
        self.released.store(true, Ordering::Release);
    }
}

/// When the store closes, the config watch ends visibly: `changed` fails with `Closed` (on
/// every handle and subscriber), and the last view stays readable.
pub async fn config_watch_ends_with_closed_when_the_store_closes(store: Arc<dyn StateStore>) {
    let k = key("config.mode");
    let revision = store.set(&k, "a").await.unwrap();
    let mut config = start(&store, "config.*").await;
    let mut other = config.clone();
    let mut subscriber = config.subscribe();
    store.close().await.unwrap();
    for handle in [&mut config, &mut other] {
        match timeout(EVENT_TIMEOUT, handle.changed()).await {
            Ok(Err(Error::Closed)) => {}
            Ok(Err(err)) => panic!("expected Closed, got {err}"),
            Ok(Ok(view)) => panic!("expected the end, got a change: {view:?}"),
            Err(_) => panic!("the config watch did not end within {EVENT_TIMEOUT:?}"),
        }
    }
    assert!(config.has_ended());
    let ended = timeout(EVENT_TIMEOUT, subscriber.changed()).await;
    assert!(matches!(ended, Ok(Err(_))), "{ended:?}");
    assert_eq!(config.current().revision_of(&k), Some(revision));
    let err = ConfigWatch::start(store.clone(), pattern("config.*"), decode_text)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
}
