//! SGD with momentum and weight decay, as PyTorch defines it (candle-nn's SGD has no momentum):
//! d = g + wd·p; buf = μ·buf + d (buf = d at the first step); p ← p − lr·buf.

use candle_core::{
    backprop::GradStore, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var,
};

use crate::kernels::{f32_contiguous, f32_contiguous_mut};

pub struct Sgd {
    /// (name, parameter, momentum buffer); names key the buffers in checkpoints.
    params: Vec<(String, Var, Option<Tensor>)>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Sgd {
    pub fn new(vars: Vec<(String, Var)>, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self {
            params: vars.into_iter().map(|(n, v)| (n, v, None)).collect(),
            lr,
            momentum,
            weight_decay,
        }
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (_, var, buf) in self.params.iter_mut() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // On the CPU, once a momentum buffer exists, both updates run in place: one pass
            // each, no new tensors (as candle ops, six passes and six allocations per
            // parameter, on the main thread while the workers wait). The same f32 operations
            // in the same order, so the same values.
            let in_place =
                var.device().is_cpu() && var.dtype() == DType::F32 && self.momentum != 0.0;
            match buf.as_ref() {
                Some(prev) if in_place => {
                    prev.inplace_op3(
                        g,
                        var.as_tensor(),
                        &MomentumUpdate {
                            momentum: self.momentum as f32,
                            weight_decay: self.weight_decay as f32,
                        },
                    )?;
                    var.as_tensor()
                        .inplace_op2(prev, &ParameterUpdate { lr: self.lr as f32 })?;
                    continue;
                }
                _ => {}
            }
            let d = if self.weight_decay != 0.0 {
                (g + (var.as_tensor() * self.weight_decay)?)?
            } else {
                g.clone()
            };
            let b = match buf.take() {
                Some(prev) if self.momentum != 0.0 => ((prev * self.momentum)? + d)?,
                _ => d,
            };
            var.set(&(var.as_tensor() - (&b * self.lr)?)?)?;
            // The in-place updates need a buffer of its own, not the gradient's storage.
            *buf = Some(if in_place {
                b.detach().copy()?
            } else {
                b.detach()
            });
        }
        Ok(())
    }

    /// Momentum buffers by parameter name, for checkpoints.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .filter_map(|(n, _, b)| b.as_ref().map(|b| (n.clone(), b.clone())))
            .collect()
    }

    /// Restores buffers saved by [`Sgd::buffers`]; parameters without one start afresh.
    pub fn set_buffers(&mut self, mut lookup: impl FnMut(&str) -> Option<Tensor>) {
        for (name, _, slot) in self.params.iter_mut() {
            *slot = lookup(name);
        }
    }
}

/// buf ← μ·buf + (g + wd·p), in place: candle's `affine` computes x·a + 0, kept here so the
/// result is the same float.
struct MomentumUpdate {
    momentum: f32,
    weight_decay: f32,
}

impl InplaceOp3 for MomentumUpdate {
    fn name(&self) -> &'static str {
        "sgd-momentum"
    }

    fn cpu_fwd(
        &self,
        buf: &mut CpuStorage,
        l_buf: &Layout,
        g: &CpuStorage,
        l_g: &Layout,
        p: &CpuStorage,
        l_p: &Layout,
    ) -> Result<()> {
        let buf = f32_contiguous_mut(buf, l_buf, self.name())?;
        let (g, p) = (
            f32_contiguous(g, l_g, self.name())?,
            f32_contiguous(p, l_p, self.name())?,
        );
        if g.len() != buf.len() || p.len() != buf.len() {
            candle_core::bail!("{}: buffer, gradient and parameter differ", self.name());
        }
        let (mu, wd) = (self.momentum, self.weight_decay);
        if wd != 0.0 {
            for ((b, &g), &p) in buf.iter_mut().zip(g).zip(p) {
                *b = (*b * mu + 0.0) + (g + (p * wd + 0.0));
            }
        } else {
            for (b, &g) in buf.iter_mut().zip(g) {
                *b = (*b * mu + 0.0) + g;
            }
        }
        Ok(())
    }
}

/// p ← p − lr·buf, in place.
struct ParameterUpdate {
    lr: f32,
}

