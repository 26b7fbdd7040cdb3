//! Linear baselines: PCA and contrastive PCA (cPCA, Abid et al. 2018) for
//! dense `f32` row-major data.
//!
//! Covariances are accumulated in `f64` from mean-centred data (blocked
//! `gemm`, parallel over a fixed row partition so results do not depend on the
//! thread count) and decomposed with nalgebra's `SymmetricEigen`. Each returned
//! direction is sign-normalised so its largest-magnitude entry is positive,
//! which makes results reproducible across runs and comparable with
//! scikit-learn's `svd_flip` convention.

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rayon::prelude::*;

mod shift;
pub use shift::{
    align_by_templates, align_within, best_offsets, best_offsets_within, Alignment, SearchRegion,
    ShiftKMeans,
};

/// ε of reference whitening as a fraction of the mean background eigenvalue (the best of
/// 0.03 / 0.1 / 0.3 / 1 in a numpy sweep on mnist-grass; docs/research/salient-encoder.md).
pub const WHITENING_SHRINKAGE: f64 = 1.0;

/// Rows converted to `f64` at a time inside one covariance partition.
const GEMM_BLOCK: usize = 512;
/// Upper bound on covariance partitions (each holds a `d × d` partial sum).
const MAX_PARTS: usize = 8;

/// Invalid PCA / cPCA input, or a failed decomposition.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BaselineError {
    #[error("dimension d must be at least 1")]
    ZeroDimension,
    #[error("{which}: data length {len} does not match n = {n} rows of d = {d} columns")]
    ShapeMismatch {
        which: &'static str,
        len: usize,
        n: usize,
        d: usize,
    },
    #[error("{which}: need at least 2 rows for a covariance, got {n}")]
    TooFewRows { which: &'static str, n: usize },
    #[error("number of components must be at least 1")]
    ZeroComponents,
    #[error("{components} components requested but the data has only d = {d} dimensions")]
    TooManyComponents { components: usize, d: usize },
    #[error("{which}: non-finite value at row {row}, column {col}")]
    NonFinite {
        which: &'static str,
        row: usize,
        col: usize,
    },
    #[error("alpha must be finite and non-negative, got {0}")]
    InvalidAlpha(f64),
    #[error("eigendecomposition did not converge")]
    EigenFailed,
    #[error(
        "alignment window {window} must be between 1 and the image's smaller side ({h}x{w} images)"
    )]
    InvalidWindow { window: usize, h: usize, w: usize },
    #[error("{clusters} clusters requested for {n} images: need between 1 and n")]
    InvalidClusters { clusters: usize, n: usize },
    #[error("image {row}: start offset {start:?} is outside the {rows}x{cols} window offsets")]
    StartOutside {
        row: usize,
        start: (usize, usize),
        rows: usize,
        cols: usize,
    },
}

/// A fitted linear projection and the projected training (target) data.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// Mean subtracted before projecting (the target mean for cPCA), length `d`.
    pub mean: Vec<f32>,
    /// Unit-norm directions, `components × d` row-major, by decreasing eigenvalue.
    pub components: Vec<f32>,
    /// Eigenvalue of each direction: variance for PCA (divisor `n − 1`), the
    /// contrastive variance `var_target − alpha·var_reference` for cPCA
    /// (may be negative).
    pub eigenvalues: Vec<f64>,
    /// Projected centred data, `n × components` row-major.
    pub embedding: Vec<f32>,
    /// Input dimension.
    pub d: usize,
}

impl Projection {
    /// Number of projection directions.
    pub fn n_components(&self) -> usize {
        self.eigenvalues.len()
    }

    /// Projects new rows (`d` columns) with the fitted mean and directions.
    pub fn transform(&self, x: &[f32]) -> Result<Vec<f32>, BaselineError> {
        if !x.len().is_multiple_of(self.d) {
            return Err(BaselineError::ShapeMismatch {
                which: "x",
                len: x.len(),
                n: x.len() / self.d,
                d: self.d,
            });
        }
        check_finite("x", x, self.d)?;
        let mean: Vec<f64> = self.mean.iter().map(|&m| f64::from(m)).collect();
        Ok(project(x, self.d, &mean, &self.components))
    }
}

/// PCA of `x` (`n × d`): the top `components` eigenvectors of the sample
/// covariance, and the centred data projected onto them.
pub fn pca(x: &[f32], n: usize, d: usize, components: usize) -> Result<Projection, BaselineError> {
    check_input("x", x, n, d)?;
    check_components(components, d)?;
    let mean = column_mean(x, d);
    let cov = covariance(x, d, &mean);
    top_eigen(cov, x, d, mean, components)
}

