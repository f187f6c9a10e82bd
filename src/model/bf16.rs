//! Matrix products with bf16 operands and f32 sums, on CPUs with AVX-512 BF16: training's
//! optional `[train] bf16`. One `vdpbf16ps` does 32 multiply-adds where an f32 FMA does 16,
//! so these products run about twice as fast (222 against 105 GFLOP/s on one core of an AMD
//! EPYC with AVX-512 BF16, at the recurrent step's shape). The weights stay f32 (the
//! optimizer's copies and state too): each product rounds its two operands to bf16 (nearest,
//! ties to even) as it packs them, and sums the products in f32, as PyTorch's bf16 autocast
//! does. Knows nothing of tensors.

use rayon::prelude::*;

use super::cpu_kernels::{gemm as gemm_f32, isa, Mat, PackedB};

/// How the CPU's training products treat their operands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 operands (the default).
    #[default]
    F32,
    /// Operands rounded to bf16, sums in f32 (AVX-512 BF16 only).
    Bf16,
}

impl Precision {
    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => cpu_has_bf16(),
        }
    }
}

/// Whether this CPU has AVX-512 BF16 (`vdpbf16ps`).
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to bf16 (to nearest, ties to even), as the 16 high bits of an f32. A NaN
/// stays a NaN.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    // (a select, not a branch: the packing loops vectorise)
    if x.is_nan() {
        (bits >> 16) as u16 | 0x40
    } else {
        rounded
    }
}

/// Columns per packed panel (one 16-float register); the micro-kernel takes two panels.
const NR: usize = 16;
/// Rows per micro-kernel call: 8 rows x 2 panels are 16 of the 32 registers.
const MR: usize = 8;

/// A right-hand matrix B [k, n] rounded to bf16 and packed for many products: panels of
/// [`NR`] columns (an even count, zero-padded), each as k/2 rows of pairs `(b[2q][j],
/// b[2q+1][j])`, the layout `vdpbf16ps` multiplies.
pub struct PackedBf16 {
    k: usize,
    n: usize,
    /// Pairs along k: k / 2, rounded up.
    kp: usize,
    data: Vec<u16>,
}

