//! Sampling candidate tweets: temperature, top-k, top-p, priming text; a tweet ends at the
//! end-of-tweet symbol or at 280 characters; N candidates are sampled together, one batch per
//! thread, and a seed makes the whole thing reproducible whatever the number of threads. Uses
//! the model's step-by-step forward.

pub mod novelty;
pub mod rank;
pub mod report;
pub mod words;

pub use novelty::{NoveltyConfig, NoveltyIndex, NoveltyIndexBuilder, Rejection};
pub use rank::{distinct, rank, Quality, RankConfig, Ranker};
pub use report::QualityReport;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::score::log_softmax_at;
use crate::model::{thread_groups, StepState, StepWeights, TweetScore, Vocab, EOT, UNK};
use crate::tweet_len::char_weight;
use crate::{Error, Result};

/// The most a tweet may have, by X's weighted length (see [`crate::tweet_len`]).
pub const MAX_TWEET_CHARS: usize = crate::tweet_len::MAX_WEIGHTED;

/// How to sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// Divides the logits: below 1 plays safe, above 1 takes risks, 0 always takes the most
    /// likely character.
    pub temperature: f64,
    /// Sample only among the k most likely characters (0: all).
    pub top_k: usize,
    /// Sample only among the most likely characters whose probabilities add up to p (1: all).
    pub top_p: f64,
    /// Stop a candidate at this weighted length (X's count: most characters 1, emoji and CJK
    /// 2; priming text included), at most 280.
    pub max_chars: usize,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig {
            temperature: 0.5,
            top_k: 0,
            top_p: 1.0,
            max_chars: MAX_TWEET_CHARS,
        }
    }
}

impl SampleConfig {
    /// Checks the settings, saying which is out of range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(
                format!("temperature {} is not a number >= 0", self.temperature),
                "use e.g. --temperature 0.8",
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(
                format!("top-p {} is not in (0, 1]", self.top_p),
                "use e.g. --top-p 0.9",
            ));
        }
        if self.max_chars == 0 || self.max_chars > MAX_TWEET_CHARS {
            return Err(Error::invalid(
                format!("max_chars {} is not in 1..=280", self.max_chars),
                "a tweet has at most 280 characters",
            ));
        }
        Ok(())
    }
}

/// Buffers [`sample_token`] reuses between calls.
#[derive(Default)]
pub struct SampleScratch {
    /// Each id's weight, e^((logit - max) / temperature); the unknown symbol's is 0.
    weights: Vec<f32>,
    /// (weight, id) of the ids top-k and top-p keep, likeliest first.
    kept: Vec<(f32, u32)>,
}

// The unknown symbol is id 0, so the ids that may be drawn are `logits[1..]`.
const _: () = assert!(UNK == 0);

/// Draws the next id from `logits` under `cfg`. The unknown symbol is never drawn (it has no
/// character to print).
pub fn sample_token(
    logits: &[f32],
    cfg: &SampleConfig,
    rng: &mut impl Rng,
    scratch: &mut SampleScratch,
) -> u32 {
    let drawable = logits.get(1..).unwrap_or_default();
    if cfg.temperature == 0.0 {
        return (1..)
            .zip(drawable)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(EOT);
    }
    let weights = &mut scratch.weights;
    weights.resize(drawable.len(), 0.0);
    // One vectorised pass (a tenth of a 64-stream step at vocabulary 527 when scalar).
    crate::model::cpu_kernels::softmax_weights(drawable, (1.0 / cfg.temperature) as f32, weights);
    let limit_k = cfg.top_k > 0 && cfg.top_k < weights.len();
    if !limit_k && cfg.top_p >= 1.0 {
        return draw(weights.iter().copied().zip(1..), rng);
    }
    let kept = &mut scratch.kept;
    kept.clear();
    kept.extend(weights.iter().copied().zip(1..));
    kept.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    if limit_k {
        kept.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        let total: f32 = kept.iter().map(|p| p.0).sum();
        let (mut acc, mut keep) = (0f32, 0);
        for p in kept.iter() {
            acc += p.0;
            keep += 1;
            if acc >= cfg.top_p as f32 * total {
                break;
            }
        }
        kept.truncate(keep.max(1));
    }
    draw(kept.iter().copied(), rng)
}

/// Draws one id from (weight, id) pairs in proportion to the weights (summed in order, so a
/// seed gives the same draws on every CPU).
fn draw(ids: impl Iterator<Item = (f32, u32)> + Clone, rng: &mut impl Rng) -> u32 {
    let total: f32 = ids.clone().map(|p| p.0).sum();
    let mut u = rng.random::<f32>() * total;
    let mut last = EOT;
    for (p, i) in ids {
        if u < p {
            return i;
        }
        u -= p;
        last = i;
    }
    last
}

/// One sampled text.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The text, priming text included, trailing white space trimmed.
    pub text: String,
    /// The model ended it (end-of-tweet), rather than the length cap.
    pub ended: bool,
    /// How likely the model (at temperature 1) finds the sampled characters and the end:
    /// the priming text is given, not scored.
    pub score: TweetScore,
}

