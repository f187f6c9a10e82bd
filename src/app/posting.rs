//! Posting: the queue operations (add, remove, move, retry), `post-now`, and the scheduler
//! that posts each bot's queue in its slots. Combines the store, the schedule and an
//! [`XApi`] (X itself, or the dry-run outbox).
//!
//! Every post takes committed steps: claim (queued → sending), send, record (→ posted with
//! the id, or back to queued, or failed with the reason). An entry found in `sending` (after
//! a crash, or after an answer that was lost) is never sent again blindly: the account's
//! recent tweets are read first, and it is marked posted if it is there. One process posts
//! per home at a time (a lock file), so no two senders race on one entry.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

use super::bots::find_bot;
use super::{Config, Home};
use crate::generate::MAX_TWEET_CHARS;
use crate::schedule::{backoff, Clock, Plan, Schedule};
use crate::store::{Bot, BotId, QueueRow, QueueStatus, Store, Writer};
use crate::twitter::credentials::BotKeys;
use crate::twitter::{
    auth, comparable_text, ApiError, Credentials, Delivery, HttpApi, Outbox, TimelineQuery, XApi,
};
use crate::{Error, Result};

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

/// How one bot posts: its keys when live.
pub struct Route {
    /// Live or dry run, and why.
    pub mode: Mode,
    /// The keys, when live.
    keys: Option<BotKeys>,
}

impl PostingSetup<'_> {
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

/// The checked text of a tweet to queue.
fn tweet_text(text: &str) -> Result<String> {
    let t = text.trim();
    let n = t.chars().count();
    if n == 0 || n > MAX_TWEET_CHARS {
        return Err(Error::invalid(
            format!("a tweet must have 1 to {MAX_TWEET_CHARS} characters, not {n}"),
            "shorten the text",
        ));
    }
    Ok(t.to_string())
}

/// Refuses `text` if any bot has it queued, being sent, or posted: X forbids posting the
/// same content from several accounts, and one account cannot post it twice.
fn refuse_duplicate(w: &Writer, text: &str) -> Result<()> {
    if let Some(e) = w.live_entry_with_text(text)? {
        return Err(Error::invalid(
            format!(
                "bot `{}` already has this text {} (queue entry {})",
                e.bot, e.status, e.id
            ),
            "X forbids the same post from several accounts or twice from one; edit it first",
        ));
    }
    Ok(())
}

/// Adds `text` (checked, and refused if already queued or posted by any bot) to the end of
/// `bot`'s queue, from candidate `candidate` if given; returns the entry's id. Runs in the
/// caller's transaction.
pub(super) fn enqueue_in(
    w: &Writer,
    bot: BotId,
    candidate: Option<i64>,
    text: &str,
) -> Result<i64> {
    let text = tweet_text(text)?;
    refuse_duplicate(w, &text)?;
    w.enqueue(bot, candidate, &text)
}

/// `aviary queue add BOT TEXT`: a tweet written by hand, at the end of the queue.
pub fn queue_text(store: &mut Store, name: &str, text: &str) -> Result<i64> {
    let bot = find_bot(store, name)?;
    store.write(|w| enqueue_in(w, bot.id, None, text))
}

fn entry(store: &Store, id: i64) -> Result<QueueRow> {
    store.queue_entry(id)?.ok_or_else(|| {
        Error::invalid(
            format!("there is no queue entry {id}"),
            "see the ids with `aviary queue list`",
        )
    })
}

/// `aviary queue remove ID`: takes a queued or failed entry out (its candidate goes back
/// to unreviewed). Sent and sending entries stay: they are the record of what X has.
pub fn remove(store: &mut Store, id: i64) -> Result<QueueRow> {
    let e = entry(store, id)?;
    store.write(|w| {
        if !w.dequeue(id)? {
            return Err(Error::invalid(
                format!("queue entry {id} is {}, so it stays", e.status),
                "only queued or failed entries can be removed",
            ));
        }
        if let Some(c) = e.candidate_id {
            w.set_candidate_status(e.bot_id, c, "new", None)?;
        }
        Ok(())
    })?;
    Ok(e)
}