impl PackedBf16 {
    /// Packs the logical matrix `b` [k, n] (panels on the thread pool).
    pub fn pack(b: Mat) -> Self {
        let (k, n) = b.shape();
        let (rs, cs) = (b.strides().0 as usize, b.strides().1 as usize);
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR).next_multiple_of(2);
        let panel_len = kp * 2 * NR;
        let mut data = vec![0u16; panels * panel_len];
        // Eight panels a task, read along B's rows as stored (each of their rows is then 512
        // contiguous bytes; one panel's 64 bytes a row, 8 KB apart, is TLB- and
        // prefetch-bound: 22 ms for [4096, 2048] against 6.5 here).
        const GROUP: usize = 8;
        data.par_chunks_mut(GROUP * panel_len)
            .enumerate()
            .for_each(|(g, chunk)| {
                let first = g * GROUP * NR;
                let at = |kk: usize, col: usize| b.data[kk * rs + col * cs];
                for (pi, panel) in chunk.chunks_exact_mut(panel_len).enumerate() {
                    let c0 = first + pi * NR;
                    let width = NR.min(n.saturating_sub(c0));
                    for (q, pairs) in panel.chunks_exact_mut(2 * NR).enumerate() {
                        let (k0, k1) = (2 * q, (2 * q + 1).min(k - 1));
                        let keep_odd = 2 * q + 1 < k;
                        for j in 0..width {
                            pairs[2 * j] = to_bf16(at(k0, c0 + j));
                            pairs[2 * j + 1] = if keep_odd { to_bf16(at(k1, c0 + j)) } else { 0 };
                        }
                    }
                }
            });
        PackedBf16 { k, n, kp, data }
    }

    /// `dst = a @ B` (or `+=` with `accumulate`), `a` [m, k], `dst` row-major [m, n]; rows
    /// split over the thread pool.
    pub fn gemm(&self, dst: &mut [f32], a: Mat, accumulate: bool) {
        let (m, n) = (a.shape().0, self.n);
        self.check(dst, a);
        let threads = candle_core::utils::get_num_threads().max(1);
        let rows = m.div_ceil(threads).next_multiple_of(MR).max(MR);
        if threads == 1 || m <= MR {
            return self.gemm_rows(dst, a, 0..m, accumulate);
        }
        dst.par_chunks_mut(rows * n).enumerate().for_each(|(i, d)| {
            let span = i * rows..i * rows + d.len() / n;
            self.gemm_rows(d, a, span, accumulate)
        });
    }

    fn check(&self, dst: &[f32], a: Mat) {
        let (m, k) = a.shape();
        assert_eq!(k, self.k, "bf16 gemm: inner dimensions differ");
        assert_eq!(
            dst.len(),
            m * self.n,
            "bf16 gemm: destination has the wrong size"
        );
    }

    /// `dst = a[rows, :] @ B` (or `+=`) on the calling thread, `dst` [rows.len(), n].
    pub fn gemm_rows(
        &self,
        dst: &mut [f32],
        a: Mat,
        rows: std::ops::Range<usize>,
        accumulate: bool,
    ) {
        self.gemm_rows_on(cpu_has_bf16(), dst, a, rows, accumulate)
    }

    /// [`PackedBf16::gemm_rows`] with the AVX-512 BF16 kernel where `kernel` (and the CPU has
    /// it), else the portable loop (for tests that compare the two).
    fn gemm_rows_on(
        &self,
        kernel: bool,
        dst: &mut [f32],
        a: Mat,
        rows: std::ops::Range<usize>,
        accumulate: bool,
    ) {
        let (k, n, kp) = (self.k, self.n, self.kp);
        assert_eq!(a.shape().1, k, "bf16 gemm: inner dimensions differ");
        assert!(rows.end <= a.shape().0, "bf16 gemm: rows outside a");
        assert_eq!(dst.len(), rows.len() * n, "bf16 gemm: bad destination");
        let m = rows.len();
        if m == 0 || n == 0 {
            return;
        }
        // A rounded and packed in blocks of MR rows, pairs along k interleaved k-major: the
        // micro-kernel broadcasts one row's pair as a 32-bit word.
        let (rs, cs) = (a.strides().0 as usize, a.strides().1 as usize);
        let blocks = m.div_ceil(MR);
        let mut ap = vec![0u32; blocks * kp * MR];
        for (blk, packed) in ap.chunks_exact_mut(kp * MR).enumerate() {
            let block_rows = MR.min(m - blk * MR);
            for q in 0..kp {
                for i in 0..block_rows {
                    let at = (rows.start + blk * MR + i) * rs;
                    let lo = to_bf16(a.data[at + 2 * q * cs]) as u32;
                    let hi = if 2 * q + 1 < k {
                        to_bf16(a.data[at + (2 * q + 1) * cs]) as u32
                    } else {
                        0
                    };
                    packed[q * MR + i] = lo | hi << 16;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if kernel && cpu_has_bf16() {
            // Panel pairs outer: two panels (32 columns by k) stay in cache while every row
            // block streams past.
            let pair = 2 * kp * 2 * NR;
            for (pp, panels) in self.data.chunks_exact(pair).enumerate() {
                let cols = (2 * NR).min(n - pp * 2 * NR);
                for blk in 0..blocks {
                    let r = blk * MR;
                    let a_blk = &ap[blk * kp * MR..(blk + 1) * kp * MR];
                    let d = &mut dst[r * n + pp * 2 * NR..];
                    // SAFETY: the CPU has AVX-512 F and BF16 (checked above); the block holds
                    // kp x MR pairs and the panels 2 x kp x 32 values, and `d` holds the
                    // block's rows (asserted in the kernel).
                    unsafe {
                        match MR.min(m - r) {
                            8 => micro::<8>(a_blk, panels, d, n, cols, accumulate),
                            7 => micro::<7>(a_blk, panels, d, n, cols, accumulate),
                            6 => micro::<6>(a_blk, panels, d, n, cols, accumulate),
                            5 => micro::<5>(a_blk, panels, d, n, cols, accumulate),
                            4 => micro::<4>(a_blk, panels, d, n, cols, accumulate),
                            3 => micro::<3>(a_blk, panels, d, n, cols, accumulate),
                            2 => micro::<2>(a_blk, panels, d, n, cols, accumulate),
                            _ => micro::<1>(a_blk, panels, d, n, cols, accumulate),
                        }
                    }
                }
            }
            return;
        }
        self.gemm_rows_portable(dst, &ap, m, accumulate)
    }

    /// The same products without AVX-512 BF16, one at a time in f32 (training refuses bf16
    /// on such CPUs, as too slow; the tests run this where the CPU lacks it).
    fn gemm_rows_portable(&self, dst: &mut [f32], ap: &[u32], m: usize, accumulate: bool) {
        let (n, kp) = (self.n, self.kp);
        let wide = |h: u16| f32::from_bits((h as u32) << 16);
        for (r, row) in dst.chunks_exact_mut(n).enumerate().take(m) {
            let (blk, i) = (r / MR, r % MR);
            for (col, out) in row.iter_mut().enumerate() {
                let panel = &self.data[col / NR * kp * 2 * NR..];
                let j = col % NR;
                let sum = (0..kp).fold(0f32, |s, q| {
                    let pair = ap[(blk * kp + q) * MR + i];
                    let b = &panel[(q * NR + j) * 2..];
                    s + wide(pair as u16) * wide(b[0]) + wide((pair >> 16) as u16) * wide(b[1])
                });
                *out = if accumulate { *out + sum } else { sum };
            }
        }
    }
}

/// `R` rows of packed A times two packed panels: `d[i, 0..cols] (+)= a[i, :] . B[:, 0..32]`
/// with `d` rows `ldd` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro<const R: usize>(
    a: &[u32],
    panels: &[u16],
    d: &mut [f32],
    ldd: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let kp = panels.len() / (4 * NR);
    assert!(a.len() >= kp * MR && d.len() >= (R - 1) * ldd + cols && cols <= 2 * NR);
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    let (ap, p0, p1) = (
        a.as_ptr(),
        panels.as_ptr(),
        panels.as_ptr().add(kp * 2 * NR),
    );
    for q in 0..kp {
        // SAFETY: q < kp and i < R <= MR keep every read inside `a` and `panels` (asserted);
        // a __m512bh is 32 bf16 values, the bits of a __m512i.
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p0.add(q * 2 * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p1.add(q * 2 * NR).cast()));
        for i in 0..R {
            let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(q * MR + i) as i32));
            lo[i] = _mm512_dpbf16_ps(lo[i], pair, b0);
            hi[i] = _mm512_dpbf16_ps(hi[i], pair, b1);
        }
    }
    for i in 0..R {
        let mut tile = [0f32; 2 * NR];
        _mm512_storeu_ps(tile.as_mut_ptr(), lo[i]);
        _mm512_storeu_ps(tile.as_mut_ptr().add(NR), hi[i]);
        let row = &mut d[i * ldd..i * ldd + cols];
        if accumulate {
            row.iter_mut().zip(&tile).for_each(|(o, t)| *o += t);
        } else {
            row.copy_from_slice(&tile[..cols]);
        }
    }
}

