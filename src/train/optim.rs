//! RMSprop with PyTorch's semantics, and gradient clipping by global norm. candle-nn has no
//! RMSprop, and its optimizers keep their state private: aviary owns this one so that the
//! state goes into the checkpoint and a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::{Error, Result};

/// PyTorch's `torch.optim.RMSprop` (no momentum, not centered):
/// `v = alpha v + (1 - alpha) g^2;  p -= lr g / (sqrt(v) + eps)`, with `v` starting at zero.
pub struct RmsProp {
    /// Learning rate.
    pub lr: f64,
    alpha: f64,
    eps: f64,
    params: Vec<(String, Var)>,
    square_avg: Vec<Tensor>,
}

/// Name prefix of the optimizer's tensors in a state file.
const STATE_PREFIX: &str = "rmsprop.square_avg.";

impl RmsProp {
    /// An optimizer over `params` with zero state.
    pub fn new(params: Vec<(String, Var)>, lr: f64, alpha: f64, eps: f64) -> Result<Self> {
        let square_avg = params
            .iter()
            .map(|(_, v)| v.zeros_like())
            .collect::<candle_core::Result<_>>()?;
        Ok(RmsProp {
            lr,
            alpha,
            eps,
            params,
            square_avg,
        })
    }

    /// The parameters, by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Global L2 norm of the gradients of all parameters.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sum = 0f64;
        for g in self.params.iter().filter_map(|(_, p)| grads.get(p)) {
            sum += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(sum.sqrt())
    }

    /// One update with every gradient multiplied by `scale`.
    pub fn step(&mut self, grads: &GradStore, scale: f64) -> Result<()> {
        self.update(grads, Scale::By(scale))
    }

    /// Clips the gradients to global norm `max_norm` ([`clip_scale`]; `<= 0`: no clipping)
    /// and updates. On the GPU nothing is read back: the norm and the factor are computed
    /// where the gradients are, by the kernels that update.
    pub fn clip_and_step(&mut self, grads: &GradStore, max_norm: f64) -> Result<()> {
        self.update(grads, Scale::ClipTo(max_norm))
    }

