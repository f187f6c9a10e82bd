//! Hyperparameter search: random configurations, each trained for an equal share of a time
//! budget, ranked by validation loss, written as `trials.csv` (the reference tutorial's
//! table). For a bot each trial fine-tunes from its base (learning rate, dropout, batch
//! size); for a corpus each trains a base model from scratch (sizes too).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::training::{train, Init, TrainData, TrainOverrides, TrainRequest};
use super::Config;
use crate::train::TrainEvent;
use crate::{Error, Result};

/// A search to run.
#[derive(Clone, Debug)]
pub struct SearchRequest {
    /// A bot (fine-tuning trials) or corpus files (base-model trials).
    pub data: TrainData,
    /// How many configurations to try.
    pub trials: usize,
    /// Seconds of training for all trials together.
    pub budget_seconds: f64,
    /// Seed of the configurations drawn.
    pub seed: u64,
    /// Where the trials' checkpoints and `trials.csv` go.
    pub out_dir: PathBuf,
    /// `cpu`, `cuda`, `cuda:N`, or `None` for the best available.
    pub device: Option<String>,
}

/// One configuration tried, and how it did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trial {
    /// Its number, in the order tried (from 1).
    pub trial: usize,
    /// RMSprop learning rate.
    pub learning_rate: f64,
    /// Dropout.
    pub drop_rate: f32,
    /// Rows per batch.
    pub batch_size: usize,
    /// LSTM units (base-model trials; a fine-tune keeps its base's).
    pub rnn_size: Option<usize>,
    /// Best validation loss reached, nats/char.
    pub val_loss: Option<f64>,
    /// Steps trained.
    pub steps: u64,
    /// Seconds trained.
    pub seconds: f64,
    /// Seconds one epoch takes.
    pub seconds_per_epoch: f64,
    /// Its checkpoint.
    pub checkpoint: String,
}

/// Draws trial `k`'s configuration.
fn draw(rng: &mut ChaCha8Rng, base_models: bool) -> (f64, f32, usize, Option<usize>) {
    // Learning rates spread evenly on a log scale over a decade and a half.
    let lr = 10f64.powf(rng.random_range(-3.7..-2.5));
    let drop = (rng.random_range(0.0..0.3f32) * 100.0).round() / 100.0;
    let batch = [32, 64, 128][rng.random_range(0..3)];
    let rnn = base_models.then(|| [128, 256, 512][rng.random_range(0..3)]);
    (lr, drop, batch, rnn)
}

/// Runs the trials one after another, calling `on_trial` after each; returns them best
/// first and writes `trials.csv` in `req.out_dir`.
pub fn search(
    config: &Config,
    req: &SearchRequest,
    events: &Sender<TrainEvent>,
    cancel: &AtomicBool,
    mut on_trial: impl FnMut(&Trial),
) -> Result<Vec<Trial>> {
    if req.trials == 0 || req.budget_seconds <= 0.0 {
        return Err(Error::invalid(
            "a search needs at least one trial and some time",
            "pass e.g. --trials 6 --budget 1800",
        ));
    }
    let per_trial = req.budget_seconds / req.trials as f64;
    let base_models = matches!(req.data, TrainData::Files(_));
    let mut rng = ChaCha8Rng::seed_from_u64(req.seed);
    let mut trials = Vec::new();
    for k in 1..=req.trials {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let (lr, drop, batch, rnn) = draw(&mut rng, base_models);
        let dir = req.out_dir.join(format!("trial-{k}"));
        let train_req = TrainRequest {
            data: req.data.clone(),
            init: if base_models {
                Init::Scratch
            } else {
                Init::Pretrained(None)
            },
            checkpoint_dir: Some(dir.clone()),
            replace: true,
            trial: true,
            overrides: TrainOverrides {
                learning_rate: Some(lr),
                drop_rate: Some(drop),
                batch_size: Some(batch),
                rnn_size: rnn,
                max_seconds: Some(per_trial),
                ..TrainOverrides::default()
            },
            device: req.device.clone(),
            ..TrainRequest::default()
        };
        let outcome = train(config, &train_req, events, cancel)?;
        let epochs = outcome.steps as f64 / outcome.steps_per_epoch.max(1) as f64;
        let trial = Trial {
            trial: k,
            learning_rate: lr,
            drop_rate: drop,
            batch_size: batch,
            rnn_size: rnn,
            // A trial cut off before its first validation is ranked by its last weights'.
            val_loss: outcome.best_val_loss.or(outcome.last_val_loss),
            steps: outcome.steps,
            seconds: outcome.train_seconds,
            seconds_per_epoch: if epochs > 0.0 {
                outcome.train_seconds / epochs
            } else {
                0.0
            },
            checkpoint: dir.display().to_string(),
        };
        on_trial(&trial);
        trials.push(trial);
    }
    trials.sort_by(|a, b| {
        let key = |t: &Trial| t.val_loss.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    write_csv(&req.out_dir.join("trials.csv"), &trials)?;
    Ok(trials)
}

fn write_csv(path: &std::path::Path, trials: &[Trial]) -> Result<()> {
    let fail = |e: csv::Error| {
        Error::invalid(
            format!("cannot write {}: {e}", path.display()),
            "check the folder",
        )
    };
    let mut w = csv::Writer::from_path(path).map_err(fail)?;
    for t in trials {
        w.serialize(t).map_err(fail)?;
    }
    w.flush().map_err(|e| Error::io(path, e))
}
