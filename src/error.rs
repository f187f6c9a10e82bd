//! The crate's error type: every failure says what went wrong, where, and what to try next.
//!
//! Engine and parts return [`Error`]; only `main.rs` turns it into a process exit.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in aviary, with the file or cause named.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, unsupported device, ...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A checkpoint is missing, truncated, foreign or does not match what was asked.
    #[error("checkpoint {}: {problem}\nHINT: {hint}", path.display())]
    Checkpoint {
        /// The checkpoint file (or directory) at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What the user can do about it.
        hint: String,
    },

    /// A corpus file cannot be used.
    #[error("corpus {}: {problem}\nHINT: {hint}", path.display())]
    Corpus {
        /// The corpus file at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What the user can do about it.
        hint: String,
    },

    /// The database cannot be used as it is (foreign, corrupt, newer than this aviary).
    #[error("database {}: {problem}\nHINT: {hint}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What the user can do about it.
        hint: String,
    },

    /// A database operation failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),

    /// A configuration file or setting is invalid.
    #[error("config: {problem}\nHINT: {hint}")]
    Config {
        /// What is wrong.
        problem: String,
        /// What the user can do about it.
        hint: String,
    },

    /// A request that makes no sense for the given model or data (empty prime, bad top-p, ...).
    #[error("{problem}\nHINT: {hint}")]
    Invalid {
        /// What is wrong.
        problem: String,
        /// What the user can do about it.
        hint: String,
    },
}

/// Result with aviary's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A checkpoint error on `path`.
    pub fn checkpoint(
        path: impl AsRef<Path>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Checkpoint {
            path: path.as_ref().to_path_buf(),
            problem: problem.into(),
            hint: hint.into(),
        }
    }

    /// A corpus error on `path`.
    pub fn corpus(
        path: impl AsRef<Path>,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Error::Corpus {
            path: path.as_ref().to_path_buf(),
            problem: problem.into(),
            hint: hint.into(),
        }
    }

    /// An invalid request.
    pub fn invalid(problem: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Invalid {
            problem: problem.into(),
            hint: hint.into(),
        }
    }
}
