//! Training data as a stream: tweets in, fixed-size batches of token windows out, with a
//! stable train/validation split and a bounded shuffle buffer, so a corpus of any size
//! trains in bounded memory and the same seed always gives the same batches.

use std::collections::{HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::model::{Vocab, EOT};
use crate::Result;

/// Where training text comes from: a sequence of tweets, read afresh for every pass.
pub trait TweetSource {
    /// Every tweet, in a fixed order. An `Err` item stops the pass with that error.
    fn tweets(&self) -> Result<Box<dyn Iterator<Item = Result<String>> + '_>>;

    /// What the source is, for messages (file names).
    fn describe(&self) -> String;
}

/// Which side of the split a tweet falls on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Trained on.
    Train,
    /// Held out for the validation loss.
    Validation,
}

/// The split of a tweet: a stable hash (FNV-1a of its text), so the same tweet lands on the
/// same side in every run and on every machine, whatever order the corpus is in.
pub fn split_of(tweet: &str, val_fraction: f64) -> Split {
    let h = crate::hash::fnv1a(tweet.as_bytes());
    if ((h % 1_000_000) as f64) < val_fraction * 1_000_000.0 {
        Split::Validation
    } else {
        Split::Train
    }
}

/// What one pass over the corpus found: sizes of both splits and the character counts the
/// vocabulary is built from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorpusStats {
    /// What was read (file names).
    pub source: String,
    /// Tweets in the training split.
    pub train_tweets: u64,
    /// Tweets in the validation split.
    pub val_tweets: u64,
    /// Tokens (characters plus one end-of-tweet per tweet) in the training split.
    pub train_tokens: u64,
    /// Tokens in the validation split.
    pub val_tokens: u64,
    /// How often each character occurs (not saved in cards).
    #[serde(skip)]
    pub char_counts: HashMap<char, u64>,
}

impl CorpusStats {
    /// Reads the whole source once, in bounded memory.
    pub fn scan(source: &dyn TweetSource, val_fraction: f64) -> Result<Self> {
        let mut s = CorpusStats {
            source: source.describe(),
            ..Default::default()
        };
        for tweet in source.tweets()? {
            let tweet = tweet?;
            let mut n = 1; // the end-of-tweet symbol
            for c in tweet.chars() {
                *s.char_counts.entry(c).or_default() += 1;
                n += 1;
            }
            match split_of(&tweet, val_fraction) {
                Split::Train => {
                    (s.train_tweets, s.train_tokens) = (s.train_tweets + 1, s.train_tokens + n)
                }
                Split::Validation => {
                    (s.val_tweets, s.val_tokens) = (s.val_tweets + 1, s.val_tokens + n)
                }
            }
        }
        Ok(s)
    }

    /// Windows of `seq_len + 1` tokens the given split yields.
    pub fn windows(&self, split: Split, seq_len: usize) -> u64 {
        let tokens = match split {
            Split::Train => self.train_tokens,
            Split::Validation => self.val_tokens,
        };
        tokens.saturating_sub(1) / seq_len as u64
    }
}

/// One batch: inputs and next-character targets, time-major [seq_len, batch].
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Rows in the batch.
    pub batch: usize,
    /// Time steps.
    pub seq_len: usize,
    /// Input ids, `inputs[t * batch + b]`.
    pub inputs: Vec<u32>,
    /// Target ids, the input shifted by one.
    pub targets: Vec<u32>,
}

/// Settings of a [`BatchStream`].
#[derive(Clone, Copy, Debug)]
pub struct StreamSpec {
    /// Which split to read.
    pub split: Split,
    /// Fraction of tweets held out for validation.
    pub val_fraction: f64,
    /// Rows per batch.
    pub batch: usize,
    /// Time steps per row.
    pub seq_len: usize,
    /// Windows held for shuffling (0 or 1: no shuffling, corpus order).
    pub shuffle_windows: usize,
    /// Seed of the shuffle.
    pub seed: u64,
    /// Yield a last, smaller batch instead of dropping it.
    pub keep_partial: bool,
}

/// An iterator of batches over one pass of a [`TweetSource`]'s tweets of one split.
///
/// The text of the split is one stream of tokens (each tweet followed by end-of-tweet), cut
/// into windows of `seq_len + 1` tokens that overlap by one; windows pass through a shuffle
/// buffer of bounded size and are grouped into batches.
pub struct BatchStream<'a> {
    tweets: Box<dyn Iterator<Item = Result<String>> + 'a>,
    vocab: &'a Vocab,
    spec: StreamSpec,
    pending: Vec<u32>,
    windows: VecDeque<Vec<u32>>,
    rng: ChaCha8Rng,
    exhausted: bool,
}

impl<'a> BatchStream<'a> {
    /// Starts a pass over `source`.
    pub fn new(source: &'a dyn TweetSource, vocab: &'a Vocab, spec: StreamSpec) -> Result<Self> {
        Ok(BatchStream {
            tweets: source.tweets()?,
            vocab,
            spec,
            pending: Vec::new(),
            windows: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            exhausted: false,
        })
    }

