//! Candidate tweets for a bot: sampled from its model (the base model until it is
//! fine-tuned), judged against its training tweets, and stored with the settings that made
//! them. Copies of training tweets, empty, short or unbalanced texts and repeats of what is
//! already a candidate, queued or posted are dropped and counted.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use candle_core::Device;

use super::bots::find_bot;
use super::posting;
use super::{base_checkpoint, Config, GenerateRequest};
use crate::generate::{
    self, distinct, rank, NoveltyIndexBuilder, Quality, QualityReport, Ranker, Rejection, Sample,
};
use crate::model::{Checkpoint, StepWeights};
use crate::store::Store;
use crate::store::{CandidateRow, QueueStatus};
use crate::train::mix;
use crate::{Error, Result};

/// A stored candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct NewCandidate {
    /// Its id in the store.
    pub id: i64,
    /// The text.
    pub text: String,
    /// 1 - its overlap with the bot's training tweets.
    pub novelty: f64,
    /// How it reads (what it was ranked by).
    pub quality: Quality,
}

/// What one `generate` for a bot did.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateBatch {
    /// The candidates kept and stored, best first.
    pub kept: Vec<NewCandidate>,
    /// Candidates sampled in all.
    pub sampled: usize,
    /// Candidates dropped, per reason (those that passed but ranked below the kept ones are
    /// not counted here).
    pub rejected: BTreeMap<Rejection, usize>,
    /// The seed the sampling started from.
    pub seed: u64,
    /// The checkpoint sampled from.
    pub checkpoint: String,
    /// The pool and the kept candidates beside the account's tweets.
    pub report: QualityReport,
}

/// Sampling rounds before giving up on reaching `n` (a model that only copies never will).
const MAX_ROUNDS: u64 = 6;

