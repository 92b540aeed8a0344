//! `swarmstate demo` as a user runs it: the real binary, by default (a server of its own with
//! agents as processes, the server killed and restarted halfway), on MemoryStore, on a
//! server someone else runs, and on a real nats-server. The demo checks its own invariants;
//! these tests check that it ran them all, that each held, and that it says so on stdout and
//! through its exit status.

use std::process::{Command, Output};

use swarmstate_nats_local::{NatsServer, require_server};

#[path = "support/serve.rs"]
mod serve;

const INVARIANTS: [&str; 5] = [
    "every item done exactly once",
    "at most one leader per term",
    "every stale write rejected",
    "config converged everywhere",
    "no agent failed",
];

fn demo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .arg("demo")
        .args(args)
        .output()
        .expect("run swarmstate demo")
}

/// Checked when the demo restarted its own server.
const RESTART: &str = "no acknowledged write lost across the restart";

fn assert_all_invariants_held(output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for invariant in INVARIANTS {
        let line = stdout
            .lines()
            .find(|line| line.contains(invariant))
            .unwrap_or_else(|| panic!("no line for {invariant:?} in:\n{stdout}"));
        assert!(line.trim_start().starts_with("ok"), "{line}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        stderr.contains("killed agent-"),
        "no kill reported:\n{stderr}"
    );
}

#[test]
fn demo_by_default_runs_agent_processes_on_a_server_it_restarts_and_keeps_every_invariant() {
    let output = demo(&["--agents", "6", "--items", "90", "--kill", "2"]);
    assert_all_invariants_held(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let restart = stdout
        .lines()
        .find(|line| line.contains(RESTART))
        .unwrap_or_else(|| panic!("no line for {RESTART:?} in:\n{stdout}"));
    assert!(restart.trim_start().starts_with("ok"), "{restart}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("agent processes on http://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("restarted it on the same data"), "{stderr}");
}

#[test]
fn demo_on_a_server_someone_runs_keeps_every_invariant_without_restarting_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve::Served::start(&["--data", dir.path().to_str().unwrap()]);
    let output = demo(&[
        "--store",
        &server.url,
        "--agents",
        "5",
        "--items",
        "60",
        "--kill",
        "2",
    ]);
    assert_all_invariants_held(&output);
    assert!(!String::from_utf8_lossy(&output.stdout).contains(RESTART));
    assert!(
        server_alive(&server),
        "the demo must not stop a server it did not start"
    );
}

fn server_alive(server: &serve::Served) -> bool {
    std::process::Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .args(["status", "--store", &server.url])
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn demo_on_memory_keeps_every_invariant() {
    let output = demo(&[
        "--store",
        "memory://",
        "--agents",
        "8",
        "--items",
        "120",
        "--kill",
        "3",
    ]);
    assert_all_invariants_held(&output);
}

#[test]
fn demo_rejects_killing_every_agent() {
    let output = demo(&["--agents", "4", "--kill", "4"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--kill"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_nats_keeps_every_invariant() {
    require_server().expect("nats-server is required for the NATS demo test");
    let server = NatsServer::start().await;
    let url = format!("{}/demo", server.url());
    let output = tokio::task::spawn_blocking(move || {
        demo(&[
            "--store", &url, "--agents", "8", "--items", "80", "--kill", "3",
        ])
    })
    .await
    .unwrap();
    assert_all_invariants_held(&output);
}
