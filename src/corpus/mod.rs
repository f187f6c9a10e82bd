//! Getting tweets in: reading every form a user has an account's tweets in (an X archive
//! export, its zip, API v1.1 and v2 JSON, CSV, plain text), streamed one tweet at a time, and
//! the cleaning policy that decides what a model learns from. Knows no database: `app` stores
//! what this reads.

pub mod archive;
pub mod clean;
pub mod csv;
pub mod json;
pub mod report;
pub mod text;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

pub use clean::{CleanPolicy, Dedup, DropReason, UrlPolicy};
pub use report::ImportReport;
pub use text::PlainTextFiles;

use crate::{Error, Result};

/// One tweet as read from a file, before cleaning.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawTweet {
    /// The tweet's id, when the format has one.
    pub id: Option<String>,
    /// When it was posted, when the format says.
    pub created_at: Option<DateTime<Utc>>,
    /// The text as the file has it (entities still encoded, URLs and mentions still in).
    pub text: String,
    /// A retweet of someone else's tweet (not the account's own words).
    pub is_retweet: bool,
    /// A reply to another tweet.
    pub is_reply: bool,
    /// The format it came in.
    pub format: Format,
}

/// The formats aviary reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// An X/Twitter archive export: the zip, its folder, or its `data/tweets.js`.
    Archive,
    /// API v1.1 statuses: a JSON array or JSON lines.
    ApiV1,
    /// API v2 pages (`{"data": [...]}`) or tweets.
    ApiV2,
    /// CSV (or TSV) with a header naming the text column.
    Csv,
    /// Plain text, one tweet per line.
    #[default]
    Text,
}

impl Format {
    /// Every format, as named on the command line.
    pub const ALL: [Format; 5] = [
        Format::Archive,
        Format::ApiV1,
        Format::ApiV2,
        Format::Csv,
        Format::Text,
    ];

    /// The name used on the command line and in the store.
    pub fn name(self) -> &'static str {
        match self {
            Format::Archive => "archive",
            Format::ApiV1 => "api-v1",
            Format::ApiV2 => "api-v2",
            Format::Csv => "csv",
            Format::Text => "text",
        }
    }

    /// What a person calls it.
    pub fn describe(self) -> &'static str {
        match self {
            Format::Archive => "X archive",
            Format::ApiV1 => "API v1.1 JSON",
            Format::ApiV2 => "API v2 JSON",
            Format::Csv => "CSV",
            Format::Text => "plain text",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                Error::invalid(
                    format!("unknown format `{s}`"),
                    format!("use one of: {}", names.join(", ")),
                )
            })
    }
}

/// What reading one path found besides the tweets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceInfo {
    /// The format read.
    pub format: Format,
    /// The files actually read (an archive's parts, zip entries as `zip:entry`).
    pub files: Vec<String>,
    /// The account's handle, when the source names it (an archive's `account.js`).
    pub handle: Option<String>,
}

/// Receives each tweet as it is read; an error stops the read and is returned as is.
pub type TweetSink<'a> = dyn FnMut(RawTweet) -> Result<()> + 'a;

/// Reads every tweet at `path` in `format` (detected when `None`), handing each to `sink` as
/// it is parsed: memory stays bounded however large the file.
pub fn read_tweets(
    path: &Path,
    format: Option<Format>,
    sink: &mut TweetSink,
) -> Result<SourceInfo> {
    let format = match format {
        Some(f) => f,
        None => detect(path)?,
    };
    match format {
        Format::Archive => archive::read(path, sink),
        Format::ApiV1 | Format::ApiV2 => {
            let mut n = 0u64;
            let file = open(path)?;
            let seen = json::read(file, path, &path.display().to_string(), format, &mut |t| {
                n += 1;
                sink(t)
            })?;
            require_some(path, n)?;
            Ok(SourceInfo {
                format: seen,
                files: vec![path.display().to_string()],
                handle: None,
            })
        }
        Format::Csv => {
            let n = csv::read(path, sink)?;
            require_some(path, n)?;
            Ok(SourceInfo {
                format,
                files: vec![path.display().to_string()],
                handle: None,
            })
        }
        Format::Text => {
            let mut n = 0u64;
            for line in text::FileLines::new(path) {
                n += 1;
                sink(RawTweet {
                    text: line?,
                    ..RawTweet::default()
                })?;
            }
            require_some(path, n)?;
            Ok(SourceInfo {
                format,
                files: vec![path.display().to_string()],
                handle: None,
            })
        }
    }
}

/// An import of nothing is a mistake the user should hear about.
fn require_some(path: &Path, n: u64) -> Result<()> {
    if n == 0 {
        return Err(Error::corpus(
            path,
            "holds no tweets (the file is empty)",
            "check that this is the file you meant",
        ));
    }
    Ok(())
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| Error::io(path, e))
}

