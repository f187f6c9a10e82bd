//! Talking to X: the three API v2 calls aviary needs (post a tweet, look up an account, read
//! an account's recent tweets) behind the [`XApi`] trait, so the scheduler does not care
//! whether a post goes to X ([`HttpApi`], OAuth 1.0a signed by egg-mode) or to the dry-run
//! outbox ([`Outbox`]), and the transport can be swapped later.
//!
//! Errors are sorted by what the caller must do next ([`ApiError::delivery`]): after some,
//! the tweet certainly was not posted; after others (a lost reply, a timeout, a 5xx) it may
//! have been, and must not be sent again before the account's timeline is checked.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod outbox;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use client::{normalize_base_url, HttpApi};
pub use credentials::{AccountKeys, Credentials, Secret};
pub use outbox::Outbox;

/// A tweet X (or the outbox) accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedTweet {
    /// Its id.
    pub id: String,
    /// Its text as stored.
    pub text: String,
}

/// An X account.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct XUser {
    /// The numeric id, as a string.
    pub id: String,
    /// The handle, without `@`.
    pub username: String,
}

/// One tweet of a timeline.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TimelineTweet {
    /// Its id.
    pub id: String,
    /// Its text (X shortens links to t.co and escapes `&`, `<`, `>`).
    pub text: String,
    /// When it was posted (asked for with `tweet.fields=created_at`).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// One page of GET /2/users/:id/tweets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimelinePage {
    /// The tweets, newest first.
    pub tweets: Vec<TimelineTweet>,
    /// The whole page as X sent it (what `import --fetch` stores).
    pub raw: String,
    /// Token for the next (older) page; `None` on the last.
    pub next_token: Option<String>,
}

/// Which page of a timeline to read.
#[derive(Clone, Debug, Default)]
pub struct TimelineQuery {
    /// 5 to 100.
    pub max_results: u32,
    /// From the previous page's `next_token`.
    pub pagination_token: Option<String>,
    /// Only tweets posted at or after this time.
    pub start_time: Option<DateTime<Utc>>,
}

/// The calls aviary makes to X.
pub trait XApi {
    /// POST /2/tweets.
    fn post(&self, text: &str) -> Result<PostedTweet, ApiError>;
    /// GET /2/users/me: the account the tokens belong to.
    fn me(&self) -> Result<XUser, ApiError>;
    /// GET /2/users/by/username/:username.
    fn user_by_username(&self, username: &str) -> Result<XUser, ApiError>;
    /// GET /2/users/:id/tweets, one page.
    fn user_tweets(&self, user_id: &str, query: &TimelineQuery) -> Result<TimelinePage, ApiError>;
}

/// What an error says about a tweet that was being posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// X refused or never saw the request: the tweet is not posted.
    NotPosted,
    /// X may have posted it (lost reply, timeout, server error): look before sending again.
    Unknown,
}

