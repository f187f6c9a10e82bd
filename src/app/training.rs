//! Training use cases: train a model on text files or a bot's tweets, fine-tune a bot from
//! the base model, evaluate a bot against the base model and a model trained from scratch.
//! Runs are recorded in the store when a bot is involved.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;

use candle_core::Device;

use super::bots::BotTweets;
use super::{pick_device, set, Config, Home};
use crate::corpus::PlainTextFiles;
use crate::model::{Checkpoint, StepWeights};
use crate::store::RunEnd;
use crate::train::{SplitRule, StopReason, TrainConfig, TrainEvent, Trainer, TweetSource};
use crate::{Error, Result};

/// Settings given on the command line (or by the TUI) that override the config file. On
/// resume only the learning rate, epochs and step limit apply; the rest comes from the
/// checkpoint.
#[derive(Clone, Debug, Default)]
pub struct TrainOverrides {
    /// Rows per batch.
    pub batch_size: Option<usize>,
    /// Characters per row.
    pub seq_len: Option<usize>,
    /// LSTM units per layer.
    pub rnn_size: Option<usize>,
    /// LSTM layers.
    pub num_layers: Option<usize>,
    /// Embedding size.
    pub embedding_size: Option<usize>,
    /// Dropout rate.
    pub drop_rate: Option<f32>,
    /// Learning rate.
    pub learning_rate: Option<f64>,
    /// Gradient clipping norm.
    pub clip_norm: Option<f64>,
    /// Epochs.
    pub num_epochs: Option<u64>,
    /// Step limit.
    pub max_steps: Option<u64>,
    /// Time limit, seconds of training in all.
    pub max_seconds: Option<f64>,
    /// Validation interval in steps.
    pub val_every: Option<u64>,
    /// Early-stopping patience.
    pub patience: Option<u32>,
    /// Seed.
    pub seed: Option<u64>,
}

impl TrainOverrides {
    fn apply(&self, config: &mut Config) {
        let (m, t) = (&mut config.model, &mut config.train);
        set(&mut m.rnn_size, self.rnn_size);
        set(&mut m.num_layers, self.num_layers);
        set(&mut m.embedding_size, self.embedding_size);
        set(&mut m.drop_rate, self.drop_rate);
        set(&mut t.batch_size, self.batch_size);
        set(&mut t.seq_len, self.seq_len);
        set(&mut t.clip_norm, self.clip_norm);
        set(&mut t.seed, self.seed);
        self.apply_on_resume(t);
    }

    fn apply_on_resume(&self, t: &mut TrainConfig) {
        set(&mut t.learning_rate, self.learning_rate);
        set(&mut t.num_epochs, self.num_epochs);
        set(&mut t.max_steps, self.max_steps);
        set(&mut t.max_seconds, self.max_seconds);
        set(&mut t.val_every, self.val_every);
        set(&mut t.patience, self.patience);
    }

    /// Names of the overrides a resume ignores because the checkpoint fixes them.
    pub fn ignored_on_resume(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let given = [
            ("--batch-size", self.batch_size.is_some()),
            ("--seq-len", self.seq_len.is_some()),
            ("--rnn-size", self.rnn_size.is_some()),
            ("--num-layers", self.num_layers.is_some()),
            ("--embedding-size", self.embedding_size.is_some()),
            ("--drop-rate", self.drop_rate.is_some()),
            ("--clip-norm", self.clip_norm.is_some()),
            ("--seed", self.seed.is_some()),
        ];
        for (name, is) in given {
            if is {
                v.push(name);
            }
        }
        v
    }
}

/// What to train on.
#[derive(Clone, Debug)]
pub enum TrainData {
    /// Plain-text corpus files, one tweet per line.
    Files(Vec<PathBuf>),
    /// A bot's kept tweets, from the store in `home`.
    Bot {
        /// The aviary home holding the store.
        home: Home,
        /// The bot's name.
        name: String,
    },
}

impl Default for TrainData {
    fn default() -> Self {
        TrainData::Files(Vec::new())
    }
}

