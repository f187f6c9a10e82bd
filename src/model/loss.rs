//! Softmax cross-entropy as one candle op: one pass over the logits forward (keeping the
//! probabilities), one backward (`(softmax - onehot) * dL/drow`), where candle's composed
//! `log_softmax` + `nll` make about ten passes and as many temporaries each way. On the CPU
//! a loop per row; on CUDA one block per row forward and one thread per logit backward
//! (`softmax_xent_fwd`, `softmax_xent_bwd` in `kernels.cu`, transcriptions of the loops).
//!
//! On the CPU the output layer and the loss are one op ([`output_cross_entropy`]): the
//! logits come from one product with the biases already in place, the probabilities are
//! written over them, and the backward pass makes the three gradients with two products and
//! one column sum, where candle's graph made a dozen passes and temporaries (forward and
//! backward at the reference shapes with dropout: 77 -> 57 ms on a 2-core EPYC).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::bf16::{gemm, Precision};
use super::cpu_kernels::{self as kernels, Mat};
use super::dropout::Mask;
use super::fused_lstm::split_grads;

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

/// Mean cross-entropy (nats) of `targets` [N] (u32) under the output layer's logits
/// `dropout(x) @ w^T + b`, `x` [N, H], `w` [V, H], `b` [V], dropout by `mask` where there is
/// one: one op on the CPU in f32 (see the module's doc; its three products at `precision`),
/// candle's ops elsewhere.
pub fn output_cross_entropy(
    x: &Tensor,
    mask: Option<Mask>,
    w: &Tensor,
    b: &Tensor,
    targets: &Tensor,
    precision: Precision,
) -> candle_core::Result<Tensor> {
    let fused = x.device().is_cpu()
        && [x, w, b].iter().all(|t| t.dtype() == DType::F32)
        && targets.dtype() == DType::U32;
    if !fused {
        let x = match mask {
            Some(mask) => x.contiguous()?.apply_op1(mask)?,
            None => x.clone(),
        };
        return cross_entropy(&x.matmul(&w.t()?)?.broadcast_add(b)?, targets);
    }
    let op = OutputLoss {
        targets: targets.flatten_all()?.to_vec1::<u32>()?,
        mask,
        probs: Mutex::new(None),
        precision,
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)?
        .mean_all()
}

/// The output layer and the loss as one op: (x [N, H], w [V, H], b [V]) -> each row's loss
/// [N], the targets held; see [`output_cross_entropy`].
struct OutputLoss {
    targets: Vec<u32>,
    /// Dropout on x.
    mask: Option<Mask>,
    /// The softmax [N, V] and, with dropout, x after it [N, H], kept for the backward pass.
    probs: Mutex<Option<Kept>>,
    /// The products' (forward and backward).
    precision: Precision,
}

/// What [`OutputLoss`]'s forward pass keeps.
struct Kept {
    probs: Vec<f32>,
    dropped_x: Option<Vec<f32>>,
}

impl OutputLoss {
    /// (N, H, V) of the op's arguments, checked against each other and the targets.
    fn dims(
        &self,
        x: &Layout,
        w: &Layout,
        b: &Layout,
    ) -> candle_core::Result<(usize, usize, usize)> {
        let (n, h) = x.shape().dims2()?;
        let (v, hw) = w.shape().dims2()?;
        if hw != h || b.shape().dims1()? != v || self.targets.len() != n {
            candle_core::bail!(
                "output-cross-entropy: shapes disagree: x {:?}, w {:?}, b {:?}, {} targets (want [N,H], [V,H], [V], N)",
                x.shape(),
                w.shape(),
                b.shape(),
                self.targets.len()
            );
        }
        Ok((n, h, v))
    }
}

