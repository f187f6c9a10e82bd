//! Is a candidate new, or a copy of a training tweet? An index maps every character n-gram of
//! the training tweets (hashed) to the tweets holding it, built once per `generate`. A
//! candidate's overlap with one training tweet is the share of its characters inside n-grams
//! the two share; its overlap is the largest over all training tweets. A copied tweet scores
//! 1, one with a word changed nearly 1, new text that only shares common phrases far less, and
//! a tweet stitched from halves of two tweets about one half (it copies neither). Also the
//! cheap checks a bot author expects before reading a candidate.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How candidates are judged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoveltyConfig {
    /// Characters per n-gram: shared runs shorter than this do not count as copying.
    pub ngram: usize,
    /// Drop a candidate when this share of its characters or more is covered by n-grams of
    /// the training tweets.
    pub max_overlap: f64,
    /// Drop candidates shorter than this many characters.
    pub min_chars: usize,
}

impl Default for NoveltyConfig {
    fn default() -> Self {
        NoveltyConfig {
            ngram: 12,
            max_overlap: 0.8,
            min_chars: 10,
        }
    }
}

/// Why a candidate is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejection {
    /// Nothing but white space.
    Empty,
    /// Shorter than `min_chars`.
    TooShort,
    /// Quotes or brackets that do not pair up.
    Unbalanced,
    /// Copies a training tweet (overlap at or above `max_overlap`).
    Copy,
    /// The same text as another candidate, or as a tweet already queued or posted.
    Repeat,
    /// Ran into the length cap before the model ended it (cut off mid-thought).
    Unfinished,
    /// A variation of a better-ranked candidate kept in the same batch.
    Similar,
}

impl Rejection {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::TooShort => "too-short",
            Rejection::Unbalanced => "unbalanced",
            Rejection::Copy => "copy",
            Rejection::Repeat => "repeat",
            Rejection::Unfinished => "unfinished",
            Rejection::Similar => "similar",
        }
    }
}

/// The n-grams of a bot's training tweets, each with the tweets that hold it: one sorted
/// array of (n-gram hash, tweet) pairs, 16 bytes a window, searched by bisection.
pub struct NoveltyIndex {
    n: usize,
    pairs: Vec<(u64, u32)>,
}

/// Collects training tweets for a [`NoveltyIndex`].
pub struct NoveltyIndexBuilder {
    n: usize,
    pairs: Vec<(u64, u32)>,
    tweets: u32,
}

impl NoveltyIndexBuilder {
    /// An empty index of `n`-character windows.
    pub fn new(n: usize) -> Self {
        NoveltyIndexBuilder {
            n: n.max(1),
            pairs: Vec::new(),
            tweets: 0,
        }
    }

    /// Adds the windows of one training tweet.
    pub fn add(&mut self, tweet: &str) {
        let id = self.tweets;
        self.tweets += 1;
        let b = boundaries(tweet);
        for w in b.windows(self.n + 1) {
            self.pairs
                .push((hash(&tweet.as_bytes()[w[0]..w[self.n]]), id));
        }
    }

    /// The index, ready for queries.
    pub fn build(mut self) -> NoveltyIndex {
        self.pairs.sort_unstable();
        self.pairs.dedup();
        self.pairs.shrink_to_fit();
        NoveltyIndex {
            n: self.n,
            pairs: self.pairs,
        }
    }
}

