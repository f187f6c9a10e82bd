//! The store: one SQLite file in the aviary home holding bots, their tweets and imports,
//! training runs, candidates and the posting queue. Owns the schema and its migrations, and
//! every statement; knows nothing of models or tweets formats (it stores what `app` hands it).
//!
//! Opening never changes a database it cannot use: a foreign or corrupt file, or one written
//! by a newer aviary, is refused before anything is written. Every change of state runs in
//! one transaction ([`Store::write`]).

mod migrations;
mod queue;

pub use queue::{QueueRow, QueueStatus};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::trace::{TraceEvent, TraceEventCodes};
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, ToSql, Transaction, TransactionBehavior,
};

use crate::{Error, Result};

/// The schema version this aviary writes: the number of migrations.
pub const SCHEMA_VERSION: usize = migrations::MIGRATIONS.len();

/// `PRAGMA application_id` of an aviary database ("AVRY"): tells ours from other SQLite files.
const APPLICATION_ID: i32 = 0x4156_5259;

/// The database file's name in the aviary home.
pub const DB_FILE: &str = "aviary.db";

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl FromSql for $name {
            fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(v).map($name)
            }
        }
    };
}

id_type!(
    /// A bot's row id.
    BotId
);
id_type!(
    /// An import's row id.
    ImportId
);
id_type!(
    /// A training run's row id.
    RunId
);

/// A bot as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Bot {
    /// Row id.
    pub id: BotId,
    /// Unique name, used on the command line and in paths.
    pub name: String,
    /// The account's handle, without the `@`.
    pub handle: Option<String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The checkpoint its fine-tuning starts from (`None`: the built-in base model).
    pub base_checkpoint: Option<String>,
    /// The checkpoint it generates with (`None`: not trained yet).
    pub active_checkpoint: Option<String>,
    /// Its cleaning policy, as JSON.
    pub clean_policy: String,
    /// Its posting schedule, as JSON (`None`: the config's default).
    pub schedule: Option<String>,
}

/// How many of a bot's tweets there are, kept and dropped per reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TweetCounts {
    /// All stored tweets.
    pub total: u64,
    /// Kept for training.
    pub kept: u64,
    /// Characters of the kept tweets.
    pub kept_chars: u64,
    /// Dropped, per reason name, by name.
    pub dropped: Vec<(String, u64)>,
}

/// A tweet to store, as cleaned by `app`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewTweet {
    /// Unique per bot: `id:<tweet id>`, or `text:<hash>` when the source has no ids.
    pub key: String,
    /// The tweet's id on X, if known.
    pub tweet_id: Option<String>,
    /// When it was posted (RFC 3339), if known.
    pub created_at: Option<String>,
    /// The text as imported.
    pub raw_text: String,
    /// A retweet.
    pub is_retweet: bool,
    /// A reply.
    pub is_reply: bool,
    /// The format it came in.
    pub source_format: String,
    /// The cleaned text (empty when dropped before cleaning).
    pub text: String,
    /// Why it is left out of training; `None`: kept.
    pub drop_reason: Option<String>,
}

/// A stored tweet, as re-cleaning needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTweet {
    /// Row id.
    pub row: i64,
    /// The text as imported.
    pub raw_text: String,
    /// A retweet.
    pub is_retweet: bool,
    /// A reply.
    pub is_reply: bool,
    /// When it was posted (RFC 3339), if known.
    pub created_at: Option<String>,
}

