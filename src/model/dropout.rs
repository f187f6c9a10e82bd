//! Training-time dropout whose masks are a hash of (seed, call, element): drawn where the
//! tensor lives (a CUDA kernel on the GPU, a loop on the CPU, the same bits on both), nothing
//! generated on the host or copied per step, and a resumed run draws the same masks.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_kernels::multiversion;
use crate::Result;

/// Dropout at one rate, masks keyed by a seed and by how many times it has been applied.
pub struct Dropout {
    rate: f32,
    seed: u64,
    calls: u64,
}

impl Dropout {
    /// Dropout at `rate`, masks drawn from `seed`.
    pub fn new(rate: f32, seed: u64) -> Self {
        Dropout {
            rate,
            seed,
            calls: 0,
        }
    }

    /// Zeroes each element with probability `rate` and scales the rest by 1/(1-rate); each
    /// call draws a new mask.
    pub fn apply(&mut self, x: &Tensor) -> Result<Tensor> {
        match self.next_mask() {
            None => Ok(x.clone()),
            Some(mask) => Ok(x.contiguous()?.apply_op1(mask)?),
        }
    }

    /// The mask the next call draws (none at rate 0), counted as a call: for an op that
    /// applies it itself (the first LSTM layer, [`super::token_lstm`]).
    pub fn next_mask(&mut self) -> Option<Mask> {
        if self.rate <= 0.0 {
            return None;
        }
        let mask = Mask {
            key: mask_key(self.seed, self.calls),
            rate: self.rate,
            keep_scale: 1.0 / (1.0 - self.rate),
        };
        self.calls += 1;
        Some(mask)
    }
}

/// The key of the mask that call number `call` (from 0) of a [`Dropout`] drawn from `seed` uses:
/// element `i` of that mask is 0 when the top 24 bits of `mix(key ^ i * 0x9E3779B97F4A7C15)`,
/// as a fraction of 2^24, fall below the rate (what `dropout_mask` in `kernels.cu` is given).
pub fn mask_key(seed: u64, call: u64) -> u64 {
    mix(seed ^ mix(call.wrapping_add(1)))
}

/// splitmix64's finaliser: a bijective mix of 64 bits. As `mix` in `kernels.cu`.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `i`'s factor: 0 with probability `rate`, else `keep_scale`. As `dropout_mask` in
/// `kernels.cu` (a uniform of 24 bits, exact in f32, so both compare the same numbers).
#[inline(always)]
fn factor(key: u64, i: u64, rate: f32, keep_scale: f32) -> f32 {
    let z = mix(key ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let u = (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
    if u < rate {
        0.0
    } else {
        keep_scale
    }
}

/// One call's mask: element `i` is 0 with probability `rate`, else `keep_scale`. As an op,
/// `x * mask`; its gradient is the same op on the gradient (the mask is its own adjoint).
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    key: u64,
    rate: f32,
    keep_scale: f32,
}

impl Mask {
    /// Whether element `i` is dropped.
    #[inline]
    pub fn drops(&self, i: u64) -> bool {
        factor(self.key, i, self.rate, self.keep_scale) == 0.0
    }

    /// The factor of the elements kept, 1 / (1 - rate).
    pub fn keep_scale(&self) -> f32 {
        self.keep_scale
    }

    /// `y = x * mask`, element `i` of the mask for element `i` of `x`, on the thread pool.
    pub fn apply_to(&self, x: &[f32], y: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (y, x))| {
                let start = (c * CHUNK) as u64;
                masked(self.key, self.rate, self.keep_scale, start, x, y);
            });
    }
}

multiversion! {
    /// `y[j] = x[j] * factor(element start + j)`: the mask's loop, vectorised (integer
    /// products and a compare, so every path gives the same bits).
    pub fn masked / masked_on(key: u64, rate: f32, keep_scale: f32, start: u64, x: &[f32], y: &mut [f32]) {
        for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
            *y = x * factor(key, start + j as u64, rate, keep_scale);
        }
    }
}

