//! The posting state machine: claim, send, record, and settle what a crash or a lost answer
//! left `sending`; the scheduler loop over every bot's slots, and `post-now`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use super::super::bots::find_bot;
use crate::schedule::{backoff, Clock, Plan};
use crate::store::{Bot, QueueRow, QueueStatus, Store};
use crate::twitter::credentials::BotKeys;
use crate::twitter::{comparable_text, ApiError, Delivery, TimelineQuery, XApi};
use crate::{Error, Result};

use super::*;

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
    on: &'a mut dyn FnMut(PostEvent),
    /// Whether the first sync is done (after it, unreadable credentials only say so).
    started: bool,
    /// The last complaint about the credentials, said once.
    creds_error: Option<String>,
}

impl Posting<'_> {
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
        let result = p.api.post(&e.text);
        let bot = p.bot.name.clone();
        match result {
            Ok(t) => {
                self.store
                    .write(|w| w.mark_posted(e.id, &t.id, &stamp(self.clock.now())))?;
                (self.on)(PostEvent::Posted {
                    bot,
                    id: e.id,
                    tweet_id: t.id,
                });
                Ok(Sent::Done)
            }
            Err(err) if err.delivery() == Delivery::Unknown => {
                let at = self.clock.now() + backoff(attempt, self.retry_base).max(self.settle);
                self.check_later(bot, e.id, at, first_line(&err))?;
                Ok(Sent::Done)
            }
            // A duplicate after an earlier send whose fate was unknown: X says it has the
            // tweet, that send reached it. Posted, never failed (and its text stays taken).
            Err(ApiError::Duplicate) if attempt > 1 => self.already_posted(p, e),
            Err(err) => self.not_posted(p, e.id, attempt, err),
        }
    }

    /// X refused entry `e` as a duplicate after an earlier send of it: that send was posted.
    /// Its id is looked for on the timeline back to the first send; without it, the entry is
    /// posted with the id unknown, and says so.
    fn already_posted(&mut self, p: &mut BotPoster, e: &QueueRow) -> Result<Sent> {
        let bot = p.bot.name.clone();
        let since = e
            .first_claimed_at
            .as_deref()
            .or(e.sending_since.as_deref())
            .and_then(parse_stamp)
            .unwrap_or_else(|| self.clock.now() - chrono::Duration::days(7));
        let found = self.find_on_timeline(p, &e.text, since);
        let now = self.clock.now();
        match found {
            Ok(Some(t)) => {
                let at = t.created_at.as_deref().and_then(parse_stamp).unwrap_or(now);
                self.store
                    .write(|w| w.mark_posted(e.id, &t.id, &stamp(at)))?;
                (self.on)(PostEvent::Found {
                    bot,
                    id: e.id,
                    tweet_id: t.id,
                });
            }
            not_found => {
                let why = match not_found {
                    Ok(_) => "not found on its timeline".to_string(),
                    Err(err) => format!("its timeline could not be read: {}", first_line(&err)),
                };
                let note = format!("id unknown: X reports it as already posted ({why})");
                self.store
                    .write(|w| w.mark_posted_noting(e.id, None, &stamp(now), Some(&note)))?;
                (self.on)(PostEvent::PostedIdUnknown { bot, id: e.id });
            }
        }
        Ok(Sent::Done)
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

    /// The account's tweet with `text`, posted since `since` (less ten minutes' slack for
    /// clocks that disagree with X's): every page of the timeline back to then, since the
    /// account may have posted many since (a page holds 100).
    fn find_on_timeline(
        &mut self,
        p: &mut BotPoster,
        text: &str,
        since: DateTime<Utc>,
    ) -> std::result::Result<Option<crate::twitter::TimelineTweet>, ApiError> {
        let uid = self.user_id(p)?;
        let wanted = comparable_text(text);
        let mut query = TimelineQuery {
            max_results: 100,
            pagination_token: None,
            start_time: Some(since - chrono::Duration::minutes(10)),
        };
        // X serves at most 3,200 posts of a timeline: 32 pages.
        for _ in 0..32 {
            let page = p.api.user_tweets(&uid, &query)?;
            if let Some(t) = page
                .tweets
                .into_iter()
                .find(|t| comparable_text(&t.text) == wanted)
            {
                return Ok(Some(t));
            }
            match page.next_token {
                Some(token) => query.pagination_token = Some(token),
                None => break,
            }
        }
        Ok(None)
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
        let found = match self.find_on_timeline(p, &e.text, since) {
            Ok(found) => found,
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
        if let Some(t) = found {
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
        posters.retain(|p| {
            let kept = bots.iter().any(|b| b.id == p.bot.id);
            if !kept {
                (self.on)(PostEvent::BotRemoved {
                    bot: p.bot.name.clone(),
                });
            }
            kept
        });
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

fn posting<'a>(
    setup: &PostingSetup,
    store: &'a mut Store,
    clock: &'a dyn Clock,
    on: &'a mut dyn FnMut(PostEvent),
) -> Posting<'a> {
    Posting {
        store,
        clock,
        max_attempts: setup.config.x.max_attempts.max(1),
        settle: chrono::Duration::seconds(setup.config.x.settle_seconds as i64),
        retry_base: setup.config.x.retry_seconds,
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
    let anchor = anchor(store, &bot, now)?;
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
    let mut posting = posting(setup, store, clock, on);
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
    let mut posting = posting(setup, store, clock, on);
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
