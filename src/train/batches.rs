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

/// What a tweet's side of the split is decided by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitRule {
    /// A hash of the text as it is (runs made before near-copies were kept together: the same
    /// tweet with a full stop more could land on the other side and flatter the held-out loss).
    Text,
    /// A hash of the text with case, punctuation and white space folded away, so near-copies
    /// of a tweet always land on the same side.
    #[default]
    Folded,
}

/// How the token stream of a split is cut into training windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Windows {
    /// Consecutive cuts of the stream, wherever they fall (runs made before tweet-start
    /// windows): the model never learns a tweet from its start, as generation runs it.
    Stream,
    /// Every window starts at a tweet's start: zero state, end-of-tweet as the first input,
    /// exactly as generation starts a candidate. A window runs on into the next tweets; the
    /// next window starts at the last tweet start it holds, so a tweet cut off at a window's
    /// end is read again whole (about a third more characters per epoch).
    #[default]
    TweetStart,
}

/// How a corpus is divided and cut: recorded with each run, so a resumed or evaluated run
/// uses the rules it started with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusRules {
    /// The train/validation split.
    pub split: SplitRule,
    /// The training windows.
    pub windows: Windows,
}

impl CorpusRules {
    /// The rules of runs whose records do not name theirs (made before there was a choice).
    pub fn legacy() -> Self {
        CorpusRules {
            split: SplitRule::Text,
            windows: Windows::Stream,
        }
    }
}

/// The text a tweet's split is decided by under [`SplitRule::Folded`]: lower case, letters
/// and digits only, words separated by one space ("Hello,  World!" and "hello world" fold
/// alike). A tweet with no letter or digit folds to itself.
pub fn fold_for_split(tweet: &str) -> String {
    let mut out = String::with_capacity(tweet.len());
    for word in tweet
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    if out.is_empty() {
        tweet.to_string()
    } else {
        out
    }
}

/// The split of a tweet: a stable hash (FNV-1a of its text, folded under
/// [`SplitRule::Folded`]), so the same tweet lands on the same side in every run and on
/// every machine, whatever order the corpus is in.
pub fn split_of(tweet: &str, val_fraction: f64, rule: SplitRule) -> Split {
    let h = match rule {
        SplitRule::Text => crate::hash::fnv1a(tweet.as_bytes()),
        SplitRule::Folded => crate::hash::fnv1a(fold_for_split(tweet).as_bytes()),
    };
    if ((h % 1_000_000) as f64) < val_fraction * 1_000_000.0 {
        Split::Validation
    } else {
        Split::Train
    }
}

/// Cuts the tokens of a sequence of tweets into windows of `seq_len + 1` tokens under a
/// [`Windows`] rule. Holds at most one window and one tweet.
struct Cutter {
    seq_len: usize,
    windows: Windows,
    pending: Vec<u32>,
    /// Positions in `pending` where a tweet starts (its leading end-of-tweet).
    starts: VecDeque<usize>,
}

impl Cutter {
    fn new(seq_len: usize, windows: Windows) -> Self {
        Cutter {
            seq_len,
            windows,
            pending: Vec::new(),
            starts: VecDeque::new(),
        }
    }

    /// Adds one tweet's ids and passes every window now complete to `emit`.
    fn push(&mut self, ids: impl Iterator<Item = u32>, emit: &mut impl FnMut(&[u32])) {
        match self.windows {
            Windows::Stream => {
                self.pending.extend(ids);
                self.pending.push(EOT);
            }
            Windows::TweetStart => {
                self.starts.push_back(self.pending.len());
                self.pending.push(EOT);
                self.pending.extend(ids);
            }
        }
        self.cut(emit);
    }

    /// The source has ended: the last tweet's end, and the windows it completes.
    fn finish(&mut self, emit: &mut impl FnMut(&[u32])) {
        if self.windows == Windows::TweetStart && !self.pending.is_empty() {
            self.pending.push(EOT);
            self.starts.clear();
            self.cut(emit);
        }
    }