/// Samples `n` candidate tweets that start with `prime`, one batch per thread.
pub fn generate(
    weights: &StepWeights,
    vocab: &Vocab,
    cfg: &SampleConfig,
    prime: &str,
    n: usize,
    seed: u64,
) -> Result<Vec<Sample>> {
    cfg.validate()?;
    let prime_chars: usize = prime.chars().map(char_weight).sum();
    if prime_chars >= cfg.max_chars {
        return Err(Error::invalid(
            format!(
                "the priming text has {prime_chars} characters, the limit is {}",
                cfg.max_chars
            ),
            "shorten --prime",
        ));
    }
    let unknown = vocab.unknown_count(prime);
    if unknown > 0 {
        tracing::warn!(
            "{unknown} characters of the priming text are not in the model's vocabulary"
        );
    }
    let pool = Pool {
        weights,
        vocab,
        cfg,
        prime,
        prime_chars,
        seed,
    };
    let mut out: Vec<Option<Sample>> = vec![None; n];
    let groups = if n == 1 {
        // One candidate: each product's rows split over the threads, on a worker of the pool
        // so that the hand-offs need no third thread (about a third faster than the calling
        // thread).
        vec![rayon::scope(|_| pool.sample(weights.state(1), &[0]))]
    } else {
        // Each thread samples its own group of candidates, with no hand-off between threads
        // at every step (on 2 cores 1.16x faster than one batch split at each product at 64
        // candidates, 1.34x at 16).
        thread_groups(n)
            .into_par_iter()
            .map(|group| pool.sample(weights.thread_state(group.len()), &group))
            .collect()
    };
    for (s, sample) in groups.into_iter().flatten() {
        out[s] = Some(sample);
    }
    Ok(out
        .into_iter()
        .map(|sample| sample.expect("every stream is in a group"))
        .collect())
}

/// What every group of a pool samples with.
struct Pool<'a> {
    weights: &'a StepWeights,
    vocab: &'a Vocab,
    cfg: &'a SampleConfig,
    prime: &'a str,
    prime_chars: usize,
    seed: u64,
}

