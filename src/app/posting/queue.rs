//! The queue operations (add, remove, move, retry) and the queue's summary: planned times
//! from the scheduler's own plan, and the cost estimate.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};

use super::super::bots::find_bot;
use crate::schedule::{Clock, Plan};
use crate::store::{Bot, BotId, QueueRow, QueueStatus, Store, Writer};
use crate::{Error, Result};

use super::*;

/// The checked text of a tweet to queue: what X would take (weighted length, see
/// [`crate::tweet_len`]).
pub fn tweet_text(text: &str) -> Result<String> {
    crate::tweet_len::check(text).map_err(|why| Error::invalid(why, "shorten the text"))
}

/// Refuses `text` if any bot has it queued, being sent, or posted: X forbids posting the
/// same content from several accounts, and one account cannot post it twice.
pub(super) fn refuse_duplicate(w: &Writer, text: &str) -> Result<()> {
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
pub(in crate::app) fn enqueue_in(
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

pub(super) fn entry(store: &Store, id: i64) -> Result<QueueRow> {
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
    let entries = store.queue(name.map(|_| bots[0].id))?;
    summarize(
        setup,
        setup.credentials()?.as_ref(),
        &bots,
        entries,
        clock.now(),
    )
}

/// [`summary`] of `bots` from their queue `entries` as read (any order within a bot kept),
/// posting with `creds`: no store read per bot.
pub(in crate::app) fn summarize(
    setup: &PostingSetup,
    creds: Option<&Credentials>,
    bots: &[Bot],
    entries: Vec<QueueRow>,
    now: DateTime<Utc>,
) -> Result<Vec<QueueSummary>> {
    let mut by_bot: HashMap<BotId, Vec<QueueRow>> = HashMap::new();
    for e in entries {
        by_bot.entry(e.bot_id).or_default().push(e);
    }
    let mut out = Vec::new();
    for bot in bots {
        let entries = by_bot.remove(&bot.id).unwrap_or_default();
        let schedule = schedule_of(setup.config, bot)?;
        let plan = schedule.plan(bot.id.0 as u64)?;
        let mode = setup.route(creds, &bot.name).mode;
        let queued: Vec<&QueueRow> = entries
            .iter()
            .filter(|e| e.status == QueueStatus::Queued)
            .collect();
        // The scheduler's own plan: slots after its anchor, one due already shown as now.
        let mut planned = Vec::new();
        let mut after = anchor_in(&entries, now);
        let mut counts: HashMap<NaiveDate, u32> = HashMap::new();
        let today = plan.local_date(now);
        counts.insert(today, posted_in(&entries, &plan, today));
        for _ in &queued {
            let Some(t) = plan.next_slot(after, |d| counts.get(&d).copied().unwrap_or(0)) else {
                break;
            };
            *counts.entry(plan.local_date(t)).or_default() += 1;
            planned.push(t.max(now));
            after = t;
        }
        let posts_per_day = plan.day(today).len();
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

/// What `bot`'s next post waits on: a slot after this. That is its last post, or when its
/// earliest entry was queued, whichever is later: a slot missed while nothing ran (between
/// two runs of `schedule run --once`, say) is posted once, not once per missed slot; one that
/// passed before there was anything to post is not.
pub(super) fn anchor(store: &Store, bot: &Bot, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let last_post = store.last_posted_at(bot.id)?.and_then(|s| parse_stamp(&s));
    let first_queued = store.first_queued_at(bot.id)?.and_then(|s| parse_stamp(&s));
    Ok(anchor_between(last_post, first_queued, now))
}

/// [`anchor`] from the bot's queue rows, already read.
fn anchor_in(entries: &[QueueRow], now: DateTime<Utc>) -> DateTime<Utc> {
    let stamps = |status: QueueStatus, at: fn(&QueueRow) -> Option<&str>| {
        entries
            .iter()
            .filter(move |e| e.status == status)
            .filter_map(move |e| at(e).and_then(parse_stamp))
    };
    let last_post = stamps(QueueStatus::Posted, |e| e.posted_at.as_deref()).max();
    let first_queued = stamps(QueueStatus::Queued, |e| e.queued_at.as_deref()).min();
    anchor_between(last_post, first_queued, now)
}

fn anchor_between(
    last_post: Option<DateTime<Utc>>,
    first_queued: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    match (last_post, first_queued) {
        (Some(p), Some(q)) => p.max(q),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => now,
    }
    .min(now)
}

pub(super) fn posted_on_day(store: &Store, bot: &Bot, plan: &Plan, day: NaiveDate) -> Result<u32> {
    let (a, b) = plan.day_bounds(day);
    store.posted_between(bot.id, &stamp(a), &stamp(b))
}

/// [`posted_on_day`] from the bot's queue rows, already read.
fn posted_in(entries: &[QueueRow], plan: &Plan, day: NaiveDate) -> u32 {
    let (a, b) = plan.day_bounds(day);
    entries
        .iter()
        .filter(|e| e.status == QueueStatus::Posted)
        .filter_map(|e| e.posted_at.as_deref().and_then(parse_stamp))
        .filter(|t| a <= *t && *t < b)
        .count() as u32
}
