//! RMSprop with PyTorch's semantics, and gradient clipping by global norm. candle-nn has no
//! RMSprop, and its optimizers keep their state private: aviary owns this one so that the
//! state goes into the checkpoint and a resumed run continues exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

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
        for (_, v) in &self.params {
            if let Some(g) = grads.get(v) {
                sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(sum.sqrt())
    }

    /// One update with every gradient multiplied by `scale` (for clipping).
    pub fn step(&mut self, grads: &GradStore, scale: f64) -> Result<()> {
        for ((_, p), v) in self.params.iter().zip(self.square_avg.iter_mut()) {
            let Some(g) = grads.get(p) else { continue };
            let g = if scale != 1.0 {
                g.affine(scale, 0.0)?
            } else {
                g.clone()
            };
            *v = v
                .affine(self.alpha, 0.0)?
                .add(&g.sqr()?.affine(1.0 - self.alpha, 0.0)?)?;
            let update = g
                .div(&v.sqrt()?.affine(1.0, self.eps)?)?
                .affine(self.lr, 0.0)?;
            p.set(&p.sub(&update)?)?;
        }
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

    #[test]
    fn clipping_follows_pytorch() {
        assert_eq!(clip_scale(2.0, 5.0), 1.0);
        assert!((clip_scale(10.0, 5.0) - 0.5).abs() < 1e-6);
        assert_eq!(clip_scale(10.0, 0.0), 1.0);
    }
}
