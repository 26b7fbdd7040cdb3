//! k-means clustering for dense `f32` row-major data.
//!
//! The algorithm follows scikit-learn's `KMeans(algorithm="lloyd")`:
//! greedy k-means++ seeding with `2 + ln(k)` local trials, Lloyd iterations
//! that stop on unchanged labels or when the total squared centre shift drops
//! below `tol · mean(column variance)`, empty clusters re-seeded with the points
//! farthest from their centre, and the best of `n_init` restarts kept.
//!
//! # Why hand-written
//! `linfa-clustering` 0.8 (the maintained option) does k-means++ and `n_runs`,
//! but it is generic over rand 0.8 RNGs (this project uses rand 0.9, so the
//! seeded `ChaCha8Rng` cannot be passed in), needs `ndarray` 0.16 next to the
//! 0.17 already in the tree, and drags in `linfa`, `linfa-nn`, `linfa-linalg`,
//! `ndarray-stats`, `ndarray-rand`, `noisy_float`, `space` and a second rand
//! stack, all for ~200 lines of numerics. Its tolerance is also a centroid
//! shift norm rather than scikit-learn's variance-scaled one, which would make
//! results harder to compare with the literature.
//!
//! # Determinism
//! Results depend only on the data, the configuration and the seed, never on
//! the number of rayon threads: rows are processed in parallel but every
//! floating-point reduction runs in a fixed order (fixed-size blocks summed
//! sequentially, or per-cluster sums over rows in index order). Restart `r`
//! draws from ChaCha8 stream `r` of the seed, so restarts are independent.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Rows per block for deterministic parallel sums.
const SUM_BLOCK: usize = 4096;

/// Errors for invalid k-means input. Every user-facing check returns one of
/// these instead of panicking.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClusterError {
    #[error("number of clusters k must be at least 1")]
    ZeroClusters,
    #[error("input has no rows")]
    EmptyInput,
    #[error("dimension d must be at least 1")]
    ZeroDimension,
    #[error("data length {len} is not a multiple of the dimension d = {d}")]
    DimensionMismatch { len: usize, d: usize },
    #[error("k = {k} exceeds the number of rows n = {n}")]
    TooManyClusters { k: usize, n: usize },
    #[error("non-finite value at row {row}, column {col}")]
    NonFinite { row: usize, col: usize },
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
}

/// k-means settings. Build with [`KMeansConfig::new`] and adjust the public
/// fields or use the `with_*` helpers.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansConfig {
    /// Number of clusters.
    pub k: usize,
    /// Number of k-means++ restarts; the lowest-inertia run wins.
    pub n_init: usize,
    /// Maximum Lloyd iterations per restart.
    pub max_iter: usize,
    /// Relative tolerance, scaled by the mean column variance (as scikit-learn).
    pub tol: f64,
    /// Seed for the ChaCha8 generator.
    pub seed: u64,
}

