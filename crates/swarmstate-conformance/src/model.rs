//! Model-based property test: random sequences of puts, creates, updates, deletes, reads, key
//! listings, TTLs, idempotent retries and clock jumps run against a backend (on paused Tokio
//! time) and against a small reference model, and every result must agree, step by step.
//!
//! A backend runs it by implementing [`ModelBackend`] and expanding `prop_state_machine!`
//! with [`ModelTest`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use proptest_state_machine::prop_state_machine;
//! use swarmstate_conformance::model::{ModelBackend, ModelTest};
//! use swarmstate_core::{MemoryStore, StateStore};
//!
//! struct Memory;
//!
//! impl ModelBackend for Memory {
//!     fn open(_: &tokio::runtime::Runtime) -> Arc<dyn StateStore> {
//!         Arc::new(MemoryStore::new())
//!     }
//! }
//!
//! prop_state_machine! {
//!     #[test]
//!     fn memory_store_agrees_with_the_model(sequential 1..40 => ModelTest<Memory>);
//! }
//! ```
//!
//! The model is deliberately naive: a sorted map, a revision counter and a clock in
//! milliseconds. Expiry is lazy: before every write it removes the entries whose deadline has
//! come, in (deadline, key) order, each taking the next revision. The store may expire earlier
//! in its background task, but in the same order and always before the next write, so the
//! revisions agree. A watcher on `*` checks the order: after every write, the events the
//! store has sent so far equal the model's log.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use swarmstate_core::{
    Error, Key, Pattern, PutMode, PutOptions, Revision, StateStore, StateStoreExt, WatchEvent,
    WatchStart, WatchStream,
};
use tokio::runtime::Runtime;
use tokio::time::Instant;

/// Few keys over two prefixes, so that writes collide and patterns select subsets.
const KEYS: [&str; 5] = ["a.x", "a.y", "a.z.w", "b.x", "b.y"];
/// `a.z` is an exact key that is never written but prefixes `a.z.w`.
const PATTERNS: [&str; 6] = ["*", "a.*", "a.z.*", "b.*", "a.x", "a.z"];
/// The store's default idempotency window.
const IDEMPOTENCY_WINDOW_MS: u64 = 120_000;

/// One step of a test case.
#[derive(Debug, Clone)]
pub enum Op {
    /// A put, in one of its modes.
    Put(Put),
    /// A delete, conditional on `expected` if given.
    Delete {
        /// The key.
        key: &'static str,
        /// The revision the key must be at.
        expected: Option<u64>,
    },
    /// A read.
    Get {
        /// The key.
        key: &'static str,
    },
    /// A key listing.
    Keys {
        /// The pattern.
        pattern: &'static str,
    },
    /// The paused clock moves on.
    Advance {
        /// By this many milliseconds.
        millis: u64,
    },
}

/// A put step: key, value, mode, TTL and idempotency key.
#[derive(Debug, Clone)]
pub struct Put {
    key: &'static str,
    value: String,
    mode: Mode,
    ttl_secs: Option<u64>,
    idempotency_key: Option<&'static str>,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Overwrite,
    Create,
    Update(u64),
}

/// What one step returned; the store's results are converted to this and compared.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Nothing,
    Written(u64),
    Deleted(Option<u64>),
    AlreadyExists {
        key: String,
        revision: u64,
    },
    RevisionMismatch {
        key: String,
        expected: u64,
        actual: Option<u64>,
    },
    /// Value, revision and time left.
    Entry(Option<(String, u64, Option<Duration>)>),
    Keys(Vec<String>),
    Unexpected(String),
}

