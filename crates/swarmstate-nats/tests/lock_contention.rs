//! Blocking locks and leader election across clients: several `NatsStore`s, each on its own
//! connection to one `nats-server`, contend for one lock and one election. Never two holders
//! (or leaders) at once, tokens (terms) strictly increase, and queued waiters are served in
//! the order they queued. The lock test also prints the hand-over latency it saw (release
//! begun → next waiter holds the lock); it asserts only that no hand-over waited for a TTL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use swarmstate_core::{Key, Pattern, StateStore, StateStoreExt, WatchEvent, WatchStart};
use swarmstate_nats::NatsStore;
use swarmstate_nats_local::{NatsServer, require_server};
use swarmstate_recipes::election::Election;
use swarmstate_recipes::lock::{
    FenceGate, FencingToken, acquire_lock, acquire_lock_wait, lock_waiters_prefix,
};

const BUCKET: &str = "contention";
const CLIENTS: usize = 4;
const LOCK_TTL: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(60);

fn key(text: &str) -> Key {
    Key::new(text).unwrap_or_else(|err| panic!("{err}"))
}

async fn clients(server: &NatsServer, count: usize) -> Vec<Arc<dyn StateStore>> {
    let mut clients = Vec::new();
    for _ in 0..count {
        let store = NatsStore::builder(server.url())
            .bucket(BUCKET)
            .connect()
            .await
            .expect("connect to the test server");
        clients.push(Arc::new(store) as Arc<dyn StateStore>);
    }
    clients
}

/// Waits until exactly `count` tickets are queued on lock `k`, as a watch shows them.
async fn wait_for_waiters(store: &Arc<dyn StateStore>, k: &Key, count: usize) {
    let prefix = lock_waiters_prefix(k).unwrap();
    let mut events = store
        .watch(&Pattern::prefix(&prefix), WatchStart::Snapshot)
        .await
        .unwrap();
    let mut present = std::collections::HashSet::new();
    let mut caught_up = false;
    while !(caught_up && present.len() == count) {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("the queue reaches its size")
            .expect("the watch goes on");
        match event {
            WatchEvent::Put(entry) => {
                present.insert(entry.key);
            }
            WatchEvent::Delete { key, .. } | WatchEvent::Expire { key, .. } => {
                present.remove(&key);
            }
            WatchEvent::CaughtUp { .. } => caught_up = true,
            WatchEvent::Lagged { .. } => panic!("a handful of tickets lagged the watcher"),
        }
    }
}

