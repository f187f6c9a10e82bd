//! `aviary import BOT --fetch HANDLE`: an account's recent tweets through the API (GET
//! /2/users/by/username/:name, then /2/users/:id/tweets page by page), kept as a JSON-lines
//! file of the pages in the home and imported like any API v2 file.

use std::io::Write;
use std::path::PathBuf;

use super::bots::{self, find_bot, ImportRequest};
use super::posting::{Mode, PostingSetup};
use crate::corpus::{Format, ImportReport};
use crate::store::Store;
use crate::twitter::TimelineQuery;
use crate::{Error, Result};

/// X serves only an account's most recent posts through its timeline.
pub const TIMELINE_LIMIT: usize = 3200;

/// What a fetch did.
#[derive(Debug)]
pub struct FetchReport {
    /// The pages as X sent them (one JSON document a line).
    pub pages_file: PathBuf,
    /// Tweets X returned.
    pub fetched: usize,
    /// Whether it reached X's limit of the newest 3,200 posts (older ones need the archive).
    pub at_timeline_limit: bool,
    /// Whether it stopped at the asked maximum with more pages left.
    pub more_available: bool,
    /// The import of the pages.
    pub report: ImportReport,
}

/// Fetches up to `max` of @`handle`'s newest tweets with bot `bot`'s credentials and imports
/// them into `bot`.
pub fn fetch(
    setup: &PostingSetup,
    store: &mut Store,
    bot: &str,
    handle: &str,
    max: usize,
) -> Result<FetchReport> {
    find_bot(store, bot)?;
    let (api, mode) = setup.api_for(bot)?;
    if let Mode::DryRun(why) = mode {
        return Err(Error::invalid(
            format!("fetching tweets needs X credentials, and bot `{bot}` has none ({why})"),
            format!("run `aviary auth {bot}`, or import an archive file instead"),
        ));
    }
    let x_error = |e: crate::twitter::ApiError| {
        Error::invalid(
            format!(
                "fetching @{handle}'s tweets failed: {}",
                e.to_string().replace('\n', " ")
            ),
            "nothing was imported; try again later",
        )
    };
    let user = api.user_by_username(handle).map_err(x_error)?;
    let dir = setup.home.root().join("fetched");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let pages_file = dir.join(format!(
        "{}-{}.jsonl",
        user.username,
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let mut out = std::fs::File::create(&pages_file).map_err(|e| Error::io(&pages_file, e))?;
    let max = max.min(TIMELINE_LIMIT);
    let mut fetched = 0;
    let mut token = None;
    let mut more = false;
    while fetched < max {
        let q = TimelineQuery {
            max_results: (max - fetched).clamp(5, 100) as u32,
            pagination_token: token.take(),
            start_time: None,
        };
        let page = api.user_tweets(&user.id, &q).map_err(x_error)?;
        fetched += page.tweets.len();
        writeln!(out, "{}", page.raw.replace('\n', " ")).map_err(|e| Error::io(&pages_file, e))?;
        match page.next_token {
            Some(t) if !page.tweets.is_empty() => {
                token = Some(t);
                more = true;
            }
            _ => {
                more = false;
                break;
            }
        }
    }
    out.sync_all().map_err(|e| Error::io(&pages_file, e))?;
    if fetched == 0 {
        return Err(Error::invalid(
            format!("@{} has no tweets X will show", user.username),
            "check the handle; protected accounts' tweets need that account's own tokens",
        ));
    }
    let report = bots::import(
        store,
        &ImportRequest {
            bot: bot.to_string(),
            paths: vec![pages_file.clone()],
            format: Some(Format::ApiV2),
        },
    )?;
    Ok(FetchReport {
        pages_file,
        fetched,
        // X ends the timeline near 3,200 (deleted posts count against it).
        at_timeline_limit: fetched + 100 >= TIMELINE_LIMIT,
        more_available: more,
        report,
    })
}