/// Where a new run's weights come from.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Init {
    /// Fresh random weights; the vocabulary from the corpus.
    #[default]
    Scratch,
    /// A trained model's weights and vocabulary, from this checkpoint directory, or (`None`)
    /// the bot's base checkpoint, else the built-in base model. Fine-tuning a bot this way
    /// takes the config's `[finetune]` settings over the matching `[train]` ones; training on
    /// files this way continues a (base) model with fresh optimizer state.
    Pretrained(Option<PathBuf>),
}

/// A request to train a model.
#[derive(Clone, Debug, Default)]
pub struct TrainRequest {
    /// The tweets.
    pub data: TrainData,
    /// Where the weights start.
    pub init: Init,
    /// Where checkpoints go; a bot's default is `HOME/bots/NAME/model`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue the run saved in `checkpoint_dir`.
    pub restore: bool,
    /// Start afresh even though `checkpoint_dir` holds a checkpoint (which is deleted).
    pub replace: bool,
    /// A trial of a hyperparameter search: recorded as such, and a bot's model stays as it is.
    pub trial: bool,
    /// Flags over the config.
    pub overrides: TrainOverrides,
    /// `cpu`, `cuda`, `cuda:N`, or `None` for the best available.
    pub device: Option<String>,
}

struct Corpus(PlainTextFiles);

impl TweetSource for Corpus {
    fn tweets(&self) -> Result<Box<dyn Iterator<Item = Result<String>> + '_>> {
        Ok(Box::new(self.0.tweets()))
    }

    fn describe(&self) -> String {
        let names: Vec<String> = self
            .0
            .paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        names.join(", ")
    }
}

/// How a training run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// The checkpoint directory.
    pub checkpoint_dir: PathBuf,
    /// Steps done in all.
    pub steps: u64,
    /// Best validation loss, nats/char.
    pub best_val_loss: Option<f64>,
    /// The validation loss of the last weights (also when the run ended before its first
    /// validation point), nats/char.
    pub last_val_loss: Option<f64>,
    /// Validation history: (step, training loss, validation loss).
    pub history: Vec<(u64, f64, f64)>,
    /// Seconds of training in all.
    pub train_seconds: f64,
    /// Steps in one epoch.
    pub steps_per_epoch: u64,
}

/// Trains (or resumes) a model as `req` says, sending progress to `events`; `cancel` stops
/// it cleanly with the state saved. Training on a bot records the run in the store and makes
/// its best checkpoint the bot's active one.
pub fn train(
    config: &Config,
    req: &TrainRequest,
    events: &Sender<TrainEvent>,
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    let device = pick_device(req.device.as_deref(), config.train.tf32)?;
    match &req.data {
        TrainData::Files(paths) => {
            let dir = req.checkpoint_dir.clone().ok_or_else(|| {
                Error::invalid("no checkpoint directory given", "pass --checkpoint-dir DIR")
            })?;
            let source = Corpus(PlainTextFiles::open(paths)?);
            let (pretrained, _) = starting_checkpoint(req, None, &device)?;
            run_trainer(
                config,
                req,
                &source,
                pretrained.as_ref(),
                dir,
                device,
                events,
                cancel,
            )
        }
        TrainData::Bot { home, name } => {
            let mut source = BotTweets::open(home.open_store()?, name)?;
            let bot = source.bot().clone();
            let dir = req
                .checkpoint_dir
                .clone()
                .unwrap_or_else(|| home.bot_dir(name).join("model"));
            let settings = settings_for(config, req);
            let hyper = serde_json::json!({"model": settings.model, "train": settings.train, "restore": req.restore});
            let dir_text = dir.display().to_string();
            let kind = match (&req.init, req.trial) {
                (_, true) => "search",
                (Init::Scratch, _) => "train",
                (Init::Pretrained(_), _) => "finetune",
            };
            // `--from` names the bot's base from now on; else the base it already has.
            let (pretrained, from) =
                starting_checkpoint(req, bot.base_checkpoint.as_deref(), &device)?;
            let run = source.store_mut().write(|w| {
                if pretrained.is_some() && !req.trial {
                    w.set_base_checkpoint(bot.id, from.as_deref())?;
                }
                w.start_run(Some(bot.id), kind, &hyper.to_string(), &dir_text)
            })?;
            let result = run_trainer(
                config,
                req,
                &source,
                pretrained.as_ref(),
                dir.clone(),
                device,
                events,
                cancel,
            );
            let saved = dir.join(crate::model::checkpoint::CARD_FILE).exists();
            let end = match &result {
                Ok(o) => RunEnd {
                    status: match o.reason {
                        StopReason::Cancelled | StopReason::MaxSteps | StopReason::TimeLimit => {
                            "stopped"
                        }
                        StopReason::Completed | StopReason::EarlyStopped => "finished",
                    }
                    .into(),
                    steps: o.steps,
                    best_val_loss: o.best_val_loss,
                    losses: Some(serde_json::to_string(&o.history).expect("numbers serialise")),
                    error: None,
                },
                Err(e) => RunEnd {
                    status: "failed".into(),
                    error: Some(e.to_string()),
                    ..RunEnd::default()
                },
            };
            source.store_mut().write(|w| {
                w.finish_run(run, &end)?;
                if saved && !req.trial {
                    w.set_active_checkpoint(bot.id, &dir_text)?;
                }
                Ok(())
            })?;
            result
        }
    }
}

