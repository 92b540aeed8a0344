//! The server's bad-input rules, proven against a real server on loopback with raw HTTP
//! requests: every mistake is a problem document naming it, never a 5xx, and leaves the
//! store as it was; slow and idle connections are cut; a panicking handler answers 500 and
//! the server keeps serving; the server listens on loopback addresses only.
//!
//! Every fixture serves a [`Guarded`] store, which counts the writes that reach it: a request
//! refused as bad input must not reach the store at all, so each check reads the store back
//! and finds both its entries and its revision unchanged, and no write counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use swarmstate_core::{
    Key, MemoryStore, Pattern, PutOptions, Result, Revision, StateStore, StateStoreExt, TxnOp,
    TxnResult, WatchEvent, WatchStart,
};
use swarmstate_http::wire::{PROBLEM_JSON, Problem};
use swarmstate_server::{Server, ServerConfig};

mod support;

/// How long any wait in this file may take before it counts as a failure: far longer than
/// anything here needs, so that only a broken server fails it.
const PATIENCE: Duration = Duration::from_secs(10);

/// The value limit of the stores behind most fixtures.
const VALUE_LIMIT: usize = 1024;

/// A store that counts the writes reaching it and panics on a put to the key `boom`.
#[derive(Debug)]
struct Guarded {
    inner: MemoryStore,
    writes: AtomicUsize,
}

#[async_trait]
impl StateStore for Guarded {
    async fn put(&self, key: &Key, value: Bytes, options: PutOptions) -> Result<Revision> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if key.as_str() == "boom" {
            panic!("the test store panics on a put to boom");
        }
        self.inner.put(key, value, options).await
    }

    async fn delete(&self, key: &Key, expected: Option<Revision>) -> Result<Option<Revision>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key, expected).await
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<TxnResult>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.txn(ops).await
    }

    swarmstate_core::forward_state_store!(|s| &s.inner; get, keys, watch, close, capabilities);
}

/// What a store holds: every entry (key, value, revision) and the store's revision.
#[derive(Debug, PartialEq, Eq)]
struct Picture {
    entries: Vec<(String, Bytes, u64)>,
    revision: Option<u64>,
}

/// Reads the whole store at one revision.
async fn picture(store: &MemoryStore) -> Picture {
    let mut events = store
        .watch(&Pattern::All, WatchStart::Snapshot)
        .await
        .unwrap();
    let mut entries = Vec::new();
    loop {
        let event = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("the snapshot did not catch up")
            .expect("the snapshot ended before it caught up");
        match event {
            WatchEvent::Put(entry) => entries.push((
                entry.key.as_str().to_owned(),
                entry.value,
                entry.revision.get(),
            )),
            WatchEvent::CaughtUp { revision } => {
                entries.sort();
                return Picture {
                    entries,
                    revision: revision.map(Revision::get),
                };
            }
            other => panic!("unexpected event in a snapshot of a quiet store: {other:?}"),
        }
    }
}

/// A server on loopback over a [`Guarded`] store holding `seed.a = original` (revision 1) and
/// `seed.b = other` (revision 2), and a client for it.
struct Fixture {
    url: String,
    /// `127.0.0.1:<port>`, for raw connections.
    addr: String,
    store: Arc<Guarded>,
    client: reqwest::Client,
    before: Picture,
}

impl Fixture {
    /// Serves a store with the value limit [`VALUE_LIMIT`] with `config`.
    async fn start(config: ServerConfig) -> Fixture {
        Fixture::serve(
            MemoryStore::builder().max_value_size(VALUE_LIMIT).build(),
            config,
        )
        .await
    }

    async fn serve(inner: MemoryStore, config: ServerConfig) -> Fixture {
        inner
            .set(&Key::new("seed.a").unwrap(), "original")
            .await
            .unwrap();
        inner
            .set(&Key::new("seed.b").unwrap(), "other")
            .await
            .unwrap();
        let before = picture(&inner).await;
        assert_eq!(before.revision, Some(2));
        let store = Arc::new(Guarded {
            inner,
            writes: AtomicUsize::new(0),
        });
        let url = support::start(store.clone(), config).await;
        let addr = url.strip_prefix("http://").unwrap().to_owned();
        let client = reqwest::Client::builder()
            .timeout(PATIENCE)
            .build()
            .unwrap();
        Fixture {
            url,
            addr,
            store,
            client,
            before,
        }
    }

    /// Asserts that nothing reached the store and that it holds what it held at the start.
    async fn assert_unchanged(&self, after: &str) {
        assert_eq!(
            self.store.writes.load(Ordering::SeqCst),
            0,
            "a write reached the store after {after}"
        );
        assert_eq!(
            picture(&self.store.inner).await,
            self.before,
            "the store changed after {after}"
        );
    }

