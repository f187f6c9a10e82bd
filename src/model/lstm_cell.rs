//! The alternative LSTM layer for GPUs (`AVIARY_CUDA_LSTM=cell`; the default is the fused op,
//! `lstm_cuda`): per time step one cuBLAS matmul (through candle) and one fused cell op,
//! instead of the dozen small kernels of the unfused formulation. The cell op
//! ([`LstmCellFwd`]) and its gradient ([`LstmCellBwd`]) run `kernels.cu` on CUDA and the
//! functions below on the CPU; the CUDA kernels are line-by-line transcriptions of them, and
//! the CPU path is tested against candle's autograd on [`super::fused_lstm::lstm_reference`]
//! (in `fused_lstm`'s tests, beside the fused op's). Kept until both paths have been measured
//! on a GPU; the slower one goes then.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// The cell's forward pass for element `j` = (row b, unit k) of a [B, H] state: reads the
/// step's input projection and recurrent term, writes h into `out[j]` and c into
/// `out[bh + j]`. As `lstm_cell_fwd` in `kernels.cu`.
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
    super::fused_lstm::unrolled(x, w_in, w_hh, |xp, hw, c| {
        // Its `bwd` runs LstmCellBwd.
        let hc = xp.apply_op3(hw, c, LstmCellFwd)?;
        Ok((hc.get(0)?, hc.get(1)?))
    })
}

/// The cell's forward pass: (xp [B,4H], hw [B,4H], c_prev [B,H]) → [2, B, H] (h, then c).
pub struct LstmCellFwd;

/// The cell's gradient: (gates [B,4H], c_prev [B,H], grad [2,B,H]) → [B*4H + B*H]
/// (dL/dgates, then dL/dc_prev).
pub struct LstmCellBwd;

/// Runs `cell` for each of the `bh` cells over three contiguous f32 inputs into an output of
/// `per_cell * bh` floats: the CPU side of both ops, as the CUDA kernels run one thread a cell.
fn cpu_cells(
    op: &str,
    bh: usize,
    args: [(&CpuStorage, &Layout, &str); 3],
    per_cell: usize,
    cell: impl Fn(usize, usize, [&[f32]; 3], &mut [f32]),
) -> candle_core::Result<CpuStorage> {
    let [a, b, c] = args;
    let inputs = [
        super::cpu_slice(a.0, a.1, op, a.2)?,
        super::cpu_slice(b.0, b.1, op, b.2)?,
        super::cpu_slice(c.0, c.1, op, c.2)?,
    ];
    let mut out = vec![0f32; per_cell * bh];
    for j in 0..bh {
        cell(j, bh, inputs, &mut out);
    }
    Ok(CpuStorage::F32(out))
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
        let args = [(s1, l1, "xp"), (s2, l2, "hw"), (s3, l3, "c_prev")];
        let out = cpu_cells(self.name(), b * h, args, 2, |j, bh, [xp, hw, cp], out| {
            cell_forward(j, bh, h, xp, hw, cp, out)
        })?;
        Ok((out, Shape::from((2, b, h))))
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
        let out = cuda::launch_cells(
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
        let args = [(s1, l1, "gates"), (s2, l2, "c_prev"), (s3, l3, "grad")];
        let out = cpu_cells(
            self.name(),
            b * h,
            args,
            5,
            |j, bh, [gates, cp, grad], out| cell_backward(j, bh, h, gates, cp, grad, out),
        )?;
        Ok((out, Shape::from(5 * b * h)))
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
        let out = cuda::launch_cells(
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
    use crate::model::cuda::{address, base, launch, Arg};
    use candle_core::backend::BackendStorage;
    use candle_core::{CudaStorage, Layout};

    /// Launches kernel `name` over the B*H cells with three contiguous f32 inputs and an
    /// output of `out_len` floats.
    pub fn launch_cells(
        name: &str,
        batch: usize,
        hidden: usize,
        inputs: [(&CudaStorage, &Layout); 3],
        out_len: usize,
    ) -> candle_core::Result<CudaStorage> {
        let dev = inputs[0].0.device().clone();
        let bh = batch * hidden;
        let mut args = vec![Arg::U32(bh as u32), Arg::U32(hidden as u32)];
        for (s, l) in inputs {
            args.push(Arg::U64(address::<f32>(s, l, name, "input")?));
        }
        // SAFETY: every element is written by the kernel before it is read.
        let out = unsafe { dev.alloc::<f32>(out_len)? };
        args.push(Arg::U64(base(&out, &dev)));
        // SAFETY: the argument list matches the kernel's signature in kernels.cu, and the
        // inputs and output hold what it reads and writes for B*H cells.
        unsafe { launch(&dev, name, bh, &args)? };
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}
