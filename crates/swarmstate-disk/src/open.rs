//! Opening a data directory: the lock, the data file (made whole before it is given its name,
//! so a file with that name is never legitimately empty), its format, and everything it holds,
//! read back into what the engine restores.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend};
use swarmstate_core::backend::Persisted;
use swarmstate_core::{Error, Result};

use crate::layout::{
    ENTRIES, FORMAT, FORMAT_KEY, HISTORY, META, REMEMBERED, Undecodable, decode_change,
    decode_entry, decode_remembered,
};

/// The data file's name inside the data directory.
pub(crate) const DATA_FILE: &str = "data.redb";

/// What an open read back.
pub(crate) struct Loaded {
    pub(crate) db: Database,
    pub(crate) persisted: Persisted,
    pub(crate) history_from: u64,
    pub(crate) remembered_from: Option<u64>,
}

/// Where the data lives: the directory's file, or a storage backend the caller gave.
pub(crate) enum Storage {
    File,
    Backend(Box<dyn StorageBackendBox>),
}

/// A storage backend behind a box (redb takes it by value).
pub(crate) trait StorageBackendBox: Send {
    fn is_empty(&self) -> std::io::Result<bool>;

    fn open(
        self: Box<Self>,
        builder: &redb::Builder,
    ) -> std::result::Result<Database, redb::DatabaseError>;
}

impl<S: StorageBackend> StorageBackendBox for S {
    fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }

    fn open(
        self: Box<Self>,
        builder: &redb::Builder,
    ) -> std::result::Result<Database, redb::DatabaseError> {
        builder.create_with_backend(*self)
    }
}

/// An error about the data file, naming it.
pub(crate) fn corrupt(file: &Path, message: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        what: file.display().to_string(),
        message: message.to_string(),
    }
}

fn io_error(what: String, err: std::io::Error) -> Error {
    Error::Backend {
        source: Arc::new(std::io::Error::new(err.kind(), format!("{what}: {err}"))),
    }
}

fn builder(cache_bytes: usize) -> redb::Builder {
    let mut builder = redb::Builder::new();
    // Reads are served from memory; the cache holds what the writer touches.
    builder.set_cache_size(cache_bytes);
    // A file altered since it was written fails with an error instead of being trusted.
    builder.set_check_integrity_on_open(true);
    builder
}

/// Opens (or makes) the data file and reads everything back. Blocking.
pub(crate) fn open_file(dir: &Path, storage: Storage, cache_bytes: usize) -> Result<Loaded> {
    let file = dir.join(DATA_FILE);
    let builder = builder(cache_bytes);
    let db = match storage {
        Storage::Backend(backend) => {
            let new = backend
                .is_empty()
                .map_err(|err| io_error(format!("reading {}", file.display()), err))?;
            let db = backend
                .open(&builder)
                .map_err(|err| database_error(&file, err))?;
            if new {
                init(&db).map_err(|err| corrupt(&file, err))?;
            }
            db
        }
        Storage::File => {
            if !file.exists() {
                make_file(&file, &builder)?;
            }
            let len = fs::metadata(&file)
                .map_err(|err| io_error(format!("reading {}", file.display()), err))?
                .len();
            if len == 0 {
                return Err(corrupt(
                    &file,
                    "the file is empty (it was truncated or never written)",
                ));
            }
            builder
                .open(&file)
                .map_err(|err| database_error(&file, err))?
        }
    };
    load(db, &file)
}

// Makes a new data file under a temporary name and renames it into place once it holds its
// format record and is synced, so that a crash mid-way leaves no file with the data file's
// name.
fn make_file(file: &Path, builder: &redb::Builder) -> Result<()> {
    let partial = file.with_extension("redb.new");
    let _ = fs::remove_file(&partial);
    let io = |what: &str, err| io_error(format!("{what} {}", partial.display()), err);
    {
        let db = builder
            .create(&partial)
            .map_err(|err| database_error(&partial, err))?;
        init(&db).map_err(|err| corrupt(&partial, err))?;
    }
    File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(|err| io("syncing", err))?;
    fs::rename(&partial, file).map_err(|err| io("renaming", err))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|err| io_error(format!("syncing the directory {}", dir.display()), err))
}

