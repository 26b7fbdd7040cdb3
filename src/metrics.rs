//! External clustering metrics: accuracy under the best one-to-one
//! cluster→class mapping (ACC), normalised mutual information (NMI, arithmetic
//! mean normalisation) and the adjusted Rand index (ARI).
//!
//! NMI and ARI reproduce scikit-learn's `normalized_mutual_info_score` and
//! `adjusted_rand_score` including their special cases; ACC matches
//! `scipy.optimize.linear_sum_assignment` on the contingency matrix. Label
//! values are arbitrary (any `Copy + Ord` type, e.g. `i64` or `u32`); only
//! equality matters, so ids need not be dense or non-negative.

use pathfinding::kuhn_munkres::kuhn_munkres;
use pathfinding::matrix::Matrix;
use serde::{Deserialize, Serialize};

/// All three scores for one labelling, plus the number of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClusterScores {
    /// Accuracy under the best one-to-one cluster→class mapping, in [0, 1].
    pub acc: f64,
    /// Normalised mutual information (arithmetic mean), in [0, 1].
    pub nmi: f64,
    /// Adjusted Rand index, in [-0.5, 1]; about 0 for random labels.
    pub ari: f64,
    /// Number of samples scored.
    pub n: usize,
}

/// Invalid metric input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error("no samples to score")]
    Empty,
    #[error("length mismatch: {truth} true labels, {pred} predicted labels")]
    LengthMismatch { truth: usize, pred: usize },
}

/// Computes ACC, NMI and ARI from one contingency table.
///
/// ACC builds a dense `classes × clusters` table for the Hungarian algorithm
/// (O(m³) with m the larger side), so it is meant for clusterings with at
/// most a few thousand distinct ids.
pub fn scores<T: Copy + Ord, P: Copy + Ord>(
    truth: &[T],
    pred: &[P],
) -> Result<ClusterScores, MetricsError> {
    let c = Contingency::new(truth, pred)?;
    Ok(ClusterScores {
        acc: c.acc(),
        nmi: c.nmi(),
        ari: c.ari(),
        n: c.n as usize,
    })
}

/// ACC, NMI and ARI from counts of `(class, cluster)` pairs, for callers that stream their
/// rows and keep only the contingency table (memory independent of the number of rows).
pub fn scores_from_counts<T: Copy + Ord, P: Copy + Ord>(
    counts: &[(T, P, u64)],
) -> Result<ClusterScores, MetricsError> {
    let c = Contingency::from_counts(counts)?;
    Ok(ClusterScores {
        acc: c.acc(),
        nmi: c.nmi(),
        ari: c.ari(),
        n: c.n as usize,
    })
}

/// Clustering accuracy: the fraction of samples correctly labelled under the
/// best one-to-one mapping of clusters to classes. With unequal numbers of
/// clusters and classes, the unmatched ones count as wrong.
pub fn accuracy<T: Copy + Ord, P: Copy + Ord>(
    truth: &[T],
    pred: &[P],
) -> Result<f64, MetricsError> {
    Ok(Contingency::new(truth, pred)?.acc())
}

/// Normalised mutual information with arithmetic-mean normalisation
/// (scikit-learn's default).
pub fn nmi<T: Copy + Ord, P: Copy + Ord>(truth: &[T], pred: &[P]) -> Result<f64, MetricsError> {
    Ok(Contingency::new(truth, pred)?.nmi())
}

/// Adjusted Rand index.
pub fn ari<T: Copy + Ord, P: Copy + Ord>(truth: &[T], pred: &[P]) -> Result<f64, MetricsError> {
    Ok(Contingency::new(truth, pred)?.ari())
}

/// Sparse contingency table: classes are rows, clusters columns.
struct Contingency {
    n: u64,
    /// Non-zero cells `(class, cluster, count)`.
    cells: Vec<(usize, usize, u64)>,
    row_sums: Vec<u64>,
    col_sums: Vec<u64>,
}

