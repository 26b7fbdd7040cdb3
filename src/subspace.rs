//! The contrastive subspace of the salient embedding: the directions in which the target
//! images' embeddings vary more than the reference images' do.
//!
//! Training keeps the salient encoder from modelling the background, but not completely: on a
//! reference set of several textures, the references' embeddings still spread along a few
//! directions that the targets' embeddings share, and k-means on the whole embedding follows
//! them. The eigenvectors of `Cov(target) − Cov(reference)` (contrastive PCA with α = 1, on the
//! embeddings instead of the pixels) with a positive eigenvalue span the directions where the
//! targets vary more; projecting every embedding onto them, then normalising again, drops the
//! rest. It is fitted once after training, has no setting of its own (every positive direction
//! is kept), and is one `MatMul` in the exported graph. See docs/research/salient-encoder.md,
//! "The contrastive subspace of the salient embedding".

use rayon::prelude::*;

use crate::baselines::{cpca, normalize_rows, BaselineError};

/// The salient encoder's contrastive subspace in the model's weights: the d×d orthogonal
/// projector onto it.
pub const SUBSPACE_TENSOR: &str = "salient.contrastive_subspace";

/// An orthogonal projector onto the directions of the embedding space where targets vary more
/// than references.
#[derive(Clone, Debug, PartialEq)]
pub struct ContrastiveSubspace {
    d: usize,
    /// d×d, row-major: `Σ v vᵀ` over the kept directions (symmetric when fitted; applied as
    /// `x · P` here and in the ONNX graph alike).
    projector: Vec<f32>,
    rank: usize,
}

impl ContrastiveSubspace {
    /// Fits the subspace to the L2-normalised salient embeddings of the target and reference
    /// images (rows of `d`). Where no direction has more target than reference variance, the
    /// embedding has nothing but background to offer k-means; the whole space is kept then
    /// (rank d) and a warning logged, so that training still ends with a model.
    pub fn fit(target: &[f32], reference: &[f32], d: usize) -> Result<Self, BaselineError> {
        let fitted = cpca(target, reference, d, d, 1.0)?;
        let kept: Vec<&[f32]> = fitted
            .components
            .chunks_exact(d)
            .zip(&fitted.eigenvalues)
            .filter(|(_, &value)| value > 0.0)
            .map(|(direction, _)| direction)
            .collect();
        if kept.is_empty() {
            tracing::warn!(
                "no direction of the salient embedding varies more over the targets than over the references: the whole embedding is kept"
            );
            return Ok(Self::identity(d));
        }
        let mut projector = vec![0.0f64; d * d];
        for v in &kept {
            for (i, &vi) in v.iter().enumerate() {
                let row = &mut projector[i * d..(i + 1) * d];
                for (p, &vj) in row.iter_mut().zip(v.iter()) {
                    *p += f64::from(vi) * f64::from(vj);
                }
            }
        }
        Ok(Self {
            d,
            projector: projector.into_iter().map(|p| p as f32).collect(),
            rank: kept.len(),
        })
    }

    fn identity(d: usize) -> Self {
        let mut projector = vec![0.0f32; d * d];
        (0..d).for_each(|i| projector[i * d + i] = 1.0);
        Self {
            d,
            projector,
            rank: d,
        }
    }

