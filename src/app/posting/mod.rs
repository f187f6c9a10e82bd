//! Posting: where each bot's posts go (routes, credentials, `aviary auth`), its schedule,
//! and, in the files beside this one, the queue operations (`queue`), the scheduler and
//! `post-now` (`scheduler`), what they report (`events`) and the one-poster-per-home lock
//! (`lock`). Combines the store, the schedule and an [`XApi`] (X itself, or the dry-run
//! outbox).
//!
//! Every post takes committed steps: claim (queued → sending), send, record (→ posted with
//! the id, or back to queued, or failed with the reason). An entry found in `sending` (after
//! a crash, or after an answer that was lost) is never sent again blindly: the account's
//! recent tweets are read first, and it is marked posted if it is there. One process posts
//! per home at a time (a lock file), so no two senders race on one entry.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use super::bots::find_bot;
use super::{Config, Home};
use crate::schedule::{Clock, Schedule};
use crate::store::{Bot, Store};
use crate::twitter::credentials::BotKeys;
use crate::twitter::{auth, Credentials, HttpApi, Outbox, XApi};
use crate::{Error, Result};

mod events;
mod lock;
mod queue;
mod scheduler;

use events::first_line;
pub use events::PostEvent;
pub use lock::PostingLock;
pub(super) use queue::enqueue_in;
pub(in crate::app) use queue::summarize;
use queue::{anchor, entry, posted_on_day};
pub use queue::{move_to, queue_text, remove, retry, summary, tweet_text, QueueSummary};
pub use scheduler::{post_now, run_scheduler, RunOptions};

/// RFC 3339, seconds, `Z`: the one form times take in the queue table (compared as text).
pub fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_stamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Where a bot's posts go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// To X, as the account whose tokens the credentials hold.
    Live,
    /// To the outbox file; the reason says why (no credentials, or `--dry-run`).
    DryRun(String),
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Live => f.write_str("live"),
            Mode::DryRun(why) => write!(f, "dry run ({why})"),
        }
    }
}

/// Everything posting needs besides the store.
pub struct PostingSetup<'a> {
    /// The aviary home (outbox, credentials, lock).
    pub home: &'a Home,
    /// Settings (`[x]`, `[schedule]`).
    pub config: &'a Config,
    /// Post to the outbox even where credentials exist.
    pub force_dry_run: bool,
}

/// The credentials, read again only when the file changes (its modification time or size):
/// a screen that refreshes every few seconds need not re-read and re-parse it each time.
#[derive(Default)]
pub struct CredentialsCache {
    /// The file's stamp when last read, and what was read (`None`: not read yet).
    read: Option<(FileStamp, Option<Credentials>)>,
}

/// A file's modification time and size (`None`: no file).
type FileStamp = Option<(std::time::SystemTime, u64)>;

impl CredentialsCache {
    /// The credentials `setup` posts with, from the file as it is now.
    pub fn get(&mut self, setup: &PostingSetup) -> Result<Option<&Credentials>> {
        let path = setup.home.credentials_path()?;
        let stamp = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if self.read.as_ref().is_none_or(|(seen, _)| *seen != stamp) {
            self.read = Some((stamp, setup.credentials()?));
        }
        Ok(self.read.as_ref().and_then(|(_, c)| c.as_ref()))
    }
}

/// How one bot posts: its keys when live.
pub struct Route {
    /// Live or dry run, and why.
    pub mode: Mode,
    /// The keys, when live.
    keys: Option<BotKeys>,
}

impl<'a> PostingSetup<'a> {
    /// Posting from `home` with `config`: live where a bot has keys, unless `force_dry_run`.
    pub fn new(home: &'a Home, config: &'a Config, force_dry_run: bool) -> Self {
        PostingSetup {
            home,
            config,
            force_dry_run,
        }
    }

    /// The credentials to post with (`None` with `--dry-run`): read once, used for every bot.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        if self.force_dry_run {
            return Ok(None);
        }
        Credentials::load(&self.home.credentials_path()?).map(Some)
    }

    /// Where bot `bot`'s posts go, given `creds` from [`PostingSetup::credentials`].
    pub fn route(&self, creds: Option<&Credentials>, bot: &str) -> Route {
        match creds.map(|c| c.for_bot(bot)) {
            None => Route {
                mode: Mode::DryRun("--dry-run".into()),
                keys: None,
            },
            Some(None) => Route {
                mode: Mode::DryRun(format!(
                    "no credentials for `{bot}`: run `aviary auth {bot}`"
                )),
                keys: None,
            },
            Some(Some(keys)) => Route {
                mode: Mode::Live,
                keys: Some(keys),
            },
        }
    }

    /// The client for bot `bot` along `route`: X when live, else the outbox.
    pub fn api(&self, bot: &str, route: &Route) -> Result<Box<dyn XApi>> {
        Ok(match &route.keys {
            Some(keys) => Box::new(HttpApi::new(
                &self.config.x.api_base,
                keys,
                Duration::from_secs(self.config.x.timeout_seconds.max(1)),
            )?),
            None => Box::new(Outbox::new(&self.home.outbox_path(), bot)),
        })
    }

    /// The client for bot `bot`, and whether it is live.
    pub fn api_for(&self, bot: &str) -> Result<(Box<dyn XApi>, Mode)> {
        let route = self.route(self.credentials()?.as_ref(), bot);
        Ok((self.api(bot, &route)?, route.mode))
    }
}

