//! The step-by-step forward pass for sampling: one token per stream in, logits out, state
//! carried between calls, over plain f32 buffers allocated once.
//!
//! The first layer's input projection is a table lookup (embedding @ W_ih^T + biases, one row
//! per character), one stream runs a tight mat-vec, several streams a matmul. No autograd, no
//! tensor allocation per step.

use candle_core::Tensor;

use super::cpu_kernels::{cell_forward, par_cell_forward, par_matvec, Mat, PackedB};
use super::CharLstm;
use crate::Result;

/// One layer's weights for stepping.
struct StepLayer {
    /// Layer 0: the input projection of every character, [V, 4H], biases included.
    /// Other layers: empty.
    table: Vec<f32>,
    /// Layers above 0: [4H, H] input weights.
    w_ih: Vec<f32>,
    /// [4H, H]
    w_hh: Vec<f32>,
    /// b_ih + b_hh, [4H]
    bias: Vec<f32>,
    /// `w_ih^T` (layers above 0) and `w_hh^T` packed for several streams at once.
    w_ih_t: Option<PackedB>,
    w_hh_t: PackedB,
}

/// The model's weights laid out for [`StepWeights::step`].
pub struct StepWeights {
    vocab_size: usize,
    hidden: usize,
    layers: Vec<StepLayer>,
    /// [V, H]
    out_w: Vec<f32>,
    /// [V]
    out_b: Vec<f32>,
    /// `out_w^T`, packed.
    out_w_t: PackedB,
}

/// The carried state of `streams` parallel sequences, plus scratch space.
pub struct StepState {
    streams: usize,
    /// Made for one stream: [`StepWeights::step`] runs mat-vecs. A batch that
    /// [`StepState::retain`] narrows to one stream keeps the batched products, so its rows
    /// come out bit for bit as they would have in the whole batch.
    one_stream: bool,
    /// Per layer: hidden state [S, H].
    h: Vec<Vec<f32>>,
    /// Per layer: cell state [S, H].
    c: Vec<Vec<f32>>,
    gates: Vec<f32>,
    c_prev: Vec<f32>,
    tanh_c: Vec<f32>,
    /// Logits of the last step, [S, V].
    pub logits: Vec<f32>,
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1::<f32>()?)
}

impl StepState {
    /// The streams stepped now.
    pub fn streams(&self) -> usize {
        self.streams
    }

    /// Keeps the streams whose `keep` is true, in order, and drops the others' state: a
    /// finished candidate no longer costs a row of every product. The kept streams' logits
    /// (and everything after) are the same bits as if nothing had been dropped.
    pub fn retain(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.streams, "one flag per stream");
        let kept = keep.iter().filter(|&&k| k).count();
        let width = self.c_prev.len() / self.streams.max(1);
        let vocab = self.logits.len() / self.streams.max(1);
        for state in self.h.iter_mut().chain(self.c.iter_mut()) {
            let kept_rows = keep.iter().enumerate().filter(|(_, &k)| k);
            for (to, (from, _)) in kept_rows.enumerate() {
                state.copy_within(from * width..(from + 1) * width, to * width);
            }
            state.truncate(kept * width);
        }
        self.gates.truncate(kept * 4 * width);
        self.c_prev.truncate(kept * width);
        self.tanh_c.truncate(kept * width);
        self.logits.truncate(kept * vocab);
        self.streams = kept;
    }
}

impl StepWeights {
    /// Copies the model's weights into stepping layout.
    pub fn from_model(model: &CharLstm) -> Result<Self> {
        let h = model.config.rnn_size;
        let mut layers = Vec::with_capacity(model.layers.len());
        for (k, l) in model.layers.iter().enumerate() {
            let bias = to_vec(&l.b_ih.add(&l.b_hh)?)?;
            let (table, w_ih) = if k == 0 {
                // [V, E] x [E, 4H] + bias: the input projection of every character.
                let t = model.embedding.matmul(&l.w_ih.t()?)?;
                let t = t.broadcast_add(&l.b_ih.add(&l.b_hh)?)?;
                (to_vec(&t)?, Vec::new())
            } else {
                (Vec::new(), to_vec(&l.w_ih)?)
            };
            let w_hh = to_vec(&l.w_hh)?;
            let w_ih_t = (k > 0).then(|| PackedB::pack(Mat::new(&w_ih, 4 * h, h).t()));
            let w_hh_t = PackedB::pack(Mat::new(&w_hh, 4 * h, h).t());
            layers.push(StepLayer {
                table,
                w_ih,
                w_hh,
                bias,
                w_ih_t,
                w_hh_t,
            });
        }
        let out_w = to_vec(&model.out_w)?;
        let out_w_t = PackedB::pack(Mat::new(&out_w, model.vocab_size, h).t());
        Ok(StepWeights {
            vocab_size: model.vocab_size,
            hidden: h,
            layers,
            out_w,
            out_b: to_vec(&model.out_b)?,
            out_w_t,
        })
    }

    /// Output size.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Zero state for `streams` sequences.
    pub fn state(&self, streams: usize) -> StepState {
        let bh = streams * self.hidden;
        StepState {
            streams,
            one_stream: streams == 1,
            h: vec![vec![0.0; bh]; self.layers.len()],
            c: vec![vec![0.0; bh]; self.layers.len()],
            gates: vec![0.0; 4 * bh],
            c_prev: vec![0.0; bh],
            tanh_c: vec![0.0; bh],
            logits: vec![0.0; streams * self.vocab_size],
        }
    }

