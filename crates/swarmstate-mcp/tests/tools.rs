//! The MCP tools through a real MCP client (the official Rust SDK) over streamable HTTP, on a
//! loopback port: each client is its own MCP session, as two agents would be.

use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use swarmstate_core::{Key, MemoryStore, StateStore};

/// How long any wait here may take before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(30);

type Client = RunningService<RoleClient, ClientConfig>;

/// An MCP endpoint on a MemoryStore the test also reads directly.
struct Fixture {
    store: Arc<dyn StateStore>,
    url: String,
    stop: CancellationToken,
}

impl Fixture {
    async fn new() -> Fixture {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let stop = CancellationToken::new();
        let service = swarmstate_mcp::http_service(store.clone(), stop.child_token());
        let router = axum::Router::new().nest_service("/mcp", service);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { until.cancelled_owned().await })
                .await;
        });
        Fixture { store, url, stop }
    }

    async fn client(&self) -> Client {
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(self.url.clone()),
        );
        timeout(PATIENCE, ClientConfig::default().serve(transport))
            .await
            .expect("the MCP session starts in time")
            .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Calls `tool` with `arguments`; returns whether it was a tool error, and its JSON.
async fn call(client: &Client, tool: &str, arguments: Value) -> (bool, Value) {
    let Value::Object(arguments) = arguments else {
        panic!("arguments are an object");
    };
    let request = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
    let result = timeout(PATIENCE, client.call_tool(request))
        .await
        .expect("the tool answers in time")
        .unwrap();
    let text = &result.content[0].as_text().expect("a text result").text;
    let value = serde_json::from_str(text).unwrap_or_else(|_| panic!("JSON, got {text}"));
    (result.is_error == Some(true), value)
}

async fn ok(client: &Client, tool: &str, arguments: Value) -> Value {
    let (failed, value) = call(client, tool, arguments.clone()).await;
    assert!(!failed, "{tool} {arguments} failed: {value}");
    value
}

async fn fails(client: &Client, tool: &str, arguments: Value) -> Value {
    let (failed, value) = call(client, tool, arguments.clone()).await;
    assert!(failed, "{tool} {arguments} should fail, got {value}");
    value
}

