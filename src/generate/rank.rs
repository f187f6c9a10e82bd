//! Ranking sampled candidates by how well they read: the bot model's own likelihood of the
//! text (per character), a prior on its length from the account's own tweets, and the share
//! of its words that are words (the base corpus's or the account's): a character model's
//! local patterns are fluent where its words need not be.

use serde::{Deserialize, Serialize};

use super::words::{words, KnownWords};
use super::Sample;

/// How candidates are ranked: the `[generate]` settings beside sampling's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RankConfig {
    /// Samples drawn for each candidate shown: the best of the pool are kept.
    pub pool: usize,
    /// Weight of the length prior (ln p of the length among the account's tweets).
    pub length_weight: f64,
    /// Weight of the share of words that are not known words.
    pub unknown_word_weight: f64,
    /// Drop a candidate when this share of its characters or more lies in n-grams it shares
    /// with a better-ranked one: variations of one text are shown once (1.0: never).
    pub max_similarity: f64,
}

impl Default for RankConfig {
    fn default() -> Self {
        RankConfig {
            pool: 10,
            length_weight: 0.1,
            unknown_word_weight: 2.0,
            max_similarity: 0.5,
        }
    }
}

/// What a candidate is ranked by; stored with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Mean nats per character (and end) under the model that sampled it: lower is likelier.
    pub nats_per_char: f64,
    /// ln p of its length among the account's tweets' lengths.
    pub length_logp: f64,
    /// Share of its words that are known words (1 when it has none).
    pub known_words: f64,
    /// The score candidates are ranked by (higher is better).
    pub score: f64,
}

/// Lengths in bins of this many characters.
const BIN: usize = 10;
/// Bins up to 280 characters.
const BINS: usize = 280 / BIN + 1;

/// The distribution of an account's tweet lengths, in bins of ten characters, smoothed so
/// that no length is impossible.
#[derive(Clone, Debug)]
pub struct LengthPrior {
    log_p: Vec<f64>,
}

impl LengthPrior {
    /// From the lengths of an account's tweets.
    pub fn new(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut counts = vec![0.5f64; BINS];
        for n in lengths {
            counts[(n / BIN).min(BINS - 1)] += 1.0;
        }
        let total: f64 = counts.iter().sum();
        LengthPrior {
            log_p: counts.iter().map(|c| (c / total).ln()).collect(),
        }
    }

    /// ln p of a text of `chars` characters.
    pub fn log_p(&self, chars: usize) -> f64 {
        self.log_p[(chars / BIN).min(BINS - 1)]
    }
}

/// Ranks candidates for one account.
pub struct Ranker {
    config: RankConfig,
    lengths: LengthPrior,
    known: KnownWords,
}

impl Ranker {
    /// A ranker for the account whose tweets are `tweets`.
    pub fn new<'a>(config: RankConfig, tweets: impl IntoIterator<Item = &'a str> + Clone) -> Self {
        Ranker {
            config,
            lengths: LengthPrior::new(tweets.clone().into_iter().map(|t| t.chars().count())),
            known: KnownWords::new(tweets),
        }
    }

    /// The words it knows.
    pub fn known(&self) -> &KnownWords {
        &self.known
    }

    /// How `sample` reads.
    pub fn quality(&self, sample: &Sample) -> Quality {
        let ws = words(&sample.text);
        let known_words = if ws.is_empty() {
            1.0
        } else {
            ws.iter().filter(|w| self.known.knows(w)).count() as f64 / ws.len() as f64
        };
        let nats_per_char = sample.score.per_char();
        let length_logp = self.lengths.log_p(sample.text.chars().count());
        let score = -nats_per_char + self.config.length_weight * length_logp
            - self.config.unknown_word_weight * (1.0 - known_words);
        Quality {
            nats_per_char,
            length_logp,
            known_words,
            score,
        }
    }
}

/// The indices of `qualities`, best first; ties keep their order (so a seed gives one order).
pub fn rank(qualities: &[Quality]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..qualities.len()).collect();
    order.sort_by(|&a, &b| qualities[b].score.total_cmp(&qualities[a].score));
    order
}

