//! Tests of `crate::baselines`.
use std::collections::HashMap;

use super::*;

#[test]
fn reference_whitening_amplifies_what_the_backgrounds_do_not_vary_in() {
    // Background: large variance on axis 0, small on axis 1. Targets differ from each other
    // only along axis 1 (by 0.5) and share a large axis-0 spread; whitened, the axis-1
    // difference dominates.
    let reference = axis_noise(2000, &[3.0, 0.1], 1);
    let mut target = Vec::new();
    for i in 0..200 {
        let a = if i % 2 == 0 { 0.25 } else { -0.25 };
        let spread = ((i * 37 % 101) as f32 / 101.0 - 0.5) * 6.0;
        target.extend([spread, a]);
    }
    let z = reference_whitening(&target, &reference, 2, 1e-3).unwrap();
    // nalgebra's eigenpairs are unordered: the axis-1 coordinate is the one that carries
    // most of the first row.
    let c = if z[0].abs() > z[1].abs() { 0 } else { 1 };
    let first = z[c].signum();
    for (i, row) in z.chunks_exact(2).enumerate() {
        assert!((row[0] * row[0] + row[1] * row[1] - 1.0).abs() < 1e-5);
        let expected = if i % 2 == 0 { first } else { -first };
        assert!(
            row[c].signum() == expected && row[c].abs() > 0.7,
            "row {i}: {row:?}"
        );
    }
    // Without whitening the shared axis-0 spread dominates half of the rows.
    let dominated = target
        .chunks_exact(2)
        .filter(|r| r[0].abs() > r[1].abs())
        .count();
    assert!(dominated > 100, "{dominated}");
    assert!(reference_whitening(&target, &reference, 2, 0.0).is_err());
}

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rows with independent per-axis noise of the given standard deviations
/// (sum of 12 uniforms − 6 ≈ standard normal).
fn axis_noise(n: usize, stds: &[f32], seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .flat_map(|_| stds.to_vec())
        .map(|s| s * ((0..12).map(|_| rng.random::<f32>()).sum::<f32>() - 6.0))
        .collect()
}

#[test]
fn cpca_finds_the_salient_axis_pca_does_not() {
    // Target: big variance on axis 0 (shared with the reference),
    // moderate variance on axis 1 (target only), noise on axis 2.
    let target = axis_noise(500, &[5.0, 2.0, 0.5], 1);
    let reference = axis_noise(500, &[5.0, 0.5, 0.5], 2);
    let p = pca(&target, 500, 3, 1).unwrap();
    assert!(p.components[0].abs() > 0.99, "{:?}", p.components);
    for alpha in [1.0, 2.0, 10.0] {
        let c = cpca(&target, &reference, 3, 1, alpha).unwrap();
        assert!(
            c.components[1].abs() > 0.99,
            "alpha {alpha}: {:?}",
            c.components
        );
        assert_eq!(c.embedding.len(), 500);
    }
    // alpha = 0 is PCA of the target.
    let c0 = cpca(&target, &reference, 3, 1, 0.0).unwrap();
    assert_eq!(c0.components, p.components);
}

/// Fixed 8 × 4 matrix `X[i][j] = ((3i + 5j + i·j) % 7) − j/2`, reproduced
/// in numpy 2.4.6 as
/// `w, v = np.linalg.eigh(np.cov(X.T)); w[::-1]` (eigenvalues) and
/// `(X − X.mean(0)) @ v[:, ::-1]` with each column's largest-|·| loading
/// made positive (embedding). For cPCA the reference is
/// `R[i][j] = ((2i + j + 3·i·j) % 5) · 0.5` with `alpha = 3` (one negative eigenvalue).
fn fixture_matrix(rows: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|i| (0..4).map(move |j| ((3 * i + 5 * j + i * j) % 7) as f32 - j as f32 / 2.0))
        .collect()
}
fn fixture_reference(rows: usize) -> Vec<f32> {
    (0..rows)
        .flat_map(|i| (0..4).map(move |j| ((2 * i + j + 3 * i * j) % 5) as f32 * 0.5))
        .collect()
}
const NUMPY_PCA_EIGENVALUES: [f64; 4] = [
    9.165191018985498,
    5.715404434978306,
    2.1634833002893887,
    1.0809212457468091,
];
const NUMPY_PCA_EMBEDDING_2: [f64; 16] = [
    -2.9080510238278148,
    1.9722774835247383,
    -2.1690655155956584,
    -2.4781482261689987,
    5.279573918972066,
    3.0008661050577947,
    1.3785578838809083,
    0.820433696641488,
    2.1175433921130646,
    -3.629992013052249,
    -2.3911504348107058,
    0.13491031441450801,
    1.6006428030959556,
    -1.7926248439420192,
    -2.9080510238278148,
    1.9722774835247383,
];
const NUMPY_CPCA_EIGENVALUES: [f64; 4] = [
    8.150322094208374,
    5.497830600454337,
    0.732126092637542,
    -1.255278787300258,
];
const NUMPY_CPCA_EMBEDDING_2: [f64; 16] = [
    -2.957136480257178,
    1.9377015193282476,
    -2.2481456223342517,
    -2.3609133587799658,
    5.213218353871603,
    3.1316783165835185,
    1.4961183311294435,
    0.6711200801427104,
    2.205109189052369,
    -3.6274947979655026,
    -2.2086444909302307,
    0.11919986375876337,
    1.456617199725422,
    -1.8089931423960186,
    -2.957136480257178,
    1.9377015193282476,
];

