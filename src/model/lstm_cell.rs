//! The LSTM layer for GPUs: per time step one cuBLAS matmul (through candle) and one fused
//! cell op, instead of the dozen small kernels of the unfused formulation. The cell op
//! ([`LstmCellFwd`]) and its gradient ([`LstmCellBwd`]) run `lstm_cell.cu` on CUDA and the
//! functions below on the CPU; the CUDA kernels are line-by-line transcriptions of them, and
//! the CPU path is tested against candle's autograd on [`super::fused_lstm::lstm_reference`].

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// The cell's forward pass for element `j` = (row b, unit k) of a [B, H] state: reads the
/// step's input projection and recurrent term, writes h into `out[j]` and c into
/// `out[bh + j]`. As `lstm_cell_fwd` in `lstm_cell.cu`.
#[inline]
fn cell_forward(
    j: usize,
    bh: usize,
    hidden: usize,
    xp: &[f32],
    hw: &[f32],
    c_prev: &[f32],
    out: &mut [f32],
) {
    let (b, k) = (j / hidden, j % hidden);
    let g0 = b * 4 * hidden + k;
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    let i = sig(xp[g0] + hw[g0]);
    let f = sig(xp[g0 + hidden] + hw[g0 + hidden]);
    let g = (xp[g0 + 2 * hidden] + hw[g0 + 2 * hidden]).tanh();
    let o = sig(xp[g0 + 3 * hidden] + hw[g0 + 3 * hidden]);
    let c = f * c_prev[j] + i * g;
    out[j] = o * c.tanh();
    out[bh + j] = c;
}

/// The cell's backward pass for element `j`: from the pre-activation gates, the previous cell
/// state and dL/dh, dL/dc, writes dL/dgates (four values) and dL/dc_prev. As `lstm_cell_bwd`.
#[inline]
fn cell_backward(
    j: usize,
    bh: usize,
    hidden: usize,
    gates: &[f32],
    c_prev: &[f32],
    grad: &[f32],
    out: &mut [f32],
) {
    let (b, k) = (j / hidden, j % hidden);
    let g0 = b * 4 * hidden + k;
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    let i = sig(gates[g0]);
    let f = sig(gates[g0 + hidden]);
    let g = gates[g0 + 2 * hidden].tanh();
    let o = sig(gates[g0 + 3 * hidden]);
    let cp = c_prev[j];
    let tc = (f * cp + i * g).tanh();
    let dh = grad[j];
    let dc = grad[bh + j] + dh * o * (1.0 - tc * tc);
    out[g0] = dc * g * i * (1.0 - i);
    out[g0 + hidden] = dc * cp * f * (1.0 - f);
    out[g0 + 2 * hidden] = dc * i * (1.0 - g * g);
    out[g0 + 3 * hidden] = dh * tc * o * (1.0 - o);
    out[4 * bh + j] = dc * f;
}

/// Runs an LSTM layer over a sequence from zero state with the cell op: same arguments and
/// result as [`super::fused_lstm::lstm_sequence`].
pub fn lstm_cell_sequence(x: &Tensor, w_in: &Tensor, w_hh: &Tensor) -> candle_core::Result<Tensor> {
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
        let hw = h.matmul(&w_t)?;
        // Its `bwd` runs LstmCellBwd.
        let hc = xproj.get(t)?.apply_op3(&hw, &c, LstmCellFwd)?;
        h = hc.get(0)?;
        c = hc.get(1)?;
        hs.push(h.clone());
    }
    Tensor::stack(&hs, 0)
}

/// The cell's forward pass: (xp [B,4H], hw [B,4H], c_prev [B,H]) → [2, B, H] (h, then c).
pub struct LstmCellFwd;

/// The cell's gradient: (gates [B,4H], c_prev [B,H], grad [2,B,H]) → [B*4H + B*H]
/// (dL/dgates, then dL/dc_prev).
pub struct LstmCellBwd;

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!(
            "{op}: {what} must be contiguous, got strides {:?}",
            l.stride()
        );
    };
    Ok(&s.as_slice::<f32>()?[a..b])
}

/// (B, H) of a cell op's arguments, checked.
fn cell_dims(
    gates: &Layout,
    c_prev: &Layout,
    third: Option<&Layout>,
    op: &str,
) -> candle_core::Result<(usize, usize)> {
    let (b, g4) = gates.shape().dims2()?;
    let (b2, h) = c_prev.shape().dims2()?;
    let third_ok =
        third.is_none_or(|l| l.shape().dims() == [2, b, h] || l.shape().dims() == [b, g4]);
    if b != b2 || g4 != 4 * h || !third_ok {
        candle_core::bail!(
            "{op}: shapes disagree: {:?}, {:?}{}",
            gates.shape(),
            c_prev.shape(),
            third
                .map(|l| format!(", {:?}", l.shape()))
                .unwrap_or_default()
        );
    }
    Ok((b, h))
}