/// A training run as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Row id.
    pub id: RunId,
    /// `train`, `finetune`, ...
    pub kind: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended, if it has.
    pub finished_at: Option<String>,
    /// `running`, `finished`, `stopped` or `failed`.
    pub status: String,
    /// Its hyperparameters, as JSON.
    pub hyperparams: String,
    /// Where its checkpoint is.
    pub checkpoint_dir: String,
    /// Steps trained.
    pub steps: Option<u64>,
    /// Best validation loss, nats/char.
    pub best_val_loss: Option<f64>,
    /// Validation history as JSON `[[step, train loss, validation loss], ...]`.
    pub losses: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A candidate tweet as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateRow {
    /// Row id.
    pub id: i64,
    /// When it was generated (RFC 3339).
    pub created_at: String,
    /// The text as sampled.
    pub text: String,
    /// The text as edited by the user, if it was.
    pub edited_text: Option<String>,
    /// The sampling settings, as JSON.
    pub sampling: String,
    /// 1 - its overlap with the bot's training tweets.
    pub novelty: Option<f64>,
    /// `new`, `approved`, `rejected` or `edited`.
    pub status: String,
    /// Its ranking score (higher reads better); none for candidates made before scores.
    pub score: Option<f64>,
}

/// How a training run ended, as recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunEnd {
    /// `finished`, `stopped` or `failed`.
    pub status: String,
    /// Steps trained in all.
    pub steps: u64,
    /// Best validation loss, nats/char.
    pub best_val_loss: Option<f64>,
    /// Validation history as JSON.
    pub losses: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The open database.
pub struct Store {
    conn: Connection,
    now: fn() -> DateTime<Utc>,
}

impl Store {
    /// Opens (creating if need be) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| refuse(path, format!("cannot be opened: {e}")))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Reading the header first: a corrupt or foreign file fails here, before any write.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| refuse(path, format!("is not a SQLite database ({e})")))?;
        let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        if (version == 0 && tables > 0) || (version > 0 && app_id != APPLICATION_ID) {
            return Err(refuse(
                path,
                "is a SQLite database of another program, not aviary's".into(),
            ));
        }
        if version as usize > SCHEMA_VERSION {
            return Err(Error::Store {
                path: path.to_path_buf(),
                problem: format!(
                    "was written by a newer aviary (schema {version}; this one knows up to {SCHEMA_VERSION})"
                ),
                hint: "upgrade aviary; the database was left as it is".into(),
            });
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        let mut store = Store {
            conn,
            now: Utc::now,
        };
        store.migrate(version as usize)?;
        Ok(store)
    }

    fn migrate(&mut self, from: usize) -> Result<()> {
        if from == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Exclusive)?;
        for sql in &migrations::MIGRATIONS[from..] {
            tx.execute_batch(sql)?;
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION as i64)?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces the clock used for timestamps (tests).
    pub fn set_clock(&mut self, now: fn() -> DateTime<Utc>) {
        self.now = now;
    }

    fn now(&self) -> String {
        (self.now)().to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    /// Runs `f` in one transaction: all its writes are committed when it returns `Ok`, none
    /// when it returns `Err` (or panics).
    pub fn write<T>(&mut self, f: impl FnOnce(&Writer) -> Result<T>) -> Result<T> {
        let now = self.now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let w = Writer { tx, now };
        let out = f(&w)?;
        w.tx.commit()?;
        Ok(out)
    }

    /// A bot by name.
    pub fn bot(&self, name: &str) -> Result<Option<Bot>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{BOT_COLUMNS} WHERE name = ?1"))?;
        Ok(st.query_row([name], bot_from_row).optional()?)
    }

    /// Every bot, by name.
    pub fn bots(&self) -> Result<Vec<Bot>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{BOT_COLUMNS} ORDER BY name"))?;
        let rows = st.query_map([], bot_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Counts the SQL statements this connection runs from now on (each execution once), so
    /// that a caller can see what a screen's refresh costs (`--debug` logs it).
    pub fn count_statements(&mut self) -> Result<Arc<AtomicU64>> {
        let count = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&count);
        self.conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT,
            Some(move |_: TraceEvent<'_>| {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
        )?;
        Ok(count)
    }

    /// How many tweets `bot` has, kept and dropped.
    pub fn tweet_counts(&self, bot: BotId) -> Result<TweetCounts> {
        Ok(self
            .tweet_counts_of(Some(bot))?
            .remove(&bot)
            .unwrap_or_default())
    }

