//! Locks, elections and queues over HTTP: the routes against a real server on loopback, a
//! Rust agent holding the same locks and items directly on the server's store, waiters that
//! go away, and the bad-input rules (a mistake is a 4xx naming it and changes nothing).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout};

use swarmstate_core::{Key, MemoryStore, Pattern, StateStore, StateStoreExt};
use swarmstate_recipes::election::Election;
use swarmstate_recipes::lock::{acquire_lock, lock_waiters_prefix};
use swarmstate_recipes::queue::WorkQueue;
use swarmstate_server::Server;

mod support;

/// How long any wait in this file may take before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(20);

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

/// A server on a free loopback port over a store the test also reaches directly.
struct Fixture {
    store: Arc<dyn StateStore>,
    url: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Fixture {
    async fn new() -> Fixture {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let server = Server::bind(store.clone(), support::test_config())
            .await
            .unwrap();
        let url = format!("http://{}", server.local_addr());
        let (stop, stopped) = oneshot::channel();
        let done = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Fixture {
            store,
            url,
            http: reqwest::Client::new(),
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// POSTs `body` to `path` and returns the status and the JSON answer (`null` if none).
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let request = self.http.post(format!("{}{path}", self.url)).json(&body);
        answer(request).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(format!("{}{path}", self.url))).await
    }

    /// Every key and revision of the store: what a refused request must leave as it was.
    async fn contents(&self) -> (Vec<(String, u64)>, Option<u64>) {
        let pattern = Pattern::new("*").unwrap();
        let mut keys = self.store.keys(&pattern).await.unwrap();
        let mut all = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.unwrap();
            if let Some(entry) = self.store.get(&key).await.unwrap() {
                all.push((key.as_str().to_owned(), entry.revision.get()));
            }
        }
        let revision = self.store.current_revision().await.unwrap();
        (all, revision.map(|r| r.get()))
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = timeout(PATIENCE, request.send())
        .await
        .expect("an answer in time")
        .unwrap();
    let status = response.status();
    let body = response.bytes().await.unwrap();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| panic!("JSON, got {body:?}"))
    };
    (status, value)
}

/// Waits until `check` holds, polling; fails after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        sleep(Duration::from_millis(20)).await;
    }
}

/// How many waiters' tickets a lock has in the store.
async fn tickets(store: &Arc<dyn StateStore>, lock: &Key) -> usize {
    let prefix = lock_waiters_prefix(lock).unwrap();
    let mut keys = store.keys(&Pattern::prefix(&prefix)).await.unwrap();
    let mut n = 0;
    while let Some(key) = keys.next().await {
        key.unwrap();
        n += 1;
    }
    n
}

