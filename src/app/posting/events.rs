//! What the scheduler did, as events the faces show (`aviary schedule run` logs each).

use chrono::{DateTime, Utc};

use crate::twitter::ApiError;

use super::*;

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
    /// X refused a resend as a duplicate: the earlier send was posted, though its id was not
    /// found on the timeline.
    PostedIdUnknown {
        /// The bot.
        bot: String,
        /// The entry.
        id: i64,
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
    /// The bot was removed (or left the run's `--bot` list): nothing more is posted for it.
    BotRemoved {
        /// The bot.
        bot: String,
    },
    /// A slot came with nothing queued.
    EmptyQueue {
        /// The bot.
        bot: String,
    },
    /// The credentials file cannot be read now; the bots keep their routes.
    CredentialsUnreadable(String),
}

pub(super) fn first_line(e: &ApiError) -> String {
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
                "{bot}: #{id} was sent before and is on the timeline as {tweet_id}: marked posted"
            ),
            PostEvent::NotFound { bot, id } => write!(
                f,
                "{bot}: #{id} was left sending and is not on the timeline: sending it again"
            ),
            PostEvent::PostedIdUnknown { bot, id } => write!(
                f,
                "{bot}: #{id} sent again was refused as a duplicate: X has the earlier send; \
                 marked posted, id unknown"
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
            PostEvent::BotRemoved { bot } => write!(f, "{bot}: removed; no longer posted"),
            PostEvent::EmptyQueue { bot } => {
                write!(f, "{bot}: a slot came and the queue is empty")
            }
            PostEvent::CredentialsUnreadable(why) => {
                write!(f, "credentials unreadable, bots keep their routes: {why}")
            }
        }
    }
}
