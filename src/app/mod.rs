//! The use cases both faces call: manage bots and import their tweets, train a model on a
//! corpus or a bot's tweets, generate candidates from a checkpoint, benchmark the engine.
//! The only module that combines the parts.

pub mod bench;
pub mod bots;
pub mod config;
pub mod home;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;

use candle_core::Device;

/// What the faces see of a training run.
pub use crate::train::{StopReason, TrainEvent};
pub use bots::{BotDetails, BotTweets, ImportRequest};
pub use config::Config;
pub use home::Home;

use crate::corpus::PlainTextFiles;
use crate::generate::{self, SampleConfig};
use crate::model::{Checkpoint, StepWeights};
use crate::store::RunEnd;
use crate::train::{TrainConfig, Trainer, TweetSource};
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

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
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

/// A request to train a model.
#[derive(Clone, Debug)]
pub struct TrainRequest {
    /// The tweets.
    pub data: TrainData,
    /// Where checkpoints go; a bot's default is `HOME/bots/NAME/model`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Continue the run saved in `checkpoint_dir`.
    pub restore: bool,
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
    /// Validation history: (step, training loss, validation loss).
    pub history: Vec<(u64, f64, f64)>,
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
    let device = pick_device(req.device.as_deref())?;
    match &req.data {
        TrainData::Files(paths) => {
            let dir = req.checkpoint_dir.clone().ok_or_else(|| {
                Error::invalid("no checkpoint directory given", "pass --checkpoint-dir DIR")
            })?;
            let source = Corpus(PlainTextFiles::open(paths)?);
            run_trainer(config, req, &source, dir, device, events, cancel)
        }
        TrainData::Bot { home, name } => {
            let mut source = BotTweets::open(home.open_store()?, name)?;
            let bot = source.bot().clone();
            let dir = req
                .checkpoint_dir
                .clone()
                .unwrap_or_else(|| home.bot_dir(name).join("model"));
            let mut settings = config.clone();
            req.overrides.apply(&mut settings);
            let hyper = serde_json::json!({"model": settings.model, "train": settings.train, "restore": req.restore});
            let dir_text = dir.display().to_string();
            let run = source
                .store_mut()
                .write(|w| w.start_run(Some(bot.id), "train", &hyper.to_string(), &dir_text))?;
            let result = run_trainer(config, req, &source, dir.clone(), device, events, cancel);
            let saved = dir.join(crate::model::checkpoint::CARD_FILE).exists();
            let end = match &result {
                Ok(o) => RunEnd {
                    status: match o.reason {
                        StopReason::Cancelled | StopReason::MaxSteps => "stopped",
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
                if saved {
                    w.set_active_checkpoint(bot.id, &dir_text)?;
                }
                Ok(())
            })?;
            result
        }
    }
}

fn run_trainer(
    config: &Config,
    req: &TrainRequest,
    source: &dyn TweetSource,
    dir: PathBuf,
    device: Device,
    events: &Sender<TrainEvent>,
    cancel: &AtomicBool,
) -> Result<TrainOutcome> {
    let mut trainer = if req.restore {
        Trainer::resume(source, &dir, |t| req.overrides.apply_on_resume(t), device)?
    } else {
        refuse_overwrite(&dir)?;
        let mut config = config.clone();
        req.overrides.apply(&mut config);
        Trainer::new(source, &dir, config.model, config.train, device)?
    };
    let reason = trainer.run(events, cancel)?;
    Ok(TrainOutcome {
        reason,
        checkpoint_dir: dir,
        steps: trainer.progress().step,
        best_val_loss: trainer.progress().best_val_loss,
        history: trainer.history().to_vec(),
    })
}

/// A fresh run must not silently replace a checkpoint that is already there.
fn refuse_overwrite(dir: &Path) -> Result<()> {
    if dir.join(crate::model::checkpoint::CARD_FILE).exists() {
        return Err(Error::invalid(
            format!("{} already holds a checkpoint", dir.display()),
            "pass --restore to continue it, or choose another --checkpoint-dir",
        ));
    }
    Ok(())
}

/// The base model built into the binary (`checkpoints/base/`): what aviary runs on when no
/// checkpoint is named.
pub fn base_checkpoint(device: &Device) -> Result<Checkpoint> {
    const CARD: &str = include_str!("../../checkpoints/base/card.json");
    const WEIGHTS: &[u8] = include_bytes!("../../checkpoints/base/model.safetensors");
    Checkpoint::from_bytes(Path::new("<built-in base model>"), CARD, WEIGHTS, device)
}

/// A request for candidate tweets.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Checkpoint directory; `None`: the built-in base model.
    pub checkpoint: Option<PathBuf>,
    /// How many candidates.
    pub n: usize,
    /// Temperature, over the config's.
    pub temperature: Option<f64>,
    /// Top-k, over the config's.
    pub top_k: Option<usize>,
    /// Top-p, over the config's.
    pub top_p: Option<f64>,
    /// Every candidate starts with this.
    pub prime: String,
    /// Seed (a random one when `None`).
    pub seed: Option<u64>,
}

/// Candidates from a checkpoint, and the seed used; sampling settings from `config`'s
/// `[generate]` with the request's overrides.
pub fn generate(config: &Config, req: &GenerateRequest) -> Result<(Vec<String>, u64)> {
    let mut sample: SampleConfig = config.generate.clone();
    set(&mut sample.temperature, req.temperature);
    set(&mut sample.top_k, req.top_k);
    set(&mut sample.top_p, req.top_p);
    let ck = match &req.checkpoint {
        Some(dir) => Checkpoint::load(dir, &Device::Cpu)?,
        None => base_checkpoint(&Device::Cpu)?,
    };
    let model = ck.model(&Device::Cpu)?;
    let weights = StepWeights::from_model(&model)?;
    let seed = req.seed.unwrap_or_else(rand::random);
    let texts = generate::generate(&weights, &ck.card.vocab, &sample, &req.prime, req.n, seed)?;
    Ok((texts, seed))
}

/// The device `spec` names (`cpu`, `cuda`, `cuda:N`), or the best available: CUDA when this
/// build has it and a GPU answers, else the CPU.
pub fn pick_device(spec: Option<&str>) -> Result<Device> {
    match spec {
        None => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        Some("cpu") => Ok(Device::Cpu),
        Some(s) if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .unwrap_or("0")
                .parse::<usize>()
                .map_err(|_| {
                    Error::invalid(format!("bad device `{s}`"), "use cpu, cuda or cuda:N")
                })?;
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::invalid(
                    "this aviary was built without CUDA",
                    "build with `cargo build --release --features cuda` (see README), or use --device cpu",
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| {
                Error::invalid(
                    format!("cannot open CUDA device {ordinal}: {e}"),
                    "check nvidia-smi, or use --device cpu",
                )
            })
        }
        Some(s) => Err(Error::invalid(
            format!("unknown device `{s}`"),
            "use cpu, cuda or cuda:N",
        )),
    }
}
