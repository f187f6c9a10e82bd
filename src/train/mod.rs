//! The training loop: epochs over a streamed corpus, validation loss, early stopping,
//! best-only checkpoints, exact resume, and progress as a stream of [`TrainEvent`]s.
//!
//! Takes tweets through [`TweetSource`]; knows no bot, database or screen. Everything random
//! (initial weights, shuffling, dropout) is derived from one seed and the step or epoch, so a
//! run interrupted and resumed ends with the same weights as one that never stopped.

pub mod batches;
pub mod optim;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

pub use batches::{
    fold_for_split, split_of, Batch, BatchStream, CorpusRules, CorpusStats, CutSpec, Split,
    SplitRule, StreamSpec, TweetSource, Windows,
};
use optim::RmsProp;

use crate::model::checkpoint::{self, load_tensors, save_tensors, Card, Checkpoint};
use crate::model::{score_tweets, CharLstm, Dropout, ModelConfig, Precision, StepWeights, Vocab};
use crate::{Error, Result};

/// File name of the resume state (latest weights and optimizer state) in a checkpoint dir.
pub const STATE_FILE: &str = "state.safetensors";

/// How fast a run goes: what its speed and time-left figures are computed from.
struct Pace {
    started: Instant,
    /// Training seconds of the run before this process took it up.
    seconds_before: f64,
    start_step: u64,
    total: u64,
    chars_per_step: f64,
    /// Characters per second, a moving average.
    speed: f64,
}

impl Pace {
    /// Training seconds of the run in all, now.
    fn train_seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }
}

/// Training hyperparameters. Stored in every checkpoint card.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Rows per batch.
    pub batch_size: usize,
    /// Characters per row (truncated backpropagation length).
    pub seq_len: usize,
    /// RMSprop learning rate.
    pub learning_rate: f64,
    /// RMSprop smoothing constant (PyTorch's `alpha`).
    pub rms_alpha: f64,
    /// RMSprop epsilon, added to the root mean square.
    pub rms_eps: f64,
    /// Gradients are scaled down to this global L2 norm (0: no clipping).
    pub clip_norm: f64,
    /// Passes over the training split.
    pub num_epochs: u64,
    /// Stop after this many steps in all (0: no limit).
    pub max_steps: u64,
    /// Stop after this many seconds of training in all (0: no limit).
    pub max_seconds: f64,
    /// Fraction of tweets held out for validation, chosen by a hash of the tweet.
    pub val_fraction: f64,
    /// Validate every this many steps, and at each epoch end (0: only at epoch ends).
    pub val_every: u64,
    /// Batches of held-out text each validation reads (at most).
    pub val_batches: usize,
    /// Early stopping: validations without an improvement of `min_delta` before stopping.
    pub patience: u32,
    /// Early stopping: the smallest drop in validation loss that counts as an improvement.
    pub min_delta: f64,
    /// Early stopping and learning-rate decay read a smoothed curve: each validation's loss
    /// moves the smoothed one this share of the way (1: the raw losses).
    pub smoothing: f64,
    /// The learning rate is multiplied by this after every `lr_patience` validations in a
    /// row without an improvement (1: never).
    pub lr_decay: f64,
    /// Validations without an improvement before each learning-rate decay.
    pub lr_patience: u32,
    /// Characters seen fewer times than this map to the unknown symbol.
    pub min_char_count: u64,
    /// Windows held in the shuffle buffer (bounds memory; 1: no shuffling).
    pub shuffle_windows: usize,
    /// Seed of everything random: initial weights, shuffling, dropout.
    pub seed: u64,
    /// On CUDA, let f32 matrix products use TF32 tensor cores (about three decimal digits per
    /// product, as cuDNN's default math on Ampere and newer). No effect on the CPU.
    pub tf32: bool,
    /// On a CPU with AVX-512 BF16, round the operands of training's matrix products to bf16
    /// and sum in f32 (the weights and the optimizer stay f32): about twice as fast per
    /// product. Off by default; an error on CPUs without it.
    pub bf16: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch_size: 128,
            seq_len: 128,
            learning_rate: 1e-3,
            rms_alpha: 0.99,
            rms_eps: 1e-8,
            clip_norm: 5.0,
            num_epochs: 10,
            max_steps: 0,
            max_seconds: 0.0,
            val_fraction: 0.1,
            val_every: 500,
            val_batches: 16,
            patience: 3,
            min_delta: 0.01,
            smoothing: 1.0,
            lr_decay: 1.0,
            lr_patience: 1,
            min_char_count: 3,
            shuffle_windows: 8192,
            seed: 42,
            tf32: false,
            bf16: false,
        }
    }
}

/// Why training stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Every epoch ran.
    Completed,
    /// `max_steps` was reached; `--restore` with a larger limit continues.
    MaxSteps,
    /// `max_seconds` of training were reached; `--restore` with a larger limit continues.
    TimeLimit,
    /// Validation loss stopped improving.
    EarlyStopped,
    /// The user asked to stop; `--restore` continues.
    Cancelled,
}

