//! The posting queue table: each entry moves queued → sending → posted (with the tweet id)
//! or failed (with the reason), one committed step at a time, so that after a crash the
//! database says exactly how far each post got.

use std::fmt;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, OptionalExtension, ToSql};

use super::{BotId, Store, Writer};
use crate::{Error, Result};

/// Where a queue entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueStatus {
    /// Waiting for its slot.
    Queued,
    /// Claimed for sending: it may or may not be on X yet.
    Sending,
    /// On X (or in the dry-run outbox).
    Posted,
    /// Refused for good (see the error).
    Failed,
}

impl QueueStatus {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueStatus::Queued => "queued",
            QueueStatus::Sending => "sending",
            QueueStatus::Posted => "posted",
            QueueStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for QueueStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for QueueStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for QueueStatus {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Self> {
        match v.as_str()? {
            "queued" => Ok(QueueStatus::Queued),
            "sending" => Ok(QueueStatus::Sending),
            "posted" => Ok(QueueStatus::Posted),
            "failed" => Ok(QueueStatus::Failed),
            other => Err(FromSqlError::Other(
                format!("unknown queue status `{other}`").into(),
            )),
        }
    }
}

/// One queue entry as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueRow {
    /// Row id (what `aviary queue` commands take).
    pub id: i64,
    /// The bot.
    pub bot_id: BotId,
    /// The bot's name.
    pub bot: String,
    /// The candidate it came from, if any.
    pub candidate_id: Option<i64>,
    /// The text to post.
    pub text: String,
    /// Order among the bot's entries.
    pub position: i64,
    /// Where it is.
    pub status: QueueStatus,
    /// When the scheduler last planned to post it (RFC 3339).
    pub planned_at: Option<String>,
    /// The id X gave it.
    pub posted_tweet_id: Option<String>,
    /// Why it failed, or what went wrong on the last attempt.
    pub error: Option<String>,
    /// Sends attempted.
    pub attempts: u32,
    /// When it was last claimed for sending.
    pub sending_since: Option<String>,
    /// Not to be tried again before this.
    pub next_attempt_at: Option<String>,
    /// When it was posted.
    pub posted_at: Option<String>,
    /// When it was queued (RFC 3339; entries queued before this was kept: their last change).
    pub queued_at: Option<String>,
    /// When it was first claimed for sending, if it ever was.
    pub first_claimed_at: Option<String>,
}

const QUEUE_COLUMNS: &str = "SELECT q.id, q.bot_id, b.name, q.candidate_id, q.text, q.position,
    q.status, q.planned_at, q.posted_tweet_id, q.error, q.attempts, q.sending_since,
    q.next_attempt_at, q.posted_at, q.queued_at, q.first_claimed_at
    FROM queue q JOIN bots b ON b.id = q.bot_id";

/// Sending first, then waiting entries in order, then failed, then the most recent posts.
const QUEUE_ORDER: &str = "ORDER BY b.name,
    CASE q.status WHEN 'sending' THEN 0 WHEN 'queued' THEN 1 WHEN 'failed' THEN 2 ELSE 3 END,
    CASE WHEN q.status = 'posted' THEN q.posted_at END DESC, q.position, q.id";

fn queue_row(r: &rusqlite::Row) -> rusqlite::Result<QueueRow> {
    Ok(QueueRow {
        id: r.get(0)?,
        bot_id: r.get(1)?,
        bot: r.get(2)?,
        candidate_id: r.get(3)?,
        text: r.get(4)?,
        position: r.get(5)?,
        status: r.get(6)?,
        planned_at: r.get(7)?,
        posted_tweet_id: r.get(8)?,
        error: r.get(9)?,
        attempts: r.get(10)?,
        sending_since: r.get(11)?,
        next_attempt_at: r.get(12)?,
        posted_at: r.get(13)?,
        queued_at: r.get(14)?,
        first_claimed_at: r.get(15)?,
    })
}