fn key(text: &str) -> Key {
    Key::new(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_is_listed_with_a_description_and_tokens_are_explained() {
    let f = Fixture::new().await;
    let client = f.client().await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "delete",
            "election_campaign",
            "election_leader",
            "election_refresh",
            "election_resign",
            "fenced_write",
            "get",
            "list_keys",
            "lock_acquire",
            "lock_refresh",
            "lock_release",
            "put",
            "queue_claim",
            "queue_complete",
            "queue_enqueue",
            "queue_fail",
            "queue_heartbeat",
            "wait_for_change",
        ]
    );
    for tool in &tools {
        let description = tool.description.as_deref().unwrap_or_default();
        assert!(description.len() > 40, "{} is not described", tool.name);
    }
    let acquire = tools
        .iter()
        .find(|tool| tool.name == "lock_acquire")
        .unwrap();
    assert!(
        acquire
            .description
            .as_deref()
            .unwrap()
            .contains("strictly increases")
    );
    let info = client.peer_info().unwrap();
    assert!(
        info.instructions
            .as_deref()
            .unwrap()
            .contains("fencing token")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_read_and_written_with_expected_revisions() {
    let f = Fixture::new().await;
    let c = f.client().await;
    let absent = ok(&c, "get", json!({"key": "config.model"})).await;
    assert_eq!(absent, json!({"key": "config.model", "absent": true}));
    let first = ok(
        &c,
        "put",
        json!({"key": "config.model", "value": "small", "create_only": true}),
    )
    .await;
    let rev = first["revision"].as_u64().unwrap();
    let exists = fails(
        &c,
        "put",
        json!({"key": "config.model", "value": "x", "create_only": true}),
    )
    .await;
    assert_eq!(exists["error"], "already_exists");
    let read = ok(&c, "get", json!({"key": "config.model"})).await;
    assert_eq!(
        (read["value"].clone(), read["revision"].as_u64()),
        (json!("small"), Some(rev))
    );
    ok(
        &c,
        "put",
        json!({"key": "config.model", "value": "large", "expected_revision": rev}),
    )
    .await;
    let stale = fails(
        &c,
        "put",
        json!({"key": "config.model", "value": "stale", "expected_revision": rev}),
    )
    .await;
    assert_eq!(stale["error"], "revision_mismatch");
    assert!(stale["actual"].as_u64().unwrap() > rev, "{stale}");
    let entry = f.store.get(&key("config.model")).await.unwrap().unwrap();
    assert_eq!(&entry.value[..], b"large");
    ok(
        &c,
        "put",
        json!({"key": "config.bin", "value": "/wA=", "encoding": "base64"}),
    )
    .await;
    let binary = ok(&c, "get", json!({"key": "config.bin"})).await;
    assert_eq!(
        (binary["value"].clone(), binary["encoding"].clone()),
        (json!("/wA="), json!("base64"))
    );
    let listed = ok(&c, "list_keys", json!({"pattern": "config.*"})).await;
    assert_eq!(
        listed,
        json!({"keys": ["config.bin", "config.model"], "truncated": false})
    );
    let one = ok(&c, "list_keys", json!({"pattern": "config.*", "limit": 1})).await;
    assert_eq!(one["truncated"], true);
    let deleted = ok(&c, "delete", json!({"key": "config.bin"})).await;
    assert_eq!(deleted["deleted"], true);
    let again = ok(&c, "delete", json!({"key": "config.bin"})).await;
    assert_eq!(again["deleted"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_change_returns_changes_after_a_revision_and_times_out_cleanly() {
    let f = Fixture::new().await;
    let c = f.client().await;
    let idle = ok(
        &c,
        "wait_for_change",
        json!({"pattern": "jobs.*", "timeout_seconds": 0.2}),
    )
    .await;
    assert_eq!(idle["changes"], json!([]));
    let after = idle["next_after_revision"].as_u64().unwrap();
    // A change made while the tool waits is returned.
    let writer = {
        let store = f.store.clone();
        tokio::spawn(async move {
            sleep(Duration::from_millis(200)).await;
            store
                .put(&key("jobs.1"), "done".into(), Default::default())
                .await
                .unwrap();
            store
                .put(&key("other"), "x".into(), Default::default())
                .await
                .unwrap();
            store
                .put(&key("jobs.2"), "done".into(), Default::default())
                .await
                .unwrap();
        })
    };
    let woke = ok(
        &c,
        "wait_for_change",
        json!({"pattern": "jobs.*", "after_revision": after, "timeout_seconds": 30}),
    )
    .await;
    writer.await.unwrap();
    let first = &woke["changes"][0];
    assert_eq!(
        (
            first["change"].clone(),
            first["key"].clone(),
            first["value"].clone()
        ),
        (json!("put"), json!("jobs.1"), json!("done"))
    );
    // Going on from where it stopped misses nothing and repeats nothing.
    let mut seen: Vec<String> = woke["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_owned())
        .collect();
    let mut next = woke["next_after_revision"].as_u64().unwrap();
    while seen.len() < 2 {
        let more = ok(
            &c,
            "wait_for_change",
            json!({"pattern": "jobs.*", "after_revision": next, "timeout_seconds": 30}),
        )
        .await;
        seen.extend(
            more["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["key"].as_str().unwrap().to_owned()),
        );
        next = more["next_after_revision"].as_u64().unwrap();
    }
    assert_eq!(seen, ["jobs.1", "jobs.2"]);
    let bad = fails(
        &c,
        "wait_for_change",
        json!({"pattern": "jobs.*", "timeout_seconds": 61}),
    )
    .await;
    assert_eq!(bad["error"], "invalid_input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_race_for_one_lock_and_the_loser_is_fenced_out() {
    let f = Fixture::new().await;
    let (a, b) = (f.client().await, f.client().await);
    let acquire = |owner: &str| json!({"key": "locks.deploy", "owner": owner, "ttl_seconds": 10, "wait_seconds": 0});
    let (ra, rb) = tokio::join!(
        call(&a, "lock_acquire", acquire("agent-a")),
        call(&b, "lock_acquire", acquire("agent-b"))
    );
    // Exactly one wins; the other is told who holds it.
    let ((winner, won), (loser, lost, loser_name)) = match (ra, rb) {
        ((false, won), (true, lost)) => ((&a, won), (&b, lost, "agent-b")),
        ((true, lost), (false, won)) => ((&b, won), (&a, lost, "agent-a")),
        other => panic!("exactly one session gets the lock, got {other:?}"),
    };
    assert_eq!(lost["error"], "lock_held");
    assert_eq!(lost["holder"], won["owner"]);
    let token = won["token"].as_u64().unwrap();
    ok(winner, "fenced_write", json!({"lock": "locks.deploy", "token": token, "writes": [{"op": "put", "key": "deploy.version", "value": "1"}]})).await;
    // The loser cannot write through the winner's token: it does not hold it.
    let not_held = fails(loser, "fenced_write", json!({"lock": "locks.deploy", "token": token, "writes": [{"op": "put", "key": "deploy.version", "value": "x"}]})).await;
    assert_eq!(not_held["error"], "not_held");
    ok(
        winner,
        "lock_refresh",
        json!({"key": "locks.deploy", "token": token}),
    )
    .await;
    ok(
        winner,
        "lock_release",
        json!({"key": "locks.deploy", "token": token}),
    )
    .await;
    let next = ok(
        loser,
        "lock_acquire",
        json!({"key": "locks.deploy", "owner": loser_name, "ttl_seconds": 10, "wait_seconds": 5}),
    )
    .await;
    assert!(next["token"].as_u64().unwrap() > token);
    // The first holder's token is refused now.
    let stale = fails(winner, "fenced_write", json!({"lock": "locks.deploy", "token": token, "writes": [{"op": "put", "key": "deploy.version", "value": "stale"}]})).await;
    assert_eq!(stale["error"], "not_held");
    let version = f.store.get(&key("deploy.version")).await.unwrap().unwrap();
    assert_eq!(&version.value[..], b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_is_not_refreshed_expires_and_its_fenced_writes_are_refused() {
    let f = Fixture::new().await;
    let (a, b) = (f.client().await, f.client().await);
    let held = ok(
        &a,
        "lock_acquire",
        json!({"key": "locks.short", "owner": "a", "ttl_seconds": 0.3}),
    )
    .await;
    let token = held["token"].as_u64().unwrap();
    // b waits for it and gets it once a's TTL ran out.
    let taken = ok(
        &b,
        "lock_acquire",
        json!({"key": "locks.short", "owner": "b", "ttl_seconds": 10, "wait_seconds": 30}),
    )
    .await;
    assert!(taken["token"].as_u64().unwrap() > token);
    let lost = fails(&a, "fenced_write", json!({"lock": "locks.short", "token": token, "writes": [{"op": "put", "key": "short.owner", "value": "a"}]})).await;
    assert_eq!(lost["error"], "lock_lost");
    assert_eq!(f.store.get(&key("short.owner")).await.unwrap(), None);
    let gone = fails(
        &a,
        "lock_refresh",
        json!({"key": "locks.short", "token": token}),
    )
    .await;
    assert_eq!(
        gone["error"], "not_held",
        "a lost lock leaves the session's table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_work_one_queue_and_each_item_is_done_once() {
    let f = Fixture::new().await;
    let (a, b) = (f.client().await, f.client().await);
    for i in 0..6 {
        let created = ok(
            &a,
            "queue_enqueue",
            json!({"queue": "jobs", "id": format!("job-{i}"), "payload": format!("p{i}")}),
        )
        .await;
        assert_eq!(created["created"], true);
    }
    let worker = |client: Client, name: &'static str| async move {
        let mut done = Vec::new();
        loop {
            let claim = ok(
                &client,
                "queue_claim",
                json!({"queue": "jobs", "worker": name, "lease_seconds": 30}),
            )
            .await;
            if claim["claimed"].is_null() && claim.get("id").is_none() {
                return (client, done);
            }
            let (id, token) = (
                claim["id"].as_str().unwrap().to_owned(),
                claim["token"].as_u64().unwrap(),
            );
            ok(
                &client,
                "queue_heartbeat",
                json!({"queue": "jobs", "id": id, "token": token}),
            )
            .await;
            ok(&client, "queue_complete", json!({"queue": "jobs", "id": id, "token": token, "result_writes": [{"op": "put", "key": format!("results.{id}"), "value": name, "expected_revision": null}]})).await;
            done.push(id);
        }
    };
    let ((a, done_a), (_b, done_b)) = tokio::join!(worker(a, "w-a"), worker(b, "w-b"));
    let mut all: Vec<String> = done_a.iter().chain(&done_b).cloned().collect();
    all.sort();
    assert_eq!(all, (0..6).map(|i| format!("job-{i}")).collect::<Vec<_>>());
    for id in &all {
        assert!(
            f.store
                .get(&key(&format!("results.{id}")))
                .await
                .unwrap()
                .is_some()
        );
    }
    // A completed claim is no longer held, and failing an unknown claim says so.
    let unknown = fails(
        &a,
        "queue_fail",
        json!({"queue": "jobs", "id": "job-0", "token": 1, "reason": "x"}),
    )
    .await;
    assert_eq!(unknown["error"], "not_held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_hands_over_with_greater_terms() {
    let f = Fixture::new().await;
    let (a, b) = (f.client().await, f.client().await);
    let won = ok(
        &a,
        "election_campaign",
        json!({"name": "svc.leader", "candidate": "a", "ttl_seconds": 10}),
    )
    .await;
    let term = won["term"].as_u64().unwrap();
    let leader = ok(&b, "election_leader", json!({"name": "svc.leader"})).await;
    assert_eq!(leader["leader"], json!({"candidate": "a", "term": term}));
    let held = fails(
        &b,
        "election_campaign",
        json!({"name": "svc.leader", "candidate": "b", "ttl_seconds": 10, "wait_seconds": 0.1}),
    )
    .await;
    assert_eq!(
        (held["error"].clone(), held["holder"].clone()),
        (json!("lock_held"), json!("a"))
    );
    ok(
        &a,
        "election_refresh",
        json!({"name": "svc.leader", "term": term}),
    )
    .await;
    ok(&a, "fenced_write", json!({"lock": "svc.leader", "token": term, "writes": [{"op": "put", "key": "svc.plan", "value": "v1"}]})).await;
    ok(
        &a,
        "election_resign",
        json!({"name": "svc.leader", "term": term}),
    )
    .await;
    let next = ok(
        &b,
        "election_campaign",
        json!({"name": "svc.leader", "candidate": "b", "ttl_seconds": 10, "wait_seconds": 5}),
    )
    .await;
    assert!(next["term"].as_u64().unwrap() > term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_releases_what_it_held() {
    let f = Fixture::new().await;
    let a = f.client().await;
    ok(
        &a,
        "lock_acquire",
        json!({"key": "locks.session", "owner": "a", "ttl_seconds": 60}),
    )
    .await;
    a.cancel().await.unwrap();
    // The session's end drops its guards; each releases its lock well before the TTL.
    let deadline = Instant::now() + PATIENCE;
    while f.store.get(&key("locks.session")).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the ended session's lock was not released"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_tool_error_naming_it_and_changes_nothing() {
    let f = Fixture::new().await;
    let c = f.client().await;
    let cases = [
        ("get", json!({"key": "a..b"}), "a..b"),
        (
            "put",
            json!({"key": "k", "value": "v", "expected_revision": 1, "create_only": true}),
            "not both",
        ),
        (
            "put",
            json!({"key": "k", "value": "v", "ttl_seconds": -1}),
            "ttl_seconds",
        ),
        (
            "put",
            json!({"key": "k", "value": "%%", "encoding": "base64"}),
            "base64",
        ),
        (
            "put",
            json!({"key": "k", "value": "v", "encoding": "latin1"}),
            "encoding",
        ),
        ("list_keys", json!({"pattern": "a*b"}), "*"),
        ("list_keys", json!({"pattern": "*", "limit": 0}), "limit"),
        (
            "lock_acquire",
            json!({"key": "l", "owner": "", "ttl_seconds": 5}),
            "owner",
        ),
        (
            "lock_acquire",
            json!({"key": "l", "owner": "o", "ttl_seconds": 5, "wait_seconds": 600}),
            "wait_seconds",
        ),
        (
            "fenced_write",
            json!({"lock": "l", "token": 1, "writes": [{"op": "upsert", "key": "k"}]}),
            "op",
        ),
        (
            "fenced_write",
            json!({"lock": "l", "token": 1, "writes": [{"op": "put", "key": "k"}]}),
            "value",
        ),
        (
            "queue_enqueue",
            json!({"queue": "q", "id": "a.b", "payload": "p"}),
            "a.b",
        ),
        (
            "queue_claim",
            json!({"queue": "q", "worker": "w", "lease_seconds": 5, "max_attempts": 0}),
            "max_attempts",
        ),
        (
            "election_campaign",
            json!({"name": "e", "candidate": "", "ttl_seconds": 5}),
            "candidate",
        ),
    ];
    for (tool, arguments, names) in cases {
        let failure = fails(&c, tool, arguments.clone()).await;
        assert!(
            matches!(
                failure["error"].as_str(),
                Some("invalid_input" | "invalid_key")
            ),
            "{tool} {arguments}: {failure}"
        );
        let message = failure["message"].as_str().unwrap();
        assert!(
            message.contains(names),
            "{tool} {arguments}: {message:?} does not name {names:?}"
        );
    }
    let keys = ok(&c, "list_keys", json!({"pattern": "*"})).await;
    assert_eq!(keys["keys"], json!([]), "bad input wrote something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_item_goes_back_to_the_queue_and_is_dead_on_its_last_attempt() {
    let f = Fixture::new().await;
    let c = f.client().await;
    ok(
        &c,
        "queue_enqueue",
        json!({"queue": "q", "id": "flaky", "payload": "p"}),
    )
    .await;
    let args = json!({"queue": "q", "worker": "w", "lease_seconds": 30, "max_attempts": 2});
    let first = ok(&c, "queue_claim", args.clone()).await;
    assert_eq!(first["attempt"], 1);
    let failed = ok(&c, "queue_fail", json!({"queue": "q", "id": "flaky", "token": first["token"], "reason": "timeout", "max_attempts": 2})).await;
    assert_eq!(failed["state"], "pending");
    let second = ok(&c, "queue_claim", args).await;
    assert_eq!(second["attempt"], 2);
    assert!(second["token"].as_u64() > first["token"].as_u64());
    let dead = ok(&c, "queue_fail", json!({"queue": "q", "id": "flaky", "token": second["token"], "reason": "timeout", "max_attempts": 2})).await;
    assert_eq!(dead["state"], "dead");
    let none = ok(
        &c,
        "queue_claim",
        json!({"queue": "q", "worker": "w", "lease_seconds": 30}),
    )
    .await;
    assert!(none["claimed"].is_null(), "{none}");
}