/// What `aviary auth` achieved.
pub struct Authorized {
    /// The account's handle, as X reported it.
    pub username: Option<String>,
    /// The credentials file the tokens went to.
    pub path: std::path::PathBuf,
}

/// The PIN-based OAuth flow for bot `bot`: `ask_pin` shows the authorisation page's URL and
/// returns the PIN the user typed; the account's tokens go into the credentials file (0600).
pub fn authorize(
    home: &Home,
    config: &Config,
    bot: &str,
    ask_pin: impl FnOnce(&str) -> Result<String>,
) -> Result<Authorized> {
    find_bot(&home.open_store()?, bot)?;
    let path = home.credentials_path()?;
    let creds = Credentials::load(&path)?;
    let app = creds.app.clone().ok_or_else(|| {
        Error::invalid(
            "no X app keys: aviary needs the app's consumer key and secret first",
            format!(
                "set AVIARY_X_CONSUMER_KEY and AVIARY_X_CONSUMER_SECRET, or write them as \
                 [app] consumer_key / consumer_secret in {} (mode 0600)",
                path.display()
            ),
        )
    })?;
    let timeout = Duration::from_secs(config.x.timeout_seconds.max(1));
    let pending = auth::begin(&config.x.api_base, &app, timeout)?;
    let pin = ask_pin(&pending.authorize_url)?;
    if pin.trim().is_empty() {
        return Err(Error::invalid("no PIN typed", "run `aviary auth` again"));
    }
    let account = pending.finish(&pin, timeout)?;
    let username = account.username.clone();
    // Save the file's own contents (not the environment's keys) plus the new tokens.
    let mut file = Credentials::read_file(&path)?;
    file.bots.insert(bot.to_string(), account);
    if file.app.is_none() && std::env::var_os("AVIARY_X_CONSUMER_KEY").is_none() {
        file.app = Some(app);
    }
    file.save(&path)?;
    Ok(Authorized { username, path })
}

/// The schedule bot `bot` posts by: its own, else the config's.
pub fn schedule_of(config: &Config, bot: &Bot) -> Result<Schedule> {
    match &bot.schedule {
        None => Ok(config.schedule.clone()),
        Some(json) => serde_json::from_str(json).map_err(|e| {
            Error::invalid(
                format!("bot `{}` has an unreadable schedule ({e})", bot.name),
                format!("set it again with `aviary schedule set {} ...`", bot.name),
            )
        }),
    }
}

/// Changes bot `name`'s schedule with `key=value` pairs (checked before it is stored).
pub fn set_schedule(
    config: &Config,
    store: &mut Store,
    name: &str,
    kv: &[String],
) -> Result<Schedule> {
    let bot = find_bot(store, name)?;
    let mut s = schedule_of(config, &bot)?;
    for pair in kv {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::invalid(
                format!("`{pair}` is not key=value"),
                "e.g. `aviary schedule set BOT slots=09:00,18:00 jitter=15m timezone=Europe/Berlin`",
            )
        })?;
        s.set(k.trim(), v)?;
    }
    s.plan(bot.id.0 as u64)?;
    let json = serde_json::to_string(&s).expect("a schedule serialises");
    store.write(|w| w.set_schedule(bot.id, &json))?;
    Ok(s)
}

/// The planned slots of bot `name` on local day `day` (default: today in its time zone),
/// for `aviary schedule show`.
pub fn day_plan(
    config: &Config,
    store: &Store,
    name: &str,
    day: Option<NaiveDate>,
    clock: &dyn Clock,
) -> Result<(Schedule, Vec<DateTime<Utc>>, chrono_tz::Tz)> {
    let bot = find_bot(store, name)?;
    let s = schedule_of(config, &bot)?;
    let plan = s.plan(bot.id.0 as u64)?;
    let day = day.unwrap_or_else(|| plan.local_date(clock.now()));
    Ok((s, plan.day(day), plan.timezone()))
}