impl KMeansConfig {
    /// Defaults: `n_init = 20`, `max_iter = 300`, `tol = 1e-4`, `seed = 0`.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            n_init: 20,
            max_iter: 300,
            tol: 1e-4,
            seed: 0,
        }
    }

    /// Sets the number of restarts.
    pub fn with_n_init(mut self, n_init: usize) -> Self {
        self.n_init = n_init;
        self
    }

    /// Sets the iteration cap per restart.
    pub fn with_max_iter(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// Sets the relative tolerance (0: stop only when labels stop changing).
    pub fn with_tol(mut self, tol: f64) -> Self {
        self.tol = tol;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Result of [`kmeans`].
#[derive(Debug, Clone, PartialEq)]
pub struct KMeansFit {
    /// Cluster centres, `k × d` row-major.
    pub centroids: Vec<f32>,
    /// Index of the nearest centroid for each training row.
    pub labels: Vec<u32>,
    /// Sum of squared distances of rows to their centroid.
    pub inertia: f64,
    /// Lloyd iterations of the winning restart.
    pub iterations: usize,
    /// Dimension of the rows and centroids.
    pub d: usize,
}

impl KMeansFit {
    /// Number of clusters.
    pub fn k(&self) -> usize {
        self.centroids.len() / self.d
    }

    /// Assigns new rows (row-major, `d` columns) to their nearest centroid.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<(u32, f32)>, ClusterError> {
        assign(x, self.d, &self.centroids)
    }
}

/// Runs k-means on `x` (`n × d` row-major, `n = x.len() / d`).
pub fn kmeans(x: &[f32], d: usize, config: &KMeansConfig) -> Result<KMeansFit, ClusterError> {
    let n = validate_matrix(x, d)?;
    let k = config.k;
    if k == 0 {
        return Err(ClusterError::ZeroClusters);
    }
    if k > n {
        return Err(ClusterError::TooManyClusters { k, n });
    }
    if u32::try_from(k).is_err() {
        return Err(ClusterError::InvalidParameter("k must fit in u32"));
    }
    if config.n_init == 0 {
        return Err(ClusterError::InvalidParameter("n_init must be at least 1"));
    }
    if config.max_iter == 0 {
        return Err(ClusterError::InvalidParameter(
            "max_iter must be at least 1",
        ));
    }
    if !(config.tol.is_finite() && config.tol >= 0.0) {
        return Err(ClusterError::InvalidParameter(
            "tol must be finite and non-negative",
        ));
    }

    let tol_abs = if config.tol == 0.0 {
        0.0
    } else {
        mean_column_variance(x, n, d) * config.tol
    };

    let mut best: Option<KMeansFit> = None;
    for run in 0..config.n_init {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(run as u64);
        let init = kmeans_plus_plus(x, n, d, k, &mut rng);
        let fit = lloyd(x, n, d, k, init, config.max_iter, tol_abs);
        // Strict `<` keeps the earliest restart on ties, for determinism.
        if best.as_ref().is_none_or(|b| fit.inertia < b.inertia) {
            best = Some(fit);
        }
    }
    // n_init >= 1 was checked above, so a run always happened.
    best.ok_or(ClusterError::InvalidParameter("n_init must be at least 1"))
}

/// Assigns each row of `x` (`d` columns) to its nearest centroid (`k × d`),
/// returning `(label, squared distance)` per row. Ties go to the lower label.
pub fn assign(x: &[f32], d: usize, centroids: &[f32]) -> Result<Vec<(u32, f32)>, ClusterError> {
    validate_matrix(x, d)?;
    if centroids.is_empty() {
        return Err(ClusterError::ZeroClusters);
    }
    if !centroids.len().is_multiple_of(d) {
        return Err(ClusterError::DimensionMismatch {
            len: centroids.len(),
            d,
        });
    }
    if u32::try_from(centroids.len() / d).is_err() {
        return Err(ClusterError::InvalidParameter("k must fit in u32"));
    }
    if let Some(i) = centroids.iter().position(|v| !v.is_finite()) {
        return Err(ClusterError::NonFinite {
            row: i / d,
            col: i % d,
        });
    }
    Ok(x.par_chunks_exact(d)
        .map(|row| nearest(row, centroids, d))
        .collect())
}

/// Checks shape and finiteness; returns the number of rows.
fn validate_matrix(x: &[f32], d: usize) -> Result<usize, ClusterError> {
    if d == 0 {
        return Err(ClusterError::ZeroDimension);
    }
    if x.is_empty() {
        return Err(ClusterError::EmptyInput);
    }
    if !x.len().is_multiple_of(d) {
        return Err(ClusterError::DimensionMismatch { len: x.len(), d });
    }
    if let Some(i) = x.par_iter().position_first(|v| !v.is_finite()) {
        return Err(ClusterError::NonFinite {
            row: i / d,
            col: i % d,
        });
    }
    Ok(x.len() / d)
}

/// Squared Euclidean distance. Eight independent accumulators let the
/// compiler vectorise while keeping a fixed summation order.
#[inline]
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (a8.remainder(), b8.remainder());
    for (ca, cb) in a8.zip(b8) {
        for j in 0..8 {
            let t = ca[j] - cb[j];
            acc[j] += t * t;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ar.iter().zip(br) {
        let t = x - y;
        s += t * t;
    }
    s
}

/// Nearest centroid of one row; the first minimum wins ties.
#[inline]
fn nearest(row: &[f32], centroids: &[f32], d: usize) -> (u32, f32) {
    let mut best = (0u32, f32::INFINITY);
    for (j, c) in centroids.chunks_exact(d).enumerate() {
        let dist = sq_dist(row, c);
        if dist < best.1 {
            best = (j as u32, dist);
        }
    }
    // Overflowing distances (huge finite inputs) leave label 0, never a panic.
    best
}

/// Sum in f64 with a thread-count-independent order.
fn det_sum(v: &[f32]) -> f64 {
    let partial: Vec<f64> = v
        .par_chunks(SUM_BLOCK)
        .map(|b| b.iter().map(|&x| f64::from(x)).sum())
        .collect();
    partial.iter().sum()
}

/// Mean of the per-column (population) variances, used to scale `tol`.
/// Equals the mean squared distance to the data mean divided by `d`.
fn mean_column_variance(x: &[f32], n: usize, d: usize) -> f64 {
    let mut mean = vec![0.0f64; d];
    for row in x.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let ss: f64 = x
        .chunks_exact(d)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&v, m)| (f64::from(v) - m).powi(2))
                .sum::<f64>()
        })
        .sum();
    ss / (n * d) as f64
}

