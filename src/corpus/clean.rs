//! The cleaning policy: which tweets a model learns from and how their text is tidied first.
//! Every rule is a setting (config `[clean]`, and per bot), and every dropped tweet carries
//! its reason, so an import report can say exactly what happened to each.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::RawTweet;

/// What to do with links (`http://…`, `https://…`) in a tweet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UrlPolicy {
    /// Take them out: a model cannot write a working link.
    #[default]
    Remove,
    /// Put `url_placeholder` in their place, so the model learns where links go.
    Placeholder,
    /// Leave them as they are.
    Keep,
}

/// How tweets are cleaned before a model sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanPolicy {
    /// Drop retweets: they are other people's words.
    pub drop_retweets: bool,
    /// Drop replies to other tweets.
    pub drop_replies: bool,
    /// Remove the @mentions a tweet starts with (the addressees of a reply).
    pub strip_leading_mentions: bool,
    /// Links: "remove", "placeholder" or "keep".
    pub urls: UrlPolicy,
    /// What replaces each link when `urls = "placeholder"`.
    pub url_placeholder: String,
    /// Turn HTML entities (`&amp;`, `&lt;`, `&#39;` ...) into the characters they stand for.
    pub decode_entities: bool,
    /// Turn every run of white space (new lines included) into one space, and trim.
    pub normalize_whitespace: bool,
    /// Keep only the first of several tweets with the same cleaned text.
    pub drop_duplicates: bool,
    /// Drop tweets shorter than this many characters after cleaning.
    pub min_chars: usize,
}

impl Default for CleanPolicy {
    fn default() -> Self {
        CleanPolicy {
            drop_retweets: true,
            drop_replies: false,
            strip_leading_mentions: true,
            urls: UrlPolicy::Remove,
            url_placeholder: "<url>".into(),
            decode_entities: true,
            normalize_whitespace: true,
            drop_duplicates: true,
            min_chars: 5,
        }
    }
}

/// Why a tweet was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DropReason {
    /// A retweet, and `drop_retweets` is on.
    Retweet,
    /// A reply, and `drop_replies` is on.
    Reply,
    /// Nothing left after cleaning (only links or mentions).
    Empty,
    /// Shorter than `min_chars` after cleaning.
    TooShort,
    /// The same cleaned text as a tweet kept before it.
    Duplicate,
}

impl DropReason {
    /// Every reason, in report order.
    pub const ALL: [DropReason; 5] = [
        DropReason::Retweet,
        DropReason::Reply,
        DropReason::Empty,
        DropReason::TooShort,
        DropReason::Duplicate,
    ];

