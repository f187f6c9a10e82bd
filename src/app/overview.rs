//! One line per bot for the TUI's bots pane (and anything else that wants the whole picture):
//! tweets kept, model state, best validation loss, queue length, next post. Also the first
//! launch: a home with no database gets a sample bot from the shipped sample tweets, so a new
//! user can fine-tune, generate and review at once.

use chrono::{DateTime, Utc};

use super::bots::{self, ImportRequest};
use super::posting::{self, Mode, PostingSetup, QueueSummary};
use super::{Config, Home};
use crate::schedule::Clock;
use crate::store::{QueueStatus, Store};
use crate::twitter::Credentials;
use crate::{Error, Result};

/// The sample bot's name.
pub const SAMPLE_BOT: &str = "sample";

/// The shipped sample (`data/sample_tweets.txt`, see `data/README.md` for its source).
const SAMPLE_TWEETS: &str = include_str!("../../data/sample_tweets.txt");

/// A bot at a glance.
#[derive(Clone, Debug, PartialEq)]
pub struct BotOverview {
    /// Its name.
    pub name: String,
    /// Its account's handle.
    pub handle: Option<String>,
    /// Tweets kept for training.
    pub kept: u64,
    /// Whether it has a fine-tuned model (else it generates with the base model).
    pub fine_tuned: bool,
    /// Best validation loss of its model's run, nats/char.
    pub best_val_loss: Option<f64>,
    /// Whether its last run was stopped part-way (it can be resumed).
    pub resumable: bool,
    /// Entries waiting in its queue.
    pub queued: usize,
    /// When the scheduler would post the next one.
    pub next_post: Option<DateTime<Utc>>,
    /// Where its posts go.
    pub mode: Mode,
}

/// Every bot at a glance, by name, each with its queue, posting with `creds` (read by the
/// caller, who may keep them: [`super::Session::overview`]): four reads of the store in all (bots, their tweet counts, runs and queues), however many bots there are.
pub fn overview_with(
    setup: &PostingSetup,
    creds: Option<&Credentials>,
    store: &Store,
    clock: &dyn Clock,
) -> Result<Vec<(BotOverview, QueueSummary)>> {
    let bots = store.bots()?;
    let mut counts = store.all_tweet_counts()?;
    let mut runs = store.all_runs()?;
    let queues = posting::summarize(setup, creds, &bots, store.queue(None)?, clock.now())?;
    let mut out = Vec::new();
    for (bot, q) in bots.into_iter().zip(queues) {
        let runs = runs.remove(&bot.id).unwrap_or_default();
        let model_run = runs.iter().rev().find(|r| {
            Some(&r.checkpoint_dir) == bot.active_checkpoint.as_ref() && r.kind != "search"
        });
        let last = runs.iter().rev().find(|r| r.kind != "search");
        let view = BotOverview {
            name: bot.name.clone(),
            handle: bot.handle.clone(),
            kept: counts.remove(&bot.id).unwrap_or_default().kept,
            fine_tuned: bot.active_checkpoint.is_some(),
            best_val_loss: model_run.and_then(|r| r.best_val_loss),
            resumable: last.is_some_and(|r| r.status == "stopped"),
            queued: q
                .entries
                .iter()
                .filter(|e| e.status == QueueStatus::Queued)
                .count(),
            next_post: if q.enabled {
                q.planned.first().copied()
            } else {
                None
            },
            mode: q.mode.clone(),
        };
        out.push((view, q));
    }
    Ok(out)
}

/// On first launch (no database in the home yet), creates bot `sample` from the shipped
/// sample tweets. Returns whether it did.
pub fn first_launch(home: &Home, config: &Config) -> Result<bool> {
    if home.db_path().exists() {
        return Ok(false);
    }
    let mut store = home.open_store()?;
    bots::new_bot(&mut store, config, SAMPLE_BOT, Some("BarackObama"))?;
    let path = home.root().join("sample_tweets.txt");
    std::fs::write(&path, SAMPLE_TWEETS).map_err(|e| Error::io(&path, e))?;
    bots::import(
        &mut store,
        &ImportRequest {
            bot: SAMPLE_BOT.into(),
            paths: vec![path],
            format: Some(crate::corpus::Format::Text),
        },
    )?;
    Ok(true)
}