/// Greedy k-means++ (as scikit-learn): each new centre is the best of
/// `2 + floor(ln k)` D²-sampled candidates by resulting potential.
fn kmeans_plus_plus(x: &[f32], n: usize, d: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let row = |i: usize| &x[i * d..(i + 1) * d];
    let mut centers = Vec::with_capacity(k * d);
    let first = rng.random_range(0..n);
    centers.extend_from_slice(row(first));

    let mut closest: Vec<f32> = x
        .par_chunks_exact(d)
        .map(|r| sq_dist(r, row(first)))
        .collect();
    let n_trials = 2 + (k as f64).ln().floor() as usize;
    let mut cum = vec![0.0f64; n];
    let mut cand_dist = vec![0.0f32; n];
    let mut best_dist = vec![0.0f32; n];

    for _ in 1..k {
        let mut total = 0.0f64;
        for (c, &v) in cum.iter_mut().zip(&closest) {
            total += f64::from(v);
            *c = total;
        }
        let mut best: Option<(usize, f64)> = None;
        for _ in 0..n_trials {
            let u: f64 = rng.random();
            // Degenerate potentials (all points already covered, or overflow):
            // fall back to a uniform pick so duplicates never stall seeding.
            let cand = if total > 0.0 && total.is_finite() {
                let r = u * total;
                cum.partition_point(|&c| c <= r).min(n - 1)
            } else {
                ((u * n as f64) as usize).min(n - 1)
            };
            let c_row = row(cand);
            cand_dist
                .par_iter_mut()
                .zip(x.par_chunks_exact(d))
                .zip(closest.par_iter())
                .for_each(|((o, r), &cl)| *o = cl.min(sq_dist(r, c_row)));
            let pot = det_sum(&cand_dist);
            if best.is_none_or(|(_, p)| pot < p) {
                best = Some((cand, pot));
                std::mem::swap(&mut best_dist, &mut cand_dist);
            }
        }
        // n_trials >= 2, so a candidate was always evaluated.
        let (chosen, _) = best.unwrap_or((0, 0.0));
        centers.extend_from_slice(row(chosen));
        std::mem::swap(&mut closest, &mut best_dist);
    }
    centers
}

