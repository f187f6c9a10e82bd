//! `aviary bench`: the reference model's training and sampling speed, printed as JSON lines of
//! the same shape as `shared/bench/torch_charlstm.py`, so both can be compared in one run.

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::generate::{sample_token, SampleConfig, SampleScratch};
use crate::model::{thread_groups, ModelConfig, Precision, StepState, StepWeights, Vocab, EOT};
use crate::train::{describe_cpu, describe_device, Learner, TrainConfig};
use crate::{Error, Result};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchRequest {
    /// Timed training steps (after 3 warm-up steps).
    pub steps: usize,
    /// Characters sampled per stream.
    pub gen_chars: usize,
    /// Characters of the corpus read.
    pub limit: usize,
    /// Stream counts to sample with.
    pub streams: Vec<usize>,
    /// LSTM units.
    pub hidden: usize,
    /// `cpu`, `cuda`, ...
    pub device: Option<String>,
    /// TF32 tensor cores for f32 products on CUDA (`[train] tf32`).
    pub tf32: bool,
    /// bf16 operands for training's products on the CPU (`[train] bf16`).
    pub bf16: bool,
}

impl Default for BenchRequest {
    fn default() -> Self {
        BenchRequest {
            steps: 40,
            gen_chars: 280,
            limit: 4_000_000,
            streams: vec![1, 64],
            hidden: 512,
            device: None,
            tf32: false,
            bf16: false,
        }
    }
}