/// Contrastive PCA: the top `components` eigenvectors of
/// `Cov(target) − alpha·Cov(reference)`, and the centred target projected
/// onto them. Directions with high target variance that the reference shares
/// are suppressed; `alpha = 0` is plain PCA of the target. Each data set is
/// centred on its own mean; row counts are `len / d`.
pub fn cpca(
    target: &[f32],
    reference: &[f32],
    d: usize,
    components: usize,
    alpha: f64,
) -> Result<Projection, BaselineError> {
    let mut grid = cpca_grid(target, reference, d, components, &[alpha])?;
    Ok(grid.remove(0))
}

/// [`cpca`] for each of `alphas`, in order. The two covariances (the cost, O(n·d²) each) are
/// computed once for the whole grid; only the eigen-decomposition is per alpha.
pub fn cpca_grid(
    target: &[f32],
    reference: &[f32],
    d: usize,
    components: usize,
    alphas: &[f64],
) -> Result<Vec<Projection>, BaselineError> {
    check_rows("target", target, d)?;
    check_rows("reference", reference, d)?;
    check_components(components, d)?;
    if let Some(&alpha) = alphas.iter().find(|a| !(a.is_finite() && **a >= 0.0)) {
        return Err(BaselineError::InvalidAlpha(alpha));
    }
    if alphas.is_empty() {
        return Ok(Vec::new());
    }
    let t_mean = column_mean(target, d);
    let t_cov = covariance(target, d, &t_mean);
    let r_cov = if alphas.iter().any(|&a| a != 0.0) {
        let r_mean = column_mean(reference, d);
        Some(covariance(reference, d, &r_mean))
    } else {
        None
    };
    alphas
        .iter()
        .map(|&alpha| {
            let cov = match &r_cov {
                Some(r_cov) if alpha != 0.0 => &t_cov - r_cov * alpha,
                _ => t_cov.clone(),
            };
            top_eigen(cov, target, d, t_mean.clone(), components)
        })
        .collect()
}

/// The eigenvectors `V` of the reference rows' covariance `Σ_b = V diag(λ) Vᵀ`, the whitening
/// scale `(λ + ε)^(-1/2)` of each (`ε = shrinkage × mean(λ)`), and the rows' mean. Both forms of
/// reference whitening are built from it.
struct WhiteningBasis {
    mean: Vec<f64>,
    vectors: DMatrix<f64>,
    scales: DVector<f64>,
}

impl WhiteningBasis {
    /// The symmetric (ZCA) whitening matrix `V diag(scales) Vᵀ`.
    fn zca(&self) -> DMatrix<f64> {
        let v = &self.vectors;
        v * DMatrix::from_diagonal(&self.scales) * v.transpose()
    }
}

/// The basis of `reference`'s rows, after checking that `target` holds rows of `d` columns.
fn target_and_basis(
    target: &[f32],
    reference: &[f32],
    d: usize,
    shrinkage: f64,
) -> Result<WhiteningBasis, BaselineError> {
    check_rows("target", target, d)?;
    whitening_basis(reference, d, shrinkage)
}

/// The basis of `reference`'s rows (validated here, for every form of reference whitening).
fn whitening_basis(
    reference: &[f32],
    d: usize,
    shrinkage: f64,
) -> Result<WhiteningBasis, BaselineError> {
    check_rows("reference", reference, d)?;
    if !(shrinkage.is_finite() && shrinkage > 0.0) {
        return Err(BaselineError::InvalidAlpha(shrinkage));
    }
    let mean = column_mean(reference, d);
    let cov = covariance(reference, d, &mean);
    let eig = SymmetricEigen::try_new(cov, f64::EPSILON, 1000 * d.max(10))
        .ok_or(BaselineError::EigenFailed)?;
    let mean_eigenvalue = eig.eigenvalues.iter().map(|&l| l.max(0.0)).sum::<f64>() / d as f64;
    let eps = (shrinkage * mean_eigenvalue).max(f64::MIN_POSITIVE);
    let scales = eig.eigenvalues.map(|l| 1.0 / (l.max(0.0) + eps).sqrt());
    Ok(WhiteningBasis {
        mean,
        vectors: eig.eigenvectors,
        scales,
    })
}

/// The symmetric (ZCA) reference-whitening matrix `V diag((λ + ε)^(-1/2)) Vᵀ` of the reference
/// rows' covariance `Σ_b = V diag(λ) Vᵀ`, `ε = shrinkage × mean(λ)` (see [`reference_whitening`]).
pub fn reference_whitening_matrix(
    reference: &[f32],
    d: usize,
    shrinkage: f64,
) -> Result<DMatrix<f64>, BaselineError> {
    Ok(whitening_basis(reference, d, shrinkage)?.zca())
}

