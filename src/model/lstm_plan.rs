//! The LSTM layer's forward and backward passes over a whole sequence as a plan of a few
//! kinds of step (a matrix product, a cell forward, a cell backward) over named buffers, run
//! by an [`Engine`]: [`CpuEngine`] on the CPU, `lstm_cuda::CudaEngine` with cuBLAS and two
//! kernels on CUDA. One plan serves both, so the CPU tests of the fused op (against autograd
//! and finite differences) check the GPU's order of work, offsets and transposes too; what is
//! left to the GPU is [`RowGemm::cublas`] (tested here against a column-major emulator) and
//! the two kernels (transcriptions of `cpu_kernels::cell_forward` / `cell_backward`).

use std::borrow::Cow;

use super::cpu_kernels::{gemm, par_cell_backward, par_cell_forward, Mat, PackedB};

/// The sizes of one layer's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Time steps T.
    pub steps: usize,
    /// Batch rows B.
    pub batch: usize,
    /// Input width I (with the bias column of ones).
    pub inputs: usize,
    /// Units H.
    pub hidden: usize,
}

/// The buffers a run reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buf {
    /// Input [T,B,I].
    X,
    /// Input weights with the biases as last column [4H,I].
    WIn,
    /// Recurrent weights [4H,H].
    WHh,
    /// Gate pre-activations, then activations [T,B,4H] (forward).
    Acts,
    /// Cell states [T,B,H] (forward).
    C,
    /// tanh of the cell states [T,B,H] (forward).
    TanhC,
    /// Hidden states, the layer's output [T,B,H] (forward).
    H,
    /// dL/dh [T,B,H]: from above on entry, then with the recurrent part added (backward).
    Dh,
    /// dL/dc [B,H] carried back one step at a time; zero on entry (backward).
    Dc,
    /// dL/d(gate pre-activations) [T,B,4H] (backward).
    DGates,
    /// dL/dx [T,B,I] (result).
    Dx,
    /// dL/dw_in [4H,I] (result).
    DWIn,
    /// dL/dw_hh [4H,H] (result).
    DWHh,
}

/// How many [`Buf`]s there are.
pub const BUFS: usize = 13;

/// An operand: a buffer, at an element offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At(pub Buf, pub usize);

/// A row-major product `C[m,n] (+)= op(A)[m,k] op(B)[k,n]` over contiguous operands: A is
/// stored [m,k] (or [k,m] when `a_t`), B [k,n] (or [n,k] when `b_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGemm {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The inner dimension.
    pub k: usize,
    /// A is stored transposed.
    pub a_t: bool,
    /// B is stored transposed.
    pub b_t: bool,
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
}

/// A column-major `sgemm` call as cuBLAS takes it: `C = op(A) op(B) + beta C`, alpha 1, where
/// cuBLAS's A is the row-major product's B and its B the product's A.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CublasCall {
    /// op(A) = A^T.
    pub trans_a: bool,
    /// op(B) = B^T.
    pub trans_b: bool,
    /// Rows of (column-major) C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The inner dimension.
    pub k: usize,
    /// Leading dimension of A.
    pub lda: usize,
    /// Leading dimension of B.
    pub ldb: usize,
    /// Leading dimension of C.
    pub ldc: usize,
    /// 0 to overwrite C, 1 to add to it.
    pub beta: f32,
}

impl RowGemm {
    /// The product as cuBLAS's column-major call: a row-major matrix is its transpose read
    /// column-major, so C^T [n,m] = op(B)^T op(A)^T with B passed first.
    pub fn cublas(self) -> CublasCall {
        CublasCall {
            trans_a: self.b_t,
            trans_b: self.a_t,
            m: self.n,
            n: self.m,
            k: self.k,
            lda: if self.b_t { self.k } else { self.n },
            ldb: if self.a_t { self.m } else { self.k },
            ldc: self.n,
            beta: if self.accumulate { 1.0 } else { 0.0 },
        }
    }

    fn a_mat(self, data: &[f32]) -> Mat<'_> {
        let len = self.m * self.k;
        if self.a_t {
            Mat::new(&data[..len], self.k, self.m).t()
        } else {
            Mat::new(&data[..len], self.m, self.k)
        }
    }

    fn b_mat(self, data: &[f32]) -> Mat<'_> {
        let len = self.k * self.n;
        if self.b_t {
            Mat::new(&data[..len], self.n, self.k).t()
        } else {
            Mat::new(&data[..len], self.k, self.n)
        }
    }
}