fn kind(problem: &Value) -> &str {
    problem["kind"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_acquired_refreshed_fenced_and_released_and_a_stale_handle_is_refused() {
    let f = Fixture::new().await;
    let (status, lock) = f
        .post(
            "/v1/locks/locks.deploy/acquire",
            json!({"owner": "agent-1", "ttl": "10s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{lock}");
    assert_eq!(lock["owner"], "agent-1");
    assert_eq!(lock["token"], lock["revision"]);
    let token = lock["token"].as_u64().unwrap();

    // Another owner is told who holds it.
    let (status, held) = f
        .post(
            "/v1/locks/locks.deploy/acquire",
            json!({"owner": "agent-2", "ttl": "10s"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(kind(&held), "lock_held");
    assert_eq!(held["holder"], "agent-1");
    assert!(held["expires_in_ms"].as_u64().unwrap() <= 10_000);

    let (status, holder) = f.get("/v1/locks/locks.deploy").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(holder["holder"], "agent-1");

    // A refresh moves the revision and keeps the token; the old handle is no longer the
    // holding.
    let (status, refreshed) = f.post("/v1/locks/locks.deploy/refresh", lock.clone()).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    assert_eq!(refreshed["token"].as_u64(), Some(token));
    assert!(refreshed["revision"].as_u64().unwrap() > token);
    let before = f.contents().await;
    let (status, lost) = f
        .post(
            "/v1/locks/locks.deploy/txn",
            json!({"lock": lock, "ops": [{"op": "put", "key": "deploy.version", "value": "7"}]}),
        )
        .await;
    assert_eq!((status, kind(&lost)), (StatusCode::CONFLICT, "lock_lost"));
    assert_eq!(
        f.contents().await,
        before,
        "a stale fenced write changed the store"
    );

    // The newest handle writes, and a failing condition of its ops names the op's index.
    let (status, written) = f
        .post(
            "/v1/locks/locks.deploy/txn",
            json!({"lock": refreshed, "ops": [
                {"op": "put", "key": "deploy.version", "value": "7"},
                {"op": "put", "key": "deploy.by", "value": "agent-1"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{written}");
    assert_eq!(written["results"].as_array().unwrap().len(), 2);
    let entry = f.store.get(&key("deploy.version")).await.unwrap().unwrap();
    assert_eq!(&entry.value[..], b"7");
    let (status, conflict) = f
        .post(
            "/v1/locks/locks.deploy/txn",
            json!({"lock": refreshed, "ops": [
                {"op": "put", "key": "deploy.by", "value": "agent-1"},
                {"op": "put", "key": "deploy.version", "value": "8", "if_absent": true},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (kind(&conflict), conflict["index"].as_u64()),
        ("already_exists", Some(1))
    );

    // Released: free for the next owner, whose token is greater; the old handle is lost.
    let (status, _) = f
        .post("/v1/locks/locks.deploy/release", refreshed.clone())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, free) = f.get("/v1/locks/locks.deploy").await;
    assert_eq!((status, kind(&free)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, next) = f
        .post(
            "/v1/locks/locks.deploy/acquire",
            json!({"owner": "agent-2", "ttl": "10s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(next["token"].as_u64().unwrap() > token);
    for route in ["refresh", "release"] {
        let (status, lost) = f
            .post(
                &format!("/v1/locks/locks.deploy/{route}"),
                refreshed.clone(),
            )
            .await;
        assert_eq!(
            (status, kind(&lost)),
            (StatusCode::CONFLICT, "lock_lost"),
            "{route}"
        );
    }
    let (_, holder) = f.get("/v1/locks/locks.deploy").await;
    assert_eq!(
        holder["holder"], "agent-2",
        "a stale release freed another's lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_waiter_and_a_rust_holder_contend_for_one_lock() {
    let f = Fixture::new().await;
    let lock = key("locks.shared");
    let rust = acquire_lock(&f.store, &lock, "rust-agent", Duration::from_secs(30))
        .await
        .unwrap();
    let waiting = {
        let http = f.http.clone();
        let url = format!("{}/v1/locks/locks.shared/acquire", f.url);
        tokio::spawn(answer(
            http.post(url)
                .json(&json!({"owner": "py-agent", "ttl": "10s", "wait": "60s"})),
        ))
    };
    eventually("the HTTP waiter queues", || queued(&f.store, &lock)).await;
    // The Rust holder's fenced write still applies; the waiter is still waiting.
    rust.fenced_put(&key("shared.value"), "rust").await.unwrap();
    assert!(!waiting.is_finished());
    rust.release().await.unwrap();
    let (status, handle) = timeout(PATIENCE, waiting).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "{handle}");
    assert_eq!(handle["owner"], "py-agent");
    assert_eq!(
        tickets(&f.store, &lock).await,
        0,
        "the waiter's ticket outlived its wait"
    );
    // The Rust agent now finds it held by the HTTP agent.
    let err = acquire_lock(&f.store, &lock, "rust-agent", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, swarmstate_core::Error::LockHeld { holder, .. } if holder == "py-agent"),
        "{err}"
    );
}

/// Turns `tickets` into the boolean [`eventually`] waits on: at least one ticket queued.
async fn queued(store: &Arc<dyn StateStore>, lock: &Key) -> bool {
    tickets(store, lock).await > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_disconnects_gives_up_its_place() {
    let f = Fixture::new().await;
    let lock = key("locks.queue");
    let holder = acquire_lock(&f.store, &lock, "holder", Duration::from_secs(30))
        .await
        .unwrap();
    let body = |owner: &str| json!({"owner": owner, "ttl": "10s", "wait": "60s"});
    let url = format!("{}/v1/locks/locks.queue/acquire", f.url);
    // The first waiter queues, then its client goes away mid-request.
    let first = tokio::spawn(answer(
        reqwest::Client::new().post(&url).json(&body("first")),
    ));
    eventually("the first waiter queues", || queued(&f.store, &lock)).await;
    let second = tokio::spawn(answer(
        reqwest::Client::new().post(&url).json(&body("second")),
    ));
    eventually("both waiters queue", || async {
        tickets(&f.store, &lock).await == 2
    })
    .await;
    first.abort();
    eventually("the gone waiter's ticket is removed", || async {
        tickets(&f.store, &lock).await == 1
    })
    .await;
    // Released, the lock goes to the waiter still there, not to the one that left.
    holder.release().await.unwrap();
    let (status, handle) = timeout(PATIENCE, second).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "{handle}");
    assert_eq!(handle["owner"], "second");
    assert_eq!(tickets(&f.store, &lock).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_ends_with_503_when_the_server_shuts_down() {
    let mut f = Fixture::new().await;
    let lock = key("locks.held");
    let _holder = acquire_lock(&f.store, &lock, "holder", Duration::from_secs(30))
        .await
        .unwrap();
    let waiting = tokio::spawn(answer(
        f.http
            .post(format!("{}/v1/locks/locks.held/acquire", f.url))
            .json(&json!({"owner": "waiter", "ttl": "10s", "wait": "5m"})),
    ));
    eventually("the waiter queues", || queued(&f.store, &lock)).await;
    let _ = f.stop.take().unwrap().send(());
    let (status, problem) = timeout(PATIENCE, waiting).await.unwrap().unwrap();
    assert_eq!(
        (status, kind(&problem)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    timeout(PATIENCE, f.done.take().unwrap())
        .await
        .expect("the server stops without waiting for the waiter's limit")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_over_http_hands_over_with_greater_terms() {
    let f = Fixture::new().await;
    let (status, leadership) = f
        .post(
            "/v1/elections/svc.leader/campaign",
            json!({"candidate": "node-a", "ttl": "10s", "wait": "5s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{leadership}");
    let term = leadership["term"].as_u64().unwrap();
    let (_, election) = f.get("/v1/elections/svc.leader").await;
    assert_eq!(
        election["leader"],
        json!({"candidate": "node-a", "term": term})
    );

    // Observers see the leader now, then each change.
    let mut observed = f
        .http
        .get(format!("{}/v1/elections/svc.leader/observe", f.url))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut seen = String::new();
    let mut wait_for = async |text: &str| {
        let deadline = Instant::now() + PATIENCE;
        while !seen.contains(text) {
            let chunk = tokio::time::timeout_at(deadline, observed.next())
                .await
                .unwrap_or_else(|_| panic!("{text} not observed; got {seen}"))
                .unwrap()
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    wait_for(&format!(r#"data: {{"candidate":"node-a","term":{term}}}"#)).await;

    // A Rust campaigner queues behind; a refresh records the term; a resign hands over.
    let rust = Election::new(f.store.clone(), key("svc.leader"));
    let campaigning = {
        let rust = rust.clone();
        tokio::spawn(async move {
            rust.campaign("node-b", Duration::from_secs(10), Duration::from_secs(60))
                .await
        })
    };
    let lock = key("svc.leader");
    eventually("node-b queues", || queued(&f.store, &lock)).await;
    let (status, refreshed) = f
        .post("/v1/elections/svc.leader/refresh", leadership.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let value = f.store.get(&lock).await.unwrap().unwrap().value;
    assert_eq!(value, format!("{term} node-a").as_bytes());
    let (status, fenced) = f
        .post(
            "/v1/elections/svc.leader/txn",
            json!({"leadership": refreshed, "ops": [{"op": "put", "key": "svc.owner", "value": "node-a"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{fenced}");
    let (status, _) = f
        .post("/v1/elections/svc.leader/resign", refreshed.clone())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let leadership_b = timeout(PATIENCE, campaigning)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(leadership_b.term().get() > term);
    wait_for(&format!(
        r#"data: {{"candidate":"node-b","term":{}}}"#,
        leadership_b.term().get()
    ))
    .await;
    // Idle, the stream shows it is live.
    wait_for("event: progress").await;
    // The old leadership writes nothing now.
    let (status, lost) = f
        .post(
            "/v1/elections/svc.leader/txn",
            json!({"leadership": refreshed, "ops": [{"op": "put", "key": "svc.owner", "value": "stale"}]}),
        )
        .await;
    assert_eq!((status, kind(&lost)), (StatusCode::CONFLICT, "lock_lost"));
    let owner = f.store.get(&key("svc.owner")).await.unwrap().unwrap().value;
    assert_eq!(&owner[..], b"node-a");
    // A campaign that cannot win within its wait names the leader.
    let (status, held) = f
        .post(
            "/v1/elections/svc.leader/campaign",
            json!({"candidate": "node-c", "ttl": "10s", "wait": "100ms"}),
        )
        .await;
    assert_eq!((status, kind(&held)), (StatusCode::CONFLICT, "lock_held"));
    assert_eq!(held["holder"], "node-b");
    leadership_b.resign().await.unwrap();
    let (_, election) = f.get("/v1/elections/svc.leader").await;
    assert_eq!(election["leader"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_over_http_hands_each_item_to_one_worker_and_fences_stale_claims() {
    let f = Fixture::new().await;
    let (status, created) = f
        .post(
            "/v1/queues/jobs/items",
            json!({"id": "job-1", "payload": "resize"}),
        )
        .await;
    assert_eq!(
        (status, created),
        (StatusCode::OK, json!({"created": true}))
    );
    let (_, again) = f
        .post(
            "/v1/queues/jobs/items",
            json!({"id": "job-1", "payload": "other"}),
        )
        .await;
    assert_eq!(again, json!({"created": false}));
    let (_, binary) = f
        .post(
            "/v1/queues/jobs/items",
            json!({"id": "job-2", "payload": "/wA=", "encoding": "base64"}),
        )
        .await;
    assert_eq!(binary, json!({"created": true}));

    // Two workers claim; each gets a different item, with its payload.
    let claim_body = |worker: &str| json!({"worker": worker, "lease": "30s"});
    let (status, a) = f.post("/v1/queues/jobs/claim", claim_body("w-a")).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let (_, b) = f.post("/v1/queues/jobs/claim", claim_body("w-b")).await;
    assert_ne!(a["id"], b["id"]);
    let by_id = |id: &str| if a["id"] == id { a.clone() } else { b.clone() };
    assert_eq!(by_id("job-1")["payload"], "resize");
    assert_eq!(by_id("job-2")["encoding"], "base64");
    assert_eq!(a["attempt"], 1);
    let (status, none) = f.post("/v1/queues/jobs/claim", claim_body("w-c")).await;
    assert_eq!((status, none), (StatusCode::NO_CONTENT, Value::Null));

    // A heartbeat moves the lease revision; the old handle can no longer complete.
    let (status, beat) = f.post("/v1/queues/jobs/heartbeat", a.clone()).await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    assert!(beat["lease_revision"].as_u64() > a["lease_revision"].as_u64());
    let before = f.contents().await;
    let (status, lost) = f
        .post("/v1/queues/jobs/complete", json!({"claim": a}))
        .await;
    assert_eq!((status, kind(&lost)), (StatusCode::CONFLICT, "lock_lost"));
    assert_eq!(f.contents().await, before);
    let id = beat["id"].as_str().unwrap().to_owned();
    let (status, done) = f
        .post(
            "/v1/queues/jobs/complete",
            json!({"claim": beat, "ops": [{"op": "put", "key": format!("results.{id}"), "value": "ok"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["results"].as_array().unwrap().len(), 1);

    // The other fails on its last attempt and is dead-lettered.
    let (status, failed) = f
        .post(
            "/v1/queues/jobs/fail",
            json!({"claim": b, "reason": "bad input", "max_attempts": 1}),
        )
        .await;
    assert_eq!((status, failed), (StatusCode::OK, json!({"state": "dead"})));
    let (_, items) = f.get("/v1/queues/jobs/items").await;
    let states: Vec<(String, String)> = items["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["id"].as_str().unwrap().into(),
                item["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let b_id = b["id"].as_str().unwrap().to_owned();
    let mut expected = vec![
        (id.clone(), "done".to_owned()),
        (b_id.clone(), "dead".to_owned()),
    ];
    expected.sort();
    assert_eq!(states, expected);
    let (_, item) = f.get(&format!("/v1/queues/jobs/items/{b_id}")).await;
    assert_eq!(item["last_error"], "bad input");
    let (status, missing) = f.get("/v1/queues/jobs/items/job-9").await;
    assert_eq!(
        (status, kind(&missing)),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_is_woken_by_an_item_a_rust_agent_enqueues() {
    let f = Fixture::new().await;
    let waiting = tokio::spawn(answer(
        f.http
            .post(format!("{}/v1/queues/work/claim", f.url))
            .json(&json!({"worker": "py-worker", "lease": "30s", "wait": "60s"})),
    ));
    let queue = WorkQueue::new(f.store.clone(), key("work"));
    // Either order passes (a claim that comes after the enqueue finds the item at once); the
    // pause makes the usual order the one where the claim is already waiting.
    sleep(Duration::from_millis(50)).await;
    assert!(queue.enqueue("item-1", "payload").await.unwrap());
    let (status, claim) = timeout(PATIENCE, waiting).await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "{claim}");
    assert_eq!(claim["id"], "item-1");
    // The Rust agent cannot claim it while the lease is live.
    assert!(
        queue
            .claim("rust-worker", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_recipe_requests_are_refused_naming_the_mistake_and_change_nothing() {
    let f = Fixture::new().await;
    let (_, lock) = f
        .post(
            "/v1/locks/locks.a/acquire",
            json!({"owner": "a", "ttl": "10s"}),
        )
        .await;
    let (_, claim) = {
        f.post("/v1/queues/q/items", json!({"id": "i", "payload": "p"}))
            .await;
        f.post("/v1/queues/q/claim", json!({"worker": "w", "lease": "10s"}))
            .await
    };
    let stale_revision = {
        let mut handle = lock.clone();
        handle["token"] = json!(lock["revision"].as_u64().unwrap() + 1);
        handle
    };
    let mut other_key = lock.clone();
    other_key["key"] = json!("locks.b");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/locks/locks.a/acquire",
            json!({"owner": "", "ttl": "10s"}),
            "owner",
        ),
        (
            "/v1/locks/locks.a/acquire",
            json!({"owner": "a\nb", "ttl": "10s"}),
            "owner",
        ),
        (
            "/v1/locks/locks.a/acquire",
            json!({"owner": "x".repeat(257), "ttl": "10s"}),
            "owner",
        ),
        (
            "/v1/locks/locks.a/acquire",
            json!({"owner": "b", "ttl": "ten"}),
            "ttl",
        ),
        (
            "/v1/locks/locks.a/acquire",
            json!({"owner": "b", "ttl": "0s"}),
            "TTL",
        ),
        (
            "/v1/locks/locks.a/acquire",
            json!({"owner": "b", "ttl": "10s", "wait": "6m"}),
            "wait",
        ),
        (
            "/v1/locks/locks.a/acquire",
            json!({"owner": "b", "ttl": "10s", "tll": "1s"}),
            "tll",
        ),
        ("/v1/locks/locks.a/acquire", json!({"ttl": "10s"}), "owner"),
        (
            "/v1/locks/locks.a/acquire",
            json!({"owner": "", "ttl": "10s", "wait": "1s"}),
            "owner",
        ),
        (
            "/v1/locks/locks..a/acquire",
            json!({"owner": "b", "ttl": "10s"}),
            "locks..a",
        ),
        (
            "/v1/locks/locks.a/refresh",
            stale_revision.clone(),
            "below its token",
        ),
        ("/v1/locks/locks.a/refresh", other_key.clone(), "locks.b"),
        (
            "/v1/locks/locks.a/refresh",
            json!({"owner": "a", "token": 0, "revision": 1, "ttl": "10s"}),
            "token",
        ),
        (
            "/v1/locks/locks.a/txn",
            json!({"lock": lock, "ops": []}),
            "operation",
        ),
        (
            "/v1/locks/locks.a/txn",
            json!({"lock": lock, "ops": [{"op": "put", "key": "locks.a", "value": "x"}]}),
            "its own lock",
        ),
        (
            "/v1/locks/locks.a/txn",
            json!({"lock": lock, "ops": [{"op": "put", "key": "k"}]}),
            "value",
        ),
        ("/v1/locks/locks.a/txn", json!({"lock": lock}), "ops"),
        (
            "/v1/elections/e/campaign",
            json!({"candidate": "", "ttl": "10s"}),
            "candidate",
        ),
        (
            "/v1/queues/q/items",
            json!({"id": "a.b", "payload": "p"}),
            "a.b",
        ),
        (
            "/v1/queues/q/items",
            json!({"id": "c", "payload": "%%", "encoding": "base64"}),
            "base64",
        ),
        (
            "/v1/queues/q/claim",
            json!({"worker": "", "lease": "10s"}),
            "worker",
        ),
        (
            "/v1/queues/q/claim",
            json!({"worker": "w", "lease": "10s", "max_attempts": 0}),
            "max_attempts",
        ),
        (
            "/v1/queues/q/heartbeat",
            {
                let mut c = claim.clone();
                c["attempt"] = json!(0);
                c
            },
            "attempt",
        ),
        (
            "/v1/queues/q/heartbeat",
            {
                let mut c = claim.clone();
                c["queue"] = json!("r");
                c
            },
            "path names q",
        ),
        (
            "/v1/queues/q/complete",
            json!({"claim": claim, "ops": [{"op": "put", "key": "q.item.i", "value": "x"}]}),
            "queue",
        ),
        ("/v1/queues/q/fail", json!({"claim": claim}), "reason"),
    ];
    let before = f.contents().await;
    for (path, body, names) in cases {
        let (status, problem) = f.post(path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {problem}");
        assert!(
            matches!(kind(&problem), "invalid_input" | "invalid_key"),
            "{path} {body}: {problem}"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(names),
            "{path} {body}: {detail:?} does not name {names:?}"
        );
        assert_eq!(
            f.contents().await,
            before,
            "{path} {body} changed the store"
        );
    }
    // Not JSON at all, a query parameter, a wrong method.
    let raw = f
        .http
        .post(format!("{}/v1/locks/locks.a/acquire", f.url))
        .body("owner=a")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let (status, _) = f
        .post(
            "/v1/locks/locks.a/acquire?wait=1s",
            json!({"owner": "b", "ttl": "10s"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let keyed = f
        .http
        .post(format!("{}/v1/locks/locks.a/acquire", f.url))
        .header("Idempotency-Key", "k")
        .json(&json!({"owner": "b", "ttl": "10s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), StatusCode::BAD_REQUEST);
    assert!(keyed.text().await.unwrap().contains("Idempotency-Key"));
    let (status, _) = f.get("/v1/queues/q/claim").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(f.contents().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_a_slash_is_one_percent_encoded_path_segment() {
    let f = Fixture::new().await;
    let (status, lock) = f
        .post(
            "/v1/locks/agents%2F7.lock/acquire",
            json!({"owner": "agent-7", "ttl": "10s"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{lock}");
    assert_eq!(lock["key"], "agents/7.lock");
    let entry = f.store.get(&key("agents/7.lock")).await.unwrap().unwrap();
    assert_eq!(&entry.value[..], b"agent-7");
    let (status, _) = f.post("/v1/locks/agents%2F7.lock/release", lock).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(f.store.get(&key("agents/7.lock")).await.unwrap(), None);
}