    fn cut(&mut self, emit: &mut impl FnMut(&[u32])) {
        let t = self.seq_len;
        let mut start = 0;
        while self.pending.len() - start > t {
            emit(&self.pending[start..start + t + 1]);
            start = match self.windows {
                // Windows overlap by one token: the last target is the next first input.
                Windows::Stream => start + t,
                // The last tweet start whose targets are not all in this window yet (the
                // window's targets are start + 1 ..= start + t); inside a tweet longer than
                // the window, the next one simply follows on.
                Windows::TweetStart => {
                    while self.starts.front().is_some_and(|&p| p <= start) {
                        self.starts.pop_front();
                    }
                    let mut next = start + t;
                    while let Some(&p) = self.starts.front() {
                        if p > start + t {
                            break;
                        }
                        next = p;
                        self.starts.pop_front();
                    }
                    next
                }
            };
        }
        self.pending.drain(..start);
        for p in self.starts.iter_mut() {
            *p -= start;
        }
    }
}

/// What one pass over the corpus found: sizes of both splits, the windows each is cut into,
/// and the character counts the vocabulary is built from.
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
    /// Windows the training split is cut into (0 in cards of older runs).
    #[serde(default)]
    pub train_windows: u64,
    /// Windows the validation split is cut into (0 in cards of older runs).
    #[serde(default)]
    pub val_windows: u64,
    /// How often each character occurs (not saved in cards).
    #[serde(skip)]
    pub char_counts: HashMap<char, u64>,
}

/// How a corpus is divided and cut, for [`CorpusStats::scan`].
#[derive(Clone, Copy, Debug)]
pub struct CutSpec {
    /// Fraction of tweets held out for validation.
    pub val_fraction: f64,
    /// Time steps per window.
    pub seq_len: usize,
    /// Split and window rules.
    pub rules: CorpusRules,
}

impl CorpusStats {
    /// Reads the whole source once, in bounded memory.
    pub fn scan(source: &dyn TweetSource, cut: CutSpec) -> Result<Self> {
        let mut s = CorpusStats {
            source: source.describe(),
            ..Default::default()
        };
        let mut cutters = [
            Cutter::new(cut.seq_len, cut.rules.windows),
            Cutter::new(cut.seq_len, cut.rules.windows),
        ];
        let mut windows = [0u64; 2];
        for tweet in source.tweets()? {
            let tweet = tweet?;
            let mut n = 1; // the end-of-tweet symbol
            for c in tweet.chars() {
                *s.char_counts.entry(c).or_default() += 1;
                n += 1;
            }
            let side = split_of(&tweet, cut.val_fraction, cut.rules.split);
            match side {
                Split::Train => {
                    (s.train_tweets, s.train_tokens) = (s.train_tweets + 1, s.train_tokens + n)
                }
                Split::Validation => {
                    (s.val_tweets, s.val_tokens) = (s.val_tweets + 1, s.val_tokens + n)
                }
            }
            // Only lengths matter for counting windows: every character stands in as UNK.
            let k = (side == Split::Validation) as usize;
            let count = &mut windows[k];
            cutters[k].push((1..n).map(|_| crate::model::UNK), &mut |_| *count += 1);
        }
        for (cutter, count) in cutters.iter_mut().zip(windows.iter_mut()) {
            cutter.finish(&mut |_| *count += 1);
        }
        [s.train_windows, s.val_windows] = windows;
        Ok(s)
    }

