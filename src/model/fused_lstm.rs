//! The LSTM recurrence over a whole sequence as one candle op, with its own forward and
//! backward (BPTT), next to the unfused reference it must match.
//!
//! The op does the input projection of every time step as one big matmul, then per step one
//! [B, H] x [H, 4H] matmul plus one pass over the gates ([`super::lstm_plan`], run on the CPU
//! or with cuBLAS on CUDA). Biases ride along as an extra input column of ones, so the op has
//! three inputs and candle's autograd only ever sees the small input and weight tensors, never
//! the [T, B, 4H] gates. The forward pass keeps the gate activations and cell states for the
//! backward pass inside the op (candle keeps the op alive in the graph), so nothing is
//! recomputed. Gate order is i, f, g, o, as in PyTorch and `candle_nn::rnn`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use super::bf16::Precision;
use super::lstm_plan::{self, Buf, CpuEngine, Dims};

/// Runs an LSTM layer over a sequence from zero state: `x` [T, B, I] is the layer input
/// with a last column of ones, `w_in` [4H, I] is W_ih with the summed biases as last column,
/// `w_hh` [4H, H]; returns the hidden states [T, B, H]. In f32 on the CPU and on CUDA this is
/// the fused op (on CUDA: cuBLAS and two kernels, see [`super::lstm_cuda`]); other dtypes run
/// the unfused candle ops.
pub fn lstm_sequence(x: &Tensor, w_in: &Tensor, w_hh: &Tensor) -> candle_core::Result<Tensor> {
    lstm_sequence_at(x, w_in, w_hh, Precision::F32)
}

/// [`lstm_sequence`] with the CPU's products at `precision` (CUDA and the unfused path run
/// f32 whatever it says).
pub fn lstm_sequence_at(
    x: &Tensor,
    w_in: &Tensor,
    w_hh: &Tensor,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    let device = x.device();
    if x.dtype() != DType::F32 || !(device.is_cpu() || device.is_cuda()) {
        lstm_reference(x, w_in, w_hh)
    } else {
        x.contiguous()?.apply_op3(
            &w_in.contiguous()?,
            &w_hh.contiguous()?,
            FusedLstm {
                precision,
                ..FusedLstm::default()
            },
        )
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

/// What the forward pass keeps for the backward pass: the activated gates [T, B, 4H], the cell
/// states and their tanh [T, B, H].
enum Saved {
    Cpu(CpuSaved),
    #[cfg(feature = "cuda")]
    Cuda(super::lstm_cuda::Saved),
}

/// [`Saved`] on the CPU; also what [`super::token_lstm`]'s first layer keeps.
pub(crate) struct CpuSaved {
    /// The forward pass's products' precision, which the backward pass's take too.
    precision: Precision,
    acts: Vec<f32>,
    c: Vec<f32>,
    tanh_c: Vec<f32>,
}

impl CpuSaved {
    /// Takes the saved buffers out of an engine that ran [`lstm_plan::recurrence`].
    pub(crate) fn take(e: &mut CpuEngine) -> Self {
        CpuSaved {
            precision: e.precision(),
            acts: e.take(Buf::Acts),
            c: e.take(Buf::C),
            tanh_c: e.take(Buf::TanhC),
        }
    }

    /// Runs `f` on an engine set up for the backward pass through the recurrence: these
    /// buffers, `w_hh`, the layer's output `h`, its gradient `grad` and the `inputs` lent,
    /// `Dc`, `DGates` and `DWHh` given; `op` names the op in errors.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward<R>(
        &self,
        op: &str,
        d: Dims,
        w_hh: &[f32],
        h: &Tensor,
        grad: &Tensor,
        inputs: &[(Buf, &[f32])],
        f: impl FnOnce(&mut CpuEngine) -> candle_core::Result<R>,
    ) -> candle_core::Result<R> {
        let (h_st, h_l) = h.storage_and_layout();
        let (g_st, g_l) = grad.storage_and_layout();
        let (Storage::Cpu(h_st), Storage::Cpu(g_st)) = (&*h_st, &*g_st) else {
            candle_core::bail!("{op}: h or its gradient is not on the CPU");
        };
        let g4 = 4 * d.hidden;
        let mut e = CpuEngine::default();
        e.set_precision(self.precision);
        e.lend(Buf::WHh, w_hh);
        e.lend(Buf::H, super::cpu_slice(h_st, h_l, op, "h")?);
        e.lend(Buf::Acts, &self.acts);
        e.lend(Buf::C, &self.c);
        e.lend(Buf::TanhC, &self.tanh_c);
        e.give(Buf::Dh, super::cpu_slice(g_st, g_l, op, "grad")?.to_vec());
        e.give(Buf::Dc, vec![0f32; d.batch * d.hidden]);
        e.give(Buf::DGates, vec![0f32; d.steps * d.batch * g4]);
        e.give(Buf::DWHh, vec![0f32; g4 * d.hidden]);
        for &(buf, data) in inputs {
            e.lend(buf, data);
        }
        f(&mut e)
    }
}

/// What an op's forward pass keeps for its backward pass (candle keeps the op alive in the
/// graph between the two).
pub(crate) struct Stash<T>(Mutex<Option<Arc<T>>>);

impl<T> Default for Stash<T> {
    fn default() -> Self {
        Stash(Mutex::new(None))
    }
}

impl<T> Stash<T> {
    /// Keeps `state` (replacing what a previous forward pass kept).
    pub(crate) fn put(&self, state: T) {
        *self.0.lock().expect("op state poisoned") = Some(Arc::new(state));
    }

    /// What the forward pass of op `op` kept.
    pub(crate) fn get(&self, op: &str) -> candle_core::Result<Arc<T>> {
        let state = self.0.lock().expect("op state poisoned").clone();
        state
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: backward called before forward")))
    }
}

/// A backward op's flat result cut into the gradients of an op's three arguments, in order,
/// each of its argument's shape.
pub(crate) fn split_grads(
    all: &Tensor,
    args: [&Tensor; 3],
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let mut start = 0;
    let mut next = |arg: &Tensor| -> candle_core::Result<Option<Tensor>> {
        let grad = all
            .narrow(0, start, arg.elem_count())?
            .reshape(arg.shape())?;
        start += arg.elem_count();
        Ok(Some(grad))
    };
    Ok((next(args[0])?, next(args[1])?, next(args[2])?))
}

/// The fused LSTM layer op; see [`lstm_sequence`]. Both passes run [`lstm_plan`]'s plan.
#[derive(Default)]
pub struct FusedLstm {
    saved: Stash<Saved>,
    precision: Precision,
}

/// The f32 data of a contiguous CPU argument of the op.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    super::cpu_slice(s, l, "fused-lstm", what)
}