/// `aviary queue move ID TO`: puts a queued entry at place TO (1 = next to post).
pub fn move_to(store: &mut Store, id: i64, to: usize) -> Result<()> {
    let e = entry(store, id)?;
    store.write(|w| w.move_entry(e.bot_id, id, to))
}

/// `aviary queue retry ID`: a failed entry back to the end of its queue.
pub fn retry(store: &mut Store, id: i64) -> Result<()> {
    let e = entry(store, id)?;
    store.write(|w| {
        refuse_duplicate(w, &e.text)?;
        if w.retry_failed(id)? {
            Ok(())
        } else {
            Err(Error::invalid(
                format!("queue entry {id} is {}, not failed", e.status),
                "only failed entries can be retried",
            ))
        }
    })
}

/// What the queue of one bot looks like now.
#[derive(Clone, Debug)]
pub struct QueueSummary {
    /// The bot.
    pub bot: String,
    /// Its entries: sending, queued in order, failed, posted (newest first).
    pub entries: Vec<QueueRow>,
    /// Planned posting times of the queued entries, in order (as far as slots are known).
    pub planned: Vec<DateTime<Utc>>,
    /// Where posts go.
    pub mode: Mode,
    /// Whether its schedule is on.
    pub enabled: bool,
    /// Posts a day its schedule makes (the daily cap included).
    pub posts_per_day: usize,
    /// Estimated US dollars a day at those posts (queued texts' share of links priced in).
    pub cost_per_day: f64,
}

/// Every bot's queue (or bot `name`'s), with planned times and the cost estimate.
pub fn summary(
    setup: &PostingSetup,
    store: &Store,
    name: Option<&str>,
    clock: &dyn Clock,
) -> Result<Vec<QueueSummary>> {
    let bots = match name {
        Some(n) => vec![find_bot(store, n)?],
        None => store.bots()?,
    };
    let now = clock.now();
    let creds = setup.credentials()?;
    let mut out = Vec::new();
    for bot in bots {
        let entries = store.queue(Some(bot.id))?;
        let schedule = schedule_of(setup.config, &bot)?;
        let plan = schedule.plan(bot.id.0 as u64)?;
        let mode = setup.route(creds.as_ref(), &bot.name).mode;
        let queued: Vec<&QueueRow> = entries
            .iter()
            .filter(|e| e.status == QueueStatus::Queued)
            .collect();
        let mut planned = Vec::new();
        let mut after = store
            .last_posted_at(bot.id)?
            .and_then(|s| parse_stamp(&s))
            .map_or(now, |t| t.max(now));
        let mut counts: HashMap<NaiveDate, u32> = HashMap::new();
        let posted_today = posted_on_day(store, &bot, &plan, plan.local_date(now))?;
        counts.insert(plan.local_date(now), posted_today);
        for _ in &queued {
            let Some(t) = plan.next_slot(after, |d| counts.get(&d).copied().unwrap_or(0)) else {
                break;
            };
            *counts.entry(plan.local_date(t)).or_default() += 1;
            planned.push(t);
            after = t;
        }
        let posts_per_day = plan.day(plan.local_date(now)).len();
        let with_url = queued
            .iter()
            .filter(|e| e.text.contains("http://") || e.text.contains("https://"))
            .count();
        let url_share = if queued.is_empty() {
            0.0
        } else {
            with_url as f64 / queued.len() as f64
        };
        let x = &setup.config.x;
        let per_post = x.cost_per_post * (1.0 - url_share) + x.cost_per_post_with_url * url_share;
        out.push(QueueSummary {
            bot: bot.name.clone(),
            entries,
            planned,
            mode,
            enabled: schedule.enabled,
            posts_per_day,
            cost_per_day: if schedule.enabled {
                posts_per_day as f64 * per_post
            } else {
                0.0
            },
        });
    }
    Ok(out)
}