/// `dst = a @ b` (or `+=` with `accumulate`) at precision `p`: [`gemm_f32`] or bf16
/// operands with f32 sums.
pub fn gemm(p: Precision, dst: &mut [f32], a: Mat, b: Mat, accumulate: bool) {
    match p {
        Precision::F32 => gemm_f32(dst, a, b, accumulate),
        // (an empty product is f32's: nothing to round)
        Precision::Bf16 if a.shape().1 > 0 && b.shape().1 > 0 => {
            PackedBf16::pack(b).gemm(dst, a, accumulate)
        }
        Precision::Bf16 => gemm_f32(dst, a, b, accumulate),
    }
}

/// A right-hand matrix packed once for many products at one precision (the recurrent
/// weights, used at every time step).
pub enum Packed {
    /// f32, for [`PackedB`]'s micro-kernels.
    F32(PackedB),
    /// bf16 pairs.
    Bf16(PackedBf16),
}

impl Packed {
    /// Packs the logical matrix `b` [k, n] for products at precision `p`.
    pub fn pack(b: Mat, p: Precision) -> Self {
        match p {
            Precision::F32 => Packed::F32(PackedB::pack(b)),
            Precision::Bf16 => Packed::Bf16(PackedBf16::pack(b)),
        }
    }

    /// `dst = a @ B` (or `+=`), `a` row-major [m, k]; rows split over the thread pool.
    pub fn gemm(&self, dst: &mut [f32], a: &[f32], accumulate: bool) {
        match self {
            Packed::F32(p) => p.gemm(dst, a, accumulate),
            Packed::Bf16(p) => p.gemm(dst, Mat::new(a, a.len() / p.k.max(1), p.k), accumulate),
        }
    }

