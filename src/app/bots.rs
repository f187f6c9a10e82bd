//! Bots and their tweets: create, list, show and remove bots, import tweets into a bot (read
//! by `corpus`, cleaned by the bot's policy, stored in one transaction), change a bot's
//! cleaning policy (which re-cleans its stored tweets), and read a bot's kept tweets back
//! for training.

use std::collections::HashSet;
use std::path::PathBuf;

use chrono::SecondsFormat;

use super::{Config, Home};
use crate::corpus::clean::text_hash;
use crate::corpus::{self, CleanPolicy, Dedup, DropReason, Format, ImportReport, RawTweet};
use crate::store::{Bot, BotId, NewTweet, Run, Store, TweetCounts, Writer};
use crate::train::TweetSource;
use crate::{Error, Result};

/// A bot with what the faces show of it.
#[derive(Clone, Debug)]
pub struct BotDetails {
    /// The bot.
    pub bot: Bot,
    /// Its tweets, kept and dropped.
    pub counts: TweetCounts,
    /// Its cleaning policy.
    pub policy: CleanPolicy,
    /// Its imports, oldest first: when, and the report.
    pub imports: Vec<(String, ImportReport)>,
    /// Its training runs, oldest first.
    pub runs: Vec<Run>,
}

/// Bot names end up in paths and commands: letters, digits, `-` and `_`, at most 40.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("`{name}` is not a usable bot name"),
            "use 1 to 40 letters, digits, `-` or `_` (the handle can be anything: --handle @name)",
        ))
    }
}

/// `@name` or `name` as stored: without the `@`.
fn normalize_handle(handle: &str) -> String {
    handle.trim().trim_start_matches('@').to_string()
}

/// Creates a bot with the config's cleaning policy.
pub fn new_bot(
    store: &mut Store,
    config: &Config,
    name: &str,
    handle: Option<&str>,
) -> Result<Bot> {
    check_name(name)?;
    let policy = serde_json::to_string(&config.clean).expect("a policy serialises");
    let handle = handle.map(normalize_handle);
    let created = store.write(|w| w.create_bot(name, handle.as_deref(), &policy))?;
    if created.is_none() {
        return Err(Error::invalid(
            format!("a bot named `{name}` already exists"),
            "pick another name, or see it with `aviary bot show NAME`",
        ));
    }
    find_bot(store, name)
}

/// The bot named `name`, or an error saying how to see or create bots.
pub fn find_bot(store: &Store, name: &str) -> Result<Bot> {
    store.bot(name)?.ok_or_else(|| {
        Error::invalid(
            format!("no bot named `{name}`"),
            format!("create it with `aviary bot new {name}`, or list bots with `aviary bot list`"),
        )
    })
}

/// Every bot with its tweet counts, by name.
pub fn list_bots(store: &Store) -> Result<Vec<(Bot, TweetCounts)>> {
    let mut counts = store.all_tweet_counts()?;
    Ok(store
        .bots()?
        .into_iter()
        .map(|b| {
            let c = counts.remove(&b.id).unwrap_or_default();
            (b, c)
        })
        .collect())
}

/// Everything about one bot.
pub fn show_bot(store: &Store, name: &str) -> Result<BotDetails> {
    let bot = find_bot(store, name)?;
    let imports = store
        .imports(bot.id)?
        .into_iter()
        .map(|(at, json)| {
            let report = serde_json::from_str(&json).map_err(|e| {
                Error::invalid(
                    format!("the report of the import of {at} is unreadable: {e}"),
                    "the database may be damaged; its tweets are unaffected",
                )
            })?;
            Ok((at, report))
        })
        .collect::<Result<_>>()?;
    Ok(BotDetails {
        counts: store.tweet_counts(bot.id)?,
        policy: policy_of(&bot)?,
        imports,
        runs: store.runs(bot.id)?,
        bot,
    })
}