/// Guesses the format of `path` from what it is (a folder, a zip) and how it starts.
pub fn detect(path: &Path) -> Result<Format> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Ok(Format::Archive);
    }
    let mut head = Vec::with_capacity(4096);
    open(path)?
        .take(4096)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    let start = trim_start(&head);
    if start.is_empty() {
        return Err(Error::corpus(
            path,
            "is empty: no tweets to import",
            "check that this is the file you meant",
        ));
    }
    if let Some((problem, hint)) = not_text(&head) {
        return Err(Error::corpus(path, problem, hint));
    }
    if head.starts_with(b"PK\x03\x04")
        || start.starts_with(b"window.YTD.")
        || start.starts_with(b"Grailbird.data.")
    {
        return Ok(Format::Archive);
    }
    if start[0] == b'[' || start[0] == b'{' {
        // Content decides, not the extension: v2 wraps tweets in pages or has v2-only fields.
        let text = String::from_utf8_lossy(start);
        let v2 = text.contains("\"data\"") && !text.contains("\"full_text\"")
            || text.contains("\"edit_history_tweet_ids\"")
            || text.contains("\"referenced_tweets\"");
        return Ok(if v2 { Format::ApiV2 } else { Format::ApiV1 });
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    if matches!(ext.as_deref(), Some("csv" | "tsv")) {
        return Ok(Format::Csv);
    }
    let first_line = start.split(|b| *b == b'\n').next().unwrap_or_default();
    if csv::header_names_text(&String::from_utf8_lossy(first_line)) {
        return Ok(Format::Csv);
    }
    Ok(Format::Text)
}

/// What is wrong with a file whose first bytes are `head`, when they show it is no UTF-8 text
/// (a zip archive excepted): UTF-16 text, or a binary file (text never holds a NUL byte).
pub(crate) fn not_text(head: &[u8]) -> Option<(&'static str, &'static str)> {
    if head.starts_with(b"\xff\xfe") || head.starts_with(b"\xfe\xff") {
        return Some((
            "is UTF-16 text; aviary reads UTF-8",
            "convert it: `iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8`, then import FILE.utf8",
        ));
    }
    if head.starts_with(b"PK\x03\x04") || !head.contains(&0) {
        return None;
    }
    Some((
        "is not a text file (it holds NUL bytes: a program, an image or other binary data)",
        "import an X archive (its .zip or folder), tweets.js, API JSON, CSV, or a text file \
         with one tweet a line",
    ))
}

/// `b` without a byte-order mark and leading white space.
pub(crate) fn trim_start(b: &[u8]) -> &[u8] {
    let b = b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b);
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Parses the timestamps the formats use: the archive's and v1.1's `Sat Feb 18 12:33:11
/// +0000 2023`, v2's RFC 3339, the old archive's `2011-08-31 05:11:50 +0000`, Unix seconds or
/// milliseconds, and `8/14/14 16:50`. `None` when none fits: a missing date loses nothing.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = s.parse().ok()?;
        return if s.len() >= 13 {
            DateTime::from_timestamp_millis(n)
        } else {
            DateTime::from_timestamp(n, 0)
        };
    }
    // `Sat Feb 18 12:33:11 +0000 2023`: the weekday is left out, so a wrong one loses nothing.
    let no_weekday = s.split_once(' ').map_or(s, |(_, rest)| rest);
    if let Ok(t) = DateTime::parse_from_str(no_weekday, "%b %d %H:%M:%S %z %Y") {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z") {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%m/%d/%y %H:%M",
        "%m/%d/%Y %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// A retweet in the archive (which keeps no `retweeted_status`) shows only in its text.
pub fn looks_like_retweet(text: &str) -> bool {
    text.starts_with("RT @")
}

/// The paths to read for `inputs`, each once even when named twice.
pub fn unique_paths(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = std::collections::HashSet::new();
    inputs
        .iter()
        .filter(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_of_every_format() {
        let want = "2023-02-18T12:33:11Z";
        for s in [
            "Sat Feb 18 12:33:11 +0000 2023",
            "2023-02-18T12:33:11.000Z",
            "2023-02-18 12:33:11 +0000",
            "2023-02-18 13:33:11 +0100",
            "1676723591",
            "1676723591000",
        ] {
            let t = parse_time(s).unwrap_or_else(|| panic!("{s} did not parse"));
            assert_eq!(
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                want,
                "{s}"
            );
        }
        assert_eq!(
            parse_time("8/14/14 16:50").unwrap().to_rfc3339(),
            "2014-08-14T16:50:00+00:00"
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time(""), None);
    }

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        let e = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(e.contains("xml") && e.contains("archive, api-v1"), "{e}");
    }
}
