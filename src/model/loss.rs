//! Softmax cross-entropy as one candle op: one pass over the logits forward (keeping the
//! probabilities), one backward (`(softmax - onehot) * dL/drow`), where candle's composed
//! `log_softmax` + `nll` make about ten passes and as many temporaries each way. On the CPU
//! a loop per row; on CUDA one block per row forward and one thread per logit backward
//! (`softmax_xent_fwd`, `softmax_xent_bwd` in `kernels.cu`, transcriptions of the loops).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_kernels as kernels;

/// Mean cross-entropy (nats) of `targets` [N] (u32) under `logits` [N, V]: fused in f32 on the
/// CPU and on CUDA, candle's composed ops otherwise.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let device = logits.device();
    let fused = (device.is_cpu() || device.is_cuda())
        && logits.dtype() == DType::F32
        && targets.dtype() == DType::U32;
    if fused {
        // Row losses [N], then their mean (in order on the CPU: the same bits every run).
        logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, SoftmaxCrossEntropy::default())?
            .mean_all()
    } else {
        candle_nn::loss::cross_entropy(logits, targets)
    }
}

/// The softmax of the logits, kept for the backward pass.
enum Probs {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>),
}

/// The fused op: (logits [N, V], targets [N]) → each row's loss [N]; see [`cross_entropy`].
#[derive(Default)]
struct SoftmaxCrossEntropy {
    probs: Mutex<Option<Probs>>,
}

/// (N, V) of the op's arguments, checked.
fn dims(logits: &Layout, targets: &Layout) -> candle_core::Result<(usize, usize)> {
    let (n, v) = logits.shape().dims2()?;
    if targets.shape().dims1()? != n {
        candle_core::bail!(
            "softmax-cross-entropy: {n} rows of logits but targets {:?}",
            targets.shape()
        );
    }
    Ok((n, v))
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
        let (n, v) = dims(l1, l2)?;
        let logits = super::cpu_slice::<f32>(s1, l1, self.name(), "logits")?;
        let targets = super::cpu_slice::<u32>(s2, l2, self.name(), "targets")?;
        if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
            candle_core::bail!("softmax-cross-entropy: target {bad} outside the {v} classes");
        }
        let mut probs = vec![0f32; n * v];
        let mut row_loss = vec![0f32; n];
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
                *loss = sum.ln() + max - x[t as usize];
            });
        *self.probs.lock().expect("loss state poisoned") = Some(Probs::Cpu(probs));
        Ok((CpuStorage::F32(row_loss), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{address, base, launch_blocks, Arg};
        use candle_core::backend::BackendStorage;
        let (n, v) = dims(l1, l2)?;
        let dev = s1.device().clone();
        // SAFETY (both): the kernel writes every row's probabilities and loss.
        let probs = unsafe { dev.alloc::<f32>(n * v)? };
        let rows = unsafe { dev.alloc::<f32>(n)? };
        let args = [
            Arg::U32(v as u32),
            Arg::U64(address::<f32>(s1, l1, self.name(), "logits")?),
            Arg::U64(address::<u32>(s2, l2, self.name(), "targets")?),
            Arg::U64(base(&probs, &dev)),
            Arg::U64(base(&rows, &dev)),
        ];
        // SAFETY: the arguments match `softmax_xent_fwd` (one block per row); the buffers
        // hold N x V and N values. Targets outside [0, V) read as probability 0 (loss inf).
        unsafe { launch_blocks(&dev, "softmax_xent_fwd", (n, 1), &args)? };
        *self.probs.lock().expect("loss state poisoned") = Some(Probs::Cuda(probs));
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(rows, dev),
            Shape::from(n),
        ))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let Some(probs) = self.probs.lock().expect("loss state poisoned").take() else {
            candle_core::bail!("softmax-cross-entropy: backward called twice or before forward");
        };
        let grad = SoftmaxCrossEntropyGrad {
            probs: Mutex::new(Some(probs)),
            classes: logits.dim(1)?,
        };
        let rows = grad_res.to_dtype(DType::F32)?.contiguous()?;
        Ok((Some(targets.apply_op2_no_bwd(&rows, &grad)?), None))
    }
}

/// The gradient: (targets [N], dL/drow [N]) → `(softmax - onehot(target)) * dL/drow` [N, V],
/// written over the kept probabilities.
struct SoftmaxCrossEntropyGrad {
    probs: Mutex<Option<Probs>>,
    classes: usize,
}

impl CustomOp2 for SoftmaxCrossEntropyGrad {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some(Probs::Cpu(mut probs)) = self.probs.lock().expect("loss state poisoned").take()
        else {
            candle_core::bail!("softmax-cross-entropy: the forward pass ran elsewhere or twice");
        };
        let targets = super::cpu_slice::<u32>(s1, l1, self.name(), "targets")?;
        let grad_rows = super::cpu_slice::<f32>(s2, l2, self.name(), "grad")?;
        let v = self.classes;
        probs
            .par_chunks_mut(v)
            .zip(targets.par_iter().zip(grad_rows.par_iter()))
            .for_each(|(p, (&t, &g))| {
                p[t as usize] -= 1.0;
                p.iter_mut().for_each(|p| *p *= g);
            });
        Ok((CpuStorage::F32(probs), Shape::from((targets.len(), v))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{address, base, launch, Arg};
        use candle_core::backend::BackendStorage;
        let Some(Probs::Cuda(probs)) = self.probs.lock().expect("loss state poisoned").take()
        else {
            candle_core::bail!("softmax-cross-entropy: the forward pass ran elsewhere or twice");
        };
        let dev = s1.device().clone();
        let (n, v) = (l1.shape().elem_count(), self.classes);
        let args = [
            Arg::U32((n * v) as u32),
            Arg::U32(v as u32),
            Arg::U64(address::<u32>(s1, l1, self.name(), "targets")?),
            Arg::U64(address::<f32>(s2, l2, self.name(), "grad")?),
            Arg::U64(base(&probs, &dev)),
        ];
        // SAFETY: the arguments match `softmax_xent_bwd`; probs holds N x V floats, targets
        // and grad N values each.
        unsafe { launch(&dev, "softmax_xent_bwd", n * v, &args)? };
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(probs, dev),
            Shape::from((n, v)),
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

    #[test]
    fn target_outside_the_classes_is_refused() {
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
        let err = cross_entropy(&logits, &targets).unwrap_err().to_string();
        assert!(err.contains("target 3 outside the 3 classes"), "{err}");
    }
}