#[test]
fn pca_matches_numpy() {
    let x = fixture_matrix(8);
    let p = pca(&x, 8, 4, 4).unwrap();
    for (g, e) in p.eigenvalues.iter().zip(NUMPY_PCA_EIGENVALUES) {
        assert!((g - e).abs() < 1e-9 * e.abs().max(1.0), "{g} vs {e}");
    }
    let p2 = pca(&x, 8, 4, 2).unwrap();
    for (g, e) in p2.embedding.iter().zip(NUMPY_PCA_EMBEDDING_2) {
        assert!((f64::from(*g) - e).abs() < 1e-5, "{g} vs {e}");
    }
    // Directions are orthonormal.
    for a in 0..4 {
        for b in 0..4 {
            let dot: f32 = (0..4)
                .map(|j| p.components[a * 4 + j] * p.components[b * 4 + j])
                .sum();
            let want = if a == b { 1.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-6);
        }
    }
    // Total variance is preserved.
    let total: f64 = p.eigenvalues.iter().sum();
    assert!((total - NUMPY_PCA_EIGENVALUES.iter().sum::<f64>()).abs() < 1e-9);
}

#[test]
fn cpca_matches_numpy() {
    let t = fixture_matrix(8);
    let r = fixture_reference(10);
    let c = cpca(&t, &r, 4, 4, 3.0).unwrap();
    for (g, e) in c.eigenvalues.iter().zip(NUMPY_CPCA_EIGENVALUES) {
        assert!((g - e).abs() < 1e-9 * e.abs().max(1.0), "{g} vs {e}");
    }
    let c2 = cpca(&t, &r, 4, 2, 3.0).unwrap();
    for (g, e) in c2.embedding.iter().zip(NUMPY_CPCA_EMBEDDING_2) {
        assert!((f64::from(*g) - e).abs() < 1e-5, "{g} vs {e}");
    }
    // The grid gives each alpha's own projection, in order.
    let grid = cpca_grid(&t, &r, 4, 2, &[0.0, 3.0, 1.0]).unwrap();
    assert_eq!(grid.len(), 3);
    for (alpha, g) in [0.0, 3.0, 1.0].into_iter().zip(&grid) {
        let alone = cpca(&t, &r, 4, 2, alpha).unwrap();
        assert_eq!(g.eigenvalues, alone.eigenvalues, "alpha {alpha}");
        assert_eq!(g.embedding, alone.embedding, "alpha {alpha}");
    }
    assert_eq!(grid[1].embedding, c2.embedding);
    assert_ne!(grid[0].eigenvalues, grid[1].eigenvalues);
    assert!(matches!(
        cpca_grid(&t, &r, 4, 2, &[1.0, f64::NAN]),
        Err(BaselineError::InvalidAlpha(_))
    ));
}

#[test]
fn transform_reproduces_embedding_and_is_thread_independent() {
    let x = axis_noise(3000, &[3.0, 1.0, 2.0, 0.1, 0.5], 9);
    let p = pca(&x, 3000, 5, 3).unwrap();
    assert_eq!(p.transform(&x).unwrap(), p.embedding);
    assert_eq!(p.n_components(), 3);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(pool.install(|| pca(&x, 3000, 5, 3).unwrap()), p);
}