impl CustomOp3 for LstmCellFwd {
    fn name(&self) -> &'static str {
        "lstm-cell"
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
        let (b, h) = cell_dims(l1, l3, Some(l2), self.name())?;
        let (xp, hw, cp) = (
            f32s(s1, l1, self.name(), "xp")?,
            f32s(s2, l2, self.name(), "hw")?,
            f32s(s3, l3, self.name(), "c_prev")?,
        );
        let bh = b * h;
        let mut out = vec![0f32; 2 * bh];
        for j in 0..bh {
            cell_forward(j, bh, h, xp, hw, cp, &mut out);
        }
        Ok((CpuStorage::F32(out), Shape::from((2, b, h))))
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
        let (b, h) = cell_dims(l1, l3, Some(l2), self.name())?;
        let out = cuda::launch(
            "lstm_cell_fwd",
            b,
            h,
            [(s1, l1), (s2, l2), (s3, l3)],
            2 * b * h,
        )?;
        Ok((out, Shape::from((2, b, h))))
    }

    fn bwd(
        &self,
        xp: &Tensor,
        hw: &Tensor,
        c_prev: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, g4) = xp.dims2()?;
        let gates = xp.add(hw)?;
        let g =
            gates.apply_op3_no_bwd(&c_prev.contiguous()?, &grad_res.contiguous()?, &LstmCellBwd)?;
        let dgates = g.narrow(0, 0, b * g4)?.reshape((b, g4))?;
        let dc_prev = g.narrow(0, b * g4, b * g4 / 4)?.reshape((b, g4 / 4))?;
        Ok((Some(dgates.clone()), Some(dgates), Some(dc_prev)))
    }
}

impl CustomOp3 for LstmCellBwd {
    fn name(&self) -> &'static str {
        "lstm-cell-bwd"
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
        let (b, h) = cell_dims(l1, l2, Some(l3), self.name())?;
        let (gates, cp, grad) = (
            f32s(s1, l1, self.name(), "gates")?,
            f32s(s2, l2, self.name(), "c_prev")?,
            f32s(s3, l3, self.name(), "grad")?,
        );
        let bh = b * h;
        let mut out = vec![0f32; 5 * bh];
        for j in 0..bh {
            cell_backward(j, bh, h, gates, cp, grad, &mut out);
        }
        Ok((CpuStorage::F32(out), Shape::from(5 * bh)))
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
        let (b, h) = cell_dims(l1, l2, Some(l3), self.name())?;
        let out = cuda::launch(
            "lstm_cell_bwd",
            b,
            h,
            [(s1, l1), (s2, l2), (s3, l3)],
            5 * b * h,
        )?;
        Ok((out, Shape::from(5 * b * h)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaStorage, Layout};

    /// `lstm_cell.cu`, compiled to PTX by build.rs.
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lstm_cell.ptx"));

    /// Launches kernel `name` over the B*H cells with three contiguous f32 inputs and an
    /// output of `out_len` floats.
    pub fn launch(
        name: &str,
        batch: usize,
        hidden: usize,
        args: [(&CudaStorage, &Layout); 3],
        out_len: usize,
    ) -> candle_core::Result<CudaStorage> {
        let dev = args[0].0.device().clone();
        let mut slices = Vec::with_capacity(3);
        for (s, l) in args {
            let Some((a, b)) = l.contiguous_offsets() else {
                candle_core::bail!(
                    "{name}: inputs must be contiguous, got strides {:?}",
                    l.stride()
                );
            };
            slices.push(s.as_cuda_slice::<f32>()?.slice(a..b));
        }
        let func = dev.get_or_load_custom_func(name, "aviary_lstm_cell", PTX)?;
        // SAFETY: every element is written by the kernel before it is read.
        let out = unsafe { dev.alloc::<f32>(out_len)? };
        let bh = (batch * hidden) as u32;
        let h = hidden as u32;
        let mut builder = func.builder();
        builder.arg(&bh);
        builder.arg(&h);
        for s in &slices {
            builder.arg(s);
        }
        builder.arg(&out);
        // SAFETY: the argument list matches the kernel's signature in lstm_cell.cu.
        unsafe { builder.launch(LaunchConfig::for_num_elems(bh)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused_lstm::lstm_reference;
    use candle_core::{Device, Var};

    fn rand_tensor(shape: &[usize], seed: u64, scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// The cell-op layer against candle's autograd on the unfused formulation: forward and
    /// the gradients of all three inputs, to 1e-4 (what the CUDA kernels transcribe).
    #[test]
    fn cell_op_matches_the_unfused_reference() {
        let (t, b, i, h) = (6, 4, 5, 8);
        let x = Var::from_tensor(&rand_tensor(&[t, b, i], 1, 1.5)).unwrap();
        let w_in = Var::from_tensor(&rand_tensor(&[4 * h, i], 3, 0.5)).unwrap();
        let w = Var::from_tensor(&rand_tensor(&[4 * h, h], 2, 0.4)).unwrap();
        let probe = rand_tensor(&[t, b, h], 4, 1.0);
        let ours = lstm_cell_sequence(&x, &w_in, &w).unwrap();
        let reference = lstm_reference(&x, &w_in, &w).unwrap();
        let fwd = crate::model::max_abs_diff(&ours, &reference);
        assert!(fwd < 1e-5, "forward differs by {fwd}");
        let grads = |out: &Tensor| {
            let g = out
                .mul(&probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [&x, &w_in, &w].map(|v| g.get(v.as_tensor()).unwrap().clone())
        };
        for (name, (a, b)) in ["x", "w_in", "w_hh"]
            .iter()
            .zip(grads(&ours).iter().zip(grads(&reference).iter()))
        {
            let d = crate::model::max_abs_diff(a, b);
            assert!(d < 1e-4, "d{name} differs by {d}");
        }
    }
}
