//! The etcdctl-style commands against a real `swarmstate serve` process: what they print and
//! the exit statuses they document (0 done, 1 not found or a condition failed, 2 an error, 3
//! the lock was lost).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "support/serve.rs"]
mod serve;

use serve::Served;

fn swarmstate(url: &str, args: &[&str]) -> Output {
    swarmstate_with_stdin(url, args, "")
}

fn swarmstate_with_stdin(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .args(args)
        .env("SWARMSTATE_STORE", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run swarmstate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(output),
        stderr(output)
    );
}

#[test]
fn put_get_del_and_their_exit_statuses() {
    let server = Served::start(&["--store", "memory://"]);
    let url = &server.url;

    let put = swarmstate(url, &["put", "config.model", "small"]);
    assert_exit(&put, 0);
    let revision: u64 = stdout(&put).trim().parse().unwrap();

    let get = swarmstate(url, &["get", "config.model"]);
    assert_exit(&get, 0);
    assert_eq!(stdout(&get), "small\n");
    let json = swarmstate(url, &["get", "config.model", "-o", "json"]);
    let entry: serde_json::Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    assert_eq!(entry["revision"], revision);
    assert_eq!(entry["value"], "small");
    assert_eq!(entry["encoding"], "utf8");

    // Conditions: 1 when they fail, with the reason on stderr; nothing written.
    let create = swarmstate(url, &["put", "config.model", "large", "--create"]);
    assert_exit(&create, 1);
    assert!(
        stderr(&create).contains("already exists"),
        "{}",
        stderr(&create)
    );
    let stale = swarmstate(url, &["put", "config.model", "large", "--if-rev", "999"]);
    assert_exit(&stale, 1);
    assert_eq!(
        stdout(&swarmstate(url, &["get", "config.model"])),
        "small\n"
    );
    let update = swarmstate(
        url,
        &[
            "put",
            "config.model",
            "large",
            "--if-rev",
            &revision.to_string(),
        ],
    );
    assert_exit(&update, 0);

    // A value from stdin, byte for byte, and an idempotent retry.
    let piped = swarmstate_with_stdin(url, &["put", "blob", "-"], "line one\nline two\n");
    assert_exit(&piped, 0);
    assert_eq!(
        stdout(&swarmstate(url, &["get", "blob"])),
        "line one\nline two\n"
    );
    let first = swarmstate(url, &["put", "job.1", "a", "--idempotency-key", "try-1"]);
    let retry = swarmstate(url, &["put", "job.1", "b", "--idempotency-key", "try-1"]);
    assert_eq!(
        stdout(&first),
        stdout(&retry),
        "the retry returns the first revision"
    );
    assert_eq!(stdout(&swarmstate(url, &["get", "job.1"])), "a\n");

    // Absent keys: 1.
    assert_exit(&swarmstate(url, &["get", "nope"]), 1);
    let del = swarmstate(url, &["del", "blob"]);
    assert_exit(&del, 0);
    assert_exit(&swarmstate(url, &["del", "blob"]), 1);
    assert_exit(
        &swarmstate(url, &["del", "config.model", "--if-rev", "1"]),
        1,
    );

    // Errors: 2.
    let bad = swarmstate(url, &["put", "bad..key", "x"]);
    assert_exit(&bad, 2);
    assert!(stderr(&bad).contains("bad..key"), "{}", stderr(&bad));
    assert_exit(&swarmstate(url, &["put", "k", "v", "--ttl", "soon"]), 2);
}