    async fn send(&self, case: &Case) -> reqwest::Response {
        let mut request = self
            .client
            .request(case.method.clone(), format!("{}{}", self.url, case.target));
        for (name, value) in &case.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &case.body {
            request = request.body(body.clone());
        }
        request
            .send()
            .await
            .unwrap_or_else(|err| panic!("{case}: no answer: {err}"))
    }

    /// Sends `case` and asserts its answer, then that the store is unchanged.
    async fn check(&self, case: &Case) {
        let what = case.to_string();
        let problem = answer_problem(&what, self.send(case).await, &case.expected).await;
        if let Some(index) = case.index {
            assert_eq!(problem.index, Some(index), "{case}: {problem:?}");
        }
        self.assert_unchanged(&what).await;
    }

    async fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }
}

/// The answer a case must get: its status, the problem's `kind`, and words of its `detail`.
#[derive(Debug, Clone)]
struct Expected {
    status: u16,
    kind: &'static str,
    detail: String,
}

/// Asserts that an answer is the problem document `expected` describes, and returns it.
fn assert_problem(
    what: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    expected: &Expected,
) -> Problem {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, expected.status, "{what}: answered {status} {text}");
    assert_eq!(
        content_type,
        Some(PROBLEM_JSON),
        "{what}: not a problem document: {text}"
    );
    let problem: Problem = serde_json::from_slice(body).unwrap_or_else(|err| {
        panic!("{what}: the problem document does not parse ({err}): {text}")
    });
    assert_eq!(problem.status, status, "{what}: {problem:?}");
    assert_eq!(problem.kind, expected.kind, "{what}: {problem:?}");
    assert_eq!(
        problem.type_,
        format!("urn:swarmstate:error:{}", expected.kind),
        "{what}: {problem:?}"
    );
    assert!(
        problem.detail.contains(&expected.detail),
        "{what}: the detail does not say {:?}: {:?}",
        expected.detail,
        problem.detail
    );
    problem
}

/// Asserts that `answer` is the problem document `expected` describes, and returns it.
async fn answer_problem(what: &str, answer: reqwest::Response, expected: &Expected) -> Problem {
    let status = answer.status().as_u16();
    let content_type = answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_owned());
    let body = answer.bytes().await.unwrap();
    assert_problem(what, status, content_type.as_deref(), &body, expected)
}

/// One bad request and the answer it must get.
#[derive(Debug, Clone)]
struct Case {
    method: Method,
    /// The path and query.
    target: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    expected: Expected,
    /// The transaction operation the problem must name.
    index: Option<usize>,
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target: String = if self.target.len() > 80 {
            format!("{}…", &self.target[..80])
        } else {
            self.target.clone()
        };
        write!(f, "{} {target}", self.method)?;
        for (name, value) in &self.headers {
            write!(f, " [{name}: {value}]")?;
        }
        if let Some(body) = &self.body {
            let text = String::from_utf8_lossy(body);
            if text.len() > 120 {
                write!(f, " body of {} bytes", body.len())?;
            } else {
                write!(f, " body {text:?}")?;
            }
        }
        Ok(())
    }
}

fn case(method: Method, target: impl Into<String>) -> Case {
    Case {
        method,
        target: target.into(),
        headers: Vec::new(),
        body: None,
        expected: Expected {
            status: 0,
            kind: "",
            detail: String::new(),
        },
        index: None,
    }
}

impl Case {
    fn header(mut self, name: &str, value: &str) -> Case {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = Some(body.into());
        self
    }

    fn answers(mut self, status: u16, kind: &'static str, detail: impl Into<String>) -> Case {
        self.expected = Expected {
            status,
            kind,
            detail: detail.into(),
        };
        self
    }

    fn at_index(mut self, index: usize) -> Case {
        self.index = Some(index);
        self
    }
}

/// A PUT of a small value to `target`: a write the store would take if the request were good.
fn put(target: &str) -> Case {
    case(Method::PUT, target).body("new")
}

fn txn(body: &str) -> Case {
    case(Method::POST, "/v1/txn")
        .header("content-type", "application/json")
        .body(body)
}