    /// The name used in reports and the store.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Retweet => "retweet",
            DropReason::Reply => "reply",
            DropReason::Empty => "empty",
            DropReason::TooShort => "too-short",
            DropReason::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl CleanPolicy {
    /// The cleaned text of `tweet`, or why it is dropped. Duplicates are not judged here (that
    /// needs the tweets before it): see [`Dedup`].
    pub fn clean(&self, tweet: &RawTweet) -> Result<String, DropReason> {
        if self.drop_retweets && tweet.is_retweet {
            return Err(DropReason::Retweet);
        }
        if self.drop_replies && tweet.is_reply {
            return Err(DropReason::Reply);
        }
        let mut text = if self.decode_entities {
            html_escape::decode_html_entities(&tweet.text).into_owned()
        } else {
            tweet.text.clone()
        };
        text = match self.urls {
            UrlPolicy::Keep => text,
            UrlPolicy::Remove => replace_urls(&text, ""),
            UrlPolicy::Placeholder => replace_urls(&text, &self.url_placeholder),
        };
        if self.strip_leading_mentions {
            text = strip_leading_mentions(&text).to_string();
        }
        text = if self.normalize_whitespace {
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            text.trim().to_string()
        };
        match text.chars().count() {
            0 => Err(DropReason::Empty),
            n if n < self.min_chars => Err(DropReason::TooShort),
            _ => Ok(text),
        }
    }
}

/// Each link (`http://` or `https://` up to the next white space) replaced by `with`.
fn replace_urls(text: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = find_url(rest) {
        out.push_str(&rest[..i]);
        out.push_str(with);
        let tail = &rest[i..];
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn find_url(s: &str) -> Option<usize> {
    let i = s.find("http")?;
    let after = &s[i..];
    if after.starts_with("http://") || after.starts_with("https://") {
        Some(i)
    } else {
        let next = i + 4;
        find_url(&s[next..]).map(|j| next + j)
    }
}

/// `text` after the run of `@name` words it starts with (a reply's addressees).
fn strip_leading_mentions(text: &str) -> &str {
    let mut rest = text.trim_start();
    while let Some(after) = rest.strip_prefix('@') {
        let name_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_len == 0 {
            break;
        }
        rest = after[name_len..]
            .trim_start_matches([':', ','])
            .trim_start();
    }
    rest
}

/// Remembers the cleaned texts kept so far (by a 64-bit hash: 8 bytes a tweet, so an archive
/// of millions fits) to judge duplicates.
#[derive(Default)]
pub struct Dedup {
    seen: std::collections::HashSet<u64>,
}

impl Dedup {
    /// True the first time `text` is offered, false after.
    pub fn first_time(&mut self, text: &str) -> bool {
        self.seen.insert(text_hash(text))
    }
}

/// A stable 64-bit hash of `text` (also the key of tweets that have no id).
pub fn text_hash(text: &str) -> u64 {
    crate::hash::fnv1a(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tweet(text: &str) -> RawTweet {
        RawTweet {
            text: text.into(),
            ..RawTweet::default()
        }
    }

    fn with(f: impl FnOnce(&mut CleanPolicy)) -> CleanPolicy {
        let mut p = CleanPolicy::default();
        f(&mut p);
        p
    }

    #[test]
    fn retweets_dropped_unless_kept() {
        let rt = RawTweet {
            is_retweet: true,
            ..tweet("RT @x: their words")
        };
        assert_eq!(CleanPolicy::default().clean(&rt), Err(DropReason::Retweet));
        let keep = with(|p| p.drop_retweets = false);
        assert_eq!(keep.clean(&rt).unwrap(), "RT @x: their words");
    }

    #[test]
    fn replies_kept_by_default_and_dropped_when_asked() {
        let reply = RawTweet {
            is_reply: true,
            ..tweet("@alice @bob_2: sounds good to me")
        };
        assert_eq!(
            CleanPolicy::default().clean(&reply).unwrap(),
            "sounds good to me"
        );
        assert_eq!(
            with(|p| p.drop_replies = true).clean(&reply),
            Err(DropReason::Reply)
        );
    }

    #[test]
    fn leading_mentions_stripped_or_kept_and_inner_ones_kept() {
        let t = tweet("@a @b thanks @c for this");
        assert_eq!(
            CleanPolicy::default().clean(&t).unwrap(),
            "thanks @c for this"
        );
        let keep = with(|p| p.strip_leading_mentions = false);
        assert_eq!(keep.clean(&t).unwrap(), "@a @b thanks @c for this");
        assert_eq!(
            CleanPolicy::default()
                .clean(&tweet("@ the park today"))
                .unwrap(),
            "@ the park today"
        );
    }

    #[test]
    fn urls_removed_replaced_or_kept() {
        let t = tweet("read this https://t.co/abc and http://x.io/y?z=1 now");
        assert_eq!(
            CleanPolicy::default().clean(&t).unwrap(),
            "read this and now"
        );
        let ph = with(|p| p.urls = UrlPolicy::Placeholder);
        assert_eq!(ph.clean(&t).unwrap(), "read this <url> and <url> now");
        let keep = with(|p| p.urls = UrlPolicy::Keep);
        assert_eq!(keep.clean(&t).unwrap(), t.text);
        assert_eq!(
            CleanPolicy::default()
                .clean(&tweet("httpd is a server"))
                .unwrap(),
            "httpd is a server"
        );
    }

    #[test]
    fn entities_decoded_unless_off() {
        let t = tweet("Michelle &amp; I &lt;3 it&#39;s &quot;great&quot;");
        assert_eq!(
            CleanPolicy::default().clean(&t).unwrap(),
            "Michelle & I <3 it's \"great\""
        );
        assert_eq!(
            with(|p| p.decode_entities = false).clean(&t).unwrap(),
            t.text
        );
    }

    #[test]
    fn whitespace_normalised_unless_off() {
        let t = tweet("  two\n\nlines \t here ");
        assert_eq!(CleanPolicy::default().clean(&t).unwrap(), "two lines here");
        assert_eq!(
            with(|p| p.normalize_whitespace = false).clean(&t).unwrap(),
            "two\n\nlines \t here"
        );
    }

    #[test]
    fn empty_and_short_tweets_dropped() {
        let p = CleanPolicy::default();
        assert_eq!(
            p.clean(&tweet("@someone https://t.co/x")),
            Err(DropReason::Empty)
        );
        assert_eq!(p.clean(&tweet("lol")), Err(DropReason::TooShort));
        assert_eq!(p.clean(&tweet("héllo")).unwrap(), "héllo"); // characters, not bytes
        assert_eq!(
            with(|p| p.min_chars = 0).clean(&tweet("lol")).unwrap(),
            "lol"
        );
    }

    #[test]
    fn dedup_sees_repeats() {
        let mut d = Dedup::default();
        assert!(d.first_time("a tweet"));
        assert!(d.first_time("another"));
        assert!(!d.first_time("a tweet"));
    }

    /// The names are what the store keeps and the import report counts by: two reasons
    /// under one name would be counted together.
    #[test]
    fn drop_reason_names_are_distinct() {
        let names: std::collections::BTreeSet<&str> =
            DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
    }
}
