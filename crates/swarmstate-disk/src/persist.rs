//! The engine's persistence on redb: each group commit is one write transaction, committed
//! with `Durability::Immediate` (one fdatasync) before the engine applies or acknowledges
//! anything of it.

use std::path::PathBuf;

use redb::{Database, Durability, ReadableTable};
use swarmstate_core::backend::{Change, Commit, Persistence};
use swarmstate_core::{Error, Result};

use crate::layout::{ENTRIES, HISTORY, REMEMBERED, encode_change, encode_entry};
use crate::lock::DirLock;

/// Writes group commits into the data file. Owned by the engine's writer: one commit at a
/// time, in revision order.
#[derive(Debug)]
pub(crate) struct RedbPersistence {
    db: Database,
    // Released after the database is closed (fields drop in order).
    _lock: DirLock,
    file: PathBuf,
    // The oldest revision the history table holds, 0 if it is empty: history before the
    // engine's oldest kept change is dropped from here up.
    history_from: u64,
    // The time of the oldest idempotency record in the table, if any.
    remembered_from: Option<u64>,
    // Reused record buffers.
    entry: Vec<u8>,
    change: Vec<u8>,
}

impl RedbPersistence {
    pub(crate) fn new(
        db: Database,
        lock: DirLock,
        file: PathBuf,
        history_from: u64,
        remembered_from: Option<u64>,
    ) -> Self {
        RedbPersistence {
            db,
            _lock: lock,
            file,
            history_from,
            remembered_from,
            entry: Vec::new(),
            change: Vec::new(),
        }
    }

    fn write(&mut self, commit: &Commit<'_>) -> std::result::Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut history = txn.open_table(HISTORY)?;
            for change in &commit.changes.changes {
                match change {
                    Change::Put {
                        key,
                        value,
                        revision,
                        expires_at,
                    } => {
                        encode_entry(&mut self.entry, *revision, *expires_at, value);
                        entries.insert(key.as_str(), self.entry.as_slice())?;
                    }
                    Change::Delete { key, .. } | Change::Expire { key, .. } => {
                        entries.remove(key.as_str())?;
                    }
                }
                encode_change(&mut self.change, change);
                history.insert(change.revision().get(), self.change.as_slice())?;
            }
            if self.history_from == 0
                && let Some(first) = commit.changes.changes.first()
            {
                self.history_from = first.revision().get();
            }
            if let Some(oldest) = commit.oldest_kept
                && self.history_from < oldest.get()
            {
                history.retain_in(self.history_from..oldest.get(), |_, _| false)?;
                self.history_from = oldest.get();
            }
        }
        let forget_before = commit.forget_before.as_nanos();
        let forget = self
            .remembered_from
            .is_some_and(|from| from < forget_before);
        if forget || !commit.changes.remembered.is_empty() {
            let mut remembered = txn.open_table(REMEMBERED)?;
            for record in &commit.changes.remembered {
                remembered.insert(
                    (
                        record.at.as_nanos(),
                        record.key.as_str(),
                        record.idempotency_key.as_str(),
                    ),
                    record.revision.get(),
                )?;
            }
            if forget {
                remembered.retain_in((0, "", "")..(forget_before, "", ""), |_, _| false)?;
            }
            self.remembered_from = remembered.first()?.map(|(key, _)| key.value().0);
        }
        txn.commit()?;
        Ok(())
    }
}

impl Persistence for RedbPersistence {
    fn backend(&self) -> &'static str {
        "disk"
    }

    fn durable(&self) -> bool {
        true
    }

    fn persist(&mut self, commit: &Commit<'_>) -> Result<()> {
        self.write(commit).map_err(|err| Error::Backend {
            source: std::sync::Arc::new(std::io::Error::other(format!(
                "committing to {}: {err}",
                self.file.display()
            ))),
        })
    }
}