fn posted_on_day(store: &Store, bot: &Bot, plan: &Plan, day: NaiveDate) -> Result<u32> {
    let (a, b) = plan.day_bounds(day);
    store.posted_between(bot.id, &stamp(a), &stamp(b))
}

/// What the scheduler did, for the faces to show (`aviary schedule run` logs each).
#[derive(Clone, Debug, PartialEq)]
pub enum PostEvent {
    /// A bot's posting starts.
    Ready {
        /// The bot.
        bot: String,
        /// Where its posts go.
        mode: Mode,
        /// Its next slot.
        next: Option<DateTime<Utc>>,
    },
    /// An entry was claimed and is being sent.
    Sending {
        /// The bot.
        bot: String,
        /// The entry.
        id: i64,
        /// Attempt number.
        attempt: u32,
    },
    /// Posted.
    Posted {
        /// The bot.
        bot: String,
        /// The entry.
        id: i64,
        /// X's id.
        tweet_id: String,
    },
    /// An entry left in `sending` was found on the account's timeline.
    Found {
        /// The bot.
        bot: String,
        /// The entry.
        id: i64,
        /// X's id.
        tweet_id: String,
    },
    /// An entry left in `sending` is not on the timeline: back to the queue.
    NotFound {
        /// The bot.
        bot: String,
        /// The entry.
        id: i64,
    },
    /// Sending failed in a way that may have posted it: the timeline is checked at `at`.
    CheckLater {
        /// The bot.
        bot: String,
        /// The entry.
        id: i64,
        /// When.
        at: DateTime<Utc>,
        /// What happened.
        why: String,
    },
    /// Certainly not posted; back in the queue.
    Requeued {
        /// The bot.
        bot: String,
        /// The entry.
        id: i64,
        /// What happened.
        why: String,
    },
    /// Refused for good.
    Failed {
        /// The bot.
        bot: String,
        /// The entry.
        id: i64,
        /// Why.
        why: String,
    },
    /// The bot waits for X's rate limit.
    RateLimited {
        /// The bot.
        bot: String,
        /// Until when.
        until: DateTime<Utc>,
    },
    /// The bot stops posting in this run (its credentials are refused).
    BotStopped {
        /// The bot.
        bot: String,
        /// Why, and what to do.
        why: String,
    },
    /// A slot came with nothing queued.
    EmptyQueue {
        /// The bot.
        bot: String,
    },
    /// The credentials file cannot be read now; the bots keep their routes.
    CredentialsUnreadable(String),
    /// Test hook (`AVIARY_TEST_PAUSE_AT`): the process holds still at this step.
    Holding(String),
}

fn first_line(e: &ApiError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

impl std::fmt::Display for PostEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = |t: &DateTime<Utc>| stamp(*t);
        match self {
            PostEvent::Ready { bot, mode, next } => write!(
                f,
                "{bot}: {mode}; next slot {}",
                next.as_ref().map_or("none in 8 days".into(), t)
            ),
            PostEvent::Sending { bot, id, attempt } => {
                write!(f, "{bot}: sending #{id} (attempt {attempt})")
            }
            PostEvent::Posted { bot, id, tweet_id } => {
                write!(f, "{bot}: posted #{id} as {tweet_id}")
            }
            PostEvent::Found { bot, id, tweet_id } => write!(
                f,
                "{bot}: #{id} was left sending and is on the timeline as {tweet_id}: marked posted"
            ),
            PostEvent::NotFound { bot, id } => write!(
                f,
                "{bot}: #{id} was left sending and is not on the timeline: sending it again"
            ),
            PostEvent::CheckLater { bot, id, at, why } => write!(
                f,
                "{bot}: #{id} may or may not be posted ({why}); checking the timeline at {}",
                t(at)
            ),
            PostEvent::Requeued { bot, id, why } => {
                write!(f, "{bot}: #{id} not posted ({why}); back in the queue")
            }
            PostEvent::Failed { bot, id, why } => write!(f, "{bot}: #{id} failed: {why}"),
            PostEvent::RateLimited { bot, until } => {
                write!(f, "{bot}: rate limited; waiting until {}", t(until))
            }
            PostEvent::BotStopped { bot, why } => write!(f, "{bot}: posting stopped: {why}"),
            PostEvent::EmptyQueue { bot } => {
                write!(f, "{bot}: a slot came and the queue is empty")
            }
            PostEvent::CredentialsUnreadable(why) => {
                write!(f, "credentials unreadable, bots keep their routes: {why}")
            }
            PostEvent::Holding(step) => write!(f, "holding at {step} (AVIARY_TEST_PAUSE_AT)"),
        }
    }
}

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

