//! Tweets in JSON, streamed: a top-level array (an archive's `tweets.js` after its prefix, a
//! v1.1 timeline, a list of strings), JSON lines (one status or one v2 page a line), or a v2
//! page `{"data": [...], "includes": ..., "meta": ...}`. Each tweet is parsed and handed on
//! alone, so a file of any size reads in the memory of its largest tweet (or JSON line).
//!
//! One tolerant reader serves v1.1, v2 and the archive: they differ in field names
//! (`full_text`/`text`/`note_tweet.text`, `retweeted_status`/`referenced_tweets`), not shape.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{looks_like_retweet, parse_time, Format, RawTweet, TweetSink};
use crate::{Error, Result};

/// Reads every tweet of the JSON in `reader` (named `name` in messages), in order. Returns
/// the format seen: `default` unless the tweets turned out to be v2.
pub fn read(
    reader: impl Read,
    path: &Path,
    name: &str,
    default: Format,
    sink: &mut TweetSink,
) -> Result<Format> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut seen = default;
    let mut index = 0u64;
    let mut failure: Option<Error> = None;
    let mut on_item = |v: Value, in_page: bool| -> Result<()> {
        index += 1;
        let t = tweet_from_value(v, in_page, default).map_err(|problem| {
            Error::corpus(
                Path::new(name),
                format!("item {index}: {problem}"),
                hint_for(default),
            )
        })?;
        if t.format == Format::ApiV2 {
            seen = Format::ApiV2;
        }
        sink(t)
    };
    let bad_json = |e: serde_json::Error, line_offset: u64| {
        Error::corpus(
            Path::new(name),
            format!(
                "line {}, column {}: not valid JSON: {}",
                e.line() as u64 + line_offset,
                e.column(),
                strip_position(&e)
            ),
            hint_for(default),
        )
    };

    // JSON lines when the first line is a whole value by itself; else one streamed document.
    let first = first_nonblank(&mut reader).map_err(|e| Error::io(path, e))?;
    if first.is_empty() {
        return Ok(seen); // nothing at all: the caller says the file holds no tweets
    }
    let single_line_value =
        first.first() == Some(&b'{') && serde_json::from_slice::<de::IgnoredAny>(&first).is_ok();
    if single_line_value {
        let mut line_no = 0u64;
        let mut line = first;
        loop {
            line_no += 1;
            if !line.iter().all(|b| b.is_ascii_whitespace()) {
                let body = line.trim_ascii_end(); // errors at the end of a line name that line
                let mut de = serde_json::Deserializer::from_slice(body);
                let r = Stream {
                    on_item: &mut on_item,
                    failure: &mut failure,
                    in_page: false,
                }
                .deserialize(&mut de)
                .and_then(|()| de.end());
                if let Some(f) = failure.take() {
                    return Err(f);
                }
                r.map_err(|e| bad_json(e, line_no - 1))?;
            }
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
        }
    } else {
        let chained = std::io::Cursor::new(first).chain(reader);
        let mut de = serde_json::Deserializer::from_reader(chained);
        let r = Stream {
            on_item: &mut on_item,
            failure: &mut failure,
            in_page: false,
        }
        .deserialize(&mut de);
        if let Some(f) = failure.take() {
            return Err(f);
        }
        r.map_err(|e| bad_json(e, 0))?;
    }
    Ok(seen)
}

/// The first line that holds anything but white space (with its newline), or empty at the end.
fn first_nonblank(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(line);
        }
        let body = super::trim_start(&line);
        if !body.is_empty() {
            return Ok(body.to_vec());
        }
    }
}

/// serde_json's message without its own " at line L column C" (we say it first, in words).
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn hint_for(format: Format) -> &'static str {
    match format {
        Format::Archive => "this should be an X archive's data/tweets.js, unchanged; re-extract it from the archive zip, or import the zip itself",
        _ => "expected API JSON: an array of tweets, JSON lines, or {\"data\": [...]} pages; pass --format to choose another reader",
    }
}

/// Set when the sink failed: the parse stops and the sink's own error is returned.
const STOPPED: &str = "stopped by the importer";

