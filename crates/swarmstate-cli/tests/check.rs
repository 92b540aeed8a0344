//! `swarmstate check` as a user runs it: the real binary, on MemoryStore and on local
//! nats-server nodes it starts and kills itself.

use std::process::{Command, Output};

use swarmstate_nats::testing::require_server;

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .arg("check")
        .args(args)
        .output()
        .expect("run swarmstate check")
}

fn assert_linearizable(output: &Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "swarmstate check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("OK: linearizable"), "{stdout}");
    let operations: u64 = stdout
        .split_whitespace()
        .next()
        .and_then(|_| {
            stdout
                .lines()
                .find(|line| line.contains(" operations "))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(operations > 100, "too few operations checked:\n{stdout}");
}

#[test]
fn check_on_memory_is_linearizable() {
    assert_linearizable(&check(&["--store", "memory://", "--duration", "1s"]));
}

#[test]
fn faults_without_servers_of_our_own_are_refused() {
    let output = check(&["--store", "memory://", "--faults", "kill"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nats-local://"), "{stderr}");
}

#[test]
fn check_on_a_local_node_killed_mid_run_is_linearizable() {
    require_server().expect("nats-server is required for the nats-local:// check");
    let output = check(&[
        "--store",
        "nats-local://1",
        "--duration",
        "6s",
        "--faults",
        "kill",
    ]);
    assert_linearizable(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("kill n0 over"),
        "the fault did not run:\n{stderr}"
    );
}
