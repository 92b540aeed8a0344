//! The durable path's one writer: it takes every write waiting, up to the group's bounds,
//! decides them in order into one batch, persists the batch once, applies it, answers each
//! write, and repeats until the queue closes or a close asks it to stop. It holds the engine
//! only weakly between groups, so dropping the last handle ends it.
//!
//! Where it runs decides what a commit costs. On a multi-threaded runtime the writer is a
//! thread of its own: a write is one hand-off to it and one back, and the disk's wait blocks
//! no worker (on a virtual machine every further wake-up of an idle thread costs tens of
//! microseconds, more than the rest of a write). On a current-thread runtime it is a task that
//! persists on the blocking pool, which also keeps paused test time from jumping while the
//! disk works.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{mpsc, oneshot};

use super::{
    Answer, Batch, Commit, Engine, Error, Job, Message, Now, Persistence, Revision, Shared,
    Timestamp,
};

/// How long the writer thread waits for the writers it has just answered to send their next
/// writes, after a group of several (never after a lone write, never when idle). The task
/// writer yields once instead.
const REGROUP: Duration = Duration::from_micros(50);

/// Starts the writer for the engine `shared`, on the current runtime.
pub(super) fn start<P: Persistence>(
    shared: Weak<Shared<P>>,
    persistence: P,
    queue: mpsc::Receiver<Message>,
) {
    let handle = Handle::current();
    if matches!(handle.runtime_flavor(), RuntimeFlavor::MultiThread) {
        // Handed over through a slot, so that a thread that cannot start gives them back.
        let slot = Arc::new(std::sync::Mutex::new(Some((shared, persistence, queue))));
        let taken = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("swarmstate-writer".to_owned())
            .spawn(move || {
                let parts = taken.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some((shared, persistence, queue)) = parts {
                    // The writer spawns the expiry task and reads the runtime's clock.
                    let _runtime = handle.enter();
                    run_thread(shared, persistence, queue);
                }
            });
        if spawned.is_err() {
            // A process at its thread limit: the task does the same work.
            let left = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((shared, persistence, queue)) = left {
                tokio::spawn(run_task(shared, persistence, queue));
            }
        }
        return;
    }
    tokio::spawn(run_task(shared, persistence, queue));
}

/// The messages of one group: writes, and the close that ends them if one came.
struct Group {
    jobs: Vec<Job>,
    bytes: usize,
    closing: Option<oneshot::Sender<()>>,
}

impl Group {
    fn new() -> Group {
        Group {
            jobs: Vec::new(),
            bytes: 0,
            closing: None,
        }
    }

    // Takes `message`; false once the group is full or closing.
    fn take<P>(&mut self, message: Message, shared: &Shared<P>) -> bool {
        match message {
            Message::Write(job) => {
                self.bytes += job.bytes;
                self.jobs.push(job);
            }
            Message::Close(done) => {
                self.closing = Some(done);
                return false;
            }
        }
        self.jobs.len() < shared.config.max_batch_writes
            && self.bytes < shared.config.max_batch_bytes
    }

    // Starts a new group (the last one's jobs were drained when it was decided) with `first`
    // and whatever else is queued, up to the bounds. On an empty queue it asks `wait_more`
    // whether to look again.
    fn fill<P>(
        &mut self,
        first: Message,
        queue: &mut mpsc::Receiver<Message>,
        shared: &Shared<P>,
        mut wait_more: impl FnMut(&Group) -> bool,
    ) {
        debug_assert!(self.jobs.is_empty(), "the last group was decided");
        // The bound is per group: a count carried over would end every group after its first
        // write once the store's lifetime total passed it.
        self.bytes = 0;
        let mut open = self.take(first, shared);
        while open {
            match queue.try_recv() {
                Ok(message) => open = self.take(message, shared),
                Err(mpsc::error::TryRecvError::Empty) if wait_more(self) => {}
                Err(_) => break,
            }
        }
    }

    // The writer's end: the persistence is released before a close is answered, so that the
    // store can be reopened at once.
    fn end<T>(self, persistence: T, queue: mpsc::Receiver<Message>) {
        drop(persistence);
        drop(queue);
        if let Some(done) = self.closing {
            let _ = done.send(());
        }
    }
}

/// A decided group: the batch to persist and what answers each write.
struct Decided {
    batch: Batch,
    answers: Vec<Answer>,
    now: Timestamp,
    oldest_kept: Option<Revision>,
    forget_before: Timestamp,
}