    /// A projector read back from a model's weights. `rank` is its trace, rounded.
    pub fn from_projector(projector: Vec<f32>, d: usize) -> Result<Self, String> {
        if d == 0 || projector.len() != d * d {
            return Err(format!(
                "{} values where a {d}×{d} projector was expected",
                projector.len()
            ));
        }
        if let Some(i) = projector.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "non-finite value at row {}, column {}",
                i / d,
                i % d
            ));
        }
        let trace: f64 = (0..d).map(|i| f64::from(projector[i * d + i])).sum();
        Ok(Self {
            d,
            projector,
            rank: trace.round().max(0.0) as usize,
        })
    }

    pub fn dim(&self) -> usize {
        self.d
    }

    /// How many directions the subspace keeps.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The d×d projector, row-major.
    pub fn projector(&self) -> &[f32] {
        &self.projector
    }

    /// Each embedding (rows of d) times the projector (`x · P`, as the ONNX graph's `MatMul`)
    /// and L2-normalised again (a row with nothing in the subspace stays zero).
    pub fn apply(&self, embeddings: &[f32]) -> Vec<f32> {
        let d = self.d;
        let mut out = vec![0.0f32; embeddings.len()];
        out.par_chunks_exact_mut(d)
            .zip(embeddings.par_chunks_exact(d))
            .for_each(|(o, row)| {
                for (&x, p_row) in row.iter().zip(self.projector.chunks_exact(d)) {
                    for (o, &p) in o.iter_mut().zip(p_row) {
                        *o += x * p;
                    }
                }
            });
        normalize_rows(&mut out, d);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Targets vary along axes 0 and 1, references along axes 1 and 2 (more strongly), with a
    /// little noise everywhere: the subspace keeps axis 0 (and the noise directions whose
    /// sample variance happens to be larger over the targets) and drops axes 1 and 2.
    fn rows(n: usize, scales: [f32; 4], seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut x: Vec<f32> = (0..n)
            .flat_map(|_| scales.map(|s| s * rng.random_range(-1.0f32..1.0)))
            .collect();
        normalize_rows(&mut x, 4);
        x
    }

    #[test]
    fn keeps_the_directions_targets_vary_in_more_than_references() {
        let target = rows(2000, [1.0, 0.6, 0.05, 0.3], 1);
        let reference = rows(2000, [0.05, 1.0, 1.0, 0.3], 2);
        let subspace = ContrastiveSubspace::fit(&target, &reference, 4).unwrap();
        let p = subspace.projector();
        assert!(p[0] > 0.95, "axis 0 is kept: P00 = {}", p[0]);
        assert!(p[5] < 0.05, "axis 1 is dropped: P11 = {}", p[5]);
        assert!(p[10] < 0.05, "axis 2 is dropped: P22 = {}", p[10]);
        for i in 0..4 {
            for j in 0..4 {
                assert!((p[i * 4 + j] - p[j * 4 + i]).abs() < 1e-6, "symmetric");
            }
        }
        // A projector: P·P = P.
        for i in 0..4 {
            for j in 0..4 {
                let pp: f32 = (0..4).map(|m| p[i * 4 + m] * p[m * 4 + j]).sum();
                assert!((pp - p[i * 4 + j]).abs() < 1e-5);
            }
        }
        let projected = subspace.apply(&target);
        for row in projected.chunks_exact(4) {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5 || norm == 0.0);
        }
        let back = ContrastiveSubspace::from_projector(p.to_vec(), 4).unwrap();
        assert_eq!(back.rank(), subspace.rank());
        assert_eq!(back.apply(&target), projected);
    }

    #[test]
    fn references_that_vary_more_everywhere_keep_the_whole_space() {
        let target = rows(500, [0.2, 0.2, 0.2, 0.2], 3);
        let reference: Vec<f32> = rows(500, [1.0, 1.0, 1.0, 1.0], 4)
            .into_iter()
            .map(|v| v * 3.0)
            .collect();
        let subspace = ContrastiveSubspace::fit(&target, &reference, 4).unwrap();
        assert_eq!(subspace.rank(), 4);
        assert_eq!(subspace.apply(&target), {
            let mut t = target.clone();
            normalize_rows(&mut t, 4);
            t
        });
    }

    #[test]
    fn a_projector_of_the_wrong_size_or_with_nan_is_refused() {
        let err = ContrastiveSubspace::from_projector(vec![0.0; 15], 4).unwrap_err();
        assert!(err.contains("4×4"), "{err}");
        let mut p = vec![0.0; 16];
        p[6] = f32::NAN;
        let err = ContrastiveSubspace::from_projector(p, 4).unwrap_err();
        assert!(err.contains("row 1, column 2"), "{err}");
    }
}
