//! The recorder and the workload on real stores: `MemoryStore` is linearizable, a store that
//! acknowledges writes it then loses is caught, and outcomes the store could not decide are
//! recorded as such.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use swarmstate_check::{History, Input, Output, Recorder, Workload, check, run};
use swarmstate_core::{Error, Key, MemoryStore, PutMode, PutOptions, Result, Revision, StateStore};

/// Acknowledges every `lose_every`-th write without writing it where it was asked: the write
/// goes to a sink key instead, so the acknowledgement carries a real, fresh revision, and the
/// key never gets the value. This is what a store that acknowledges before it has written
/// (and then crashes) looks like from outside.
#[derive(Debug)]
struct AcknowledgesBeforeWriting {
    inner: MemoryStore,
    writes: AtomicU64,
    lose_every: u64,
}

#[async_trait]
impl StateStore for AcknowledgesBeforeWriting {
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        if options.mode == PutMode::Overwrite && n.is_multiple_of(self.lose_every) {
            let sink = Key::new("lost.writes")?;
            return self.inner.put(&sink, value, PutOptions::overwrite()).await;
        }
        self.inner.put(key, value, options).await
    }
    swarmstate_core::forward_state_store!(|s| &s.inner;
        capabilities, get, delete, keys, watch, txn, close);
}

/// Applies every write, but answers every other one with `Ambiguous`.
#[derive(Debug)]
struct AnswersAmbiguously {
    inner: MemoryStore,
    writes: AtomicU64,
}

#[async_trait]
impl StateStore for AnswersAmbiguously {
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        let revision = self.inner.put(key, value, options).await?;
        if self
            .writes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(2)
        {
            return Err(Error::Ambiguous {
                operation: format!("put {key}"),
                message: "the answer was lost".into(),
            });
        }
        Ok(revision)
    }
    swarmstate_core::forward_state_store!(|s| &s.inner;
        capabilities, get, delete, keys, watch, txn, close);
}

fn workload() -> Workload {
    Workload {
        clients: 8,
        keys: 50,
        duration: Duration::from_millis(1000),
        ttl_fraction: 0.2,
        ttl: Some(Duration::from_millis(2)),
        ..Workload::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_under_the_workload_is_linearizable() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let report = run(store, &workload(), async {}).await.unwrap();
    println!("{report}");
    assert!(report.is_ok(), "{report}");
    let counts = &report.checked.counts;
    assert!(counts.operations > 1000, "{report}");
    assert!(
        counts.expiries > 10,
        "TTL writes must have expired: {report}"
    );
    assert!(report.history_path.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_acknowledges_before_it_writes_is_caught() {
    let store: Arc<dyn StateStore> = Arc::new(AcknowledgesBeforeWriting {
        inner: MemoryStore::new(),
        writes: AtomicU64::new(1),
        lose_every: 25,
    });
    let workload = Workload {
        duration: Duration::from_millis(800),
        ttl_fraction: 0.0,
        ..workload()
    };
    let report = run(store, &workload, async {}).await.unwrap();
    println!("{report}");
    assert!(report.checked.verdict.is_violation(), "{report}");
    // The saved history is the evidence: checked again from the file, same verdict.
    let path = report
        .history_path
        .clone()
        .expect("a violation saves the history");
    let history = History::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(
        check(&history, Duration::from_secs(30))
            .verdict
            .is_violation(),
        "{report}"
    );
}

#[tokio::test]
async fn an_ambiguous_write_is_recorded_as_unknown_and_the_client_moves_on() {
    let store: Arc<dyn StateStore> = Arc::new(AnswersAmbiguously {
        inner: MemoryStore::new(),
        writes: AtomicU64::new(0),
    });
    let recorder = Recorder::new(store).await.unwrap();
    let client = recorder.client();
    let key = Key::new("amb.k").unwrap();
    let first_id = client.id();
    let err = client
        .put(&key, Bytes::from_static(b"a"), PutOptions::overwrite())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    assert_ne!(client.id(), first_id, "a client continues under a new id");
    let entry = client.get(&key).await.unwrap().unwrap();
    let history = recorder.finish().await;
    let ops: Vec<_> = history
        .operations
        .iter()
        .filter(|op| op.key == "amb.k")
        .collect();
    assert_eq!(ops.len(), 2, "{history}");
    assert_eq!(ops[0].ret, None);
    assert_eq!(ops[0].output, Output::Unknown);
    assert_eq!(ops[1].input, Input::Get);
    assert_eq!(
        ops[1].output,
        Output::Value(Some((entry.value, entry.revision)))
    );
    assert!(check(&history, Duration::from_secs(5)).verdict.is_ok());
}

#[tokio::test]
async fn an_expiry_seen_by_the_watcher_is_in_the_history() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
    let recorder = Recorder::new(store).await.unwrap();
    let client = recorder.client();
    let key = Key::new("ttl.k").unwrap();
    let written = client
        .put(
            &key,
            Bytes::from_static(b"a"),
            PutOptions::overwrite().ttl(Duration::from_millis(20)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.get(&key).await.unwrap(), None);
    let history = recorder.finish().await;
    assert!(!history.expiries_incomplete, "{history}");
    let expiry = history
        .operations
        .iter()
        .find(|op| matches!(op.input, Input::Expire { .. }))
        .unwrap_or_else(|| panic!("no expiry recorded:\n{history}"));
    assert!(
        matches!(expiry.input, Input::Expire { written: w, .. } if w == written),
        "{history}"
    );
    assert!(check(&history, Duration::from_secs(5)).verdict.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiries_a_lagging_watcher_missed_are_possible_expiries() {
    // A one-event buffer and a one-event replay history: the watcher lags and cannot resume.
    let store: Arc<dyn StateStore> =
        Arc::new(MemoryStore::builder().watch_buffer(1).history(1).build());
    let history = workload().record(store).await.unwrap();
    assert!(
        history.expiries_incomplete,
        "the watcher should have lagged"
    );
    let possible = history
        .operations
        .iter()
        .filter(|op| matches!(op.input, Input::Expire { revision: None, .. }))
        .count();
    assert!(possible > 0, "missed expiries must be possible expiries");
    let checked = check(&history, Duration::from_secs(30));
    assert!(checked.verdict.is_ok(), "{checked}");
}
