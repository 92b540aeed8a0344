//! A swarm of agents sharing one `MemoryStore`: a coordinator publishes configuration that
//! every agent watches, the agents claim work items with fenced locks so no item is done
//! twice, count their work with compare-and-set, and one agent stalls past its lock's TTL so
//! that its late write is rejected by fencing. At the end the example checks the invariants
//! and exits non-zero if any fails.
//!
//! Run it with `cargo run --example swarm` (`-- AGENTS ITEMS` to change the sizes).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use swarmstate::lock::acquire_lock;
use swarmstate::{
    Error, Key, MemoryStore, Pattern, StateStore, StateStoreExt, WatchEvent, WatchStart,
};

type Store = Arc<dyn StateStore>;

fn key(text: impl AsRef<str>) -> Key {
    Key::new(text).expect("the example's keys are valid")
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let agents = args.next().and_then(Result::ok).unwrap_or(16);
    let items = args.next().and_then(Result::ok).unwrap_or(400);
    let started = Instant::now();
    let store: Store = Arc::new(MemoryStore::new());

    println!("swarm: {agents} agents, {items} work items, one MemoryStore");
    for n in 0..items {
        store
            .create(&key(format!("work.todo.{n}")), "payload")
            .await
            .expect("enqueue");
    }
    store
        .set(&key("config.batch-size"), "1")
        .await
        .expect("config");

    let fencing = stale_holder_is_fenced(&store).await;

    let mut tasks = Vec::new();
    for id in 0..agents {
        tasks.push(tokio::spawn(agent(store.clone(), id, agents, items)));
    }
    // The coordinator changes the configuration while the agents work.
    for size in 2..=5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        store
            .set(&key("config.batch-size"), size.to_string())
            .await
            .expect("config");
    }
    let mut done_by_agent = Vec::new();
    let mut configs = Vec::new();
    for task in tasks {
        let report = task.await.expect("agent panicked");
        done_by_agent.push(report.done);
        configs.push(report.final_config);
    }

    let done_keys = store
        .list_keys(&Pattern::new("work.done.*").unwrap())
        .await
        .unwrap();
    let counter = store.get(&key("stats.processed")).await.unwrap();
    let counted: usize = counter
        .map(|e| String::from_utf8_lossy(&e.value).parse().unwrap_or(0))
        .unwrap_or(0);
    let total: usize = done_by_agent.iter().sum();

    let checks = [
        (
            "every item done exactly once",
            done_keys.len() == items && total == items,
        ),
        ("no increment lost (CAS counter == items)", counted == items),
        (
            "config converged on every agent",
            configs.iter().all(|c| c.as_deref() == Some("5")),
        ),
        ("stale lock holder's write rejected by fencing", fencing),
    ];
    println!(
        "items per agent: {:?}\nfinished in {:?}",
        done_by_agent,
        started.elapsed()
    );
    let mut ok = true;
    for (name, passed) in checks {
        println!("  [{}] {name}", if passed { "ok" } else { "FAILED" });
        ok &= passed;
    }
    store.close().await.expect("close");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Report {
    done: usize,
    final_config: Option<String>,
}

/// One agent: follows the config through a watch, claims items with a short lock, marks them
/// done with a fenced write, and counts them with compare-and-set.
async fn agent(store: Store, id: usize, agents: usize, items: usize) -> Report {
    let owner = format!("agent-{id}");
    let mut config = store
        .watch(&Pattern::new("config.*").unwrap(), WatchStart::Snapshot)
        .await
        .expect("watch");
    let mut current = BTreeMap::new();
    let mut done = 0;
    // Agents start at different items so they contend only near each other.
    for step in 0..items {
        let n = (step + id * items / agents) % items;
        let claim = key(format!("work.claim.{n}"));
        if store
            .get(&key(format!("work.done.{n}")))
            .await
            .unwrap()
            .is_some()
        {
            continue;
        }
        let guard = match acquire_lock(&store, &claim, &owner, Duration::from_secs(5)).await {
            Ok(guard) => guard,
            Err(Error::LockHeld { .. }) => continue,
            Err(other) => panic!("{owner}: {other}"),
        };
        let done_key = key(format!("work.done.{n}"));
        // Re-check under the lock: someone may have finished it before we claimed.
        if store.get(&done_key).await.unwrap().is_none() {
            // The work itself.
            tokio::time::sleep(Duration::from_millis(1)).await;
            guard
                .fenced_put(&done_key, owner.clone())
                .await
                .expect("fenced write");
            store
                .compare_and_swap(&key("stats.processed"), |current| {
                    let n: usize = current
                        .map(|v| String::from_utf8_lossy(v).parse().unwrap_or(0))
                        .unwrap_or(0);
                    Ok((n + 1).to_string().into())
                })
                .await
                .expect("count");
            done += 1;
        }
        guard.release().await.expect("release");
        drain(&mut config, &mut current);
    }
    // Settle: wait until the coordinator's last config arrived.
    while current.get("config.batch-size").map(String::as_str) != Some("5") {
        match tokio::time::timeout(Duration::from_secs(5), config.next()).await {
            Ok(Some(event)) => apply(event, &mut current),
            _ => break,
        }
    }
    Report {
        done,
        final_config: current.get("config.batch-size").cloned(),
    }
}

fn drain(stream: &mut swarmstate::WatchStream, current: &mut BTreeMap<String, String>) {
    while let Some(Some(event)) = futures::FutureExt::now_or_never(stream.next()) {
        apply(event, current);
    }
}

fn apply(event: WatchEvent, current: &mut BTreeMap<String, String>) {
    match event {
        WatchEvent::Put(entry) => {
            current.insert(
                entry.key.to_string(),
                String::from_utf8_lossy(&entry.value).into_owned(),
            );
        }
        WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
            current.remove(key.as_str());
        }
        WatchEvent::Lagged { .. } => panic!("the example's watchers drain often enough"),
        WatchEvent::CaughtUp { .. } => {}
    }
}

/// An agent takes a lock with a short TTL and stalls; another takes over with a higher
/// token; the stalled agent's late write must be rejected.
async fn stale_holder_is_fenced(store: &Store) -> bool {
    let lock = key("locks.report");
    let ttl = Duration::from_millis(50);
    let slow = acquire_lock(store, &lock, "slow-agent", ttl)
        .await
        .expect("lock");
    tokio::time::sleep(ttl * 2).await;
    let fast = acquire_lock(store, &lock, "fast-agent", ttl)
        .await
        .expect("takeover");
    let report = key("report.latest");
    let late = slow.fenced_put(&report, "from the stalled agent").await;
    let current = fast.fenced_put(&report, "from the new holder").await;
    let stored = store.get(&report).await.unwrap().map(|e| e.value);
    println!(
        "fencing: tokens {} then {}; stalled agent's write: {}",
        slow.token(),
        fast.token(),
        match &late {
            Ok(_) => "ACCEPTED".to_owned(),
            Err(err) => format!("rejected ({err})"),
        }
    );
    let higher = fast.token() > slow.token();
    fast.release().await.expect("release");
    matches!(late, Err(Error::LockLost { .. }))
        && current.is_ok()
        && higher
        && stored.as_deref() == Some(&b"from the new holder"[..])
}
