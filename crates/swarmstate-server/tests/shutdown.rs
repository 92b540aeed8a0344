//! A graceful shutdown: the server stops accepting, lets the request in flight finish, ends
//! every watch stream with a `shutdown` event, and closes the store.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio::time::timeout;

mod support;

use swarmstate_core::{
    Error, Key, MemoryStore, PutOptions, Result, Revision, StateStore, StateStoreExt,
};
use swarmstate_server::{Server, ServerConfig};

const LIMIT: Duration = Duration::from_secs(30);

/// A MemoryStore whose puts wait until the test lets them through.
#[derive(Debug)]
struct HeldPuts {
    inner: MemoryStore,
    entered: Notify,
    release: Notify,
}

#[async_trait::async_trait]
impl StateStore for HeldPuts {
    swarmstate_core::forward_state_store!(|s| &s.inner; capabilities, get, delete, keys, watch, txn, close);

    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        self.entered.notify_one();
        self.release.notified().await;
        self.inner.put(key, value, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_request_in_flight_ends_watches_and_closes_the_store() {
    let store = Arc::new(HeldPuts {
        inner: MemoryStore::new(),
        entered: Notify::new(),
        release: Notify::new(),
    });
    let config = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..support::test_config()
    };
    let server = Server::bind(store.clone(), config).await.unwrap();
    let url = format!("http://{}", server.local_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::new();
    let watch = http
        .get(format!("{url}/v1/watch?pattern=*&start=now"))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let mut watch_body = watch.bytes_stream();
    let put = tokio::spawn({
        let http = http.clone();
        let url = url.clone();
        async move {
            http.put(format!("{url}/v1/kv/in.flight"))
                .body("v")
                .send()
                .await
        }
    });
    timeout(LIMIT, store.entered.notified())
        .await
        .expect("the put reaches the store");

    let _ = stop.send(());
    // The watch ends with an event that says so.
    let mut text = String::new();
    timeout(LIMIT, async {
        while let Some(chunk) = watch_body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("event: shutdown") {
                return;
            }
        }
        panic!("the watch stream ended without a shutdown event: {text:?}");
    })
    .await
    .expect("a shutdown event");

    // New connections are refused while the put is still in flight.
    timeout(LIMIT, async {
        loop {
            match tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await {
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .expect("the server stops accepting");
    assert!(!running.is_finished(), "it waits for the request in flight");

    // The request in flight is answered, and only then does the server stop and close.
    store.release.notify_one();
    let answer = timeout(LIMIT, put).await.unwrap().unwrap().unwrap();
    assert_eq!(answer.status(), 200);
    timeout(LIMIT, running).await.unwrap().unwrap().unwrap();
    let err = store.inner.get(&Key::new("in.flight").unwrap()).await;
    assert!(matches!(err, Err(Error::Closed)), "{err:?}");
    assert!(matches!(
        store.inner.set(&Key::new("late").unwrap(), "x").await,
        Err(Error::Closed)
    ));
}
