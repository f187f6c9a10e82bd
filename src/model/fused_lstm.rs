//! The LSTM recurrence over a whole sequence as one candle op, with its own forward and
//! backward (BPTT), next to the unfused reference it must match.
//!
//! The op does the input projection of every time step as one big matmul, then per step one
//! [B, H] x [H, 4H] matmul plus one tight loop over the gates. Biases ride along as an extra
//! input column of ones, so the op has three inputs and candle's autograd only ever sees the
//! small input and weight tensors, never the [T, B, 4H] gates.
//! The forward pass keeps the gate activations and cell states for the backward pass inside
//! the op (candle keeps the op alive in the graph), so nothing is recomputed. Gate order is
//! i, f, g, o, as in PyTorch and `candle_nn::rnn`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use super::kernels::{gemm, par_cell_backward, par_cell_forward, Mat, PackedB};

/// Runs an LSTM layer over a sequence from zero state: `x` [T, B, I] is the layer input
/// with a last column of ones, `w_in` [4H, I] is W_ih with the summed biases as last column,
/// `w_hh` [4H, H]; returns the hidden states [T, B, H]. On the CPU this is the fused op; on
/// CUDA a cuBLAS matmul and one fused cell kernel per step ([`super::lstm_cell`]); in other
/// dtypes the unfused candle ops.
pub fn lstm_sequence(x: &Tensor, w_in: &Tensor, w_hh: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() != DType::F32 {
        lstm_reference(x, w_in, w_hh)
    } else if x.device().is_cpu() {
        x.contiguous()?.apply_op3(
            &w_in.contiguous()?,
            &w_hh.contiguous()?,
            FusedLstm::default(),
        )
    } else {
        super::lstm_cell::lstm_cell_sequence(x, w_in, w_hh)
    }
}

/// The unfused formulation, step by step with candle ops: the reference the fused op is
/// tested against, and the path on devices the fused op does not run on.
pub fn lstm_reference(x: &Tensor, w_in: &Tensor, w_hh: &Tensor) -> candle_core::Result<Tensor> {
    unrolled(x, w_in, w_hh, |xp, hw, c| {
        let hidden = c.dim(1)?;
        // gates: [B, 4H]
        let gates = xp.add(hw)?;
        let i = candle_nn::ops::sigmoid(&gates.narrow(1, 0, hidden)?)?;
        let f = candle_nn::ops::sigmoid(&gates.narrow(1, hidden, hidden)?)?;
        let g = gates.narrow(1, 2 * hidden, hidden)?.tanh()?;
        let o = candle_nn::ops::sigmoid(&gates.narrow(1, 3 * hidden, hidden)?)?;
        let c = f.mul(c)?.add(&i.mul(&g)?)?;
        Ok((o.mul(&c.tanh()?)?, c))
    })
}

/// An LSTM layer unrolled over time with candle ops: the input projection of all steps in one
/// matmul, then per step `cell(xp_t [B,4H], h_prev W_hh^T [B,4H], c_prev [B,H]) -> (h, c)`.
pub(crate) fn unrolled(
    x: &Tensor,
    w_in: &Tensor,
    w_hh: &Tensor,
    cell: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<(Tensor, Tensor)>,
) -> candle_core::Result<Tensor> {
    let (steps, batch, inputs) = x.dims3()?;
    let hidden = w_hh.dim(1)?;
    // The input projection of all time steps in one matmul: [TB, I] x [I, 4H].
    let xproj = x
        .reshape((steps * batch, inputs))?
        .matmul(&w_in.t()?)?
        .reshape((steps, batch, 4 * hidden))?;
    let w_t = w_hh.t()?;
    let mut h = Tensor::zeros((batch, hidden), x.dtype(), x.device())?;
    let mut c = h.clone();
    let mut hs = Vec::with_capacity(steps);
    for t in 0..steps {
        (h, c) = cell(&xproj.get(t)?, &h.matmul(&w_t)?, &c)?;
        hs.push(h.clone());
    }
    Tensor::stack(&hs, 0)
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    /// Activated gates [T, B, 4H].
    acts: Vec<f32>,
    /// Cell states [T, B, H].
    c: Vec<f32>,
    /// tanh of the cell states [T, B, H].
    tanh_c: Vec<f32>,
}

/// The fused LSTM layer op; see [`lstm_sequence`].
#[derive(Default)]
pub struct FusedLstm {
    saved: Mutex<Option<Arc<Saved>>>,
}

/// The f32 slice of a contiguous CPU tensor argument, or an error naming the op and argument.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!(
            "fused-lstm: {what} must be contiguous, got strides {:?}",
            l.stride()
        );
    };
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// The f32 data of a contiguous CPU tensor's storage, borrowed (no copy).
fn cpu_f32<'a>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => contiguous_f32(cpu, layout, what),
        _ => candle_core::bail!("fused-lstm: {what} is not on the CPU"),
    }
}

