//! Crash tests with real processes: a `swarmstate lock` process holding a lock on a real
//! nats-server is killed with SIGKILL. The next holder must take over within the TTL plus one
//! TTL granularity step, with a higher fencing token, and the dead holder's next fenced write
//! (replayed by the test, exactly as the holder would have sent it) must be refused.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use swarmstate::lock::acquire_lock_wait;
use swarmstate::{Condition, Error, Key, StateStore, TxnOp};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsServer, require_server};
use tokio::time::Instant;

/// Scheduling slack on top of the contract's bound: process start-up is not part of it, but a
/// loaded machine delays the expiry marker's delivery a little.
const SLACK: Duration = Duration::from_millis(750);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_lock_holder_is_taken_over_within_its_ttl_and_its_late_write_is_refused() {
    require_server().expect("nats-server is required for the crash test");
    let server = NatsServer::start().await;
    let url = format!("{}/crash", server.url());
    let ttl = Duration::from_secs(2);
    let lock = Key::new("locks.crash").unwrap();
    let protected = Key::new("deploy.version").unwrap();

    let mut holder = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .args([
            "lock",
            "--store",
            &url,
            "--ttl",
            "2s",
            "--owner",
            "doomed",
            lock.as_str(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start swarmstate lock");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let old_token: u64 = line
        .trim()
        .strip_prefix(&format!("locked {lock} token "))
        .unwrap_or_else(|| panic!("unexpected first line from the holder: {line:?}"))
        .parse()
        .unwrap();

    let store: Arc<dyn StateStore> = Arc::new(NatsStore::open(&url).await.unwrap());
    let granularity = store.capabilities().ttl_granularity;
    // Let the holder's keep-alive refresh the lock a few times: a dead holder is one that had
    // been alive and well.
    tokio::time::sleep(ttl).await;
    // What the holder's next fenced write would check: the lock key as it is now.
    let held = store
        .get(&lock)
        .await
        .unwrap()
        .expect("the holder holds the lock");
    assert_eq!(&held.value[..], b"doomed");
    assert!(
        held.revision.get() > old_token,
        "the keep-alive refreshed the lock"
    );

    holder.kill().unwrap();
    holder.wait().unwrap();
    let killed_at = Instant::now();

    let successor = acquire_lock_wait(&store, &lock, "successor", ttl, ttl * 5)
        .await
        .expect("the successor takes over once the dead holder's lock expires");
    let took = killed_at.elapsed();
    assert!(
        took <= ttl + granularity + SLACK,
        "takeover took {took:?}; the bound is the TTL {ttl:?} plus one granularity step \
         {granularity:?} (plus {SLACK:?} slack)"
    );
    assert!(
        successor.token().get() > held.revision.get(),
        "the successor's token {} must exceed everything the dead holder held ({})",
        successor.token(),
        held.revision
    );
    println!("takeover after SIGKILL: {took:?} (TTL {ttl:?}, granularity {granularity:?})");

    // The dead holder's late fenced write, replayed as it would have sent it.
    let replay = vec![
        TxnOp::check(&lock, Condition::At(held.revision)),
        TxnOp::put(&protected, "written by a dead holder"),
    ];
    let err = store.txn(replay).await.unwrap_err();
    assert!(
        matches!(&err, Error::RevisionMismatch { key, .. } if *key == lock),
        "the replayed write must be refused on the lock key, got {err:?}"
    );
    assert_eq!(
        store.get(&protected).await.unwrap(),
        None,
        "nothing was written"
    );

    // The successor's own fenced write goes through.
    successor.fenced_put(&protected, "v2").await.unwrap();
    successor.release().await.unwrap();
}