/// Where a run stands. Saved with the resume state; a resumed run continues from here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Batches of the current epoch already trained on.
    pub batch_in_epoch: u64,
    /// Best validation loss so far (nats per character).
    pub best_val_loss: Option<f64>,
    /// Step of the best validation loss (the weights in `model.safetensors`).
    pub best_step: u64,
    /// Validation loss of the last validation.
    pub last_val_loss: Option<f64>,
    /// Validations in a row without an improvement of `min_delta`.
    pub evals_without_improvement: u32,
    /// The smoothed validation loss, and its best so far (what early stopping reads).
    #[serde(default)]
    pub smoothed_val_loss: Option<f64>,
    /// The best smoothed validation loss.
    #[serde(default)]
    pub best_smoothed_val_loss: Option<f64>,
    /// The learning rate now, as a share of the configured one (decayed on plateaus).
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Why the last run stopped, if it did.
    pub stopped: Option<StopReason>,
    /// Wall-clock seconds spent training, over all runs.
    pub train_seconds: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            best_val_loss: None,
            best_step: 0,
            last_val_loss: None,
            evals_without_improvement: 0,
            smoothed_val_loss: None,
            best_smoothed_val_loss: None,
            lr_scale: 1.0,
            stopped: None,
            train_seconds: 0.0,
        }
    }
}

impl Progress {
    /// Takes in a validation loss: the best (raw) loss, the smoothed curve, the count of
    /// validations without an improvement of `min_delta` on it, and a learning-rate decay
    /// after every `lr_patience` of those. True when early stopping says stop.
    pub fn judge(&mut self, val: f64, config: &TrainConfig) -> bool {
        if self.best_val_loss.is_none_or(|b| val < b) {
            self.best_val_loss = Some(val);
            self.best_step = self.step;
        }
        self.last_val_loss = Some(val);
        let smoothed = match self.smoothed_val_loss {
            Some(s) => s + config.smoothing.clamp(0.0, 1.0) * (val - s),
            None => val,
        };
        self.smoothed_val_loss = Some(smoothed);
        // As Keras's EarlyStopping: the best moves only on an improvement that counts, so a
        // slow steady fall adds up to one.
        if self
            .best_smoothed_val_loss
            .is_none_or(|b| smoothed < b - config.min_delta)
        {
            self.best_smoothed_val_loss = Some(smoothed);
            self.evals_without_improvement = 0;
        } else {
            self.evals_without_improvement += 1;
            if config.lr_decay != 1.0
                && config.lr_patience > 0
                && self
                    .evals_without_improvement
                    .is_multiple_of(config.lr_patience)
            {
                self.lr_scale *= config.lr_decay;
            }
        }
        config.patience > 0 && self.evals_without_improvement >= config.patience
    }
}

/// What the trainer writes into a checkpoint card's `training` field.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingRecord {
    /// Hyperparameters.
    pub config: TrainConfig,
    /// The corpus trained on.
    pub corpus: CorpusStats,
    /// Where the run stands.
    pub progress: Progress,
    /// The resume-state file (latest weights and optimizer state).
    pub state_file: String,
    /// Validation history: (step, training loss, validation loss).
    pub history: Vec<(u64, f64, f64)>,
    /// The checkpoint the weights started from, when not from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
    /// How the corpus was split and cut (absent in older cards: their legacy rules).
    #[serde(default = "CorpusRules::legacy")]
    pub rules: CorpusRules,
}

/// Progress of a run, sent on a channel: the CLI draws it with indicatif, the TUI with its
/// gauges and sparklines.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainEvent {
    /// The run starts (or resumes).
    Started {
        /// Batches per epoch.
        steps_per_epoch: u64,
        /// Steps this run will take at most, counted from step 0.
        total_steps: u64,
        /// First step of this run (0 when not resumed).
        start_step: u64,
        /// Training tokens per epoch.
        train_chars: u64,
        /// Held-out tokens.
        val_chars: u64,
        /// Vocabulary size.
        vocab_size: usize,
        /// Trainable parameters.
        params: usize,
        /// Where it runs ("cpu, 2 threads", "cuda:0").
        device: String,
        /// Occurrences of characters in the corpus that map to the unknown symbol.
        unknown_chars: u64,
        /// Distinct characters that map to the unknown symbol.
        unknown_distinct: u64,
    },
    /// One optimizer step done.
    Step {
        /// Steps done.
        step: u64,
        /// Current epoch (0-based).
        epoch: u64,
        /// Batches done in this epoch.
        batch_in_epoch: u64,
        /// Training loss of this batch (nats per character).
        loss: f64,
        /// Training speed, characters per second (smoothed).
        chars_per_s: f64,
        /// Estimated seconds left.
        eta_s: f64,
    },
    /// A validation finished.
    Validated {
        /// At step.
        step: u64,
        /// Validation loss (nats per character).
        val_loss: f64,
        /// Best so far, this one included.
        best_val_loss: f64,
        /// This one is the new best (and was saved).
        improved: bool,
    },
    /// The run ended; the checkpoint is saved.
    Finished {
        /// Why.
        reason: StopReason,
        /// Steps done.
        step: u64,
        /// Best validation loss.
        best_val_loss: Option<f64>,
    },
}

/// A training run over a checkpoint directory.
pub struct Trainer<'a> {
    config: TrainConfig,
    model_config: ModelConfig,
    vocab: Vocab,
    source: &'a dyn TweetSource,
    stats: CorpusStats,
    dir: PathBuf,
    device: Device,
    learner: Learner,
    progress: Progress,
    history: Vec<(u64, f64, f64)>,
    val_set: Vec<Batch>,
    init_from: Option<String>,
    rules: CorpusRules,
}