/// Reference whitening: the target rows in the coordinates where the *reference* (background)
/// covariance is the identity, `z = diag((λ + ε)^(-1/2)) Vᵀ (x − μ_b)` with `Σ_b = V diag(λ) Vᵀ`,
/// then each row L2-normalised. Directions the backgrounds vary in are shrunk; directions they
/// never use are amplified, so k-means sees the objects. `ε = shrinkage × mean(λ)` keeps the
/// directions of (near-)zero background variance from exploding. Euclidean distances equal those
/// of the ZCA form `V z`, so k-means on `z` is k-means on ZCA-whitened pixels.
pub fn reference_whitening(
    target: &[f32],
    reference: &[f32],
    d: usize,
    shrinkage: f64,
) -> Result<Vec<f32>, BaselineError> {
    let basis = target_and_basis(target, reference, d, shrinkage)?;
    let mut rows = Vec::with_capacity(d * d);
    for (j, scale) in basis.scales.iter().enumerate() {
        rows.extend(basis.vectors.column(j).iter().map(|&e| (e * scale) as f32));
    }
    let mut z = project(target, d, &basis.mean, &rows);
    normalize_rows(&mut z, d);
    Ok(z)
}

/// `n` rows of `d` values reduced to their top `components` principal components (at most `d`
/// and `n`) and L2-normalised; returns the rows and the number of components kept. On the
/// reference-whitened targets this is the space cIDFD finds its neighbour positives in (where
/// no alignment front replaces the images by windows), and the one `compare --methods
/// whiten-pca` clusters.
pub fn normalised_principal_components(
    rows: &[f32],
    n: usize,
    d: usize,
    components: usize,
) -> Result<(Vec<f32>, usize), BaselineError> {
    let components = components.min(d).min(n);
    let mut reduced = pca(rows, n, d, components)?.embedding;
    normalize_rows(&mut reduced, components);
    Ok((reduced, components))
}

/// Scales each row of `d` columns to unit length (rows of zeros stay zero).
pub(crate) fn normalize_rows(x: &mut [f32], d: usize) {
    x.par_chunks_exact_mut(d).for_each(shift::normalise);
}

/// The ZCA reference whitening of [`reference_whitened_pixels`] as a fixed map, to apply to
/// rows it was not fitted with: `(x − mean) · matrix`, `matrix` symmetric `d × d`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceZca {
    pub mean: Vec<f32>,
    pub matrix: Vec<f32>,
}

impl ReferenceZca {
    pub fn fit(reference: &[f32], d: usize, shrinkage: f64) -> Result<Self, BaselineError> {
        let basis = whitening_basis(reference, d, shrinkage)?;
        Ok(Self {
            mean: basis.mean.iter().map(|&m| m as f32).collect(),
            matrix: basis.zca().iter().map(|&e| e as f32).collect(),
        })
    }

    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The whitened rows of `x` (rows of [`ReferenceZca::dim`] columns).
    pub fn apply(&self, x: &[f32]) -> Result<Vec<f32>, BaselineError> {
        let d = self.dim();
        if d == 0 || !x.len().is_multiple_of(d) {
            return Err(BaselineError::ShapeMismatch {
                which: "rows",
                len: x.len(),
                n: x.len() / d.max(1),
                d,
            });
        }
        let mean: Vec<f64> = self.mean.iter().map(|&m| f64::from(m)).collect();
        // Symmetric, so its row-major storage is also its columns.
        Ok(project(x, d, &mean, &self.matrix))
    }
}

/// Reference whitening in pixel coordinates (the ZCA form `(x − μ_b) V diag((λ + ε)^(-1/2)) Vᵀ`
/// of [`reference_whitening`], rows not normalised), so that each row is still an image whose
/// windows [`align_by_templates`] can match.
pub fn reference_whitened_pixels(
    target: &[f32],
    reference: &[f32],
    d: usize,
    shrinkage: f64,
) -> Result<Vec<f32>, BaselineError> {
    let basis = target_and_basis(target, reference, d, shrinkage)?;
    // Symmetric, so its column-major storage is also its rows.
    let rows: Vec<f32> = basis.zca().iter().map(|&e| e as f32).collect();
    Ok(project(target, d, &basis.mean, &rows))
}

/// [`check_input`] for `x` read as rows of `d` columns (`d = 0` is refused before dividing).
fn check_rows(which: &'static str, x: &[f32], d: usize) -> Result<(), BaselineError> {
    if d == 0 {
        return Err(BaselineError::ZeroDimension);
    }
    check_input(which, x, x.len() / d, d)
}

fn check_input(which: &'static str, x: &[f32], n: usize, d: usize) -> Result<(), BaselineError> {
    if d == 0 {
        return Err(BaselineError::ZeroDimension);
    }
    if n.checked_mul(d) != Some(x.len()) {
        return Err(BaselineError::ShapeMismatch {
            which,
            len: x.len(),
            n,
            d,
        });
    }
    if n < 2 {
        return Err(BaselineError::TooFewRows { which, n });
    }
    check_finite(which, x, d)
}