#[test]
fn one_dimension() {
    let p = pca(&[1.0, 2.0, 3.0, 4.0], 4, 1, 1).unwrap();
    assert_eq!(p.components, vec![1.0]);
    assert!((p.eigenvalues[0] - 5.0 / 3.0).abs() < 1e-12);
    assert_eq!(p.embedding, vec![-1.5, -0.5, 0.5, 1.5]);
}

#[test]
fn rejects_bad_input() {
    let x = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(pca(&x, 3, 0, 1), Err(BaselineError::ZeroDimension));
    assert!(matches!(
        pca(&x, 2, 2, 1),
        Err(BaselineError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        pca(&x[..2], 1, 2, 1),
        Err(BaselineError::TooFewRows { n: 1, .. })
    ));
    assert!(matches!(
        pca(&[], 0, 2, 1),
        Err(BaselineError::TooFewRows { n: 0, .. })
    ));
    assert_eq!(pca(&x, 3, 2, 0), Err(BaselineError::ZeroComponents));
    assert_eq!(
        pca(&x, 3, 2, 3),
        Err(BaselineError::TooManyComponents {
            components: 3,
            d: 2
        })
    );
    let mut bad = x;
    bad[3] = f32::NAN;
    assert_eq!(
        pca(&bad, 3, 2, 1),
        Err(BaselineError::NonFinite {
            which: "x",
            row: 1,
            col: 1
        })
    );
    assert!(matches!(
        cpca(&x, &bad, 2, 1, 1.0),
        Err(BaselineError::NonFinite {
            which: "reference",
            ..
        })
    ));
    assert!(matches!(
        cpca(&x, &x[..5], 2, 1, 1.0),
        Err(BaselineError::ShapeMismatch {
            which: "reference",
            ..
        })
    ));
    assert_eq!(
        cpca(&x, &x, 2, 1, -1.0),
        Err(BaselineError::InvalidAlpha(-1.0))
    );
    assert!(matches!(
        cpca(&x, &x, 2, 1, f64::NAN),
        Err(BaselineError::InvalidAlpha(_))
    ));
    assert_eq!(cpca(&x, &x, 0, 1, 1.0), Err(BaselineError::ZeroDimension));
    let p = pca(&x, 3, 2, 1).unwrap();
    assert!(matches!(
        p.transform(&x[..3]),
        Err(BaselineError::ShapeMismatch { .. })
    ));
}

/// MNIST-sized check: 784 dimensions. Ignored by default because debug
/// builds are slow; run with
/// `cargo test --release -- --ignored pca_784 --nocapture`.
#[test]
#[ignore]
fn pca_784_timing() {
    let (n, d) = (10_000, 784);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..n * d).map(|_| rng.random::<f32>()).collect();
    let t = std::time::Instant::now();
    let mean = column_mean(&x, d);
    let cov = covariance(&x, d, &mean);
    let t_cov = t.elapsed();
    let t = std::time::Instant::now();
    let eig = SymmetricEigen::try_new(cov, f64::EPSILON, 1000 * d).unwrap();
    let t_eig = t.elapsed();
    println!("n={n} d={d}: covariance {t_cov:?}, eigen {t_eig:?}");
    assert_eq!(eig.eigenvalues.len(), d);
    let t = std::time::Instant::now();
    let p = pca(&x, n, d, 50).unwrap();
    println!("full pca(50 components): {:?}", t.elapsed());
    assert_eq!(p.embedding.len(), n * 50);
}

/// `n` images of `side × side` Gaussian noise (σ `noise`), image `i` with `patterns[i % len]`
/// (each `p × p`, row-major) added at a random offset: the images, the pattern of each, the
/// offsets.
#[allow(clippy::type_complexity)]
fn patterns_in_noise(
    patterns: &[Vec<f32>],
    p: usize,
    n: usize,
    side: usize,
    noise: f32,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<usize>, Vec<(usize, usize)>) {
    let normal = rand_distr::Normal::new(0.0f32, noise).unwrap();
    let (mut images, mut labels, mut offsets) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let label = i % patterns.len();
        let (top, left) = (
            rng.random_range(0..=side - p),
            rng.random_range(0..=side - p),
        );
        let mut image: Vec<f32> = (0..side * side).map(|_| rng.sample(normal)).collect();
        for (j, v) in patterns[label].iter().enumerate() {
            image[(top + j / p) * side + left + j % p] += v;
        }
        images.extend(image);
        labels.push(label);
        offsets.push((top, left));
    }
    (images, labels, offsets)
}

