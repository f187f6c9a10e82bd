//! The import report: what was read, what was kept, what was dropped and why, and what the
//! kept tweets cover, so the user sees what the model will learn from.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{DropReason, RawTweet};

/// Counts of one import (or of a bot's whole corpus after re-cleaning).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImportReport {
    /// The files read.
    pub files: Vec<String>,
    /// The formats read, by name.
    pub formats: Vec<String>,
    /// The handle the source names, if any.
    pub handle: Option<String>,
    /// Tweets read.
    pub read: u64,
    /// Tweets already in the store from an earlier import (same id): skipped.
    pub already_imported: u64,
    /// Tweets kept for training.
    pub kept: u64,
    /// Tweets dropped, per reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Characters of the kept tweets' cleaned text.
    pub kept_chars: u64,
    /// Earliest date of a kept tweet.
    pub first: Option<DateTime<Utc>>,
    /// Latest date of a kept tweet.
    pub last: Option<DateTime<Utc>>,
}

impl ImportReport {
    /// Counts a new tweet and what cleaning made of it.
    pub fn count(&mut self, tweet: &RawTweet, outcome: &Result<String, DropReason>) {
        match outcome {
            Ok(text) => {
                self.kept += 1;
                self.kept_chars += text.chars().count() as u64;
                if let Some(t) = tweet.created_at {
                    self.first = Some(self.first.map_or(t, |f| f.min(t)));
                    self.last = Some(self.last.map_or(t, |l| l.max(t)));
                }
            }
            Err(r) => *self.dropped.entry(*r).or_default() += 1,
        }
    }

    /// Tweets dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// The files read, shortened to the first and last when there are many.
    pub fn files_summary(&self) -> String {
        match self.files.as_slice() {
            [] => "nothing".into(),
            [a] => a.clone(),
            [a, b] => format!("{a}, {b}"),
            [a, .., z] => format!("{a} ... {z} ({} files)", self.files.len()),
        }
    }

    /// The report as a person reads it, a few aligned lines.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "  read      {:>8}", self.read);
        if self.already_imported > 0 {
            let _ = writeln!(
                s,
                "  skipped   {:>8}  already imported",
                self.already_imported
            );
        }
        let span = match (self.first, self.last) {
            (Some(a), Some(b)) => format!(", {} to {}", a.format("%Y-%m-%d"), b.format("%Y-%m-%d")),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "  kept      {:>8}  {} characters{span}",
            self.kept, self.kept_chars
        );
        let reasons: Vec<String> = DropReason::ALL
            .iter()
            .filter_map(|r| self.dropped.get(r).map(|n| format!("{r} {n}")))
            .collect();
        let _ = write!(s, "  dropped   {:>8}", self.dropped_total());
        if !reasons.is_empty() {
            let _ = write!(s, "  {}", reasons.join(", "));
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::parse_time;

    #[test]
    fn counts_and_renders() {
        let mut r = ImportReport::default();
        let dated = |s: &str| RawTweet {
            created_at: parse_time(s),
            ..RawTweet::default()
        };
        r.read = 4;
        r.count(&dated("2020-01-02 00:00:00"), &Ok("hello".into()));
        r.count(&dated("2019-05-06 00:00:00"), &Ok("héllo!".into()));
        r.count(&dated("2021-01-01 00:00:00"), &Err(DropReason::Retweet));
        r.count(&RawTweet::default(), &Err(DropReason::Duplicate));
        assert_eq!((r.kept, r.kept_chars, r.dropped_total()), (2, 11, 2));
        let text = r.render();
        assert!(
            text.contains("kept             2  11 characters, 2019-05-06 to 2020-01-02"),
            "{text}"
        );
        assert!(
            text.contains("dropped          2  retweet 1, duplicate 1"),
            "{text}"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ImportReport>(&json).unwrap(), r);
    }
}