/// Maps labels to dense ids `0..m` in sorted order of their values.
fn dense_ids<L: Copy + Ord>(labels: &[L]) -> (Vec<usize>, usize) {
    let mut uniq = labels.to_vec();
    uniq.sort_unstable();
    uniq.dedup();
    let ids = labels
        .iter()
        // Every label is in `uniq`, so the search always succeeds.
        .map(|l| uniq.binary_search(l).unwrap_or(0))
        .collect();
    (ids, uniq.len())
}

impl Contingency {
    fn new<T: Copy + Ord, P: Copy + Ord>(truth: &[T], pred: &[P]) -> Result<Self, MetricsError> {
        if truth.len() != pred.len() {
            return Err(MetricsError::LengthMismatch {
                truth: truth.len(),
                pred: pred.len(),
            });
        }
        if truth.is_empty() {
            return Err(MetricsError::Empty);
        }
        let (rows, n_rows) = dense_ids(truth);
        let (cols, n_cols) = dense_ids(pred);
        // Sparse so that degenerate labellings (one cluster per sample) stay
        // O(n) in memory for NMI and ARI.
        let mut pairs: Vec<(usize, usize)> = rows.into_iter().zip(cols).collect();
        pairs.sort_unstable();
        let mut cells: Vec<(usize, usize, u64)> = Vec::new();
        for (i, j) in pairs {
            match cells.last_mut() {
                Some(last) if last.0 == i && last.1 == j => last.2 += 1,
                _ => cells.push((i, j, 1)),
            }
        }
        let mut row_sums = vec![0u64; n_rows];
        let mut col_sums = vec![0u64; n_cols];
        for &(i, j, v) in &cells {
            row_sums[i] += v;
            col_sums[j] += v;
        }
        Ok(Self {
            n: truth.len() as u64,
            cells,
            row_sums,
            col_sums,
        })
    }

    fn from_counts<T: Copy + Ord, P: Copy + Ord>(
        counts: &[(T, P, u64)],
    ) -> Result<Self, MetricsError> {
        let counts: Vec<&(T, P, u64)> = counts.iter().filter(|c| c.2 > 0).collect();
        let truth: Vec<T> = counts.iter().map(|c| c.0).collect();
        let pred: Vec<P> = counts.iter().map(|c| c.1).collect();
        let (rows, n_rows) = dense_ids(&truth);
        let (cols, n_cols) = dense_ids(&pred);
        let mut cells: Vec<(usize, usize, u64)> = rows
            .into_iter()
            .zip(cols)
            .zip(&counts)
            .map(|((i, j), c)| (i, j, c.2))
            .collect();
        cells.sort_unstable();
        cells.dedup_by(|next, kept| {
            let same = next.0 == kept.0 && next.1 == kept.1;
            if same {
                kept.2 += next.2;
            }
            same
        });
        let mut row_sums = vec![0u64; n_rows];
        let mut col_sums = vec![0u64; n_cols];
        for &(i, j, v) in &cells {
            row_sums[i] += v;
            col_sums[j] += v;
        }
        let n: u64 = cells.iter().map(|c| c.2).sum();
        if n == 0 {
            return Err(MetricsError::Empty);
        }
        Ok(Self {
            n,
            cells,
            row_sums,
            col_sums,
        })
    }

    fn acc(&self) -> f64 {
        let (r, c) = (self.row_sums.len(), self.col_sums.len());
        // kuhn_munkres needs rows <= columns, so put the smaller side on rows.
        let transpose = r > c;
        let (nr, nc) = if transpose { (c, r) } else { (r, c) };
        let mut w = Matrix::new(nr, nc, 0i64);
        for &(i, j, v) in &self.cells {
            let (a, b) = if transpose { (j, i) } else { (i, j) };
            w[(a, b)] = v as i64;
        }
        let (matched, _) = kuhn_munkres(&w);
        matched as f64 / self.n as f64
    }

    fn nmi(&self) -> f64 {
        let (r, c) = (self.row_sums.len(), self.col_sums.len());
        // Both labellings put everything in one group: a perfect match.
        if r == 1 && c == 1 {
            return 1.0;
        }
        let mi = self.mutual_info();
        // One side has zero entropy (or they are independent): nothing shared.
        if mi == 0.0 {
            return 0.0;
        }
        let normalizer = 0.5 * (entropy(&self.row_sums) + entropy(&self.col_sums));
        mi / normalizer
    }

