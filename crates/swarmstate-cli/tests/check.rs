//! `swarmstate check` as a user runs it: the real binary, on MemoryStore, on DiskStore, on a
//! `swarmstate serve` process and on local nats-server nodes it starts and kills itself.

use std::process::{Command, Output};

use swarmstate_nats_local::require_server;

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
fn check_on_the_disk_store_is_linearizable_and_leaves_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let url = format!("file://{}", data.display());
    assert_linearizable(&check(&["--store", &url, "--duration", "2s"]));
    assert!(
        data.join("data.redb").is_file(),
        "the run wrote to the directory"
    );
}

#[test]
fn faults_without_servers_of_our_own_are_refused() {
    let output = check(&["--store", "memory://", "--faults", "kill"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nats-local://"), "{stderr}");
}

/// The server is SIGKILLed and restarted on the same data, then frozen past every TTL and
/// request timeout: acknowledged writes survive, calls without an answer are ambiguous, and
/// the run lasts until both faults are over, however long the restart takes.
#[test]
fn check_on_a_swarmstate_serve_killed_and_paused_mid_run_is_linearizable() {
    let output = check(&[
        "--store",
        "serve-local://",
        "--duration",
        "3s",
        "--faults",
        "kill,pause",
    ]);
    assert_linearizable(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("faults: 2 of 2 injected (kill, pause)"),
        "the faults were not all injected:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("kill serve over") && stderr.contains("pause serve over"),
        "the faults did not run:\n{stderr}"
    );
}

#[test]
fn faults_a_single_serve_process_cannot_have_are_refused() {
    for fault in ["partition", "kill-leader"] {
        let output = check(&["--store", "serve-local://", "--faults", fault]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "the fault {fault} makes no sense on serve-local://"
            )),
            "{stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "nothing was checked:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
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

/// The issue this guards: on R3, an overwrite that lands at the deadline of the value it
/// replaces was purged by the server's late expiry marker, and refusals through a deposed
/// leader reported old state. A short run with partitions, a killed leader and TTL writes (a
/// tenth of the writes carry one) must stay linearizable and report its expiries.
#[test]
fn check_on_three_local_nodes_with_a_partition_and_a_killed_leader_is_linearizable() {
    require_server().expect("nats-server is required for the nats-local:// check");
    let output = check(&[
        "--store",
        "nats-local://3",
        "--clients",
        "8",
        "--keys",
        "40",
        "--duration",
        "15s",
        "--faults",
        "partition,kill-leader",
        "--seed",
        "7",
    ]);
    assert_linearizable(&output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("partition") && stderr.contains("kill"),
        "the faults did not run:\n{stderr}"
    );
    let expiries = stdout
        .lines()
        .find(|line| line.starts_with("expiries: "))
        .unwrap_or_else(|| panic!("no expiry summary:\n{stdout}"));
    let ttl_writes: u64 = expiries
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable expiry summary: {expiries}"));
    assert!(ttl_writes > 0, "no write carried a TTL: {expiries}");
}