impl CustomOp3 for FusedLstm {
    fn name(&self) -> &'static str {
        "fused-lstm"
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
        let (steps, batch, inputs) = l1.shape().dims3()?;
        let (g4, hidden) = l3.shape().dims2()?;
        if g4 != 4 * hidden || l2.shape().dims2()? != (g4, inputs) {
            candle_core::bail!(
                "fused-lstm: shapes disagree: x {:?}, w_in {:?}, w_hh {:?} (want [T,B,I], [4H,I], [4H,H])",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let x = contiguous_f32(s1, l1, "x")?;
        let w_in = contiguous_f32(s2, l2, "w_in")?;
        let w = contiguous_f32(s3, l3, "w_hh")?;
        let bh = batch * hidden;

        // acts starts as the input projection of every step (biases included) and becomes the
        // activated gates, step by step: [TB, I] x [I, 4H].
        let mut acts = vec![0f32; steps * batch * g4];
        gemm(
            &mut acts,
            Mat::new(x, steps * batch, inputs),
            Mat::new(w_in, g4, inputs).t(),
            false,
        );
        let mut c = vec![0f32; steps * bh];
        let mut tanh_c = vec![0f32; steps * bh];
        let mut h = vec![0f32; steps * bh];
        // w_hh^T packed once for the 31 products below.
        let w_t = PackedB::pack(Mat::new(w, g4, hidden).t());
        for t in 0..steps {
            let gates = &mut acts[t * batch * g4..(t + 1) * batch * g4];
            let (h_before, h_rest) = h.split_at_mut(t * bh);
            let (c_before, c_rest) = c.split_at_mut(t * bh);
            let c_prev = if t > 0 {
                // gates += h_{t-1} @ w_hh^T: [B, H] x [H, 4H]
                w_t.gemm(gates, &h_before[(t - 1) * bh..], true);
                Some(&c_before[(t - 1) * bh..])
            } else {
                None
            };
            let tc = &mut tanh_c[t * bh..(t + 1) * bh];
            par_cell_forward(
                gates,
                c_prev,
                &mut c_rest[..bh],
                tc,
                &mut h_rest[..bh],
                hidden,
            );
        }
        *self.saved.lock().expect("fused-lstm state poisoned") =
            Some(Arc::new(Saved { acts, c, tanh_c }));
        Ok((CpuStorage::F32(h), Shape::from((steps, batch, hidden))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_in: &Tensor,
        w_hh: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self
            .saved
            .lock()
            .expect("fused-lstm state poisoned")
            .clone();
        let Some(saved) = saved else {
            candle_core::bail!("fused-lstm: backward called before forward");
        };
        let (steps, batch, inputs) = x.dims3()?;
        let (g4, hidden) = w_hh.dims2()?;
        let bh = batch * hidden;
        let grad_res = grad_res.contiguous()?;
        let mut dgates = vec![0f32; steps * batch * g4];
        let mut dw = vec![0f32; g4 * hidden];
        let mut dx = vec![0f32; steps * batch * inputs];
        let mut dw_in = vec![0f32; g4 * inputs];
        let (w_st, w_l) = w_hh.storage_and_layout();
        let (dh_st, dh_l) = grad_res.storage_and_layout();
        let (h_st, h_l) = res.storage_and_layout();
        let (wi_st, wi_l) = w_in.storage_and_layout();
        let (x_st, x_l) = x.storage_and_layout();
        let w = cpu_f32(&w_st, w_l, "w_hh")?;
        let dh_out = cpu_f32(&dh_st, dh_l, "grad")?;
        let h = cpu_f32(&h_st, h_l, "h")?;
        let w_in = cpu_f32(&wi_st, wi_l, "w_in")?;
        let x = cpu_f32(&x_st, x_l, "x")?;

        let mut dh = vec![0f32; bh];
        let mut dc = vec![0f32; bh];
        let w_packed = PackedB::pack(Mat::new(w, g4, hidden));
        for t in (0..steps).rev() {
            // dh_t = dL/dh_t from above + dgates_{t+1} @ w_hh: [B, 4H] x [4H, H]
            dh.copy_from_slice(&dh_out[t * bh..(t + 1) * bh]);
            let (dg_now, dg_next) = dgates.split_at_mut((t + 1) * batch * g4);
            if t + 1 < steps {
                w_packed.gemm(&mut dh, &dg_next[..batch * g4], true);
            }
            let c_prev = (t > 0).then(|| &saved.c[(t - 1) * bh..t * bh]);
            par_cell_backward(
                &saved.acts[t * batch * g4..(t + 1) * batch * g4],
                c_prev,
                &saved.tanh_c[t * bh..(t + 1) * bh],
                &dh,
                &mut dc,
                &mut dg_now[t * batch * g4..],
                hidden,
            );
        }
        // dw_hh = sum_t dgates_t^T @ h_{t-1}: one [4H, (T-1)B] x [(T-1)B, H] matmul.
        let rows = (steps - 1) * batch;
        if rows > 0 {
            let dg = Mat::new(&dgates[batch * g4..], rows, g4).t();
            gemm(
                &mut dw,
                dg,
                Mat::new(&h[..rows * hidden], rows, hidden),
                false,
            );
        }
        // dx = dgates @ w_in: [TB, 4H] x [4H, I]; dw_in = dgates^T @ x: [4H, TB] x [TB, I].
        let all = Mat::new(&dgates, steps * batch, g4);
        gemm(&mut dx, all, Mat::new(w_in, g4, inputs), false);
        gemm(
            &mut dw_in,
            all.t(),
            Mat::new(x, steps * batch, inputs),
            false,
        );
        let dev = w_hh.device();
        Ok((
            Some(Tensor::from_vec(dx, (steps, batch, inputs), dev)?),
            Some(Tensor::from_vec(dw_in, (g4, inputs), dev)?),
            Some(Tensor::from_vec(dw, (g4, hidden), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand_tensor(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        // A small deterministic generator keeps the test free of global RNG state.
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
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Forward (to 1e-5) and all three gradients (to 1e-4) of `layer` against candle's
    /// autograd on the unfused formulation, with a loss that weights every output differently.
    fn check_against_reference(
        layer: fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
        label: &str,
    ) {
        let (t, b, i, h) = (7, 5, 6, 16);
        let x = Var::from_tensor(&rand_tensor(&[t, b, i], 1, 1.5)).unwrap();
        let w_in = Var::from_tensor(&rand_tensor(&[4 * h, i], 3, 0.5)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[4 * h, h], 2, 0.4)).unwrap();
        let probe = rand_tensor(&[t, b, h], 4, 1.0);

        let fused = layer(&x, &w_in, &w).unwrap();
        let reference = lstm_reference(&x, &w_in, &w).unwrap();
        let fwd = crate::model::max_abs_diff(&fused, &reference);
        println!("{label} forward max diff {fwd:e}");
        assert!(fwd < 1e-5, "forward differs by {fwd}");

        let grads = |out: &Tensor| {
            out.mul(&probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (gf, gr) = (grads(&fused), grads(&reference));
        for (name, v) in [("x", &x), ("w_in", &w_in), ("w_hh", &w)] {
            let d = crate::model::max_abs_diff(gf.get(v).unwrap(), gr.get(v).unwrap());
            println!("{label} d{name} max diff {d:e}");
            assert!(d < 1e-4, "gradient of {name} differs by {d}");
        }
    }

    #[test]
    fn fused_matches_autograd_reference() {
        check_against_reference(lstm_sequence, "fused-lstm");
    }

    /// The GPU path's cell op, run on the CPU: its CUDA kernels transcribe the functions
    /// this checks.
    #[test]
    fn cell_op_matches_autograd_reference() {
        check_against_reference(super::super::lstm_cell::lstm_cell_sequence, "lstm-cell");
    }

    /// Gradients of the fused op against central finite differences in f64 arithmetic on a
    /// tiny model (the reference formulation evaluated in f64).
    #[test]
    fn fused_matches_finite_differences() {
        let (t, b, i, h) = (4, 2, 3, 3);
        let x = Var::from_tensor(&rand_tensor(&[t, b, i], 11, 1.0)).unwrap();
        let w_in = Var::from_tensor(&rand_tensor(&[4 * h, i], 13, 0.5)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[4 * h, h], 12, 0.7)).unwrap();
        let probe = rand_tensor(&[t, b, h], 14, 1.0);
        let loss = |x: &Tensor, w: &Tensor, bb: &Tensor| -> f64 {
            let f = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            lstm_reference(&f(x), &f(bb), &f(w))
                .unwrap()
                .mul(&f(&probe))
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = lstm_sequence(&x, &w_in, &w)
            .unwrap()
            .mul(&probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let eps = 1e-3f64;
        for which in 0..3 {
            let var = [&x, &w, &w_in][which]; // x, w_hh, w_in
            let base: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
            let analytic: Vec<f32> = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for k in 0..base.len() {
                let bump = |d: f64| {
                    let mut v: Vec<f64> = base.iter().map(|&x| x as f64).collect();
                    v[k] += d;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    let f = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
                    match which {
                        0 => loss(&t, &f(&w), &f(&w_in)),
                        1 => loss(&f(&x), &t, &f(&w_in)),
                        _ => loss(&f(&x), &f(&w), &t),
                    }
                };
                let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
                let err = (numeric - analytic[k] as f64).abs();
                assert!(
                    err < 1e-3 * (1.0 + numeric.abs()),
                    "arg {which} elem {k}: numeric {numeric}, fused {}",
                    analytic[k]
                );
            }
        }
    }
}