    /// Mutual information in nats, computed term by term as scikit-learn does.
    fn mutual_info(&self) -> f64 {
        if self.row_sums.len() == 1 || self.col_sums.len() == 1 {
            return 0.0;
        }
        let n = self.n as f64;
        let log_n = n.ln();
        let mi: f64 = self
            .cells
            .iter()
            .map(|&(i, j, v)| {
                let nm = v as f64 / n;
                // Exact in u128 (up to 2^128), then one rounding to f64.
                let outer = (u128::from(self.row_sums[i]) * u128::from(self.col_sums[j])) as f64;
                let t = nm * ((v as f64).ln() - log_n) + nm * (-outer.ln() + log_n + log_n);
                // scikit-learn zeroes terms below machine epsilon.
                if t.abs() < f64::EPSILON {
                    0.0
                } else {
                    t
                }
            })
            .sum();
        mi.max(0.0)
    }

    fn ari(&self) -> f64 {
        // Pair-confusion counts in i128: n⁴ overflows i64 beyond n ≈ 55 000.
        let n = i128::from(self.n);
        let mut sum_sq = 0i128;
        let mut by_cluster = 0i128;
        let mut by_class = 0i128;
        for &(i, j, v) in &self.cells {
            let v = i128::from(v);
            sum_sq += v * v;
            by_cluster += v * i128::from(self.col_sums[j]);
            by_class += v * i128::from(self.row_sums[i]);
        }
        let tp = sum_sq - n;
        let fp = by_cluster - sum_sq;
        let fnn = by_class - sum_sq;
        let tn = n * n - fp - fnn - sum_sq;
        // Identical partitions (including n = 1 and both single-cluster).
        if fnn == 0 && fp == 0 {
            return 1.0;
        }
        let num = 2 * (tp * tn - fnn * fp);
        let den = (tp + fnn) * (fnn + tn) + (tp + fp) * (fp + tn);
        num as f64 / den as f64
    }
}

