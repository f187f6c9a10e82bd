//! CPU kernels of the engine: fast activations, the LSTM cell loops (forward and backward), a
//! mat-vec for one-stream sampling, products against a packed matrix, and a thin wrapper over
//! the `gemm` crate that candle uses.
//!
//! Every loop here is written branch-free over plain slices so LLVM vectorises it; the public
//! functions run the widest build of the same body the CPU has ([`Isa`]: AVX-512, AVX2+FMA or
//! the baseline), chosen at run time, so the default (portable) binary is fast on any x86-64
//! CPU. Knows nothing of tensors.

use rayon::prelude::*;

/// `e^x` to about 2 ulp over the range where it matters for the gates; vectorisable (no
/// branches, no libm call). Inputs are clamped to [-87, 88], where f32 `exp` is finite.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.0, 88.0);
    let k = x * LOG2E + ROUND;
    let n = k - ROUND;
    let ni = (k.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((ni + 127) << 23) as u32) * p
}

/// Logistic sigmoid.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Hyperbolic tangent, as `2 sigmoid(2x) - 1` (absolute error below 1e-7).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    2.0 / (1.0 + exp(-2.0 * x)) - 1.0
}

/// Which build of the kernels runs: the widest vectors the CPU has, chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// The baseline target (SSE2 on x86-64): any CPU.
    Portable,
    /// AVX2 and FMA: 8 floats a register.
    Avx2,
    /// AVX-512 (F) with AVX2 and FMA: 16 floats a register, 32 registers.
    Avx512,
}

impl Isa {
    /// Every path, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// Its name, as `AVIARY_CPU_KERNELS` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            match self {
                Isa::Portable => true,
                Isa::Avx2 => avx2,
                Isa::Avx512 => avx2 && std::is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }
}

/// The path the kernels take: the widest this CPU has, or the one `AVIARY_CPU_KERNELS`
/// (`portable`, `avx2`, `avx512`) names where the CPU has it: a knob for comparing the paths
/// in benchmarks (read once).
pub fn isa() -> Isa {
    static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let best = Isa::ALL
            .into_iter()
            .rev()
            .find(|i| i.available())
            .unwrap_or(Isa::Portable);
        match std::env::var("AVIARY_CPU_KERNELS") {
            Ok(name) => match Isa::ALL.into_iter().find(|i| i.name() == name) {
                Some(i) if i.available() => i,
                _ => {
                    tracing::warn!(
                        "AVIARY_CPU_KERNELS={name} is not a path this CPU runs; using {}",
                        best.name()
                    );
                    best
                }
            },
            Err(_) => best,
        }
    })
}