/// A change as a watcher sees it: what happened, to which key, at which revision.
type Event = (&'static str, String, u64);

#[derive(Debug, Clone)]
struct Stored {
    value: String,
    revision: u64,
    deadline_ms: Option<u64>,
}

/// The reference model, plus the outcome of the step that produced it.
#[derive(Debug, Clone)]
pub struct Model {
    entries: BTreeMap<&'static str, Stored>,
    revision: u64,
    now_ms: u64,
    /// (key, idempotency key) -> (revision of the first successful write, when it was made).
    idempotent: BTreeMap<(&'static str, &'static str), (u64, u64)>,
    /// The last put that carried an idempotency key, offered again as a retry.
    last_idempotent_put: Option<Put>,
    events: Vec<Event>,
    outcome: Outcome,
}

impl Model {
    fn live(&self, key: &str) -> Option<&Stored> {
        let stored = self.entries.get(key)?;
        stored
            .deadline_ms
            .is_none_or(|deadline| deadline > self.now_ms)
            .then_some(stored)
    }

    fn record(&mut self, kind: &'static str, key: &str) -> u64 {
        self.revision += 1;
        self.events.push((kind, key.to_string(), self.revision));
        self.revision
    }

    fn expire_due(&mut self) {
        let mut due: Vec<(u64, &'static str)> = self
            .entries
            .iter()
            .filter_map(|(key, stored)| Some((stored.deadline_ms?, *key)))
            .filter(|(deadline, _)| *deadline <= self.now_ms)
            .collect();
        due.sort();
        for (_, key) in due {
            self.entries.remove(key);
            self.record("expire", key);
        }
    }

    fn put(&mut self, put: &Put) -> Outcome {
        let Put {
            key,
            value,
            mode,
            ttl_secs,
            idempotency_key,
        } = put;
        self.expire_due();
        let now = self.now_ms;
        self.idempotent
            .retain(|_, (_, at)| now - *at < IDEMPOTENCY_WINDOW_MS);
        if let Some(id) = idempotency_key {
            if let Some((revision, _)) = self.idempotent.get(&(*key, *id)) {
                return Outcome::Written(*revision);
            }
            self.last_idempotent_put = Some(put.clone());
        }
        let current = self.entries.get(key).map(|stored| stored.revision);
        match (mode, current) {
            (Mode::Create, Some(revision)) => {
                return Outcome::AlreadyExists {
                    key: key.to_string(),
                    revision,
                };
            }
            (Mode::Update(expected), actual) if actual != Some(*expected) => {
                return Outcome::RevisionMismatch {
                    key: key.to_string(),
                    expected: *expected,
                    actual,
                };
            }
            _ => {}
        }
        let stored = Stored {
            value: value.clone(),
            revision: self.record("put", key),
            deadline_ms: ttl_secs.map(|secs| now + secs * 1000),
        };
        self.entries.insert(key, stored);
        if let Some(id) = idempotency_key {
            self.idempotent.insert((*key, *id), (self.revision, now));
        }
        Outcome::Written(self.revision)
    }

    fn delete(&mut self, key: &str, expected: Option<u64>) -> Outcome {
        self.expire_due();
        let current = self.entries.get(key).map(|stored| stored.revision);
        if let Some(expected) = expected
            && current != Some(expected)
        {
            return Outcome::RevisionMismatch {
                key: key.to_string(),
                expected,
                actual: current,
            };
        }
        if current.is_none() {
            return Outcome::Deleted(None);
        }
        self.entries.remove(key);
        Outcome::Deleted(Some(self.record("delete", key)))
    }

    fn get(&self, key: &str) -> Outcome {
        Outcome::Entry(self.live(key).map(|stored| {
            let left = (stored.deadline_ms).map(|at| Duration::from_millis(at - self.now_ms));
            (stored.value.clone(), stored.revision, left)
        }))
    }

    fn keys(&self, pattern: &str) -> Outcome {
        let selected = |key: &str| match pattern.strip_suffix('*') {
            Some("") => true,
            Some(prefix) => key.starts_with(prefix),
            None => key == pattern,
        };
        let keys = KEYS
            .into_iter()
            .filter(|key| selected(key) && self.live(key).is_some());
        Outcome::Keys(keys.map(String::from).collect())
    }
}

/// A revision for a conditional write: mostly the key's current one, sometimes any small
/// revision (stale, current, or not yet handed out).
fn expected_revision(current: Option<u64>, last: u64) -> BoxedStrategy<u64> {
    let any = 1..=last + 2;
    match current {
        Some(revision) => prop_oneof![3 => Just(revision), 1 => any].boxed(),
        None => any.boxed(),
    }
}

/// The reference state machine: generates the steps and predicts each outcome.
pub struct ModelMachine;

impl ReferenceStateMachine for ModelMachine {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            entries: BTreeMap::new(),
            revision: 0,
            now_ms: 0,
            idempotent: BTreeMap::new(),
            last_idempotent_put: None,
            events: Vec::new(),
            outcome: Outcome::Nothing,
        })
        .boxed()
    }

    fn transitions(model: &Model) -> BoxedStrategy<Op> {
        let current = KEYS.map(|key| model.live(key).map(|stored| stored.revision));
        let last = model.revision;
        let key = || 0..KEYS.len();
        let value = || (0..4u8).prop_map(|n| format!("v{n}"));
        let ttl = || proptest::option::weighted(0.4, 1..=5u64);
        let idempotency_key = proptest::option::weighted(0.25, prop_oneof![Just("r1"), Just("r2")]);
        let mode = prop_oneof![Just(Mode::Overwrite), Just(Mode::Create)];
        let put = (key(), value(), mode, ttl(), idempotency_key).prop_map(
            |(key, value, mode, ttl_secs, idempotency_key)| {
                Op::Put(Put {
                    key: KEYS[key],
                    value,
                    mode,
                    ttl_secs,
                    idempotency_key,
                })
            },
        );
        let update = key()
            .prop_flat_map(move |key| (Just(key), expected_revision(current[key], last)))
            .prop_flat_map(move |(key, expected)| {
                (value(), ttl()).prop_map(move |(value, ttl_secs)| {
                    Op::Put(Put {
                        key: KEYS[key],
                        value,
                        mode: Mode::Update(expected),
                        ttl_secs,
                        idempotency_key: None,
                    })
                })
            });
        let delete = key()
            .prop_flat_map(move |key| {
                let expected = proptest::option::of(expected_revision(current[key], last));
                (Just(key), expected)
            })
            .prop_map(|(key, expected)| Op::Delete {
                key: KEYS[key],
                expected,
            });
        let get = key().prop_map(|key| Op::Get { key: KEYS[key] });
        let keys = proptest::sample::select(&PATTERNS[..]).prop_map(|pattern| Op::Keys { pattern });
        // Small steps, in whole seconds or milliseconds, and jumps to exactly the next TTL
        // deadline or the end of an idempotency window (or 1 ms before or after), where an
        // off-by-one would show.
        let now = model.now_ms;
        let deadlines = (model.entries.values()).filter_map(|stored| stored.deadline_ms);
        let windows = (model.idempotent.values()).map(|(_, at)| at + IDEMPOTENCY_WINDOW_MS);
        let mut boundaries: Vec<u64> = (deadlines.chain(windows))
            .flat_map(|at| [at - 1, at, at + 1])
            .filter(|at| *at > now)
            .map(|at| at - now)
            .collect();
        boundaries.push(1000);
        let advance = prop_oneof![
            2 => (0..=6u64).prop_map(|secs| secs * 1000),
            1 => 0..=6000u64,
            2 => proptest::sample::select(boundaries),
        ]
        .prop_map(|millis| Op::Advance { millis });
        let mut choices = vec![
            (4, put.boxed()),
            (3, update.boxed()),
            (2, delete.boxed()),
            (3, get.boxed()),
            (2, keys.boxed()),
            (4, advance.boxed()),
        ];
        if let Some(retry) = &model.last_idempotent_put {
            choices.push((2, Just(Op::Put(retry.clone())).boxed()));
        }
        Union::new_weighted(choices).boxed()
    }

    fn apply(mut model: Model, op: &Op) -> Model {
        model.outcome = match op {
            Op::Put(put) => model.put(put),
            Op::Delete { key, expected } => model.delete(key, *expected),
            Op::Get { key } => model.get(key),
            Op::Keys { pattern } => model.keys(pattern),
            Op::Advance { millis } => {
                model.now_ms += millis;
                Outcome::Nothing
            }
        };
        model
    }
}