/// One bot's poster: its client, schedule, and what this run knows of it.
struct BotPoster {
    bot: Bot,
    /// The keys it posts with (`None`: dry run), to see a change in the credentials.
    keys: Option<BotKeys>,
    api: Box<dyn XApi>,
    plan: Plan,
    enabled: bool,
    user_id: Option<String>,
    /// Rate limited or stopped until then (`None`: go).
    blocked_until: Option<DateTime<Utc>>,
    stopped: bool,
    /// The last slot handled: the next post waits for a slot after it.
    anchor: DateTime<Utc>,
}

/// What posting one entry came to.
enum Sent {
    Done,
    Blocked,
}

/// The posting machinery over one store.
struct Posting<'a> {
    store: &'a mut Store,
    clock: &'a dyn Clock,
    max_attempts: u32,
    settle: chrono::Duration,
    retry_base: u64,
    hold_at: Option<String>,
    stop: &'a AtomicBool,
    on: &'a mut dyn FnMut(PostEvent),
    /// Whether the first sync is done (after it, unreadable credentials only say so).
    started: bool,
    /// The last complaint about the credentials, said once.
    creds_error: Option<String>,
}

impl Posting<'_> {
    /// Test hook: with `AVIARY_TEST_PAUSE_AT=step`, hold still at `step` until killed or
    /// stopped (the crash tests kill -9 the process there).
    fn hold(&mut self, step: &str) {
        if self.hold_at.as_deref() == Some(step) {
            (self.on)(PostEvent::Holding(step.to_string()));
            while !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn user_id(&mut self, p: &mut BotPoster) -> std::result::Result<String, ApiError> {
        if let Some(id) = &p.user_id {
            return Ok(id.clone());
        }
        let me = p.api.me()?;
        p.user_id = Some(me.id.clone());
        Ok(me.id)
    }

    /// Entry `id` may be on X: it stays `sending`, and the timeline is read for it at `at`.
    fn check_later(&mut self, bot: String, id: i64, at: DateTime<Utc>, why: String) -> Result<()> {
        self.store.write(|w| w.check_later(id, &stamp(at), &why))?;
        (self.on)(PostEvent::CheckLater { bot, id, at, why });
        Ok(())
    }

    /// Sends entry `e` (queued) now: claim, post, record.
    fn send(&mut self, p: &mut BotPoster, e: &QueueRow) -> Result<Sent> {
        let now = self.clock.now();
        if !self.store.write(|w| w.claim(e.id, &stamp(now)))? {
            return Ok(Sent::Done); // someone else moved it
        }
        let attempt = e.attempts + 1;
        (self.on)(PostEvent::Sending {
            bot: p.bot.name.clone(),
            id: e.id,
            attempt,
        });
        self.hold("claimed");
        let result = p.api.post(&e.text);
        let bot = p.bot.name.clone();
        match result {
            Ok(t) => {
                self.hold("answered");
                self.store
                    .write(|w| w.mark_posted(e.id, &t.id, &stamp(self.clock.now())))?;
                (self.on)(PostEvent::Posted {
                    bot,
                    id: e.id,
                    tweet_id: t.id,
                });
                self.hold("recorded");
                Ok(Sent::Done)
            }
            Err(err) if err.delivery() == Delivery::Unknown => {
                let at = self.clock.now() + backoff(attempt, self.retry_base).max(self.settle);
                self.check_later(bot, e.id, at, first_line(&err))?;
                Ok(Sent::Done)
            }
            Err(err) => self.not_posted(p, e.id, attempt, err),
        }
    }

    /// X certainly did not post entry `id`: requeue, wait, or fail it as the error says.
    fn not_posted(
        &mut self,
        p: &mut BotPoster,
        id: i64,
        attempt: u32,
        err: ApiError,
    ) -> Result<Sent> {
        let bot = p.bot.name.clone();
        let why = first_line(&err);
        let now = self.clock.now();
        match &err {
            ApiError::RateLimited { reset, .. } => {
                let until = reset
                    .unwrap_or(now + chrono::Duration::minutes(15))
                    .max(now);
                self.store.write(|w| w.release(id, None, Some(&why)))?;
                p.blocked_until = Some(until);
                (self.on)(PostEvent::RateLimited { bot, until });
                Ok(Sent::Blocked)
            }
            e if e.is_credentials() => {
                self.store.write(|w| w.release(id, None, Some(&why)))?;
                p.stopped = true;
                (self.on)(PostEvent::BotStopped {
                    bot,
                    why: err.to_string().replace('\n', " "),
                });
                Ok(Sent::Blocked)
            }
            e if e.is_transient() && attempt < self.max_attempts => {
                let at = now + backoff(attempt, self.retry_base);
                self.store
                    .write(|w| w.release(id, Some(&stamp(at)), Some(&why)))?;
                (self.on)(PostEvent::Requeued { bot, id, why });
                Ok(Sent::Blocked)
            }
            _ => {
                self.store.write(|w| w.mark_failed(id, &why))?;
                (self.on)(PostEvent::Failed { bot, id, why });
                Ok(Sent::Done)
            }
        }
    }

    /// Settles entry `e`, left in `sending`: posted if the account's timeline has it, else
    /// sent again (or failed after `max_attempts`). Leaves it for later if the timeline
    /// cannot be read.
    fn resolve(&mut self, p: &mut BotPoster, e: &QueueRow) -> Result<Sent> {
        let bot = p.bot.name.clone();
        let since = e
            .sending_since
            .as_deref()
            .and_then(parse_stamp)
            .unwrap_or_else(|| self.clock.now() - chrono::Duration::days(1));
        let query = TimelineQuery {
            max_results: 100,
            pagination_token: None,
            // Some slack for clocks that disagree with X's.
            start_time: Some(since - chrono::Duration::minutes(10)),
        };
        let page = self
            .user_id(p)
            .and_then(|uid| p.api.user_tweets(&uid, &query));
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                if let ApiError::RateLimited { reset, .. } = &err {
                    p.blocked_until = *reset;
                }
                if err.is_credentials() {
                    p.stopped = true;
                }
                let at = self.clock.now() + backoff(e.attempts.max(1), self.retry_base);
                let why = format!("cannot read the timeline: {}", first_line(&err));
                self.check_later(bot, e.id, at, why)?;
                return Ok(Sent::Blocked);
            }
        };
        let wanted = comparable_text(&e.text);
        if let Some(t) = page
            .tweets
            .iter()
            .find(|t| comparable_text(&t.text) == wanted)
        {
            let at = t
                .created_at
                .as_deref()
                .and_then(parse_stamp)
                .unwrap_or(since);
            self.store
                .write(|w| w.mark_posted(e.id, &t.id, &stamp(at)))?;
            (self.on)(PostEvent::Found {
                bot,
                id: e.id,
                tweet_id: t.id.clone(),
            });
            return Ok(Sent::Done);
        }
        if e.attempts >= self.max_attempts {
            let why = format!(
                "gave up after {} attempts: {}",
                e.attempts,
                e.error.as_deref().unwrap_or("no answer")
            );
            self.store.write(|w| w.mark_failed(e.id, &why))?;
            (self.on)(PostEvent::Failed { bot, id: e.id, why });
            return Ok(Sent::Done);
        }
        self.store
            .write(|w| w.release(e.id, None, e.error.as_deref()))?;
        (self.on)(PostEvent::NotFound { bot, id: e.id });
        let again = entry(self.store, e.id)?;
        self.send(p, &again)
    }

    /// Makes `posters` match the store's bots (those in `opts.bots`, if any) and the
    /// credentials: new bots, changed schedules and changed keys (`aviary auth` while this
    /// runs) get a poster, keeping what this run learnt of the bot; removed bots go. Says so
    /// for each change. Credentials that cannot be read stop the start, and later only say so
    /// (once) while the bots keep their routes.
    fn sync(
        &mut self,
        setup: &PostingSetup,
        opts: &RunOptions,
        posters: &mut Vec<BotPoster>,
    ) -> Result<()> {
        let now = self.clock.now();
        let creds = match setup.credentials() {
            Ok(c) => {
                self.creds_error = None;
                Some(c)
            }
            Err(e) if self.started => {
                let why = e.to_string();
                if self.creds_error.as_ref() != Some(&why) {
                    (self.on)(PostEvent::CredentialsUnreadable(why.clone()));
                    self.creds_error = Some(why);
                }
                None
            }
            Err(e) => return Err(e),
        };
        self.started = true;
        let bots: Vec<Bot> = self
            .store
            .bots()?
            .into_iter()
            .filter(|b| opts.bots.is_empty() || opts.bots.contains(&b.name))
            .collect();
        posters.retain(|p| bots.iter().any(|b| b.id == p.bot.id));
        for bot in bots {
            let old = posters.iter().position(|p| p.bot.id == bot.id);
            let route = match (&creds, old) {
                (Some(c), _) => setup.route(c.as_ref(), &bot.name),
                // Unreadable credentials: a known bot keeps its keys, a new one waits.
                (None, Some(i)) => Route {
                    mode: match posters[i].keys {
                        Some(_) => Mode::Live,
                        None => Mode::DryRun("the credentials are unreadable".into()),
                    },
                    keys: posters[i].keys.clone(),
                },
                (None, None) => continue,
            };
            let same_keys = |p: &BotPoster| p.keys.as_ref() == route.keys.as_ref();
            if old
                .is_some_and(|i| posters[i].bot.schedule == bot.schedule && same_keys(&posters[i]))
            {
                continue;
            }
            let (mut p, mode) = poster(setup, self.store, bot, route, now)?;
            if let Some(i) = old {
                let was = posters.remove(i);
                p.anchor = was.anchor;
                p.blocked_until = was.blocked_until;
                // New keys: a new account perhaps, and a stop for refused keys is over.
                if was.keys == p.keys {
                    p.user_id = was.user_id;
                    p.stopped = was.stopped && was.enabled;
                }
            }
            if !p.enabled {
                p.stopped = true;
                (self.on)(PostEvent::BotStopped {
                    why: format!(
                        "its schedule is off (`aviary schedule set {} enabled=true`)",
                        p.bot.name
                    ),
                    bot: p.bot.name.clone(),
                });
            } else {
                let next = p.plan.next_slot(p.anchor, |d| self.posted_on(&p, d));
                (self.on)(PostEvent::Ready {
                    bot: p.bot.name.clone(),
                    mode,
                    next,
                });
            }
            posters.push(p);
        }
        Ok(())
    }

    /// Entries of `p` left in `sending` whose check is due.
    fn due_sending(&self, p: &BotPoster, now: DateTime<Utc>) -> Result<Vec<QueueRow>> {
        Ok(self
            .store
            .queue_with(p.bot.id, QueueStatus::Sending)?
            .into_iter()
            .filter(|e| {
                let settled = e
                    .sending_since
                    .as_deref()
                    .and_then(parse_stamp)
                    .is_none_or(|s| s + self.settle <= now);
                let due = e
                    .next_attempt_at
                    .as_deref()
                    .and_then(parse_stamp)
                    .is_none_or(|t| t <= now);
                settled && due
            })
            .collect())
    }

    fn posted_on(&self, p: &BotPoster, day: NaiveDate) -> u32 {
        // A read error here only loosens the cap for one look; it is logged by the next write.
        posted_on_day(self.store, &p.bot, &p.plan, day).unwrap_or(0)
    }

    /// One look at bot `p`: settle what is left sending, then post if a slot is due.
    /// Returns when to look again.
    fn tick(&mut self, p: &mut BotPoster) -> Result<Option<DateTime<Utc>>> {
        let now = self.clock.now();
        if p.stopped || !p.enabled {
            return Ok(None);
        }
        if let Some(b) = p.blocked_until {
            if b > now {
                return Ok(Some(b));
            }
            p.blocked_until = None;
        }
        for e in self.due_sending(p, now)? {
            if let Sent::Blocked = self.resolve(p, &e)? {
                return Ok(p.blocked_until.or(Some(now + chrono::Duration::seconds(1))));
            }
        }
        let next = {
            let plan = p.plan.clone();
            let counts = |d: NaiveDate| self.posted_on(p, d);
            plan.next_slot(p.anchor, counts)
        };
        let Some(slot) = next else { return Ok(None) };
        if slot > now {
            return Ok(Some(slot));
        }
        let head = self
            .store
            .queue_with(p.bot.id, QueueStatus::Queued)?
            .into_iter()
            .next();
        match head {
            None => {
                (self.on)(PostEvent::EmptyQueue {
                    bot: p.bot.name.clone(),
                });
                p.anchor = now;
            }
            Some(e) => {
                if let Some(t) = e.next_attempt_at.as_deref().and_then(parse_stamp) {
                    if t > now {
                        return Ok(Some(t));
                    }
                }
                match self.send(p, &e)? {
                    Sent::Done => p.anchor = now,
                    Sent::Blocked => {
                        return Ok(p.blocked_until.or(Some(now + backoff(1, self.retry_base))))
                    }
                }
            }
        }
        let plan = p.plan.clone();
        Ok(plan.next_slot(p.anchor, |d| self.posted_on(p, d)))
    }
}