/// The `p`th percentile (0–100) of sorted `samples`.
fn percentile(samples: &[Duration], p: usize) -> Duration {
    samples[(samples.len() - 1) * p / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_acquire_across_clients_serves_one_holder_at_a_time_in_queue_order() {
    if require_server().is_none() {
        return;
    }
    let server = NatsServer::start().await;
    let stores = clients(&server, CLIENTS + 1).await;
    let lock = key("locks.shared");

    // FIFO: one client holds the lock while the others queue one after another.
    let holder = acquire_lock(&stores[0], &lock, "holder", LOCK_TTL)
        .await
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for (i, store) in stores[1..].iter().enumerate() {
        let (store, k, order) = (store.clone(), lock.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let owner = format!("client-{}", i + 1);
            let guard = acquire_lock_wait(&store, &k, &owner, LOCK_TTL, WAIT)
                .await
                .unwrap_or_else(|err| panic!("{owner}: {err}"));
            order.lock().unwrap().push((owner, guard.token()));
            guard.release().await.unwrap();
        }));
        wait_for_waiters(&stores[0], &lock, i + 1).await;
    }
    let first = holder.token();
    holder.release().await.unwrap();
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let names: Vec<&str> = order.iter().map(|(owner, _)| owner.as_str()).collect();
    assert_eq!(names, ["client-1", "client-2", "client-3", "client-4"]);
    let mut last = first;
    for (owner, token) in &order {
        assert!(*token > last, "{owner} got {token} after {last}");
        last = *token;
    }

    // Contention: two tasks per client, several rounds each.
    const TASKS_PER_CLIENT: usize = 2;
    const ROUNDS: usize = 10;
    let holders = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(FenceGate::new());
    // (token, acquired at, release begun at), in the order held.
    let held = Arc::new(Mutex::new(Vec::<(FencingToken, Instant, Instant)>::new()));
    let counter = key("work.counter");
    let mut tasks = Vec::new();
    for (c, store) in stores[1..].iter().enumerate() {
        for t in 0..TASKS_PER_CLIENT {
            let (store, lock, counter) = (store.clone(), lock.clone(), counter.clone());
            let (holders, gate, held) = (holders.clone(), gate.clone(), held.clone());
            tasks.push(tokio::spawn(async move {
                let owner = format!("client-{c}-task-{t}");
                for _ in 0..ROUNDS {
                    let guard = acquire_lock_wait(&store, &lock, &owner, LOCK_TTL, WAIT)
                        .await
                        .unwrap_or_else(|err| panic!("{owner}: {err}"));
                    let acquired = Instant::now();
                    assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    gate.admit(guard.token()).unwrap();
                    let n: usize = match store.get(&counter).await.unwrap() {
                        Some(entry) => std::str::from_utf8(&entry.value).unwrap().parse().unwrap(),
                        None => 0,
                    };
                    guard
                        .fenced_put(&counter, (n + 1).to_string())
                        .await
                        .unwrap();
                    assert_eq!(holders.fetch_sub(1, Ordering::SeqCst), 1, "two holders");
                    let releasing = Instant::now();
                    held.lock()
                        .unwrap()
                        .push((guard.token(), acquired, releasing));
                    guard.release().await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let held = held.lock().unwrap().clone();
    let total = CLIENTS * TASKS_PER_CLIENT * ROUNDS;
    assert_eq!(held.len(), total);
    for pair in held.windows(2) {
        assert!(pair[0].0 < pair[1].0, "tokens must strictly increase");
    }
    let value = stores[0].get(&counter).await.unwrap().unwrap().value;
    assert_eq!(&value[..], total.to_string().as_bytes());

    let mut handovers: Vec<Duration> = held
        .windows(2)
        .map(|pair| pair[1].1.saturating_duration_since(pair[0].2))
        .collect();
    handovers.sort();
    eprintln!(
        "lock hand-over over {} hand-overs between {} tasks on {CLIENTS} connections: \
         p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        handovers.len(),
        CLIENTS * TASKS_PER_CLIENT,
        percentile(&handovers, 50),
        percentile(&handovers, 90),
        percentile(&handovers, 99),
        handovers.last().unwrap(),
    );
    // A hand-over that waited for a ticket or lock TTL would take seconds.
    assert!(
        *handovers.last().unwrap() < LOCK_TTL / 4,
        "a hand-over took {:?}",
        handovers.last().unwrap()
    );
    let prefix = lock_waiters_prefix(&lock).unwrap();
    assert!(
        stores[0]
            .list_keys(&Pattern::prefix(&prefix))
            .await
            .unwrap()
            .is_empty(),
        "tickets left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_across_clients_has_one_leader_per_term_with_increasing_terms() {
    if require_server().is_none() {
        return;
    }
    let server = NatsServer::start().await;
    let stores = clients(&server, CLIENTS + 1).await;
    let name = key("service.leader");
    let observer = Election::new(stores[0].clone(), name.clone());
    let mut changes = observer.observe().await.unwrap();
    assert_eq!(changes.next().await.unwrap().unwrap(), None);

    const ROUNDS: usize = 4;
    let leaders = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (c, store) in stores[1..].iter().enumerate() {
        let election = Election::new(store.clone(), name.clone());
        let (leaders, terms, observer) = (leaders.clone(), terms.clone(), observer.clone());
        tasks.push(tokio::spawn(async move {
            let candidate = format!("node-{c}");
            for _ in 0..ROUNDS {
                let leadership = election
                    .campaign(&candidate, LOCK_TTL, WAIT)
                    .await
                    .unwrap_or_else(|err| panic!("{candidate}: {err}"));
                assert_eq!(leaders.fetch_add(1, Ordering::SeqCst), 0, "two leaders");
                terms.lock().unwrap().push(leadership.term());
                let seen = observer.leader().await.unwrap().expect("a leader");
                assert_eq!(
                    (seen.candidate.as_str(), seen.term),
                    (candidate.as_str(), leadership.term())
                );
                leadership
                    .fenced_put(&key("service.owner"), candidate.clone())
                    .await
                    .unwrap();
                assert_eq!(leaders.fetch_sub(1, Ordering::SeqCst), 1, "two leaders");
                leadership.resign().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let terms = terms.lock().unwrap().clone();
    assert_eq!(terms.len(), CLIENTS * ROUNDS);
    for pair in terms.windows(2) {
        assert!(pair[0] < pair[1], "terms must strictly increase: {terms:?}");
    }

    // A last leader that stays: whatever the observer missed (a lag skips changes and reads
    // the key afresh), it ends up seeing this one.
    let last = Election::new(stores[1].clone(), name.clone())
        .campaign("last", LOCK_TTL, WAIT)
        .await
        .expect("the last campaign");
    let mut terms = terms;
    terms.push(last.term());

    // The observer saw leaders in term order; if it lagged it skipped some, never reordered.
    let mut observed = Vec::new();
    while observed.last() != Some(terms.last().unwrap()) {
        let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .expect("the observer sees the last leader")
            .unwrap()
            .unwrap();
        if let Some(leader) = change {
            observed.push(leader.term);
        }
    }
    for pair in observed.windows(2) {
        assert!(
            pair[0] < pair[1],
            "observed terms out of order: {observed:?}"
        );
    }
    assert!(observed.iter().all(|term| terms.contains(term)));
    eprintln!("observer saw {} of {} leaders", observed.len(), terms.len());
    last.resign().await.expect("resign");
}