impl Pool<'_> {
    /// Samples the candidates `streams` (their numbers in the pool) as one batch in `state`,
    /// each with its own random stream of the seed, so a candidate is the same whatever group
    /// (or number of threads) it was sampled in.
    fn sample(&self, mut state: StepState, streams: &[usize]) -> Vec<(usize, Sample)> {
        let (weights, vocab, cfg) = (self.weights, self.vocab, self.cfg);
        let n = streams.len();
        let mut rngs: Vec<ChaCha8Rng> = streams
            .iter()
            .map(|&s| {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
                rng.set_stream(s as u64);
                rng
            })
            .collect();
        let mut tokens = vec![EOT; n];
        // A tweet starts after an end-of-tweet: that is the context the model learned.
        weights.step(&mut state, &tokens);
        for id in vocab.encode(self.prime) {
            tokens.fill(id);
            weights.step(&mut state, &tokens);
        }
        let v = weights.vocab_size();
        let mut out: Vec<Sample> = (0..n)
            .map(|_| Sample {
                text: self.prime.to_string(),
                ended: false,
                score: TweetScore::default(),
            })
            .collect();
        let mut len = vec![self.prime_chars; n];
        let mut done = vec![false; n];
        let mut scratch = SampleScratch::default();
        // The sample each row of the state carries: a finished one leaves the batch, so the
        // products run over the candidates still being written (a pool runs until its longest
        // candidate ends, most rows long before).
        let mut live: Vec<usize> = (0..n).collect();
        loop {
            for (row, &s) in live.iter().enumerate() {
                let logits = &state.logits[row * v..(row + 1) * v];
                let id = sample_token(logits, cfg, &mut rngs[s], &mut scratch);
                let sample = &mut out[s];
                sample.score.nats -= log_softmax_at(logits, id as usize);
                sample.score.tokens += 1;
                match vocab.char(id) {
                    Some(c) => {
                        sample.text.push(c);
                        len[s] += char_weight(c);
                        done[s] = len[s] >= cfg.max_chars;
                    }
                    None => {
                        sample.ended = true;
                        done[s] = true;
                    }
                }
                tokens[row] = id;
            }
            let keep: Vec<bool> = live.iter().map(|&s| !done[s]).collect();
            if keep.contains(&false) {
                state.retain(&keep);
                let mut kept = keep.iter();
                tokens.retain(|_| *kept.next().expect("one flag per token"));
                live.retain(|&s| !done[s]);
            }
            if live.is_empty() {
                break;
            }
            weights.step(&mut state, &tokens);
        }
        for sample in &mut out {
            sample.text.truncate(sample.text.trim_end().len());
        }
        streams.iter().copied().zip(out).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_top_p_restrict_the_draws() {
        // ids: 0 UNK, 1 EOT, 2.. chars; UNK has the highest logit and must never come out.
        // Probabilities of ids 1..=5 at temperature 1: 0.024, 0.486, 0.440, 0.040, 0.009.
        let logits = [10.0f32, 0.0, 3.0, 2.9, 0.5, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut scratch = SampleScratch::default();
        let mut draws = |top_k: usize, top_p: f64, temperature: f64, n: usize| {
            let cfg = SampleConfig {
                temperature,
                top_k,
                top_p,
                ..Default::default()
            };
            let mut seen = [0usize; 6];
            for _ in 0..n {
                seen[sample_token(&logits, &cfg, &mut rng, &mut scratch) as usize] += 1;
            }
            seen
        };
        let seen = draws(2, 1.0, 1.0, 2000);
        assert_eq!(seen[0], 0, "unknown symbol drawn");
        assert_eq!(
            seen[2] + seen[3],
            2000,
            "top-k 2 keeps ids 2 and 3 only: {seen:?}"
        );
        assert!(seen[2] > 900 && seen[3] > 800, "{seen:?}");
        let seen = draws(0, 0.4, 1.0, 500);
        assert_eq!(
            seen[2], 500,
            "top-p 0.4 keeps the single most likely char: {seen:?}"
        );
        let seen = draws(0, 0.9, 1.0, 500);
        assert_eq!(
            seen[2] + seen[3],
            500,
            "top-p 0.9 keeps the two likeliest: {seen:?}"
        );
        assert!(seen[3] > 100, "{seen:?}");
        let seen = draws(0, 1.0, 0.0, 50);
        assert_eq!(
            seen[2], 50,
            "temperature 0 always takes the likeliest: {seen:?}"
        );
    }

    /// The sampler as it was before its weights were vectorised: the reference its draws must
    /// match exactly, so that a seed gives the same candidates as before.
    fn sample_token_scalar(
        logits: &[f32],
        cfg: &SampleConfig,
        rng: &mut impl Rng,
        scratch: &mut Vec<(f32, u32)>,
    ) -> u32 {
        let candidates = || logits.iter().enumerate().filter(|&(i, _)| i as u32 != UNK);
        if cfg.temperature == 0.0 {
            return candidates()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap_or(EOT);
        }
        let inv_t = (1.0 / cfg.temperature) as f32;
        let max = candidates()
            .map(|(_, &l)| l)
            .fold(f32::NEG_INFINITY, f32::max);
        scratch.clear();
        scratch.extend(
            candidates()
                .map(|(i, &l)| (crate::model::cpu_kernels::exp((l - max) * inv_t), i as u32)),
        );
        let limit_k = cfg.top_k > 0 && cfg.top_k < scratch.len();
        if limit_k || cfg.top_p < 1.0 {
            scratch.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
            if limit_k {
                scratch.truncate(cfg.top_k);
            }
            if cfg.top_p < 1.0 {
                let total: f32 = scratch.iter().map(|p| p.0).sum();
                let (mut acc, mut keep) = (0f32, 0);
                for p in scratch.iter() {
                    acc += p.0;
                    keep += 1;
                    if acc >= cfg.top_p as f32 * total {
                        break;
                    }
                }
                scratch.truncate(keep.max(1));
            }
        }
        let total: f32 = scratch.iter().map(|p| p.0).sum();
        let mut u = rng.random::<f32>() * total;
        for &(p, i) in scratch.iter() {
            if u < p {
                return i;
            }
            u -= p;
        }
        scratch.last().map(|p| p.1).unwrap_or(EOT)
    }

    #[test]
    fn draws_are_the_same_as_the_scalar_samplers_for_a_seed() {
        let mut old_scratch = Vec::new();
        let mut scratch = SampleScratch::default();
        for v in [2usize, 3, 17, 145, 527] {
            for (temperature, top_k, top_p) in [
                (0.5, 0, 1.0),
                (1.0, 0, 1.0),
                (1.7, 0, 1.0),
                (0.0, 0, 1.0),
                (0.8, 5, 1.0),
                (0.8, 0, 0.9),
                (1.0, 40, 0.95),
            ] {
                let cfg = SampleConfig {
                    temperature,
                    top_k,
                    top_p,
                    ..Default::default()
                };
                let mut old_rng = ChaCha8Rng::seed_from_u64(v as u64);
                let mut rng = ChaCha8Rng::seed_from_u64(v as u64);
                let mut distinct = std::collections::BTreeSet::new();
                for draw in 0..500 {
                    // Logits that change every draw, with the unknown symbol often the likeliest.
                    let logits: Vec<f32> = (0..v)
                        .map(|i| ((i * 31 + draw * 7) as f32 * 0.13).sin() * 6.0)
                        .collect();
                    let want = sample_token_scalar(&logits, &cfg, &mut old_rng, &mut old_scratch);
                    let got = sample_token(&logits, &cfg, &mut rng, &mut scratch);
                    assert_eq!(got, want, "v {v}, {cfg:?}, draw {draw}");
                    assert_ne!(got, UNK);
                    distinct.insert(got);
                }
                // The draws vary, so agreeing means something (a greedy pick varies with the logits).
                assert!(distinct.len() > 1 || v == 2, "v {v}, {cfg:?}: {distinct:?}");
            }
        }
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        let bad = SampleConfig {
            top_p: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top-p"));
        let bad = SampleConfig {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
    }
}