/// How `aviary schedule run` runs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Only these bots (all when empty).
    pub bots: Vec<String>,
    /// Handle what is due, then return.
    pub once: bool,
}

fn hold_at() -> Option<String> {
    std::env::var("AVIARY_TEST_PAUSE_AT")
        .ok()
        .filter(|s| !s.is_empty())
}

fn posting<'a>(
    setup: &PostingSetup,
    store: &'a mut Store,
    clock: &'a dyn Clock,
    stop: &'a AtomicBool,
    on: &'a mut dyn FnMut(PostEvent),
) -> Posting<'a> {
    Posting {
        store,
        clock,
        max_attempts: setup.config.x.max_attempts.max(1),
        settle: chrono::Duration::seconds(setup.config.x.settle_seconds as i64),
        retry_base: setup.config.x.retry_seconds,
        hold_at: hold_at(),
        stop,
        on,
        started: false,
        creds_error: None,
    }
}

fn poster(
    setup: &PostingSetup,
    store: &Store,
    bot: Bot,
    route: Route,
    now: DateTime<Utc>,
) -> Result<(BotPoster, Mode)> {
    let schedule = schedule_of(setup.config, &bot)?;
    let plan = schedule.plan(bot.id.0 as u64)?;
    let api = setup.api(&bot.name, &route)?;
    let user_id = route.keys.as_ref().and_then(|k| k.account.user_id.clone());
    let (mode, keys) = (route.mode, route.keys);
    // A slot missed while nothing ran is posted once, not once per missed slot.
    let anchor = store
        .last_posted_at(bot.id)?
        .and_then(|s| parse_stamp(&s))
        .unwrap_or(now);
    Ok((
        BotPoster {
            bot,
            keys,
            api,
            plan,
            enabled: schedule.enabled,
            user_id,
            blocked_until: None,
            stopped: false,
            anchor,
        },
        mode,
    ))
}