/// Samples a pool of candidates for bot `bot` (`[rank] pool` for each one asked for), drops
/// those that fail the checks, and stores the best `req.n` by their ranking score; more
/// rounds are sampled while fewer than `req.n` pass. `req.checkpoint` overrides the bot's
/// model.
pub fn generate_for_bot(
    config: &Config,
    store: &mut Store,
    bot: &str,
    req: &GenerateRequest,
) -> Result<CandidateBatch> {
    let bot = find_bot(store, bot)?;
    let sample = req.sample_config(config);
    let dir = req
        .checkpoint
        .as_ref()
        .map(|p| p.display().to_string())
        .or(bot.active_checkpoint.clone());
    let (ck, label) = match &dir {
        Some(d) => (Checkpoint::load(Path::new(d), &Device::Cpu)?, d.clone()),
        None => (
            base_checkpoint(&Device::Cpu)?,
            "built-in base model".to_string(),
        ),
    };
    let weights = StepWeights::from_model(&ck.model(&Device::Cpu)?)?;

    let mut builder = NoveltyIndexBuilder::new(config.novelty.ngram);
    let mut tweets = Vec::new();
    let mut after = 0;
    loop {
        let page = store.kept_tweets(bot.id, after, 4096)?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        page.iter().for_each(|(_, t)| builder.add(t));
        tweets.extend(page.into_iter().map(|(_, t)| t));
    }
    let index = builder.build();
    let ranker = Ranker::new(config.rank.clone(), tweets.iter().map(String::as_str));

    let seed = req.seed.unwrap_or_else(rand::random);
    let mut seen = HashSet::new();
    let mut passed: Vec<(Sample, f64, Quality)> = Vec::new();
    let mut pool: Vec<Sample> = Vec::new();
    let mut rejected = BTreeMap::new();
    let pool_size = (req.n * config.rank.pool.max(1)).max(8);
    for round in 0..MAX_ROUNDS {
        if passed.len() >= req.n {
            break;
        }
        let samples = generate::generate(
            &weights,
            &ck.card.vocab,
            &sample,
            &req.prime,
            pool_size,
            mix(seed, round),
        )?;
        for s in samples {
            let mut verdict = index.judge(&s.text, &config.novelty);
            if verdict.is_ok() && !s.ended {
                verdict = Err(Rejection::Unfinished);
            }
            if verdict.is_ok()
                && (!seen.insert(s.text.clone()) || store.is_known_text(bot.id, &s.text)?)
            {
                verdict = Err(Rejection::Repeat);
            }
            match verdict {
                Ok(novelty) => passed.push((s.clone(), novelty, ranker.quality(&s))),
                Err(r) => *rejected.entry(r).or_default() += 1,
            }
            pool.push(s);
        }
    }
    let qualities: Vec<Quality> = passed.iter().map(|p| p.2).collect();
    let texts: Vec<&str> = passed.iter().map(|p| p.0.text.as_str()).collect();
    let (kept, similar) = distinct(
        &texts,
        &rank(&qualities),
        req.n,
        config.novelty.ngram,
        config.rank.max_similarity,
    );
    if !similar.is_empty() {
        rejected.insert(Rejection::Similar, similar.len());
    }
    let best: Vec<(Sample, f64, Quality)> = kept.into_iter().map(|i| passed[i].clone()).collect();
    let sampling = serde_json::json!({
        "temperature": sample.temperature,
        "top_k": sample.top_k,
        "top_p": sample.top_p,
        "max_chars": sample.max_chars,
        "prime": req.prime,
        "seed": seed,
        "checkpoint": label,
        "pool": pool.len(),
    })
    .to_string();
    let report = QualityReport::new(
        tweets.iter().map(String::as_str),
        ranker.known(),
        &pool,
        &best
            .iter()
            .map(|(s, _, q)| (s.clone(), *q))
            .collect::<Vec<_>>(),
    );
    let kept = store.write(|w| {
        best.into_iter()
            .map(|(s, novelty, quality)| {
                let quality_json = serde_json::to_string(&quality).expect("numbers serialise");
                let id = w.insert_candidate(
                    bot.id,
                    &s.text,
                    &sampling,
                    novelty,
                    quality.score,
                    &quality_json,
                )?;
                Ok(NewCandidate {
                    id,
                    text: s.text,
                    novelty,
                    quality,
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(CandidateBatch {
        kept,
        sampled: pool.len(),
        rejected,
        seed,
        checkpoint: label,
        report,
    })
}

/// What a reviewer does with a candidate.
#[derive(Clone, Debug, PartialEq)]
pub enum Review {
    /// Good to post as it is.
    Approve,
    /// Not to be posted.
    Reject,
    /// Good to post with this text instead (at most 280 characters).
    Edit(String),
    /// Back to unreviewed.
    Reset,
}

/// The candidates of bot `bot`, best score first (unscored ones, from before scores, last;
/// ties oldest first); only those with `status` when given.
pub fn list(store: &Store, bot: &str, status: Option<&str>) -> Result<Vec<CandidateRow>> {
    let bot = find_bot(store, bot)?;
    let mut rows = store.candidates(bot.id)?;
    if let Some(s) = status {
        rows.retain(|c| c.status == s);
    }
    rows.sort_by(|a, b| {
        let score = |c: &CandidateRow| c.score.unwrap_or(f64::NEG_INFINITY);
        score(b).total_cmp(&score(a)).then(a.id.cmp(&b.id))
    });
    Ok(rows)
}

/// Applies `review` to candidates `ids` of bot `bot`, all or none.
pub fn review(store: &mut Store, bot: &str, ids: &[i64], review: &Review) -> Result<()> {
    let bot = find_bot(store, bot)?;
    let (status, text) = match review {
        Review::Approve => ("approved", None),
        Review::Reject => ("rejected", None),
        Review::Reset => ("new", None),
        Review::Edit(t) => {
            let t = posting::tweet_text(t)?;
            ("edited", Some(t))
        }
    };
    let text = text.as_deref();
    let rows = store.candidates(bot.id)?;
    store.write(|w| {
        for id in ids {
            let Some(c) = rows.iter().find(|c| c.id == *id) else {
                return Err(Error::invalid(
                    format!("bot `{}` has no candidate {id}", bot.name),
                    format!("list them with `aviary candidates {}`", bot.name),
                ));
            };
            // Approved candidates are the queue: approving queues, rejecting unqueues, an
            // edit changes what is queued. What is sent or being sent stays as it is.
            let queued = w.entry_of_candidate(*id)?;
            if let Some((qid, qs)) = queued {
                if matches!(qs, QueueStatus::Sending | QueueStatus::Posted) {
                    return Err(Error::invalid(
                        format!("candidate {id} is {qs} (queue entry {qid}): it cannot change now"),
                        "write a new tweet instead",
                    ));
                }
                w.dequeue(qid)?;
            }
            w.set_candidate_status(bot.id, *id, status, text)?;
            if matches!(review, Review::Approve | Review::Edit(_)) {
                let final_text = text.unwrap_or(c.edited_text.as_deref().unwrap_or(&c.text));
                posting::enqueue_in(w, bot.id, Some(*id), final_text)?;
            }
        }
        Ok(())
    })
}