    /// Feeds `tokens[s]` to stream `s` and leaves the next-character logits in
    /// `state.logits`.
    pub fn step(&self, state: &mut StepState, tokens: &[u32]) {
        let (s, h, g4) = (state.streams, self.hidden, 4 * self.hidden);
        assert_eq!(tokens.len(), s, "one token per stream");
        for (k, layer) in self.layers.iter().enumerate() {
            // gates = input projection + bias
            if k == 0 {
                for (row, &t) in state.gates.chunks_exact_mut(g4).zip(tokens) {
                    let t = (t as usize).min(self.vocab_size - 1);
                    row.copy_from_slice(&layer.table[t * g4..(t + 1) * g4]);
                }
            } else {
                let below = &state.h[k - 1];
                for row in state.gates.chunks_exact_mut(g4) {
                    row.copy_from_slice(&layer.bias);
                }
                if state.one_stream {
                    par_matvec(&layer.w_ih, below, &mut state.gates);
                } else {
                    let w_ih_t = layer.w_ih_t.as_ref().expect("packed for layers above 0");
                    w_ih_t.gemm(&mut state.gates, below, true);
                }
            }
            // gates += W_hh h
            let hk = &mut state.h[k];
            if state.one_stream {
                par_matvec(&layer.w_hh, hk, &mut state.gates);
            } else {
                layer.w_hh_t.gemm(&mut state.gates, hk, true);
            }
            state.c_prev.copy_from_slice(&state.c[k]);
            let cell = if s >= 16 {
                par_cell_forward
            } else {
                cell_forward
            };
            cell(
                &mut state.gates,
                Some(&state.c_prev),
                &mut state.c[k],
                &mut state.tanh_c,
                hk,
                h,
            );
        }
        let top = state.h.last().expect("at least one layer");
        for row in state.logits.chunks_exact_mut(self.vocab_size) {
            row.copy_from_slice(&self.out_b);
        }
        if state.one_stream {
            par_matvec(&self.out_w, top, &mut state.logits);
        } else {
            self.out_w_t.gemm(&mut state.logits, top, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use candle_core::Device;

    /// A two-layer model of `rnn_size` units over `v` ids, without dropout.
    fn two_layers(rnn_size: usize, v: usize, seed: u64) -> CharLstm {
        let cfg = ModelConfig {
            embedding_size: 8,
            rnn_size,
            num_layers: 2,
            drop_rate: 0.0,
        };
        let w = cfg.init_weights(v, seed, &Device::Cpu).unwrap();
        CharLstm::from_weights(&w, &cfg, v, &Device::Cpu).unwrap()
    }

    /// Stepping token by token gives the same logits as the training forward pass over the
    /// whole sequence, for one stream and for several.
    #[test]
    fn stepping_matches_sequence_forward() {
        let v = 13;
        let model = two_layers(24, v, 3);
        let seqs: Vec<Vec<u32>> = (0..3)
            .map(|s| (0..6).map(|t| ((t * 5 + s * 3) % v) as u32).collect())
            .collect();
        // [T, B] time-major ids
        let ids: Vec<u32> = (0..6)
            .flat_map(|t| seqs.iter().map(move |q| q[t]))
            .collect();
        let ids = Tensor::from_vec(ids, (6, 3), &Device::Cpu).unwrap();
        let want: Vec<f32> = model
            .forward(&ids, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let sw = StepWeights::from_model(&model).unwrap();
        for streams in [1, 3] {
            let mut st = sw.state(streams);
            for t in 0..6 {
                let toks: Vec<u32> = (0..streams).map(|s| seqs[s][t]).collect();
                sw.step(&mut st, &toks);
                for s in 0..streams {
                    for j in 0..v {
                        let got = st.logits[s * v + j];
                        let exp = want[(t * 3 + s) * v + j];
                        assert!(
                            (got - exp).abs() < 1e-4,
                            "streams {streams} t {t} s {s} j {j}: {got} vs {exp}"
                        );
                    }
                }
            }
        }
    }

    /// Dropping finished streams leaves the others' logits bit for bit, down to one stream
    /// (which keeps the batched products), so a pool's candidates do not change.
    #[test]
    fn dropping_streams_leaves_the_others_bit_for_bit() {
        let v = 11;
        let sw = StepWeights::from_model(&two_layers(40, v, 5)).unwrap();
        let streams = 20; // above the parallel cell loop's threshold
        let token = |s: usize, t: usize| ((s * 7 + t * 3) % v) as u32;
        let mut whole = sw.state(streams);
        let mut narrowed = sw.state(streams);
        // The streams still running after each drop: every other one, then three, then one.
        let mut live: Vec<usize> = (0..streams).collect();
        for (t, keep_if) in [
            None,
            Some((|s: usize| s.is_multiple_of(2)) as fn(usize) -> bool),
            None,
            Some(|s: usize| s == 4 || s == 10 || s == 18),
            Some(|s: usize| s == 10),
            None,
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(keep_if) = keep_if {
                let keep: Vec<bool> = live.iter().map(|&s| keep_if(s)).collect();
                narrowed.retain(&keep);
                live.retain(|&s| keep_if(s));
                assert_eq!(narrowed.streams(), live.len());
            }
            let all: Vec<u32> = (0..streams).map(|s| token(s, t)).collect();
            let some: Vec<u32> = live.iter().map(|&s| token(s, t)).collect();
            sw.step(&mut whole, &all);
            sw.step(&mut narrowed, &some);
            for (row, &s) in live.iter().enumerate() {
                let got = &narrowed.logits[row * v..(row + 1) * v];
                let want = &whole.logits[s * v..(s + 1) * v];
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(want), "step {t}, stream {s} (row {row})");
            }
        }
        assert_eq!(live, [10]);
    }
}
