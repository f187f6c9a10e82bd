//! The LSTM layer's forward and backward passes over a whole sequence as a plan of a few
//! kinds of step (a matrix product, a cell forward, a cell backward) over named buffers, run
//! by an [`Engine`]: [`CpuEngine`] on the CPU, `lstm_cuda::CudaEngine` with cuBLAS and two
//! kernels on CUDA. One plan serves both, so the CPU tests of the fused op (against autograd
//! and finite differences) check the GPU's order of work, offsets and transposes too (the CPU
//! runs the time steps in row groups, which a test holds to the plan's order bit for bit); what is
//! left to the GPU is [`RowGemm::cublas`] (tested here against a column-major emulator) and
//! the two kernels (transcriptions of `cpu_kernels::cell_forward` / `cell_backward`).

use std::borrow::Cow;

use rayon::prelude::*;

use super::bf16::{self, Packed, Precision};
use super::cpu_kernels::{cell_backward, cell_forward, par_cell_backward, par_cell_forward, Mat};

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

    /// The time steps of [`recurrence`]: by default [`steps_forward`], one product and one cell
    /// pass at a time. An engine may run them otherwise with the same result.
    fn steps_forward(&mut self, d: Dims) -> candle_core::Result<()>
    where
        Self: Sized,
    {
        steps_forward(self, d)
    }

    /// The time steps of [`recurrence_backward`] (all but dW_hh): by default
    /// [`steps_backward`].
    fn steps_backward(&mut self, d: Dims) -> candle_core::Result<()>
    where
        Self: Sized,
    {
        steps_backward(self, d)
    }
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
    e.steps_forward(d)
}

/// [`recurrence`]'s time steps one after another: per step the recurrent product over the
/// whole batch, then the cell pass.
pub fn steps_forward(e: &mut impl Engine, d: Dims) -> candle_core::Result<()> {
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
    e.steps_backward(d)?;
    let (b, h, g4) = (d.batch, d.hidden, 4 * d.hidden);
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

/// [`recurrence_backward`]'s time steps, last first: per step the recurrent product over the
/// whole batch, then the cell pass. Writes `DGates` (and uses `Dh`, `Dc`).
pub fn steps_backward(e: &mut impl Engine, d: Dims) -> candle_core::Result<()> {
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
    Ok(())
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
///
/// The recurrence's time steps run in row groups: a batch row's recurrence never reads another
/// row, so each thread runs every time step for its own block of the batch's rows, with no
/// hand-off between the threads at each step's product and cell pass (and each step's gates
/// still in its own cache). The same products and cell loops row for row, so the same bits as
/// the plan's steps one by one ([`CpuEngine::step_by_step`], tested).
#[derive(Default)]
pub struct CpuEngine<'a> {
    bufs: [Cow<'a, [f32]>; BUFS],
    packed: Vec<(bool, Packed)>,
    step_by_step: bool,
    precision: Precision,
}

/// Batches below this many rows run the time steps as the plan lists them: a thread's block
/// would be too small to pay for the rest of the step.
const MIN_GROUP_ROWS: usize = 8;

impl<'a> CpuEngine<'a> {
    /// Lends `data` to the run as `buf`.
    pub fn lend(&mut self, buf: Buf, data: &'a [f32]) {
        self.bufs[buf as usize] = Cow::Borrowed(data);
    }

    /// Gives the run an owned `buf` of `data`.
    pub fn give(&mut self, buf: Buf, data: Vec<f32>) {
        self.bufs[buf as usize] = Cow::Owned(data);
    }

    /// Runs every product at precision `p` (f32 by default).
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
    }

    /// The precision of its products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs the recurrence's time steps as the plan lists them, each product and cell pass
    /// over the whole batch, instead of in row groups (for comparing the two).
    pub fn step_by_step(&mut self) {
        self.step_by_step = true;
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

    /// Packs W_hh as a product's B [k, n], transposed (`b_t`) or as stored, unless it is
    /// packed so already: once a run.
    fn pack_w_hh(&mut self, b_t: bool, k: usize, n: usize) {
        if self.packed.iter().any(|(t, _)| *t == b_t) {
            return;
        }
        let data = &self.read(At(Buf::WHh, 0))[..k * n];
        let stored = if b_t {
            Mat::new(data, n, k).t()
        } else {
            Mat::new(data, k, n)
        };
        let packed = Packed::pack(stored, self.precision);
        self.packed.push((b_t, packed));
    }

    /// W_hh as [`CpuEngine::pack_w_hh`] packed it.
    fn packed_w_hh(&self, b_t: bool) -> &Packed {
        let packed = self.packed.iter().find(|(t, _)| *t == b_t);
        &packed.expect("lstm plan: W_hh is packed before use").1
    }

    /// The batch's rows in one block per thread, or none where the plan's steps one by one
    /// should run.
    fn row_groups(&self, batch: usize) -> Option<Vec<std::ops::Range<usize>>> {
        let threads = candle_core::utils::get_num_threads();
        let rows = batch.div_ceil(threads.max(1));
        if self.step_by_step || threads < 2 || rows < MIN_GROUP_ROWS {
            return None;
        }
        Some(
            (0..batch)
                .step_by(rows)
                .map(|r| r..(r + rows).min(batch))
                .collect(),
        )
    }
}

/// Cuts each of the `steps` slabs of `data` ([steps, batch, width]) into the rows of each
/// group: `out[group][t]` is group `group`'s rows of step `t`.
fn group_rows<'b>(
    data: &'b mut [f32],
    groups: &[std::ops::Range<usize>],
    steps: usize,
    width: usize,
) -> Vec<Vec<&'b mut [f32]>> {
    let slab = data.len() / steps.max(1);
    let mut out: Vec<Vec<&mut [f32]>> = groups.iter().map(|_| Vec::with_capacity(steps)).collect();
    for step in data.chunks_exact_mut(slab) {
        let mut rest = step;
        for (g, rows) in groups.iter().enumerate() {
            let (mine, tail) = rest.split_at_mut(rows.len() * width);
            out[g].push(mine);
            rest = tail;
        }
    }
    out
}

