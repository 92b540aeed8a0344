//! The store's own changes: a watcher over `*` that keeps what the expiries need, and the
//! expiry operations it adds to the history when the recording finishes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use swarmstate_core::{Pattern, Revision, StateStore, WatchEvent, WatchStart, WatchStream};

use super::Shared;
use crate::history::{Input, Operation, Output};

/// What the watcher has seen.
#[derive(Debug, Default)]
pub(super) struct Watched {
    /// The latest put revision the watcher saw per key, which an expiry refers to.
    last_put: HashMap<String, Revision>,
    /// (key, expired write, expiry revision, when seen).
    expiries: Vec<(String, Revision, Revision, u64)>,
    /// The highest revision seen.
    pub(super) high: Option<Revision>,
    /// Whether events may have been lost.
    pub(super) incomplete: bool,
}

/// Follows every change of the store, keeping what expiries need.
pub(super) async fn watch(
    store: Arc<dyn StateStore>,
    everything: Pattern,
    mut events: WatchStream,
    shared: Arc<Shared>,
) {
    loop {
        let Some(event) = events.next().await else {
            // The store closed: expiries from here on would be missed.
            shared.watched.lock().unwrap().incomplete = true;
            return;
        };
        let seen = shared.now();
        let mut watched = shared.watched.lock().unwrap();
        match event {
            WatchEvent::Put(entry) => {
                watched.high = watched.high.max(Some(entry.revision));
                watched
                    .last_put
                    .insert(entry.key.as_str().to_owned(), entry.revision);
            }
            WatchEvent::Expire { key, revision } => {
                watched.high = watched.high.max(Some(revision));
                // A key without a put seen was written before the recording: not ours.
                if let Some(written) = watched.last_put.get(key.as_str()).copied() {
                    watched
                        .expiries
                        .push((key.as_str().to_owned(), written, revision, seen));
                }
            }
            WatchEvent::Delete { revision, .. } => {
                watched.high = watched.high.max(Some(revision));
            }
            WatchEvent::CaughtUp { .. } => {}
            WatchEvent::Lagged { resume_from } => {
                drop(watched);
                let resumed = store
                    .watch(&everything, WatchStart::FromRevision(resume_from))
                    .await;
                events = match resumed {
                    Ok(resumed) => resumed,
                    Err(_) => {
                        // Some changes are gone for good (a NATS bucket keeps one message per
                        // key). An older `last_put` may be out of date: forget it, and take a
                        // snapshot, whose entries name each key's current write, so that
                        // expiries from here on are still recorded for them.
                        {
                            let mut watched = shared.watched.lock().unwrap();
                            watched.incomplete = true;
                            watched.last_put.clear();
                        }
                        match store.watch(&everything, WatchStart::Snapshot).await {
                            Ok(live) => live,
                            Err(_) => return,
                        }
                    }
                };
            }
        }
    }
}

/// The expiry operations for the clients' `operations`: each expiry the watcher saw of a key
/// in `touched`, and, when the record is `incomplete`, a possible expiry for every TTL write
/// whose expiry it did not see, acknowledged or of unknown outcome.
pub(super) fn operations(
    operations: &[Operation],
    touched: &HashSet<String>,
    watched: &Watched,
    incomplete: bool,
) -> Vec<Operation> {
    // The call of the write that expired opens the expiry's window.
    let written_at: HashMap<(&str, Revision), u64> = operations
        .iter()
        .filter_map(|op| match op.output {
            Output::Written(revision) => Some(((op.key.as_str(), revision), op.call)),
            _ => None,
        })
        .collect();
    let mut expiries = Vec::new();
    for (key, written, revision, seen) in &watched.expiries {
        if !touched.contains(key) {
            continue;
        }
        // A write with an unknown outcome has no revision on record; its expiry's window
        // then opens at the start of the recording.
        let call = written_at
            .get(&(key.as_str(), *written))
            .copied()
            .unwrap_or(0);
        expiries.push(Operation {
            client: u64::MAX - expiries.len() as u64,
            call,
            ret: Some(*seen),
            key: key.clone(),
            input: Input::Expire {
                written: *written,
                revision: Some(*revision),
            },
            output: Output::Expired,
        });
    }
    if incomplete {
        // The watcher may have missed expiries: every TTL write whose expiry was not seen
        // may have expired, but not before its TTL had passed since its call (an entry never
        // disappears before its TTL, and a write applies after its call), so an early expiry
        // still fails.
        let seen: HashSet<(&str, Revision)> = watched
            .expiries
            .iter()
            .map(|(key, written, ..)| (key.as_str(), *written))
            .collect();
        for op in operations {
            let Input::Put {
                value,
                ttl: Some(ttl),
                ..
            } = &op.input
            else {
                continue;
            };
            let input = match op.output {
                Output::Written(written) if !seen.contains(&(op.key.as_str(), written)) => {
                    Input::Expire {
                        written,
                        revision: None,
                    }
                }
                // The write may have applied at a revision nobody was told; if the watcher
                // saw its expiry, this one cannot apply too (the value is gone), so it is
                // harmless.
                _ if op.is_ambiguous() => Input::ExpireOf {
                    value: value.clone(),
                },
                _ => continue,
            };
            expiries.push(Operation {
                client: u64::MAX - expiries.len() as u64,
                call: op.call + ttl.as_nanos() as u64,
                ret: None,
                key: op.key.clone(),
                input,
                output: Output::Unknown,
            });
        }
    }
    expiries
}