/// What runs a plan's steps.
pub trait Engine {
    /// The product `c (+)= op(a) op(b)`; `c` is never the buffer of `a` or `b`.
    fn gemm(&mut self, g: RowGemm, a: At, b: At, c: At) -> candle_core::Result<()>;

    /// `cpu_kernels::cell_forward` over `rows` rows: `gates` [rows,4H] pre-activations in,
    /// activations out; writes `c`, `tanh_c` and `h` [rows,H]; `c_prev` None means zeros.
    #[allow(clippy::too_many_arguments)]
    fn cell_forward(
        &mut self,
        rows: usize,
        hidden: usize,
        gates: At,
        c_prev: Option<At>,
        c: At,
        tanh_c: At,
        h: At,
    ) -> candle_core::Result<()>;

    /// `kernels::cell_backward` over `rows` rows: `dc` [rows,H] in place, writes `dgates`.
    #[allow(clippy::too_many_arguments)]
    fn cell_backward(
        &mut self,
        rows: usize,
        hidden: usize,
        acts: At,
        c_prev: Option<At>,
        tanh_c: At,
        dh: At,
        dc: At,
        dgates: At,
    ) -> candle_core::Result<()>;
}

/// The forward pass: reads `X`, `WIn`, `WHh`; writes `Acts`, `C`, `TanhC`, `H`.
pub fn forward(e: &mut impl Engine, d: Dims) -> candle_core::Result<()> {
    // The input projection of every step (biases included): [TB, I] x [I, 4H].
    let all_steps = RowGemm {
        m: d.steps * d.batch,
        n: 4 * d.hidden,
        k: d.inputs,
        a_t: false,
        b_t: true,
        accumulate: false,
    };
    e.gemm(all_steps, At(Buf::X, 0), At(Buf::WIn, 0), At(Buf::Acts, 0))?;
    recurrence(e, d)
}

/// The forward pass after the input projection: `Acts` holds each step's input gates (input
/// projection plus biases) on entry; writes `Acts` (activated), `C`, `TanhC` and `H`. Reads
/// neither `X` nor `WIn`.
pub fn recurrence(e: &mut impl Engine, d: Dims) -> candle_core::Result<()> {
    let (b, h, g4) = (d.batch, d.hidden, 4 * d.hidden);
    let bh = b * h;
    // gates_t += h_{t-1} W_hh^T: [B, H] x [H, 4H].
    let recurrent = RowGemm {
        m: b,
        n: g4,
        k: h,
        a_t: false,
        b_t: true,
        accumulate: true,
    };
    for t in 0..d.steps {
        let gates = At(Buf::Acts, t * b * g4);
        if t > 0 {
            e.gemm(recurrent, At(Buf::H, (t - 1) * bh), At(Buf::WHh, 0), gates)?;
        }
        let c_prev = (t > 0).then(|| At(Buf::C, (t - 1) * bh));
        let now = t * bh;
        e.cell_forward(
            b,
            h,
            gates,
            c_prev,
            At(Buf::C, now),
            At(Buf::TanhC, now),
            At(Buf::H, now),
        )?;
    }
    Ok(())
}

/// The backward pass (BPTT) after [`forward`]: reads its buffers and `Dh`; writes `DGates`,
/// `Dx`, `DWIn`, `DWHh` (and uses `Dh`, `Dc` as scratch).
pub fn backward(e: &mut impl Engine, d: Dims) -> candle_core::Result<()> {
    recurrence_backward(e, d)?;
    input_gradients(e, d)
}