/// A failed call to X, sorted by what to do about it. Never carries a token or secret.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// 401: the tokens are wrong, revoked, or the clock is off.
    #[error("X refused the credentials (401 Unauthorized{}).\nHINT: run `aviary auth BOT` again, check the consumer key and secret, and that this machine's clock is right", detail_suffix(.detail))]
    Unauthorized {
        /// X's words, when it sent any.
        detail: String,
    },
    /// 403 for a tweet whose text the account already posted.
    #[error("X refused the tweet as a duplicate of one the account already posted (403).\nHINT: edit the text or remove it from the queue")]
    Duplicate,
    /// 403 for any other reason (read-only app, suspended account, ...).
    #[error("X forbade the request (403{}).\nHINT: the app needs \"Read and write\" permission in the developer console; after changing it, run `aviary auth BOT` again", detail_suffix(.detail))]
    Forbidden {
        /// X's words.
        detail: String,
    },
    /// 429: wait until `reset`.
    #[error("X's rate limit is reached{}{}.\nHINT: aviary waits and tries again by itself", reset_suffix(.reset), daily_suffix(.daily_remaining))]
    RateLimited {
        /// When the limit resets (`x-rate-limit-reset`, or the daily one when that is spent).
        reset: Option<DateTime<Utc>>,
        /// Posts left today (`x-user-limit-24hour-remaining`), when X said.
        daily_remaining: Option<u64>,
    },
    /// Another 4xx: the request itself is wrong (a text over 280 characters, an unknown user).
    #[error("X rejected the request ({status}{}).\nHINT: fix what X names; sending it again as it is will fail again", detail_suffix(.detail))]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// X's words.
        detail: String,
    },
    /// 5xx: X's side failed; the request may or may not have taken effect.
    #[error("X answered with a server error ({status}{}).\nHINT: aviary retries with backoff; if it persists, see https://status.x.com", detail_suffix(.detail))]
    Server {
        /// The HTTP status.
        status: u16,
        /// X's words.
        detail: String,
    },
    /// The connection failed or closed, possibly after X received the request.
    #[error(
        "network error talking to X: {0}.\nHINT: check the connection; aviary retries with backoff"
    )]
    Network(String),
    /// No answer in time.
    #[error("X did not answer within {} s.\nHINT: aviary retries with backoff; raise [x] timeout_seconds for a slow link", .0.as_secs())]
    Timeout(Duration),
    /// A 2xx answer aviary cannot read.
    #[error("X sent an answer aviary cannot read ({0}).\nHINT: the API may have changed; please report it")]
    Malformed(String),
    /// Not an answer from X at all: the dry-run outbox could not be written or read.
    #[error("outbox {0}")]
    Outbox(String),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

fn reset_suffix(reset: &Option<DateTime<Utc>>) -> String {
    reset
        .map(|r| format!(" until {}", r.format("%Y-%m-%d %H:%M:%S UTC")))
        .unwrap_or_default()
}

fn daily_suffix(remaining: &Option<u64>) -> String {
    remaining
        .map(|r| format!(" ({r} posts left in the account's 24-hour allowance)"))
        .unwrap_or_default()
}

impl ApiError {
    /// Whether a tweet being posted when this happened may be on X.
    pub fn delivery(&self) -> Delivery {
        match self {
            ApiError::Server { .. }
            | ApiError::Network(_)
            | ApiError::Timeout(_)
            | ApiError::Malformed(_) => Delivery::Unknown,
            _ => Delivery::NotPosted,
        }
    }

    /// Whether trying the same call again later can succeed without the user doing anything.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ApiError::RateLimited { .. }
                | ApiError::Server { .. }
                | ApiError::Network(_)
                | ApiError::Timeout(_)
                | ApiError::Outbox(_)
        )
    }

    /// Whether it is the credentials' fault (every further post of this account will fail too).
    pub fn is_credentials(&self) -> bool {
        matches!(
            self,
            ApiError::Unauthorized { .. } | ApiError::Forbidden { .. }
        )
    }
}

/// The form X gives a tweet's text in a timeline, for recognising a tweet aviary posted:
/// entities unescaped, links dropped (X turns them into t.co links), white space collapsed.
pub fn comparable_text(text: &str) -> String {
    let unescaped = html_escape::decode_html_entities(text);
    unescaped
        .split_whitespace()
        .filter(|w| !(w.starts_with("http://") || w.starts_with("https://")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_text_matches_the_posted_text() {
        assert_eq!(
            comparable_text("Tom &amp; Jerry  are\nback https://t.co/abc"),
            comparable_text("Tom & Jerry are back https://example.com/x?y=1")
        );
        assert_ne!(comparable_text("a b"), comparable_text("a c"));
    }

    #[test]
    fn errors_say_whether_the_tweet_may_be_posted() {
        assert_eq!(ApiError::Duplicate.delivery(), Delivery::NotPosted);
        let rl = ApiError::RateLimited {
            reset: None,
            daily_remaining: Some(0),
        };
        assert_eq!(rl.delivery(), Delivery::NotPosted);
        assert!(rl.is_transient());
        assert!(rl.to_string().contains("0 posts left"));
        assert_eq!(
            ApiError::Network("connection closed".into()).delivery(),
            Delivery::Unknown
        );
        let s = ApiError::Server {
            status: 503,
            detail: String::new(),
        };
        assert_eq!(s.delivery(), Delivery::Unknown);
        assert!(s.is_transient());
        assert!(!ApiError::Duplicate.is_transient());
    }
}