impl Store {
    /// The queue of `bot` (every bot's when `None`).
    pub fn queue(&self, bot: Option<BotId>) -> Result<Vec<QueueRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "{QUEUE_COLUMNS} WHERE ?1 IS NULL OR q.bot_id = ?1 {QUEUE_ORDER}"
        ))?;
        let rows = st.query_map([bot], queue_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One entry.
    pub fn queue_entry(&self, id: i64) -> Result<Option<QueueRow>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("{QUEUE_COLUMNS} WHERE q.id = ?1"))?;
        Ok(st.query_row([id], queue_row).optional()?)
    }

    /// The entries of `bot` with `status`, in queue order.
    pub fn queue_with(&self, bot: BotId, status: QueueStatus) -> Result<Vec<QueueRow>> {
        let mut st = self.conn.prepare_cached(&format!(
            "{QUEUE_COLUMNS} WHERE q.bot_id = ?1 AND q.status = ?2 ORDER BY q.position, q.id"
        ))?;
        let rows = st.query_map(params![bot, status], queue_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Posts of `bot` with `posted_at` in [`from`, `to`) (RFC 3339 UTC, compared as text).
    pub fn posted_between(&self, bot: BotId, from: &str, to: &str) -> Result<u32> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM queue WHERE bot_id = ?1 AND status = 'posted'
             AND posted_at >= ?2 AND posted_at < ?3",
            params![bot, from, to],
            |r| r.get(0),
        )?)
    }

    /// When the earliest entry now queued for `bot` was queued.
    pub fn first_queued_at(&self, bot: BotId) -> Result<Option<String>> {
        Ok(self.conn.query_row(
            "SELECT min(queued_at) FROM queue WHERE bot_id = ?1 AND status = 'queued'",
            [bot],
            |r| r.get(0),
        )?)
    }

    /// When `bot` last posted.
    pub fn last_posted_at(&self, bot: BotId) -> Result<Option<String>> {
        Ok(self.conn.query_row(
            "SELECT max(posted_at) FROM queue WHERE bot_id = ?1 AND status = 'posted'",
            [bot],
            |r| r.get(0),
        )?)
    }
}