/// The backward pass through the recurrence after [`recurrence`]: writes `DGates` and `DWHh`
/// (and uses `Dh`, `Dc` as scratch); reads neither `X` nor `WIn`.
pub fn recurrence_backward(e: &mut impl Engine, d: Dims) -> candle_core::Result<()> {
    let (b, h, g4) = (d.batch, d.hidden, 4 * d.hidden);
    let bh = b * h;
    // dh_t += dgates_{t+1} W_hh: [B, 4H] x [4H, H].
    let recurrent = RowGemm {
        m: b,
        n: h,
        k: g4,
        a_t: false,
        b_t: false,
        accumulate: true,
    };
    for t in (0..d.steps).rev() {
        let dh = At(Buf::Dh, t * bh);
        if t + 1 < d.steps {
            let next = At(Buf::DGates, (t + 1) * b * g4);
            e.gemm(recurrent, next, At(Buf::WHh, 0), dh)?;
        }
        let c_prev = (t > 0).then(|| At(Buf::C, (t - 1) * bh));
        e.cell_backward(
            b,
            h,
            At(Buf::Acts, t * b * g4),
            c_prev,
            At(Buf::TanhC, t * bh),
            dh,
            At(Buf::Dc, 0),
            At(Buf::DGates, t * b * g4),
        )?;
    }
    // dW_hh = sum_t dgates_t^T h_{t-1}: one [4H, (T-1)B] x [(T-1)B, H] product.
    let dw_hh = RowGemm {
        m: g4,
        n: h,
        k: (d.steps - 1) * b,
        a_t: true,
        b_t: false,
        accumulate: false,
    };
    e.gemm(
        dw_hh,
        At(Buf::DGates, b * g4),
        At(Buf::H, 0),
        At(Buf::DWHh, 0),
    )
}

/// The input's gradients from `DGates`: writes `Dx` and `DWIn`.
pub fn input_gradients(e: &mut impl Engine, d: Dims) -> candle_core::Result<()> {
    let g4 = 4 * d.hidden;
    // dx = dgates W_in: [TB, 4H] x [4H, I].
    let dx = RowGemm {
        m: d.steps * d.batch,
        n: d.inputs,
        k: g4,
        a_t: false,
        b_t: false,
        accumulate: false,
    };
    e.gemm(dx, At(Buf::DGates, 0), At(Buf::WIn, 0), At(Buf::Dx, 0))?;
    // dW_in = dgates^T x: [4H, TB] x [TB, I].
    let dw_in = RowGemm {
        m: g4,
        n: d.inputs,
        k: d.steps * d.batch,
        a_t: true,
        b_t: false,
        accumulate: false,
    };
    e.gemm(dw_in, At(Buf::DGates, 0), At(Buf::X, 0), At(Buf::DWIn, 0))
}

/// The plan on the CPU: each buffer borrowed (inputs, saved state) or owned (results), the
/// recurrent weights packed once per orientation, the cell loops on the thread pool.
#[derive(Default)]
pub struct CpuEngine<'a> {
    bufs: [Cow<'a, [f32]>; BUFS],
    packed: Vec<(bool, PackedB)>,
}

impl<'a> CpuEngine<'a> {
    /// Lends `data` to the run as `buf`.
    pub fn lend(&mut self, buf: Buf, data: &'a [f32]) {
        self.bufs[buf as usize] = Cow::Borrowed(data);
    }

    /// Gives the run an owned `buf` of `data`.
    pub fn give(&mut self, buf: Buf, data: Vec<f32>) {
        self.bufs[buf as usize] = Cow::Owned(data);
    }

    /// Takes `buf` back out of the run.
    pub fn take(&mut self, buf: Buf) -> Vec<f32> {
        std::mem::take(&mut self.bufs[buf as usize]).into_owned()
    }

    fn read(&self, at: At) -> &[f32] {
        &self.bufs[at.0 as usize][at.1..]
    }

    /// `at`'s buffer from its offset on, for writing, taken out of the engine so that other
    /// buffers can be read meanwhile; put it back with [`CpuEngine::put`].
    fn take_owned(&mut self, buf: Buf) -> candle_core::Result<Vec<f32>> {
        match std::mem::take(&mut self.bufs[buf as usize]) {
            Cow::Owned(v) => Ok(v),
            Cow::Borrowed(_) => candle_core::bail!("lstm plan: {buf:?} is read-only"),
        }
    }

    fn put(&mut self, buf: Buf, v: Vec<f32>) {
        self.bufs[buf as usize] = Cow::Owned(v);
    }
}