impl<'a> Trainer<'a> {
    /// A new run from fresh weights: scans the corpus, builds the vocabulary.
    pub fn new(
        source: &'a dyn TweetSource,
        dir: &Path,
        model_config: ModelConfig,
        config: TrainConfig,
        device: Device,
    ) -> Result<Self> {
        let rules = CorpusRules::default();
        let stats = CorpusStats::scan(source, cut_spec(&config, rules))?;
        let vocab = Vocab::from_counts(&stats.char_counts, config.min_char_count);
        let weights = model_config.init_weights(vocab.len(), config.seed, &device)?;
        Trainer::build(
            source,
            dir,
            model_config,
            config,
            vocab,
            stats,
            weights,
            None,
            rules,
            device,
        )
    }

    /// A new run starting from a trained model's weights and vocabulary (fine-tuning): the
    /// corpus's characters that the vocabulary lacks map to the unknown symbol (see
    /// [`Trainer::unknown_chars`]). `drop_rate` replaces the model's dropout when given.
    pub fn from_pretrained(
        source: &'a dyn TweetSource,
        dir: &Path,
        pretrained: &Checkpoint,
        drop_rate: Option<f32>,
        config: TrainConfig,
        device: Device,
    ) -> Result<Self> {
        let rules = CorpusRules::default();
        let stats = CorpusStats::scan(source, cut_spec(&config, rules))?;
        let mut model_config = pretrained.card.model.clone();
        if let Some(d) = drop_rate {
            model_config.drop_rate = d;
        }
        let weights = pretrained
            .weights
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.to_device(&device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let mut t = Trainer::build(
            source,
            dir,
            model_config,
            config,
            pretrained.card.vocab.clone(),
            stats,
            weights,
            None,
            rules,
            device,
        )?;
        t.init_from = Some(pretrained.dir.display().to_string());
        Ok(t)
    }

    /// Characters of the corpus outside the vocabulary: (distinct, occurrences).
    pub fn unknown_chars(&self) -> (u64, u64) {
        self.stats
            .char_counts
            .iter()
            .filter(|(c, _)| self.vocab.id(**c) == crate::model::UNK)
            .fold((0, 0), |(d, n), (_, k)| (d + 1, n + k))
    }

    /// Continues the run saved in `dir` from its last state: same step, weights, optimizer
    /// state and random streams. `adjust` may change what is safe to change on resume (the
    /// learning rate, epochs, step limit, early stopping).
    pub fn resume(
        source: &'a dyn TweetSource,
        dir: &Path,
        adjust: impl FnOnce(&mut TrainConfig),
        device: Device,
    ) -> Result<Self> {
        let card = checkpoint::read_card(dir)?;
        let record: TrainingRecord = match &card.training {
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                Error::checkpoint(
                    dir.join(checkpoint::CARD_FILE),
                    format!("training record unreadable ({e})"),
                    "train without --restore",
                )
            })?,
            None => {
                return Err(Error::checkpoint(
                    dir.join(checkpoint::CARD_FILE),
                    "has no training record to resume",
                    "train without --restore",
                ))
            }
        };
        let mut config = record.config.clone();
        adjust(&mut config);
        let state_path = dir.join(&record.state_file);
        let (state, meta) = load_tensors(&state_path, &device)?;
        let progress: Progress = meta
            .get("progress")
            .and_then(|p| serde_json::from_str(p).ok())
            .ok_or_else(|| {
                Error::checkpoint(
                    &state_path,
                    "no progress record in the state file",
                    "train without --restore",
                )
            })?;
        let weights: HashMap<String, Tensor> = state
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix("weights.")
                    .map(|n| (n.to_string(), t.clone()))
            })
            .collect();
        checkpoint::check_weights(&state_path, &weights, &card.model, card.vocab.len())?;
        let stats = CorpusStats::scan(source, cut_spec(&config, record.rules))?;
        if stats.train_tokens != record.corpus.train_tokens
            || stats.val_tokens != record.corpus.val_tokens
        {
            tracing::warn!(
                "corpus differs from the one this run started on ({} vs {} training characters): resume is not exact",
                stats.train_tokens,
                record.corpus.train_tokens
            );
        }
        let history = record.history.clone();
        let init_from = record.init_from.clone();
        let mut t = Trainer::build(
            source,
            dir,
            card.model,
            config,
            card.vocab,
            stats,
            weights,
            Some(progress),
            record.rules,
            device,
        )?;
        t.learner.opt.load_state(&state, &state_path)?;
        t.history = history;
        t.init_from = init_from;
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        source: &'a dyn TweetSource,
        dir: &Path,
        model_config: ModelConfig,
        config: TrainConfig,
        vocab: Vocab,
        stats: CorpusStats,
        weights: HashMap<String, Tensor>,
        progress: Option<Progress>,
        rules: CorpusRules,
        device: Device,
    ) -> Result<Self> {
        let too_small = |what: &str, hint: String| {
            Error::corpus(
                source.describe(),
                format!(
                    "too small: {what} ({} tweets, {} training and {} held-out characters)",
                    stats.train_tweets + stats.val_tweets,
                    stats.train_tokens,
                    stats.val_tokens
                ),
                hint,
            )
        };
        let windows = stats.windows(Split::Train);
        if windows < config.batch_size as u64 {
            let hint = if windows >= 8 {
                format!("add tweets, or pass --batch-size {windows} (or less)")
            } else {
                format!(
                    "add tweets: about {} characters more make a batch of 8",
                    (8 - windows) * config.seq_len as u64
                )
            };
            return Err(too_small(
                &format!(
                    "the training split makes {windows} windows of {} characters, not a \
                     full batch of {}",
                    config.seq_len, config.batch_size
                ),
                hint,
            ));
        }
        let learner = Learner::new(&weights, &model_config, vocab.len(), &config, &device)?;
        let val_spec = StreamSpec {
            split: Split::Validation,
            val_fraction: config.val_fraction,
            rules,
            batch: config.batch_size,
            seq_len: config.seq_len,
            shuffle_windows: 1,
            seed: 0,
            keep_partial: true,
        };
        let val_set: Vec<Batch> = BatchStream::new(source, &vocab, val_spec)?
            .take(config.val_batches.max(1))
            .collect::<Result<_>>()?;
        if val_set.is_empty() {
            return Err(too_small(
                &format!(
                    "the held-out split has no full window of {} characters",
                    config.seq_len
                ),
                format!(
                    "add tweets: a tenth of them are held out, and those need {} characters",
                    config.seq_len + 1
                ),
            ));
        }
        let progress = progress.unwrap_or_default();
        let mut learner = learner;
        learner.opt.lr = config.learning_rate * progress.lr_scale;
        Ok(Trainer {
            config,
            model_config,
            vocab,
            source,
            stats,
            dir: dir.to_path_buf(),
            device,
            learner,
            progress,
            history: Vec::new(),
            val_set,
            init_from: None,
            rules,
        })
    }

    /// Where the run stands.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Batches per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.stats.windows(Split::Train) / self.config.batch_size as u64
    }

    fn total_steps(&self) -> u64 {
        let all = self.steps_per_epoch() * self.config.num_epochs;
        if self.config.max_steps > 0 {
            all.min(self.config.max_steps)
        } else {
            all
        }
    }

    fn tensors(&self, b: &Batch) -> Result<(Tensor, Tensor)> {
        let shape = (b.seq_len, b.batch);
        Ok((
            Tensor::from_vec(b.inputs.clone(), shape, &self.device)?,
            Tensor::from_vec(b.targets.clone(), shape, &self.device)?,
        ))
    }

    /// One optimizer step on `batch`; returns the batch's loss.
    fn train_step(&mut self, batch: &Batch) -> Result<f64> {
        let (x, y) = self.tensors(batch)?;
        // Dropout masks come from (seed, step): the same on resume.
        let seed = mix(self.config.seed, self.progress.step);
        self.learner.step(&x, &y, seed, self.config.clip_norm)
    }

    /// Mean loss over the held-out batches, weighted by characters.
    pub fn validate(&self) -> Result<f64> {
        let (mut sum, mut n) = (0f64, 0usize);
        for b in &self.val_set {
            let (x, y) = self.tensors(b)?;
            // On a worker of the pool, like the training step (see `Learner::step`).
            let model = &self.learner.model;
            let loss = rayon::scope(|_| model.loss(&x, &y, None))?;
            let loss = loss.to_scalar::<f32>()? as f64;
            sum += loss * (b.batch * b.seq_len) as f64;
            n += b.batch * b.seq_len;
        }
        Ok(sum / n as f64)
    }

    /// Validates, records, saves the best weights when they improve, decays the learning
    /// rate on a plateau; true when early stopping says stop.
    fn validate_and_save(&mut self, train_loss: f64, events: &Sender<TrainEvent>) -> Result<bool> {
        let val = self.validate()?;
        let improved = self.progress.best_val_loss.is_none_or(|b| val < b);
        let stop = self.progress.judge(val, &self.config);
        self.learner.opt.lr = self.config.learning_rate * self.progress.lr_scale;
        self.history.push((self.progress.step, train_loss, val));
        if improved {
            let card = self.card();
            Checkpoint::save(&self.dir, &card, &self.learner.model.weights())?;
        }
        self.save_state()?;
        let _ = events.send(TrainEvent::Validated {
            step: self.progress.step,
            val_loss: val,
            best_val_loss: self.progress.best_val_loss.unwrap_or(val),
            improved,
        });
        Ok(stop)
    }

    fn card(&self) -> Card {
        let mut card = Card::new(self.model_config.clone(), self.vocab.clone());
        let record = TrainingRecord {
            config: self.config.clone(),
            corpus: self.stats.clone(),
            progress: self.progress.clone(),
            state_file: STATE_FILE.to_string(),
            history: self.history.clone(),
            init_from: self.init_from.clone(),
            rules: self.rules,
        };
        card.training = Some(serde_json::to_value(record).expect("a record always serialises"));
        card
    }

    /// Writes the resume state (latest weights, optimizer state, progress), then the card.
    fn save_state(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut tensors: HashMap<String, Tensor> = self
            .learner
            .model
            .weights()
            .into_iter()
            .map(|(k, t)| (format!("weights.{k}"), t))
            .collect();
        tensors.extend(self.learner.opt.state());
        let mut meta = HashMap::new();
        meta.insert(
            "progress".to_string(),
            serde_json::to_string(&self.progress).expect("progress serialises"),
        );
        save_tensors(&self.dir.join(STATE_FILE), tensors.iter(), meta)?;
        if self.dir.join(checkpoint::WEIGHTS_FILE).exists() {
            checkpoint::write_card(&self.dir, &self.card())?;
        }
        Ok(())
    }

    /// Trains until the epochs, the step limit, early stopping or `cancel` end the run.
    /// Progress goes to `events` (a dropped receiver does not stop training).
    pub fn run(&mut self, events: &Sender<TrainEvent>, cancel: &AtomicBool) -> Result<StopReason> {
        let mut pace = self.announce_start(events);
        self.progress.stopped = None;
        let mut last_loss = f64::NAN;
        let reason = 'run: loop {
            if self.progress.epoch >= self.config.num_epochs {
                break StopReason::Completed;
            }
            let source = self.source;
            let vocab = self.vocab.clone();
            let mut stream = BatchStream::new(source, &vocab, self.epoch_spec())?
                .skip(self.progress.batch_in_epoch as usize);
            loop {
                if let Some(reason) = self.stop_asked(cancel) {
                    break 'run reason;
                }
                let Some(batch) = stream.next().transpose()? else {
                    break;
                };
                last_loss = self.step_and_report(&batch, &mut pace, events)?;
                if self.config.val_every > 0
                    && self.progress.step.is_multiple_of(self.config.val_every)
                    && self.validate_and_save(last_loss, events)?
                {
                    break 'run StopReason::EarlyStopped;
                }
            }
            if self.end_epoch(last_loss, events)? {
                break StopReason::EarlyStopped;
            }
        };
        self.finish(reason, &pace, events)
    }

    /// Says the run starts (its size, the device, the characters the vocabulary lacks) and
    /// starts timing it.
    fn announce_start(&self, events: &Sender<TrainEvent>) -> Pace {
        let pace = Pace {
            started: Instant::now(),
            seconds_before: self.progress.train_seconds,
            start_step: self.progress.step,
            total: self.total_steps(),
            chars_per_step: (self.config.batch_size * self.config.seq_len) as f64,
            speed: 0.0,
        };
        let (unknown_distinct, unknown_chars) = self.unknown_chars();
        let _ = events.send(TrainEvent::Started {
            steps_per_epoch: self.steps_per_epoch(),
            total_steps: pace.total,
            start_step: pace.start_step,
            train_chars: self.stats.train_tokens,
            val_chars: self.stats.val_tokens,
            vocab_size: self.vocab.len(),
            params: self
                .learner
                .opt
                .params()
                .iter()
                .map(|(_, v)| v.elem_count())
                .sum(),
            device: describe_device(&self.device),
            unknown_chars,
            unknown_distinct,
        });
        pace
    }

    /// This epoch's training batches: its own shuffle, from the epoch's seed.
    fn epoch_spec(&self) -> StreamSpec {
        StreamSpec {
            split: Split::Train,
            val_fraction: self.config.val_fraction,
            rules: self.rules,
            batch: self.config.batch_size,
            seq_len: self.config.seq_len,
            shuffle_windows: self.config.shuffle_windows,
            seed: mix(self.config.seed, 1_000_000 + self.progress.epoch),
            keep_partial: false,
        }
    }

    /// Why to stop before the next step, if anything says so: Ctrl-C, the step or time limit.
    fn stop_asked(&self, cancel: &AtomicBool) -> Option<StopReason> {
        if cancel.load(Ordering::Relaxed) {
            Some(StopReason::Cancelled)
        } else if self.config.max_steps > 0 && self.progress.step >= self.config.max_steps {
            Some(StopReason::MaxSteps)
        } else if self.config.max_seconds > 0.0
            && self.progress.train_seconds >= self.config.max_seconds
        {
            Some(StopReason::TimeLimit)
        } else {
            None
        }
    }

    /// One training step on `batch`, counted and reported with the speed and time left;
    /// returns its loss (an error if it diverged).
    fn step_and_report(
        &mut self,
        batch: &Batch,
        pace: &mut Pace,
        events: &Sender<TrainEvent>,
    ) -> Result<f64> {
        let t0 = Instant::now();
        let loss = self.train_step(batch)?;
        if !loss.is_finite() {
            return Err(Error::invalid(
                format!(
                    "training diverged at step {}: loss is {loss}",
                    self.progress.step
                ),
                "resume with a lower --learning-rate (the last saved state is intact)",
            ));
        }
        let rate = pace.chars_per_step / t0.elapsed().as_secs_f64();
        pace.speed = if pace.speed == 0.0 {
            rate
        } else {
            0.9 * pace.speed + 0.1 * rate
        };
        self.progress.step += 1;
        self.progress.batch_in_epoch += 1;
        self.progress.train_seconds = pace.train_seconds();
        let done_here = (self.progress.step - pace.start_step) as f64;
        let eta = pace.started.elapsed().as_secs_f64() / done_here
            * pace.total.saturating_sub(self.progress.step) as f64;
        let _ = events.send(TrainEvent::Step {
            step: self.progress.step,
            epoch: self.progress.epoch,
            batch_in_epoch: self.progress.batch_in_epoch,
            loss,
            chars_per_s: pace.speed,
            eta_s: eta,
        });
        Ok(loss)
    }

    /// An epoch's end: validates (unless the last step just did) and saves; returns whether
    /// early stopping says stop.
    fn end_epoch(&mut self, last_loss: f64, events: &Sender<TrainEvent>) -> Result<bool> {
        self.progress.epoch += 1;
        self.progress.batch_in_epoch = 0;
        let just_validated = self
            .history
            .last()
            .is_some_and(|h| h.0 == self.progress.step);
        if just_validated {
            self.save_state()?;
            return Ok(false);
        }
        self.validate_and_save(last_loss, events)
    }

    /// The run's end for `reason`: the latest weights' loss reported, a usable model and the
    /// resumable state saved.
    fn finish(
        &mut self,
        reason: StopReason,
        pace: &Pace,
        events: &Sender<TrainEvent>,
    ) -> Result<StopReason> {
        self.progress.train_seconds = pace.train_seconds();
        self.progress.stopped = Some(reason);
        if self
            .history
            .last()
            .is_none_or(|h| h.0 != self.progress.step)
        {
            // Report the loss of the latest weights without making it a validation point: an
            // interrupted run must take the same early-stopping decisions as one that never
            // stopped, so this one neither counts nor saves.
            let val = self.validate()?;
            self.progress.last_val_loss = Some(val);
            let _ = events.send(TrainEvent::Validated {
                step: self.progress.step,
                val_loss: val,
                best_val_loss: self.progress.best_val_loss.unwrap_or(val),
                improved: false,
            });
        }
        if !self.dir.join(checkpoint::WEIGHTS_FILE).exists() {
            // Stopped before the first validation: still leave a usable model.
            Checkpoint::save(&self.dir, &self.card(), &self.learner.model.weights())?;
        }
        self.save_state()?;
        let _ = events.send(TrainEvent::Finished {
            reason,
            step: self.progress.step,
            best_val_loss: self.progress.best_val_loss,
        });
        Ok(reason)
    }

    /// Validation history so far: (step, training loss, validation loss).
    pub fn history(&self) -> &[(u64, f64, f64)] {
        &self.history
    }

    /// The current (latest) weights.
    pub fn weights(&self) -> HashMap<String, Tensor> {
        self.learner.model.weights()
    }
}