/// A backend the model test runs on.
pub trait ModelBackend: 'static {
    /// A fresh, empty store, opened on `runtime` (current-thread, time paused). Whatever it
    /// needs to live (a temporary directory) goes with the store and is dropped with it.
    fn open(runtime: &Runtime) -> Arc<dyn StateStore>;
}

/// The model test on backend `B`, for `prop_state_machine!`.
pub struct ModelTest<B>(PhantomData<B>);

/// The store under test, on its own paused-clock runtime.
pub struct Subject {
    runtime: Runtime,
    store: Arc<dyn StateStore>,
    start: Instant,
    watch: WatchStream,
    events: Vec<Event>,
}

impl Subject {
    async fn run(&self, op: &Op) -> swarmstate_core::Result<Outcome> {
        let key = |text: &str| Key::new(text).unwrap();
        let revision = |n: u64| Revision::new(n).unwrap();
        Ok(match op {
            Op::Put(put) => {
                let mut options = PutOptions::with_mode(match put.mode {
                    Mode::Overwrite => PutMode::Overwrite,
                    Mode::Create => PutMode::Create,
                    Mode::Update(expected) => PutMode::Update(revision(expected)),
                });
                options.ttl = put.ttl_secs.map(Duration::from_secs);
                options.idempotency_key = put.idempotency_key.map(String::from);
                let value = Bytes::from(put.value.clone());
                Outcome::Written(self.store.put(&key(put.key), value, options).await?.get())
            }
            Op::Delete { key: k, expected } => {
                let deleted = self.store.delete(&key(k), expected.map(revision)).await?;
                Outcome::Deleted(deleted.map(Revision::get))
            }
            Op::Get { key: k } => Outcome::Entry(self.store.get(&key(k)).await?.map(|entry| {
                let value = String::from_utf8(entry.value.to_vec()).unwrap();
                (value, entry.revision.get(), entry.expires_in)
            })),
            Op::Keys { pattern } => {
                let keys = self.store.list_keys(&Pattern::new(pattern)?).await?;
                Outcome::Keys(keys.iter().map(Key::to_string).collect())
            }
            Op::Advance { millis } => {
                tokio::time::advance(Duration::from_millis(*millis)).await;
                Outcome::Nothing
            }
        })
    }
}