/// Defines `pub fn $name(args)`, which runs `$body` on the [`isa`] path, and `pub fn
/// $on(isa, args)`, which runs it on the path given (the baseline where the CPU lacks it).
/// One body, compiled three times.
macro_rules! multiversion {
    ($(#[$meta:meta])* pub fn $name:ident / $on:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($arg: $ty),*) {
            $on($crate::model::cpu_kernels::isa(), $($arg),*)
        }

        /// The same on path `isa` (for tests that compare the paths).
        #[allow(clippy::too_many_arguments)]
        pub fn $on(isa: $crate::model::cpu_kernels::Isa, $($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            if isa.available() {
                // SAFETY: the CPU supports every feature the build called was compiled for.
                match isa {
                    $crate::model::cpu_kernels::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::model::cpu_kernels::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::model::cpu_kernels::Isa::Portable => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa;
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

multiversion! {
    /// LSTM cell forward for `rows` rows, gate order i, f, g, o (PyTorch's and candle's).
    ///
    /// `gates` [rows, 4H] holds pre-activations on entry and activations on exit (kept for the
    /// backward pass); `c_prev` [rows, H] (or zeros), `c` and `tanh_c` [rows, H] are written,
    /// and `h` [rows, H] receives the new hidden state.
    pub fn cell_forward / cell_forward_on(gates: &mut [f32], c_prev: Option<&[f32]>, c: &mut [f32], tanh_c: &mut [f32], h: &mut [f32], hidden: usize) {
        let rows = h.len() / hidden;
        for r in 0..rows {
            let g = &mut gates[r * 4 * hidden..(r + 1) * 4 * hidden];
            let (gi, rest) = g.split_at_mut(hidden);
            let (gf, rest) = rest.split_at_mut(hidden);
            let (gg, go) = rest.split_at_mut(hidden);
            // Activations first, one simple loop per gate: these vectorise.
            // (Separate loops: a chained iterator would not vectorise.)
            for v in gi.iter_mut() {
                *v = sigmoid(*v);
            }
            for v in gf.iter_mut() {
                *v = sigmoid(*v);
            }
            for v in go.iter_mut() {
                *v = sigmoid(*v);
            }
            for v in gg.iter_mut() {
                *v = tanh(*v);
            }
            let n = hidden;
            let span = r * hidden..(r + 1) * hidden;
            let (c, tc, h) = (&mut c[span.clone()], &mut tanh_c[span.clone()], &mut h[span.clone()]);
            let (gi, gf, gg, go, c, tc, h) = (&gi[..n], &gf[..n], &gg[..n], &go[..n], &mut c[..n], &mut tc[..n], &mut h[..n]);
            match c_prev {
                Some(cp) => {
                    let cp = &cp[span][..n];
                    for j in 0..n {
                        c[j] = gf[j] * cp[j] + gi[j] * gg[j];
                    }
                }
                None => {
                    for j in 0..n {
                        c[j] = gi[j] * gg[j];
                    }
                }
            }
            for j in 0..n {
                let t = tanh(c[j]);
                tc[j] = t;
                h[j] = go[j] * t;
            }
        }
    }
}

multiversion! {
    /// LSTM cell backward for `rows` rows: the adjoint of [`cell_forward`].
    ///
    /// `acts` [rows, 4H] are the activated gates, `c_prev` and `tanh_c` [rows, H] as in the
    /// forward pass, `dh` [rows, H] the gradient reaching h_t. `dc` [rows, H] holds the gradient
    /// reaching c_t from step t+1 on entry and the one reaching c_{t-1} on exit; `dgates`
    /// [rows, 4H] receives the gradient of the pre-activations.
    pub fn cell_backward / cell_backward_on(acts: &[f32], c_prev: Option<&[f32]>, tanh_c: &[f32], dh: &[f32], dc: &mut [f32], dgates: &mut [f32], hidden: usize) {
        let rows = dh.len() / hidden;
        for r in 0..rows {
            let a = &acts[r * 4 * hidden..(r + 1) * 4 * hidden];
            let (ai, rest) = a.split_at(hidden);
            let (af, rest) = rest.split_at(hidden);
            let (ag, ao) = rest.split_at(hidden);
            let d = &mut dgates[r * 4 * hidden..(r + 1) * 4 * hidden];
            let (di, rest) = d.split_at_mut(hidden);
            let (df, rest) = rest.split_at_mut(hidden);
            let (dg, d_o) = rest.split_at_mut(hidden);
            let span = r * hidden..(r + 1) * hidden;
            let (tc, dh, dc) = (&tanh_c[span.clone()], &dh[span.clone()], &mut dc[span.clone()]);
            let zeros;
            let cp = match c_prev {
                Some(cp) => &cp[span],
                None => {
                    zeros = vec![0f32; hidden];
                    &zeros[..]
                }
            };
            let n = hidden;
            let (ai, af, ag, ao, cp, tc, dh) = (&ai[..n], &af[..n], &ag[..n], &ao[..n], &cp[..n], &tc[..n], &dh[..n]);
            let (di, df, dg, d_o, dc) = (&mut di[..n], &mut df[..n], &mut dg[..n], &mut d_o[..n], &mut dc[..n]);
            for j in 0..n {
                let (i, f, g, o, t) = (ai[j], af[j], ag[j], ao[j], tc[j]);
                let dct = dc[j] + dh[j] * o * (1.0 - t * t);
                di[j] = dct * g * i * (1.0 - i);
                df[j] = dct * cp[j] * f * (1.0 - f);
                dg[j] = dct * i * (1.0 - g * g);
                d_o[j] = dh[j] * t * o * (1.0 - o);
                dc[j] = dct * f;
            }
        }
    }
}

multiversion! {
    /// `y[r] += dot(w[r, :], x)` for a row-major `w` [rows, x.len()]: the one-stream
    /// sampling step. Sixteen independent accumulators let the dot product vectorise.
    pub fn matvec / matvec_on(w: &[f32], x: &[f32], y: &mut [f32]) {
        let k = x.len();
        for (r, out) in y.iter_mut().enumerate() {
            let row = &w[r * k..(r + 1) * k];
            let mut acc = [0f32; 16];
            let chunks = row.chunks_exact(16).zip(x.chunks_exact(16));
            for (wc, xc) in chunks {
                for l in 0..16 {
                    acc[l] += wc[l] * xc[l];
                }
            }
            let mut s = 0f32;
            for l in (k / 16) * 16..k {
                s += row[l] * x[l];
            }
            *out += s + acc.iter().sum::<f32>();
        }
    }
}

multiversion! {
    /// `weights[i] = e^((logits[i] - max) * scale)`, `max` the largest logit: a softmax's
    /// numerators at temperature `1 / scale`, what the sampler draws from. The maximum is
    /// exact whatever the order, and each weight is the scalar [`exp`] of the same argument,
    /// so every path gives the same bits.
    pub fn softmax_weights / softmax_weights_on(logits: &[f32], scale: f32, weights: &mut [f32]) {
        let max = largest(logits);
        for (w, &l) in weights.iter_mut().zip(logits) {
            *w = exp((l - max) * scale);
        }
    }
}

multiversion! {
    /// A row of logits in, its softmax out, and `loss = -ln softmax(row)[target]`: the
    /// training loss's forward pass for one row. The exponentials run vectorised and the sum
    /// in element order, so every path gives the same bits as the plain loop.
    pub fn softmax_row / softmax_row_on(row: &mut [f32], target: usize, loss: &mut f32) {
        let max = largest(row);
        let target_logit = row[target];
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        let sum = row.iter().fold(0f32, |s, &x| s + x);
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
        *loss = sum.ln() + max - target_logit;
    }
}

/// The largest element (`-inf` for none), in 16 lanes so it vectorises: a maximum is exact
/// in any order.
#[inline(always)]
fn largest(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    tail.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

multiversion! {
    /// `y += a x`.
    pub fn axpy / axpy_on(a: f32, x: &[f32], y: &mut [f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += a * *x;
        }
    }
}

/// [`matvec`] with the rows split over the thread pool when the matrix is large enough to pay
/// for the hand-off (a few microseconds).
pub fn par_matvec(w: &[f32], x: &[f32], y: &mut [f32]) {
    let k = x.len();
    let threads = rayon::current_num_threads();
    if threads < 2 || y.len() * k < 1 << 17 {
        return matvec(w, x, y);
    }
    let rows = y.len().div_ceil(threads);
    y.par_chunks_mut(rows)
        .enumerate()
        .for_each(|(i, yc)| matvec(&w[i * rows * k..(i * rows + yc.len()) * k], x, yc));
}

/// Runs [`cell_forward`] over the rows of a batch on the thread pool.
pub fn par_cell_forward(
    gates: &mut [f32],
    c_prev: Option<&[f32]>,
    c: &mut [f32],
    tanh_c: &mut [f32],
    h: &mut [f32],
    hidden: usize,
) {
    let rows_per_task = rows_per_task(h.len() / hidden);
    let (g4, g1) = (rows_per_task * 4 * hidden, rows_per_task * hidden);
    gates
        .par_chunks_mut(g4)
        .zip(c.par_chunks_mut(g1))
        .zip(tanh_c.par_chunks_mut(g1))
        .zip(h.par_chunks_mut(g1))
        .enumerate()
        .for_each(|(k, (((g, c), tc), h))| {
            let cp = c_prev.map(|cp| &cp[k * g1..k * g1 + h.len()]);
            cell_forward(g, cp, c, tc, h, hidden)
        });
}

/// Runs [`cell_backward`] over the rows of a batch on the thread pool.
pub fn par_cell_backward(
    acts: &[f32],
    c_prev: Option<&[f32]>,
    tanh_c: &[f32],
    dh: &[f32],
    dc: &mut [f32],
    dgates: &mut [f32],
    hidden: usize,
) {
    let rows_per_task = rows_per_task(dh.len() / hidden);
    let (g4, g1) = (rows_per_task * 4 * hidden, rows_per_task * hidden);
    dgates
        .par_chunks_mut(g4)
        .zip(dc.par_chunks_mut(g1))
        .enumerate()
        .for_each(|(k, (dg, dc))| {
            let span = k * g1..k * g1 + dc.len();
            let span4 = k * g4..k * g4 + dg.len();
            let cp = c_prev.map(|cp| &cp[span.clone()]);
            cell_backward(
                &acts[span4],
                cp,
                &tanh_c[span.clone()],
                &dh[span],
                dc,
                dg,
                hidden,
            )
        });
}

fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 2).max(1)
}

/// A row-major matrix view for [`gemm`]: data, rows, columns, and whether it is used
/// transposed.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    /// Row-major storage.
    pub data: &'a [f32],
    /// Rows as stored.
    pub rows: usize,
    /// Columns as stored.
    pub cols: usize,
    /// Use the transpose of the stored matrix.
    pub transposed: bool,
}

impl<'a> Mat<'a> {
    /// A stored row-major `rows` x `cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Mat {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The same matrix, transposed (no copy).
    pub fn t(self) -> Self {
        Mat {
            transposed: !self.transposed,
            ..self
        }
    }

    /// (rows, columns) of the logical matrix.
    pub(crate) fn shape(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// (row stride, column stride) of the logical matrix.
    pub(crate) fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// `dst = a @ b` (or `dst += a @ b` with `accumulate`), `dst` row-major [m, n], on
/// candle's thread count: each thread computes its own block of `dst`'s columns (of rows
/// where `dst` is narrow) with the `gemm` crate on one thread. The crate's own threading
/// kept one thread busy at the shapes of a training step's weight gradients (2,048 x 3,968
/// x 512, A transposed: 96 GFLOP/s on two threads, 157 split this way; the output layer's
/// products 74 - 158, split 169 - 184, on a 2-core AMD EPYC with AVX2).
pub fn gemm(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    gemm_in_blocks(dst, a, b, accumulate, candle_core::utils::get_num_threads())
}

/// [`gemm`] in `threads` blocks (at most; at least one).
fn gemm_in_blocks(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool, threads: usize) {
    let (m, k) = a.shape();
    let (kb, n) = b.shape();
    assert_eq!(k, kb, "gemm: inner dimensions differ");
    assert_eq!(dst.len(), m * n, "gemm: destination has the wrong size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    let threads = threads.max(1);
    // Blocks of whole micro-kernel tiles (16 columns or 8 rows), one per thread.
    let by_columns = n >= 16 * threads || n >= m;
    let (len, tile) = if by_columns { (n, 16) } else { (m, 8) };
    let block = len.div_ceil(threads).div_ceil(tile) * tile;
    let blocks = len.div_ceil(block);
    let dst_at = SendPtr(dst.as_mut_ptr());
    let run = |i: usize| {
        let span = i * block..((i + 1) * block).min(len);
        let (rows, cols) = if by_columns {
            (0..m, span)
        } else {
            (span, 0..n)
        };
        // SAFETY: the blocks' spans are disjoint, so no two threads write one element of
        // `dst`; each block lies inside the shapes checked above.
        unsafe { gemm_block(dst_at, n, a, b, rows, cols, accumulate) }
    };
    if blocks == 1 {
        run(0)
    } else {
        (0..blocks).into_par_iter().for_each(run)
    }
}

/// A destination pointer the threads of [`gemm`] share, each writing its own block.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only [`gemm`] uses it, and it hands each thread a disjoint block.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `dst[rows, cols] (+)= a[rows, :] @ b[:, cols]` on the calling thread, `dst` row-major with
/// `n` columns.
///
/// # Safety
/// `dst` must point to `a.shape().0 * n` floats that nothing else reads or writes in the
/// block meanwhile, with `rows` and `cols` inside `a`'s rows and `b`'s columns.
unsafe fn gemm_block(
    dst: SendPtr,
    n: usize,
    a: Mat,
    b: Mat,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    accumulate: bool,
) {
    let k = a.shape().1;
    let (a_rs, a_cs) = a.strides();
    let (b_rs, b_cs) = b.strides();
    gemm::gemm(
        rows.len(),
        cols.len(),
        k,
        dst.0.add(rows.start * n + cols.start),
        1,
        n as isize,
        accumulate,
        a.data.as_ptr().offset(rows.start as isize * a_rs),
        a_cs,
        a_rs,
        b.data.as_ptr().offset(cols.start as isize * b_cs),
        b_cs,
        b_rs,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Calls micro-kernel `$micro::<R>` for the row count `$rows` (one of the listed counts,
/// else 1): the rows are a const generic, so the accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($micro:ident, $rows:expr, $args:tt, $($r:literal)*) => {
        match $rows {
            $($r => $micro::<$r> $args,)*
            _ => $micro::<1> $args,
        }
    };
}

/// Columns per packed panel of [`PackedB`]: two AVX registers.
const NR: usize = 16;
/// Rows per micro-kernel call: 6 x 2 accumulators plus 3 operands fill the 16 AVX registers.
const MR: usize = 6;

/// A right-hand matrix B [k, n] packed once for many products `A @ B` with the same B (the
/// recurrent weights, used at every time step): column panels of [`NR`], k-major, zero-padded.
/// The `gemm` crate packs B again at every call.
pub struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Packs the logical matrix `b` [k, n].
    pub fn pack(b: Mat) -> Self {
        let (k, n) = b.shape();
        let (rs, cs) = b.strides();
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for p in 0..panels {
            for kk in 0..k {
                let row = &mut data[(p * k + kk) * NR..(p * k + kk + 1) * NR];
                for (j, out) in row.iter_mut().enumerate() {
                    let col = p * NR + j;
                    if col < n {
                        *out = b.data[kk * rs as usize + col * cs as usize];
                    }
                }
            }
        }
        PackedB { k, n, data }
    }

    /// `dst = a @ B` (or `dst += a @ B` with `accumulate`), `a` row-major [m, k], `dst`
    /// row-major [m, n]; rows split over the thread pool.
    pub fn gemm(&self, dst: &mut [f32], a: &[f32], accumulate: bool) {
        let (k, n) = (self.k, self.n);
        let m = a.len() / k.max(1);
        assert_eq!(a.len(), m * k, "packed gemm: lhs is not [m, k]");
        assert_eq!(
            dst.len(),
            m * n,
            "packed gemm: destination has the wrong size"
        );
        let threads = candle_core::utils::get_num_threads().max(1);
        // Whole blocks of the micro-kernel's rows to each thread.
        let mr = if isa() == Isa::Avx512 { MR512 } else { MR };
        let rows = (m.div_ceil(threads).div_ceil(mr) * mr).max(mr);
        if threads == 1 || m <= mr {
            return self.gemm_rows(dst, a, accumulate);
        }
        dst.par_chunks_mut(rows * n)
            .zip(a.par_chunks(rows * k))
            .for_each(|(d, a)| self.gemm_rows(d, a, accumulate));
    }

    fn gemm_rows(&self, dst: &mut [f32], a: &[f32], accumulate: bool) {
        self.gemm_rows_on(isa(), dst, a, accumulate)
    }

    /// [`PackedB::gemm`]'s work on one thread, on path `isa` (the baseline where the CPU
    /// lacks it): `dst = a @ B` (or `+=`) for the rows of `a`.
    pub fn gemm_rows_on(&self, isa: Isa, dst: &mut [f32], a: &[f32], accumulate: bool) {
        assert_eq!(a.len() % self.k.max(1), 0, "packed gemm: lhs is not [m, k]");
        assert_eq!(
            dst.len(),
            a.len() / self.k.max(1) * self.n,
            "packed gemm: bad destination"
        );
        #[cfg(target_arch = "x86_64")]
        if isa.available() {
            // SAFETY (both): the CPU has the features each micro-kernel was compiled for; the
            // blocks `blocked` hands them hold `rows` rows of packed A and a whole panel.
            match isa {
                Isa::Avx512 => {
                    return self.blocked(
                        dst,
                        a,
                        accumulate,
                        MR512,
                        &|rows, a, p, d, ldd, cols, acc| unsafe {
                            by_rows!(micro_avx512, rows, (a, p, d, ldd, cols, acc), 8 7 6 5 4 3 2)
                        },
                    )
                }
                Isa::Avx2 => {
                    return self.blocked(
                        dst,
                        a,
                        accumulate,
                        MR,
                        &|rows, a, p, d, ldd, cols, acc| unsafe {
                            by_rows!(micro_avx2, rows, (a, p, d, ldd, cols, acc), 6 5 4 3 2)
                        },
                    )
                }
                Isa::Portable => {}
            }
        }
        self.gemm_rows_portable(dst, a, accumulate)
    }

    fn gemm_rows_portable(&self, dst: &mut [f32], a: &[f32], accumulate: bool) {
        let (k, n) = (self.k, self.n);
        for (d, a) in dst.chunks_exact_mut(n).zip(a.chunks_exact(k)) {
            for (p, panel) in self.data.chunks_exact(k * NR).enumerate() {
                let mut acc = [0f32; NR];
                for (kk, b) in panel.chunks_exact(NR).enumerate() {
                    for j in 0..NR {
                        acc[j] += a[kk] * b[j];
                    }
                }
                let cols = NR.min(n - p * NR);
                for j in 0..cols {
                    let out = &mut d[p * NR + j];
                    *out = if accumulate { *out + acc[j] } else { acc[j] };
                }
            }
        }
    }

    /// The blocked product for a micro-kernel taking `mr` rows at a time: `micro(rows, a_blk,
    /// panel, d, ldd, cols, accumulate)` with `a_blk` [k, mr] (k-major), `panel` [k, NR].
    #[cfg(target_arch = "x86_64")]
    fn blocked(&self, dst: &mut [f32], a: &[f32], accumulate: bool, mr: usize, micro: &Micro) {
        let (k, n) = (self.k, self.n);
        let m = a.len() / k.max(1);
        // A packed too, in blocks of `mr` rows interleaved k-major: the micro-kernel then
        // reads one contiguous stream instead of rows a power of two apart (which alias in L1).
        let blocks = m.div_ceil(mr);
        let mut ap = vec![0f32; blocks * k * mr];
        // Written in order, read from `mr` rows at a time (row by row, the scattered writes
        // took about 2% of a training step).
        for (blk, packed) in ap.chunks_exact_mut(k * mr).enumerate() {
            let rows = &a[blk * mr * k..((blk + 1) * mr).min(m) * k];
            for (kk, out) in packed.chunks_exact_mut(mr).enumerate() {
                for (o, row) in out.iter_mut().zip(rows.chunks_exact(k)) {
                    *o = row[kk];
                }
            }
        }
        // Panel-outer: one panel of B (k x 16) stays in cache while every row block of A
        // streams past it.
        for (p, panel) in self.data.chunks_exact(k * NR).enumerate() {
            let cols = NR.min(n - p * NR);
            for blk in 0..blocks {
                let r = blk * mr;
                let a_blk = &ap[blk * k * mr..(blk + 1) * k * mr];
                micro(
                    mr.min(m - r),
                    a_blk,
                    panel,
                    &mut dst[r * n + p * NR..],
                    n,
                    cols,
                    accumulate,
                );
            }
        }
    }
}

/// A micro-kernel as [`PackedB::blocked`] calls it.
#[cfg(target_arch = "x86_64")]
type Micro = dyn Fn(usize, &[f32], &[f32], &mut [f32], usize, usize, bool);

/// Rows per AVX-512 micro-kernel call: 8 accumulators of 16 floats, enough to hide the FMA
/// latency on two ports, and a divisor of the usual 32 or 64 rows a thread takes.
const MR512: usize = 8;

/// [`micro_avx2`] with one 16-float register per row: `R` rows of A (packed k-major,
/// [`MR512`] apart) times one packed panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn micro_avx512<const R: usize>(
    a: &[f32],
    panel: &[f32],
    d: &mut [f32],
    ldd: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let k = panel.len() / NR;
    assert!(a.len() >= k * MR512 && d.len() >= (R - 1) * ldd + cols);
    let mut acc = [_mm512_setzero_ps(); R];
    let (ap, bp) = (a.as_ptr(), panel.as_ptr());
    for kk in 0..k {
        // SAFETY: kk < k and i < R <= MR512 keep every read inside `a` and `panel` (asserted).
        let b = _mm512_loadu_ps(bp.add(kk * NR));
        for (i, acc) in acc.iter_mut().enumerate() {
            *acc = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(kk * MR512 + i)), b, *acc);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let mut tile = [0f32; NR];
        _mm512_storeu_ps(tile.as_mut_ptr(), *acc);
        write_row(&mut d[i * ldd..i * ldd + cols], &tile, accumulate);
    }
}

/// Writes (or, with `accumulate`, adds) the first `row.len()` of a micro-kernel's `NR`
/// results for one row.
#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn write_row(row: &mut [f32], tile: &[f32; NR], accumulate: bool) {
    if accumulate {
        for (o, t) in row.iter_mut().zip(tile) {
            *o += t;
        }
    } else {
        row.copy_from_slice(&tile[..row.len()]);
    }
}

/// `R` rows of A (packed k-major, [`MR`] apart) times one packed panel:
/// `d[i, 0..cols] (+)= a[:, i] . panel`, with `d` rows `ldd` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn micro_avx2<const R: usize>(
    a: &[f32],
    panel: &[f32],
    d: &mut [f32],
    ldd: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let k = panel.len() / NR;
    assert!(a.len() >= k * MR && d.len() >= (R - 1) * ldd + cols);
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    let (ap, bp) = (a.as_ptr(), panel.as_ptr());
    for kk in 0..k {
        // SAFETY: kk < k and i < R <= MR keep every read inside `a` and `panel` (asserted).
        let b0 = _mm256_loadu_ps(bp.add(kk * NR));
        let b1 = _mm256_loadu_ps(bp.add(kk * NR + 8));
        for i in 0..R {
            let av = _mm256_broadcast_ss(&*ap.add(kk * MR + i));
            lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);
            hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);
        }
    }
    for i in 0..R {
        let mut tile = [0f32; NR];
        _mm256_storeu_ps(tile.as_mut_ptr(), lo[i]);
        _mm256_storeu_ps(tile.as_mut_ptr().add(8), hi[i]);
        write_row(&mut d[i * ldd..i * ldd + cols], &tile, accumulate);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Says that `test` skipped (some of) its checks, and why, as `SKIPPED <test>: <why>` in
    /// the test run's own output: written to the stream, past the harness's capture (which
    /// takes `eprint!`).
    pub(crate) fn skipped(test: &str, why: &str) {
        use std::io::Write;
        writeln!(std::io::stderr(), "SKIPPED {test}: {why}").expect("stderr takes the line");
    }

    /// The paths this CPU runs; the others are named as skipped, with why.
    pub(crate) fn paths_here(test: &str) -> Vec<Isa> {
        for isa in Isa::ALL.into_iter().filter(|i| !i.available()) {
            skipped(test, &format!("the {} path: this CPU lacks it", isa.name()));
        }
        Isa::ALL.into_iter().filter(|i| i.available()).collect()
    }

    #[test]
    fn activations_match_std() {
        let mut worst = (0f32, 0f32, 0f32);
        for i in -4000..=4000 {
            let x = i as f32 * 0.01;
            let e = ((exp(x) - x.exp()) / x.exp()).abs();
            let s = (sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs();
            let t = (tanh(x) - x.tanh()).abs();
            worst = (worst.0.max(e), worst.1.max(s), worst.2.max(t));
        }
        assert!(worst.0 < 1e-6, "exp relative error {}", worst.0);
        assert!(worst.1 < 1e-6, "sigmoid error {}", worst.1);
        assert!(worst.2 < 1e-6, "tanh error {}", worst.2);
        assert!(exp(-1000.0).is_finite());
        assert!(sigmoid(-1000.0) >= 0.0 && sigmoid(1000.0) <= 1.0);
    }

    /// Test operands a [m, k] and b [k, n] (row-major), each also stored transposed.
    pub(crate) struct Operands {
        pub(crate) a: Vec<f32>,
        pub(crate) b: Vec<f32>,
        at: Vec<f32>,
        bt: Vec<f32>,
        m: usize,
        k: usize,
        n: usize,
    }

    impl Operands {
        pub(crate) fn new(m: usize, k: usize, n: usize) -> Self {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
            let at = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            Operands {
                a,
                b,
                at,
                bt,
                m,
                k,
                n,
            }
        }

        /// The four ways of reading them as a @ b: as stored, or through either transpose.
        pub(crate) fn every_transpose(&self) -> [(Mat<'_>, Mat<'_>); 4] {
            let (m, k, n) = (self.m, self.k, self.n);
            let (a, at) = (Mat::new(&self.a, m, k), Mat::new(&self.at, k, m).t());
            let (b, bt) = (Mat::new(&self.b, k, n), Mat::new(&self.bt, n, k).t());
            [(a, b), (at, b), (a, bt), (at, bt)]
        }
    }

    /// Every transpose, accumulating or not, in one block and split over 2 - 4 threads by
    /// columns (wide results) and by rows (narrow ones).
    #[test]
    fn gemm_matches_naive_in_every_transpose() {
        for (m, k, n) in [(5, 7, 3), (37, 9, 50), (41, 6, 10)] {
            let ops = Operands::new(m, k, n);
            let (a, b) = (&ops.a, &ops.b);
            let mut want = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
                }
            }
            for (am, bm) in ops.every_transpose() {
                for threads in 1..=4 {
                    for accumulate in [false, true] {
                        let mut got = vec![1f32; m * n];
                        gemm_in_blocks(&mut got, am, bm, accumulate, threads);
                        let base = if accumulate { 1.0 } else { 0.0 };
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (g - (w + base)).abs() < 1e-5,
                                "{m}x{k}x{n}, {threads} threads: {g} vs {w} + {base}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packed_gemm_matches_gemm() {
        for (m, k, n) in [
            (13, 37, 35),
            (128, 64, 48),
            (6, 5, 16),
            (1, 3, 2),
            (17, 9, 33),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            for bm in [Mat::new(&b, k, n), Mat::new(&b, n, k).t()] {
                let packed = PackedB::pack(bm);
                for accumulate in [false, true] {
                    let mut want = vec![0.5f32; m * n];
                    gemm(&mut want, Mat::new(&a, m, k), bm, accumulate);
                    let mut got = vec![0.5f32; m * n];
                    packed.gemm(&mut got, &a, accumulate);
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-4, "{m}x{k}x{n}: {g} vs {w}");
                    }
                    for isa in paths_here("packed_gemm_matches_gemm") {
                        let mut on = vec![0.5f32; m * n];
                        packed.gemm_rows_on(isa, &mut on, &a, accumulate);
                        for (g, w) in on.iter().zip(&want) {
                            assert!((g - w).abs() < 1e-4, "{isa:?} {m}x{k}x{n}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matvec_matches_naive() {
        let (rows, k) = (9, 37);
        let w: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.3).sin()).collect();
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.7).cos()).collect();
        let bias: Vec<f32> = (0..rows).map(|i| i as f32).collect();
        for isa in paths_here("matvec_matches_naive") {
            let mut y = bias.clone();
            matvec_on(isa, &w, &x, &mut y);
            for r in 0..rows {
                let want: f32 = bias[r] + (0..k).map(|l| w[r * k + l] * x[l]).sum::<f32>();
                assert!(
                    (y[r] - want).abs() < 1e-4,
                    "{isa:?} row {r}: {} vs {want}",
                    y[r]
                );
            }
        }
    }

    /// Every path's softmax weights are the same bits as the plain loop's: the sampler's draws
    /// for a seed must not depend on the CPU.
    #[test]
    fn softmax_weights_match_the_plain_loop_on_every_path() {
        let paths = paths_here("softmax_weights_match_the_plain_loop_on_every_path");
        for v in [1, 2, 15, 16, 17, 145, 527] {
            let logits: Vec<f32> = (0..v).map(|i| (i as f32 * 0.77).sin() * 9.0).collect();
            for scale in [0.5f32, 1.0, 2.0] {
                let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let want: Vec<u32> = logits
                    .iter()
                    .map(|&l| exp((l - max) * scale).to_bits())
                    .collect();
                for &isa in &paths {
                    let mut got = vec![f32::NAN; v];
                    softmax_weights_on(isa, &logits, scale, &mut got);
                    let got: Vec<u32> = got.iter().map(|w| w.to_bits()).collect();
                    assert_eq!(got, want, "{isa:?}, {v} logits, scale {scale}");
                }
            }
        }
    }

    /// Every path's softmax row and loss are the same bits as the plain loop's (max, the
    /// scalar exp, an in-order sum): the training loss must not depend on the CPU.
    #[test]
    fn softmax_row_matches_the_plain_loop_on_every_path() {
        let paths = paths_here("softmax_row_matches_the_plain_loop_on_every_path");
        for v in [1, 15, 16, 17, 145, 527] {
            let logits: Vec<f32> = (0..v).map(|i| (i as f32 * 0.61).cos() * 7.0).collect();
            let target = v / 3;
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let e: Vec<f32> = logits.iter().map(|&l| exp(l - max)).collect();
            let sum = e.iter().fold(0f32, |s, &x| s + x);
            let want: Vec<u32> = e.iter().map(|&x| (x * (1.0 / sum)).to_bits()).collect();
            let want_loss = sum.ln() + max - logits[target];
            for &isa in &paths {
                let (mut row, mut loss) = (logits.clone(), f32::NAN);
                softmax_row_on(isa, &mut row, target, &mut loss);
                let got: Vec<u32> = row.iter().map(|p| p.to_bits()).collect();
                assert_eq!(got, want, "{isa:?}, {v} logits");
                assert_eq!(loss.to_bits(), want_loss.to_bits(), "{isa:?}, {v} logits");
            }
        }
    }

    /// Every path's cell loops against the portable build (which the fused op's tests check
    /// against autograd and finite differences), with and without a previous cell state.
    #[test]
    fn cell_loops_agree_on_every_path() {
        let (rows, hidden) = (5, 37);
        let noise = |n: usize, f: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + 1.0) * f).sin() * 3.0).collect()
        };
        let pre = noise(rows * 4 * hidden, 0.37);
        let c_prev = noise(rows * hidden, 0.71);
        let dh = noise(rows * hidden, 0.13);
        let dc_in = noise(rows * hidden, 0.29);
        let run = |isa: Isa, cp: Option<&[f32]>| {
            let mut gates = pre.clone();
            let (mut c, mut tc, mut h) = (
                vec![0f32; rows * hidden],
                vec![0f32; rows * hidden],
                vec![0f32; rows * hidden],
            );
            cell_forward_on(isa, &mut gates, cp, &mut c, &mut tc, &mut h, hidden);
            let (mut dc, mut dg) = (dc_in.clone(), vec![0f32; rows * 4 * hidden]);
            cell_backward_on(isa, &gates, cp, &tc, &dh, &mut dc, &mut dg, hidden);
            [gates, c, tc, h, dc, dg]
        };
        for cp in [None, Some(&c_prev[..])] {
            let want = run(Isa::Portable, cp);
            for isa in paths_here("cell_loops_agree_on_every_path") {
                for (k, (got, want)) in run(isa, cp).iter().zip(&want).enumerate() {
                    for (g, w) in got.iter().zip(want) {
                        assert!(
                            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{isa:?} output {k}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
