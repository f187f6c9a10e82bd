//! The step-by-step forward pass for sampling: one token per stream in, logits out, state
//! carried between calls, over plain f32 buffers allocated once.
//!
//! The first layer's input projection is a table lookup (embedding @ W_ih^T + biases, one row
//! per character), one stream runs a tight mat-vec, several streams a matmul. No autograd, no
//! tensor allocation per step.
//!
//! Streams never mix, so the threads may each step a group of a pool's streams
//! ([`thread_groups`], [`StepWeights::thread_state`]) with no hand-off between them at every
//! product; a stream's logits come out the same bits in any group.

use candle_core::Tensor;

use super::cpu_kernels::{cell_forward, isa, par_cell_forward, par_matvec, Mat, PackedB};
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
    /// How each step's products run. A batch that [`StepState::retain`] narrows to one stream
    /// keeps its batched products, so its rows come out bit for bit as in the whole batch.
    products: Products,
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

/// How [`StepWeights::step`] runs a product `dst += x @ W^T`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Products {
    /// One stream: a mat-vec over `W`, its rows split over the thread pool.
    MatVec,
    /// The packed product, its rows split over the thread pool.
    Pool,
    /// The packed product on the calling thread: one group of [`thread_groups`].
    ThisThread,
}

impl Products {
    fn add(self, w: &[f32], packed: &PackedB, x: &[f32], dst: &mut [f32]) {
        match self {
            Products::MatVec => par_matvec(w, x, dst),
            Products::Pool => packed.gemm(dst, x, true),
            Products::ThisThread => packed.gemm_rows_on(isa(), dst, x, true),
        }
    }
}

/// Splits `n` streams into one group per thread of the pool (at most `n`), for
/// [`StepWeights::thread_state`]: stream `s` to group `s % groups`, so that each group gets
/// its share of the long and the short candidates of a pool.
pub fn thread_groups(n: usize) -> Vec<Vec<usize>> {
    let groups = rayon::current_num_threads().min(n);
    (0..groups)
        .map(|g| (g..n).step_by(groups).collect())
        .collect()
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

    /// Zero state for `streams` sequences, each step's products split over the thread pool.
    pub fn state(&self, streams: usize) -> StepState {
        let products = if streams == 1 {
            Products::MatVec
        } else {
            Products::Pool
        };
        self.zero_state(streams, products)
    }

    /// Zero state for `streams` sequences stepped on the calling thread alone, with the
    /// batched products even for one stream: one of the [`thread_groups`] of a pool that the
    /// threads step side by side. A stream's logits are the same bits in any group as in a
    /// batch of [`StepWeights::state`].
    pub fn thread_state(&self, streams: usize) -> StepState {
        self.zero_state(streams, Products::ThisThread)
    }

    fn zero_state(&self, streams: usize, products: Products) -> StepState {
        let bh = streams * self.hidden;
        StepState {
            streams,
            products,
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
                let w_ih_t = layer.w_ih_t.as_ref().expect("packed for layers above 0");
                (state.products).add(&layer.w_ih, w_ih_t, below, &mut state.gates);
            }
            // gates += W_hh h
            let hk = &mut state.h[k];
            (state.products).add(&layer.w_hh, &layer.w_hh_t, hk, &mut state.gates);
            state.c_prev.copy_from_slice(&state.c[k]);
            let cell = if s >= 16 && state.products == Products::Pool {
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
        (state.products).add(&self.out_w, &self.out_w_t, top, &mut state.logits);
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

    /// A stream's logits are the same bits whichever of a pool's groups steps it on its own
    /// thread (a group of one included) as in the pool's whole batch, so a pool's candidates
    /// do not depend on the number of threads.
    #[test]
    fn a_stream_steps_the_same_in_any_thread_group() {
        let v = 11;
        let sw = StepWeights::from_model(&two_layers(40, v, 7)).unwrap();
        let streams = 20;
        let token = |s: usize, t: usize| ((s * 5 + t * 3 + 1) % v) as u32;
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let splits: [&[usize]; 3] = [&[1, 19], &[7, 13], &[6, 6, 6, 2]];
        for sizes in splits {
            let mut whole_logits = Vec::new();
            // Groups of consecutive streams of the given sizes.
            let mut groups = Vec::new();
            let mut first = 0;
            for &size in sizes {
                groups.push((first..first + size).collect::<Vec<usize>>());
                first += size;
            }
            let mut states: Vec<StepState> =
                groups.iter().map(|g| sw.thread_state(g.len())).collect();
            let mut whole = sw.state(streams);
            for t in 0..5 {
                let all: Vec<u32> = (0..streams).map(|s| token(s, t)).collect();
                sw.step(&mut whole, &all);
                whole_logits.push(whole.logits.clone());
                for (group, state) in groups.iter().zip(&mut states) {
                    let some: Vec<u32> = group.iter().map(|&s| token(s, t)).collect();
                    sw.step(state, &some);
                    for (row, &s) in group.iter().enumerate() {
                        assert_eq!(
                            bits(&state.logits[row * v..(row + 1) * v]),
                            bits(&whole.logits[s * v..(s + 1) * v]),
                            "groups {sizes:?}, step {t}, stream {s}"
                        );
                    }
                }
            }
            // The logits move from step to step, so agreeing means something.
            assert_ne!(bits(&whole_logits[0]), bits(&whole_logits[4]));
        }
    }

    #[test]
    fn thread_groups_share_out_every_stream_once() {
        let threads = rayon::current_num_threads();
        for n in [0, 1, 2, 7, 64, 100] {
            let groups = thread_groups(n);
            assert_eq!(groups.len(), threads.min(n), "{n} streams");
            let mut all: Vec<usize> = groups.concat();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "{n} streams");
            let (min, max) = groups
                .iter()
                .map(|g| g.len())
                .fold((usize::MAX, 0), |(a, b), l| (a.min(l), b.max(l)));
            assert!(
                groups.is_empty() || max - min <= 1,
                "{n} streams: {groups:?}"
            );
        }
    }
}
