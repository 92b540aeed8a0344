//! What survives a close and a reopen, and what `open` refuses: a held directory, damaged
//! or foreign data files, writes past the quota, a failed commit.

use std::time::Duration;

use futures::StreamExt;
use swarmstate_core::{
    Error, Key, Pattern, PutOptions, Revision, StateStore, StateStoreExt, TxnOp, WatchEvent,
    WatchStart,
};
use swarmstate_disk::DiskStore;
use tempfile::TempDir;

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

async fn reopen(dir: &TempDir, store: DiskStore) -> DiskStore {
    store.close().await.unwrap();
    DiskStore::open(dir.path()).await.unwrap()
}

/// Collects `count` events, or fails after a generous limit.
async fn events(store: &DiskStore, from: Revision, count: usize) -> Vec<WatchEvent> {
    let mut watch = store
        .watch(&Pattern::All, WatchStart::FromRevision(from))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .expect("the event arrives")
            .expect("the watch goes on");
        seen.push(event);
    }
    seen
}

#[tokio::test]
async fn everything_acknowledged_is_there_after_a_reopen_and_revisions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).await.unwrap();
    let a = store.set(&key("a"), "1").await.unwrap();
    let b = store.create(&key("b"), "2").await.unwrap();
    let a2 = store.update(&key("a"), "3", a).await.unwrap();
    store.set(&key("gone"), "x").await.unwrap();
    store.delete(&key("gone"), None).await.unwrap();
    let results = store
        .txn(vec![TxnOp::put(&key("c"), "4"), TxnOp::put(&key("d"), "5")])
        .await
        .unwrap();
    let last = store.set(&key("e"), vec![0u8, 255, 7]).await.unwrap();
    let store = reopen(&dir, store).await;
    let get = |name: &'static str| {
        let store = store.clone();
        async move { store.get(&key(name)).await.unwrap() }
    };
    let entry = get("a").await.unwrap();
    assert_eq!((&entry.value[..], entry.revision), (&b"3"[..], a2));
    assert_eq!(get("b").await.unwrap().revision, b);
    assert_eq!(get("gone").await, None);
    assert_eq!(&get("c").await.unwrap().value[..], b"4");
    assert_eq!(&get("d").await.unwrap().value[..], b"5");
    assert_eq!(results.len(), 2);
    assert_eq!(&get("e").await.unwrap().value[..], &[0u8, 255, 7][..]);
    let next = store.set(&key("f"), "6").await.unwrap();
    assert_eq!(next, last.next(), "the counter continues where it stopped");
    assert_eq!(
        store.list_keys(&Pattern::All).await.unwrap().len(),
        6,
        "a, b, c, d, e, f"
    );
}

#[tokio::test]
async fn a_watch_from_a_revision_replays_across_the_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).await.unwrap();
    let first = store.set(&key("a"), "1").await.unwrap();
    store.delete(&key("a"), None).await.unwrap();
    let store = reopen(&dir, store).await;
    let third = store.set(&key("b"), "2").await.unwrap();
    let seen = events(&store, first, 3).await;
    assert!(matches!(&seen[0], WatchEvent::Put(entry) if entry.revision == first));
    assert!(matches!(&seen[1], WatchEvent::Delete { revision, .. } if *revision == first.next()));
    assert!(matches!(&seen[2], WatchEvent::Put(entry) if entry.revision == third));
}

#[tokio::test]
async fn history_stays_bounded_on_disk_and_older_starts_are_compacted_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || DiskStore::builder(dir.path()).history(5).open();
    let store = open().await.unwrap();
    let mut last = Revision::FIRST;
    for n in 0..20 {
        last = store.set(&key("a"), n.to_string()).await.unwrap();
    }
    store.close().await.unwrap();
    let store = open().await.unwrap();
    let err = store
        .watch(&Pattern::All, WatchStart::FromRevision(Revision::FIRST))
        .await
        .err()
        .expect("revision 1 is compacted");
    assert!(
        matches!(err, Error::Compacted { oldest, .. } if oldest.get() == last.get() - 4),
        "{err}"
    );
    let oldest = Revision::new(last.get() - 4).unwrap();
    assert_eq!(events(&store, oldest, 5).await.len(), 5);
}