impl Engine for CpuEngine<'_> {
    fn gemm(&mut self, g: RowGemm, a: At, b: At, c: At) -> candle_core::Result<()> {
        let mut out = self.take_owned(c.0)?;
        let dst = &mut out[c.1..c.1 + g.m * g.n];
        if b.0 == Buf::WHh {
            // The same B at every step: pack it once per orientation.
            if !self.packed.iter().any(|(t, _)| *t == g.b_t) {
                let packed = PackedB::pack(g.b_mat(self.read(b)));
                self.packed.push((g.b_t, packed));
            }
            let packed = &self.packed.iter().find(|(t, _)| *t == g.b_t).unwrap().1;
            assert!(!g.a_t, "lstm plan: packed products take A as stored");
            packed.gemm(dst, &self.read(a)[..g.m * g.k], g.accumulate);
        } else {
            gemm(
                dst,
                g.a_mat(self.read(a)),
                g.b_mat(self.read(b)),
                g.accumulate,
            );
        }
        self.put(c.0, out);
        Ok(())
    }

    fn cell_forward(
        &mut self,
        rows: usize,
        hidden: usize,
        gates: At,
        c_prev: Option<At>,
        c: At,
        tanh_c: At,
        h: At,
    ) -> candle_core::Result<()> {
        let (n, n4) = (rows * hidden, 4 * rows * hidden);
        let mut gv = self.take_owned(gates.0)?;
        let mut cv = self.take_owned(c.0)?;
        let mut tv = self.take_owned(tanh_c.0)?;
        let mut hv = self.take_owned(h.0)?;
        // c_prev lies in C before c (step t-1, then t).
        let (before, after) = cv.split_at_mut(c.1);
        let cp = c_prev.map(|p| &before[p.1..p.1 + n]);
        par_cell_forward(
            &mut gv[gates.1..gates.1 + n4],
            cp,
            &mut after[..n],
            &mut tv[tanh_c.1..tanh_c.1 + n],
            &mut hv[h.1..h.1 + n],
            hidden,
        );
        for (buf, v) in [(gates.0, gv), (c.0, cv), (tanh_c.0, tv), (h.0, hv)] {
            self.put(buf, v);
        }
        Ok(())
    }

    fn cell_backward(
        &mut self,
        rows: usize,
        hidden: usize,
        acts: At,
        c_prev: Option<At>,
        tanh_c: At,
        dh: At,
        dc: At,
        dgates: At,
    ) -> candle_core::Result<()> {
        let (n, n4) = (rows * hidden, 4 * rows * hidden);
        let mut dcv = self.take_owned(dc.0)?;
        let mut dgv = self.take_owned(dgates.0)?;
        par_cell_backward(
            &self.read(acts)[..n4],
            c_prev.map(|p| &self.read(p)[..n]),
            &self.read(tanh_c)[..n],
            &self.read(dh)[..n],
            &mut dcv[dc.1..dc.1 + n],
            &mut dgv[dgates.1..dgates.1 + n4],
            hidden,
        );
        self.put(dc.0, dcv);
        self.put(dgates.0, dgv);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cuBLAS's `sgemm` by its definition (column-major), for checking [`RowGemm::cublas`].
    fn column_major_sgemm(call: CublasCall, a: &[f32], b: &[f32], c: &mut [f32]) {
        for j in 0..call.n {
            for i in 0..call.m {
                let mut s = 0f32;
                for p in 0..call.k {
                    let x = if call.trans_a {
                        a[p + i * call.lda]
                    } else {
                        a[i + p * call.lda]
                    };
                    let y = if call.trans_b {
                        b[j + p * call.ldb]
                    } else {
                        b[p + j * call.ldb]
                    };
                    s += x * y;
                }
                let out = &mut c[i + j * call.ldc];
                *out = s + call.beta * *out;
            }
        }
    }

    /// Every orientation the plan uses (and the rest), accumulating or not: the cuBLAS call
    /// computes the same row-major product as the CPU gemm.
    #[test]
    fn cublas_call_computes_the_row_major_product() {
        let (m, n, k) = (5, 7, 3);
        let data = |len: usize, seed: usize| -> Vec<f32> {
            (0..len)
                .map(|i| ((i * 7 + seed * 13) % 11) as f32 - 5.0)
                .collect()
        };
        for a_t in [false, true] {
            for b_t in [false, true] {
                for accumulate in [false, true] {
                    let g = RowGemm {
                        m,
                        n,
                        k,
                        a_t,
                        b_t,
                        accumulate,
                    };
                    let (a, b) = (data(m * k, 1), data(k * n, 2));
                    let mut want = data(m * n, 3);
                    gemm(&mut want, g.a_mat(&a), g.b_mat(&b), accumulate);
                    let call = g.cublas();
                    let mut got = data(m * n, 3);
                    column_major_sgemm(call, &b, &a, &mut got);
                    assert_eq!(got, want, "a_t {a_t} b_t {b_t} accumulate {accumulate}");
                }
            }
        }
    }
}