impl NoveltyIndex {
    /// Indexes every `n`-character window of every tweet.
    pub fn build<'a>(tweets: impl IntoIterator<Item = &'a str>, n: usize) -> Self {
        let mut builder = NoveltyIndexBuilder::new(n);
        tweets.into_iter().for_each(|t| builder.add(t));
        builder.build()
    }

    /// The pairs of the tweets holding n-gram `gram`.
    fn holders(&self, gram: u64) -> &[(u64, u32)] {
        let lo = self.pairs.partition_point(|p| p.0 < gram);
        let len = self.pairs[lo..].partition_point(|p| p.0 == gram);
        &self.pairs[lo..lo + len]
    }

    /// The largest share of `text`'s characters inside n-grams it shares with one training
    /// tweet (0 for text shorter than n).
    pub fn overlap(&self, text: &str) -> f64 {
        let b = boundaries(text);
        let chars = b.len() - 1;
        if chars < self.n {
            return 0.0;
        }
        // Per training tweet sharing an n-gram: which of the candidate's characters it covers.
        let mut covered: HashMap<u32, Vec<bool>> = HashMap::new();
        for (i, w) in b.windows(self.n + 1).enumerate() {
            for (_, id) in self.holders(hash(&text.as_bytes()[w[0]..w[self.n]])) {
                let c = covered.entry(*id).or_insert_with(|| vec![false; chars]);
                c[i..i + self.n].iter_mut().for_each(|x| *x = true);
            }
        }
        let most = covered
            .values()
            .map(|c| c.iter().filter(|x| **x).count())
            .max()
            .unwrap_or(0);
        most as f64 / chars as f64
    }

    /// Judges `text`: its novelty (1 - overlap), or why it is dropped. Repeats are the
    /// caller's to judge.
    pub fn judge(&self, text: &str, cfg: &NoveltyConfig) -> Result<f64, Rejection> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Rejection::Empty);
        }
        if t.chars().count() < cfg.min_chars {
            return Err(Rejection::TooShort);
        }
        if !balanced(t) {
            return Err(Rejection::Unbalanced);
        }
        let overlap = self.overlap(t);
        if overlap >= cfg.max_overlap {
            return Err(Rejection::Copy);
        }
        Ok(1.0 - overlap)
    }
}

/// Byte offsets of each character, and the end.
fn boundaries(s: &str) -> Vec<usize> {
    s.char_indices().map(|(i, _)| i).chain([s.len()]).collect()
}

fn hash(bytes: &[u8]) -> u64 {
    crate::hash::fnv1a(bytes)
}

/// Straight double quotes come in pairs, curly quotes and brackets open before they close.
fn balanced(t: &str) -> bool {
    if t.matches('"').count() % 2 == 1 {
        return false;
    }
    for (open, close) in [('(', ')'), ('[', ']'), ('“', '”')] {
        let mut depth = 0i32;
        for c in t.chars() {
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
        }
        if depth != 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAINING: [&str; 3] = [
        "The universe is under no obligation to make sense to you.",
        "We are stardust brought to life, then empowered by the universe to figure itself out.",
        "Not enough people in the world, I fear, carry a curiosity gene.",
    ];

    #[test]
    fn a_copy_is_caught_and_new_text_kept() {
        let idx = NoveltyIndex::build(TRAINING, 12);
        let cfg = NoveltyConfig::default();
        assert_eq!(idx.judge(TRAINING[0], &cfg), Err(Rejection::Copy));
        assert_eq!(idx.overlap(TRAINING[1]), 1.0);
        // A word changed is still a copy.
        let reworded =
            "We are stardust brought to life, then empowered by the cosmos to figure itself out.";
        assert!(idx.overlap(reworded) > 0.8, "{}", idx.overlap(reworded));
        assert_eq!(idx.judge(reworded, &cfg), Err(Rejection::Copy));
        // Halves of two tweets stitched together copy neither whole.
        let stitched = "The universe is under no obligation to figure itself out.";
        let o = idx.overlap(stitched);
        assert!(o > 0.4 && o < 0.8, "{o}");
        let new = "Saturn would float in a bathtub, if you could find one big enough.";
        let novelty = idx.judge(new, &cfg).unwrap();
        assert!(novelty > 0.9, "{novelty}");
        // A shared phrase is not a copy.
        let phrase = "My cat is under no obligation to make sense, as far as I can tell.";
        let n = idx.judge(phrase, &cfg).unwrap();
        assert!(n > 0.2 && n < 0.9, "{n}");
    }

    #[test]
    fn cheap_checks() {
        let idx = NoveltyIndex::build(TRAINING, 12);
        let cfg = NoveltyConfig::default();
        assert_eq!(idx.judge("   ", &cfg), Err(Rejection::Empty));
        assert_eq!(idx.judge("hi there", &cfg), Err(Rejection::TooShort));
        assert_eq!(
            idx.judge("she said \"go away and then", &cfg),
            Err(Rejection::Unbalanced)
        );
        assert_eq!(
            idx.judge("an aside (that never closes", &cfg),
            Err(Rejection::Unbalanced)
        );
        assert_eq!(
            idx.judge("closes ) before it opens (", &cfg),
            Err(Rejection::Unbalanced)
        );
        assert!(idx
            .judge("an aside (that closes) and \"a quote\"", &cfg)
            .is_ok());
        assert!(idx
            .judge("non-ASCII is fine: café, 東京, 🚀 launch", &cfg)
            .is_ok());
    }
}
