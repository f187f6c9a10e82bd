//! Softmax cross-entropy as one candle op: one pass over the logits forward (keeping the
//! probabilities), one backward (`(softmax - onehot) / N`), where candle's composed
//! `log_softmax` + `nll` make about ten passes and as many temporaries each way.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels;

/// Mean cross-entropy (nats) of `targets` [N] (u32) under `logits` [N, V]. Fused on the CPU;
/// candle's composed ops elsewhere.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 && targets.dtype() == DType::U32 {
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, SoftmaxCrossEntropy::default())
    } else {
        candle_nn::loss::cross_entropy(logits, targets)
    }
}

/// The fused op; see [`cross_entropy`].
#[derive(Default)]
struct SoftmaxCrossEntropy {
    /// Softmax of the logits, [N, V], kept for the backward pass.
    probs: Mutex<Option<Vec<f32>>>,
}

impl CustomOp2 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        if l2.shape().dims1()? != n {
            candle_core::bail!(
                "softmax-cross-entropy: {n} rows of logits but targets {:?}",
                l2.shape()
            );
        }
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("softmax-cross-entropy: inputs must be contiguous");
        };
        let logits = &s1.as_slice::<f32>()?[a..b];
        let targets = &s2.as_slice::<u32>()?[c..d];
        if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("softmax-cross-entropy: target {bad} outside the {v} classes");
        }
        let mut probs = vec![0f32; n * v];
        let mut row_loss = vec![0f64; n];
        probs
            .par_chunks_mut(v)
            .zip(logits.par_chunks(v))
            .zip(targets.par_iter())
            .zip(row_loss.par_iter_mut())
            .for_each(|(((p, x), &t), loss)| {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (p, &x) in p.iter_mut().zip(x) {
                    *p = kernels::exp(x - max);
                    sum += *p;
                }
                let inv = 1.0 / sum;
                p.iter_mut().for_each(|p| *p *= inv);
                *loss = (sum.ln() + max - x[t as usize]) as f64;
            });
        // Summed in order, so the loss is the same bits on every run (resume compares it).
        let total: f64 = row_loss.iter().sum();
        *self.probs.lock().expect("loss state poisoned") = Some(probs);
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(mut probs) = self.probs.lock().expect("loss state poisoned").take() else {
            candle_core::bail!("softmax-cross-entropy: backward called twice or before forward");
        };
        let (n, v) = logits.dims2()?;
        let scale = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()? / n as f32;
        let targets = targets.to_vec1::<u32>()?;
        // d loss / d logits = (softmax - onehot(target)) / N
        probs
            .par_chunks_mut(v)
            .zip(targets.par_iter())
            .for_each(|(p, &t)| {
                p[t as usize] -= 1.0;
                p.iter_mut().for_each(|p| *p *= scale);
            });
        Ok((
            Some(Tensor::from_vec(probs, (n, v), logits.device())?),
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_loss_and_gradient() {
        let dev = Device::Cpu;
        let data: Vec<f32> = (0..6 * 9)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3)
            .collect();
        let logits = Var::from_vec(data, (6, 9), &dev).unwrap();
        let targets = Tensor::new(&[0u32, 8, 3, 3, 5, 1], &dev).unwrap();
        let ours = cross_entropy(&logits, &targets).unwrap();
        let theirs = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
        let (a, b) = (
            ours.to_scalar::<f32>().unwrap(),
            theirs.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "loss {a} vs candle {b}");
        let ga = ours.affine(3.0, 0.0).unwrap().backward().unwrap();
        let gb = theirs.affine(3.0, 0.0).unwrap().backward().unwrap();
        let max = crate::model::max_abs_diff(ga.get(&logits).unwrap(), gb.get(&logits).unwrap());
        assert!(max < 1e-6, "gradient differs by {max}");
    }
}