impl<P: Persistence> Engine<P> {
    // Decides the group's writes in order into one batch, under the read lock (readers go on).
    // `None`: nothing to persist; every write is answered already.
    fn decide_group(&self, jobs: &mut Vec<Job>) -> Option<Decided> {
        let now = self.shared.clock.now();
        let mut answers: Vec<Answer> = Vec::with_capacity(jobs.len());
        let (batch, oldest_kept) = {
            let inner = self.shared.inner.read().unwrap_or_else(|e| e.into_inner());
            let mut batch = inner.state.batch();
            for job in jobs.drain(..) {
                answers.push((job.decide)(&inner.state, &mut batch, Now::At(now)));
            }
            (batch, inner.state.oldest_kept())
        };
        if batch.is_empty() {
            answers.into_iter().for_each(|answer| answer(None));
            return None;
        }
        Some(Decided {
            batch,
            answers,
            now,
            oldest_kept,
            forget_before: now.saturating_sub(self.shared.config.limits.idempotency_window),
        })
    }

    // Applies a persisted group and answers it, or poisons the engine and answers every write
    // as ambiguous. False once poisoned.
    fn finish_group(&self, mut decided: Decided, persisted: Result<(), Error>) -> bool {
        let cause = match persisted {
            Ok(()) => {
                self.apply(&mut decided.batch, decided.now);
                decided.answers.into_iter().for_each(|answer| answer(None));
                return true;
            }
            Err(cause) => cause,
        };
        self.poison(cause.clone());
        let failed = Error::Ambiguous {
            operation: "write".to_owned(),
            message: format!("the commit holding it failed, it may or may not be on disk: {cause}"),
        };
        decided
            .answers
            .into_iter()
            .for_each(|answer| answer(Some(&failed)));
        false
    }
}

// A panic in a persistence is a failed commit (its writes may be on disk), not a dead writer.
fn persist<P: Persistence>(persistence: &mut P, decided: &Decided) -> Result<(), Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        persistence.persist(&Commit {
            changes: decided.batch.changes(),
            oldest_kept: decided.oldest_kept,
            forget_before: decided.forget_before,
        })
    }))
    .unwrap_or_else(|_| Err(unfinished("the persistence panicked")))
}

fn unfinished(why: impl std::fmt::Display) -> Error {
    Error::Backend {
        source: Arc::new(std::io::Error::other(format!(
            "the commit did not finish: {why}"
        ))),
    }
}

fn run_thread<P: Persistence>(
    shared: Weak<Shared<P>>,
    mut persistence: P,
    mut queue: mpsc::Receiver<Message>,
) {
    let mut last_group = 0;
    let mut group = Group::new();
    while let Some(first) = queue.blocking_recv() {
        let Some(strong) = shared.upgrade() else {
            break;
        };
        let engine = Engine { shared: strong };
        let started = Instant::now();
        group.fill(first, &mut queue, &engine.shared, |group| {
            // After a group of several, the writers just answered are sending again.
            let waiting =
                last_group > 1 && group.jobs.len() < last_group && started.elapsed() < REGROUP;
            if waiting {
                std::thread::yield_now();
            }
            waiting
        });
        last_group = group.jobs.len();
        if let Some(decided) = engine.decide_group(&mut group.jobs) {
            let persisted = persist(&mut persistence, &decided);
            if !engine.finish_group(decided, persisted) {
                break;
            }
        }
        drop(engine);
        if group.closing.is_some() {
            break;
        }
    }
    group.end(persistence, queue);
}

async fn run_task<P: Persistence>(
    shared: Weak<Shared<P>>,
    persistence: P,
    mut queue: mpsc::Receiver<Message>,
) {
    let mut persistence = Some(persistence);
    let mut last_group = 0;
    let mut group = Group::new();
    while let Some(first) = queue.recv().await {
        if last_group > 1 {
            // The writers just answered are about to send their next writes: let them run
            // first, so this group takes them instead of leaving them for the next commit.
            tokio::task::yield_now().await;
        }
        let Some(strong) = shared.upgrade() else {
            break;
        };
        let engine = Engine { shared: strong };
        group.fill(first, &mut queue, &engine.shared, |_| false);
        last_group = group.jobs.len();
        if let Some(decided) = engine.decide_group(&mut group.jobs) {
            let Some(mut kept) = persistence.take() else {
                break;
            };
            let persisted = tokio::task::spawn_blocking(move || {
                let result = persist(&mut kept, &decided);
                (kept, decided, result)
            })
            .await;
            let finished = match persisted {
                Ok((kept, decided, result)) => {
                    persistence = Some(kept);
                    engine.finish_group(decided, result)
                }
                Err(join) => {
                    engine.poison(unfinished(join));
                    false
                }
            };
            if !finished {
                break;
            }
        }
        drop(engine);
        if group.closing.is_some() {
            break;
        }
    }
    group.end(persistence, queue);
}
