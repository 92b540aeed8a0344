//! What HttpStore promises beyond the conformance suite: watches that resume by revision
//! across a server restart, that end honestly when they cannot, and the errors a missing
//! answer maps to.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::timeout;

mod support;

use swarmstate_core::{
    Error, Key, MemoryStore, Pattern, Revision, StateStore, StateStoreExt, WatchEvent, WatchStart,
    WatchStream,
};
use swarmstate_disk::DiskStore;
use swarmstate_http::HttpStore;
use swarmstate_server::{Server, ServerConfig};

const LIMIT: Duration = Duration::from_secs(30);

/// A server this test stops and starts again on the same port.
struct Restartable {
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    addr: String,
}

impl Restartable {
    async fn start(store: Arc<dyn StateStore>, listen: &str) -> Restartable {
        let config = ServerConfig {
            listen: listen.to_owned(),
            ..support::test_config()
        };
        let server = Server::bind(store, config).await.unwrap();
        let addr = server.local_addr().to_string();
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Restartable {
            stop: Some(stop),
            done: Some(done),
            addr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down gracefully and waits until the store is closed.
    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(LIMIT, self.done.take().unwrap())
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

async fn next(events: &mut WatchStream) -> Option<WatchEvent> {
    timeout(LIMIT, events.next())
        .await
        .expect("a watch event or the end of the stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_exactly_across_a_restart_of_a_durable_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(DiskStore::open(dir.path()).await.unwrap());
    let mut server = Restartable::start(store, "127.0.0.1:0").await;
    let client = HttpStore::open(&server.url()).await.unwrap();
    let mut events = client
        .watch(&Pattern::new("r.*").unwrap(), WatchStart::Now)
        .await
        .unwrap();
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(
            client
                .set(&key(&format!("r.k{i}")), "before")
                .await
                .unwrap(),
        );
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(next(&mut events).await.unwrap().revision().unwrap());
    }

    // The server goes away (its watch streams end with `shutdown`) and comes back on the same
    // data and port; meanwhile nobody reads. The client reconnects by itself.
    server.stop().await;
    let store = Arc::new(DiskStore::open(dir.path()).await.unwrap());
    let server = Restartable::start(store, &server.addr).await;
    for i in 0..5 {
        let revision = timeout(LIMIT, async {
            loop {
                match client.set(&key(&format!("r.after{i}")), "after").await {
                    Ok(revision) => return revision,
                    Err(Error::Unavailable { .. }) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(err) => panic!("a write to the restarted server: {err}"),
                }
            }
        })
        .await
        .unwrap();
        written.push(revision);
    }
    while seen.len() < written.len() {
        match next(&mut events).await {
            Some(WatchEvent::Put(entry)) => seen.push(entry.revision),
            other => panic!("after {} changes, the watch gave {other:?}", seen.len()),
        }
    }
    assert_eq!(
        seen, written,
        "every change once, in order, across the restart"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_cannot_reconnect_ends_lagged_at_the_first_change_it_did_not_give() {
    let mut server = Restartable::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    let client = HttpStore::builder(&server.url())
        .reconnect_for(Duration::from_millis(500))
        .open()
        .await
        .unwrap();
    let mut events = client.watch(&Pattern::All, WatchStart::Now).await.unwrap();
    let written = client.set(&key("a"), "1").await.unwrap();
    assert_eq!(next(&mut events).await.unwrap().revision(), Some(written));
    server.stop().await;
    assert_eq!(
        next(&mut events).await,
        Some(WatchEvent::Lagged {
            resume_from: written.next()
        })
    );
    assert_eq!(
        next(&mut events).await,
        None,
        "the stream ends after Lagged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_a_volatile_server_that_restarted_ends_instead_of_resuming_elsewhere() {
    let mut server = Restartable::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    let client = HttpStore::open(&server.url()).await.unwrap();
    let mut events = client.watch(&Pattern::All, WatchStart::Now).await.unwrap();
    for i in 0..3 {
        client.set(&key(&format!("k{i}")), "x").await.unwrap();
        next(&mut events).await.unwrap();
    }
    server.stop().await;
    // A new, empty store behind the same address: its revisions mean nothing to this watch.
    let again = Restartable::start(Arc::new(MemoryStore::new()), &server.addr).await;
    assert_eq!(next(&mut events).await, None);
    drop(again);
}

#[tokio::test]
async fn a_start_older_than_the_history_is_compacted() {
    let store = MemoryStore::builder().history(4).build();
    let server = Restartable::start(Arc::new(store), "127.0.0.1:0").await;
    let client = HttpStore::open(&server.url()).await.unwrap();
    for i in 0..10 {
        client.set(&key(&format!("k{i}")), "x").await.unwrap();
    }
    let err = client
        .watch(&Pattern::All, WatchStart::FromRevision(Revision::FIRST))
        .await
        .err()
        .expect("a watch from revision 1 after 10 writes and a history of 4");
    assert!(
        matches!(err, Error::Compacted { requested, oldest } if requested == Revision::FIRST && oldest.get() > 1),
        "{err}"
    );
}

/// The whole HTTP answer a real server at `real` gives to `GET /v1/status`, closing the
/// connection after it (so a client opens a new one for its next request).
async fn status_answer(real: &str) -> String {
    let status = reqwest::get(format!("{real}/v1/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{status}",
        status.len()
    )
}

/// A server that answers `/v1/status` like a real one (copied from `real`), and then reads
/// each request whole and closes the connection without an answer.
async fn silent_server(real: &str) -> String {
    let status = status_answer(real).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let status = status.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                if request.starts_with(b"GET /v1/status") {
                    let _ = stream.write_all(status.as_bytes()).await;
                }
                // Anything else: the request arrived, and no answer ever comes.
            });
        }
    });
    url
}

#[tokio::test]
async fn a_write_without_an_answer_is_ambiguous_and_a_read_unavailable() {
    let real = support::serve_memory().await;
    let url = silent_server(&real.url).await;
    let client = HttpStore::open(&url).await.unwrap();
    let err = client.set(&key("a"), "1").await.unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    let err = client
        .txn(vec![swarmstate_core::TxnOp::put(&key("a"), "1")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    let err = client.delete(&key("a"), None).await.unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    let err = client.get(&key("a")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn a_server_that_does_not_answer_in_time_leaves_a_write_ambiguous() {
    // Accepts connections and never reads them: the request times out after it was sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let real = support::serve_memory().await;
    let status = status_answer(&real.url).await;
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        // The first connection gets the status; the others are held open in silence.
        let (mut first, _) = listener.accept().await.unwrap();
        let mut buffer = [0u8; 4096];
        let _ = first.read(&mut buffer).await;
        first.write_all(status.as_bytes()).await.unwrap();
        drop(first);
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    let client = HttpStore::builder(&url)
        .request_timeout(Duration::from_millis(300))
        .open()
        .await
        .unwrap();
    let err = client.set(&key("a"), "1").await.unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    let err = client.get(&key("a")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let mut server = Restartable::start(Arc::new(MemoryStore::new()), "127.0.0.1:0").await;
    let client = HttpStore::open(&server.url()).await.unwrap();
    server.stop().await;
    let err = client.set(&key("a"), "1").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let err = HttpStore::open(&server.url()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains(&server.addr), "{err}");
}

/// A MemoryStore whose writes fail with the error the test sets.
#[derive(Debug)]
struct Failing {
    inner: MemoryStore,
    error: std::sync::Mutex<Option<Error>>,
}

impl Failing {
    fn error(&self) -> Error {
        self.error
            .lock()
            .unwrap()
            .clone()
            .expect("an error to fail with")
    }
}

#[async_trait::async_trait]
impl StateStore for Failing {
    swarmstate_core::forward_state_store!(|s| &s.inner; capabilities, get, keys, watch, close);

    async fn put(
        &self,
        _key: &Key,
        _value: bytes::Bytes,
        _options: swarmstate_core::PutOptions,
    ) -> swarmstate_core::Result<Revision> {
        Err(self.error())
    }

    async fn delete(
        &self,
        _key: &Key,
        _expected: Option<Revision>,
    ) -> swarmstate_core::Result<Option<Revision>> {
        Err(self.error())
    }

    async fn txn(
        &self,
        _ops: Vec<swarmstate_core::TxnOp>,
    ) -> swarmstate_core::Result<Vec<swarmstate_core::TxnResult>> {
        Err(self.error())
    }
}

#[tokio::test]
async fn every_error_of_the_store_behind_the_server_comes_back_as_the_same_variant() {
    let store = Arc::new(Failing {
        inner: MemoryStore::new(),
        error: std::sync::Mutex::new(None),
    });
    let server = Restartable::start(store.clone(), "127.0.0.1:0").await;
    let client = HttpStore::open(&server.url()).await.unwrap();
    let r = |n| Revision::new(n).unwrap();
    let k = key("a");
    let errors = [
        Error::NotFound { key: k.clone() },
        Error::AlreadyExists {
            key: k.clone(),
            revision: r(7),
        },
        Error::RevisionMismatch {
            key: k.clone(),
            expected: r(3),
            actual: None,
        },
        Error::ValueTooLarge {
            key: k.clone(),
            size: 10,
            limit: 5,
        },
        Error::QuotaExceeded {
            key: k.clone(),
            needed: 100,
            quota: 50,
        },
        Error::InvalidInput {
            message: "no".into(),
        },
        Error::LockHeld {
            key: k.clone(),
            holder: "agent-1".into(),
            expires_in: Some(Duration::from_millis(1500)),
        },
        Error::LockLost { key: k.clone() },
        Error::Closed,
        Error::Unavailable {
            message: "the cluster has no leader".into(),
        },
        Error::Ambiguous {
            operation: "put a".into(),
            message: "no answer from the stream leader".into(),
        },
        Error::Unsupported {
            operation: "txn".into(),
            backend: "nats",
        },
        Error::Corrupt {
            what: "data.redb".into(),
            message: "bad page".into(),
        },
        Error::backend(std::io::Error::other("disk on fire")),
    ];
    let http = reqwest::Client::new();
    for err in errors {
        *store.error.lock().unwrap() = Some(err.clone());
        for answer in [
            client.set(&k, "x").await.map(|_| ()),
            client.delete(&k, None).await.map(|_| ()),
            client
                .txn(vec![swarmstate_core::TxnOp::put(&k, "x")])
                .await
                .map(|_| ()),
        ] {
            let back = answer.unwrap_err();
            assert_eq!(back.kind(), err.kind(), "{err} came back as {back}");
            assert_eq!(back.to_string(), err.to_string());
        }
        // Unavailable is 503 with Retry-After; an unknown outcome has its own status.
        let raw = http
            .put(format!("{}/v1/kv/a", server.url()))
            .body("x")
            .send()
            .await
            .unwrap();
        let kind = err.kind();
        let status = raw.status().as_u16();
        match kind {
            swarmstate_core::ErrorKind::Unavailable | swarmstate_core::ErrorKind::Closed => {
                assert_eq!(status, 503);
                assert_eq!(raw.headers()["retry-after"], "1");
            }
            swarmstate_core::ErrorKind::Ambiguous => assert_eq!(status, 504),
            swarmstate_core::ErrorKind::AlreadyExists
            | swarmstate_core::ErrorKind::RevisionMismatch => assert_eq!(status, 412),
            _ => assert_ne!(status, 200),
        }
    }
}