fn outcome_of_error(err: Error) -> Outcome {
    match err {
        Error::AlreadyExists { key, revision } => Outcome::AlreadyExists {
            key: key.to_string(),
            revision: revision.get(),
        },
        Error::RevisionMismatch {
            key,
            expected,
            actual,
        } => Outcome::RevisionMismatch {
            key: key.to_string(),
            expected: expected.get(),
            actual: actual.map(Revision::get),
        },
        other => Outcome::Unexpected(other.to_string()),
    }
}

impl<B: ModelBackend> StateMachineTest for ModelTest<B> {
    type SystemUnderTest = Subject;
    type Reference = ModelMachine;

    fn init_test(_: &Model) -> Subject {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let store = B::open(&runtime);
        let (start, watch) = runtime.block_on(async {
            let watch = store.watch(&Pattern::All, WatchStart::Now).await;
            (Instant::now(), watch.unwrap())
        });
        Subject {
            runtime,
            store,
            start,
            watch,
            events: Vec::new(),
        }
    }

    fn apply(mut subject: Subject, model: &Model, op: Op) -> Subject {
        let outcome = (subject.runtime)
            .block_on(subject.run(&op))
            .unwrap_or_else(outcome_of_error);
        assert_eq!(outcome, model.outcome, "store and model disagree on {op:?}");
        let elapsed = subject.runtime.block_on(async { subject.start.elapsed() });
        assert_eq!(
            elapsed,
            Duration::from_millis(model.now_ms),
            "the paused clock moved by itself"
        );
        if let Op::Put(_) | Op::Delete { .. } = op {
            while let Some(Some(event)) = subject.watch.next().now_or_never() {
                subject.events.push(match event {
                    WatchEvent::Put(entry) => ("put", entry.key.to_string(), entry.revision.get()),
                    WatchEvent::Delete { key, revision } => {
                        ("delete", key.to_string(), revision.get())
                    }
                    WatchEvent::Expire { key, revision } => {
                        ("expire", key.to_string(), revision.get())
                    }
                    other => panic!("unexpected watch event {other:?}"),
                });
            }
            assert_eq!(subject.events, model.events, "watch events after {op:?}");
        }
        subject
    }
}
