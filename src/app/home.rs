//! The aviary home: the folder holding a user's database and bots' checkpoints. By default the
//! platform's data directory (`~/.local/share/aviary` on Linux); `--home DIR` or `AVIARY_HOME`
//! put it elsewhere. Never inside the repository.

use std::path::{Path, PathBuf};

use crate::store::{Store, DB_FILE};
use crate::{Error, Result};

/// Where a user's state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
    /// Whether the user named it (then the credentials file lives in it too).
    explicit: bool,
}

impl Home {
    /// `explicit` (from `--home` or `AVIARY_HOME`), else the platform's data directory.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Home> {
        let named = explicit.is_some();
        let root = match explicit {
            Some(p) => p,
            None => directories::ProjectDirs::from("", "", "aviary")
                .map(|d| d.data_dir().to_path_buf())
                .ok_or_else(|| {
                    Error::invalid(
                        "cannot find a home directory for aviary's data",
                        "pass --home DIR or set AVIARY_HOME",
                    )
                })?,
        };
        Ok(Home {
            root,
            explicit: named,
        })
    }

    /// Whether the user named it (`--home`, `AVIARY_HOME`).
    pub fn is_explicit(&self) -> bool {
        self.explicit
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }

    /// A bot's own folder (its checkpoints).
    pub fn bot_dir(&self, name: &str) -> PathBuf {
        self.root.join("bots").join(name)
    }

    /// The credentials file: `AVIARY_CREDENTIALS`, else `credentials.toml` in a home named
    /// with `--home`/`AVIARY_HOME`, else in the platform's config directory.
    pub fn credentials_path(&self) -> Result<PathBuf> {
        crate::twitter::credentials::default_path(self.explicit.then_some(self.root.as_path()))
    }

    /// The dry-run outbox: where posts go instead of X.
    pub fn outbox_path(&self) -> PathBuf {
        self.root.join("outbox.jsonl")
    }

    /// Opens the database, creating the home and the database on first use.
    pub fn open_store(&self) -> Result<Store> {
        Store::open(&self.db_path())
    }
}