impl CustomOp1 for Mask {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::cpu_slice::<f32>(s, l, "dropout", "input")?;
        let mut y = vec![0f32; x.len()];
        self.apply_to(x, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{address, base, launch, Arg};
        use candle_core::backend::BackendStorage;
        let dev = s.device().clone();
        let n = l.shape().elem_count();
        let x = address::<f32>(s, l, "dropout", "input")?;
        // SAFETY: the kernel writes every element.
        let y = unsafe { dev.alloc::<f32>(n)? };
        let args = [
            Arg::U32(n as u32),
            Arg::U64(self.key),
            Arg::F32(self.rate),
            Arg::F32(self.keep_scale),
            Arg::U64(x),
            Arg::U64(base(&y, &dev)),
        ];
        // SAFETY: the arguments match `dropout_mask` in kernels.cu; x and y hold n floats.
        unsafe { launch(&dev, "dropout_mask", n, &args)? };
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(y, dev),
            l.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ones(n: usize) -> Tensor {
        Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn drops_at_the_rate_and_scales_the_rest() {
        let n = 200_000;
        let mut d = Dropout::new(0.05, 7);
        let y: Vec<f32> = d.apply(&ones(n)).unwrap().to_vec1().unwrap();
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        // 5% of 200k: the standard deviation of the fraction is about 0.0005.
        assert!((dropped - 0.05).abs() < 0.003, "dropped {dropped}");
        let keep = 1.0 / 0.95f32;
        assert!(y.iter().all(|&v| v == 0.0 || v == keep));
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.005, "mean {mean}");
    }

    /// Every kernel path draws the mask of the scalar `factor`, element for element, from
    /// any starting element: a run's masks must not depend on the CPU (the CUDA kernel draws
    /// the same).
    #[test]
    fn every_path_masks_as_the_scalar_factor() {
        let paths =
            crate::model::cpu_kernels::tests::paths_here("every_path_masks_as_the_scalar_factor");
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        for (rate, start) in [(0.05f32, 0u64), (0.5, 12_345), (0.3, 1 << 40)] {
            let (key, keep) = (mask_key(9, 2), 1.0 / (1.0 - rate));
            let want: Vec<u32> = (0..x.len())
                .map(|j| (x[j] * factor(key, start + j as u64, rate, keep)).to_bits())
                .collect();
            assert!(want.contains(&0), "rate {rate}: something dropped");
            for &isa in &paths {
                let mut y = vec![f32::NAN; x.len()];
                masked_on(isa, key, rate, keep, start, &x, &mut y);
                let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "{isa:?}, rate {rate}, from element {start}");
            }
        }
    }

    #[test]
    fn masks_repeat_per_seed_and_differ_per_call_and_seed() {
        let draw = |seed: u64, calls: usize| -> Vec<Vec<f32>> {
            let mut d = Dropout::new(0.5, seed);
            (0..calls)
                .map(|_| d.apply(&ones(4096)).unwrap().to_vec1().unwrap())
                .collect()
        };
        let a = draw(3, 2);
        assert_eq!(a, draw(3, 2), "same seed, same masks");
        assert_ne!(a[0], a[1], "the second call draws a new mask");
        assert_ne!(a[0], draw(4, 1)[0], "another seed, another mask");
        let zero_rate: Vec<f32> = Dropout::new(0.0, 3)
            .apply(&ones(10))
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(zero_rate, vec![1.0; 10]);
    }

    #[test]
    fn gradient_is_the_mask() {
        let x = Var::from_tensor(&Tensor::arange(1f32, 1001.0, &Device::Cpu).unwrap()).unwrap();
        let mut d = Dropout::new(0.3, 11);
        let y = d.apply(&x).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let grad: Vec<f32> = g.get(&x).unwrap().to_vec1().unwrap();
        let y: Vec<f32> = y.to_vec1().unwrap();
        for (k, (&g, &y)) in grad.iter().zip(&y).enumerate() {
            // y = x * mask with x = k + 1, so mask = y / (k + 1) is the gradient.
            assert!(
                (g - y / (k + 1) as f32).abs() < 1e-5,
                "element {k}: {g} vs {y}"
            );
        }
        assert!(grad.contains(&0.0) && grad.iter().any(|&v| v > 1.0));
    }
}