/// The run's sizes from the layouts of x [T,B,I], w_in [4H,I] and w_hh [4H,H], checked.
fn dims(x: &Layout, w_in: &Layout, w_hh: &Layout) -> candle_core::Result<Dims> {
    let (steps, batch, inputs) = x.shape().dims3()?;
    let (g4, hidden) = w_hh.shape().dims2()?;
    if g4 != 4 * hidden || w_in.shape().dims2()? != (g4, inputs) || steps == 0 {
        candle_core::bail!(
            "fused-lstm: shapes disagree: x {:?}, w_in {:?}, w_hh {:?} (want [T,B,I], [4H,I], [4H,H], T > 0)",
            x.shape(),
            w_in.shape(),
            w_hh.shape()
        );
    }
    Ok(Dims {
        steps,
        batch,
        inputs,
        hidden,
    })
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
        let d = dims(l1, l2, l3)?;
        let (tbh, tbg) = (
            d.steps * d.batch * d.hidden,
            d.steps * d.batch * 4 * d.hidden,
        );
        let mut e = CpuEngine::default();
        e.set_precision(self.precision);
        e.lend(Buf::X, contiguous_f32(s1, l1, "x")?);
        e.lend(Buf::WIn, contiguous_f32(s2, l2, "w_in")?);
        e.lend(Buf::WHh, contiguous_f32(s3, l3, "w_hh")?);
        e.give(Buf::Acts, vec![0f32; tbg]);
        for buf in [Buf::C, Buf::TanhC, Buf::H] {
            e.give(buf, vec![0f32; tbh]);
        }
        lstm_plan::forward(&mut e, d)?;
        self.saved.put(Saved::Cpu(CpuSaved::take(&mut e)));
        Ok((
            CpuStorage::F32(e.take(Buf::H)),
            Shape::from((d.steps, d.batch, d.hidden)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = dims(l1, l2, l3)?;
        let (h, saved) = super::lstm_cuda::forward([(s1, l1), (s2, l2), (s3, l3)], d)?;
        self.saved.put(Saved::Cuda(saved));
        Ok((h, Shape::from((d.steps, d.batch, d.hidden))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_in: &Tensor,
        w_hh: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = FusedLstmGrad {
            saved: self.saved.get(self.name())?,
            h: res.clone(),
            grad: grad_res.contiguous()?,
        };
        // [dx | dw_in | dw_hh], flat.
        split_grads(&x.apply_op3_no_bwd(w_in, w_hh, &grad)?, [x, w_in, w_hh])
    }
}

/// The layer's backward pass as an op over (x, w_in, w_hh), holding the rest: the saved state,
/// the output h and dL/dh. Returns dx, dw_in and dw_hh end to end in one flat tensor.
struct FusedLstmGrad {
    saved: Arc<Saved>,
    h: Tensor,
    grad: Tensor,
}

impl CustomOp3 for FusedLstmGrad {
    fn name(&self) -> &'static str {
        "fused-lstm-grad"
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
        let d = dims(l1, l2, l3)?;
        // Without the cuda feature the match has one arm.
        #[allow(clippy::infallible_destructuring_match)]
        let saved = match &*self.saved {
            Saved::Cpu(saved) => saved,
            #[cfg(feature = "cuda")]
            Saved::Cuda(_) => candle_core::bail!("fused-lstm: the forward pass ran on the GPU"),
        };
        let w_hh = contiguous_f32(s3, l3, "w_hh")?;
        let inputs = [
            (Buf::X, contiguous_f32(s1, l1, "x")?),
            (Buf::WIn, contiguous_f32(s2, l2, "w_in")?),
        ];
        let all = saved.backward(self.name(), d, w_hh, &self.h, &self.grad, &inputs, |e| {
            e.give(Buf::Dx, vec![0f32; d.steps * d.batch * d.inputs]);
            e.give(Buf::DWIn, vec![0f32; 4 * d.hidden * d.inputs]);
            lstm_plan::backward(e, d)?;
            let mut all = e.take(Buf::Dx);
            all.extend_from_slice(&e.take(Buf::DWIn));
            all.extend_from_slice(&e.take(Buf::DWHh));
            Ok(all)
        })?;
        let len = all.len();
        Ok((CpuStorage::F32(all), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let d = dims(l1, l2, l3)?;
        let Saved::Cuda(saved) = &*self.saved else {
            candle_core::bail!("fused-lstm: the forward pass ran on the CPU");
        };
        let (h_st, h_l) = self.h.storage_and_layout();
        let (g_st, g_l) = self.grad.storage_and_layout();
        let (Storage::Cuda(h_st), Storage::Cuda(g_st)) = (&*h_st, &*g_st) else {
            candle_core::bail!("fused-lstm: h or its gradient is not on the GPU");
        };
        let all = super::lstm_cuda::backward(
            [(s1, l1), (s2, l2), (s3, l3), (h_st, h_l), (g_st, g_l)],
            saved,
            d,
        )?;
        let len = d.steps * d.batch * d.inputs + 4 * d.hidden * (d.inputs + d.hidden);
        Ok((all, Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{probed_grads, rand_tensor};
    use candle_core::{Device, Var};

    /// Forward (to 1e-5) and all three gradients (to 1e-4) of `layer` against candle's
    /// autograd on the unfused formulation, with a loss that weights every output differently.
    fn check_against_reference(
        layer: fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
        label: &str,
        steps: usize,
    ) {
        let (t, b, i, h) = (steps, 5, 6, 16);
        let x = Var::from_tensor(&rand_tensor(&[t, b, i], 1, 1.5)).unwrap();
        let w_in = Var::from_tensor(&rand_tensor(&[4 * h, i], 3, 0.5)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[4 * h, h], 2, 0.4)).unwrap();
        let probe = rand_tensor(&[t, b, h], 4, 1.0);

        let fused = layer(&x, &w_in, &w).unwrap();
        let reference = lstm_reference(&x, &w_in, &w).unwrap();
        let fwd = crate::model::max_abs_diff(&fused, &reference);
        println!("{label} forward max diff {fwd:e}");
        assert!(fwd < 1e-5, "forward differs by {fwd}");

        let (gf, gr) = (
            probed_grads(&fused, &probe),
            probed_grads(&reference, &probe),
        );
        for (name, v) in [("x", &x), ("w_in", &w_in), ("w_hh", &w)] {
            let d = crate::model::max_abs_diff(gf.get(v).unwrap(), gr.get(v).unwrap());
            println!("{label} d{name} max diff {d:e}");
            assert!(d < 1e-4, "gradient of {name} differs by {d}");
        }
    }

    #[test]
    fn fused_matches_autograd_reference() {
        check_against_reference(lstm_sequence, "fused-lstm", 7);
        // One step: no recurrent product at all, and dW_hh is zero.
        check_against_reference(lstm_sequence, "fused-lstm, one step", 1);
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