    /// Reads tweets until the buffer holds `want` windows or the source ends.
    fn fill(&mut self, want: usize) -> Result<()> {
        let t = self.spec.seq_len;
        while self.windows.len() < want && !self.exhausted {
            match self.tweets.next() {
                None => self.exhausted = true,
                Some(tweet) => {
                    let tweet = tweet?;
                    if split_of(&tweet, self.spec.val_fraction) != self.spec.split {
                        continue;
                    }
                    self.pending.extend(tweet.chars().map(|c| self.vocab.id(c)));
                    self.pending.push(EOT);
                    let mut start = 0;
                    while self.pending.len() - start > t {
                        self.windows
                            .push_back(self.pending[start..start + t + 1].to_vec());
                        start += t;
                    }
                    self.pending.drain(..start);
                }
            }
        }
        Ok(())
    }

    fn next_window(&mut self) -> Result<Option<Vec<u32>>> {
        self.fill(self.spec.shuffle_windows.max(1))?;
        if self.windows.is_empty() {
            return Ok(None);
        }
        if self.spec.shuffle_windows > 1 {
            let k = self.rng.random_range(0..self.windows.len());
            Ok(self.windows.swap_remove_back(k))
        } else {
            Ok(self.windows.pop_front())
        }
    }

    fn next_batch(&mut self) -> Result<Option<Batch>> {
        let (b, t) = (self.spec.batch, self.spec.seq_len);
        let mut rows = Vec::with_capacity(b);
        while rows.len() < b {
            match self.next_window()? {
                Some(w) => rows.push(w),
                None => break,
            }
        }
        if rows.is_empty() || (rows.len() < b && !self.spec.keep_partial) {
            return Ok(None);
        }
        let b = rows.len();
        let mut inputs = vec![0; t * b];
        let mut targets = vec![0; t * b];
        for (r, w) in rows.iter().enumerate() {
            for s in 0..t {
                inputs[s * b + r] = w[s];
                targets[s * b + r] = w[s + 1];
            }
        }
        Ok(Some(Batch {
            batch: b,
            seq_len: t,
            inputs,
            targets,
        }))
    }
}

impl Iterator for BatchStream<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lines(Vec<String>);
    impl TweetSource for Lines {
        fn tweets(&self) -> Result<Box<dyn Iterator<Item = Result<String>> + '_>> {
            Ok(Box::new(self.0.iter().map(|s| Ok(s.clone()))))
        }
        fn describe(&self) -> String {
            "test lines".into()
        }
    }

    fn corpus(n: usize) -> Lines {
        Lines(
            (0..n)
                .map(|i| format!("tweet number {i} says hello"))
                .collect(),
        )
    }

    #[test]
    fn split_is_stable_and_near_the_fraction() {
        let c = corpus(5000);
        let val =
            c.0.iter()
                .filter(|t| split_of(t, 0.1) == Split::Validation)
                .count();
        assert!((400..600).contains(&val), "{val} of 5000 held out at 10%");
        // Same answer regardless of what else is in the corpus or its order.
        assert_eq!(
            split_of("tweet number 7 says hello", 0.1),
            split_of(&c.0[7], 0.1)
        );
    }

    #[test]
    fn batches_cover_the_split_once_and_repeat_with_the_seed() {
        let c = corpus(300);
        let stats = CorpusStats::scan(&c, 0.1).unwrap();
        let vocab = Vocab::from_counts(&stats.char_counts, 1);
        let spec = StreamSpec {
            split: Split::Train,
            val_fraction: 0.1,
            batch: 4,
            seq_len: 8,
            shuffle_windows: 16,
            seed: 5,
            keep_partial: false,
        };
        let a: Vec<Batch> = BatchStream::new(&c, &vocab, spec)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let b: Vec<Batch> = BatchStream::new(&c, &vocab, spec)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(a, b, "same seed, same batches");
        assert_eq!(a.len() as u64, stats.windows(Split::Train, 8) / 4);
        // Targets are inputs shifted by one inside each row.
        let first = &a[0];
        for t in 0..7 {
            for r in 0..4 {
                assert_eq!(first.targets[t * 4 + r], first.inputs[(t + 1) * 4 + r]);
            }
        }
        let other = StreamSpec { seed: 6, ..spec };
        let c2: Vec<Batch> = BatchStream::new(&c, &vocab, other)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        assert_ne!(a, c2, "another seed shuffles differently");
        // Every training token appears: count end-of-tweet symbols across all windows' targets
        // plus the unbatched remainder is at most one batch of windows.
        let eots: usize = a
            .iter()
            .map(|b| b.targets.iter().filter(|&&t| t == EOT).count())
            .sum();
        assert!(eots as u64 <= stats.train_tweets && eots as u64 + 60 >= stats.train_tweets);
    }
}
