//! Opening a bucket: by URL, reopening an existing one, and refusing one whose settings would
//! break the contract.

use async_nats::jetstream::{self, kv};
use swarmstate_core::{Error, Key, StateStore, StateStoreExt};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsServer, require_server};

#[tokio::test]
async fn open_by_url_creates_the_bucket_and_a_second_store_sees_its_data() {
    if require_server().is_none() {
        return;
    }
    let server = NatsServer::start().await;
    let url = format!("{}/swarm", server.url());
    let first = NatsStore::open(&url)
        .await
        .expect("open creates the bucket");
    assert_eq!(first.bucket(), "swarm");
    let key = Key::new("config.mode").unwrap();
    let revision = first.create(&key, "fast").await.unwrap();
    let second = NatsStore::open(&url).await.expect("open reuses the bucket");
    let entry = second.get(&key).await.unwrap().expect("present");
    assert_eq!((entry.revision, &entry.value[..]), (revision, &b"fast"[..]));
}

#[tokio::test]
async fn a_bucket_with_history_is_refused_naming_the_setting() {
    if require_server().is_none() {
        return;
    }
    let server = NatsServer::start().await;
    let js = jetstream::new(server.connect().await);
    js.create_key_value(kv::Config {
        bucket: "legacy".into(),
        history: 5,
        ..Default::default()
    })
    .await
    .expect("create a plain KV bucket");
    let err = NatsStore::builder(server.url())
        .bucket("legacy")
        .connect()
        .await
        .expect_err("a bucket with history 5 breaks TTL semantics");
    assert!(
        matches!(&err, Error::InvalidInput { message } if message.contains("history must be 1")),
        "{err}"
    );
}

#[tokio::test]
async fn bad_urls_and_settings_are_clear_errors() {
    for url in [
        "http://127.0.0.1:4222",
        "nats:///bucket",
        "nats://127.0.0.1:4222/bad.name",
    ] {
        let err = NatsStore::open(url).await.expect_err(url);
        assert!(matches!(err, Error::InvalidInput { .. }), "{url}: {err}");
    }
    let err = NatsStore::builder("nats://127.0.0.1:4222")
        .replicas(0)
        .connect()
        .await
        .expect_err("zero replicas");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
}