/// The first `n` of `ranked` (indices into `texts`, best first) that are not variations of a
/// better one: a text sharing `max_similarity` or more of its characters, in `ngram`-character
/// runs, with one kept before it is passed over. Returns the kept and the passed-over indices.
pub fn distinct(
    texts: &[&str],
    ranked: &[usize],
    n: usize,
    ngram: usize,
    max_similarity: f64,
) -> (Vec<usize>, Vec<usize>) {
    let (mut kept, mut similar) = (Vec::new(), Vec::new());
    let mut shown = super::NoveltyIndex::build([], ngram);
    for &i in ranked {
        if kept.len() == n {
            break;
        }
        if shown.overlap(texts[i]) >= max_similarity {
            similar.push(i);
        } else {
            kept.push(i);
            shown = super::NoveltyIndex::build(kept.iter().map(|&k| texts[k]), ngram);
        }
    }
    (kept, similar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TweetScore;

    fn sample(text: &str, nats_per_char: f64) -> Sample {
        let tokens = text.chars().count() + 1;
        Sample {
            text: text.into(),
            ended: true,
            score: TweetScore {
                nats: nats_per_char * tokens as f64,
                tokens,
            },
        }
    }

    #[test]
    fn likelier_text_of_the_accounts_length_with_real_words_ranks_first() {
        let account = [
            "The Moon is moving away from Earth a little every year.",
            "Saturn would float in a bathtub big enough to hold it.",
            "A day on Venus is longer than its year, which is strange.",
        ];
        let ranker = Ranker::new(RankConfig::default(), account.iter().copied());
        // 54 characters, as long as the account's tweets.
        let text = "The Sun is a star, and a rather small one as stars go.";
        let good = sample(text, 1.2);
        let unlikely = sample(text, 1.9);
        let garbled = sample(
            "The Sun is a stanthar, and a rather atmosthapper one go.",
            1.2,
        );
        let long = sample(&format!("{text} ").repeat(4), 1.2);
        let q: Vec<Quality> = [&good, &unlikely, &garbled, &long]
            .iter()
            .map(|s| ranker.quality(s))
            .collect();
        assert_eq!(rank(&q)[0], 0, "{q:?}");
        assert!(q[0].score > q[1].score, "likelier first");
        assert!(q[0].score > q[2].score, "real words first");
        assert!(q[2].known_words < 0.9 && q[0].known_words == 1.0);
        assert!(q[0].score > q[3].score, "the account's length first");
        assert!((q[0].nats_per_char - 1.2).abs() < 1e-9);
    }

    #[test]
    fn ranking_is_deterministic_and_keeps_ties_in_order() {
        let q = |score| Quality {
            score,
            ..Quality::default()
        };
        let qs = [q(1.0), q(3.0), q(1.0), q(2.0), q(3.0)];
        assert_eq!(rank(&qs), vec![1, 4, 3, 0, 2]);
    }

    #[test]
    fn the_length_prior_follows_the_accounts_lengths() {
        let prior = LengthPrior::new([40, 45, 48, 52, 130]);
        assert!(prior.log_p(44) > prior.log_p(135));
        assert!(prior.log_p(135) > prior.log_p(250), "seen beats unseen");
        assert!(prior.log_p(400).is_finite());
    }

    #[test]
    fn variations_of_a_better_candidate_are_passed_over() {
        let texts = [
            "The 1989 film Back to the Future II showed life on Oct 21, 2015: hoverboards.",
            "The 1989 film Back to the Future II showed life on Oct 21, 2012. Congrats.",
            "Saturn's rings are thinner than a sheet of paper, relative to their width.",
            "The 1989 film Back to the Future II showed that it's a supernova.",
            "Jupiter could hold a thousand Earths, and still have room for the Moon.",
        ];
        let ranked = [0, 1, 2, 3, 4];
        let (kept, similar) = distinct(&texts, &ranked, 10, 12, 0.5);
        assert_eq!(kept, [0, 2, 4]);
        assert_eq!(similar, [1, 3]);
        // n bounds what is kept; 1.0 keeps every variation.
        assert_eq!(distinct(&texts, &ranked, 2, 12, 0.5).0, [0, 2]);
        assert_eq!(distinct(&texts, &ranked, 10, 12, 1.0).0, ranked);
    }
}
