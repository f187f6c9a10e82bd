//! The posting lock: one process posts from a home at a time.

use std::fs::File;

use super::super::Home;
use crate::{Error, Result};

/// Only one process posts from a home at a time: the lock is held while it runs and freed
/// by the system when the process ends, however it ends.
pub struct PostingLock {
    _file: File,
}

impl PostingLock {
    /// Whether another process posts from `home` now (a running `aviary schedule run`).
    pub fn is_held(home: &Home) -> bool {
        let path = home.root().join("posting.lock");
        match std::fs::File::open(&path) {
            // Taking it for a moment tells; dropping the file frees it again.
            Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            Err(_) => false,
        }
    }

    /// Takes the lock or says who holds it.
    pub fn take(home: &Home) -> Result<PostingLock> {
        std::fs::create_dir_all(home.root()).map_err(|e| Error::io(home.root(), e))?;
        let path = home.root().join("posting.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(PostingLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::invalid(
                "another aviary process is posting from this home (`aviary schedule run`?)",
                "stop it first, or let it post: it sends queued entries in their slots",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}