/// The scheduler: posts every (or the chosen) bot's queue in its slots until `stop` is set
/// (or once, with `opts.once`), reporting each step through `on`.
pub fn run_scheduler(
    setup: &PostingSetup,
    store: &mut Store,
    opts: &RunOptions,
    clock: &dyn Clock,
    stop: &AtomicBool,
    on: &mut dyn FnMut(PostEvent),
) -> Result<()> {
    let _lock = PostingLock::take(setup.home)?;
    for name in &opts.bots {
        find_bot(store, name)?;
    }
    let mut posters = Vec::new();
    let mut posting = posting(setup, store, clock, stop, on);
    while !stop.load(Ordering::Relaxed) {
        // Bots added, removed or rescheduled while this runs are taken in here.
        posting.sync(setup, opts, &mut posters)?;
        let mut wake: Option<DateTime<Utc>> = None;
        for p in posters.iter_mut() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(t) = posting.tick(p)? {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
            // Record when the head of the queue is planned (the queue pane shows it).
            let next = p
                .plan
                .next_slot(p.anchor, |d| posting.posted_on(p, d))
                .map(stamp);
            if let Some(head) = posting
                .store
                .queue_with(p.bot.id, QueueStatus::Queued)?
                .first()
            {
                if head.planned_at != next {
                    posting
                        .store
                        .write(|w| w.set_planned(head.id, next.as_deref()))?;
                }
            }
        }
        if opts.once {
            break;
        }
        // Sleep until the next thing is due, looking at the bots again within 10 s.
        let soon = clock.now() + chrono::Duration::seconds(10);
        let until = wake.map_or(soon, |w| w.min(soon));
        while !stop.load(Ordering::Relaxed) && clock.now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// `aviary post-now ID`: posts a queued (or failed) entry at once, whatever the schedule says;
/// an entry left `sending` is first looked for on the timeline.
pub fn post_now(
    setup: &PostingSetup,
    store: &mut Store,
    id: i64,
    clock: &dyn Clock,
    on: &mut dyn FnMut(PostEvent),
) -> Result<QueueRow> {
    let _lock = PostingLock::take(setup.home)?;
    let e = entry(store, id)?;
    let bot = store
        .bots()?
        .into_iter()
        .find(|b| b.id == e.bot_id)
        .expect("an entry's bot exists");
    let route = setup.route(setup.credentials()?.as_ref(), &bot.name);
    let (mut p, mode) = poster(setup, store, bot, route, clock.now())?;
    let stop = AtomicBool::new(false);
    let mut posting = posting(setup, store, clock, &stop, on);
    (posting.on)(PostEvent::Ready {
        bot: p.bot.name.clone(),
        mode,
        next: None,
    });
    match e.status {
        QueueStatus::Posted => {
            return Err(Error::invalid(
                format!(
                    "queue entry {id} is already posted (as {})",
                    e.posted_tweet_id.as_deref().unwrap_or("?")
                ),
                "nothing to do",
            ))
        }
        QueueStatus::Failed => {
            posting.store.write(|w| w.retry_failed(id))?;
        }
        _ => {}
    }
    let e = entry(posting.store, id)?;
    if e.status == QueueStatus::Sending {
        posting.resolve(&mut p, &e)?;
    } else {
        posting.send(&mut p, &e)?;
    }
    entry(posting.store, id)
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
