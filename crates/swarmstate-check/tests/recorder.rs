//! The recording client as a `StateStore` decorator: calls that overlap on one client, calls
//! whose future is dropped, and calls still waiting when the recording finishes all leave a
//! well-formed history that tells the truth about what may have applied.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use swarmstate_check::{Input, Output, Recorder, check};
use swarmstate_core::{
    Key, MemoryStore, Pattern, PutOptions, Result, Revision, StateStore, WatchStart, WatchStream,
};

/// Applies every put at once and answers a put to a key under `slow` `delay` later, so that a
/// caller can give up on a put that has already applied. (The recorder's own barrier write at
/// the end is not slowed.)
#[derive(Debug)]
struct AnswersLate {
    inner: MemoryStore,
    delay: Duration,
}

fn slow() -> Pattern {
    Pattern::new("slow.*").unwrap()
}

#[async_trait]
impl StateStore for AnswersLate {
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        let written = self.inner.put(key, value, options).await;
        if slow().matches(key) {
            tokio::time::sleep(self.delay).await;
        }
        written
    }
    swarmstate_core::forward_state_store!(|s| &s.inner;
        capabilities, get, delete, keys, watch, txn, close);
}

fn late(delay: Duration) -> Arc<dyn StateStore> {
    Arc::new(AnswersLate {
        inner: MemoryStore::new(),
        delay,
    })
}

fn key(name: &str) -> Key {
    Key::new(name).unwrap()
}

#[tokio::test]
async fn overlapping_calls_of_one_client_are_recorded_under_ids_of_their_own() {
    let recorder = Recorder::new(late(Duration::from_millis(30)))
        .await
        .unwrap();
    let client = recorder.client();
    let id = client.id();
    let (a, b) = (key("slow.a"), key("slow.b"));
    let (wrote_a, wrote_b) = tokio::join!(
        client.put(&a, Bytes::from_static(b"1"), PutOptions::overwrite()),
        client.put(&b, Bytes::from_static(b"2"), PutOptions::overwrite()),
    );
    wrote_a.unwrap();
    wrote_b.unwrap();
    // Both answered, so the client goes on under its first id.
    client.get(&a).await.unwrap();
    assert_eq!(client.id(), id);
    let history = recorder.finish().await;
    let ids: Vec<u64> = history.operations.iter().map(|op| op.client).collect();
    assert_eq!(ids.len(), 3, "{history}");
    assert_ne!(ids[0], ids[1], "overlapping calls share an id:\n{history}");
    assert!(ids.contains(&id), "{history}");
    assert!(check(&history, Duration::from_secs(5)).verdict.is_ok());
}

#[tokio::test]
async fn a_call_given_up_before_its_answer_is_recorded_as_unknown() {
    let recorder = Recorder::new(late(Duration::from_millis(200)))
        .await
        .unwrap();
    let client = recorder.client();
    let id = client.id();
    let k = key("slow.dropped");
    let put = client.put(&k, Bytes::from_static(b"a"), PutOptions::overwrite());
    assert!(
        tokio::time::timeout(Duration::from_millis(20), put)
            .await
            .is_err(),
        "the put should still be waiting for its answer"
    );
    assert_ne!(client.id(), id, "a client continues under a new id");
    // The put applied although nobody was told: the read sees it.
    let entry = client.get(&k).await.unwrap().unwrap();
    let history = recorder.finish().await;
    let put = history
        .operations
        .iter()
        .find(|op| matches!(op.input, Input::Put { .. }))
        .unwrap_or_else(|| panic!("the dropped put is missing:\n{history}"));
    assert_eq!((put.ret, &put.output), (None, &Output::Unknown));
    let read = history
        .operations
        .iter()
        .find(|op| op.input == Input::Get)
        .unwrap();
    assert_eq!(
        read.output,
        Output::Value(Some((entry.value, entry.revision)))
    );
    assert!(check(&history, Duration::from_secs(5)).verdict.is_ok());
}

#[tokio::test]
async fn a_call_still_waiting_when_the_recording_finishes_is_recorded_as_unknown() {
    let recorder = Recorder::new(late(Duration::from_millis(500)))
        .await
        .unwrap();
    let client = Arc::new(recorder.client());
    let waiting = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .put(
                    &key("slow.late"),
                    Bytes::from_static(b"a"),
                    PutOptions::overwrite(),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let history = recorder.finish().await;
    assert_eq!(history.operations.len(), 1, "{history}");
    assert_eq!(history.operations[0].ret, None);
    assert_eq!(history.operations[0].output, Output::Unknown);
    // Its answer comes after the end and changes nothing.
    waiting.await.unwrap().unwrap();
    assert!(check(&history, Duration::from_secs(5)).verdict.is_ok());
}

/// `AnswersLate`, whose watches end at once, as if every change were lost to a gap: the
/// recorder sees no expiry at all.
#[derive(Debug)]
struct SeesNothing(AnswersLate);

#[async_trait]
impl StateStore for SeesNothing {
    async fn watch(&self, _: &Pattern, _: WatchStart) -> Result<WatchStream> {
        Ok(futures::stream::empty().boxed())
    }
    swarmstate_core::forward_state_store!(|s| &s.0;
        capabilities, get, put, delete, keys, txn, close);
}

#[tokio::test]
async fn a_missed_expiry_of_a_ttl_write_with_an_unknown_outcome_is_a_possible_expiry() {
    let recorder = Recorder::new(Arc::new(SeesNothing(AnswersLate {
        inner: MemoryStore::new(),
        delay: Duration::from_millis(500),
    })))
    .await
    .unwrap();
    let client = recorder.client();
    let k = key("slow.ttl");
    // Long enough that the first read below surely comes before the expiry.
    let ttl = Duration::from_secs(2);
    let put = client.put(
        &k,
        Bytes::from_static(b"a"),
        PutOptions::overwrite().ttl(ttl),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(20), put)
            .await
            .is_err(),
        "the put should still be waiting for its answer"
    );
    // The put applied and then expired, and nobody was told either: only an expiry explains
    // a read of the value followed by a read of nothing.
    assert!(client.get(&k).await.unwrap().is_some());
    let waited = std::time::Instant::now();
    while client.get(&k).await.unwrap().is_some() {
        assert!(waited.elapsed() < Duration::from_secs(10), "never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let history = recorder.finish().await;
    assert!(history.expiries_incomplete, "{history}");
    let possible = history
        .operations
        .iter()
        .find(|op| matches!(&op.input, Input::ExpireOf { value } if value == "a"))
        .unwrap_or_else(|| panic!("no possible expiry of the unknown write:\n{history}"));
    assert_eq!(possible.output, Output::Unknown);
    // Its window opens no earlier than the TTL after the write's call.
    let put = history
        .operations
        .iter()
        .find(|op| matches!(op.input, Input::Put { .. }))
        .unwrap();
    assert!(
        possible.call >= put.call + ttl.as_nanos() as u64,
        "{history}"
    );
    let checked = check(&history, Duration::from_secs(5));
    assert!(checked.verdict.is_ok(), "{checked}");
}
