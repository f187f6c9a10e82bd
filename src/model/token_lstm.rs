//! The first LSTM layer run straight from token ids, on the CPU in f32.
//!
//! Its input is a character's embedding (after dropout), and the embedding's input projection
//! `e W_ih^T + b` is one row per character of the vocabulary: so the input gates are read
//! from a per-character table [V, 4H] (one [V, E] x [E, 4H] product instead of [TB, E] x
//! [E, 4H]), and the few embedding elements dropout zeroes are taken back out one at a time
//! (`- scale e_j W_ih[:, j]`). Backward, the gates' gradients are summed per character before
//! two small products, with the dropped elements again taken out one at a time. Exact: the
//! same masks as [`Dropout::apply`](super::Dropout::apply) on the embedded batch, the same
//! result as embedding, dropout and [`super::fused_lstm`] run one after another (which is what
//! runs elsewhere); only the rounding differs. The recurrence is [`lstm_plan`]'s.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::bf16::Precision;
use super::cpu_kernels::{axpy, gemm, matvec, Mat};
use super::dropout::Mask;
use super::fused_lstm::{split_grads, CpuSaved, Stash};
use super::lstm_plan::{self, Buf, CpuEngine, Dims};

/// Whether [`first_layer`] runs for an embedding like `embedding` (on the CPU, in f32).
pub fn runs_on(embedding: &Tensor) -> bool {
    embedding.device().is_cpu() && embedding.dtype() == DType::F32
}

/// The first layer's hidden states [T, B, H] for `input`'s token ids: `embedding` [V, E],
/// `w_in` [4H, E + 1] (W_ih with the summed biases as last column), `w_hh` [4H, H].
pub fn first_layer(
    input: Input,
    embedding: &Tensor,
    w_in: &Tensor,
    w_hh: &Tensor,
) -> candle_core::Result<Tensor> {
    let op = TokenLstm {
        input: Arc::new(input),
        saved: Stash::default(),
    };
    embedding
        .contiguous()?
        .apply_op3(&w_in.contiguous()?, &w_hh.contiguous()?, op)
}

/// What [`first_layer`] runs on besides its three tensors.
pub struct Input {
    /// Token ids [T * B], time-major.
    pub ids: Vec<u32>,
    /// T
    pub steps: usize,
    /// B
    pub batch: usize,
    /// Dropout on the embedded batch [T * B, E], when training.
    pub mask: Option<Mask>,
    /// The recurrence's products' precision (the small input-table products stay f32).
    pub precision: Precision,
}

impl Input {
    /// The sizes, checked against the layouts of embedding [V, E], w_in [4H, E + 1] and w_hh
    /// [4H, H]; and V, E.
    fn dims(
        &self,
        emb: &Layout,
        w_in: &Layout,
        w_hh: &Layout,
    ) -> candle_core::Result<(Dims, usize, usize)> {
        let (vocab, e) = emb.shape().dims2()?;
        let (g4, hidden) = w_hh.shape().dims2()?;
        if g4 != 4 * hidden
            || w_in.shape().dims2()? != (g4, e + 1)
            || self.steps == 0
            || self.ids.len() != self.steps * self.batch
        {
            candle_core::bail!(
                "token-lstm: shapes disagree: {} ids for {} x {}, embedding {:?}, w_in {:?}, w_hh {:?}",
                self.ids.len(),
                self.steps,
                self.batch,
                emb.shape(),
                w_in.shape(),
                w_hh.shape()
            );
        }
        if let Some(&id) = self.ids.iter().find(|&&id| id as usize >= vocab) {
            candle_core::bail!("token-lstm: token id {id} is outside the vocabulary of {vocab}");
        }
        let d = Dims {
            steps: self.steps,
            batch: self.batch,
            inputs: e + 1,
            hidden,
        };
        Ok((d, vocab, e))
    }

