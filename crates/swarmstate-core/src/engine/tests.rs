//! The engine's durable path, on a persistence that the test holds back, fails or records.

use std::sync::Mutex;

use tokio::sync::Semaphore;

use super::*;
use crate::StateStoreExt;

/// Records every change set; each `persist` waits for a permit, so a test can hold a write
/// between deciding and applying.
#[derive(Debug)]
struct HeldBack {
    persisted: Mutex<Vec<ChangeSet>>,
    permits: Semaphore,
    fail: AtomicBool,
    entered: Notify,
}

#[async_trait]
impl Persistence for Arc<HeldBack> {
    fn backend(&self) -> &'static str {
        "held-back"
    }

    fn durable(&self) -> bool {
        true
    }

    async fn persist(&self, changes: &ChangeSet) -> Result<()> {
        self.entered.notify_one();
        self.permits.acquire().await.unwrap().forget();
        if self.fail.load(Ordering::SeqCst) {
            return Err(Error::backend(std::io::Error::other("disk full")));
        }
        self.persisted.lock().unwrap().push(changes.clone());
        Ok(())
    }
}

fn engine(permits: usize) -> (Engine<Arc<HeldBack>>, Arc<HeldBack>) {
    let persistence = Arc::new(HeldBack {
        persisted: Mutex::new(Vec::new()),
        permits: Semaphore::new(permits),
        fail: AtomicBool::new(false),
        entered: Notify::new(),
    });
    let config = EngineConfig {
        max_value_size: 1024,
        watch_buffer: 16,
        limits: StateLimits::default(),
    };
    let state = KvState::new(config.limits.clone());
    let engine = Engine::new(persistence.clone(), config, state, Clock::new());
    (engine, persistence)
}

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

#[tokio::test]
async fn a_write_is_visible_and_acknowledged_only_after_it_is_persisted() {
    let (engine, persistence) = engine(0);
    let mut watch = engine.watch(&Pattern::All, WatchStart::Now).await.unwrap();
    let writer = tokio::spawn({
        let engine = engine.clone();
        async move { engine.set(&key("a"), "1").await }
    });
    // The write is decided and waits in persist: readers still see the state before it.
    tokio::time::timeout(Duration::from_secs(60), persistence.entered.notified())
        .await
        .expect("the write reaches persist");
    assert!(!writer.is_finished());
    assert_eq!(engine.get(&key("a")).await.unwrap(), None);
    persistence.permits.add_permits(1);
    let revision = writer.await.unwrap().unwrap();
    assert_eq!(
        engine.get(&key("a")).await.unwrap().unwrap().revision,
        revision
    );
    assert_eq!(watch.next().await.unwrap().revision(), Some(revision));
    let persisted = persistence.persisted.lock().unwrap();
    assert_eq!(persisted.len(), 1);
    assert_eq!(persisted[0].last_revision(), Some(revision));
    assert_eq!(engine.capabilities().backend, "held-back");
    assert!(engine.capabilities().durable);
}

#[tokio::test]
async fn a_failed_persist_poisons_the_engine_and_applies_nothing() {
    let (engine, persistence) = engine(usize::MAX >> 4);
    engine.set(&key("a"), "1").await.unwrap();
    persistence.fail.store(true, Ordering::SeqCst);
    let err = engine.set(&key("a"), "2").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    for err in [
        engine.get(&key("a")).await.unwrap_err(),
        engine.set(&key("b"), "3").await.unwrap_err(),
    ] {
        assert!(
            err.to_string().contains("disk full"),
            "every later call fails: {err}"
        );
    }
    assert_eq!(persistence.persisted.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_commit_cancelled_while_persisting_poisons_the_engine() {
    let (engine, persistence) = engine(0);
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), engine.set(&key("a"), "1")).await;
    assert!(cancelled.is_err(), "the write waits for its persist");
    persistence.permits.add_permits(8);
    let err = engine.get(&key("a")).await.unwrap_err();
    assert!(err.to_string().contains("cancelled"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn expiries_are_persisted_like_writes() {
    let (engine, persistence) = engine(usize::MAX >> 4);
    let options = PutOptions::overwrite().ttl(Duration::from_secs(5));
    let written = engine.put(&key("t"), "x".into(), options).await.unwrap();
    let mut watch = engine
        .watch(&Pattern::All, WatchStart::FromRevision(written.next()))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, WatchEvent::Expire { .. }), "{event:?}");
    let persisted = persistence.persisted.lock().unwrap();
    assert!(
        matches!(&persisted[1].changes[..], [Change::Expire { revision, .. }] if *revision == written.next()),
        "{persisted:?}"
    );
}