fn init(db: &Database) -> std::result::Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        txn.open_table(META)?.insert(FORMAT_KEY, FORMAT)?;
        txn.open_table(ENTRIES)?;
        txn.open_table(HISTORY)?;
        txn.open_table(REMEMBERED)?;
    }
    txn.commit()?;
    Ok(())
}

fn database_error(file: &Path, err: redb::DatabaseError) -> Error {
    match err {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Unavailable {
            message: format!("{} is already open", file.display()),
        },
        // What redb reads past the end of, or does not recognise, is damage, not I/O.
        redb::DatabaseError::Storage(redb::StorageError::Io(err))
            if err.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            corrupt(file, format!("the file is truncated ({err})"))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(err))
            if err.kind() == std::io::ErrorKind::InvalidData =>
        {
            corrupt(file, format!("the file is not a redb database ({err})"))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(err)) => {
            io_error(format!("opening {}", file.display()), err)
        }
        redb::DatabaseError::UpgradeRequired(version) => corrupt(
            file,
            format!("the file has redb's format {version}, which this version cannot read"),
        ),
        other => corrupt(file, format!("the file cannot be opened: {other}")),
    }
}

// Reads the whole file into what the engine restores: entries, history (whose last revision
// is the revision counter), idempotency records.
fn load(db: Database, file: &Path) -> Result<Loaded> {
    let bad = |err: redb::Error| corrupt(file, err);
    let undecodable = |err: Undecodable| corrupt(file, err.0);
    let txn = db.begin_read().map_err(|err| bad(err.into()))?;
    let missing = |table: &str, err: redb::TableError| match err {
        redb::TableError::TableDoesNotExist(_) => corrupt(
            file,
            format!("not a swarmstate data file: it has no {table} table"),
        ),
        other => bad(other.into()),
    };
    let meta = txn.open_table(META).map_err(|err| missing("meta", err))?;
    match meta.get(FORMAT_KEY).map_err(|err| bad(err.into()))? {
        Some(format) if format.value() == FORMAT => {}
        Some(format) => {
            return Err(corrupt(
                file,
                format!(
                    "the file's format is {}; this version reads format {FORMAT} only",
                    format.value()
                ),
            ));
        }
        None => {
            return Err(corrupt(
                file,
                "not a swarmstate data file: it has no format record",
            ));
        }
    }
    let mut persisted = Persisted::default();
    let entries = txn
        .open_table(ENTRIES)
        .map_err(|err| missing("entries", err))?;
    for row in entries.iter().map_err(|err| bad(err.into()))? {
        let (key, record) = row.map_err(|err| bad(err.into()))?;
        persisted
            .entries
            .push(decode_entry(key.value(), record.value()).map_err(undecodable)?);
    }
    let history = txn
        .open_table(HISTORY)
        .map_err(|err| missing("history", err))?;
    let mut history_from = 0;
    for row in history.iter().map_err(|err| bad(err.into()))? {
        let (revision, record) = row.map_err(|err| bad(err.into()))?;
        if history_from == 0 {
            history_from = revision.value();
        }
        persisted
            .history
            .push(decode_change(revision.value(), record.value()).map_err(undecodable)?);
    }
    persisted.last_revision = persisted.history.last().map(|change| change.revision());
    let remembered = txn
        .open_table(REMEMBERED)
        .map_err(|err| missing("remembered", err))?;
    let mut remembered_from = None;
    for row in remembered.iter().map_err(|err| bad(err.into()))? {
        let (record, revision) = row.map_err(|err| bad(err.into()))?;
        let (at, key, id) = record.value();
        remembered_from.get_or_insert(at);
        persisted
            .remembered
            .push(decode_remembered(at, key, id, revision.value()).map_err(undecodable)?);
    }
    drop((meta, entries, history, remembered));
    drop(txn);
    if persisted.last_revision.is_none() && !persisted.entries.is_empty() {
        return Err(corrupt(
            file,
            "entries are stored but no history records their revisions",
        ));
    }
    Ok(Loaded {
        db,
        persisted,
        history_from,
        remembered_from,
    })
}

/// The data file of `dir`.
pub(crate) fn data_file(dir: &Path) -> PathBuf {
    dir.join(DATA_FILE)
}