    /// The factor of the embedding elements kept.
    fn scale(&self) -> f32 {
        self.mask.map_or(1.0, |m| m.keep_scale())
    }

    /// The embedding elements of row `c` that dropout zeroes.
    fn dropped(&self, c: usize, e: usize) -> impl Iterator<Item = usize> + '_ {
        let mask = self.mask;
        (0..e).filter(move |&j| mask.is_some_and(|m| m.drops((c * e + j) as u64)))
    }
}

/// W_ih's columns as rows [E, 4H], and the biases [4H], from `w_in` [4H, E + 1].
fn split_w_in(w_in: &[f32], e: usize) -> (Vec<f32>, Vec<f32>) {
    let g4 = w_in.len() / (e + 1);
    let mut w_t = vec![0f32; e * g4];
    for (r, row) in w_in.chunks_exact(e + 1).enumerate() {
        for (j, &w) in row[..e].iter().enumerate() {
            w_t[j * g4 + r] = w;
        }
    }
    let bias = w_in.chunks_exact(e + 1).map(|row| row[e]).collect();
    (w_t, bias)
}

/// The op over (embedding, w_in, w_hh); see [`first_layer`].
struct TokenLstm {
    input: Arc<Input>,
    saved: Stash<CpuSaved>,
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    super::cpu_slice(s, l, "token-lstm", what)
}

impl CustomOp3 for TokenLstm {
    fn name(&self) -> &'static str {
        "token-lstm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let inp = &*self.input;
        let (d, vocab, e) = inp.dims(l1, l2, l3)?;
        let (emb, g4) = (f32s(s1, l1, "embedding")?, 4 * d.hidden);
        let (w_t, bias) = split_w_in(f32s(s2, l2, "w_in")?, e);
        let scale = inp.scale();
        // table[v] = scale e_v W_ih^T + b
        let mut table = vec![0f32; vocab * g4];
        gemm(
            &mut table,
            Mat::new(emb, vocab, e),
            Mat::new(&w_t, e, g4),
            false,
        );
        table.par_chunks_mut(g4).for_each(|row| {
            for (x, b) in row.iter_mut().zip(&bias) {
                *x = *x * scale + b;
            }
        });
        let tb = d.steps * d.batch;
        let mut acts = vec![0f32; tb * g4];
        acts.par_chunks_mut(g4).enumerate().for_each(|(c, row)| {
            let id = inp.ids[c] as usize;
            row.copy_from_slice(&table[id * g4..(id + 1) * g4]);
            for j in inp.dropped(c, e) {
                axpy(-scale * emb[id * e + j], &w_t[j * g4..(j + 1) * g4], row);
            }
        });
        let mut eng = CpuEngine::default();
        eng.set_precision(inp.precision);
        eng.lend(Buf::WHh, f32s(s3, l3, "w_hh")?);
        eng.give(Buf::Acts, acts);
        for buf in [Buf::C, Buf::TanhC, Buf::H] {
            eng.give(buf, vec![0f32; tb * d.hidden]);
        }
        lstm_plan::recurrence(&mut eng, d)?;
        self.saved.put(CpuSaved::take(&mut eng));
        Ok((
            CpuStorage::F32(eng.take(Buf::H)),
            Shape::from((d.steps, d.batch, d.hidden)),
        ))
    }

    fn bwd(
        &self,
        embedding: &Tensor,
        w_in: &Tensor,
        w_hh: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = TokenLstmGrad {
            input: self.input.clone(),
            saved: self.saved.get(self.name())?,
            h: res.clone(),
            grad: grad_res.contiguous()?,
        };
        // [d embedding | dw_in | dw_hh], flat.
        let all = embedding.apply_op3_no_bwd(w_in, w_hh, &grad)?;
        split_grads(&all, [embedding, w_in, w_hh])
    }
}

/// The op's backward pass as an op over (embedding, w_in, w_hh), holding the rest.
struct TokenLstmGrad {
    input: Arc<Input>,
    saved: Arc<CpuSaved>,
    h: Tensor,
    grad: Tensor,
}