/// `n` images of `side × side` Gaussian noise (σ `noise`), each with one of two 5×5 patterns (a
/// plus and a ring) added at a random offset: the images, the pattern of each, the offsets.
#[allow(clippy::type_complexity)]
fn moving_patterns(
    n: usize,
    side: usize,
    noise: f32,
    seed: u64,
) -> (Vec<f32>, Vec<usize>, Vec<(usize, usize)>) {
    let plus = (0..25)
        .map(|j| f32::from(j / 5 == 2 || j % 5 == 2))
        .collect();
    let ring = (0..25)
        .map(|j| f32::from(j / 5 == 0 || j / 5 == 4 || j % 5 == 0 || j % 5 == 4))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    patterns_in_noise(&[plus, ring], 5, n, side, noise, &mut rng)
}

/// Share of images whose cluster matches their pattern, under the better of the two matchings.
fn two_cluster_accuracy(truth: &[usize], found: &[usize]) -> f64 {
    let same = truth.iter().zip(found).filter(|(t, f)| t == f).count() as f64;
    let share = same / truth.len() as f64;
    share.max(1.0 - share)
}

fn shift_settings(window: usize) -> ShiftKMeans {
    ShiftKMeans {
        window,
        clusters: 2,
        iterations: 10,
        restarts: 3,
        start_rounds: 0,
        seed: 7,
    }
}

#[test]
fn shift_invariant_kmeans_finds_patterns_wherever_they_are() {
    let (side, n) = (12, 200);
    let (images, labels, offsets) = moving_patterns(n, side, 0.3, 3);
    let found = align_by_templates(&images, n, (side, side), shift_settings(5)).unwrap();
    let acc = two_cluster_accuracy(&labels, &found.labels);
    assert!(acc >= 0.95, "accuracy {acc}");
    let aligned = aligned_images(&offsets, &found);
    assert!(aligned >= n * 9 / 10, "{aligned} of {n} images aligned");
    assert_eq!(found.windows.len(), n * 25);
    for w in found.windows.chunks_exact(25) {
        let norm: f32 = w.iter().map(|v| v * v).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }
    // Without shifts (one window, the whole image) the same clustering cannot follow the
    // patterns around.
    let fixed = align_by_templates(&images, n, (side, side), shift_settings(side)).unwrap();
    let fixed_acc = two_cluster_accuracy(&labels, &fixed.labels);
    assert!(fixed_acc < 0.8, "accuracy without shifts {fixed_acc}");
}

#[test]
fn shift_invariant_kmeans_is_deterministic_for_a_seed() {
    let (images, _, _) = moving_patterns(60, 10, 0.5, 5);
    let a = align_by_templates(&images, 60, (10, 10), shift_settings(5)).unwrap();
    let b = align_by_templates(&images, 60, (10, 10), shift_settings(5)).unwrap();
    assert_eq!(a, b);
    let other = ShiftKMeans {
        seed: 8,
        ..shift_settings(5)
    };
    let c = align_by_templates(&images, 60, (10, 10), other).unwrap();
    assert!(c.objective.is_finite());
}

#[test]
fn shift_invariant_kmeans_rejects_bad_input() {
    let (mut images, _, _) = moving_patterns(10, 8, 0.3, 1);
    let run = |images: &[f32], n, settings| align_by_templates(images, n, (8, 8), settings);
    assert_eq!(
        run(&images, 10, shift_settings(9)),
        Err(BaselineError::InvalidWindow {
            window: 9,
            h: 8,
            w: 8
        })
    );
    assert!(matches!(
        run(&images, 10, shift_settings(0)),
        Err(BaselineError::InvalidWindow { .. })
    ));
    let none = ShiftKMeans {
        clusters: 0,
        ..shift_settings(5)
    };
    assert!(matches!(
        run(&images, 10, none),
        Err(BaselineError::InvalidClusters { .. })
    ));
    assert!(matches!(
        run(&images, 11, shift_settings(5)),
        Err(BaselineError::ShapeMismatch { .. })
    ));
    images[3 * 64 + 10] = f32::NAN;
    assert_eq!(
        run(&images, 10, shift_settings(5)),
        Err(BaselineError::NonFinite {
            which: "images",
            row: 3,
            col: 10
        })
    );
}

