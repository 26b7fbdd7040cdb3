//! Memory banks: one row per training image, no gradient, updated after each step with
//! momentum (IDFD: v_i ← normalize(0.5·v_i + 0.5·f_i)).

use candle_core::{DType, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::l2_normalize;

#[derive(Debug, Clone)]
pub struct MemoryBank {
    rows: Tensor,
    momentum: f64,
}

impl MemoryBank {
    /// IDFD's initialisation: U(−a, a) with a = 1/√(d/3), not normalised.
    pub fn random(n: usize, d: usize, momentum: f64, seed: u64, device: &Device) -> Result<Self> {
        let a = 1.0 / (d as f32 / 3.0).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let values: Vec<f32> = (0..n * d).map(|_| rng.random_range(-a..a)).collect();
        Ok(Self {
            rows: Tensor::from_vec(values, (n, d), device)?,
            momentum,
        })
    }

    /// A bank initialised from embeddings (e.g. a first pass over the un-augmented images).
    pub fn from_rows(rows: Tensor, momentum: f64) -> Result<Self> {
        Ok(Self {
            rows: l2_normalize(&rows.to_dtype(DType::F32)?)?.detach(),
            momentum,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn rows(&self) -> &Tensor {
        &self.rows
    }

    /// f Vᵀ: similarities of a batch (B×d) to every bank row (B×N).
    pub fn similarities(&self, features: &Tensor) -> Result<Tensor> {
        features.matmul(&self.rows.t()?)
    }

    /// v_i ← normalize(m·v_i + (1−m)·f_i) for the batch rows `indices` (u32, unique).
    pub fn update(&mut self, indices: &Tensor, features: &Tensor) -> Result<()> {
        let features = features.detach();
        let old = self.rows.index_select(indices, 0)?;
        let mixed = ((&old * self.momentum)? + (&features * (1.0 - self.momentum))?)?;
        let new = l2_normalize(&mixed)?;
        self.rows = self.rows.index_add(indices, &(new - old)?, 0)?.detach();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_uniform_in_the_idfd_range_and_update_touches_only_the_batch_rows() {
        let d = 12;
        let mut bank = MemoryBank::random(5, d, 0.5, 3, &Device::Cpu).unwrap();
        let a = 1.0 / (d as f32 / 3.0).sqrt();
        let before: Vec<Vec<f32>> = bank.rows().to_vec2().unwrap();
        assert!(before.iter().flatten().all(|v| v.abs() < a));

        let f = l2_normalize(&Tensor::ones((2, d), DType::F32, &Device::Cpu).unwrap()).unwrap();
        let idx = Tensor::new(&[1u32, 3], &Device::Cpu).unwrap();
        bank.update(&idx, &f).unwrap();
        let after: Vec<Vec<f32>> = bank.rows().to_vec2().unwrap();
        for i in [0, 2, 4] {
            assert_eq!(before[i], after[i]);
        }
        let fv = 1.0 / (d as f32).sqrt();
        for i in [1, 3] {
            let mixed: Vec<f32> = before[i].iter().map(|v| 0.5 * v + 0.5 * fv).collect();
            let norm = mixed.iter().map(|v| v * v).sum::<f32>().sqrt();
            for (got, want) in after[i].iter().zip(mixed.iter().map(|v| v / norm)) {
                assert!((got - want).abs() < 1e-6);
            }
        }
    }
}