impl CustomOp3 for OutputLoss {
    fn name(&self) -> &'static str {
        "output-cross-entropy"
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
        let (n, h, v) = self.dims(l1, l2, l3)?;
        let x = super::cpu_slice::<f32>(s1, l1, self.name(), "x")?;
        let w = super::cpu_slice::<f32>(s2, l2, self.name(), "w")?;
        let b = super::cpu_slice::<f32>(s3, l3, self.name(), "b")?;
        check_targets(&self.targets, v)?;
        let dropped_x = self.mask.map(|mask| {
            let mut y = vec![0f32; x.len()];
            mask.apply_to(x, &mut y);
            y
        });
        let x = dropped_x.as_deref().unwrap_or(x);
        // logits = b in every row, + x w^T.
        let mut logits = Vec::with_capacity(n * v);
        for _ in 0..n {
            logits.extend_from_slice(b);
        }
        gemm(
            self.precision,
            &mut logits,
            Mat::new(x, n, h),
            Mat::new(w, v, h).t(),
            true,
        );
        let row_loss = softmax_rows(&mut logits, &self.targets, v);
        *self.probs.lock().expect("loss state poisoned") = Some(Kept {
            probs: logits,
            dropped_x,
        });
        Ok((CpuStorage::F32(row_loss), Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(kept) = self.probs.lock().expect("loss state poisoned").take() else {
            candle_core::bail!("output-cross-entropy: backward called twice or before forward");
        };
        let grad = OutputLossGrad {
            targets: &self.targets,
            mask: self.mask,
            precision: self.precision,
            kept: Mutex::new(Some(kept)),
            grad_rows: grad_res.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        };
        // [dx | dw | db], flat.
        let all = x.apply_op3_no_bwd(w, b, &grad)?;
        split_grads(&all, [x, w, b])
    }
}

/// [`OutputLoss`]'s backward pass as an op over (x, w, b): the logits' gradient written over
/// the kept probabilities, then dx = dropout(dlogits w), dw = dlogits^T dropout(x), db = the
/// column sums.
struct OutputLossGrad<'a> {
    targets: &'a [u32],
    mask: Option<Mask>,
    precision: Precision,
    kept: Mutex<Option<Kept>>,
    grad_rows: Vec<f32>,
}

impl CustomOp3 for OutputLossGrad<'_> {
    fn name(&self) -> &'static str {
        "output-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        _s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h) = l1.shape().dims2()?;
        let v = l3.shape().dims1()?;
        let x = super::cpu_slice::<f32>(s1, l1, self.name(), "x")?;
        let w = super::cpu_slice::<f32>(s2, l2, self.name(), "w")?;
        let Some(Kept {
            probs: mut dlogits,
            dropped_x,
        }) = self.kept.lock().expect("loss state poisoned").take()
        else {
            candle_core::bail!("output-cross-entropy: the gradient was taken twice");
        };
        logit_grads(&mut dlogits, self.targets, &self.grad_rows, v);
        let mut all = vec![0f32; n * h + v * h + v];
        let (dx, rest) = all.split_at_mut(n * h);
        let (dw, db) = rest.split_at_mut(v * h);
        let dlogits_m = Mat::new(&dlogits, n, v);
        let x = dropped_x.as_deref().unwrap_or(x);
        let p = self.precision;
        gemm(p, dw, dlogits_m.t(), Mat::new(x, n, h), false);
        match self.mask {
            Some(mask) => {
                // The dropped x's buffer is free now: the gradient before dropout goes there.
                let mut before = dropped_x.expect("kept with the mask");
                gemm(p, &mut before, dlogits_m, Mat::new(w, v, h), false);
                mask.apply_to(&before, dx);
            }
            None => gemm(p, dx, dlogits_m, Mat::new(w, v, h), false),
        }
        // Column sums in row order (the same bits on any number of threads).
        const COLS: usize = 64;
        db.par_chunks_mut(COLS).enumerate().for_each(|(c, db)| {
            let start = c * COLS;
            for row in dlogits.chunks_exact(v) {
                for (d, &g) in db.iter_mut().zip(&row[start..]) {
                    *d += g;
                }
            }
        });
        Ok((CpuStorage::F32(all), Shape::from(n * h + v * h + v)))
    }
}