    /// Windows of `seq_len + 1` tokens the given split yields.
    pub fn windows(&self, split: Split) -> u64 {
        match split {
            Split::Train => self.train_windows,
            Split::Validation => self.val_windows,
        }
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
    /// Split and window rules.
    pub rules: CorpusRules,
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
/// The text of the split is one stream of tokens (tweets separated by end-of-tweet), cut into
/// windows of `seq_len + 1` tokens (see [`Windows`]); windows pass through a shuffle buffer of
/// bounded size and are grouped into batches.
pub struct BatchStream<'a> {
    tweets: Box<dyn Iterator<Item = Result<String>> + 'a>,
    vocab: &'a Vocab,
    spec: StreamSpec,
    cutter: Cutter,
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
            cutter: Cutter::new(spec.seq_len, spec.rules.windows),
            windows: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(spec.seed),
            exhausted: false,
        })
    }

    /// Reads tweets until the buffer holds `want` windows or the source ends.
    fn fill(&mut self, want: usize) -> Result<()> {
        while self.windows.len() < want && !self.exhausted {
            let windows = &mut self.windows;
            let mut emit = |w: &[u32]| windows.push_back(w.to_vec());
            match self.tweets.next() {
                None => {
                    self.exhausted = true;
                    self.cutter.finish(&mut emit);
                }
                Some(tweet) => {
                    let tweet = tweet?;
                    let spec = &self.spec;
                    if split_of(&tweet, spec.val_fraction, spec.rules.split) != spec.split {
                        continue;
                    }
                    let vocab = self.vocab;
                    self.cutter
                        .push(tweet.chars().map(|c| vocab.id(c)), &mut emit);
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
        // Pinned FNV-1a values: a change of the hash would move every bot's held-out tweets.
        assert_eq!(crate::hash::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(crate::hash::fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(crate::hash::fnv1a(b"hello world"), 0x779a_65e7_023c_d2e7);
        // 0x6ef0...7c54 % 1e6 = 26836 < 100000: held out by its text; folded, it is
        // "hello world" (256743): trained on.
        assert_eq!(crate::hash::fnv1a(b"Hello, World!"), 0x6ef0_5bd7_cc85_7c54);
        assert_eq!(
            split_of("Hello, World!", 0.1, SplitRule::Text),
            Split::Validation
        );
        assert_eq!(
            split_of("Hello, World!", 0.1, SplitRule::Folded),
            Split::Train
        );
        assert_eq!(split_of("hello world", 0.1, SplitRule::Text), Split::Train);
        assert_eq!(
            split_of("hello world", 0.3, SplitRule::Text),
            Split::Validation
        );
        let c = corpus(5000);
        for rule in [SplitRule::Text, SplitRule::Folded] {
            let val =
                c.0.iter()
                    .filter(|t| split_of(t, 0.1, rule) == Split::Validation)
                    .count();
            assert!((400..600).contains(&val), "{val} of 5000 held out at 10%");
        }
    }

    #[test]
    fn the_folded_split_never_separates_near_copies() {
        assert_eq!(fold_for_split("  Hello,   WORLD!! "), "hello world");
        assert_eq!(
            fold_for_split("🚀🚀"),
            "🚀🚀",
            "nothing to fold: the text itself"
        );
        let variants = |t: &str| {
            [
                t.to_string(),
                format!("{t}."),
                t.to_uppercase(),
                t.replace(' ', "  "),
                format!("{t}!!!"),
                format!("\"{t}\""),
            ]
        };
        let mut separated_by_text = 0;
        for i in 0..2000 {
            let t = format!("tweet number {i} says hello");
            let sides: Vec<Split> = variants(&t)
                .iter()
                .map(|v| split_of(v, 0.1, SplitRule::Folded))
                .collect();
            assert!(sides.iter().all(|s| *s == sides[0]), "{t}: {sides:?}");
            let by_text: Vec<Split> = variants(&t)
                .iter()
                .map(|v| split_of(v, 0.1, SplitRule::Text))
                .collect();
            separated_by_text += by_text.iter().any(|s| *s != by_text[0]) as usize;
        }
        // The rule before: most tweets have a variant on the other side.
        assert!(separated_by_text > 500, "{separated_by_text}");
    }

    fn spec(rules: CorpusRules, seq_len: usize, batch: usize) -> StreamSpec {
        StreamSpec {
            split: Split::Train,
            val_fraction: 0.1,
            rules,
            batch,
            seq_len,
            shuffle_windows: 16,
            seed: 5,
            keep_partial: false,
        }
    }

    #[test]
    fn batches_cover_the_split_once_and_repeat_with_the_seed() {
        let c = corpus(300);
        let rules = CorpusRules::legacy();
        let cut = CutSpec {
            val_fraction: 0.1,
            seq_len: 8,
            rules,
        };
        let stats = CorpusStats::scan(&c, cut).unwrap();
        let vocab = Vocab::from_counts(&stats.char_counts, 1);
        let spec = spec(rules, 8, 4);
        let a: Vec<Batch> = BatchStream::new(&c, &vocab, spec)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let b: Vec<Batch> = BatchStream::new(&c, &vocab, spec)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(a, b, "same seed, same batches");
        assert_eq!(stats.windows(Split::Train), (stats.train_tokens - 1) / 8);
        assert_eq!(a.len() as u64, stats.windows(Split::Train) / 4);
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

    /// Rows of a batch, each as (inputs, targets).
    fn rows(b: &Batch) -> Vec<(Vec<u32>, Vec<u32>)> {
        (0..b.batch)
            .map(|r| {
                let col = |v: &[u32]| (0..b.seq_len).map(|t| v[t * b.batch + r]).collect();
                (col(&b.inputs), col(&b.targets))
            })
            .collect()
    }

    #[test]
    fn tweet_start_windows_start_as_generation_does_and_cover_every_tweet_whole() {
        // Tweets of 3 to 20 characters (each a different text); windows of 24.
        let c = Lines(
            (0..400)
                .map(|i| {
                    let t = format!("{i} abcdefghij klmnopqrstuvwxyz");
                    t[..3 + (i * 7) % 18].to_string()
                })
                .collect(),
        );
        let rules = CorpusRules::default();
        let stats = CorpusStats::scan(
            &c,
            CutSpec {
                val_fraction: 0.1,
                seq_len: 24,
                rules,
            },
        )
        .unwrap();
        let vocab = Vocab::from_counts(&stats.char_counts, 1);
        let spec = StreamSpec {
            shuffle_windows: 1,
            keep_partial: true,
            ..spec(rules, 24, 1)
        };
        let windows: Vec<(Vec<u32>, Vec<u32>)> = BatchStream::new(&c, &vocab, spec)
            .unwrap()
            .flat_map(|b| rows(&b.unwrap()))
            .collect();
        assert_eq!(
            windows.len() as u64,
            stats.windows(Split::Train),
            "scan counts them"
        );
        let trained: Vec<&String> =
            c.0.iter()
                .filter(|t| split_of(t, 0.1, rules.split) == Split::Train)
                .collect();
        // A window starts at a tweet's start (end-of-tweet as the first input, from a zero
        // state): every tweet here is shorter than a window.
        let mut read_whole = std::collections::HashSet::new();
        for (inputs, targets) in &windows {
            assert_eq!(inputs[0], EOT, "{inputs:?}");
            // Between two ends of tweets in the targets lies one whole tweet; the first runs
            // from the window's start.
            let ends: Vec<usize> = (0..targets.len()).filter(|&i| targets[i] == EOT).collect();
            let mut from = 0;
            for end in ends {
                let text: String = targets[from..end]
                    .iter()
                    .filter_map(|&i| vocab.char(i))
                    .collect();
                assert!(trained.iter().any(|t| **t == text), "{text:?} is no tweet");
                read_whole.insert(text);
                from = end + 1;
            }
        }
        // Every trained tweet is read whole (all but the last, which the pass may cut off).
        assert!(
            read_whole.len() + 1 >= trained.len(),
            "{} of {}",
            read_whole.len(),
            trained.len()
        );
        // Stream windows of the same corpus: about a third fewer.
        let stream = CorpusStats::scan(
            &c,
            CutSpec {
                val_fraction: 0.1,
                seq_len: 24,
                rules: CorpusRules::legacy(),
            },
        )
        .unwrap();
        assert!(stream.windows(Split::Train) < stats.windows(Split::Train));
    }

    #[test]
    fn a_tweet_longer_than_a_window_is_read_on_in_the_next() {
        let long: String = "abcdefghijklmnopqrstuvwxyz".repeat(3);
        let c = Lines(vec![
            long.clone(),
            "short one".into(),
            long[..30].to_string(),
            "the end of".into(),
        ]);
        let rules = CorpusRules::default();
        let vocab = Vocab::from_chars("abcdefghijklmnopqrstuvwxyz ".chars().collect());
        let spec = StreamSpec {
            val_fraction: 0.0,
            shuffle_windows: 1,
            keep_partial: true,
            ..spec(rules, 32, 1)
        };
        let windows: Vec<(Vec<u32>, Vec<u32>)> = BatchStream::new(&c, &vocab, spec)
            .unwrap()
            .flat_map(|b| rows(&b.unwrap()))
            .collect();
        let text =
            |ids: &[u32]| -> String { ids.iter().map(|&i| vocab.char(i).unwrap_or('|')).collect() };
        // 78 characters: windows at 0, 32 and 64 of it (the second from its 32nd character,
        // `f`); the third ends the tweet, holds the short one whole and starts the next,
        // which the fourth reads from its start.
        assert_eq!(text(&windows[0].0[..3]), "|ab");
        assert_eq!(text(&windows[1].0[..2]), "fg");
        assert!(text(&windows[2].1).contains("z|short one|"));
        assert_eq!(windows[3].0[0], EOT);
        assert_eq!(text(&windows[3].1[..30]), long[..30]);
    }
}