#[test]
fn whitened_pixels_are_the_zca_matrix_applied_to_the_centred_targets() {
    let reference = axis_noise(500, &[3.0, 0.5, 0.1], 2);
    let target = axis_noise(20, &[1.0, 1.0, 1.0], 3);
    let z = reference_whitened_pixels(&target, &reference, 3, 0.5).unwrap();
    let m = reference_whitening_matrix(&reference, 3, 0.5).unwrap();
    let mean = column_mean(&reference, 3);
    for (row, out) in target.chunks_exact(3).zip(z.chunks_exact(3)) {
        for j in 0..3 {
            let expected: f64 = (0..3)
                .map(|i| (f64::from(row[i]) - mean[i]) * m[(i, j)])
                .sum();
            assert!((f64::from(out[j]) - expected).abs() < 1e-4, "{out:?}");
        }
    }
}

#[test]
fn normalised_whitened_pixels_keep_the_distances_of_reference_whitening() {
    // `compare` derives whitening's rows from the ZCA pixels when it also runs tic: the two
    // forms differ by a rotation, so every pairwise distance k-means reads must agree.
    let reference = axis_noise(500, &[3.0, 0.5, 0.1], 2);
    let target = axis_noise(20, &[1.0, 1.0, 1.0], 3);
    let a = reference_whitening(&target, &reference, 3, 0.5).unwrap();
    let mut b = reference_whitened_pixels(&target, &reference, 3, 0.5).unwrap();
    normalize_rows(&mut b, 3);
    let distance = |x: &[f32], i: usize, j: usize| -> f32 {
        (0..3)
            .map(|c| (x[i * 3 + c] - x[j * 3 + c]).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    for i in 0..20 {
        for j in i + 1..20 {
            let (da, db) = (distance(&a, i, j), distance(&b, i, j));
            assert!((da - db).abs() < 1e-4, "rows {i}, {j}: {da} against {db}");
        }
    }
}

/// Images whose window is at the true offset, up to one constant displacement per cluster (a
/// template may hold its pattern a pixel or two off centre).
fn aligned_images(offsets: &[(usize, usize)], found: &Alignment) -> usize {
    let mut shifts: HashMap<usize, HashMap<(isize, isize), usize>> = HashMap::new();
    for ((t, f), &l) in offsets.iter().zip(&found.offsets).zip(&found.labels) {
        let shift = (f.0 as isize - t.0 as isize, f.1 as isize - t.1 as isize);
        *shifts.entry(l).or_default().entry(shift).or_default() += 1;
    }
    shifts
        .values()
        .map(|counts| counts.values().max().copied().unwrap_or(0))
        .sum()
}

/// `n` images of `side × side` Gaussian noise (σ 1) with one of `kinds` random binary `p × p`
/// patterns added at a random offset, and starts up to a pixel off each true offset: the
/// images, the true offsets, the starts.
#[allow(clippy::type_complexity)]
fn faint_patterns(
    n: usize,
    side: usize,
    p: usize,
    kinds: usize,
    seed: u64,
) -> (Vec<f32>, Vec<(usize, usize)>, Vec<(usize, usize)>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let patterns: Vec<Vec<f32>> = (0..kinds)
        .map(|_| {
            (0..p * p)
                .map(|_| f32::from(rng.random_bool(0.4)))
                .collect()
        })
        .collect();
    let (images, _, offsets) = patterns_in_noise(&patterns, p, n, side, 1.0, &mut rng);
    let mut jitter = |v: usize| {
        (v + rng.random_range(0..=2))
            .saturating_sub(1)
            .min(side - p)
    };
    let starts = offsets
        .iter()
        .map(|&(r, c)| (jitter(r), jitter(c)))
        .collect();
    (images, offsets, starts)
}

#[test]
fn start_rounds_keep_a_located_search_on_the_objects() {
    // Faint patterns in noise of their own strength, starts a pixel off at most: templates
    // seeded from single windows are mostly noise, and a search against them drifts windows
    // off their patterns; k-means rounds on the start windows first average the noise away.
    let (side, p, kinds, n) = (16, 8, 4, 400);
    let (mut with, mut without) = (0, 0);
    for seed in 1..=4 {
        let (images, offsets, starts) = faint_patterns(n, side, p, kinds, seed);
        let near = SearchRegion::Near {
            starts: &starts,
            radius: 2,
        };
        let run = |start_rounds| {
            let settings = ShiftKMeans {
                clusters: kinds,
                start_rounds,
                ..shift_settings(p)
            };
            aligned_images(
                &offsets,
                &align_within(&images, n, (side, side), settings, near).unwrap(),
            )
        };
        without += run(0);
        with += run(20);
    }
    assert!(
        with >= without + 4 * n / 25,
        "aligned with start rounds {with}, without {without} of {}",
        4 * n
    );
}

#[test]
fn shift_invariant_kmeans_searches_only_near_each_start() {
    let (side, n) = (12, 120);
    let (images, labels, offsets) = moving_patterns(n, side, 0.3, 3);
    let settings = shift_settings(5);
    // Radius 0: every window is at its start, here the true offset, and the clustering of
    // those windows is the patterns'.
    let pinned = SearchRegion::Near {
        starts: &offsets,
        radius: 0,
    };
    let found = align_within(&images, n, (side, side), settings, pinned).unwrap();
    assert_eq!(found.offsets, offsets);
    assert!(two_cluster_accuracy(&labels, &found.labels) >= 0.95);
    let fixed = best_offsets_within(&images, n, (side, side), 5, &found.templates, pinned);
    assert_eq!(fixed.unwrap(), offsets);
    // Radius 1 around starts two pixels off: no window strays further than one pixel.
    let starts: Vec<(usize, usize)> = offsets.iter().map(|&(r, c)| (r.max(2) - 2, c)).collect();
    let near = SearchRegion::Near {
        starts: &starts,
        radius: 1,
    };
    let found = align_within(&images, n, (side, side), settings, near).unwrap();
    for (f, s) in found.offsets.iter().zip(&starts) {
        assert!(
            f.0.abs_diff(s.0) <= 1 && f.1.abs_diff(s.1) <= 1,
            "{f:?} from {s:?}"
        );
    }
    // Everywhere is the unrestricted search.
    let everywhere = align_within(&images, n, (side, side), settings, SearchRegion::Everywhere);
    assert_eq!(
        everywhere.unwrap(),
        align_by_templates(&images, n, (side, side), settings).unwrap()
    );
    // Starts that are not offsets of these images are refused with the image named.
    let mut outside = offsets.clone();
    outside[7] = (8, 0);
    let err = align_within(
        &images,
        n,
        (side, side),
        settings,
        SearchRegion::Near {
            starts: &outside,
            radius: 1,
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        BaselineError::StartOutside {
            row: 7,
            start: (8, 0),
            rows: 8,
            cols: 8
        }
    );
    let short = align_within(
        &images,
        n,
        (side, side),
        settings,
        SearchRegion::Near {
            starts: &offsets[1..],
            radius: 1,
        },
    );
    assert!(matches!(short, Err(BaselineError::ShapeMismatch { .. })));
}

#[test]
fn normalised_principal_components_keep_the_leading_axes_at_unit_length() {
    // Variance 9, 4 and 0.01 along three axes, and two rows that differ only along the third:
    // two components drop that axis, so those rows land on one point; every row has length 1.
    let mut x = axis_noise(500, &[3.0, 2.0, 0.1], 4);
    x.extend([1.0, 2.0, 0.2, 1.0, 2.0, -0.2]);
    let (rows, kept) = normalised_principal_components(&x, 502, 3, 2).unwrap();
    assert_eq!((kept, rows.len()), (2, 1004));
    for row in rows.chunks_exact(2) {
        let norm = (row[0] * row[0] + row[1] * row[1]).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{row:?}");
    }
    let (a, b) = (&rows[1000..1002], &rows[1002..1004]);
    assert!(
        (a[0] - b[0]).abs() < 0.02 && (a[1] - b[1]).abs() < 0.02,
        "{a:?} {b:?}"
    );
    // With all three components kept they stay apart.
    let (all, capped) = normalised_principal_components(&x, 502, 3, 64).unwrap();
    assert_eq!(
        capped, 3,
        "more components than the data has are capped at its dimension"
    );
    let (a, b) = (&all[1500..1503], &all[1503..1506]);
    let gap: f32 = a.iter().zip(b).map(|(p, q)| (p - q).abs()).sum();
    assert!(gap > 0.1, "{a:?} {b:?}");
}
