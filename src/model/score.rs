//! How likely whole tweets are under a model, each read from the start-of-tweet state (zero
//! state, then end-of-tweet) exactly as generation starts a candidate, through its own end:
//! the per-tweet loss of `aviary eval` and the likelihood that ranks candidates.

use rayon::prelude::*;

use super::{StepWeights, Vocab, EOT};

/// A tweet's score: the negative log-likelihood of its characters and of the end-of-tweet
/// after them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TweetScore {
    /// Sum of -ln p over the tokens predicted, in nats.
    pub nats: f64,
    /// Tokens predicted: the characters plus the end-of-tweet.
    pub tokens: usize,
}

impl TweetScore {
    /// Mean nats per token (lower is likelier).
    pub fn per_char(&self) -> f64 {
        self.nats / self.tokens.max(1) as f64
    }
}

/// Streams stepped together at most: the batched products are at their fastest from about 32.
const STREAMS: usize = 64;

/// Scores each of `tweets`. Tweets of similar length are stepped together, so a long tweet
/// does not keep a batch of short ones waiting; the threads each step their own batches.
pub fn score_tweets(weights: &StepWeights, vocab: &Vocab, tweets: &[&str]) -> Vec<TweetScore> {
    let ids: Vec<Vec<u32>> = tweets.iter().map(|t| vocab.encode(t)).collect();
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    // At least one batch per thread (a tweet's score is the same bits in any batch).
    let per_batch = STREAMS.min(ids.len().div_ceil(rayon::current_num_threads()).max(1));
    let batches: Vec<Vec<TweetScore>> = order
        .par_chunks(per_batch)
        .map(|chunk| {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            score_batch(weights, &batch)
        })
        .collect();
    let mut scores = vec![TweetScore::default(); ids.len()];
    for (&i, score) in order.iter().zip(batches.into_iter().flatten()) {
        scores[i] = score;
    }
    scores
}

/// Scores one batch of token sequences stepped side by side on the calling thread.
fn score_batch(weights: &StepWeights, batch: &[&[u32]]) -> Vec<TweetScore> {
    let v = weights.vocab_size();
    let longest = batch.iter().map(|g| g.len()).max().unwrap_or(0);
    let mut state = weights.thread_state(batch.len());
    let mut tokens = vec![EOT; batch.len()];
    let mut scores = vec![TweetScore::default(); batch.len()];
    weights.step(&mut state, &tokens);
    // Step t predicts token t of each sequence; token len is the closing end-of-tweet.
    for t in 0..=longest {
        for (s, seq) in batch.iter().enumerate() {
            if t > seq.len() {
                continue;
            }
            let target = seq.get(t).copied().unwrap_or(EOT);
            let logits = &state.logits[s * v..(s + 1) * v];
            scores[s].nats -= log_softmax_at(logits, target as usize);
            scores[s].tokens += 1;
            tokens[s] = target;
        }
        if t < longest {
            weights.step(&mut state, &tokens);
        }
    }
    scores
}

/// ln softmax(logits)[i].
pub fn log_softmax_at(logits: &[f32], i: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (logits[i] - max) as f64 - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CharLstm, ModelConfig};
    use candle_core::{Device, Tensor};

    /// The per-tweet score of a tiny model, against the same sum worked out from the training
    /// forward pass over [EOT, chars] and the targets [chars, EOT].
    #[test]
    fn scores_match_the_sequence_forward_from_the_tweet_start() {
        let cfg = ModelConfig {
            embedding_size: 6,
            rnn_size: 10,
            num_layers: 2,
            drop_rate: 0.0,
        };
        let vocab = Vocab::from_chars("abcde ".chars().collect());
        let v = vocab.len();
        let w = cfg.init_weights(v, 11, &Device::Cpu).unwrap();
        let model = CharLstm::from_weights(&w, &cfg, v, &Device::Cpu).unwrap();
        let tweets = ["abc de", "e", "dcba ab cd ee"];
        let sw = StepWeights::from_model(&model).unwrap();
        let got = score_tweets(&sw, &vocab, &tweets);
        for (tweet, score) in tweets.iter().zip(&got) {
            let ids = vocab.encode(tweet);
            let inputs: Vec<u32> = std::iter::once(EOT).chain(ids.iter().copied()).collect();
            let targets: Vec<u32> = ids.iter().copied().chain(std::iter::once(EOT)).collect();
            let n = inputs.len();
            let x = Tensor::from_vec(inputs, (n, 1), &Device::Cpu).unwrap();
            let logits: Vec<Vec<f32>> = model.forward(&x, None).unwrap().to_vec2().unwrap();
            let want: f64 = targets
                .iter()
                .zip(&logits)
                .map(|(&t, row)| {
                    let z: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
                    z.ln() - row[t as usize] as f64
                })
                .sum();
            assert_eq!(score.tokens, n, "{tweet}: characters plus the end");
            assert!(
                (score.nats - want).abs() < 1e-4,
                "{tweet}: {} vs {want}",
                score.nats
            );
        }
        // An untrained model is near uniform: about ln(V) per token.
        let mean = got[2].per_char();
        assert!((mean - (v as f64).ln()).abs() < 0.5, "{mean}");
    }
}