    /// Every bot's tweet counts, in one read (bots without tweets are absent).
    pub fn all_tweet_counts(&self) -> Result<HashMap<BotId, TweetCounts>> {
        self.tweet_counts_of(None)
    }

    fn tweet_counts_of(&self, bot: Option<BotId>) -> Result<HashMap<BotId, TweetCounts>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT bot_id, kept, drop_reason, count(*), sum(length(text)) FROM tweets{}
             GROUP BY bot_id, kept, drop_reason ORDER BY bot_id, drop_reason",
            only_bot(bot)
        ))?;
        let mut all: HashMap<BotId, TweetCounts> = HashMap::new();
        let rows = st.query_map(rusqlite::params_from_iter(bot), |r| {
            Ok((
                r.get::<_, BotId>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, Option<i64>>(4)?.unwrap_or(0) as u64,
            ))
        })?;
        for row in rows {
            let (bot, kept, reason, n, chars) = row?;
            let c = all.entry(bot).or_default();
            c.total += n;
            if kept {
                c.kept += n;
                c.kept_chars += chars;
            } else {
                c.dropped.push((reason.unwrap_or_default(), n));
            }
        }
        Ok(all)
    }

    /// Up to `limit` kept tweets of `bot` after row `after`, in row order: `(row, text)`.
    /// Paging by row keeps memory bounded however many tweets a bot has.
    pub fn kept_tweets(&self, bot: BotId, after: i64, limit: usize) -> Result<Vec<(i64, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, text FROM tweets WHERE bot_id = ?1 AND kept = 1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = st.query_map(params![bot, after, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every import of `bot`, oldest first: `(when, report JSON)`.
    pub fn imports(&self, bot: BotId) -> Result<Vec<(String, String)>> {
        let mut st = self.conn.prepare_cached(
            "SELECT imported_at, report FROM imports WHERE bot_id = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([bot], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The candidates of `bot`, oldest first.
    pub fn candidates(&self, bot: BotId) -> Result<Vec<CandidateRow>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, created_at, text, edited_text, sampling, novelty, status, score
             FROM candidates WHERE bot_id = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([bot], |r| {
            Ok(CandidateRow {
                id: r.get(0)?,
                created_at: r.get(1)?,
                text: r.get(2)?,
                edited_text: r.get(3)?,
                sampling: r.get(4)?,
                novelty: r.get(5)?,
                status: r.get(6)?,
                score: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// True when `text` is already a candidate of `bot`, or queued or posted by any bot.
    pub fn is_known_text(&self, bot: BotId, text: &str) -> Result<bool> {
        let mut st = self.conn.prepare_cached(
            "SELECT 1 FROM candidates WHERE bot_id = ?1 AND (text = ?2 OR edited_text = ?2)
             UNION ALL SELECT 1 FROM queue WHERE text = ?2 AND status IN ('queued', 'sending', 'posted')",
        )?;
        Ok(st.exists(params![bot, text])?)
    }

    /// Every training run of `bot`, oldest first.
    pub fn runs(&self, bot: BotId) -> Result<Vec<Run>> {
        Ok(self.runs_of(Some(bot))?.remove(&bot).unwrap_or_default())
    }

    /// Every bot's runs, oldest first, in one read (bots without runs are absent).
    pub fn all_runs(&self) -> Result<HashMap<BotId, Vec<Run>>> {
        self.runs_of(None)
    }

    fn runs_of(&self, bot: Option<BotId>) -> Result<HashMap<BotId, Vec<Run>>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT bot_id, id, kind, started_at, finished_at, status, hyperparams, checkpoint_dir,
                    steps, best_val_loss, losses, error FROM training_runs{} ORDER BY id",
            only_bot(bot)
        ))?;
        let mut all: HashMap<BotId, Vec<Run>> = HashMap::new();
        let rows = st.query_map(rusqlite::params_from_iter(bot), |r| {
            let run = Run {
                id: r.get(1)?,
                kind: r.get(2)?,
                started_at: r.get(3)?,
                finished_at: r.get(4)?,
                status: r.get(5)?,
                hyperparams: r.get(6)?,
                checkpoint_dir: r.get(7)?,
                steps: r.get::<_, Option<i64>>(8)?.map(|s| s as u64),
                best_val_loss: r.get(9)?,
                losses: r.get(10)?,
                error: r.get(11)?,
            };
            Ok((r.get::<_, BotId>(0)?, run))
        })?;
        for row in rows {
            let (bot, run) = row?;
            all.entry(bot).or_default().push(run);
        }
        Ok(all)
    }
}

const BOT_COLUMNS: &str =
    "SELECT id, name, handle, created_at, base_checkpoint, active_checkpoint, clean_policy, schedule
     FROM bots";

fn bot_from_row(r: &rusqlite::Row) -> rusqlite::Result<Bot> {
    Ok(Bot {
        id: r.get(0)?,
        name: r.get(1)?,
        handle: r.get(2)?,
        created_at: r.get(3)?,
        base_checkpoint: r.get(4)?,
        active_checkpoint: r.get(5)?,
        clean_policy: r.get(6)?,
        schedule: r.get(7)?,
    })
}

fn refuse(path: &Path, problem: String) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        problem,
        hint:
            "it was left untouched; move it aside, or point --home (AVIARY_HOME) at another folder"
                .into(),
    }
}

/// The writes of one transaction (see [`Store::write`]).
pub struct Writer<'c> {
    tx: Transaction<'c>,
    now: String,
}

impl Writer<'_> {
    /// A new bot; `None` when the name is taken.
    pub fn create_bot(
        &self,
        name: &str,
        handle: Option<&str>,
        clean_policy: &str,
    ) -> Result<Option<BotId>> {
        let n = self.tx.prepare_cached(
            "INSERT OR IGNORE INTO bots (name, handle, created_at, clean_policy) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![name, handle, self.now, clean_policy])?;
        Ok((n == 1).then(|| BotId(self.tx.last_insert_rowid())))
    }

    /// Removes a bot and everything it owns.
    pub fn remove_bot(&self, bot: BotId) -> Result<()> {
        self.tx.execute("DELETE FROM bots WHERE id = ?1", [bot])?;
        Ok(())
    }

    /// Sets a bot's handle.
    pub fn set_handle(&self, bot: BotId, handle: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE bots SET handle = ?2 WHERE id = ?1",
            params![bot, handle],
        )?;
        Ok(())
    }

    /// Sets a bot's cleaning policy (JSON).
    pub fn set_clean_policy(&self, bot: BotId, policy: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE bots SET clean_policy = ?2 WHERE id = ?1",
            params![bot, policy],
        )?;
        Ok(())
    }

    /// Sets the checkpoint a bot's fine-tuning starts from (`None`: the built-in base model).
    pub fn set_base_checkpoint(&self, bot: BotId, dir: Option<&str>) -> Result<()> {
        self.tx.execute(
            "UPDATE bots SET base_checkpoint = ?2 WHERE id = ?1",
            params![bot, dir],
        )?;
        Ok(())
    }

    /// Sets the checkpoint a bot generates with.
    pub fn set_active_checkpoint(&self, bot: BotId, dir: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE bots SET active_checkpoint = ?2 WHERE id = ?1",
            params![bot, dir],
        )?;
        Ok(())
    }

    /// Starts an import record; its report is filled in by [`Writer::finish_import`].
    pub fn begin_import(&self, bot: BotId) -> Result<ImportId> {
        self.tx.execute(
            "INSERT INTO imports (bot_id, imported_at, report) VALUES (?1, ?2, '{}')",
            params![bot, self.now],
        )?;
        Ok(ImportId(self.tx.last_insert_rowid()))
    }

    /// Stores an import's report (JSON).
    pub fn finish_import(&self, import: ImportId, report: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE imports SET report = ?2 WHERE id = ?1",
            params![import, report],
        )?;
        Ok(())
    }

    /// True when `bot` already has a tweet with this key (an earlier import of it).
    pub fn has_tweet(&self, bot: BotId, key: &str) -> Result<bool> {
        let mut st = self
            .tx
            .prepare_cached("SELECT 1 FROM tweets WHERE bot_id = ?1 AND tweet_key = ?2")?;
        Ok(st.exists(params![bot, key])?)
    }

    /// Stores a tweet; false (and nothing written) when its key is already there.
    pub fn insert_tweet(&self, bot: BotId, import: ImportId, t: &NewTweet) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT OR IGNORE INTO tweets (bot_id, import_id, tweet_key, tweet_id, created_at, raw_text,
                    is_retweet, is_reply, source_format, text, kept, drop_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                bot,
                import,
                t.key,
                t.tweet_id,
                t.created_at,
                t.raw_text,
                t.is_retweet,
                t.is_reply,
                t.source_format,
                t.text,
                t.drop_reason.is_none(),
                t.drop_reason
            ])?;
        Ok(n == 1)
    }

    /// Calls `f` with the cleaned text of each kept tweet of `bot`.
    pub fn each_kept_text(&self, bot: BotId, mut f: impl FnMut(&str)) -> Result<()> {
        let mut st = self
            .tx
            .prepare_cached("SELECT text FROM tweets WHERE bot_id = ?1 AND kept = 1")?;
        let mut rows = st.query([bot])?;
        while let Some(r) = rows.next()? {
            f(r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?);
        }
        Ok(())
    }

    /// Up to `limit` tweets of `bot` after row `after`, in row order, for re-cleaning.
    pub fn tweets_after(&self, bot: BotId, after: i64, limit: usize) -> Result<Vec<StoredTweet>> {
        let mut st = self.tx.prepare_cached(
            "SELECT id, raw_text, is_retweet, is_reply, created_at FROM tweets
             WHERE bot_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = st.query_map(params![bot, after, limit as i64], |r| {
            Ok(StoredTweet {
                row: r.get(0)?,
                raw_text: r.get(1)?,
                is_retweet: r.get(2)?,
                is_reply: r.get(3)?,
                created_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets a stored tweet's cleaned text and whether (and why not) it is kept.
    pub fn set_cleaned(&self, row: i64, text: &str, drop_reason: Option<&str>) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE tweets SET text = ?2, kept = ?3, drop_reason = ?4 WHERE id = ?1",
            )?
            .execute(params![row, text, drop_reason.is_none(), drop_reason])?;
        Ok(())
    }

    /// Stores a new candidate with its ranking score and what that was computed from (JSON);
    /// returns its id.
    pub fn insert_candidate(
        &self,
        bot: BotId,
        text: &str,
        sampling: &str,
        novelty: f64,
        score: f64,
        quality: &str,
    ) -> Result<i64> {
        self.tx
            .prepare_cached(
                "INSERT INTO candidates (bot_id, created_at, text, sampling, novelty, score, quality)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![bot, self.now, text, sampling, novelty, score, quality])?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Sets a candidate's status (and its edited text, for `edited`); false when `bot` has
    /// no candidate `id`.
    pub fn set_candidate_status(
        &self,
        bot: BotId,
        id: i64,
        status: &str,
        edited_text: Option<&str>,
    ) -> Result<bool> {
        let n = self
            .tx
            .prepare_cached(
                "UPDATE candidates SET status = ?3, edited_text = coalesce(?4, edited_text)
                 WHERE id = ?1 AND bot_id = ?2",
            )?
            .execute(params![id, bot, status, edited_text])?;
        Ok(n == 1)
    }

    /// Records a training run that is starting.
    pub fn start_run(
        &self,
        bot: Option<BotId>,
        kind: &str,
        hyperparams: &str,
        checkpoint_dir: &str,
    ) -> Result<RunId> {
        self.tx.execute(
            "INSERT INTO training_runs (bot_id, kind, started_at, status, hyperparams, checkpoint_dir)
             VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
            params![bot, kind, self.now, hyperparams, checkpoint_dir],
        )?;
        Ok(RunId(self.tx.last_insert_rowid()))
    }

    /// Records how a run ended.
    pub fn finish_run(&self, run: RunId, end: &RunEnd) -> Result<()> {
        self.tx.execute(
            "UPDATE training_runs SET finished_at = ?2, status = ?3, steps = ?4, best_val_loss = ?5,
                losses = ?6, error = ?7
             WHERE id = ?1",
            params![
                run,
                self.now,
                end.status,
                end.steps as i64,
                end.best_val_loss,
                end.losses,
                end.error
            ],
        )?;
        Ok(())
    }
}

/// The `WHERE` clause of a query over one bot's rows (bound as `?1`) or, for `None`, every
/// bot's. Two statement texts rather than `?1 IS NULL OR bot_id = ?1`, which SQLite plans as a
/// scan of the whole table even when a bot is given.
fn only_bot(bot: Option<BotId>) -> &'static str {
    if bot.is_some() {
        " WHERE bot_id = ?1"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tweet(key: &str, text: &str, drop: Option<&str>) -> NewTweet {
        NewTweet {
            key: key.into(),
            raw_text: text.into(),
            text: text.into(),
            source_format: "text".into(),
            drop_reason: drop.map(str::to_string),
            ..NewTweet::default()
        }
    }

    #[test]
    fn bots_and_tweets_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home").join(DB_FILE);
        let mut s = Store::open(&path).unwrap();
        s.set_clock(|| DateTime::from_timestamp(1_700_000_000, 0).unwrap());
        let bot = s
            .write(|w| {
                let b = w.create_bot("obama", Some("BarackObama"), "{}")?.unwrap();
                assert_eq!(w.create_bot("obama", None, "{}")?, None, "names are unique");
                let imp = w.begin_import(b)?;
                assert!(w.insert_tweet(b, imp, &tweet("id:1", "hello world", None))?);
                assert!(w.insert_tweet(b, imp, &tweet("id:2", "RT @x: hi", Some("retweet")))?);
                assert!(!w.insert_tweet(b, imp, &tweet("id:1", "hello world", None))?);
                w.finish_import(imp, "{\"read\":3}")?;
                Ok(b)
            })
            .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        let b = s.bot("obama").unwrap().unwrap();
        assert_eq!((b.id, b.handle.as_deref()), (bot, Some("BarackObama")));
        assert_eq!(b.created_at, "2023-11-14T22:13:20Z");
        let c = s.tweet_counts(bot).unwrap();
        assert_eq!((c.total, c.kept, c.kept_chars), (2, 1, 11));
        assert_eq!(c.dropped, vec![("retweet".to_string(), 1)]);
        assert_eq!(
            s.kept_tweets(bot, 0, 10).unwrap(),
            vec![(1, "hello world".to_string())]
        );
        assert_eq!(s.imports(bot).unwrap()[0].1, "{\"read\":3}");
        assert!(s.bot("nobody").unwrap().is_none());
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join(DB_FILE)).unwrap();
        let r: Result<()> = s.write(|w| {
            w.create_bot("half", None, "{}")?;
            Err(Error::invalid("stop", "-"))
        });
        assert!(r.is_err());
        assert!(s.bots().unwrap().is_empty());
    }

    #[test]
    fn removing_a_bot_removes_its_tweets() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join(DB_FILE)).unwrap();
        let b = s
            .write(|w| {
                let b = w.create_bot("gone", None, "{}")?.unwrap();
                let imp = w.begin_import(b)?;
                w.insert_tweet(b, imp, &tweet("k", "some text", None))?;
                w.start_run(Some(b), "train", "{}", "/tmp/x")?;
                Ok(b)
            })
            .unwrap();
        s.write(|w| w.remove_bot(b)).unwrap();
        let left: i64 = s
            .conn
            .query_row("SELECT count(*) FROM tweets", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        assert!(s.runs(b).unwrap().is_empty());
    }

    #[test]
    fn a_database_of_the_first_schema_migrates_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            // What the first aviary wrote: schema 1, one row in each table.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(migrations::MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "application_id", APPLICATION_ID)
                .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute_batch(
                "INSERT INTO bots (id, name, created_at, clean_policy) VALUES (1, 'old', '2026-11-01T00:00:00Z', '{}');
                 INSERT INTO tweets (bot_id, tweet_key, raw_text, is_retweet, is_reply, source_format, text, kept)
                     VALUES (1, 'k1', 'an old tweet', 0, 0, 'text', 'an old tweet', 1);
                 INSERT INTO candidates (bot_id, created_at, text, sampling, novelty)
                     VALUES (1, '2026-11-02T00:00:00Z', 'an old candidate', '{}', 0.9);
                 INSERT INTO queue (bot_id, text, position, updated_at)
                     VALUES (1, 'an old queued tweet', 1, '2026-11-03T00:00:00Z');",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let v: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, SCHEMA_VERSION);
        let bot = store.bot("old").unwrap().expect("the bot is still there");
        assert_eq!(store.kept_tweets(bot.id, 0, 10).unwrap().len(), 1);
        let c = store.candidates(bot.id).unwrap();
        assert_eq!(
            (c[0].text.as_str(), c[0].novelty, c[0].score),
            ("an old candidate", Some(0.9), None)
        );
        let q = store.queue(Some(bot.id)).unwrap();
        assert_eq!(q[0].text, "an old queued tweet");
        assert_eq!(q[0].status, QueueStatus::Queued);
        // Schema 2's defaults, and schema 3's backfill: queued when it last changed.
        assert_eq!(q[0].attempts, 0);
        assert_eq!(q[0].queued_at.as_deref(), Some("2026-11-03T00:00:00Z"));
        assert_eq!(q[0].first_claimed_at, None);
    }

    #[test]
    fn migrates_an_empty_file_and_refuses_foreign_newer_and_corrupt_ones() {
        let dir = tempfile::tempdir().unwrap();
        // An empty file is an empty database: migrated.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        Store::open(&empty).unwrap();
        let v: i64 = Connection::open(&empty)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v as usize, SCHEMA_VERSION);

        let newer = dir.path().join("newer.db");
        {
            Store::open(&newer).unwrap();
            let c = Connection::open(&newer).unwrap();
            c.pragma_update(None, "journal_mode", "DELETE").ok();
            c.pragma_update(None, "user_version", SCHEMA_VERSION as i64 + 1)
                .unwrap();
        }
        let before = std::fs::read(&newer).unwrap();
        let e = Store::open(&newer).err().unwrap().to_string();
        assert!(e.contains("newer aviary") && e.contains("newer.db"), "{e}");
        assert_eq!(
            std::fs::read(&newer).unwrap(),
            before,
            "the newer database was changed"
        );

        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let e = Store::open(&foreign).err().unwrap().to_string();
        assert!(e.contains("another program"), "{e}");

        let corrupt = dir.path().join("corrupt.db");
        let junk: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
        std::fs::write(&corrupt, &junk).unwrap();
        let e = Store::open(&corrupt).err().unwrap().to_string();
        assert!(
            e.contains("corrupt.db") && e.contains("not a SQLite database") && e.contains("HINT"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&corrupt).unwrap(),
            junk,
            "the corrupt file was changed"
        );
    }
}
