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
use crate::generate::{self, NoveltyIndexBuilder, Rejection};
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
}

/// What one `generate` for a bot did.
#[derive(Clone, Debug, PartialEq)]
pub struct CandidateBatch {
    /// The candidates kept and stored.
    pub kept: Vec<NewCandidate>,
    /// Candidates sampled in all.
    pub sampled: usize,
    /// Candidates dropped, per reason.
    pub rejected: BTreeMap<Rejection, usize>,
    /// The seed the sampling started from.
    pub seed: u64,
    /// The checkpoint sampled from.
    pub checkpoint: String,
}

/// Sampling rounds before giving up on reaching `n` (a model that only copies never will).
const MAX_ROUNDS: u64 = 6;

/// Samples candidates for bot `bot` until `req.n` pass the checks (or the rounds run out),
/// and stores them. `req.checkpoint` overrides the bot's model.
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
    let mut after = 0;
    loop {
        let page = store.kept_tweets(bot.id, after, 4096)?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        page.iter().for_each(|(_, t)| builder.add(t));
    }
    let index = builder.build();

    let seed = req.seed.unwrap_or_else(rand::random);
    let mut seen = HashSet::new();
    let mut kept: Vec<(String, f64)> = Vec::new();
    let mut rejected = BTreeMap::new();
    let mut sampled = 0;
    for round in 0..MAX_ROUNDS {
        let want = req.n.saturating_sub(kept.len());
        if want == 0 {
            break;
        }
        // Ask for more than are missing: some will be dropped.
        let batch = (want * 2).max(8);
        let texts = generate::generate(
            &weights,
            &ck.card.vocab,
            &sample,
            &req.prime,
            batch,
            mix(seed, round),
        )?;
        sampled += texts.len();
        for text in texts {
            if kept.len() == req.n {
                break;
            }
            let mut verdict = index.judge(&text, &config.novelty);
            if verdict.is_ok() {
                let t = text.trim();
                if !seen.insert(t.to_string()) || store.is_known_text(bot.id, t)? {
                    verdict = Err(Rejection::Repeat);
                }
            }
            match verdict {
                Ok(novelty) => kept.push((text.trim().to_string(), novelty)),
                Err(r) => *rejected.entry(r).or_default() += 1,
            }
        }
    }
    let sampling = serde_json::json!({
        "temperature": sample.temperature,
        "top_k": sample.top_k,
        "top_p": sample.top_p,
        "max_chars": sample.max_chars,
        "prime": req.prime,
        "seed": seed,
        "checkpoint": label,
    })
    .to_string();
    let kept = store.write(|w| {
        kept.into_iter()
            .map(|(text, novelty)| {
                let id = w.insert_candidate(bot.id, &text, &sampling, novelty)?;
                Ok(NewCandidate { id, text, novelty })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(CandidateBatch {
        kept,
        sampled,
        rejected,
        seed,
        checkpoint: label,
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

/// The candidates of bot `bot`, oldest first; only those with `status` when given.
pub fn list(store: &Store, bot: &str, status: Option<&str>) -> Result<Vec<CandidateRow>> {
    let bot = find_bot(store, bot)?;
    let mut rows = store.candidates(bot.id)?;
    if let Some(s) = status {
        rows.retain(|c| c.status == s);
    }
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
            let t = t.trim();
            let n = t.chars().count();
            if n == 0 || n > generate::MAX_TWEET_CHARS {
                return Err(Error::invalid(
                    format!("an edited tweet must have 1 to 280 characters, not {n}"),
                    "shorten the text",
                ));
            }
            ("edited", Some(t))
        }
    };
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