/// The rows `rows` of each step's slab of `data` ([steps, batch, width]).
fn rows_of<'b>(
    data: &'b [f32],
    rows: &std::ops::Range<usize>,
    batch: usize,
    width: usize,
) -> Vec<&'b [f32]> {
    data.chunks_exact(batch * width)
        .map(|step| &step[rows.start * width..rows.end * width])
        .collect()
}

impl Engine for CpuEngine<'_> {
    fn gemm(&mut self, g: RowGemm, a: At, b: At, c: At) -> candle_core::Result<()> {
        let mut out = self.take_owned(c.0)?;
        let dst = &mut out[c.1..c.1 + g.m * g.n];
        if b.0 == Buf::WHh {
            // The same B at every step: pack it once per orientation.
            assert!(b.1 == 0, "lstm plan: W_hh is read whole");
            self.pack_w_hh(g.b_t, g.k, g.n);
            let packed = self.packed_w_hh(g.b_t);
            assert!(!g.a_t, "lstm plan: packed products take A as stored");
            packed.gemm(dst, &self.read(a)[..g.m * g.k], g.accumulate);
        } else {
            bf16::gemm(
                self.precision,
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

    fn steps_forward(&mut self, d: Dims) -> candle_core::Result<()> {
        let Some(groups) = self.row_groups(d.batch) else {
            return steps_forward(self, d);
        };
        let (t_all, h, g4) = (d.steps, d.hidden, 4 * d.hidden);
        self.pack_w_hh(true, h, g4);
        let mut acts = self.take_owned(Buf::Acts)?;
        let mut c = self.take_owned(Buf::C)?;
        let mut tanh_c = self.take_owned(Buf::TanhC)?;
        let mut hs = self.take_owned(Buf::H)?;
        let span = t_all * d.batch;
        let w_hh = self.packed_w_hh(true);
        let parts = group_rows(&mut acts[..span * g4], &groups, t_all, g4)
            .into_iter()
            .zip(group_rows(&mut c[..span * h], &groups, t_all, h))
            .zip(group_rows(&mut tanh_c[..span * h], &groups, t_all, h))
            .zip(group_rows(&mut hs[..span * h], &groups, t_all, h));
        parts.collect::<Vec<_>>().into_par_iter().for_each(
            |(((mut acts, mut c), mut tanh_c), mut hs)| {
                for t in 0..t_all {
                    let (h_before, h_now) = hs.split_at_mut(t);
                    let (c_before, c_now) = c.split_at_mut(t);
                    if let Some(h_prev) = h_before.last() {
                        w_hh.gemm_rows(acts[t], h_prev, true);
                    }
                    let c_prev = c_before.last().map(|c| &**c);
                    cell_forward(acts[t], c_prev, c_now[0], tanh_c[t], h_now[0], h);
                }
            },
        );
        for (buf, v) in [
            (Buf::Acts, acts),
            (Buf::C, c),
            (Buf::TanhC, tanh_c),
            (Buf::H, hs),
        ] {
            self.put(buf, v);
        }
        Ok(())
    }

    fn steps_backward(&mut self, d: Dims) -> candle_core::Result<()> {
        let Some(groups) = self.row_groups(d.batch) else {
            return steps_backward(self, d);
        };
        let (t_all, b, h, g4) = (d.steps, d.batch, d.hidden, 4 * d.hidden);
        self.pack_w_hh(false, g4, h);
        let mut dh = self.take_owned(Buf::Dh)?;
        let mut dc = self.take_owned(Buf::Dc)?;
        let mut dgates = self.take_owned(Buf::DGates)?;
        let span = t_all * b;
        let w_hh = self.packed_w_hh(false);
        let (acts, c, tanh_c) = (
            &self.read(At(Buf::Acts, 0))[..span * g4],
            &self.read(At(Buf::C, 0))[..span * h],
            &self.read(At(Buf::TanhC, 0))[..span * h],
        );
        let parts = group_rows(&mut dh[..span * h], &groups, t_all, h)
            .into_iter()
            .zip(group_rows(&mut dc[..b * h], &groups, 1, h))
            .zip(group_rows(&mut dgates[..span * g4], &groups, t_all, g4))
            .zip(&groups);
        parts.collect::<Vec<_>>().into_par_iter().for_each(
            |(((mut dh, mut dc), mut dgates), rows)| {
                let (acts, c, tanh_c) = (
                    rows_of(acts, rows, b, g4),
                    rows_of(c, rows, b, h),
                    rows_of(tanh_c, rows, b, h),
                );
                for t in (0..t_all).rev() {
                    let (dg_now, dg_after) = dgates.split_at_mut(t + 1);
                    if let Some(next) = dg_after.first() {
                        w_hh.gemm_rows(dh[t], next, true);
                    }
                    let c_prev = t.checked_sub(1).map(|p| c[p]);
                    cell_backward(acts[t], c_prev, tanh_c[t], dh[t], dc[0], dg_now[t], h);
                }
            },
        );
        for (buf, v) in [(Buf::Dh, dh), (Buf::Dc, dc), (Buf::DGates, dgates)] {
            self.put(buf, v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_kernels::gemm;

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

    /// The recurrence forward and backward in row groups gives the same bits as the plan's
    /// steps one by one, for a batch that splits evenly and one that does not; and the two
    /// runs are not trivially equal (the outputs move from step to step).
    #[test]
    fn row_groups_give_the_plan_bit_for_bit() {
        let noise = |n: usize, f: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + 1.0) * f).sin() * 0.5).collect()
        };
        for batch in [32, 37] {
            let d = Dims {
                steps: 5,
                batch,
                inputs: 6,
                hidden: 13,
            };
            let (tb, g4) = (d.steps * d.batch, 4 * d.hidden);
            let (x, w_in, w_hh) = (
                noise(tb * d.inputs, 0.37),
                noise(g4 * d.inputs, 0.11),
                noise(g4 * d.hidden, 0.07),
            );
            let dh = noise(tb * d.hidden, 0.23);
            let run = |step_by_step: bool| {
                let mut e = CpuEngine::default();
                if step_by_step {
                    e.step_by_step();
                } else {
                    assert!(
                        candle_core::utils::get_num_threads() < 2 || e.row_groups(batch).is_some(),
                        "batch {batch} runs in row groups"
                    );
                }
                e.lend(Buf::X, &x);
                e.lend(Buf::WIn, &w_in);
                e.lend(Buf::WHh, &w_hh);
                e.give(Buf::Acts, vec![0.0; tb * g4]);
                for buf in [Buf::C, Buf::TanhC, Buf::H] {
                    e.give(buf, vec![0.0; tb * d.hidden]);
                }
                forward(&mut e, d).unwrap();
                e.give(Buf::Dh, dh.clone());
                e.give(Buf::Dc, vec![0.0; d.batch * d.hidden]);
                e.give(Buf::DGates, vec![0.0; tb * g4]);
                e.give(Buf::DWHh, vec![0.0; g4 * d.hidden]);
                e.give(Buf::Dx, vec![0.0; tb * d.inputs]);
                e.give(Buf::DWIn, vec![0.0; g4 * d.inputs]);
                backward(&mut e, d).unwrap();
                [
                    Buf::H,
                    Buf::C,
                    Buf::Acts,
                    Buf::DGates,
                    Buf::DWHh,
                    Buf::Dx,
                    Buf::DWIn,
                ]
                .map(|b| e.take(b).iter().map(|v| v.to_bits()).collect::<Vec<_>>())
            };
            let (groups, plan) = (run(false), run(true));
            for (k, (g, p)) in groups.iter().zip(&plan).enumerate() {
                assert_eq!(g, p, "batch {batch}, buffer {k}");
            }
            let h = &plan[0];
            let step = d.batch * d.hidden;
            assert_ne!(
                h[..step],
                h[(d.steps - 1) * step..],
                "h moves from step to step"
            );
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