/// A model and its optimizer: one training step, shared by the trainer and the benchmark.
pub struct Learner {
    /// The model, over the optimizer's variables.
    pub model: CharLstm,
    /// RMSprop over every weight.
    pub opt: RmsProp,
    drop_rate: f32,
}

impl Learner {
    /// Trainable variables initialised from `weights`.
    pub fn new(
        weights: &HashMap<String, Tensor>,
        model_config: &ModelConfig,
        vocab_size: usize,
        config: &TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let mut params = Vec::new();
        let mut vars = HashMap::new();
        for (name, _) in model_config.weight_shapes(vocab_size) {
            let var = Var::from_tensor(&weights[&name].to_device(device)?)?;
            vars.insert(name.clone(), var.as_tensor().clone());
            params.push((name, var));
        }
        let mut model = CharLstm::from_weights(&vars, model_config, vocab_size, device)?;
        if config.bf16 {
            if !device.is_cpu() || !Precision::Bf16.available() {
                let on = if device.is_cpu() {
                    "this CPU lacks it"
                } else {
                    "it runs on the CPU only"
                };
                return Err(Error::Config {
                    problem: format!("[train] bf16 needs a CPU with AVX-512 BF16, and {on}"),
                    hint: "set bf16 = false under [train] in your config (or leave out --bf16)"
                        .into(),
                });
            }
            model.precision = Precision::Bf16;
        }
        Ok(Learner {
            model,
            opt: RmsProp::new(
                params,
                config.learning_rate,
                config.rms_alpha,
                config.rms_eps,
            )?,
            drop_rate: model_config.drop_rate,
        })
    }

