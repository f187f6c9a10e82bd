//! Dry run: an [`XApi`] that "posts" by appending a JSON line to an outbox file
//! (`HOME/outbox.jsonl`) and reads a bot's "timeline" back from it, so the scheduler runs
//! exactly as it would live, crash recovery included, without touching X.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::{ApiError, PostedTweet, TimelinePage, TimelineQuery, TimelineTweet, XApi, XUser};

/// One line of the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The bot that "posted" it.
    pub bot: String,
    /// A made-up id (`dry-...`).
    pub id: String,
    /// The text.
    pub text: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// The dry-run outbox, as bot `bot`.
pub struct Outbox {
    path: PathBuf,
    bot: String,
}

impl Outbox {
    /// The outbox at `path`, posting as `bot`.
    pub fn new(path: &Path, bot: &str) -> Outbox {
        Outbox {
            path: path.to_path_buf(),
            bot: bot.to_string(),
        }
    }

    /// Every entry in the file, oldest first.
    pub fn entries(path: &Path) -> Result<Vec<OutboxEntry>, ApiError> {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ApiError::Outbox(format!("{}: {e}", path.display()))),
        };
        let mut out = Vec::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| ApiError::Outbox(format!("{}: {e}", path.display())))?;
            if line.trim().is_empty() {
                continue;
            }
            // A line cut short by a crash mid-write is no post: the scheduler re-sends it.
            match serde_json::from_str(&line) {
                Ok(e) => out.push(e),
                Err(_) => tracing::warn!("{}:{}: unreadable line skipped", path.display(), i + 1),
            }
        }
        Ok(out)
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn ends_unfinished(f: &mut std::fs::File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

impl XApi for Outbox {
    fn post(&self, text: &str) -> Result<PostedTweet, ApiError> {
        let err = |e: std::io::Error| ApiError::Outbox(format!("{}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let id = format!(
            "dry-{}",
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let entry = OutboxEntry {
            bot: self.bot.clone(),
            id: id.clone(),
            text: text.to_string(),
            at: now(),
        };
        let mut line = serde_json::to_string(&entry).expect("an entry serialises");
        line.push('\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        // A line cut short by a crash must not swallow this one.
        if ends_unfinished(&mut f).map_err(err)? {
            line.insert(0, '\n');
        }
        // On disk before the scheduler records it as posted, like a post X has committed.
        f.write_all(line.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(err)?;
        Ok(PostedTweet {
            id,
            text: text.to_string(),
        })
    }

    fn me(&self) -> Result<XUser, ApiError> {
        Ok(XUser {
            id: "0".into(),
            username: self.bot.clone(),
        })
    }

    fn user_by_username(&self, username: &str) -> Result<XUser, ApiError> {
        Err(ApiError::Rejected {
            status: 400,
            detail: format!("a dry run cannot look up @{username} on X; add credentials first"),
        })
    }

    fn user_tweets(&self, _user_id: &str, q: &TimelineQuery) -> Result<TimelinePage, ApiError> {
        let since = q.start_time;
        let mut tweets: Vec<TimelineTweet> = Outbox::entries(&self.path)?
            .into_iter()
            .filter(|e| e.bot == self.bot)
            .filter(|e| match (since, DateTime::parse_from_rfc3339(&e.at)) {
                (Some(s), Ok(at)) => at >= s,
                _ => true,
            })
            .map(|e| TimelineTweet {
                id: e.id,
                text: e.text,
                created_at: Some(e.at),
            })
            .collect();
        tweets.reverse();
        tweets.truncate(q.max_results.clamp(5, 100) as usize);
        Ok(TimelinePage {
            tweets,
            raw: String::new(),
            next_token: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_are_read_back_newest_first_per_bot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let a = Outbox::new(&path, "a");
        let b = Outbox::new(&path, "b");
        a.post("one").unwrap();
        b.post("other").unwrap();
        let two = a.post("two").unwrap();
        assert!(two.id.starts_with("dry-"));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"bot\":\"a\",\"id\":\"cut")
            .unwrap();
        let q = TimelineQuery {
            max_results: 10,
            ..Default::default()
        };
        let texts: Vec<_> = a
            .user_tweets("0", &q)
            .unwrap()
            .tweets
            .into_iter()
            .map(|t| t.text)
            .collect();
        assert_eq!(texts, ["two", "one"]);
        a.post("three").unwrap();
        assert_eq!(a.user_tweets("0", &q).unwrap().tweets[0].text, "three");
    }
}