/// Shannon entropy (nats) of a labelling given its group sizes.
fn entropy(sizes: &[u64]) -> f64 {
    if sizes.len() <= 1 {
        return 0.0;
    }
    let total: u64 = sizes.iter().sum();
    let log_total = (total as f64).ln();
    let total = total as f64;
    -sizes
        .iter()
        .filter(|&&s| s > 0)
        .map(|&s| (s as f64 / total) * ((s as f64).ln() - log_total))
        .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: f64 = 1e-9;

    /// 64-bit LCG (Knuth's MMIX constants); the fixture script uses the same
    /// formula: `state = state * 6364136223846793005 + 1442695040888963407
    /// mod 2^64`, label = `(state >> 33) % m`.
    fn lcg(seed: u64, n: usize, m: u64) -> Vec<i64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) % m) as i64
            })
            .collect()
    }

    fn check(name: &str, truth: &[i64], pred: &[i64], expected: [f64; 3]) {
        let s = scores(truth, pred).unwrap();
        let got = [s.acc, s.nmi, s.ari];
        for (metric, (g, e)) in ["acc", "nmi", "ari"].iter().zip(got.iter().zip(expected)) {
            assert!(
                (g - e).abs() <= TOL,
                "{name}: {metric} = {g:.17}, scikit-learn gives {e:.17}"
            );
        }
        assert_eq!(s.n, truth.len());
        // The single-metric functions agree with `scores`.
        assert_eq!(accuracy(truth, pred).unwrap(), s.acc);
        assert_eq!(nmi(truth, pred).unwrap(), s.nmi);
        assert_eq!(ari(truth, pred).unwrap(), s.ari);
    }

    // Fixtures: [acc, nmi, ari] from scikit-learn 1.9.1
    // (`normalized_mutual_info_score`, `adjusted_rand_score`) and, for acc,
    // scipy 1.17.1 on the contingency matrix (numpy 2.4.6):
    //
    //     from scipy.optimize import linear_sum_assignment
    //     from sklearn.metrics.cluster import contingency_matrix
    //     def acc(t, p):
    //         c = contingency_matrix(t, p)
    //         r, k = linear_sum_assignment(-c)
    //         return c[r, k].sum() / len(t)
    //     def lcg(seed, n, m):   # same generator as `lcg` above
    //         s, out = seed, []
    //         for _ in range(n):
    //             s = (s * 6364136223846793005 + 1442695040888963407) % 2**64
    //             out.append((s >> 33) % m)
    //         return out
    //
    // The generated cases build their vectors exactly as the Rust tests do.
    #[test]
    fn fixture_single_predicted_cluster() {
        check(
            "single_predicted_cluster",
            &[0, 0, 1, 1, 2, 2],
            &[0, 0, 0, 0, 0, 0],
            [0.3333333333333333, 0.0, 0.0],
        );
    }

    #[test]
    fn fixture_both_single_cluster() {
        check(
            "both_single_cluster",
            &[3, 3, 3, 3],
            &[7, 7, 7, 7],
            [1.0, 1.0, 1.0],
        );
    }

    #[test]
    fn fixture_single_true_class() {
        check(
            "single_true_class",
            &[5, 5, 5, 5, 5, 5],
            &[0, 1, 0, 1, 2, 2],
            [0.3333333333333333, 0.0, 0.0],
        );
    }

    #[test]
    fn fixture_permuted_perfect_match() {
        check(
            "permuted_perfect_match",
            &[0, 0, 1, 1, 2, 2, 2, -4, -4],
            &[5, 5, 3, 3, 9, 9, 9, 0, 0],
            [1.0, 1.0, 1.0],
        );
    }

    #[test]
    fn fixture_more_clusters_than_classes() {
        check(
            "more_clusters_than_classes",
            &[0, 0, 0, 1, 1, 1, 2, 2],
            &[0, 1, 2, 3, 3, 4, 5, 5],
            [0.625, 0.7688604801805139, 0.375],
        );
    }

    #[test]
    fn fixture_fewer_clusters_than_classes() {
        check(
            "fewer_clusters_than_classes",
            &[0, 0, 1, 1, 2, 2, 3, 3, 3, 4],
            &[1, 1, 1, 1, 0, 0, 0, 0, 2, 2],
            [0.5, 0.6615274994611928, 0.2918454935622318],
        );
    }

    #[test]
    fn fixture_one_cluster_per_sample() {
        check(
            "one_cluster_per_sample",
            &[0, 0, 1, 1],
            &[0, 1, 2, 3],
            [0.5, 0.6666666666666666, 0.0],
        );
    }

    #[test]
    fn fixture_sklearn_doc_example() {
        check(
            "sklearn_doc_example",
            &[0, 0, 1, 2],
            &[0, 0, 1, 1],
            [0.75, 0.7999999999999999, 0.5714285714285714],
        );
    }

    #[test]
    fn fixture_single_sample() {
        check("single_sample", &[1], &[9], [1.0, 1.0, 1.0]);
    }

    #[test]
    fn fixture_negative_ari() {
        check(
            "negative_ari",
            &[0, 0, 1, 1],
            &[0, 1, 0, 1],
            [0.5, 0.0, -0.5],
        );
    }

    const RANDOM_INDEPENDENT: [f64; 3] = [0.148, 0.020520726915632653, 0.0015369781836128786];
    const NOISY_MORE_CLUSTERS: [f64; 3] = [0.707, 0.6729805840859843, 0.5547924749413841];
    const NOISY_FEWER_CLUSTERS_NEGATIVE_IDS: [f64; 3] =
        [0.475, 0.4799392032915742, 0.42298207829766504];
    const NEARLY_PERFECT_3: [f64; 3] = [0.9441666666666667, 0.8037454445754283, 0.8414671600330753];

    #[test]
    fn fixture_random_independent() {
        let (t, p) = (lcg(1, 1000, 10), lcg(2, 1000, 10));
        check("random_independent", &t, &p, RANDOM_INDEPENDENT);
    }

    #[test]
    fn fixture_noisy_more_clusters() {
        let t = lcg(3, 1000, 10);
        let p: Vec<i64> = t
            .iter()
            .zip(lcg(4, 1000, 100))
            .map(|(&t, z)| if z < 70 { (3 * t + 1) % 10 } else { 10 + z % 3 })
            .collect();
        check("noisy_more_clusters", &t, &p, NOISY_MORE_CLUSTERS);
    }

    #[test]
    fn fixture_noisy_fewer_clusters_negative_ids() {
        let t: Vec<i64> = lcg(5, 1000, 6).iter().map(|v| v - 2).collect();
        let p: Vec<i64> = t
            .iter()
            .zip(lcg(6, 1000, 100))
            // t + 2 >= 0, so integer division agrees with Python's floor division.
            .map(|(&t, z)| if z < 80 { (t + 2) / 2 + 3 } else { z % 4 })
            .collect();
        check(
            "noisy_fewer_clusters_negative_ids",
            &t,
            &p,
            NOISY_FEWER_CLUSTERS_NEGATIVE_IDS,
        );
    }

    #[test]
    fn fixture_nearly_perfect_3() {
        let t = lcg(7, 1200, 3);
        let p: Vec<i64> = t
            .iter()
            .zip(lcg(8, 1200, 100))
            .map(|(&t, z)| if z < 95 { t } else { (t + 1) % 3 })
            .collect();
        check("nearly_perfect_3", &t, &p, NEARLY_PERFECT_3);
    }

    #[test]
    fn u32_predictions_match_i64() {
        let truth = lcg(11, 300, 5);
        let pred64 = lcg(12, 300, 7);
        let pred32: Vec<u32> = pred64.iter().map(|&p| p as u32).collect();
        assert_eq!(
            scores(&truth, &pred64).unwrap(),
            scores(&truth, &pred32).unwrap()
        );
    }

    #[test]
    fn symmetric_in_acc_nmi_ari() {
        let a = lcg(21, 500, 4);
        let b = lcg(22, 500, 9);
        let ab = scores(&a, &b).unwrap();
        let ba = scores(&b, &a).unwrap();
        assert!((ab.acc - ba.acc).abs() < 1e-15);
        assert!((ab.nmi - ba.nmi).abs() < 1e-12);
        assert!((ab.ari - ba.ari).abs() < 1e-12);
    }

    #[test]
    fn errors() {
        let empty: [i64; 0] = [];
        assert_eq!(scores(&empty, &empty), Err(MetricsError::Empty));
        assert_eq!(
            scores(&[1i64, 2], &[1u32]),
            Err(MetricsError::LengthMismatch { truth: 2, pred: 1 })
        );
    }

    #[test]
    fn serde_round_trip() {
        let s = scores(&[0i64, 0, 1, 1], &[1u32, 1, 0, 0]).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"acc":1.0,"nmi":1.0,"ari":1.0,"n":4}"#);
        let back: ClusterScores = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn counts_give_the_same_scores_as_the_rows_they_count() {
        let truth = lcg(7, 500, 4);
        let pred = lcg(11, 500, 5);
        let mut counts: std::collections::BTreeMap<(i64, i64), u64> = Default::default();
        for (&t, &p) in truth.iter().zip(&pred) {
            *counts.entry((t, p)).or_default() += 1;
        }
        // Split one cell in two and add an empty one: both must not matter.
        let mut cells: Vec<(i64, i64, u64)> =
            counts.iter().map(|(&(t, p), &n)| (t, p, n)).collect();
        let (t, p, n) = cells[0];
        cells[0].2 = 1;
        cells.push((t, p, n - 1));
        cells.push((99, 99, 0));
        let from_rows = scores(&truth, &pred).unwrap();
        let from_counts = scores_from_counts(&cells).unwrap();
        assert_eq!(from_counts.n, 500);
        assert!((from_rows.acc - from_counts.acc).abs() < TOL);
        assert!((from_rows.nmi - from_counts.nmi).abs() < TOL);
        assert!((from_rows.ari - from_counts.ari).abs() < TOL);
        assert!(scores_from_counts::<i64, i64>(&[(1, 1, 0)]).is_err());
    }
}
