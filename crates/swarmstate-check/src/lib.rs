//! Linearizability checking for swarmstate stores: record what concurrent clients asked and
//! were told, then search for one order of their operations that respects real time and a
//! simple sequential model. A store that loses an acknowledged write, or serves a read older
//! than a write acknowledged before the read began, has no such order.
//!
//! - [`History`] — the recorded operations; saved to and loaded from a small line format.
//! - [`Recorder`] — wraps any `Arc<dyn StateStore>` and records what its clients do, plus the
//!   store's own expiries as seen by a watcher. Each [`RecordingClient`] is a `StateStore`
//!   itself (a decorator), so code written against the trait is recorded unchanged.
//! - [`check`] — the checker: per key, Wing & Gong's search with Lowe's memoisation
//!   (porcupine's algorithm), giving [`Verdict::Ok`], [`Verdict::Violation`] with an
//!   explanation, or [`Verdict::Unknown`] when its time runs out.
//! - [`Workload`] and [`run`] — concurrent clients over many keys, recorded and checked, ending
//!   in a printable [`Report`]; [`run_until`] keeps the clients going until the faults are over.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use swarmstate_check::{Workload, run};
//! use swarmstate_core::{MemoryStore, StateStore};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
//! let workload = Workload { clients: 4, keys: 20, duration: Duration::from_millis(200), ..Workload::default() };
//! let report = run(store, &workload, async {}).await?;
//! println!("{report}"); // the verdict and the counts
//! assert!(report.is_ok());
//! # Ok::<_, swarmstate_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # The model
//!
//! Each key is a register holding a value and the revision that wrote it, or nothing and the
//! revision that removed it. A get returns exactly that; a put (overwrite, create, update at a
//! revision) and a delete (optionally at a revision) change it, and must carry a revision above
//! the current one, since revisions are store-wide and strictly increasing. A check (a
//! transaction's condition on a key it does not write) observes the key's revision or its
//! absence, not its value. A failed conditional write or check (`AlreadyExists`,
//! `RevisionMismatch`) must be explained by the state at its linearization point. An expiry
//! observed by the watcher removes the key only if it is still at the expired write's
//! revision; it may be linearized between the call of that write and the moment the watcher
//! saw it. An operation whose outcome is unknown (`Ambiguous`, a time-out) may apply at any
//! point after its call, or never; its client continues under a new id. `Unavailable` means
//! nothing was sent, so such an operation is not recorded at all.
//!
//! A transaction is recorded as its part on each key (see [`RecordingClient`]): its writes as
//! puts and deletes at the revisions it returned, its conditions on keys it does not write as
//! checks, a refusal as an observation of the key it names. Each key's part is checked against
//! that key's register, so the checker sees everything a transaction does to each key, but not
//! that its parts happened as one step.

mod checker;
mod explain;
pub mod generate;
mod history;
mod model;
mod recorder;
mod run;
mod workload;

pub use checker::{Checked, Counts, Verdict, check};
pub use explain::Violation;
pub use history::{History, Input, Operation, Output};
pub use recorder::{DEFAULT_OPERATION_TIMEOUT, Recorder, RecordingClient};
pub use run::{CHECK_TIME_LIMIT, Expiries, Report, run, run_until};
pub use workload::{Mix, Workload};