/// Walks a JSON document, handing each tweet-shaped value to `on_item` without building the
/// whole document: arrays element by element, a v2 page's `data` likewise.
struct Stream<'c, 'f> {
    on_item: &'c mut (dyn FnMut(Value, bool) -> Result<()> + 'f),
    failure: &'c mut Option<Error>,
    in_page: bool,
}

impl Stream<'_, '_> {
    fn deliver<E: de::Error>(&mut self, v: Value) -> std::result::Result<(), E> {
        (self.on_item)(v, self.in_page).map_err(|e| {
            *self.failure = Some(e);
            E::custom(STOPPED)
        })
    }
}

impl<'de> DeserializeSeed<'de> for Stream<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Stream<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of tweets, a tweet object or an API v2 page")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            self.deliver(v)?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> std::result::Result<(), A::Error> {
        let mut rest = Map::new();
        let mut page = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "data" && !self.in_page {
                page = true;
                map.next_value_seed(Stream {
                    on_item: &mut *self.on_item,
                    failure: &mut *self.failure,
                    in_page: true,
                })?;
            } else {
                rest.insert(key, map.next_value()?);
            }
        }
        if page {
            Ok(())
        } else {
            self.deliver(Value::Object(rest))
        }
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> std::result::Result<(), E> {
        self.deliver(Value::String(v.to_string()))
    }
}

/// One tweet from any of the JSON shapes; `Err` says why the value is not a tweet.
pub fn tweet_from_value(
    v: Value,
    in_page: bool,
    default: Format,
) -> std::result::Result<RawTweet, String> {
    let v = match v {
        Value::Object(mut m) if m.len() == 1 && m.contains_key("tweet") => {
            m.remove("tweet").unwrap_or_default()
        }
        other => other,
    };
    let m = match v {
        Value::String(text) => {
            return Ok(RawTweet {
                is_retweet: looks_like_retweet(&text),
                text,
                format: default,
                ..RawTweet::default()
            })
        }
        Value::Object(m) => m,
        other => {
            return Err(format!(
                "expected a tweet object or a string, found {}",
                kind(&other)
            ))
        }
    };
    let text = str_at(&m, &["note_tweet", "text"])
        .or_else(|| str_at(&m, &["extended_tweet", "full_text"]))
        .or_else(|| str_at(&m, &["full_text"]))
        .or_else(|| str_at(&m, &["text"]))
        .ok_or_else(|| {
            let keys: Vec<&str> = m.keys().map(String::as_str).take(8).collect();
            format!(
                "no tweet text (expected a `full_text` or `text` field; found {})",
                keys.join(", ")
            )
        })?
        .to_string();
    let referenced = |kind: &str| {
        m.get("referenced_tweets")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter()
                    .any(|r| r.get("type").and_then(Value::as_str) == Some(kind))
            })
    };
    let present = |key: &str| m.get(key).is_some_and(|v| !v.is_null() && v != "");
    let is_retweet = present("retweeted_status")
        || m.get("is_retweet").and_then(Value::as_bool) == Some(true)
        || referenced("retweeted")
        || looks_like_retweet(&text);
    let is_reply = present("in_reply_to_status_id_str")
        || present("in_reply_to_status_id")
        || referenced("replied_to");
    let id = match m.get("id_str").or_else(|| m.get("id")) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let created_at = str_at(&m, &["created_at"])
        .or_else(|| str_at(&m, &["timestamp_ms"]))
        .and_then(parse_time);
    let v2 = in_page
        || ["edit_history_tweet_ids", "referenced_tweets", "note_tweet"]
            .iter()
            .any(|k| m.contains_key(*k));
    Ok(RawTweet {
        id,
        created_at,
        text,
        is_retweet,
        is_reply,
        format: if v2 { Format::ApiV2 } else { default },
    })
}

