//! What a bot's candidates look like beside its account's tweets: lengths, how many ran into
//! the length cap without ending, how many of their words the account and the base corpus
//! know, and how likely the bot's model finds them. `aviary generate --bot NAME --report`
//! prints it for the pool sampled and the candidates kept from it.

use serde::Serialize;

use super::rank::Quality;
use super::words::{words, KnownWords};
use super::Sample;

/// Lengths in characters: how many, and their 10th, 50th and 90th percentiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Lengths {
    /// Texts counted.
    pub count: usize,
    /// 10th percentile.
    pub p10: usize,
    /// Median.
    pub median: usize,
    /// 90th percentile.
    pub p90: usize,
}

impl Lengths {
    /// Of these lengths.
    pub fn of(lengths: impl IntoIterator<Item = usize>) -> Self {
        let mut v: Vec<usize> = lengths.into_iter().collect();
        v.sort_unstable();
        let at = |q: f64| {
            if v.is_empty() {
                0
            } else {
                v[((v.len() - 1) as f64 * q).round() as usize]
            }
        };
        Lengths {
            count: v.len(),
            p10: at(0.1),
            median: at(0.5),
            p90: at(0.9),
        }
    }
}

/// A group of texts (sampled, or kept), described.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GroupReport {
    /// Their lengths.
    pub lengths: Lengths,
    /// Share that reached the length cap without the model ending them.
    pub unfinished: f64,
    /// Share of their words found among the account's tweets' words.
    pub words_in_account: f64,
    /// Share of their words found in the base corpus's word list.
    pub words_in_base: f64,
    /// Share of their words found in either.
    pub words_known: f64,
    /// Mean nats per character under the bot's model (the candidates' own likelihood).
    pub nats_per_char: f64,
}

impl GroupReport {
    /// Describes `samples` against `known`.
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>, known: &KnownWords) -> Self {
        let (mut n, mut unfinished, mut nats, mut tokens) = (0usize, 0usize, 0f64, 0usize);
        let (mut words_all, mut in_account, mut in_base, mut in_either) = (0, 0, 0, 0);
        let mut lengths = Vec::new();
        for s in samples {
            n += 1;
            unfinished += !s.ended as usize;
            nats += s.score.nats;
            tokens += s.score.tokens;
            lengths.push(s.text.chars().count());
            for w in words(&s.text) {
                words_all += 1;
                let (a, b) = (known.in_account(&w), known.in_base(&w));
                in_account += a as usize;
                in_base += b as usize;
                in_either += (a || b) as usize;
            }
        }
        let share = |k: usize, of: usize| if of == 0 { 0.0 } else { k as f64 / of as f64 };
        GroupReport {
            lengths: Lengths::of(lengths),
            unfinished: share(unfinished, n),
            words_in_account: share(in_account, words_all),
            words_in_base: share(in_base, words_all),
            words_known: share(in_either, words_all),
            nats_per_char: if tokens == 0 {
                0.0
            } else {
                nats / tokens as f64
            },
        }
    }
}

/// The report `aviary generate --bot NAME --report` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QualityReport {
    /// The account's own (kept) tweets' lengths.
    pub account: Lengths,
    /// Everything sampled.
    pub sampled: GroupReport,
    /// The candidates kept (the best of the pool that passed the checks).
    pub kept: GroupReport,
    /// Mean ranking score of the kept candidates.
    pub kept_score: f64,
}

impl QualityReport {
    /// Of a pool `sampled`, the `kept` ones with their qualities, against the account's
    /// tweets.
    pub fn new<'a>(
        account: impl IntoIterator<Item = &'a str>,
        known: &KnownWords,
        sampled: &[Sample],
        kept: &[(Sample, Quality)],
    ) -> Self {
        let scores: Vec<f64> = kept.iter().map(|(_, q)| q.score).collect();
        QualityReport {
            account: Lengths::of(account.into_iter().map(|t| t.chars().count())),
            sampled: GroupReport::of(sampled, known),
            kept: GroupReport::of(kept.iter().map(|(s, _)| s), known),
            kept_score: scores.iter().sum::<f64>() / scores.len().max(1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TweetScore;

    fn sample(text: &str, ended: bool, nats: f64) -> Sample {
        Sample {
            text: text.into(),
            ended,
            score: TweetScore {
                nats,
                tokens: text.chars().count() + ended as usize,
            },
        }
    }

    #[test]
    fn the_report_counts_what_it_says() {
        let account = ["the cosmos is vast", "stars are far away from us"];
        let known = KnownWords::new(account);
        let sampled = vec![
            sample("the cosmos is far", true, 17.0 + 1.0),
            sample("zzyzx qwvb cosmos", false, 34.0),
            sample("stars are vast", true, 15.0),
        ];
        let kept = vec![(sampled[0].clone(), Quality::default())];
        let r = QualityReport::new(account, &known, &sampled, &kept);
        assert_eq!(r.account.count, 2);
        assert_eq!(
            (r.account.p10, r.account.median, r.account.p90),
            (18, 26, 26)
        );
        assert_eq!(r.sampled.lengths.count, 3);
        assert_eq!(r.sampled.lengths.median, 17);
        assert!((r.sampled.unfinished - 1.0 / 3.0).abs() < 1e-12);
        // 10 words; "zzyzx" and "qwvb" are nobody's; "far" is the account's.
        assert!((r.sampled.words_known - 0.8).abs() < 1e-12, "{r:?}");
        assert!((r.sampled.words_in_account - 0.8).abs() < 1e-12, "{r:?}");
        assert!(r.sampled.words_in_base < 0.81 && r.sampled.words_in_base > 0.5);
        // (18 + 34 + 15) nats over (18 + 17 + 15) tokens.
        assert!((r.sampled.nats_per_char - 67.0 / 50.0).abs() < 1e-12);
        assert_eq!(r.kept.unfinished, 0.0);
        assert_eq!(r.kept.words_known, 1.0);
    }
}
