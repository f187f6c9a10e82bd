//! The character-level LSTM language model: its config, weights, training forward pass and
//! loss, the step-by-step forward used for sampling, and checkpoints.
//!
//! Embedding(V, E) -> dropout -> LSTM x num_layers (fused, see [`fused_lstm`]) -> dropout ->
//! Linear(V). Weight names follow PyTorch's (`lstm.weight_ih_l0`, ...), gate order i, f, g, o.
//! Knows no corpus, bot, database or screen.

pub mod bf16;
pub mod checkpoint;
pub mod cpu_kernels;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod dropout;
pub mod fused_lstm;
pub mod loss;
#[cfg(feature = "cuda")]
pub mod lstm_cuda;
pub mod lstm_plan;
pub mod sampling_step;
pub mod score;
pub mod token_lstm;
pub mod vocab;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

pub use bf16::Precision;
pub use checkpoint::{Card, Checkpoint};
pub use dropout::Dropout;
pub use sampling_step::{thread_groups, StepState, StepWeights};
pub use score::{score_tweets, TweetScore};
pub use vocab::{Vocab, EOT, UNK};

use crate::Result;

/// The shape of the model. Stored in every checkpoint; on resume the shapes come from there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Size of each character's embedding vector.
    pub embedding_size: usize,
    /// Units in each LSTM layer.
    pub rnn_size: usize,
    /// Stacked LSTM layers.
    pub num_layers: usize,
    /// Dropout rate after the embedding and after each LSTM layer (training only).
    pub drop_rate: f32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            embedding_size: 64,
            rnn_size: 512,
            num_layers: 1,
            drop_rate: 0.05,
        }
    }
}

impl ModelConfig {
    /// Every weight's name and shape for a vocabulary of `vocab_size` ids, in a fixed order.
    pub fn weight_shapes(&self, vocab_size: usize) -> Vec<(String, Vec<usize>)> {
        let (e, h) = (self.embedding_size, self.rnn_size);
        let mut shapes = vec![("embedding.weight".to_string(), vec![vocab_size, e])];
        for k in 0..self.num_layers {
            let input = if k == 0 { e } else { h };
            shapes.push((format!("lstm.weight_ih_l{k}"), vec![4 * h, input]));
            shapes.push((format!("lstm.weight_hh_l{k}"), vec![4 * h, h]));
            shapes.push((format!("lstm.bias_ih_l{k}"), vec![4 * h]));
            shapes.push((format!("lstm.bias_hh_l{k}"), vec![4 * h]));
        }
        shapes.push(("out.weight".to_string(), vec![vocab_size, h]));
        shapes.push(("out.bias".to_string(), vec![vocab_size]));
        shapes
    }