    fn update(&mut self, grads: &GradStore, scale: Scale) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(candle_core::Device::Cuda(dev)) = self.params.first().map(|(_, p)| p.device()) {
            return self.update_cuda(&dev.clone(), grads, scale);
        }
        let factor = match scale {
            Scale::By(s) => s,
            Scale::ClipTo(max_norm) => clip_scale(self.grad_norm(grads)?, max_norm),
        } as f32;
        let (alpha, lr, eps) = (self.alpha as f32, self.lr as f32, self.eps as f32);
        for ((_, p), v) in self.params.iter().zip(&self.square_avg) {
            let Some(g) = grads.get(p) else { continue };
            let g = g.contiguous()?;
            v.inplace_op2(
                &g,
                &SquareAvgStep {
                    alpha,
                    scale: factor,
                },
            )?;
            p.as_tensor().inplace_op3(
                v,
                &g,
                &ParamStep {
                    lr,
                    eps,
                    scale: factor,
                },
            )?;
        }
        Ok(())
    }

    /// The update on the GPU: `grad_sq_partials` (when clipping) then `rmsprop_step` of
    /// `kernels.cu` over lists of `TENSOR_LIST` (8) parameters, two launches for the reference
    /// model instead of about forty candle ops and no read back.
    #[cfg(feature = "cuda")]
    fn update_cuda(
        &self,
        dev: &candle_core::cuda_backend::CudaDevice,
        grads: &GradStore,
        scale: Scale,
    ) -> Result<()> {
        use crate::model::cuda::{
            base, launch_blocks, tensor_address, Arg, TensorList, BLOCK, TENSOR_LIST,
        };
        const OP: &str = "rmsprop";
        // Blocks per parameter for the sums of squares, and at most for the update (each
        // thread loops over its share).
        const NORM_BLOCKS: usize = 32;
        const STEP_BLOCKS: usize = 256;
        // Each list with the number of parameters in it.
        let mut lists: Vec<(TensorList, usize)> = Vec::new();
        // The contiguous gradients stay alive until the launches are queued.
        let mut held = Vec::new();
        let mut count = 0;
        for ((name, p), v) in self.params.iter().zip(&self.square_avg) {
            let Some(g) = grads.get(p) else { continue };
            let g = g.contiguous()?;
            let k = count % TENSOR_LIST;
            if k == 0 {
                lists.push((TensorList::default(), 0));
            }
            let (list, used) = lists.last_mut().expect("pushed above");
            *used += 1;
            list.n[k] = u32::try_from(p.elem_count()).map_err(|_| {
                candle_core::Error::Msg(format!("{OP}: {name} has over 2^32 elements"))
            })?;
            list.grad[k] = tensor_address(&g, OP, "a gradient")?;
            list.square_avg[k] = tensor_address(v, OP, "a square average")?;
            list.param[k] = tensor_address(p.as_tensor(), OP, "a parameter")?;
            held.push(g);
            count += 1;
        }
        let (max_norm, fixed_scale) = match scale {
            Scale::By(s) => (0.0, s as f32),
            Scale::ClipTo(m) if m > 0.0 => (m as f32, 1.0),
            Scale::ClipTo(_) => (0.0, 1.0),
        };
        let n_partials = if max_norm > 0.0 {
            count * NORM_BLOCKS
        } else {
            0
        };
        // SAFETY: every partial is written by grad_sq_partials before rmsprop_step reads it.
        let partials = unsafe { dev.alloc::<f32>(n_partials.max(1))? };
        let partials = base(&partials, dev);
        if n_partials > 0 {
            for (c, (list, used)) in lists.iter().enumerate() {
                let at = partials + (c * TENSOR_LIST * NORM_BLOCKS * 4) as u64;
                // SAFETY: the arguments match `grad_sq_partials`; the list holds the live
                // gradients' addresses and sizes, and list c's blocks write partials
                // [c * TENSOR_LIST * NORM_BLOCKS, + used * NORM_BLOCKS) of n_partials.
                unsafe {
                    launch_blocks(
                        dev,
                        "grad_sq_partials",
                        (NORM_BLOCKS, *used),
                        &[Arg::List(Box::new(*list)), Arg::U64(at)],
                    )?
                };
            }
        }
        for (list, used) in &lists {
            let most = list.n.iter().max().copied().unwrap_or(0) as usize;
            let blocks = most.div_ceil(BLOCK as usize).clamp(1, STEP_BLOCKS);
            let args = [
                Arg::List(Box::new(*list)),
                Arg::U64(partials),
                Arg::U32(n_partials as u32),
                Arg::F32(max_norm),
                Arg::F32(fixed_scale),
                Arg::F32(self.lr as f32),
                Arg::F32(self.alpha as f32),
                Arg::F32(self.eps as f32),
            ];
            // SAFETY: the arguments match `rmsprop_step`; each parameter's gradient, square
            // average and values hold n floats (same shapes: checked by candle's backprop
            // and by `load_state`). The kernel writes two operands in place, which candle's
            // in-place ops cannot (they write one), so it writes by address; it is queued on
            // candle's one stream, in order with every other use of those buffers.
            unsafe { launch_blocks(dev, "rmsprop_step", (blocks, *used), &args)? };
        }
        drop(held);
        Ok(())
    }

    /// The optimizer state, by tensor name, for a state file.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .zip(&self.square_avg)
            .map(|((name, _), v)| (format!("{STATE_PREFIX}{name}"), v.clone()))
            .collect()
    }

    /// Restores the state written by [`RmsProp::state`]; `path` names the file in errors.
    pub fn load_state(
        &mut self,
        state: &HashMap<String, Tensor>,
        path: &std::path::Path,
    ) -> Result<()> {
        for ((name, p), v) in self.params.iter().zip(self.square_avg.iter_mut()) {
            let key = format!("{STATE_PREFIX}{name}");
            match state.get(&key) {
                Some(t) if t.dims() == p.dims() => *v = t.clone(),
                Some(t) => {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "optimizer state `{key}` has shape {:?}, the model needs {:?}",
                            t.dims(),
                            p.dims()
                        ),
                        "the state file belongs to another model: train without --restore",
                    ))
                }
                None => {
                    return Err(Error::checkpoint(
                        path,
                        format!("optimizer state `{key}` is missing"),
                        "the state file is incomplete: train without --restore",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// How an update scales the gradients.
#[derive(Clone, Copy)]
enum Scale {
    /// By this factor.
    By(f64),
    /// Down to this global norm ([`clip_scale`]).
    ClipTo(f64),
}

/// `v = alpha v + (1 - alpha) (scale g)^2`, in place on the square average v, over g. On the
/// GPU, `rmsprop_step` in `src/model/kernels.cu` does this and [`ParamStep`] in one pass.
struct SquareAvgStep {
    alpha: f32,
    scale: f32,
}

/// `p -= lr (scale g) / (sqrt(v) + eps)`, in place on the parameter p, over (v, g).
struct ParamStep {
    lr: f32,
    eps: f32,
    scale: f32,
}

/// The contiguous f32 data of an optimizer operand, or an error naming it.
fn operand<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    crate::model::cpu_slice(s, l, "rmsprop", what)
}

/// The same for the operand updated in place.
fn operand_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (l.contiguous_offsets(), s) {
        (Some((a, b)), CpuStorage::F32(v)) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("rmsprop: {what} must be contiguous f32"),
    }
}

/// Elements per task of the CPU loops.
const CHUNK: usize = 1 << 14;

impl InplaceOp2 for SquareAvgStep {
    fn name(&self) -> &'static str {
        "rmsprop-square-avg"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (v, g) = (operand_mut(s1, l1, "square_avg")?, operand(s2, l2, "grad")?);
        let (alpha, scale) = (self.alpha, self.scale);
        v.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(v, g)| {
                for (v, &g) in v.iter_mut().zip(g) {
                    let gs = scale * g;
                    *v = alpha * *v + (1.0 - alpha) * gs * gs;
                }
            });
        Ok(())
    }
}