#[tokio::test]
async fn an_idempotent_retry_after_a_reopen_returns_the_first_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).await.unwrap();
    let options = || PutOptions::create().idempotency_key("req-1");
    let first = store.put(&key("job"), "a".into(), options()).await.unwrap();
    let store = reopen(&dir, store).await;
    let retried = store.put(&key("job"), "a".into(), options()).await.unwrap();
    assert_eq!(
        retried, first,
        "the retry is the first write, not a conflict"
    );
    assert_eq!(
        store.get(&key("job")).await.unwrap().unwrap().revision,
        first
    );
}

#[tokio::test]
async fn idempotency_records_past_their_window_are_forgotten_on_disk_too() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_millis(200);
    let open = || {
        DiskStore::builder(dir.path())
            .idempotency_window(window)
            .open()
    };
    let store = open().await.unwrap();
    let options = || PutOptions::overwrite().idempotency_key("req-1");
    let first = store.put(&key("a"), "1".into(), options()).await.unwrap();
    tokio::time::sleep(window * 2).await;
    // A later write drops the old record from the file.
    store.set(&key("b"), "2").await.unwrap();
    store.close().await.unwrap();
    let store = open().await.unwrap();
    let again = store.put(&key("a"), "1".into(), options()).await.unwrap();
    assert!(again > first, "past the window a retry is a new write");
}

#[tokio::test]
async fn keys_that_expired_while_closed_are_gone_with_an_expire_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).await.unwrap();
    let ttl = PutOptions::overwrite().ttl(Duration::from_millis(300));
    let short = store.put(&key("short"), "x".into(), ttl).await.unwrap();
    let long = PutOptions::overwrite().ttl(Duration::from_secs(3600));
    store.put(&key("long"), "y".into(), long).await.unwrap();
    store.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let store = DiskStore::open(dir.path()).await.unwrap();
    assert_eq!(store.get(&key("short")).await.unwrap(), None);
    let left = store
        .get(&key("long"))
        .await
        .unwrap()
        .unwrap()
        .expires_in
        .unwrap();
    assert!(
        left > Duration::from_secs(3500),
        "the deadline is absolute: {left:?}"
    );
    // The expiry is in the history already, at the revision after the last write.
    let seen = events(&store, short, 3).await;
    assert!(
        matches!(&seen[2], WatchEvent::Expire { key: k, revision } if k.as_str() == "short" && revision.get() == short.get() + 2),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_second_open_of_the_directory_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path()).await.unwrap();
    let err = DiskStore::open(dir.path()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&std::process::id().to_string()) && message.contains("in use"),
        "{message}"
    );
    store.close().await.unwrap();
    DiskStore::open(dir.path())
        .await
        .expect("the close released the directory");
}

#[tokio::test]
async fn the_quota_refuses_growth_and_keeps_reads_and_deletes_working() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::builder(dir.path())
        .quota(Some(100))
        .open()
        .await
        .unwrap();
    store.set(&key("a"), vec![b'x'; 60]).await.unwrap();
    let before = store.get(&key("a")).await.unwrap();
    let err = store.set(&key("b"), vec![b'y'; 60]).await.unwrap_err();
    assert!(
        matches!(err, Error::QuotaExceeded { quota: 100, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("quota"), "{err}");
    assert_eq!(
        store.get(&key("b")).await.unwrap(),
        None,
        "nothing was written"
    );
    assert_eq!(store.get(&key("a")).await.unwrap(), before);
    store.delete(&key("a"), None).await.unwrap();
    store.set(&key("b"), vec![b'y'; 60]).await.unwrap();
    // The limit holds across a reopen with a smaller quota: shrinking is still allowed.
    store.close().await.unwrap();
    let store = DiskStore::builder(dir.path())
        .quota(Some(10))
        .open()
        .await
        .unwrap();
    assert!(
        store.set(&key("c"), "1").await.unwrap_err().kind()
            == swarmstate_core::ErrorKind::QuotaExceeded
    );
    store.set(&key("b"), "small").await.unwrap();
}