#[test]
fn keys_txn_ttl_and_status() {
    let server = Served::start(&["--store", "memory://"]);
    let url = &server.url;
    for key in ["jobs.b", "jobs.a", "jobs.deep.c", "other"] {
        assert_exit(&swarmstate(url, &["put", key, "x"]), 0);
    }
    let keys = swarmstate(url, &["keys", "jobs.*"]);
    assert_exit(&keys, 0);
    assert_eq!(stdout(&keys), "jobs.a\njobs.b\njobs.deep.c\n");

    let txn = swarmstate_with_stdin(
        url,
        &["txn"],
        r#"{"ops": [{"op": "put", "key": "t.a", "value": "1", "if_absent": true},
                    {"op": "delete", "key": "other"}]}"#,
    );
    assert_exit(&txn, 0);
    let answer: serde_json::Value = serde_json::from_str(stdout(&txn).trim()).unwrap();
    assert_eq!(answer["results"][0]["op"], "put");
    assert_eq!(answer["results"][1]["op"], "delete");
    // The same again: t.a exists now, so nothing applies and the exit status is 1.
    let again = swarmstate_with_stdin(
        url,
        &["txn"],
        r#"[{"op": "put", "key": "t.a", "value": "2", "if_absent": true}]"#,
    );
    assert_exit(&again, 1);
    assert!(stderr(&again).contains("t.a"), "{}", stderr(&again));
    assert_eq!(stdout(&swarmstate(url, &["get", "t.a"])), "1\n");
    let malformed = swarmstate_with_stdin(url, &["txn"], "{not json");
    assert_exit(&malformed, 2);

    assert_exit(
        &swarmstate(url, &["put", "short", "x", "--ttl", "300ms"]),
        0,
    );
    let entry = swarmstate(url, &["get", "short", "-o", "json"]);
    let entry: serde_json::Value = serde_json::from_str(stdout(&entry).trim()).unwrap();
    assert!(entry["expires_in_ms"].as_u64().unwrap() <= 300, "{entry}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while swarmstate(url, &["get", "short"]).status.code() != Some(1) {
        assert!(Instant::now() < deadline, "short never expired");
        std::thread::sleep(Duration::from_millis(50));
    }

    let status = swarmstate(url, &["status", "-o", "json"]);
    assert_exit(&status, 0);
    let status: serde_json::Value = serde_json::from_str(stdout(&status).trim()).unwrap();
    assert_eq!(status["backend"], "memory");
    assert_eq!(status["durable"], false);
    assert!(status["revision"].as_u64().unwrap() >= 7, "{status}");
}

#[test]
fn watch_prints_a_snapshot_then_changes() {
    let server = Served::start(&["--store", "memory://"]);
    let url = &server.url;
    assert_exit(&swarmstate(url, &["put", "w.a", "1"]), 0);
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .args(["watch", "w.*", "--snapshot"])
        .env("SWARMSTATE_STORE", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("a line").expect("readable");
    assert!(next().starts_with("put w.a "), "the snapshot first");
    assert!(next().starts_with("caught-up "));
    let put = swarmstate(url, &["put", "w.b", "2"]);
    let revision = stdout(&put).trim().to_owned();
    assert_eq!(next(), format!("put w.b {revision} 2"));
    let del = swarmstate(url, &["del", "w.a"]);
    assert_eq!(next(), format!("delete w.a {}", stdout(&del).trim()));
    watcher.kill().unwrap();
    watcher.wait().unwrap();
}

#[test]
fn an_unreachable_server_is_an_error_naming_it() {
    // A port nothing listens on: bind one, note it, and close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let get = swarmstate(&url, &["get", "a"]);
    assert_exit(&get, 2);
    assert!(stderr(&get).contains(&url), "{}", stderr(&get));
}

#[test]
fn lock_exits_3_when_its_lock_is_taken_away() {
    let server = Served::start(&["--store", "memory://"]);
    let url = &server.url;
    let mut holder = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .args(["lock", "locks.job", "--ttl", "1s", "--", "sleep", "60"])
        .env("SWARMSTATE_STORE", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("locked locks.job token "), "{line}");
    // Someone deletes the lock out from under it: the holder notices and kills its command.
    assert_exit(&swarmstate(url, &["del", "locks.job"]), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = holder.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the holder never noticed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3));

    // And a lock that stays held past --wait: 1.
    let mut first = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .args(["lock", "locks.busy", "--ttl", "10s"])
        .env("SWARMSTATE_STORE", url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let waited = swarmstate(
        url,
        &["lock", "locks.busy", "--wait", "200ms", "--", "true"],
    );
    assert_exit(&waited, 1);
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn serve_refuses_a_public_address_and_stops_on_sigterm() {
    let public = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .args(["serve", "--store", "memory://", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_exit(&public, 2);
    assert!(stderr(&public).contains("loopback"), "{}", stderr(&public));

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Served::start(&["--data", data.to_str().unwrap()]);
    let url = server.url.clone();
    let put = swarmstate(&url, &["put", "kept", "yes"]);
    assert_exit(&put, 0);
    server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    // It closed its store: a new server opens the same directory and has the write.
    let again = Served::start(&["--data", data.to_str().unwrap()]);
    assert_eq!(stdout(&swarmstate(&again.url, &["get", "kept"])), "yes\n");
}