    /// Fresh weights, initialised as PyTorch does (embedding N(0, 1); LSTM and output layer
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in))), the same for the same seed.
    pub fn init_weights(
        &self,
        vocab_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut weights = HashMap::new();
        for (name, shape) in self.weight_shapes(vocab_size) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name == "embedding.weight" {
                (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
            } else {
                // Both the LSTM and the output layer have fan-in H.
                let bound = 1.0 / (self.rnn_size as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            weights.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Ok(weights)
    }
}

/// One LSTM layer's weights, PyTorch layout.
struct LstmLayer {
    /// [4H, input]
    w_ih: Tensor,
    /// [4H, H]
    w_hh: Tensor,
    /// [4H]
    b_ih: Tensor,
    /// [4H]
    b_hh: Tensor,
}

/// The model: plain tensors built by [`CharLstm::load`]; `forward` runs it over a batch.
pub struct CharLstm {
    /// The shape it was built with.
    pub config: ModelConfig,
    /// Input and output size.
    pub vocab_size: usize,
    /// [V, E]
    embedding: Tensor,
    layers: Vec<LstmLayer>,
    /// [V, H]
    out_w: Tensor,
    /// [V]
    out_b: Tensor,
    /// How training's products on the CPU treat their operands (`[train] bf16`); sampling
    /// ([`StepWeights`]) is f32 whatever it says.
    pub precision: Precision,
}

impl CharLstm {
    /// Builds the model from `vb`, which must hold every weight of
    /// [`ModelConfig::weight_shapes`] with that shape.
    pub fn load(vb: VarBuilder, config: &ModelConfig, vocab_size: usize) -> Result<Self> {
        let (e, h) = (config.embedding_size, config.rnn_size);
        let mut layers = Vec::with_capacity(config.num_layers);
        let lstm = vb.pp("lstm");
        for k in 0..config.num_layers {
            let input = if k == 0 { e } else { h };
            layers.push(LstmLayer {
                w_ih: lstm.get((4 * h, input), &format!("weight_ih_l{k}"))?,
                w_hh: lstm.get((4 * h, h), &format!("weight_hh_l{k}"))?,
                b_ih: lstm.get(4 * h, &format!("bias_ih_l{k}"))?,
                b_hh: lstm.get(4 * h, &format!("bias_hh_l{k}"))?,
            });
        }
        Ok(CharLstm {
            config: config.clone(),
            vocab_size,
            embedding: vb.get((vocab_size, e), "embedding.weight")?,
            layers,
            out_w: vb.get((vocab_size, h), "out.weight")?,
            out_b: vb.get(vocab_size, "out.bias")?,
            precision: Precision::F32,
        })
    }

    /// The model over weights held in a map (a checkpoint, or fresh ones).
    pub fn from_weights(
        weights: &HashMap<String, Tensor>,
        config: &ModelConfig,
        vocab_size: usize,
        device: &Device,
    ) -> Result<Self> {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, device);
        CharLstm::load(vb, config, vocab_size)
    }

    /// Logits [T * B, V] (time-major rows) for token ids [T, B]. With `dropout`, training
    /// mode; without, evaluation.
    pub fn forward(&self, ids: &Tensor, mut dropout: Option<&mut Dropout>) -> Result<Tensor> {
        let x = self.top_layer(ids, dropout.as_deref_mut())?;
        let x = dropped(&mut dropout, x)?;
        Ok(x.matmul(&self.out_w.t()?)?.broadcast_add(&self.out_b)?)
    }

    /// The last LSTM layer's output [T * B, H] before its dropout, which the output layer
    /// turns into logits.
    fn top_layer(&self, ids: &Tensor, mut dropout: Option<&mut Dropout>) -> Result<Tensor> {
        let (steps, batch) = ids.dims2()?;
        let h = self.config.rnn_size;
        // The output of the layer below, [TB, H]; none before the first layer.
        let mut below: Option<Tensor> = None;
        for (k, layer) in self.layers.iter().enumerate() {
            // Biases as an extra input column of ones: [TB, in + 1] and [4H, in + 1].
            let bias = layer.b_ih.add(&layer.b_hh)?.unsqueeze(1)?;
            let w_in = Tensor::cat(&[&layer.w_ih, &bias], 1)?;
            let hs = if k == 0 && token_lstm::runs_on(&self.embedding) {
                // On the CPU the first layer reads its input gates per character.
                let input = token_lstm::Input {
                    ids: ids.flatten_all()?.to_vec1::<u32>()?,
                    steps,
                    batch,
                    mask: dropout.as_deref_mut().and_then(Dropout::next_mask),
                    precision: self.precision,
                };
                token_lstm::first_layer(input, &self.embedding, &w_in, &layer.w_hh)?
            } else {
                let x = match below.take() {
                    Some(x) => x,
                    None => {
                        let embedded = self.embedding.index_select(&ids.flatten_all()?, 0)?;
                        dropped(&mut dropout, embedded)?
                    }
                };
                let ones = Tensor::ones((steps * batch, 1), x.dtype(), x.device())?;
                let x_aug = Tensor::cat(&[&x, &ones], 1)?.reshape((steps, batch, ()))?;
                fused_lstm::lstm_sequence_at(&x_aug, &w_in, &layer.w_hh, self.precision)?
                // [T, B, H]
            };
            let hs = hs.reshape((steps * batch, h))?;
            below = Some(if k + 1 < self.layers.len() {
                dropped(&mut dropout, hs)?
            } else {
                hs
            });
        }
        Ok(below.expect("a model has at least one layer"))
    }

    /// Mean cross-entropy in nats per character of predicting `targets` [T, B] from `ids`
    /// [T, B].
    pub fn loss(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let mut dropout = dropout;
        let x = self.top_layer(ids, dropout.as_deref_mut())?;
        let mask = dropout.and_then(Dropout::next_mask);
        let targets = targets.flatten_all()?;
        Ok(loss::output_cross_entropy(
            &x,
            mask,
            &self.out_w,
            &self.out_b,
            &targets,
            self.precision,
        )?)
    }

    /// The weights, by name (shares storage with the model).
    pub fn weights(&self) -> HashMap<String, Tensor> {
        let mut w = HashMap::new();
        w.insert("embedding.weight".to_string(), self.embedding.clone());
        for (k, l) in self.layers.iter().enumerate() {
            w.insert(format!("lstm.weight_ih_l{k}"), l.w_ih.clone());
            w.insert(format!("lstm.weight_hh_l{k}"), l.w_hh.clone());
            w.insert(format!("lstm.bias_ih_l{k}"), l.b_ih.clone());
            w.insert(format!("lstm.bias_hh_l{k}"), l.b_hh.clone());
        }
        w.insert("out.weight".to_string(), self.out_w.clone());
        w.insert("out.bias".to_string(), self.out_b.clone());
        w
    }
}

/// `x` through `dropout` when training, as it is otherwise.
fn dropped(dropout: &mut Option<&mut Dropout>, x: Tensor) -> Result<Tensor> {
    match dropout.as_deref_mut() {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

/// The data of a contiguous CPU tensor argument of a custom op, borrowed; `op` and `what` name
/// it in the error. The CPU twin of `cuda::address`.
pub(crate) fn cpu_slice<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!(
            "{op}: {what} must be contiguous, got strides {:?}",
            l.stride()
        );
    };
    Ok(&s.as_slice::<T>()?[start..end])
}

/// A tensor of `shape` with values in [-scale, scale) from a small deterministic generator
/// (free of global RNG state), for tests.
#[cfg(test)]
pub(crate) fn rand_tensor(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("shape matches data")
}

/// The gradients of `sum(out * probe)`: a loss that weights every output differently (tests).
#[cfg(test)]
pub(crate) fn probed_grads(out: &Tensor, probe: &Tensor) -> candle_core::backprop::GradStore {
    out.mul(probe)
        .and_then(|l| l.sum_all())
        .and_then(|l| l.backward())
        .expect("a differentiable output")
}

/// Largest absolute elementwise difference of two tensors of one shape (for tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&a.sub(b).expect("tensors of one shape"))
}

