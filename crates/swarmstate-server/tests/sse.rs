//! `GET /v1/watch` as a plain SSE client sees it: ids, `Last-Event-ID`, `ready`, `progress`,
//! `lagged` from the server's own watch, and 410 for a compacted start.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::timeout;

mod support;

use swarmstate_core::{Key, MemoryStore, StateStoreExt};

const LIMIT: Duration = Duration::from_secs(30);

/// One SSE event: its name, id and data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sse {
    event: String,
    id: Option<String>,
    data: String,
}

/// Reads a watch response as SSE events, one at a time.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl Events {
    async fn open(url: &str, query: &str, last_event_id: Option<&str>) -> Events {
        let mut request = reqwest::Client::new().get(format!("{url}/v1/watch?{query}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<Sse> {
        timeout(LIMIT, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut sse = Sse {
                        event: "message".into(),
                        id: None,
                        data: String::new(),
                    };
                    for line in block.lines() {
                        if let Some(value) = line.strip_prefix("event: ") {
                            sse.event = value.into();
                        } else if let Some(value) = line.strip_prefix("id: ") {
                            sse.id = Some(value.into());
                        } else if let Some(value) = line.strip_prefix("data: ") {
                            sse.data.push_str(value);
                        }
                    }
                    return Some(sse);
                }
                match self.body.next().await {
                    Some(chunk) => self.buffer.push_str(&String::from_utf8_lossy(&chunk.ok()?)),
                    None => return None,
                }
            }
        })
        .await
        .expect("an event or the end of the stream")
    }

    /// The next event that is not `progress`.
    async fn next_change(&mut self) -> Option<Sse> {
        loop {
            let event = self.next().await?;
            if event.event != "progress" {
                return Some(event);
            }
        }
    }
}

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

#[tokio::test]
async fn snapshot_events_carry_no_id_and_caught_up_is_the_resume_point() {
    let served = support::serve_memory().await;
    let a = served.client.set(&key("s.a"), "1").await.unwrap();
    let b = served.client.set(&key("s.b"), "2").await.unwrap();
    let mut events = Events::open(&served.url, "pattern=s.*&start=snapshot", None).await;
    for (revision, name) in [(a, "s.a"), (b, "s.b")] {
        let put = events.next_change().await.unwrap();
        assert_eq!(put.event, "put");
        assert_eq!(put.id, None, "a snapshot cannot be resumed halfway");
        let data: serde_json::Value = serde_json::from_str(&put.data).unwrap();
        assert_eq!(
            (data["key"].as_str(), data["revision"].as_u64()),
            (Some(name), Some(revision.get()))
        );
    }
    let caught_up = events.next_change().await.unwrap();
    assert_eq!(caught_up.event, "caught_up");
    assert_eq!(caught_up.id, Some(b.to_string()));
    let c = served.client.set(&key("s.c"), "3").await.unwrap();
    let live = events.next_change().await.unwrap();
    assert_eq!((live.event.as_str(), live.id), ("put", Some(c.to_string())));
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_resumes_right_after_it() {
    let served = support::serve_memory().await;
    let mut events = Events::open(&served.url, "pattern=*", None).await;
    let ready = events.next().await.unwrap();
    assert_eq!(ready.event, "ready");
    let mut written = Vec::new();
    for i in 0..4 {
        written.push(
            served
                .client
                .set(&key(&format!("k{i}")), "x")
                .await
                .unwrap(),
        );
    }
    let first = events.next_change().await.unwrap();
    assert_eq!(first.id, Some(written[0].to_string()));
    drop(events);
    // Everything after the first change, though it was written before the reconnect.
    let mut events = Events::open(&served.url, "pattern=*&start=now", first.id.as_deref()).await;
    let ready = events.next().await.unwrap();
    assert_eq!(
        (ready.event.as_str(), ready.id.clone()),
        ("ready", first.id.clone())
    );
    for revision in &written[1..] {
        let event = events.next_change().await.unwrap();
        assert_eq!(event.id, Some(revision.to_string()), "{event:?}");
    }
}

#[tokio::test]
async fn a_watch_from_now_names_its_starting_revision_and_idle_streams_show_progress() {
    let served = support::serve_memory().await;
    let before = served.client.set(&key("p.a"), "1").await.unwrap();
    let mut events = Events::open(&served.url, "pattern=p.*", None).await;
    let ready = events.next().await.unwrap();
    assert_eq!(ready.event, "ready");
    assert_eq!(ready.id, Some(before.to_string()));
    // The test server's progress interval is 500 ms; nothing changes meanwhile.
    let progress = events.next().await.unwrap();
    assert_eq!(progress.event, "progress");
    assert_eq!(progress.id, None, "a progress event is no resume point");
    let data: serde_json::Value = serde_json::from_str(&progress.data).unwrap();
    assert_eq!(data["revision"], before.get());
}

#[tokio::test]
async fn a_reader_that_falls_behind_the_servers_watch_gets_lagged_and_the_end() {
    // A 4-event buffer behind the server, and values large enough that the socket buffers
    // between the server and this reader fill long before the writes end.
    let store = MemoryStore::builder().watch_buffer(4).build();
    let served = support::serve(Arc::new(store), None).await;
    let mut events = Events::open(&served.url, "pattern=big.*", None).await;
    assert_eq!(events.next().await.unwrap().event, "ready");
    let value = vec![b'v'; 256 * 1024];
    let mut written = Vec::new();
    for i in 0..200 {
        let revision = served
            .client
            .set(&key(&format!("big.k{i}")), value.clone())
            .await
            .unwrap();
        written.push(revision.get());
    }
    let mut delivered = Vec::new();
    let resume_from = loop {
        let event = events.next_change().await.expect("lagged before the end");
        match event.event.as_str() {
            "put" => delivered.push(event.id.unwrap().parse::<u64>().unwrap()),
            "lagged" => {
                let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                break data["resume_from"].as_u64().unwrap();
            }
            other => panic!("unexpected {other} event"),
        }
    };
    assert!(
        delivered.len() < written.len(),
        "the reader was never lagged"
    );
    assert_eq!(
        delivered,
        written[..delivered.len()],
        "no change skipped before the lag"
    );
    assert_eq!(resume_from, written[delivered.len()]);
    assert_eq!(events.next().await, None, "the stream ends after lagged");
}

#[tokio::test]
async fn a_compacted_start_is_410_gone_with_the_oldest_revision() {
    let store = MemoryStore::builder().history(2).build();
    let served = support::serve(Arc::new(store), None).await;
    for i in 0..6 {
        served
            .client
            .set(&key(&format!("k{i}")), "x")
            .await
            .unwrap();
    }
    let response = reqwest::get(format!("{}/v1/watch?pattern=*&start=1", served.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 410);
    let problem: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(problem["kind"], "compacted");
    assert_eq!(problem["requested"], 1);
    assert!(problem["oldest"].as_u64().unwrap() > 1, "{problem}");
}