impl CustomOp3 for TokenLstmGrad {
    fn name(&self) -> &'static str {
        "token-lstm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let inp = &*self.input;
        let (d, vocab, e) = inp.dims(l1, l2, l3)?;
        let (emb, g4, tb) = (f32s(s1, l1, "embedding")?, 4 * d.hidden, d.steps * d.batch);
        let w_hh = f32s(s3, l3, "w_hh")?;
        let (dgates, dw_hh) =
            self.saved
                .backward(self.name(), d, w_hh, &self.h, &self.grad, &[], |e| {
                    lstm_plan::recurrence_backward(e, d)?;
                    Ok((e.take(Buf::DGates), e.take(Buf::DWHh)))
                })?;

        // The gates' gradients summed per character: sums[v] = sum of dgates[c] with ids[c] = v.
        let mut rows_of = vec![Vec::new(); vocab];
        for (c, &id) in inp.ids.iter().enumerate() {
            rows_of[id as usize].push(c);
        }
        let mut sums = vec![0f32; vocab * g4];
        sums.par_chunks_mut(g4)
            .zip(&rows_of)
            .for_each(|(sum, rows)| {
                for &c in rows {
                    axpy(1.0, &dgates[c * g4..(c + 1) * g4], sum);
                }
            });
        let (w_t, _) = split_w_in(f32s(s2, l2, "w_in")?, e);
        let scale = inp.scale();
        // The dropped elements' parts, per task, then summed: of dW_ih (as [E, 4H]) and of
        // d embedding [V, E].
        let threads = rayon::current_num_threads().max(1);
        let (drop_w, drop_e) = (0..tb)
            .into_par_iter()
            .with_min_len(tb.div_ceil(threads))
            .fold(
                || (vec![0f32; e * g4], vec![0f32; vocab * e]),
                |(mut dw, mut de), c| {
                    let (id, dg) = (inp.ids[c] as usize, &dgates[c * g4..(c + 1) * g4]);
                    for j in inp.dropped(c, e) {
                        axpy(emb[id * e + j], dg, &mut dw[j * g4..(j + 1) * g4]);
                        matvec(
                            &w_t[j * g4..(j + 1) * g4],
                            dg,
                            &mut de[id * e + j..id * e + j + 1],
                        );
                    }
                    (dw, de)
                },
            )
            .reduce(
                || (vec![0f32; e * g4], vec![0f32; vocab * e]),
                |(mut a, mut b), (x, y)| {
                    axpy(1.0, &x, &mut a);
                    axpy(1.0, &y, &mut b);
                    (a, b)
                },
            );
        // d embedding = scale (sums W_ih - dropped parts): [V, 4H] x [4H, E].
        let mut d_emb = vec![0f32; vocab * e];
        gemm(
            &mut d_emb,
            Mat::new(&sums, vocab, g4),
            Mat::new(&w_t, e, g4).t(),
            false,
        );
        for (x, dropped) in d_emb.iter_mut().zip(&drop_e) {
            *x = scale * (*x - dropped);
        }
        // dW_ih = scale (sums^T embedding - dropped parts): [4H, V] x [V, E]; d bias = column
        // sums of `sums`.
        let mut dw_e = vec![0f32; g4 * e];
        gemm(
            &mut dw_e,
            Mat::new(&sums, vocab, g4).t(),
            Mat::new(emb, vocab, e),
            false,
        );
        let mut d_bias = vec![0f32; g4];
        for sum in sums.chunks_exact(g4) {
            axpy(1.0, sum, &mut d_bias);
        }
        let mut dw_in = vec![0f32; g4 * (e + 1)];
        for (r, row) in dw_in.chunks_exact_mut(e + 1).enumerate() {
            for j in 0..e {
                row[j] = scale * (dw_e[r * e + j] - drop_w[j * g4 + r]);
            }
            row[e] = d_bias[r];
        }
        let mut all = d_emb;
        all.extend_from_slice(&dw_in);
        all.extend_from_slice(&dw_hh);
        let len = all.len();
        Ok((CpuStorage::F32(all), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{fused_lstm, max_abs, max_abs_diff, probed_grads, rand_tensor, Dropout};
    use candle_core::{Device, Var};

    /// The op against what runs elsewhere (index_select, dropout, a column of ones, the fused
    /// layer): outputs and the gradients of the embedding, w_in and w_hh, with dropout at a
    /// high rate (many dropped elements, some characters repeated) and without.
    #[test]
    fn matches_embedding_dropout_and_fused_layer() {
        let (t, b, v, e, h) = (6, 5, 9, 7, 8);
        // Ids with repeats, the first and the last id of the vocabulary among them.
        let ids: Vec<u32> = (0..t * b).map(|k| ((k * 7 + k / 3) % v) as u32).collect();
        assert!(ids.contains(&0) && ids.contains(&(v as u32 - 1)));
        let emb = Var::from_tensor(&rand_tensor(&[v, e], 1, 1.0)).unwrap();
        let w_in = Var::from_tensor(&rand_tensor(&[4 * h, e + 1], 2, 0.5)).unwrap();
        let w_hh = Var::from_tensor(&rand_tensor(&[4 * h, h], 3, 0.4)).unwrap();
        let probe = rand_tensor(&[t, b, h], 4, 1.0);
        for rate in [0.0, 0.3] {
            let input = Input {
                ids: ids.clone(),
                steps: t,
                batch: b,
                mask: Dropout::new(rate, 5).next_mask(),
                precision: Precision::F32,
            };
            let ours = first_layer(input, &emb, &w_in, &w_hh).unwrap();
            let ids_t = Tensor::from_vec(ids.clone(), t * b, &Device::Cpu).unwrap();
            let x = Dropout::new(rate, 5)
                .apply(&emb.index_select(&ids_t, 0).unwrap())
                .unwrap();
            let ones = Tensor::ones((t * b, 1), DType::F32, &Device::Cpu).unwrap();
            let x = Tensor::cat(&[&x, &ones], 1)
                .unwrap()
                .reshape((t, b, e + 1))
                .unwrap();
            let theirs = fused_lstm::lstm_sequence(&x, &w_in, &w_hh).unwrap();
            let fwd = max_abs_diff(&ours, &theirs);
            assert!(fwd < 1e-5, "rate {rate}: forward differs by {fwd}");
            let (g_ours, g_theirs) = (probed_grads(&ours, &probe), probed_grads(&theirs, &probe));
            for (name, var) in [("embedding", &emb), ("w_in", &w_in), ("w_hh", &w_hh)] {
                let (a, b) = (g_ours.get(var).unwrap(), g_theirs.get(var).unwrap());
                let diff = max_abs_diff(a, b);
                let size = max_abs(b);
                println!("rate {rate}: d{name} max diff {diff:e} (largest {size})");
                assert!(size > 0.01, "d{name} is not exercised");
                assert!(
                    diff < 1e-4,
                    "rate {rate}: gradient of {name} differs by {diff}"
                );
            }
        }
    }

    #[test]
    fn an_id_outside_the_vocabulary_is_an_error() {
        let emb = rand_tensor(&[4, 3], 1, 1.0);
        let w_in = rand_tensor(&[8, 4], 2, 0.5);
        let w_hh = rand_tensor(&[8, 2], 3, 0.5);
        let err = first_layer(
            Input {
                ids: vec![1, 4],
                steps: 1,
                batch: 2,
                mask: None,
                precision: Precision::F32,
            },
            &emb,
            &w_in,
            &w_hh,
        )
        .unwrap_err();
        assert!(err.to_string().contains("token id 4"), "{err}");
    }
}