fn bad_keys() -> Vec<Case> {
    let long = format!("/v1/kv/{}", "k".repeat(1025));
    let mut cases = Vec::new();
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let request = |target: &str| {
            let request = case(method.clone(), target);
            if method == Method::PUT {
                request.body("new")
            } else {
                request
            }
        };
        let tokens = "no leading, trailing or double dot";
        cases.extend([
            request("/v1/kv/a..b").answers(400, "invalid_key", tokens),
            request("/v1/kv/.a").answers(400, "invalid_key", tokens),
            request("/v1/kv/seed.").answers(400, "invalid_key", tokens),
            request(&long).answers(400, "invalid_key", "at most 1024 bytes"),
            request("/v1/kv/seed.a%20b").answers(400, "invalid_key", "may hold only"),
            request("/v1/kv/seed.a*").answers(400, "invalid_key", "may hold only"),
            request("/v1/kv/seed.%C3%A9").answers(400, "invalid_key", "may hold only"),
            // Not UTF-8 once decoded.
            request("/v1/kv/seed.%FF").answers(400, "invalid_input", "bad key in the path"),
        ]);
    }
    cases
}

fn bad_patterns() -> Vec<Case> {
    let mut cases = Vec::new();
    for route in ["/v1/keys", "/v1/entries", "/v1/watch"] {
        cases.extend([
            case(Method::GET, format!("{route}?pattern=a.*.b")).answers(
                400,
                "invalid_input",
                "'*' may only stand alone or as the last token",
            ),
            case(Method::GET, format!("{route}?pattern=*.seed")).answers(
                400,
                "invalid_input",
                "'*' may only stand alone or as the last token",
            ),
            case(Method::GET, format!("{route}?pattern=")).answers(
                400,
                "invalid_key",
                "a key must not be empty",
            ),
            case(Method::GET, format!("{route}?pattern=seed..*")).answers(
                400,
                "invalid_key",
                "no leading, trailing or double dot",
            ),
            case(Method::GET, route.to_owned()).answers(
                400,
                "invalid_input",
                "missing query parameter `pattern`",
            ),
        ]);
    }
    cases
}

fn bad_ttls() -> Vec<Case> {
    let not_a_duration = |ttl: &str| {
        put(&format!("/v1/kv/seed.a?ttl={ttl}")).answers(
            400,
            "invalid_input",
            "is not a duration such as 30s",
        )
    };
    let out_of_range = |ttl: &str| {
        put(&format!("/v1/kv/seed.a?ttl={ttl}")).answers(
            400,
            "invalid_input",
            "a TTL must be between 1ms and",
        )
    };
    vec![
        not_a_duration("30"),
        not_a_duration("soon"),
        not_a_duration(""),
        not_a_duration("-1s"),
        out_of_range("0s"),
        out_of_range("20years"),
        // The same TTL also on a create, which would otherwise succeed on a new key.
        put("/v1/kv/seed.new?ttl=soon")
            .header("if-none-match", "*")
            .answers(400, "invalid_input", "ttl \"soon\" is not a duration"),
    ]
}

fn bad_revisions() -> Vec<Case> {
    let mut cases = Vec::new();
    for request in [put("/v1/kv/seed.a"), case(Method::DELETE, "/v1/kv/seed.a")] {
        let with = |name: &str, value: &str| request.clone().header(name, value);
        cases.extend([
            with("if-match", "\"abc\"").answers(400, "invalid_input", "is not a revision"),
            with("if-match", "abc").answers(400, "invalid_input", "is not a revision"),
            with("if-match", "\"0\"").answers(400, "invalid_input", "0 is never a revision"),
            with("if-match", "\"-1\"").answers(400, "invalid_input", "is not a revision"),
            with("if-match", "*").answers(400, "invalid_input", "If-Match: * is not supported"),
            with("if-none-match", "\"3\"").answers(
                400,
                "invalid_input",
                "is not supported; use If-None-Match: *",
            ),
            with("if-match", "\"1\"")
                .header("if-none-match", "*")
                .answers(400, "invalid_input", "cannot both be given"),
            with("if-match", "\"1\"")
                .header("if-match", "\"2\"")
                .answers(400, "invalid_input", "may be given once"),
        ]);
    }
    cases.push(
        case(Method::DELETE, "/v1/kv/seed.a")
            .header("if-none-match", "*")
            .answers(400, "invalid_input", "makes no sense on a delete"),
    );
    cases
}

fn bad_watch_starts() -> Vec<Case> {
    let start = |start: &str| {
        case(Method::GET, format!("/v1/watch?pattern=*&start={start}")).answers(
            400,
            "invalid_input",
            format!("start {start:?} is not now, snapshot or a revision"),
        )
    };
    vec![
        start("abc"),
        start("0"),
        start("-1"),
        start(""),
        case(Method::GET, "/v1/watch?pattern=*")
            .header("last-event-id", "abc")
            .answers(400, "invalid_input", "Last-Event-ID"),
        case(Method::GET, "/v1/watch?pattern=*")
            .header("last-event-id", "0")
            .answers(400, "invalid_input", "0 is never a revision"),
    ]
}