/// Removes a bot: its tweets, runs, candidates and queue, then its folder in `home`.
pub fn remove_bot(home: &Home, store: &mut Store, name: &str) -> Result<Bot> {
    let bot = find_bot(store, name)?;
    store.write(|w| w.remove_bot(bot.id))?;
    let dir = home.bot_dir(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    Ok(bot)
}

/// A bot's cleaning policy.
pub fn policy_of(bot: &Bot) -> Result<CleanPolicy> {
    serde_json::from_str(&bot.clean_policy).map_err(|e| {
        Error::invalid(
            format!("bot `{}` has an unreadable cleaning policy: {e}", bot.name),
            format!("reset it with `aviary bot policy {} --reset`", bot.name),
        )
    })
}

/// `policy` with `KEY=VALUE` settings applied (keys as in config `[clean]`).
pub fn apply_settings(policy: &CleanPolicy, settings: &[String]) -> Result<CleanPolicy> {
    let keys = || {
        let v = toml::Value::try_from(CleanPolicy::default()).expect("a policy is a table");
        v.as_table()
            .map(|t| t.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    let mut table = toml::Value::try_from(policy).expect("a policy is a table");
    for s in settings {
        let Some((key, value)) = s.split_once('=') else {
            return Err(Error::invalid(
                format!("`{s}` is not KEY=VALUE"),
                format!("for example drop_replies=true; keys: {}", keys()),
            ));
        };
        let value = value.trim();
        // TOML values (true, 10, "x"); a bare word is taken as a string (urls=keep).
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        if let Some(t) = table.as_table_mut() {
            t.insert(key.trim().to_string(), parsed);
        }
    }
    table.try_into().map_err(|e: toml::de::Error| {
        Error::invalid(
            format!("bad cleaning setting: {}", e.message()),
            format!("keys: {} (see [clean] in config/aviary.toml)", keys()),
        )
    })
}

/// Sets a bot's policy and re-cleans every stored tweet with it, in one transaction.
/// Returns the new counts as a report.
pub fn set_policy(store: &mut Store, name: &str, policy: &CleanPolicy) -> Result<ImportReport> {
    let bot = find_bot(store, name)?;
    let json = serde_json::to_string(policy).expect("a policy serialises");
    store.write(|w| {
        w.set_clean_policy(bot.id, &json)?;
        reclean(w, bot.id, policy)
    })
}

fn reclean(w: &Writer, bot: BotId, policy: &CleanPolicy) -> Result<ImportReport> {
    let mut dedup = Dedup::default();
    let mut report = ImportReport::default();
    let mut after = 0;
    loop {
        let page = w.tweets_after(bot, after, 1000)?;
        let Some(last) = page.last() else { break };
        after = last.row;
        for t in page {
            let raw = RawTweet {
                created_at: t.created_at.as_deref().and_then(corpus::parse_time),
                text: t.raw_text,
                is_retweet: t.is_retweet,
                is_reply: t.is_reply,
                ..RawTweet::default()
            };
            let outcome = clean(policy, &raw, &mut dedup);
            report.read += 1;
            report.count(&raw, &outcome);
            let (text, reason) = split_outcome(&outcome);
            w.set_cleaned(t.row, text, reason)?;
        }
    }
    Ok(report)
}

fn clean(
    policy: &CleanPolicy,
    raw: &RawTweet,
    dedup: &mut Dedup,
) -> std::result::Result<String, DropReason> {
    let text = policy.clean(raw)?;
    if policy.drop_duplicates && !dedup.first_time(&text) {
        return Err(DropReason::Duplicate);
    }
    Ok(text)
}

fn split_outcome(
    outcome: &std::result::Result<String, DropReason>,
) -> (&str, Option<&'static str>) {
    match outcome {
        Ok(t) => (t.as_str(), None),
        Err(r) => ("", Some(r.name())),
    }
}

/// A request to import files into a bot.
#[derive(Clone, Debug)]
pub struct ImportRequest {
    /// The bot.
    pub bot: String,
    /// Files (or archive folders, or zips) to read.
    pub paths: Vec<PathBuf>,
    /// The format of all of them; `None`: detected per file.
    pub format: Option<Format>,
}

/// Imports `req.paths` into the bot: every tweet read, cleaned by the bot's policy, stored
/// with the outcome. All or nothing: an error in any file leaves the database as it was.
/// Tweets already imported (same id, or same text where there are no ids) are skipped.
pub fn import(store: &mut Store, req: &ImportRequest) -> Result<ImportReport> {
    let bot = find_bot(store, &req.bot)?;
    let policy = policy_of(&bot)?;
    if req.paths.is_empty() {
        return Err(Error::invalid(
            "no file to import",
            "name one or more files after the bot",
        ));
    }
    store.write(|w| {
        let import = w.begin_import(bot.id)?;
        let mut dedup = Dedup::default();
        w.each_kept_text(bot.id, |t| {
            dedup.first_time(t);
        })?;
        let mut report = ImportReport::default();
        let mut keys_this_import = HashSet::new();
        for path in corpus::unique_paths(&req.paths) {
            let info = corpus::read_tweets(&path, req.format, &mut |raw| {
                report.read += 1;
                let key = tweet_key(&raw);
                if !keys_this_import.insert(text_hash(&key)) {
                    // The same tweet twice in this import: the store keeps one row per tweet.
                    report.count(&raw, &Err(DropReason::Duplicate));
                    return Ok(());
                }
                if w.has_tweet(bot.id, &key)? {
                    report.already_imported += 1;
                    return Ok(());
                }
                let outcome = clean(&policy, &raw, &mut dedup);
                report.count(&raw, &outcome);
                let (text, reason) = split_outcome(&outcome);
                w.insert_tweet(
                    bot.id,
                    import,
                    &NewTweet {
                        key,
                        tweet_id: raw.id.clone(),
                        created_at: raw
                            .created_at
                            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                        raw_text: raw.text.clone(),
                        is_retweet: raw.is_retweet,
                        is_reply: raw.is_reply,
                        source_format: raw.format.name().to_string(),
                        text: text.to_string(),
                        drop_reason: reason.map(str::to_string),
                    },
                )?;
                Ok(())
            })?;
            report.files.extend(info.files);
            let format = info.format.name().to_string();
            if !report.formats.contains(&format) {
                report.formats.push(format);
            }
            if report.handle.is_none() {
                report.handle = info.handle;
            }
        }
        if let (None, Some(h)) = (&bot.handle, &report.handle) {
            w.set_handle(bot.id, h)?;
        }
        let json = serde_json::to_string(&report).expect("a report serialises");
        w.finish_import(import, &json)?;
        Ok(report)
    })
}

/// A tweet's identity within a bot: its id, or a hash of its text when the source has none.
fn tweet_key(raw: &RawTweet) -> String {
    match &raw.id {
        Some(id) => format!("id:{id}"),
        None => format!("text:{:016x}", text_hash(&raw.text)),
    }
}

/// A bot's kept tweets as a training source, read from the store page by page.
pub struct BotTweets {
    store: Store,
    bot: Bot,
}

impl BotTweets {
    /// The kept tweets of `name`; an error when there are none.
    pub fn open(store: Store, name: &str) -> Result<Self> {
        let bot = find_bot(&store, name)?;
        if store.tweet_counts(bot.id)?.kept == 0 {
            return Err(Error::invalid(
                format!("bot `{name}` has no tweets to train on"),
                format!("import some with `aviary import {name} FILE`"),
            ));
        }
        Ok(BotTweets { store, bot })
    }

    /// The bot.
    pub fn bot(&self) -> &Bot {
        &self.bot
    }

    /// The store it reads from.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }
}

impl TweetSource for BotTweets {
    fn tweets(&self) -> Result<Box<dyn Iterator<Item = Result<String>> + '_>> {
        const PAGE: usize = 4096;
        let mut after = 0i64;
        let mut page = std::vec::IntoIter::default();
        let mut done = false;
        Ok(Box::new(std::iter::from_fn(move || loop {
            if let Some((_, text)) = page.next() {
                return Some(Ok(text));
            }
            if done {
                return None;
            }
            match self.store.kept_tweets(self.bot.id, after, PAGE) {
                Ok(rows) => {
                    done = rows.len() < PAGE;
                    if let Some((row, _)) = rows.last() {
                        after = *row;
                    }
                    page = rows.into_iter();
                }
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
            }
        })))
    }

    fn describe(&self) -> String {
        format!("bot {}", self.bot.name)
    }
}
