//! `swarmstate mcp` (stdio) and `/mcp` (streamable HTTP) through a real MCP client, the
//! official Rust SDK: each agent a `swarmstate mcp` process of its own, on a real `swarmstate
//! serve`, racing for one lock; and the server's own MCP endpoint.

use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};
use tokio::time::timeout;

#[path = "support/serve.rs"]
mod serve;

use serve::Served;

const PATIENCE: Duration = Duration::from_secs(30);

type Client = RunningService<RoleClient, ()>;

/// An MCP session with a `swarmstate mcp --store URL` process of its own.
async fn stdio_agent(url: &str) -> Client {
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_swarmstate")).configure(|cmd| {
        cmd.args(["mcp", "--store", url]);
    });
    let transport = TokioChildProcess::new(command).expect("start swarmstate mcp");
    timeout(PATIENCE, ().serve(transport))
        .await
        .expect("the MCP session starts in time")
        .unwrap()
}

async fn call<S: rmcp::service::Service<RoleClient>>(
    client: &RunningService<RoleClient, S>,
    tool: &str,
    arguments: Value,
) -> (bool, Value) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mcp_processes_race_for_one_lock_on_a_server_and_the_stale_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&["--data", dir.path().to_str().unwrap()]);
    let (a, b) = tokio::join!(stdio_agent(&served.url), stdio_agent(&served.url));
    let acquire = |owner: &str| json!({"key": "locks.deploy", "owner": owner, "ttl_seconds": 10});
    let (ra, rb) = tokio::join!(
        call(&a, "lock_acquire", acquire("agent-a")),
        call(&b, "lock_acquire", acquire("agent-b"))
    );
    let ((winner, won), (loser, lost)) = match (ra, rb) {
        ((false, won), (true, lost)) => ((&a, won), (&b, lost)),
        ((true, lost), (false, won)) => ((&b, won), (&a, lost)),
        other => panic!("exactly one agent gets the lock, got {other:?}"),
    };
    assert_eq!(lost["error"], "lock_held", "{lost}");
    assert_eq!(lost["holder"], won["owner"]);
    let token = won["token"].as_u64().unwrap();
    let write = |value: &str| json!({"lock": "locks.deploy", "token": token, "writes": [{"op": "put", "key": "deploy.version", "value": value}]});
    let (failed, _) = call(winner, "fenced_write", write("1")).await;
    assert!(!failed);
    // The loser waits; the winner releases; the loser's token is greater, and the first
    // token writes nothing any more.
    let waiting = {
        let args = json!({"key": "locks.deploy", "owner": "second", "ttl_seconds": 300, "wait_seconds": 30});
        call(loser, "lock_acquire", args)
    };
    let release = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        call(
            winner,
            "lock_release",
            json!({"key": "locks.deploy", "token": token}),
        )
        .await
    };
    let ((failed, next), (released_failed, _)) = tokio::join!(waiting, release);
    assert!(!failed && !released_failed, "{next}");
    assert!(next["token"].as_u64().unwrap() > token);
    let (failed, refused) = call(winner, "fenced_write", write("stale")).await;
    assert!(failed, "{refused}");
    // Read back through a third session: the stale write never landed.
    let reader = stdio_agent(&served.url).await;
    let (_, version) = call(&reader, "get", json!({"key": "deploy.version"})).await;
    assert_eq!(version["value"], "1");
    for client in [a, b] {
        client.cancel().await.unwrap();
    }
    // The second holder's process ended: its lock (300 s TTL) is released, not left to expire.
    let (failed, again) = call(
        &reader,
        "lock_acquire",
        json!({"key": "locks.deploy", "owner": "third", "ttl_seconds": 10, "wait_seconds": 30}),
    )
    .await;
    assert!(
        !failed,
        "the ended session's lock was not released: {again}"
    );
    reader.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_mcp_over_streamable_http_at_slash_mcp() {
    let served = Served::start(&["--store", "memory://"]);
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", served.url)),
    );
    let client = timeout(PATIENCE, ClientConfig::default().serve(transport))
        .await
        .expect("the MCP session starts in time")
        .unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|tool| tool.name == "wait_for_change"));
    let (failed, put) = call(&client, "put", json!({"key": "notes.a", "value": "hello"})).await;
    assert!(!failed, "{put}");
    // What MCP wrote, the HTTP API reads.
    let body = http_get(&format!("{}/v1/kv/notes.a", served.url)).await;
    assert_eq!(body, "hello");
    client.cancel().await.unwrap();
}

/// A GET over a plain TCP connection: the test needs no HTTP client of its own.
async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}