    /// Forward, backward, clip to `clip_norm`, update; dropout masks from `seed`. Returns
    /// the batch's loss.
    pub fn step(&mut self, x: &Tensor, y: &Tensor, seed: u64, clip_norm: f64) -> Result<f64> {
        self.step_marked(x, y, seed, clip_norm, &mut |_| Ok(()))
    }

    /// [`Learner::step`], calling `mark` as each phase ends: `"forward"` (the loss),
    /// `"backward"` (the gradients), `"update"` (clipping and RMSprop, the loss read back).
    /// The benchmark times the phases with it.
    pub fn step_marked(
        &mut self,
        x: &Tensor,
        y: &Tensor,
        seed: u64,
        clip_norm: f64,
        mark: &mut (dyn FnMut(&'static str) -> Result<()> + Send),
    ) -> Result<f64> {
        // Run the whole step on a worker of the thread pool: the serial parts then occupy a
        // worker instead of a third thread competing with the pool's spinning workers.
        // (`rayon::scope` runs its body on a worker of the pool.)
        rayon::scope(|_| {
            let mut dropout = Dropout::new(self.drop_rate, seed);
            let loss = self.model.loss(x, y, Some(&mut dropout))?;
            mark("forward")?;
            let grads = loss.backward()?;
            mark("backward")?;
            self.opt.clip_and_step(&grads, clip_norm)?;
            let loss = loss.to_scalar::<f32>()? as f64;
            mark("update")?;
            Ok(loss)
        })
    }
}

/// Mean loss (nats per character) of `model` over the whole held-out split of `source` (by
/// `split`), in consecutive windows of `seq_len` characters each read from a zero state, and
/// the characters it covered: the per-window figure. Models with different vocabularies can
/// be compared on the same tweets this way.
pub fn evaluate(
    model: &CharLstm,
    vocab: &Vocab,
    source: &dyn TweetSource,
    val_fraction: f64,
    split: SplitRule,
    seq_len: usize,
    device: &Device,
) -> Result<(f64, u64)> {
    let spec = StreamSpec {
        split: Split::Validation,
        val_fraction,
        rules: CorpusRules {
            split,
            windows: Windows::Stream,
        },
        batch: 64,
        seq_len,
        shuffle_windows: 1,
        seed: 0,
        keep_partial: true,
    };
    let (mut sum, mut n) = (0f64, 0u64);
    for b in BatchStream::new(source, vocab, spec)? {
        let b = b?;
        let shape = (b.seq_len, b.batch);
        let x = Tensor::from_vec(b.inputs, shape, device)?;
        let y = Tensor::from_vec(b.targets, shape, device)?;
        let loss = rayon::scope(|_| model.loss(&x, &y, None))?.to_scalar::<f32>()? as f64;
        let chars = (b.batch * b.seq_len) as u64;
        sum += loss * chars as f64;
        n += chars;
    }
    if n == 0 {
        return Err(Error::corpus(
            source.describe(),
            "has no held-out text to evaluate on",
            "import more tweets",
        ));
    }
    Ok((sum / n as f64, n))
}

/// Mean loss (nats per character) of the model over the held-out tweets of `source` (by
/// `split`), each read from the start-of-tweet state through its end-of-tweet, as generation
/// runs (the per-tweet figure), and the tokens it covered. Reads the tweets in bounded
/// chunks.
pub fn evaluate_tweets(
    weights: &StepWeights,
    vocab: &Vocab,
    source: &dyn TweetSource,
    val_fraction: f64,
    split: SplitRule,
) -> Result<(f64, u64)> {
    let (mut nats, mut tokens) = (0f64, 0u64);
    let mut chunk: Vec<String> = Vec::new();
    let mut flush = |chunk: &mut Vec<String>| {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for s in score_tweets(weights, vocab, &texts) {
            nats += s.nats;
            tokens += s.tokens as u64;
        }
        chunk.clear();
    };
    for tweet in source.tweets()? {
        let tweet = tweet?;
        if split_of(&tweet, val_fraction, split) == Split::Validation {
            chunk.push(tweet);
            if chunk.len() == 4096 {
                flush(&mut chunk);
            }
        }
    }
    flush(&mut chunk);
    if tokens == 0 {
        return Err(Error::corpus(
            source.describe(),
            "has no held-out tweets to evaluate on",
            "import more tweets",
        ));
    }
    Ok((nats / tokens as f64, tokens))
}

/// The [`CutSpec`] of a run's config under `rules`.
fn cut_spec(config: &TrainConfig, rules: CorpusRules) -> CutSpec {
    CutSpec {
        val_fraction: config.val_fraction,
        seq_len: config.seq_len,
        rules,
    }
}

/// A seed for stream `k` of a run seeded with `seed` (SplitMix64 finaliser).
pub fn mix(seed: u64, k: u64) -> u64 {
    let mut z = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// "cpu, N threads", or the CUDA device with its ordinal and name (and "tf32" when f32
/// matmuls may use TF32), e.g. "cuda:0 NVIDIA H200".
pub fn describe_device(device: &Device) -> String {
    match device {
        Device::Cpu => format!("cpu, {} threads", candle_core::utils::get_num_threads()),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let context = d.cuda_stream().context().clone();
            let name = context.name().unwrap_or_else(|_| "(name unknown)".into());
            let tf32 = if candle_core::cuda_backend::gemm_reduced_precision_f32() {
                ", tf32"
            } else {
                ""
            };
            format!("cuda:{} {name}{tf32}", context.ordinal())
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => "cuda".to_string(),
        Device::Metal(_) => "metal".to_string(),
    }
}

/// The CPU's model name (from `/proc/cpuinfo` where there is one) and the vector extensions
/// this process can use, e.g. "Intel(R) Xeon(R) Processor; avx512f avx512bf16 avx2 fma": speed
/// figures differ between CPUs with and without AVX-512, so each one names its CPU.
pub fn describe_cpu() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| format!("{} CPU", std::env::consts::ARCH));
    #[cfg(target_arch = "x86_64")]
    let features: Vec<&str> = [
        ("avx512f", std::is_x86_feature_detected!("avx512f")),
        ("avx512bf16", std::is_x86_feature_detected!("avx512bf16")),
        ("avx2", std::is_x86_feature_detected!("avx2")),
        ("fma", std::is_x86_feature_detected!("fma")),
    ]
    .into_iter()
    .filter_map(|(name, present)| present.then_some(name))
    .collect();
    #[cfg(not(target_arch = "x86_64"))]
    let features: Vec<&str> = Vec::new();
    if features.is_empty() {
        model
    } else {
        format!("{model}; {}", features.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_kernels::tests::skipped;

    /// Feeds a curve of validation losses to a fresh progress; returns the index of the
    /// validation at which early stopping said stop (None: never) and the lr scale after each.
    fn run_curve(curve: &[f64], config: &TrainConfig) -> (Option<usize>, Vec<f64>) {
        let mut p = Progress::default();
        let mut scales = Vec::new();
        for (k, &v) in curve.iter().enumerate() {
            p.step = k as u64;
            let stop = p.judge(v, config);
            scales.push(p.lr_scale);
            if stop {
                return (Some(k), scales);
            }
        }
        (None, scales)
    }

    fn finetune_like() -> TrainConfig {
        TrainConfig {
            patience: 3,
            min_delta: 0.001,
            smoothing: 0.5,
            lr_decay: 0.5,
            lr_patience: 1,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn a_curve_still_falling_slowly_is_not_stopped() {
        // The case: 0.002-0.004 a validation, which min_delta 0.005 used to stop.
        let curve: Vec<f64> = (0..30)
            .map(|k| 1.60 - 0.003 * k as f64 + if k % 2 == 0 { 0.0015 } else { 0.0 })
            .collect();
        let (stop, scales) = run_curve(&curve, &finetune_like());
        assert_eq!(stop, None, "stopped while falling");
        assert_eq!(
            *scales.last().unwrap(),
            1.0,
            "decayed while falling: {scales:?}"
        );
        // A fall below min_delta per validation still adds up to improvements.
        let slow: Vec<f64> = (0..40).map(|k| 1.6 - 0.0006 * k as f64).collect();
        assert_eq!(run_curve(&slow, &finetune_like()).0, None);
    }

    #[test]
    fn a_plateau_decays_the_rate_then_stops_after_patience() {
        // Worked by hand: smoothed by half, the curve is 1.7, 1.69, 1.675, 1.6575, 1.63875,
        // 1.61938, 1.61019, 1.60609, 1.60455, then 1.60427 (better by less than 0.001: the
        // first bad validation), 1.60464, 1.60532 (the third: stop).
        let curve = [
            1.70, 1.68, 1.66, 1.64, 1.62, 1.60, 1.601, 1.602, 1.603, 1.604, 1.605, 1.606, 1.607,
        ];
        let (stop, scales) = run_curve(&curve, &finetune_like());
        assert_eq!(stop, Some(11), "{scales:?}");
        assert!(scales[..9].iter().all(|&s| s == 1.0), "{scales:?}");
        assert_eq!(
            &scales[9..],
            &[0.5, 0.25, 0.125],
            "halved at each bad validation"
        );
        // Raw losses (smoothing 1), no decay: stops after three bad ones, at 1.603.
        let raw = TrainConfig {
            smoothing: 1.0,
            lr_decay: 1.0,
            ..finetune_like()
        };
        let (stop, scales) = run_curve(&curve, &raw);
        assert_eq!(stop, Some(8));
        assert!(scales.iter().all(|&s| s == 1.0));
    }

    #[test]
    fn one_lucky_validation_does_not_stop_a_falling_curve() {
        // 1.60 is a lucky low; the trend after it still falls. Raw, the next three are no
        // better than 1.60 - 0.001 and stop the run; smoothed by half (1.64, 1.6325,
        // 1.62375, 1.61437, 1.60469) every one improves.
        let curve = [1.70, 1.66, 1.60, 1.625, 1.615, 1.605, 1.595];
        assert_eq!(run_curve(&curve, &finetune_like()).0, None);
        let raw = TrainConfig {
            smoothing: 1.0,
            ..finetune_like()
        };
        assert_eq!(run_curve(&curve, &raw).0, Some(5));
        // The best raw loss is what the saved weights are.
        let mut p = Progress::default();
        for (k, v) in curve.iter().enumerate() {
            p.step = k as u64;
            p.judge(*v, &finetune_like());
        }
        assert_eq!((p.best_val_loss, p.best_step), (Some(1.595), 6));
    }

    /// Losses of `steps` training steps of a small two-layer model (the first layer from
    /// token ids, the second through the fused op, both with dropout) on a text with
    /// structure, at `bf16` or not.
    fn small_run_losses(bf16: bool, steps: u64) -> Result<Vec<f64>> {
        let (vocab, t, b) = (40, 16, 32);
        let model = ModelConfig {
            rnn_size: 96,
            num_layers: 2,
            ..ModelConfig::default()
        };
        let train = TrainConfig {
            bf16,
            learning_rate: 3e-3,
            ..TrainConfig::default()
        };
        let weights = model.init_weights(vocab, 1, &Device::Cpu)?;
        let mut learner = Learner::new(&weights, &model, vocab, &train, &Device::Cpu)?;
        // Words of a few letters repeated in a varying order: something to learn.
        let text: Vec<u32> = (0..40_000u32)
            .map(|k| (k % 5 + 7 * ((k / 5).wrapping_mul(2_654_435_761) >> 29)) % vocab as u32)
            .collect();
        (0..steps)
            .map(|step| {
                let at = step as usize * t * b % (text.len() - t * b - 1);
                let x = Tensor::from_vec(text[at..at + t * b].to_vec(), (t, b), &Device::Cpu)?;
                let y =
                    Tensor::from_vec(text[at + 1..at + t * b + 1].to_vec(), (t, b), &Device::Cpu)?;
                learner.step(&x, &y, step, train.clip_norm)
            })
            .collect()
    }

    #[test]
    fn bf16_products_train_like_f32() {
        if !Precision::Bf16.available() {
            skipped(
                "bf16_products_train_like_f32",
                "this CPU lacks AVX-512 BF16",
            );
            return;
        }
        let f32s = small_run_losses(false, 80).unwrap();
        let bf16s = small_run_losses(true, 80).unwrap();
        println!("f32  {f32s:.4?}\nbf16 {bf16s:.4?}");
        let mean = |l: &[f64]| l.iter().sum::<f64>() / l.len() as f64;
        let (first, last) = (mean(&f32s[..10]), mean(&f32s[70..]));
        assert!(last < 0.7 * first, "f32 did not learn: {first} -> {last}");
        let bf16_last = mean(&bf16s[70..]);
        assert!(
            (bf16_last - last).abs() < 0.02 * last,
            "bf16 ends at {bf16_last}, f32 at {last}"
        );
        for (step, (a, b)) in f32s.iter().zip(&bf16s).enumerate() {
            assert!((a - b).abs() < 0.05 * a, "step {step}: f32 {a}, bf16 {b}");
        }
    }

    #[test]
    fn bf16_on_a_cpu_without_it_says_what_to_do() {
        if Precision::Bf16.available() {
            skipped(
                "bf16_on_a_cpu_without_it_says_what_to_do",
                "this CPU has AVX-512 BF16",
            );
            return;
        }
        let err = small_run_losses(true, 1).unwrap_err().to_string();
        assert!(
            err.contains("AVX-512 BF16") && err.contains("HINT: set bf16 = false"),
            "{err}"
        );
    }
}