/// Refuses a target outside the `v` classes.
fn check_targets(targets: &[u32], v: usize) -> candle_core::Result<()> {
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("softmax-cross-entropy: target {bad} outside the {v} classes");
    }
    Ok(())
}

/// Each row of `x` [N, V]: the logits in, their softmax out; returns each row's loss
/// `-ln softmax(x)[target]`.
fn softmax_rows(x: &mut [f32], targets: &[u32], v: usize) -> Vec<f32> {
    let mut row_loss = vec![0f32; targets.len()];
    x.par_chunks_mut(v)
        .zip(targets.par_iter())
        .zip(row_loss.par_iter_mut())
        .for_each(|((p, &t), loss)| kernels::softmax_row(p, t as usize, loss));
    row_loss
}

/// The softmax `probs` [N, V] in, the logits' gradient `(softmax - onehot(target)) * dL/drow`
/// out.
fn logit_grads(probs: &mut [f32], targets: &[u32], grad_rows: &[f32], v: usize) {
    probs
        .par_chunks_mut(v)
        .zip(targets.par_iter().zip(grad_rows.par_iter()))
        .for_each(|(p, (&t, &g))| {
            p[t as usize] -= 1.0;
            p.iter_mut().for_each(|p| *p *= g);
        });
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
        check_targets(targets, v)?;
        let mut probs = logits.to_vec();
        let row_loss = softmax_rows(&mut probs, targets, v);
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
        logit_grads(&mut probs, targets, grad_rows, v);
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

    /// The fused output layer and loss against dropout, the product, the bias and candle's
    /// loss: the loss and the gradients of x, w and b, with dropout and without.
    #[test]
    fn output_layer_and_loss_match_candle() {
        let dev = Device::Cpu;
        let (n, h, v) = (37, 19, 23);
        let x = Var::from_tensor(&crate::model::rand_tensor(&[n, h], 1, 1.0)).unwrap();
        let w = Var::from_tensor(&crate::model::rand_tensor(&[v, h], 2, 0.5)).unwrap();
        let b = Var::from_tensor(&crate::model::rand_tensor(&[v], 3, 0.5)).unwrap();
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % v) as u32).collect();
        let targets = Tensor::from_vec(targets, n, &dev).unwrap();
        for rate in [0.0, 0.3] {
            let mut dropout = crate::model::Dropout::new(rate, 5);
            let mut same = crate::model::Dropout::new(rate, 5);
            let ours =
                output_cross_entropy(&x, dropout.next_mask(), &w, &b, &targets, Precision::F32)
                    .unwrap();
            let dropped = same.apply(&x).unwrap();
            let logits = dropped
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            let theirs = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
            let (a, c) = (
                ours.to_scalar::<f32>().unwrap(),
                theirs.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (a - c).abs() < 1e-5,
                "dropout {rate}: loss {a} vs candle {c}"
            );
            let ga = ours.affine(3.0, 0.0).unwrap().backward().unwrap();
            let gb = theirs.affine(3.0, 0.0).unwrap().backward().unwrap();
            for (name, var) in [("x", &x), ("w", &w), ("b", &b)] {
                let (g_ours, g_theirs) = (ga.get(var).unwrap(), gb.get(var).unwrap());
                assert_eq!(g_ours.dims(), g_theirs.dims(), "{name}");
                let max = crate::model::max_abs_diff(g_ours, g_theirs);
                assert!(
                    max < 1e-5,
                    "dropout {rate}: gradient of {name} differs by {max}"
                );
            }
        }
    }

    #[test]
    fn output_layer_refuses_a_target_outside_the_classes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 4), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
        let targets = Tensor::new(&[0u32, 3], &dev).unwrap();
        let err = output_cross_entropy(&x, None, &w, &b, &targets, Precision::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("target 3 outside the 3 classes"), "{err}");
    }

    #[test]
    fn target_outside_the_classes_is_refused() {
        let logits = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
        let err = cross_entropy(&logits, &targets).unwrap_err().to_string();
        assert!(err.contains("target 3 outside the 3 classes"), "{err}");
    }
}