    /// The same on the calling thread.
    pub fn gemm_rows(&self, dst: &mut [f32], a: &[f32], accumulate: bool) {
        match self {
            Packed::F32(p) => p.gemm_rows_on(isa(), dst, a, accumulate),
            Packed::Bf16(p) => {
                let m = a.len() / p.k.max(1);
                p.gemm_rows(dst, Mat::new(a, m, p.k), 0..m, accumulate)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cpu_kernels::tests::{skipped, Operands};

    /// Says where the AVX-512 BF16 kernel is not checked (the portable loop is, instead).
    fn says_path(test: &str) {
        if !cpu_has_bf16() {
            let why = "the AVX-512 BF16 kernel: this CPU lacks it (the portable loop ran)";
            skipped(test, why);
        }
    }

    #[test]
    fn rounding_is_to_nearest_even_as_the_half_crate() {
        // Halfway cases: 1 + 2^-8 lies between 1 (even) and 1 + 2^-7; 1 + 3 * 2^-8 between
        // 1 + 2^-7 (odd) and 1 + 2^-6.
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        assert_eq!(to_bf16(-(1.0 + 3.0 * 2f32.powi(-8))), 0xbf82);
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(to_bf16(f32::MAX), 0x7f80, "rounds up past the largest bf16");
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
        let mut bits = 0x9e37_79b9u32;
        for _ in 0..200_000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = f32::from_bits(bits);
            if x.is_nan() {
                continue;
            }
            assert_eq!(
                to_bf16(x),
                half::bf16::from_f32(x).to_bits(),
                "{x:e} ({bits:#x})"
            );
        }
    }

    /// The products equal the exact sums of the bf16-rounded operands' products to f32
    /// precision, and the f32 products to bf16's, in every transpose, accumulating or not,
    /// with shapes that leave part panels, part row blocks and an odd k.
    #[test]
    fn products_match_the_rounded_operands_in_every_transpose() {
        says_path("products_match_the_rounded_operands_in_every_transpose");
        let round = |x: f32| f32::from_bits((to_bf16(x) as u32) << 16) as f64;
        for (m, k, n) in [
            (1, 1, 1),
            (13, 37, 35),
            (17, 9, 33),
            (64, 512, 40),
            (3, 7, 70),
            (9, 2, 16),
        ] {
            let ops = Operands::new(m, k, n);
            let (a, b) = (&ops.a, &ops.b);
            // (exact sum of rounded products, f32 operands' sum, sum of magnitudes)
            let mut want = vec![(0f64, 0f64, 0f64); m * n];
            for i in 0..m {
                for j in 0..n {
                    let (x, y) = (&a[i * k..(i + 1) * k], (0..k).map(|l| b[l * n + j]));
                    want[i * n + j] = x.iter().zip(y).fold((0.0, 0.0, 0.0), |s, (&x, y)| {
                        let p = x as f64 * y as f64;
                        (s.0 + round(x) * round(y), s.1 + p, s.2 + p.abs())
                    });
                }
            }
            for (am, bm) in ops.every_transpose() {
                let packed = PackedBf16::pack(bm);
                for (kernel, accumulate) in
                    [(true, false), (true, true), (false, false), (false, true)]
                {
                    let mut got = vec![1f32; m * n];
                    if kernel {
                        gemm(Precision::Bf16, &mut got, am, bm, accumulate);
                    } else {
                        packed.gemm_rows_on(false, &mut got, am, 0..m, accumulate);
                    }
                    let base = if accumulate { 1.0 } else { 0.0 };
                    for (g, &(exact, f32s, size)) in got.iter().zip(&want) {
                        let g = *g as f64 - base;
                        let what = format!(
                            "{m}x{k}x{n} {am_t}/{bm_t}, kernel {kernel}: {g}",
                            am_t = am.transposed,
                            bm_t = bm.transposed
                        );
                        assert!((g - exact).abs() <= 1e-5 * size + 1e-6, "{what} vs {exact}");
                        assert!(
                            (g - f32s).abs() <= 2f64.powi(-7) * size + 1e-6,
                            "{what} vs {f32s}"
                        );
                    }
                }
            }
        }
    }

    /// A packed B gives the same bits on the calling thread, for any block of rows, as split
    /// over the pool, and as `gemm`.
    #[test]
    fn packed_rows_give_the_same_bits_as_the_whole_product() {
        says_path("packed_rows_give_the_same_bits_as_the_whole_product");
        let (m, k, n) = (37, 45, 50);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.29).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.13).cos()).collect();
        let mut whole = vec![0f32; m * n];
        gemm(
            Precision::Bf16,
            &mut whole,
            Mat::new(&a, m, k),
            Mat::new(&b, k, n),
            false,
        );
        let packed = Packed::pack(Mat::new(&b, k, n), Precision::Bf16);
        let mut pooled = vec![0f32; m * n];
        packed.gemm(&mut pooled, &a, false);
        assert_eq!(pooled, whole);
        for rows in [0..5, 5..21, 21..37] {
            let mut part = vec![0f32; rows.len() * n];
            packed.gemm_rows(&mut part, &a[rows.start * k..rows.end * k], false);
            assert_eq!(part, whole[rows.start * n..rows.end * n], "rows {rows:?}");
        }
    }
}