impl InplaceOp2 for ParameterUpdate {
    fn name(&self) -> &'static str {
        "sgd-parameter"
    }

    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        l_p: &Layout,
        buf: &CpuStorage,
        l_b: &Layout,
    ) -> Result<()> {
        let p = f32_contiguous_mut(p, l_p, self.name())?;
        let buf = f32_contiguous(buf, l_b, self.name())?;
        if buf.len() != p.len() {
            candle_core::bail!("{}: parameter and buffer differ", self.name());
        }
        for (p, &b) in p.iter_mut().zip(buf) {
            *p -= b * self.lr + 0.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn two_steps_match_pytorch_sgd_arithmetic() {
        // p0 = 1, loss = p² → g = 2p. lr 0.1, μ 0.9, wd 0.5.
        // step 1: d = 2 + 0.5 = 2.5, buf = 2.5, p = 1 − 0.25 = 0.75
        // step 2: d = 1.5 + 0.375 = 1.875, buf = 2.25 + 1.875 = 4.125, p = 0.75 − 0.4125 = 0.3375
        let p = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let mut sgd = Sgd::new(vec![("p".into(), p.clone())], 0.1, 0.9, 0.5);
        for _ in 0..2 {
            let grads = p
                .as_tensor()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            sgd.step(&grads).unwrap();
        }
        let v: Vec<f64> = p.as_tensor().to_vec1().unwrap();
        assert!((v[0] - 0.3375).abs() < 1e-12, "{v:?}");
    }

    /// f32 parameters on the CPU, whose updates run in place from the second step on, follow
    /// PyTorch's arithmetic step by step to the last bit, with and without weight decay.
    #[test]
    fn in_place_updates_follow_the_formula_exactly() {
        for weight_decay in [0.0, 5e-4] {
            let (lr, momentum) = (0.03, 0.9);
            let start = [0.7f32, -1.3, 2.1, 1e-3, -4.0];
            let scale = Tensor::new(&[1.0f32, 0.5, -2.0, 3.0, 0.25], &Device::Cpu).unwrap();
            let p = Var::new(&start, &Device::Cpu).unwrap();
            let mut sgd = Sgd::new(vec![("p".into(), p.clone())], lr, momentum, weight_decay);
            let (mut expected, mut buf) = (start.to_vec(), None::<Vec<f32>>);
            for step in 0..4 {
                let loss = (p.as_tensor().sqr().unwrap() * &scale)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                let g: Vec<f32> = grads.get(p.as_tensor()).unwrap().to_vec1().unwrap();
                let d: Vec<f32> = g
                    .iter()
                    .zip(&expected)
                    .map(|(&g, &p)| g + p * weight_decay as f32)
                    .collect();
                let b: Vec<f32> = match &buf {
                    Some(b) => b
                        .iter()
                        .zip(&d)
                        .map(|(&b, &d)| b * momentum as f32 + d)
                        .collect(),
                    None => d,
                };
                expected = expected
                    .iter()
                    .zip(&b)
                    .map(|(&p, &b)| p - b * lr as f32)
                    .collect();
                buf = Some(b);
                sgd.step(&grads).unwrap();
                let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
                assert_eq!(got, expected, "weight decay {weight_decay}, step {step}");
            }
        }
    }

    #[test]
    fn gradients_sum_over_every_use_of_a_tensor() {
        // The vendored candle-core (Cargo.toml's [patch]) stores the first gradient to reach a
        // node as it is and adds the later ones: a tensor used three times, once through a
        // transposed view, must still get the sum of the three, and its gradient contiguous.
        // x = [1, 2, 3], h = 3x, y = Σ h·a + Σ h + Σ h² + Σ (hᵀ·2)
        // dy/dh = a + 1 + 2h + 2 = [11, 18, 25] for a = [2, 3, 4], so dy/dx = [33, 54, 75].
        let dev = Device::Cpu;
        let x = Var::new(&[1.0f32, 2.0, 3.0], &dev).unwrap();
        let a = Tensor::new(&[2.0f32, 3.0, 4.0], &dev).unwrap();
        let h = (x.as_tensor() * 3.0).unwrap();
        let ht = h.reshape((3, 1)).unwrap().t().unwrap();
        let y = [
            (&h * &a).unwrap().sum_all().unwrap(),
            h.sum_all().unwrap(),
            h.sqr().unwrap().sum_all().unwrap(),
            (ht * 2.0).unwrap().sum_all().unwrap(),
        ]
        .into_iter()
        .reduce(|p, q| (p + q).unwrap())
        .unwrap();
        let grads = y.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert!(g.is_contiguous());
        assert_eq!(g.to_vec1::<f32>().unwrap(), vec![33.0, 54.0, 75.0]);
    }
}