/// The largest magnitude in `t` (for tests).
#[cfg(test)]
pub(crate) fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("an f32 tensor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_seeded_and_shaped() {
        let cfg = ModelConfig {
            embedding_size: 4,
            rnn_size: 8,
            num_layers: 2,
            drop_rate: 0.0,
        };
        let a = cfg.init_weights(10, 7, &Device::Cpu).unwrap();
        let b = cfg.init_weights(10, 7, &Device::Cpu).unwrap();
        assert_eq!(a.len(), 1 + 4 * 2 + 2);
        for (name, shape) in cfg.weight_shapes(10) {
            assert_eq!(a[&name].dims(), &shape[..], "{name}");
            let (x, y): (Vec<f32>, Vec<f32>) = (
                a[&name].flatten_all().unwrap().to_vec1().unwrap(),
                b[&name].flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(x, y, "{name} differs between two inits with one seed");
        }
        let model = CharLstm::from_weights(&a, &cfg, 10, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 2], [3, 4], [5, 6]], &Device::Cpu).unwrap();
        let loss = model
            .loss(&ids, &ids, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // An untrained model is close to uniform: about ln(10) nats per character.
        assert!((loss - 10f32.ln()).abs() < 1.0, "loss {loss}");
    }

    /// With bf16 products the loss and every weight's gradient (both layers, the first from
    /// token ids and the second through the fused op, and the output layer, dropout on) stay
    /// within bf16's rounding of the f32 ones; on a CPU without AVX-512 BF16 the portable
    /// loop runs the same products.
    #[test]
    fn bf16_products_give_the_f32_loss_and_gradients_to_bf16_precision() {
        let (v, t, b) = (23, 7, 12);
        let cfg = ModelConfig {
            embedding_size: 16,
            rnn_size: 40,
            num_layers: 2,
            drop_rate: 0.2,
        };
        let weights = cfg.init_weights(v, 3, &Device::Cpu).unwrap();
        let vars: HashMap<String, candle_core::Var> = weights
            .iter()
            .map(|(k, w)| (k.clone(), candle_core::Var::from_tensor(w).unwrap()))
            .collect();
        let tensors = vars
            .iter()
            .map(|(k, w)| (k.clone(), w.as_tensor().clone()))
            .collect();
        let ids: Vec<u32> = (0..t * b).map(|k| ((k * 7 + k / 5) % v) as u32).collect();
        let ids = Tensor::from_vec(ids, (t, b), &Device::Cpu).unwrap();
        let targets = (ids.clone() + 1.0).unwrap().to_dtype(DType::U32).unwrap();
        let targets = targets.broadcast_minimum(&Tensor::new(v as u32 - 1, &Device::Cpu).unwrap());
        let targets = targets.unwrap();
        let run = |precision| {
            let mut model = CharLstm::from_weights(&tensors, &cfg, v, &Device::Cpu).unwrap();
            model.precision = precision;
            let mut dropout = Dropout::new(cfg.drop_rate, 9);
            let loss = model.loss(&ids, &targets, Some(&mut dropout)).unwrap();
            let grads = loss.backward().unwrap();
            (loss.to_scalar::<f32>().unwrap(), grads)
        };
        let (loss32, g32) = run(Precision::F32);
        let (loss16, g16) = run(Precision::Bf16);
        assert!(
            (loss16 - loss32).abs() < 1e-2 * loss32,
            "loss {loss16} with bf16, {loss32} in f32"
        );
        let mut rounded = 0;
        for (name, var) in &vars {
            let (a, b) = (g32.get(var).unwrap(), g16.get(var).unwrap());
            let (size, diff) = (max_abs(a), max_abs_diff(a, b));
            assert!(size > 0.0, "d{name} is not exercised");
            assert!(
                diff < 3e-2 * size,
                "d{name}: differs by {diff}, largest {size}"
            );
            rounded += usize::from(diff > 0.0);
        }
        // (0.3% apart at these shapes: the bf16 products ran, in every layer)
        assert_eq!(rounded, vars.len(), "some gradients came out as f32's bits");
    }
}