fn check_finite(which: &'static str, x: &[f32], d: usize) -> Result<(), BaselineError> {
    match x.par_iter().position_first(|v| !v.is_finite()) {
        Some(i) => Err(BaselineError::NonFinite {
            which,
            row: i / d,
            col: i % d,
        }),
        None => Ok(()),
    }
}

fn check_components(components: usize, d: usize) -> Result<(), BaselineError> {
    if components == 0 {
        return Err(BaselineError::ZeroComponents);
    }
    if components > d {
        return Err(BaselineError::TooManyComponents { components, d });
    }
    Ok(())
}

fn column_mean(x: &[f32], d: usize) -> Vec<f64> {
    let mut mean = vec![0.0f64; d];
    for row in x.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    let n = (x.len() / d) as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    mean
}

/// Sample covariance (divisor `n − 1`) of the centred rows, `d × d`.
fn covariance(x: &[f32], d: usize, mean: &[f64]) -> DMatrix<f64> {
    let n = x.len() / d;
    // Partition depends only on n, so the summation order is fixed.
    let parts = n.div_ceil(GEMM_BLOCK).clamp(1, MAX_PARTS);
    let rows_per_part = n.div_ceil(parts);
    let partials: Vec<DMatrix<f64>> = x
        .par_chunks(rows_per_part * d)
        .map(|part| {
            let mut g = DMatrix::<f64>::zeros(d, d);
            for block in part.chunks(GEMM_BLOCK * d) {
                let b = block.len() / d;
                // Row-major `b × d` rows read as column-major `d × b`: each
                // column is one centred sample, so A·Aᵀ is the scatter matrix.
                let centred: Vec<f64> = block
                    .chunks_exact(d)
                    .flat_map(|row| row.iter().zip(mean).map(|(&v, m)| f64::from(v) - m))
                    .collect();
                let a = DMatrix::from_column_slice(d, b, &centred);
                g.gemm(1.0, &a, &a.transpose(), 1.0);
            }
            g
        })
        .collect();
    let mut cov = DMatrix::<f64>::zeros(d, d);
    for p in &partials {
        cov += p;
    }
    cov / (n - 1) as f64
}

/// Top-`components` eigenpairs of a symmetric matrix, sign-normalised, and
/// the projection of `x` centred on `mean`.
fn top_eigen(
    cov: DMatrix<f64>,
    x: &[f32],
    d: usize,
    mean: Vec<f64>,
    components: usize,
) -> Result<Projection, BaselineError> {
    // Generous cap (the QR sweeps need a few per eigenvalue) so a pathological
    // matrix returns an error instead of looping forever.
    let eig = SymmetricEigen::try_new(cov, f64::EPSILON, 1000 * d.max(10))
        .ok_or(BaselineError::EigenFailed)?;
    let mut order: Vec<usize> = (0..d).collect();
    // Descending eigenvalue; index breaks ties for determinism.
    order.sort_by(|&a, &b| {
        eig.eigenvalues[b]
            .total_cmp(&eig.eigenvalues[a])
            .then(a.cmp(&b))
    });
    let mut comps = Vec::with_capacity(components * d);
    let mut values = Vec::with_capacity(components);
    for &j in order.iter().take(components) {
        let v = eig.eigenvectors.column(j);
        let mut big = 0.0f64;
        for &e in v.iter() {
            if e.abs() > big.abs() {
                big = e;
            }
        }
        let sign = if big < 0.0 { -1.0 } else { 1.0 };
        comps.extend(v.iter().map(|&e| (sign * e) as f32));
        values.push(eig.eigenvalues[j]);
    }
    // Project with the f32-rounded mean that is stored, so `transform` on the
    // training rows reproduces `embedding` bit for bit.
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let mean64: Vec<f64> = mean.iter().map(|&m| f64::from(m)).collect();
    let embedding = project(x, d, &mean64, &comps);
    Ok(Projection {
        mean,
        components: comps,
        eigenvalues: values,
        embedding,
        d,
    })
}

/// `(x − mean) · componentsᵀ`, accumulated in f64, parallel over rows.
fn project(x: &[f32], d: usize, mean: &[f64], comps: &[f32]) -> Vec<f32> {
    let k = comps.len() / d;
    let mut out = vec![0.0f32; (x.len() / d) * k];
    out.par_chunks_exact_mut(k.max(1))
        .zip(x.par_chunks_exact(d))
        .for_each(|(o, row)| {
            let centred: Vec<f64> = row
                .iter()
                .zip(mean)
                .map(|(&v, m)| f64::from(v) - m)
                .collect();
            for (o, c) in o.iter_mut().zip(comps.chunks_exact(d)) {
                let s: f64 = centred.iter().zip(c).map(|(a, &b)| a * f64::from(b)).sum();
                *o = s as f32;
            }
        });
    out
}

#[cfg(test)]
mod tests;
