//! The session: what one run of aviary works in, opened once per process by `main` and handed
//! to the face it picks: the home, the config and the file it came from, the store (opened on
//! first use, so that `bench` or `train --corpus` never create a database), the clock posting
//! reads the time from, and the credentials (re-read only when their file changes).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::overview::{overview_with, BotOverview};
use super::posting::{CredentialsCache, PostingSetup, QueueSummary};
use super::{Config, Home};
use crate::schedule::{Clock, SystemClock};
use crate::store::Store;
use crate::Result;

/// A run's home, config, store, clock and credentials.
pub struct Session {
    home: Home,
    config: Config,
    config_path: Option<PathBuf>,
    store: Option<Store>,
    clock: Arc<dyn Clock + Send + Sync>,
    credentials: CredentialsCache,
}

/// A session's parts borrowed at once: the store open beside the home, config and clock.
pub struct Parts<'a> {
    /// The aviary home.
    pub home: &'a Home,
    /// The settings.
    pub config: &'a Config,
    /// The database, open.
    pub store: &'a mut Store,
    /// The clock posting reads.
    pub clock: &'a dyn Clock,
}

impl<'a> Parts<'a> {
    /// How posts go out: live where a bot has keys, to the outbox only with `dry_run`.
    pub fn posting(&self, dry_run: bool) -> PostingSetup<'a> {
        PostingSetup::new(self.home, self.config, dry_run)
    }
}

impl Session {
    /// A session in `home` with `config` (read from `config_path`, when one was named: the
    /// scheduler service started from this session reads the same file), on the machine's clock.
    pub fn open(home: Home, config: Config, config_path: Option<PathBuf>) -> Session {
        Session {
            home,
            config,
            config_path,
            store: None,
            clock: Arc::new(SystemClock),
            credentials: CredentialsCache::default(),
        }
    }

    /// The same session reading the time from `clock` (tests).
    pub fn with_clock(mut self, clock: impl Clock + Send + Sync + 'static) -> Session {
        self.clock = Arc::new(clock);
        self
    }

    /// A session for a job on a thread of its own: the same home, config and clock, with a
    /// connection to the store of its own.
    pub fn for_job(&self) -> Session {
        Session {
            home: self.home.clone(),
            config: self.config.clone(),
            config_path: self.config_path.clone(),
            store: None,
            clock: Arc::clone(&self.clock),
            credentials: CredentialsCache::default(),
        }
    }

    /// The aviary home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The `--config` file named, if any.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The clock posting reads the time from.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// The database, opened (and the home created) on first use.
    pub fn store(&mut self) -> Result<&mut Store> {
        opened(&mut self.store, &self.home)
    }

    /// The store, opened on first use, beside the home, config and clock.
    pub fn parts(&mut self) -> Result<Parts<'_>> {
        Ok(Parts {
            store: opened(&mut self.store, &self.home)?,
            home: &self.home,
            config: &self.config,
            clock: self.clock.as_ref(),
        })
    }

    /// Every bot with its queue summary, from one pass over the store; the credentials are
    /// read again only when their file changed since the last call (the TUI asks every few
    /// seconds).
    pub fn overview(&mut self) -> Result<Vec<(BotOverview, QueueSummary)>> {
        let store = opened(&mut self.store, &self.home)?;
        let setup = PostingSetup::new(&self.home, &self.config, false);
        let credentials = self.credentials.get(&setup)?;
        overview_with(&setup, credentials, store, self.clock.as_ref())
    }
}

/// The store in `slot`, opened from `home` if it is not yet.
fn opened<'a>(slot: &'a mut Option<Store>, home: &Home) -> Result<&'a mut Store> {
    if slot.is_none() {
        *slot = Some(home.open_store()?);
    }
    Ok(slot.as_mut().expect("opened above"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::bots;

    #[test]
    fn the_store_opens_on_first_use_and_a_job_has_its_own_connection() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(dir.path().join("home"))).unwrap();
        let mut session = Session::open(home, Config::default(), None);
        // `aviary bench` or `train --corpus` never ask for the store: nothing is created.
        assert!(!session.home().db_path().exists());
        assert!(session.store().unwrap().bots().unwrap().is_empty());
        assert!(session.home().db_path().exists());
        // A job's session writes through a connection of its own; the app reads it back.
        let mut job = session.for_job();
        let p = job.parts().unwrap();
        bots::new_bot(p.store, p.config, "from_a_job", None).unwrap();
        let names: Vec<String> = bots::list_bots(session.store().unwrap())
            .unwrap()
            .into_iter()
            .map(|(b, _)| b.name)
            .collect();
        assert_eq!(names, ["from_a_job"]);
    }
}