/// One Lloyd run from the given initial centres.
fn lloyd(
    x: &[f32],
    n: usize,
    d: usize,
    k: usize,
    mut centers: Vec<f32>,
    max_iter: usize,
    tol_abs: f64,
) -> KMeansFit {
    let mut labels = vec![u32::MAX; n];
    let mut new_labels = vec![0u32; n];
    let mut dists = vec![0.0f32; n];
    let mut new_centers = vec![0.0f32; k * d];
    let mut iterations = 0;

    for it in 0..max_iter {
        iterations = it + 1;
        e_step(x, d, &centers, &mut new_labels, &mut dists);
        m_step(x, d, k, &centers, &new_labels, &dists, &mut new_centers);
        let shift: f64 = centers
            .par_chunks_exact(d)
            .zip(new_centers.par_chunks_exact(d))
            .map(|(a, b)| {
                a.iter()
                    .zip(b)
                    .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
                    .sum::<f64>()
            })
            .collect::<Vec<_>>()
            .iter()
            .sum();
        std::mem::swap(&mut centers, &mut new_centers);
        let strict = labels == new_labels;
        std::mem::swap(&mut labels, &mut new_labels);
        if strict || shift <= tol_abs {
            break;
        }
    }
    // Final assignment so labels and inertia always match the returned centres
    // (scikit-learn skips it only on strict convergence, where it is a no-op).
    e_step(x, d, &centers, &mut labels, &mut dists);
    let inertia = det_sum(&dists);
    KMeansFit {
        centroids: centers,
        labels,
        inertia,
        iterations,
        d,
    }
}

/// Assigns every row to its nearest centre, in parallel.
fn e_step(x: &[f32], d: usize, centers: &[f32], labels: &mut [u32], dists: &mut [f32]) {
    labels
        .par_iter_mut()
        .zip(dists.par_iter_mut())
        .zip(x.par_chunks_exact(d))
        .for_each(|((l, dist), row)| (*l, *dist) = nearest(row, centers, d));
}

/// Recomputes centres as member means. Empty clusters take the points
/// farthest from their current centre (as scikit-learn); a cluster that is
/// still empty keeps its previous centre.
fn m_step(
    x: &[f32],
    d: usize,
    k: usize,
    centers: &[f32],
    labels: &[u32],
    dists: &[f32],
    out: &mut [f32],
) {
    let mut eff: Vec<u32> = labels.to_vec();
    let mut counts = vec![0usize; k];
    for &l in &eff {
        counts[l as usize] += 1;
    }
    let empty: Vec<usize> = (0..k).filter(|&c| counts[c] == 0).collect();
    if !empty.is_empty() {
        let mut order: Vec<usize> = (0..eff.len()).collect();
        // Farthest first; index breaks ties so the choice is deterministic.
        order.sort_unstable_by(|&a, &b| dists[b].total_cmp(&dists[a]).then(a.cmp(&b)));
        if dists[order[0]] > 0.0 {
            for (&c, &p) in empty.iter().zip(&order) {
                counts[eff[p] as usize] -= 1;
                eff[p] = c as u32;
                counts[c] += 1;
            }
        }
    }

    // Group rows by cluster (counting sort keeps index order within a
    // cluster), then sum each cluster independently: parallel over clusters
    // with a fixed per-cluster order, and only k × d memory.
    let mut start = vec![0usize; k + 1];
    for c in 0..k {
        start[c + 1] = start[c] + counts[c];
    }
    let mut fill = start.clone();
    let mut members = vec![0usize; eff.len()];
    for (i, &l) in eff.iter().enumerate() {
        members[fill[l as usize]] = i;
        fill[l as usize] += 1;
    }

    out.par_chunks_exact_mut(d)
        .zip(centers.par_chunks_exact(d))
        .enumerate()
        .for_each(|(c, (o, old))| {
            let rows = &members[start[c]..start[c + 1]];
            if rows.is_empty() {
                o.copy_from_slice(old);
                return;
            }
            let mut acc = vec![0.0f64; d];
            for &i in rows {
                for (a, &v) in acc.iter_mut().zip(&x[i * d..(i + 1) * d]) {
                    *a += f64::from(v);
                }
            }
            let inv = 1.0 / rows.len() as f64;
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = (a * inv) as f32;
            }
        });
}

#[cfg(test)]
mod tests;
