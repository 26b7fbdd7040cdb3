//! SGD with momentum and weight decay, as PyTorch defines it (candle-nn's SGD has no momentum):
//! d = g + wd·p; buf = μ·buf + d (buf = d at the first step); p ← p − lr·buf.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

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
            *buf = Some(b.detach());
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