impl InplaceOp3 for ParamStep {
    fn name(&self) -> &'static str {
        "rmsprop-param"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let p = operand_mut(s1, l1, "parameter")?;
        let (v, g) = (operand(s2, l2, "square_avg")?, operand(s3, l3, "grad")?);
        let (lr, eps, scale) = (self.lr, self.eps, self.scale);
        p.par_chunks_mut(CHUNK)
            .zip(v.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(p, (v, g))| {
                for ((p, &v), &g) in p.iter_mut().zip(v).zip(g) {
                    *p -= lr * (scale * g) / (v.sqrt() + eps);
                }
            });
        Ok(())
    }
}

/// The factor that brings a gradient of global norm `norm` down to `max_norm` (PyTorch's
/// `clip_grad_norm_`: `max_norm / (norm + 1e-6)`, capped at 1). `max_norm <= 0`: no clipping.
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps on a quadratic, against values computed by hand with PyTorch's formula:
    /// torch.optim.RMSprop([p], lr=0.1) on loss = sum(p^2), p = [1, -2]:
    ///   step 1: g = [2, -4], v = 0.01 g^2 = [0.04, 0.16], p -= 0.1 g / (sqrt(v) + 1e-8)
    ///           = [1 - 1, -2 + 1] = [0, -1] (to 1e-6)
    ///   step 2: g = [0, -2], v = 0.99 [0.04, 0.16] + 0.01 [0, 4] = [0.0396, 0.1984],
    ///           p = [0, -1 + 0.2 / 0.44542] = [0, -0.550982]
    #[test]
    fn matches_pytorch_rmsprop_by_hand() {
        let p = Var::from_tensor(&Tensor::new(&[1f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = RmsProp::new(vec![("p".into(), p.clone())], 0.1, 0.99, 1e-8).unwrap();
        for _ in 0..2 {
            let g = p.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            opt.step(&g, 1.0).unwrap();
        }
        let got: Vec<f32> = p.to_vec1().unwrap();
        assert!(got[0].abs() < 1e-5, "{got:?}");
        assert!((got[1] + 0.550_982).abs() < 1e-5, "{got:?}");
    }

    /// A clipped step on a larger parameter (several chunks of the CPU loop) against the
    /// formula in f64, and the global norm over two parameters.
    #[test]
    fn scaled_step_and_norm_follow_the_formula() {
        let n = 40_000;
        let init: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 10.0).collect();
        let p = Var::from_vec(init.clone(), n, &Device::Cpu).unwrap();
        let q = Var::from_vec(vec![3f32, 4.0], 2, &Device::Cpu).unwrap();
        let mut opt = RmsProp::new(
            vec![("p".into(), p.clone()), ("q".into(), q.clone())],
            0.01,
            0.9,
            1e-8,
        )
        .unwrap();
        // loss = sum(p^2 / 2) + sum(q^2 / 2): gradients p and q.
        let loss = p
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .add(&q.sqr().unwrap().sum_all().unwrap())
            .unwrap()
            .affine(0.5, 0.0)
            .unwrap();
        let grads = loss.backward().unwrap();
        let want_norm = (init.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() + 25.0).sqrt();
        let norm = opt.grad_norm(&grads).unwrap();
        assert!(
            (norm - want_norm).abs() < 1e-6 * want_norm,
            "{norm} vs {want_norm}"
        );
        // RMSprop ignores a gradient scale that never changes: step once unscaled, then once
        // clipped to a quarter, against the formula in f64.
        opt.step(&grads, 1.0).unwrap();
        let mid: Vec<f32> = p.to_vec1().unwrap();
        let loss = p
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .affine(0.5, 0.0)
            .unwrap();
        opt.step(&loss.backward().unwrap(), 0.25).unwrap();
        let got: Vec<f32> = p.to_vec1().unwrap();
        for k in 0..n {
            let (g1, g2) = (init[k] as f64, 0.25 * mid[k] as f64);
            let v1 = 0.1 * g1 * g1;
            let want_mid = init[k] as f64 - 0.01 * g1 / (v1.sqrt() + 1e-8);
            let v2 = 0.9 * v1 + 0.1 * g2 * g2;
            let want = mid[k] as f64 - 0.01 * g2 / (v2.sqrt() + 1e-8);
            assert!(
                (mid[k] as f64 - want_mid).abs() < 1e-5,
                "element {k} after one step"
            );
            assert!(
                (got[k] as f64 - want).abs() < 1e-5,
                "element {k}: {} vs {want}",
                got[k]
            );
        }
    }

    /// Clipping on the device does what clipping with the factor read back does, whether
    /// the norm is above the limit or below it.
    #[test]
    fn clip_and_step_matches_stepping_with_the_host_factor() {
        for max_norm in [0.5, 1e6, 0.0] {
            let run = |on_device: bool| -> Vec<f32> {
                let p = Var::from_vec(
                    (0..300).map(|i| (i as f32 - 150.0) / 40.0).collect(),
                    300,
                    &Device::Cpu,
                )
                .unwrap();
                let mut opt =
                    RmsProp::new(vec![("p".into(), p.clone())], 0.01, 0.99, 1e-8).unwrap();
                for _ in 0..3 {
                    let grads = p.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                    if on_device {
                        opt.clip_and_step(&grads, max_norm).unwrap();
                    } else {
                        let scale = clip_scale(opt.grad_norm(&grads).unwrap(), max_norm);
                        opt.step(&grads, scale).unwrap();
                    }
                }
                p.to_vec1().unwrap()
            };
            let (device, host) = (run(true), run(false));
            for (a, b) in device.iter().zip(&host) {
                assert!((a - b).abs() < 1e-6, "max_norm {max_norm}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn clipping_follows_pytorch() {
        assert_eq!(clip_scale(2.0, 5.0), 1.0);
        assert!((clip_scale(10.0, 5.0) - 0.5).abs() < 1e-6);
        assert_eq!(clip_scale(10.0, 0.0), 1.0);
    }
}
