//! One process per data directory: an exclusive lock on `DIR/LOCK`, which holds the holder's
//! process id so that a second opener can name it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use swarmstate_core::{Error, Result};

/// The lock's file name inside the data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// The held lock: released when dropped (the OS releases it too if the process dies).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock of `dir`, or fails at once naming the process that holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let io = |what: &str, err: std::io::Error| Error::Backend {
            source: std::sync::Arc::new(std::io::Error::new(
                err.kind(),
                format!("{what} {}: {err}", path.display()),
            )),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| io("opening the lock file", err))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_owned(),
                    pid if pid
                        .parse::<u32>()
                        .is_ok_and(|pid| pid == std::process::id()) =>
                    {
                        format!("this process ({pid}; close the other store first)")
                    }
                    pid => format!("process {pid}"),
                };
                return Err(Error::Unavailable {
                    message: format!(
                        "the data directory {} is in use by {holder} (lock file {})",
                        dir.display(),
                        path.display()
                    ),
                });
            }
            Err(TryLockError::Error(err)) => return Err(io("locking", err)),
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|err| io("writing the lock file", err))?;
        Ok(DirLock { _file: file })
    }
}
