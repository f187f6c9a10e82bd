//! The use cases both faces call: manage bots and import their tweets, fine-tune and evaluate
//! their models, generate and review candidates, queue and post them (the scheduler and its
//! service), search hyperparameters, benchmark the engine; a [`Session`] holds what one
//! process works in, and `jobs` runs the long use cases on threads of their own. The only module that combines the parts, and all the faces see:
//! what they need of the parts is re-exported here.

pub mod bench;
pub mod bots;
pub mod candidates;
pub mod config;
pub mod fetch;
pub mod home;
pub mod hyper_search;
pub mod jobs;
pub mod overview;
pub mod posting;
pub mod service;
pub mod session;
pub mod training;

use std::path::{Path, PathBuf};

use candle_core::Device;

/// The formats `import` reads.
pub use crate::corpus::Format as ImportFormat;
pub use crate::generate::QualityReport;
/// The store's rows, as the faces see them through the use cases here.
pub use crate::store::{CandidateRow, QueueRow, QueueStatus};
/// What the faces see of a training run.
pub use crate::train::{SplitRule, StopReason, TrainEvent};
pub use bots::{BotDetails, BotTweets, ImportRequest};
pub use config::Config;
pub use home::Home;
pub use session::Session;
pub use training::{eval, train, EvalRow, TrainData, TrainOutcome, TrainOverrides, TrainRequest};

use crate::generate::{self, SampleConfig};
use crate::model::{Checkpoint, StepWeights};
use crate::{Error, Result};

/// X's weighted length of a tweet (emoji and CJK count 2, links 23), as the editor counts it.
pub fn tweet_length(text: &str) -> usize {
    crate::tweet_len::weighted_len(text)
}

/// The longest tweet X takes, by weighted length.
pub const MAX_TWEET_LENGTH: usize = crate::tweet_len::MAX_WEIGHTED;

/// Overwrites `slot` when `value` is given.
fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
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

impl GenerateRequest {
    /// The config's `[generate]` with this request's overrides.
    fn sample_config(&self, config: &Config) -> SampleConfig {
        let mut sample = config.generate.clone();
        set(&mut sample.temperature, self.temperature);
        set(&mut sample.top_k, self.top_k);
        set(&mut sample.top_p, self.top_p);
        sample
    }
}

/// Candidates from a checkpoint, and the seed used; sampling settings from `config`'s
/// `[generate]` with the request's overrides.
pub fn generate(config: &Config, req: &GenerateRequest) -> Result<(Vec<String>, u64)> {
    let sample = req.sample_config(config);
    let ck = match &req.checkpoint {
        Some(dir) => Checkpoint::load(dir, &Device::Cpu)?,
        None => base_checkpoint(&Device::Cpu)?,
    };
    let model = ck.model(&Device::Cpu)?;
    let weights = StepWeights::from_model(&model)?;
    let seed = req.seed.unwrap_or_else(rand::random);
    let samples = generate::generate(&weights, &ck.card.vocab, &sample, &req.prime, req.n, seed)?;
    Ok((samples.into_iter().map(|s| s.text).collect(), seed))
}

/// The device `spec` names (`cpu`, `cuda`, `cuda:N`), or the best available: CUDA when this
/// build has it and a GPU answers, else the CPU.
pub fn pick_device(spec: Option<&str>, tf32: bool) -> Result<Device> {
    // `[train] tf32`: f32 matmuls on CUDA may use TF32 tensor cores (about three decimal
    // digits per product; cuDNN's default math allows them on Ampere and newer).
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(tf32);
    #[cfg(not(feature = "cuda"))]
    let _ = tf32;
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
                    "build with `cargo build --release --features cuda` (see docs/gpu.md), or use --device cpu",
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