fn bad_limits() -> Vec<Case> {
    let mut cases = Vec::new();
    for route in ["/v1/keys", "/v1/entries"] {
        for limit in ["0", "99999", "x", "-1", ""] {
            cases.push(
                case(Method::GET, format!("{route}?pattern=*&limit={limit}")).answers(
                    400,
                    "invalid_input",
                    format!("limit {limit:?} is not a number from 1 to 10000"),
                ),
            );
        }
    }
    cases
}

fn bad_transactions() -> Vec<Case> {
    // A good first operation, so that only the refusal of the whole transaction keeps it out.
    let good = r#"{"op":"put","key":"seed.c","value":"new"}"#;
    let with = |bad: &str| format!(r#"{{"ops":[{good},{bad}]}}"#);
    let shape = "not valid JSON of the expected shape";
    let too_many: Vec<String> = (0..=swarmstate_core::MAX_TXN_OPS)
        .map(|n| format!(r#"{{"op":"put","key":"seed.many.{n}","value":"v"}}"#))
        .collect();
    vec![
        txn("not json").answers(400, "invalid_input", shape),
        txn("").answers(400, "invalid_input", shape),
        txn(&format!("[{good}]")).answers(400, "invalid_input", shape),
        txn(r#"{"ops":{}}"#).answers(400, "invalid_input", shape),
        txn(r#"{"ops":[1]}"#).answers(400, "invalid_input", shape),
        txn(&format!(r#"{{"ops":[{good}],"atomic":true}}"#)).answers(
            400,
            "invalid_input",
            "unknown field `atomic`",
        ),
        txn(&with(
            r#"{"op":"put","key":"seed.d","value":"v","colour":"red"}"#,
        ))
        .answers(400, "invalid_input", "unknown field `colour`"),
        txn(&with(r#"{"op":"frobnicate","key":"seed.d"}"#)).answers(
            400,
            "invalid_input",
            "unknown variant `frobnicate`",
        ),
        txn(&with(
            r#"{"op":"put","key":"seed.d","value":"v","encoding":"hex"}"#,
        ))
        .answers(400, "invalid_input", "unknown variant `hex`"),
        txn(&with(
            r#"{"op":"put","key":"seed.d","value":"v","if_absent":true,"if_revision":1}"#,
        ))
        .answers(
            400,
            "invalid_input",
            "if_absent and if_revision cannot both be given",
        )
        .at_index(1),
        txn(&with(r#"{"op":"put","key":"seed.d"}"#))
            .answers(400, "invalid_input", "a put needs a value")
            .at_index(1),
        txn(&with(
            r#"{"op":"put","key":"seed.d","value":"!!","encoding":"base64"}"#,
        ))
        .answers(400, "invalid_input", "the value is not valid base64")
        .at_index(1),
        txn(&with(r#"{"op":"put","key":"seed..d","value":"v"}"#))
            .answers(400, "invalid_key", "no leading, trailing or double dot")
            .at_index(1),
        txn(&with(
            r#"{"op":"put","key":"seed.d","value":"v","ttl":"30"}"#,
        ))
        .answers(400, "invalid_input", "ttl \"30\" is not a duration")
        .at_index(1),
        txn(&with(
            r#"{"op":"put","key":"seed.d","value":"v","if_revision":0}"#,
        ))
        .answers(400, "invalid_input", "0 is never a revision")
        .at_index(1),
        txn(&with(r#"{"op":"delete","key":"seed.a","value":"v"}"#))
            .answers(400, "invalid_input", "a delete takes no value")
            .at_index(1),
        txn(r#"{"ops":[]}"#).answers(
            400,
            "invalid_input",
            "a transaction needs at least one operation",
        ),
        txn(&with(r#"{"op":"delete","key":"seed.c"}"#)).answers(
            400,
            "invalid_input",
            "key seed.c appears more than once in one transaction",
        ),
        txn(&with(&format!(
            r#"{{"op":"put","key":"seed.d","value":"{}"}}"#,
            "x".repeat(VALUE_LIMIT + 1)
        )))
        .answers(
            413,
            "value_too_large",
            format!("value for key seed.d is 1025 bytes, more than the limit of {VALUE_LIMIT}"),
        )
        .at_index(1),
        txn(&format!(r#"{{"ops":[{}]}}"#, too_many.join(","))).answers(
            400,
            "invalid_input",
            "a transaction holds at most 1000 operations, got 1001",
        ),
    ]
}

fn unknown_parameters() -> Vec<Case> {
    let unknown = |request: Case, name: &str| {
        request.answers(
            400,
            "invalid_input",
            format!("unknown query parameter `{name}`"),
        )
    };
    let good_txn = r#"{"ops":[{"op":"put","key":"seed.c","value":"new"}]}"#;
    vec![
        unknown(case(Method::GET, "/v1/kv/seed.a?foo=1"), "foo"),
        unknown(case(Method::GET, "/v1/kv/seed.a?foo"), "foo"),
        unknown(put("/v1/kv/seed.a?foo=1"), "foo"),
        unknown(put("/v1/kv/seed.a?ttl=30s&foo=1"), "foo"),
        unknown(put("/v1/kv/seed.a?TTL=30s"), "TTL"),
        unknown(case(Method::DELETE, "/v1/kv/seed.a?foo=1"), "foo"),
        unknown(case(Method::GET, "/v1/keys?pattern=*&foo=1"), "foo"),
        unknown(case(Method::GET, "/v1/entries?pattern=*&foo=1"), "foo"),
        unknown(
            case(Method::POST, "/v1/txn?foo=1")
                .header("content-type", "application/json")
                .body(good_txn),
            "foo",
        ),
        unknown(case(Method::GET, "/v1/watch?pattern=*&foo=1"), "foo"),
        unknown(case(Method::GET, "/v1/status?foo=1"), "foo"),
        unknown(case(Method::GET, "/healthz?foo=1"), "foo"),
        unknown(case(Method::GET, "/v1/openapi.json?foo=1"), "foo"),
        put("/v1/kv/seed.a?ttl=30s&ttl=1m").answers(
            400,
            "invalid_input",
            "duplicate query parameter `ttl`",
        ),
        case(Method::GET, "/v1/keys?pattern=*&pattern=seed.*").answers(
            400,
            "invalid_input",
            "duplicate query parameter `pattern`",
        ),
    ]
}

/// Headers a route has no use for are refused, not ignored, where ignoring one would change
/// what the client believes: an idempotency key the store cannot honour, a key given twice.
fn unhonoured_headers() -> Vec<Case> {
    let good_txn = r#"{"ops":[{"op":"put","key":"seed.c","value":"new"}]}"#;
    vec![
        case(Method::DELETE, "/v1/kv/seed.a")
            .header("idempotency-key", "k1")
            .answers(400, "invalid_input", "a delete takes no Idempotency-Key"),
        txn(good_txn).header("idempotency-key", "k1").answers(
            400,
            "invalid_input",
            "a transaction takes no Idempotency-Key",
        ),
        put("/v1/kv/seed.a")
            .header("idempotency-key", "k1")
            .header("idempotency-key", "k2")
            .answers(400, "invalid_input", "may be given once"),
        put("/v1/kv/seed.a").header("idempotency-key", "").answers(
            400,
            "invalid_input",
            "idempotency key must be 1 to 256 bytes",
        ),
    ]
}

fn bad_routes() -> Vec<Case> {
    let none = |method: Method, path: &str| {
        case(method, path).answers(
            404,
            "invalid_input",
            format!("no such endpoint {}", path.split('?').next().unwrap()),
        )
    };
    let wrong = |method: Method, path: &str| {
        let detail = format!("{path} does not take {method}");
        case(method, path).answers(405, "invalid_input", detail)
    };
    vec![
        none(Method::GET, "/v1/nope"),
        none(Method::GET, "/"),
        none(Method::GET, "/v2/kv/seed.a"),
        none(Method::PUT, "/v1/kv"),
        none(Method::GET, "/v1/kv/"),
        none(Method::DELETE, "/v1/keys/seed.a"),
        none(Method::POST, "/v1/txn/now"),
        wrong(Method::POST, "/v1/kv/seed.a"),
        wrong(Method::PATCH, "/v1/kv/seed.a"),
        wrong(Method::GET, "/v1/txn"),
        wrong(Method::PUT, "/v1/txn"),
        wrong(Method::PUT, "/v1/keys"),
        wrong(Method::DELETE, "/v1/entries"),
        wrong(Method::POST, "/v1/watch"),
        wrong(Method::DELETE, "/v1/status"),
        wrong(Method::POST, "/v1/openapi.json"),
        wrong(Method::POST, "/healthz"),
    ]
}

async fn check_all(cases: Vec<Case>) {
    let fixture = Fixture::start(support::test_config()).await;
    for case in &cases {
        fixture.check(case).await;
    }
}

#[tokio::test]
async fn malformed_keys_in_the_path_are_refused() {
    check_all(bad_keys()).await;
}

#[tokio::test]
async fn malformed_patterns_are_refused() {
    check_all(bad_patterns()).await;
}

#[tokio::test]
async fn malformed_ttls_are_refused() {
    check_all(bad_ttls()).await;
}

#[tokio::test]
async fn malformed_revision_preconditions_are_refused() {
    check_all(bad_revisions()).await;
}

#[tokio::test]
async fn malformed_watch_starts_are_refused() {
    check_all(bad_watch_starts()).await;
}

#[tokio::test]
async fn page_limits_outside_1_to_max_page_are_refused() {
    check_all(bad_limits()).await;
}

#[tokio::test]
async fn malformed_transactions_are_refused_whole() {
    check_all(bad_transactions()).await;
}

#[tokio::test]
async fn unknown_query_parameters_are_refused() {
    check_all(unknown_parameters()).await;
}

#[tokio::test]
async fn headers_a_route_cannot_honour_are_refused() {
    check_all(unhonoured_headers()).await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_as_problems() {
    let fixture = Fixture::start(support::test_config()).await;
    for case in &bad_routes() {
        fixture.check(case).await;
    }
    // A 405 says which methods the route takes (RFC 9110 §15.5.6).
    let answer = fixture.send(&case(Method::POST, "/v1/kv/seed.a")).await;
    let allow = answer
        .headers()
        .get(reqwest::header::ALLOW)
        .map(|value| value.to_str().unwrap().to_owned());
    let allow = allow.expect("a 405 without an Allow header");
    for method in ["GET", "PUT", "DELETE"] {
        assert!(allow.contains(method), "Allow: {allow}");
    }
}

/// Raw requests that hyper itself refuses, before the router sees them. Hyper answers them
/// with a bare 400 (empty body, `Connection: close`), not a problem document: the router
/// never sees them, so only their status is asserted.
const MALFORMED_REQUESTS: &[&str] = &[
    "GARBAGE\r\n\r\n",
    "GET /v1/status HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n",
    "PUT /v1/kv/seed.a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nnew",
    "PUT /v1/kv/seed.a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nnew",
    "PUT /v1/kv/seed.a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nnew",
];

#[tokio::test]
async fn no_client_mistake_is_answered_with_a_5xx() {
    let fixture = Fixture::start(support::test_config()).await;
    let cases = [
        bad_keys(),
        bad_patterns(),
        bad_ttls(),
        bad_revisions(),
        bad_watch_starts(),
        bad_limits(),
        bad_transactions(),
        unknown_parameters(),
        unhonoured_headers(),
        bad_routes(),
    ]
    .concat();
    assert!(cases.len() > 100, "only {} cases", cases.len());
    for case in &cases {
        let status = fixture.send(case).await.status();
        assert!(status.as_u16() < 500, "{case}: answered {status}");
    }
    for raw in MALFORMED_REQUESTS {
        let mut stream = fixture.connect().await;
        stream.write_all(raw.as_bytes()).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(
            (400..500).contains(&answer.status),
            "{raw:?}: answered {answer:?}"
        );
    }
    fixture.assert_unchanged("every bad request").await;
}

/// An answer read off a raw connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(have, _)| have == name)
            .map(|(_, value)| value.as_str())
    }

    fn assert_problem(&self, what: &str, expected: &Expected) -> Problem {
        assert_problem(
            what,
            self.status,
            self.header("content-type"),
            &self.body,
            expected,
        )
    }
}

/// Appends what the connection gives next to `buffer`; panics if it closes or stays silent.
async fn read_more(stream: &mut (impl AsyncRead + Unpin), buffer: &mut Vec<u8>) {
    let mut chunk = [0; 4096];
    let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
        .await
        .expect("no answer within the patience")
        .expect("the connection failed before the answer was read");
    assert!(
        read > 0,
        "the connection closed before a whole answer came: {:?}",
        String::from_utf8_lossy(buffer)
    );
    buffer.extend_from_slice(&chunk[..read]);
}

/// Reads one answer (its head, and the body its `Content-Length` announces).
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> RawAnswer {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        read_more(stream, &mut buffer).await;
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().unwrap());
    while buffer.len() < head_end + length {
        read_more(stream, &mut buffer).await;
    }
    RawAnswer {
        status,
        headers,
        body: buffer[head_end..head_end + length].to_vec(),
    }
}

#[tokio::test]
async fn a_put_announcing_a_value_over_the_limit_is_refused_before_its_body_is_sent() {
    let fixture = Fixture::start(support::test_config()).await;
    let mut stream = fixture.connect().await;
    // A gigabyte announced, 100 bytes sent: the answer must come without the rest.
    let announced = 1usize << 30;
    stream
        .write_all(
            format!("PUT /v1/kv/seed.a HTTP/1.1\r\nHost: x\r\nContent-Length: {announced}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    stream.write_all(&[b'x'; 100]).await.unwrap();
    let answer = read_answer(&mut stream).await;
    let problem = answer.assert_problem(
        "a PUT announcing 1 GiB",
        &Expected {
            status: 413,
            kind: "value_too_large",
            detail: format!(
                "value for key seed.a is {announced} bytes, more than the limit of \
                 {VALUE_LIMIT} bytes"
            ),
        },
    );
    assert_eq!(problem.key.as_deref(), Some("seed.a"));
    assert_eq!(problem.size, Some(announced as u64));
    assert_eq!(problem.limit, Some(VALUE_LIMIT as u64));
    fixture.assert_unchanged("a PUT announcing 1 GiB").await;
}

#[tokio::test]
async fn a_chunked_put_over_the_limit_is_refused_once_the_limit_is_passed() {
    let fixture = Fixture::start(support::test_config()).await;
    let mut stream = fixture.connect().await;
    stream
        .write_all(b"PUT /v1/kv/seed.a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // Five chunks of 256 bytes pass the 1 KiB limit; the body never ends, so only a server
    // that counts as the bytes arrive can answer.
    for _ in 0..5 {
        stream.write_all(b"100\r\n").await.unwrap();
        stream.write_all(&[b'x'; 256]).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    let answer = read_answer(&mut stream).await;
    let problem = answer.assert_problem(
        "a chunked PUT of 1280 bytes",
        &Expected {
            status: 413,
            kind: "value_too_large",
            detail: format!("more than the limit of {VALUE_LIMIT} bytes"),
        },
    );
    assert_eq!(problem.key.as_deref(), Some("seed.a"));
    let size = problem.size.unwrap() as usize;
    assert!((VALUE_LIMIT + 1..=5 * 256).contains(&size), "{problem:?}");
    fixture
        .assert_unchanged("a chunked PUT over the limit")
        .await;
}

#[tokio::test]
async fn a_value_at_the_limit_is_taken_and_one_byte_more_is_not() {
    let fixture = Fixture::start(support::test_config()).await;
    let over = put("/v1/kv/seed.a")
        .body(vec![b'x'; VALUE_LIMIT + 1])
        .answers(413, "value_too_large", "more than the limit of 1024 bytes");
    fixture.check(&over).await;
    // The same limit through a chunked body of a finite stream.
    let chunks: Vec<std::io::Result<Vec<u8>>> = vec![Ok(vec![b'x'; 1000]), Ok(vec![b'x'; 25])];
    let answer = fixture
        .client
        .put(format!("{}/v1/kv/seed.a", fixture.url))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    answer_problem("a chunked PUT of 1025 bytes", answer, &over.expected).await;
    fixture
        .assert_unchanged("a chunked PUT of 1025 bytes")
        .await;

    let answer = fixture
        .client
        .put(format!("{}/v1/kv/seed.a", fixture.url))
        .body(vec![b'y'; VALUE_LIMIT])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let entry = fixture
        .store
        .inner
        .get(&Key::new("seed.a").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.value, vec![b'y'; VALUE_LIMIT]);
    assert_eq!(entry.revision.get(), 3);
}

#[tokio::test]
async fn a_txn_body_over_max_txn_body_is_refused() {
    let config = ServerConfig {
        max_txn_body: 1024,
        ..support::test_config()
    };
    let fixture = Fixture::serve(MemoryStore::new(), config).await;
    // Valid JSON of a good transaction, only too long.
    let body = format!(
        r#"{{"ops":[{{"op":"put","key":"seed.c","value":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let too_long = txn(&body).answers(
        413,
        "invalid_input",
        "a transaction body is at most 1024 bytes, got at least",
    );
    fixture.check(&too_long).await;
    // Chunked, without a Content-Length: refused once the bytes pass the limit.
    let chunks: Vec<std::io::Result<Vec<u8>>> = body
        .as_bytes()
        .chunks(500)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let answer = fixture
        .client
        .post(format!("{}/v1/txn", fixture.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    answer_problem("a chunked txn of 2 KiB", answer, &too_long.expected).await;
    fixture
        .assert_unchanged("a chunked txn over the limit")
        .await;
}

/// Settings with short connection timeouts.
fn impatient_config() -> ServerConfig {
    ServerConfig {
        header_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        ..support::test_config()
    }
}

/// Reads until the server closes the connection (end of stream, or a reset), and returns what
/// it sent before; panics if it is still open after the patience.
async fn closed_by_the_server(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut chunk = [0; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "the server kept the connection open for {PATIENCE:?}; it sent {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0) | Err(_)) => return received,
            Ok(Ok(read)) => received.extend_from_slice(&chunk[..read]),
        }
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let fixture = Fixture::start(impatient_config()).await;
    let mut stream = fixture.connect().await;
    let started = Instant::now();
    let received = closed_by_the_server(&mut stream).await;
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    eprintln!(
        "a silent connection was closed after {:?}",
        started.elapsed()
    );
    fixture.assert_unchanged("a silent connection").await;
}

#[tokio::test]
async fn a_request_head_sent_slowly_is_closed() {
    let fixture = Fixture::start(impatient_config()).await;
    let (mut reader, mut writer) = fixture.connect().await.into_split();
    // A PUT whose head never ends: one byte of a header every 100 ms, each well within the
    // timeout, so that only a deadline on the whole head can cut it.
    let dribble = tokio::spawn(async move {
        let head = "PUT /v1/kv/seed.a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-Slow: ";
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let received = closed_by_the_server(&mut reader).await;
    dribble.abort();
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    eprintln!("a slow request head was cut after {:?}", started.elapsed());
    fixture.assert_unchanged("a slow request head").await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let fixture = Fixture::start(impatient_config()).await;
    let mut stream = fixture.connect().await;
    stream
        .write_all(b"GET /v1/kv/seed.a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"original");
    assert_ne!(answer.header("connection"), Some("close"), "{answer:?}");
    let started = Instant::now();
    let received = closed_by_the_server(&mut stream).await;
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    eprintln!(
        "an idle keep-alive connection was closed after {:?}",
        started.elapsed()
    );
    fixture
        .assert_unchanged("an idle keep-alive connection")
        .await;
}

#[tokio::test]
async fn a_stalled_body_is_refused_and_nothing_is_written() {
    let fixture = Fixture::start(impatient_config()).await;
    let mut stream = fixture.connect().await;
    stream
        .write_all(
            b"PUT /v1/kv/seed.a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let answer = read_answer(&mut stream).await;
    answer.assert_problem(
        "a PUT whose body stalls after 10 of 100 bytes",
        &Expected {
            status: 408,
            kind: "invalid_input",
            detail: "the request body was not received whole".into(),
        },
    );
    // Whatever else happens to the connection, the rest of the body writes nothing.
    let _ = stream.write_all(&[b'x'; 90]).await;
    closed_by_the_server(&mut stream).await;
    fixture.assert_unchanged("a stalled body").await;
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
    let fixture = Fixture::start(support::test_config()).await;
    let boom = put("/v1/kv/boom").answers(
        500,
        "ambiguous",
        "outcome unknown for the request, it may or may not have applied",
    );
    for attempt in 0..2 {
        let what = format!("{boom} (attempt {attempt})");
        answer_problem(&what, fixture.send(&boom).await, &boom.expected).await;
    }
    assert_eq!(picture(&fixture.store.inner).await, fixture.before);

    // The same server still serves, on a new connection and on the pooled one.
    let url = format!("{}/v1/kv/calm", fixture.url);
    let answer = fixture
        .client
        .put(&url)
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    assert_eq!(answer.headers()[reqwest::header::ETAG], "\"3\"");
    let answer = reqwest::get(&url).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "still here");
    let answer = fixture
        .client
        .get(format!("{}/v1/kv/boom", fixture.url))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
}

#[tokio::test]
async fn the_server_refuses_to_listen_on_an_address_that_is_not_loopback() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let config = ServerConfig {
            listen: listen.into(),
            ..support::test_config()
        };
        let err = Server::bind(Arc::new(MemoryStore::new()), config)
            .await
            .expect_err(listen);
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        let named = listen.rsplit_once(':').unwrap().0.trim_matches(['[', ']']);
        assert!(err.to_string().contains(named), "{err}");
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}

#[tokio::test]
async fn the_server_listens_on_localhost_and_on_ipv6_loopback() {
    // Only skip [::1] where the machine has no IPv6 loopback at all.
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !ipv6 {
        eprintln!("this machine has no IPv6 loopback: [::1]:0 is not tried");
    }
    let listens: &[&str] = if ipv6 {
        &["localhost:0", "[::1]:0"]
    } else {
        &["localhost:0"]
    };
    for listen in listens {
        let config = ServerConfig {
            listen: (*listen).into(),
            ..support::test_config()
        };
        let server = Server::bind(Arc::new(MemoryStore::new()), config)
            .await
            .unwrap_or_else(|err| panic!("{listen}: {err}"));
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback(), "{listen} bound {addr}");
        assert_ne!(addr.port(), 0);
        tokio::spawn(server.run(std::future::pending()));
        let answer = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{listen}");
    }
}