fn str_at<'a>(m: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (first, rest) = path.split_first()?;
    let mut v = m.get(*first)?;
    for k in rest {
        v = v.get(k)?;
    }
    v.as_str()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(json: &str, format: Format) -> Result<(Vec<RawTweet>, Format)> {
        let mut got = Vec::new();
        let f = read(
            json.as_bytes(),
            Path::new("t.json"),
            "t.json",
            format,
            &mut |t| {
                got.push(t);
                Ok(())
            },
        )?;
        Ok((got, f))
    }

    #[test]
    fn v1_array_and_lines_read_alike() {
        let a = r#"[{"id_str":"1","full_text":"hello &amp; bye","created_at":"Sat Feb 18 12:33:11 +0000 2023"},
                    {"id":2,"text":"RT @x: theirs","retweeted_status":{"text":"theirs"}},
                    {"id":3,"text":"@bob yes","in_reply_to_status_id":7}]"#;
        let lines = r#"{"id_str":"1","full_text":"hello &amp; bye","created_at":"Sat Feb 18 12:33:11 +0000 2023"}
{"id":2,"text":"RT @x: theirs","retweeted_status":{"text":"theirs"}}

{"id":3,"text":"@bob yes","in_reply_to_status_id":7}
"#;
        for doc in [a, lines] {
            let (t, f) = read_all(doc, Format::ApiV1).unwrap();
            assert_eq!(f, Format::ApiV1);
            assert_eq!(t.len(), 3);
            assert_eq!(t[0].id.as_deref(), Some("1"));
            assert_eq!(t[0].text, "hello &amp; bye");
            assert!(t[0].created_at.is_some());
            assert!(t[1].is_retweet && !t[1].is_reply);
            assert_eq!(t[1].id.as_deref(), Some("2"));
            assert!(t[2].is_reply && !t[2].is_retweet);
        }
    }

    #[test]
    fn v2_pages_stream_their_data_and_skip_includes() {
        let doc = r#"{"data":[{"id":"10","text":"short version","note_tweet":{"text":"the long version"},"edit_history_tweet_ids":["10"],"created_at":"2023-02-18T12:33:11.000Z"},
                {"id":"11","text":"RT @a: x","referenced_tweets":[{"type":"retweeted","id":"9"}]},
                {"id":"12","text":"@a sure","referenced_tweets":[{"type":"replied_to","id":"9"}]}],
              "includes":{"tweets":[{"id":"9","text":"not ours"}]},"meta":{"result_count":3}}"#;
        let (t, f) = read_all(doc, Format::ApiV1).unwrap();
        assert_eq!(f, Format::ApiV2);
        let texts: Vec<&str> = t.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["the long version", "RT @a: x", "@a sure"]);
        assert!(t[1].is_retweet && t[2].is_reply);
    }

    #[test]
    fn archive_wrappers_and_plain_strings() {
        let (t, _) = read_all(
            r#"[{"tweet":{"id_str":"5","full_text":"mine"}}, "just text"]"#,
            Format::Archive,
        )
        .unwrap();
        assert_eq!(t[0].text, "mine");
        assert_eq!(t[0].format, Format::Archive);
        assert_eq!(t[1].text, "just text");
    }

    #[test]
    fn errors_name_the_place_and_the_problem() {
        let e = read_all("[{\"text\":\"a\"},\n{\"text\": }]", Format::ApiV1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.json") && e.contains("line 2") && e.contains("not valid JSON"),
            "{e}"
        );
        let e = read_all(r#"[{"user":"x"}]"#, Format::ApiV1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("item 1") && e.contains("no tweet text") && e.contains("user"),
            "{e}"
        );
        let e = read_all("{\"text\":\"a\"}\n{\"text\":\"b\"\n", Format::ApiV1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn the_sinks_error_stops_the_read() {
        let mut n = 0;
        let e = read(
            r#"[{"text":"a"},{"text":"b"},{"text":"c"}]"#.as_bytes(),
            Path::new("t"),
            "t",
            Format::ApiV1,
            &mut |_| {
                n += 1;
                if n == 2 {
                    Err(Error::invalid("full", "stop"))
                } else {
                    Ok(())
                }
            },
        )
        .unwrap_err();
        assert_eq!(n, 2);
        assert!(e.to_string().starts_with("full"), "{e}");
    }
}