impl Writer<'_> {
    /// An entry of any bot, queued, sending or posted, with exactly this text.
    pub fn live_entry_with_text(&self, text: &str) -> Result<Option<QueueRow>> {
        let mut st = self.tx.prepare_cached(&format!(
            "{QUEUE_COLUMNS} WHERE q.text = ?1 AND q.status IN ('queued', 'sending', 'posted') LIMIT 1"
        ))?;
        Ok(st.query_row([text], queue_row).optional()?)
    }
    /// Adds `text` at the end of `bot`'s queue; returns the entry's id.
    pub fn enqueue(&self, bot: BotId, candidate: Option<i64>, text: &str) -> Result<i64> {
        self.tx.execute(
            "INSERT INTO queue (bot_id, candidate_id, text, position, status, updated_at, queued_at)
             VALUES (?1, ?2, ?3,
                     (SELECT coalesce(max(position), 0) + 1 FROM queue WHERE bot_id = ?1),
                     'queued', ?4, ?4)",
            params![bot, candidate, text, self.now],
        )?;
        Ok(self.tx.last_insert_rowid())
    }

    /// The entry of candidate `candidate`, if it is queued.
    pub fn entry_of_candidate(&self, candidate: i64) -> Result<Option<(i64, QueueStatus)>> {
        Ok(self
            .tx
            .query_row(
                "SELECT id, status FROM queue WHERE candidate_id = ?1",
                [candidate],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Deletes entry `id` if it is queued or failed; false otherwise.
    pub fn dequeue(&self, id: i64) -> Result<bool> {
        Ok(self.tx.execute(
            "DELETE FROM queue WHERE id = ?1 AND status IN ('queued', 'failed')",
            [id],
        )? == 1)
    }

    /// Puts queued entry `id` at place `to` (1-based) among its bot's queued entries.
    pub fn move_entry(&self, bot: BotId, id: i64, to: usize) -> Result<()> {
        let mut ids: Vec<i64> = self
            .tx
            .prepare_cached(
                "SELECT id FROM queue WHERE bot_id = ?1 AND status = 'queued' ORDER BY position, id",
            )?
            .query_map([bot], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let from = ids.iter().position(|i| *i == id).ok_or_else(|| {
            Error::invalid(
                format!("queue entry {id} is not waiting in this bot's queue"),
                "only queued entries can be moved; see `aviary queue list`",
            )
        })?;
        let moved = ids.remove(from);
        ids.insert(to.clamp(1, ids.len() + 1) - 1, moved);
        // Queued entries take places after anything already sent, in the new order.
        let base: i64 = self.tx.query_row(
            "SELECT coalesce(max(position), 0) FROM queue WHERE bot_id = ?1",
            [bot],
            |r| r.get(0),
        )?;
        let mut st = self
            .tx
            .prepare_cached("UPDATE queue SET position = ?2, updated_at = ?3 WHERE id = ?1")?;
        for (i, qid) in ids.iter().enumerate() {
            st.execute(params![qid, base + 1 + i as i64, self.now])?;
        }
        Ok(())
    }

    /// queued → sending, at `at`; false if the entry is no longer queued.
    pub fn claim(&self, id: i64, at: &str) -> Result<bool> {
        Ok(self.tx.execute(
            "UPDATE queue SET status = 'sending', sending_since = ?2, attempts = attempts + 1,
                 first_claimed_at = coalesce(first_claimed_at, ?2),
                 next_attempt_at = NULL, updated_at = ?3
             WHERE id = ?1 AND status = 'queued'",
            params![id, at, self.now],
        )? == 1)
    }

    /// sending → posted as tweet `tweet_id`.
    pub fn mark_posted(&self, id: i64, tweet_id: &str, at: &str) -> Result<bool> {
        self.mark_posted_noting(id, Some(tweet_id), at, None)
    }

    /// sending → posted, as tweet `tweet_id` when known, with a note (why the id is unknown).
    pub fn mark_posted_noting(
        &self,
        id: i64,
        tweet_id: Option<&str>,
        at: &str,
        note: Option<&str>,
    ) -> Result<bool> {
        Ok(self.tx.execute(
            "UPDATE queue SET status = 'posted', posted_tweet_id = ?2, posted_at = ?3,
                 error = ?5, next_attempt_at = NULL, updated_at = ?4
             WHERE id = ?1 AND status = 'sending'",
            params![id, tweet_id, at, self.now, note],
        )? == 1)
    }

    /// → failed, with the reason.
    pub fn mark_failed(&self, id: i64, reason: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE queue SET status = 'failed', error = ?2, next_attempt_at = NULL, updated_at = ?3
             WHERE id = ?1",
            params![id, reason, self.now],
        )?;
        Ok(())
    }

    /// sending → queued: certainly not posted; not to be tried before `not_before`.
    pub fn release(&self, id: i64, not_before: Option<&str>, note: Option<&str>) -> Result<()> {
        self.tx.execute(
            "UPDATE queue SET status = 'queued', next_attempt_at = ?2, error = ?3, updated_at = ?4
             WHERE id = ?1 AND status = 'sending'",
            params![id, not_before, note, self.now],
        )?;
        Ok(())
    }

    /// Stays sending (it may be on X): look again at `at`.
    pub fn check_later(&self, id: i64, at: &str, note: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE queue SET next_attempt_at = ?2, error = ?3, updated_at = ?4
             WHERE id = ?1 AND status = 'sending'",
            params![id, at, note, self.now],
        )?;
        Ok(())
    }

    /// failed → queued at the end, attempts reset (the user's "try again").
    pub fn retry_failed(&self, id: i64) -> Result<bool> {
        Ok(self.tx.execute(
            "UPDATE queue SET status = 'queued', attempts = 0, error = NULL, next_attempt_at = NULL,
                 position = (SELECT coalesce(max(position), 0) + 1 FROM queue q2
                             WHERE q2.bot_id = queue.bot_id),
                 updated_at = ?2
             WHERE id = ?1 AND status = 'failed'",
            params![id, self.now],
        )? == 1)
    }

    /// Records when the scheduler plans to post entry `id`.
    pub fn set_planned(&self, id: i64, at: Option<&str>) -> Result<()> {
        self.tx.execute(
            "UPDATE queue SET planned_at = ?2 WHERE id = ?1",
            params![id, at],
        )?;
        Ok(())
    }

    /// Stores `bot`'s schedule (JSON).
    pub fn set_schedule(&self, bot: BotId, schedule: &str) -> Result<()> {
        self.tx.execute(
            "UPDATE bots SET schedule = ?2 WHERE id = ?1",
            params![bot, schedule],
        )?;
        Ok(())
    }
}
