//! Tweets in CSV (or TSV) with a header. The text column is found by name; so are the id,
//! the date, and the columns that mark retweets and replies in the exports people have (the
//! old archive's `tweets.csv`, trumptwitterarchive, fivethirtyeight, tweet scrapers).

use std::path::Path;

use super::{looks_like_retweet, parse_time, Format, RawTweet, TweetSink};
use crate::{Error, Result};

/// Header names that hold the tweet text, in order of preference.
pub const TEXT_COLUMNS: [&str; 7] = [
    "full_text",
    "text",
    "tweet_text",
    "tweet",
    "content",
    "body",
    "message",
];
const ID_COLUMNS: [&str; 4] = ["id_str", "tweet_id", "id", "status_id"];
const TIME_COLUMNS: [&str; 5] = ["created_at", "timestamp", "time", "date", "datetime"];
const REPLY_COLUMNS: [&str; 3] = [
    "in_reply_to_status_id",
    "in_reply_to_status_id_str",
    "in_reply_to_user_id",
];
const RETWEET_COLUMNS: [&str; 2] = ["retweeted_status_id", "retweeted_status_id_str"];

/// True when a header line names a text column (detection of CSV without a .csv name).
pub fn header_names_text(line: &str) -> bool {
    let sep = if line.contains('\t') { '\t' } else { ',' };
    line.contains(sep)
        && line.split(sep).any(|h| {
            TEXT_COLUMNS.contains(&h.trim().trim_matches('"').to_ascii_lowercase().as_str())
        })
}

/// Reads every row of `path` as a tweet; returns how many.
pub fn read(path: &Path, sink: &mut TweetSink) -> Result<u64> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let tab = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("tsv"));
    let mut rdr = ::csv::ReaderBuilder::new()
        .delimiter(if tab { b'\t' } else { b',' })
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(1 << 16, file));
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let find = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| headers.iter().position(|h| h == n))
    };
    let Some(text_col) = find(&TEXT_COLUMNS) else {
        return Err(Error::corpus(
            path,
            format!(
                "line 1: no text column in the header (found: {}); expected one of: {}",
                headers.join(", "),
                TEXT_COLUMNS.join(", ")
            ),
            "rename the column holding the tweets to `text`, or pass --format text for one tweet per line",
        ));
    };
    let id_col = find(&ID_COLUMNS);
    let time_col = find(&TIME_COLUMNS);
    let reply_cols: Vec<usize> = REPLY_COLUMNS.iter().filter_map(|n| find(&[n])).collect();
    let retweet_col = find(&RETWEET_COLUMNS);
    let is_retweet_col = find(&["is_retweet"]);
    // tweety's `type`: `rt:<id>` a retweet, `r:<id>` a reply.
    let type_col = find(&["type"]);

    let mut record = ::csv::StringRecord::new();
    let mut n = 0u64;
    loop {
        match rdr.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(csv_error(path, e)),
        }
        let field = |c: Option<usize>| {
            c.and_then(|c| record.get(c))
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let Some(text) = record.get(text_col) else {
            let line = record.position().map_or(0, |p| p.line());
            return Err(Error::corpus(
                path,
                format!(
                    "line {line}: the row has {} fields, too few to reach the text column",
                    record.len()
                ),
                "check the quoting of that row",
            ));
        };
        let kind = field(type_col).unwrap_or("");
        let truthy = |c| {
            field(c)
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
        };
        let tweet = RawTweet {
            id: field(id_col).map(str::to_string),
            created_at: field(time_col).and_then(parse_time),
            text: text.to_string(),
            is_retweet: field(retweet_col).is_some()
                || truthy(is_retweet_col)
                || kind.starts_with("rt:")
                || looks_like_retweet(text.trim_start()),
            is_reply: reply_cols.iter().any(|c| field(Some(*c)).is_some())
                || kind.starts_with("r:"),
            format: Format::Csv,
        };
        n += 1;
        sink(tweet)?;
    }
    Ok(n)
}

fn csv_error(path: &Path, e: ::csv::Error) -> Error {
    let at = match e.position() {
        Some(p) => format!("line {} (byte {}): ", p.line(), p.byte()),
        None => String::new(),
    };
    let (problem, hint) = match e.kind() {
        ::csv::ErrorKind::Utf8 { err, .. } => (
            format!("invalid UTF-8 in field {}", err.field() + 1),
            "convert the file to UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 FILE > FILE.utf8` (or -f MACINTOSH)",
        ),
        ::csv::ErrorKind::Io(io) => (io.to_string(), "check that the file is readable"),
        _ => (e.to_string(), "check the CSV's quoting near that line"),
    };
    Error::corpus(path, format!("{at}{problem}"), hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(name: &str, body: &[u8]) -> Result<Vec<RawTweet>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        let mut got = Vec::new();
        read(&p, &mut |t| {
            got.push(t);
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn finds_columns_by_name_and_marks_retweets_and_replies() {
        let got = read_str(
            "t.csv",
            b"\"tweet_id\",\"in_reply_to_status_id\",\"timestamp\",\"text\",\"retweeted_status_id\"\n\
              \"1\",\"\",\"2015-04-07 09:59:58 +0000\",\"plain, \"\"quoted\"\"\",\"\"\n\
              \"2\",\"9\",\"\",\"@a reply\",\"\"\n\
              \"3\",\"\",\"\",\"RT @b: theirs\",\"77\"\n",
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].text, "plain, \"quoted\"");
        assert_eq!(got[0].id.as_deref(), Some("1"));
        assert!(got[0].created_at.is_some() && !got[0].is_reply && !got[0].is_retweet);
        assert!(got[1].is_reply && got[2].is_retweet);

        let tsv = read_str("t.tsv", b"id\tcontent\n5\thello there\n").unwrap();
        assert_eq!(tsv[0].text, "hello there");
        let tweety = read_str(
            "x.csv",
            b"tweet_id,time,type,text\n1,1384987335,rt:5,hi\n2,1384987335,r:7,yo\n",
        )
        .unwrap();
        assert!(tweety[0].is_retweet && tweety[1].is_reply);
    }

    #[test]
    fn bad_csv_names_file_line_and_cause() {
        let e = read_str("nope.csv", b"id,user,likes\n1,a,2\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.csv") && e.contains("no text column") && e.contains("id, user, likes"),
            "{e}"
        );
        let e = read_str("utf.csv", b"id,text\n1,fine\n2,bro\xffken\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("utf.csv") && e.contains("line 3") && e.contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn header_detection() {
        assert!(header_names_text("id,created_at,text"));
        assert!(header_names_text("\"tweet_id\",\"Text\""));
        assert!(!header_names_text("just a tweet, with a comma"));
    }
}