/// Runs the benchmark on `corpus` (any text) and returns one JSON object per measurement.
pub fn run(corpus: &Path, req: &BenchRequest, mut report: impl FnMut(&Value)) -> Result<()> {
    let device = super::pick_device(req.device.as_deref(), req.tf32)?;
    let mut text = String::new();
    std::fs::File::open(corpus)
        .and_then(|f| f.take(req.limit as u64 * 4).read_to_string(&mut text))
        .map_err(|e| Error::io(corpus, e))?;
    let text: String = text.chars().take(req.limit).collect();
    let mut chars: Vec<char> = text.chars().filter(|c| !c.is_control()).collect();
    chars.sort_unstable();
    chars.dedup();
    let vocab = Vocab::from_chars(chars);
    let data: Vec<u32> = text
        .chars()
        .map(|c| if c == '\n' { EOT } else { vocab.id(c) })
        .collect();

    let model_config = ModelConfig {
        rnn_size: req.hidden,
        ..ModelConfig::default()
    };
    let train = TrainConfig {
        bf16: req.bf16,
        ..TrainConfig::default()
    };
    // The reference script's batch shape, whatever aviary's defaults are, so that the two
    // measure the same work.
    let (b, t) = (128, 32);
    let cols = (data.len() - 1) / (b * t) * t;
    if cols == 0 {
        return Err(Error::corpus(
            corpus,
            "too small for one batch of 128 x 32 characters",
            "pass a larger --corpus",
        ));
    }
    // Like the reference script: the text as `b` rows, windows taken left to right.
    let batch_at = |k: usize| -> Result<(Tensor, Tensor)> {
        let off = (k * t) % cols;
        let mut x = vec![0u32; t * b];
        let mut y = vec![0u32; t * b];
        for r in 0..b {
            for s in 0..t {
                x[s * b + r] = data[r * cols + off + s];
                y[s * b + r] = data[r * cols + off + s + 1];
            }
        }
        Ok((
            Tensor::from_vec(x, (t, b), &device)?,
            Tensor::from_vec(y, (t, b), &device)?,
        ))
    };
    let weights = model_config.init_weights(vocab.len(), 0, &device)?;
    let mut learner = Learner::new(&weights, &model_config, vocab.len(), &train, &device)?;
    for k in 0..3 {
        let (x, y) = batch_at(k)?;
        learner.step(&x, &y, k as u64, train.clip_norm)?;
    }
    let start = Instant::now();
    let mut loss = 0.0;
    for k in 0..req.steps {
        let (x, y) = batch_at(3 + k)?;
        loss = learner.step(&x, &y, k as u64, train.clip_norm)?;
    }
    let dt = start.elapsed().as_secs_f64();
    let framework = format!("aviary {} (candle 0.11)", env!("CARGO_PKG_VERSION"));
    // Figures differ between CPUs (AVX-512 or not): each line names the one it ran on.
    let named = |d: &Device| match d {
        Device::Cpu => format!("{} ({})", describe_device(d), describe_cpu()),
        _ => describe_device(d),
    };
    // Training's products in bf16 say so (sampling is f32 whatever the setting).
    let trained_on = match learner.model.precision {
        Precision::Bf16 => format!("{}, bf16 products", named(&device)),
        Precision::F32 => named(&device),
    };
    let threads = candle_core::utils::get_num_threads();
    report(&json!({
        "what": "train", "framework": framework, "device": trained_on, "threads": threads,
        "steps": req.steps, "chars_per_s": (req.steps * b * t) as f64 / dt, "final_loss": loss,
    }));

    // Where a step's time goes: a few more steps with the device synchronised at the end of
    // each phase (which costs the overlap of the phases, so these add up to a bit more).
    let phase_steps = req.steps.clamp(1, 20);
    let mut phases: Vec<(&'static str, f64)> = Vec::new();
    for k in 0..phase_steps {
        let (x, y) = batch_at(3 + req.steps + k)?;
        device.synchronize()?;
        let mut last = Instant::now();
        let mut mark = |phase: &'static str| -> Result<()> {
            device.synchronize()?;
            let ms = last.elapsed().as_secs_f64() * 1e3 / phase_steps as f64;
            match phases.iter_mut().find(|(p, _)| *p == phase) {
                Some((_, total)) => *total += ms,
                None => phases.push((phase, ms)),
            }
            last = Instant::now();
            Ok(())
        };
        learner.step_marked(&x, &y, (req.steps + k) as u64, train.clip_norm, &mut mark)?;
    }
    let mut line = json!({
        "what": "train-phases", "framework": framework, "device": trained_on,
        "threads": threads, "steps": phase_steps,
    });
    for (phase, ms) in &phases {
        line[format!("{phase}_ms")] = json!(ms);
    }
    report(&line);

    let step_weights = StepWeights::from_model(&learner.model)?;
    let sample = SampleConfig::default();
    let v = vocab.len();
    // `gen_chars` characters for each of a group's streams, stepped in `state`.
    let sample_group = |mut state: StepState, rng: &mut ChaCha8Rng| {
        let mut tokens = vec![0u32; state.streams()];
        let mut scratch = SampleScratch::default();
        for _ in 0..req.gen_chars {
            step_weights.step(&mut state, &tokens);
            for (s, tok) in tokens.iter_mut().enumerate() {
                *tok = sample_token(
                    &state.logits[s * v..(s + 1) * v],
                    &sample,
                    rng,
                    &mut scratch,
                );
            }
        }
    };
    for &streams in &req.streams {
        // As `generate` runs a pool: one stream on a worker of the thread pool, each product
        // split over the threads; several streams in one group per thread.
        let start = Instant::now();
        if streams == 1 {
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            rayon::scope(|_| sample_group(step_weights.state(1), &mut rng));
        } else {
            thread_groups(streams)
                .into_par_iter()
                .enumerate()
                .for_each(|(g, group)| {
                    let mut rng = ChaCha8Rng::seed_from_u64(g as u64);
                    sample_group(step_weights.thread_state(group.len()), &mut rng)
                });
        }
        let dt = start.elapsed().as_secs_f64();
        // Sampling runs on the CPU in every build (see `StepWeights`).
        report(&json!({
            "what": "generate", "framework": framework, "device": named(&Device::Cpu), "threads": threads,
            "streams": streams, "chars_per_s": (streams * req.gen_chars) as f64 / dt,
        }));
    }
    Ok(())
}
