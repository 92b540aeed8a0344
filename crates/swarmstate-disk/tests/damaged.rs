//! Damaged and foreign data files: `open` fails with `Corrupt` naming the file and the
//! problem. Never a panic, never a silently empty store.

use std::path::{Path, PathBuf};

use swarmstate_core::{Error, Key, Pattern, StateStore, StateStoreExt};
use swarmstate_disk::DiskStore;

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

/// A closed store of 200 keys in `dir`, and its data file.
async fn written(dir: &Path) -> PathBuf {
    let store = DiskStore::open(dir).await.unwrap();
    for n in 0..200 {
        store
            .set(
                &key(&format!("k.{n}")),
                format!("value {n} {}", "x".repeat(n)),
            )
            .await
            .unwrap();
    }
    store.close().await.unwrap();
    dir.join("data.redb")
}

async fn open_err(dir: &Path) -> Error {
    match DiskStore::open(dir).await {
        Ok(store) => panic!(
            "opened a damaged file, holding {} keys",
            store.list_keys(&Pattern::All).await.unwrap().len()
        ),
        Err(err) => err,
    }
}

fn assert_corrupt(err: &Error, file: &Path, problem: &str) {
    let message = err.to_string();
    assert!(matches!(err, Error::Corrupt { .. }), "{message}");
    assert!(
        message.contains(&file.display().to_string()),
        "names the file: {message}"
    );
    assert!(
        message.contains(problem),
        "names the problem ({problem}): {message}"
    );
}

#[tokio::test]
async fn a_truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = written(dir.path()).await;
    let len = std::fs::metadata(&file).unwrap().len();
    for keep in [len / 2, 4096, 100] {
        let handle = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        handle.set_len(keep).unwrap();
        drop(handle);
        let err = open_err(dir.path()).await;
        assert_corrupt(&err, &file, "");
    }
}

#[tokio::test]
async fn an_empty_file_is_refused_not_taken_for_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let file = written(dir.path()).await;
    std::fs::write(&file, b"").unwrap();
    assert_corrupt(&open_err(dir.path()).await, &file, "empty");
}

#[tokio::test]
async fn a_file_of_garbage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.redb");
    std::fs::write(&file, vec![0xA5u8; 64 * 1024]).unwrap();
    assert_corrupt(&open_err(dir.path()).await, &file, "");
}

/// Flipping bytes anywhere in the file either is refused as corrupt or, where it hit space
/// nothing uses, opens to exactly the data written: never a panic, never different data.
#[tokio::test]
async fn flipped_bytes_anywhere_are_refused_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let file = written(dir.path()).await;
    let pristine = std::fs::read(&file).unwrap();
    let (mut refused, mut harmless) = (0, 0);
    for offset in (0..pristine.len()).step_by(1531) {
        let mut damaged = pristine.clone();
        for byte in &mut damaged[offset..(offset + 16).min(pristine.len())] {
            *byte ^= 0x5A;
        }
        std::fs::write(&file, &damaged).unwrap();
        match DiskStore::open(dir.path()).await {
            Err(err) => {
                assert_corrupt(&err, &file, "");
                refused += 1;
            }
            Ok(store) => {
                for n in 0..200 {
                    let entry = store.get(&key(&format!("k.{n}"))).await.unwrap();
                    let value = format!("value {n} {}", "x".repeat(n));
                    assert_eq!(
                        entry.map(|e| e.value),
                        Some(value.into()),
                        "damage at {offset} changed key k.{n}"
                    );
                }
                store.close().await.unwrap();
                harmless += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "some damage must be detected ({harmless} harmless)"
    );
}

#[tokio::test]
async fn a_file_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = written(dir.path()).await;
    let db = redb::Database::open(&file).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn
            .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap();
        meta.insert("format", 99).unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    assert_corrupt(&open_err(dir.path()).await, &file, "format is 99");
}

#[tokio::test]
async fn a_redb_file_that_is_not_ours_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.redb");
    let db = redb::Database::create(&file).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(redb::TableDefinition::<u64, u64>::new("other"))
        .unwrap()
        .insert(1, 2)
        .unwrap();
    txn.commit().unwrap();
    drop(db);
    assert_corrupt(
        &open_err(dir.path()).await,
        &file,
        "not a swarmstate data file",
    );
}