/// The config a new run of `req` trains with: `[train]`, then `[finetune]` when fine-tuning
/// a bot, then the request's overrides.
fn settings_for(config: &Config, req: &TrainRequest) -> Config {
    let mut settings = config.clone();
    if let (Init::Pretrained(_), TrainData::Bot { .. }) = (&req.init, &req.data) {
        config.finetune.apply(&mut settings);
    }
    req.overrides.apply(&mut settings);
    settings
}

/// The checkpoint a new run of `req` starts from (`None`: from scratch, or resuming), and
/// its directory: `--from`, else `fallback`, else the built-in base model (`None`).
fn starting_checkpoint(
    req: &TrainRequest,
    fallback: Option<&str>,
    device: &Device,
) -> Result<(Option<Checkpoint>, Option<String>)> {
    let Init::Pretrained(from) = &req.init else {
        return Ok((None, None));
    };
    let from = match from {
        Some(dir) => Some(dir.display().to_string()),
        None => fallback.map(str::to_string),
    };
    if req.restore {
        return Ok((None, from));
    }
    let ck = load_pretrained(from.as_deref().map(Path::new), device)?;
    Ok((Some(ck), from))
}

/// The checkpoint in `dir`, or the built-in base model.
fn load_pretrained(dir: Option<&Path>, device: &Device) -> Result<Checkpoint> {
    match dir {
        Some(d) => Checkpoint::load(d, device),
        None => super::base_checkpoint(device),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_trainer(
    config: &Config,
    req: &TrainRequest,
    source: &dyn TweetSource,
    pretrained: Option<&Checkpoint>,
    dir: PathBuf,
    device: Device,
    events: &Sender<TrainEvent>,
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    let mut trainer = if req.restore {
        // bf16 is how this machine runs the products, not part of the run: the config of now
        // says, as it does for tf32.
        let adjust = |t: &mut TrainConfig| {
            req.overrides.apply_on_resume(t);
            t.bf16 = config.train.bf16;
        };
        Trainer::resume(source, &dir, adjust, device)?
    } else {
        if req.replace {
            clear_checkpoint(&dir)?;
        }
        refuse_overwrite(&dir)?;
        let settings = settings_for(config, req);
        match pretrained {
            Some(ck) => Trainer::from_pretrained(
                source,
                &dir,
                ck,
                Some(settings.model.drop_rate),
                settings.train,
                device,
            )?,
            None => Trainer::new(source, &dir, settings.model, settings.train, device)?,
        }
    };
    let reason = trainer.run(events, cancel)?;
    Ok(TrainOutcome {
        reason,
        checkpoint_dir: dir,
        steps: trainer.progress().step,
        best_val_loss: trainer.progress().best_val_loss,
        last_val_loss: trainer.progress().last_val_loss,
        history: trainer.history().to_vec(),
        train_seconds: trainer.progress().train_seconds,
        steps_per_epoch: trainer.steps_per_epoch(),
    })
}

/// A fresh run must not silently replace a checkpoint that is already there.
fn refuse_overwrite(dir: &Path) -> Result<()> {
    if dir.join(crate::model::checkpoint::CARD_FILE).exists() {
        return Err(Error::invalid(
            format!("{} already holds a checkpoint", dir.display()),
            "pass --restore to continue it, --replace to start over, or choose another --checkpoint-dir",
        ));
    }
    Ok(())
}

/// Deletes the checkpoint files in `dir` (and nothing else there).
fn clear_checkpoint(dir: &Path) -> Result<()> {
    use crate::model::checkpoint::{CARD_FILE, WEIGHTS_FILE};
    for f in [CARD_FILE, WEIGHTS_FILE, crate::train::STATE_FILE] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// One model's line in an evaluation table.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRow {
    /// Which model: the bot's name, `base` or `scratch`.
    pub model: String,
    /// Where it is.
    pub checkpoint: String,
    /// Mean loss on the held-out tweets in windows of `[train] seq_len` characters, each
    /// read from a zero state (the figure training has always reported), nats/char.
    pub val_loss: f64,
    /// Characters evaluated on in windows.
    pub chars: u64,
    /// Characters per window.
    pub window: usize,
    /// Mean loss on the held-out tweets, each read from its start as generation runs
    /// (characters and the end of each tweet), nats/char.
    pub per_tweet: f64,
    /// Its vocabulary size.
    pub vocab: usize,
    /// Seconds it trained on the bot's tweets (0 for the base model).
    pub train_seconds: f64,
}

/// The training record in a checkpoint's card, if it has one.
fn training_record(ck: &Checkpoint) -> Result<Option<crate::train::TrainingRecord>> {
    ck.card
        .training
        .as_ref()
        .map(|v| {
            serde_json::from_value(v.clone()).map_err(|e| {
                Error::checkpoint(
                    ck.dir.join(crate::model::checkpoint::CARD_FILE),
                    format!("training record unreadable ({e})"),
                    "fine-tune the bot again with --replace",
                )
            })
        })
        .transpose()
}

/// Evaluates bot `name`'s model and the base model on the bot's held-out tweets (the split
/// its model was trained with); with `scratch`, also a model trained from scratch on the same
/// tweets for as long as the bot's training took (progress goes to `events`).
pub fn eval(
    config: &Config,
    home: &Home,
    name: &str,
    scratch: bool,
    device: Option<&str>,
    events: &Sender<TrainEvent>,
    cancel: &AtomicBool,
) -> Result<Vec<EvalRow>> {
    let device = pick_device(device, config.train.tf32)?;
    let source = BotTweets::open(home.open_store()?, name)?;
    let bot = source.bot().clone();
    let Some(active) = &bot.active_checkpoint else {
        return Err(Error::invalid(
            format!("bot `{name}` has no model of its own yet"),
            format!("fine-tune it first: `aviary finetune {name}`"),
        ));
    };
    let mine = Checkpoint::load(Path::new(active), &device)?;
    let record = training_record(&mine)?;
    let val_fraction = record
        .as_ref()
        .map_or(config.train.val_fraction, |r| r.config.val_fraction);
    let split = record
        .as_ref()
        .map_or(SplitRule::default(), |r| r.rules.split);
    let row = |label: &str, place: String, ck: &Checkpoint, seconds: f64| -> Result<EvalRow> {
        let held_out = HeldOut {
            source: &source,
            val_fraction,
            split,
            seq_len: EVAL_WINDOW,
        };
        held_out.row(label, place, ck, seconds, &device)
    };
    let seconds = record.as_ref().map_or(0.0, |r| r.progress.train_seconds);
    let mut rows = vec![row(name, active.clone(), &mine, seconds)?];
    let base = load_pretrained(bot.base_checkpoint.as_deref().map(Path::new), &device)?;
    let base_label = bot
        .base_checkpoint
        .clone()
        .unwrap_or("built-in base model".into());
    rows.push(row("base", base_label, &base, 0.0)?);
    if scratch {
        let dir = home.bot_dir(name).join("scratch");
        clear_checkpoint(&dir)?;
        let mut settings = config.clone();
        settings.model = mine.card.model.clone();
        settings.train.val_fraction = val_fraction;
        settings.train.max_seconds = seconds.max(1.0);
        // The same time, not an earlier stop nor an epoch limit.
        settings.train.patience = 0;
        settings.train.num_epochs = 1_000_000;
        settings.train.max_steps = 0;
        let mut trainer = Trainer::new(
            &source,
            &dir,
            settings.model,
            settings.train,
            device.clone(),
        )?;
        trainer.run(events, cancel)?;
        let trained = Checkpoint::load(&dir, &device)?;
        let spent = trainer.progress().train_seconds;
        rows.push(row("scratch", dir.display().to_string(), &trained, spent)?);
    }
    Ok(rows)
}

/// Evaluates the built-in base model and each checkpoint in `checkpoints` on the held-out
/// split of `files` (one tweet per line; the split of `[train] val_fraction`, by `split`,
/// default folded).
pub fn eval_corpus(
    config: &Config,
    files: &[PathBuf],
    checkpoints: &[PathBuf],
    split: Option<SplitRule>,
    device: Option<&str>,
) -> Result<Vec<EvalRow>> {
    let device = pick_device(device, config.train.tf32)?;
    let source = Corpus(PlainTextFiles::open(files)?);
    let mut models = vec![("built-in".to_string(), super::base_checkpoint(&device)?)];
    for dir in checkpoints {
        let name = dir
            .file_name()
            .map_or("checkpoint".into(), |n| n.to_string_lossy().into_owned());
        models.push((name, Checkpoint::load(dir, &device)?));
    }
    let held_out = HeldOut {
        source: &source,
        val_fraction: config.train.val_fraction,
        split: split.unwrap_or_default(),
        seq_len: EVAL_WINDOW,
    };
    models
        .into_iter()
        .map(|(name, ck)| {
            let seconds = training_record(&ck)?.map_or(0.0, |r| r.progress.train_seconds);
            let place = ck.dir.display().to_string();
            held_out.row(&name, place, &ck, seconds, &device)
        })
        .collect()
}

/// Characters per window of `aviary eval`'s per-window figure: the reference recipe's
/// sequence length, which every published figure used (fixed, so figures stay comparable
/// whatever a run trained with).
pub const EVAL_WINDOW: usize = 32;

/// The held-out tweets of a corpus, as `aviary eval` reads them.
struct HeldOut<'a> {
    source: &'a dyn TweetSource,
    val_fraction: f64,
    split: SplitRule,
    seq_len: usize,
}

impl HeldOut<'_> {
    /// `ck`'s line: both figures on these tweets.
    fn row(
        &self,
        label: &str,
        place: String,
        ck: &Checkpoint,
        seconds: f64,
        device: &Device,
    ) -> Result<EvalRow> {
        let model = ck.model(device)?;
        let vocab = &ck.card.vocab;
        let (val_loss, chars) = crate::train::evaluate(
            &model,
            vocab,
            self.source,
            self.val_fraction,
            self.split,
            self.seq_len,
            device,
        )?;
        let weights = StepWeights::from_model(&model)?;
        let (per_tweet, _) = crate::train::evaluate_tweets(
            &weights,
            vocab,
            self.source,
            self.val_fraction,
            self.split,
        )?;
        Ok(EvalRow {
            model: label.to_string(),
            checkpoint: place,
            val_loss,
            chars,
            window: self.seq_len,
            per_tweet,
            vocab: vocab.len(),
            train_seconds: seconds,
        })
    }
}

/// Writes the word list of `files` (words seen at least `min_count` times, most frequent
/// first) to `out`, as `checkpoints/base/words.txt` is made; returns the number of words.
pub fn write_base_words(files: &[PathBuf], min_count: u64, out: &Path) -> Result<usize> {
    let corpus = PlainTextFiles::open(files)?;
    let tweets: Vec<String> = corpus.tweets().collect::<Result<_>>()?;
    let list = crate::generate::words::word_list(tweets.iter().map(String::as_str), min_count);
    std::fs::write(out, &list).map_err(|e| Error::io(out, e))?;
    Ok(list.lines().count())
}
