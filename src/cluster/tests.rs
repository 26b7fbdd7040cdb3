//! Tests of `crate::cluster`.
use super::*;

/// Well separated Gaussian-ish blobs: `per` points around each of `centres`.
fn blobs(centres: &[[f32; 3]], per: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Vec::new();
    let mut truth = Vec::new();
    for (c, centre) in centres.iter().enumerate() {
        for _ in 0..per {
            for &m in centre {
                // Sum of uniforms: bounded, roughly bell-shaped noise.
                let u: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
                x.push(m + spread * u);
            }
            truth.push(c);
        }
    }
    (x, truth)
}

/// True when the predicted partition equals the true one up to renaming.
fn same_partition(truth: &[usize], pred: &[u32]) -> bool {
    let mut map = std::collections::HashMap::new();
    let mut inv = std::collections::HashMap::new();
    truth
        .iter()
        .zip(pred)
        .all(|(&t, &p)| *map.entry(t).or_insert(p) == p && *inv.entry(p).or_insert(t) == t)
}

const CENTRES: [[f32; 3]; 4] = [
    [0.0, 0.0, 0.0],
    [10.0, 0.0, 0.0],
    [0.0, 10.0, 0.0],
    [0.0, 0.0, 10.0],
];

#[test]
fn recovers_separated_blobs() {
    let (x, truth) = blobs(&CENTRES, 50, 1.0, 7);
    let fit = kmeans(&x, 3, &KMeansConfig::new(4).with_seed(1)).unwrap();
    assert_eq!(fit.labels.len(), 200);
    assert_eq!(fit.k(), 4);
    assert!(same_partition(&truth, &fit.labels));
    assert!(fit.iterations >= 1 && fit.iterations <= 300);
}

#[test]
fn same_seed_same_result_other_seed_still_correct() {
    let (x, truth) = blobs(&CENTRES, 40, 1.5, 3);
    let cfg = KMeansConfig::new(4).with_seed(42).with_n_init(5);
    let a = kmeans(&x, 3, &cfg).unwrap();
    let b = kmeans(&x, 3, &cfg).unwrap();
    assert_eq!(a, b);
    // Thread count must not change the bits either.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let c = pool.install(|| kmeans(&x, 3, &cfg).unwrap());
    assert_eq!(a, c);
    for seed in [0, 1, 2, 12345] {
        let f = kmeans(&x, 3, &cfg.clone().with_seed(seed)).unwrap();
        assert!(same_partition(&truth, &f.labels), "seed {seed}");
        assert!((f.inertia - a.inertia).abs() <= 1e-6 * a.inertia);
    }
}

/// 24 points in 2-D forming three loose groups. The global optima come from
/// scikit-learn 1.9.1 / numpy 2.4.6, identical over `random_state` 0..5:
///
/// ```text
/// X = np.array([[((i*7)%11)/4 + 6*(i%3), ((i*5)%13)/4 - (5 if i%3==1 else 0)]
///               for i in range(24)])
/// KMeans(k, n_init=50, random_state=0).fit(X).inertia_   # k = 3, 4
/// ```
#[test]
fn inertia_matches_scikit_learn() {
    let x = sklearn_fixture_points();
    let fit = kmeans(&x, 2, &KMeansConfig::new(3).with_seed(9)).unwrap();
    let expected = SKLEARN_INERTIA_K3;
    assert!(
        ((fit.inertia - expected) / expected).abs() < 1e-4,
        "{} vs {}",
        fit.inertia,
        expected
    );
    let fit4 = kmeans(&x, 2, &KMeansConfig::new(4).with_seed(9)).unwrap();
    let expected4 = SKLEARN_INERTIA_K4;
    assert!(
        ((fit4.inertia - expected4) / expected4).abs() < 1e-4,
        "{} vs {}",
        fit4.inertia,
        expected4
    );
}

/// Fixture points: `x_i = ((i*7) % 11) / 4 + 6*(i%3)`, `y_i = ((i*5) % 13) / 4 - 5*(i%3 == 1)`,
/// all exactly representable in f32 (multiples of 1/4), so f32 and f64 agree.
fn sklearn_fixture_points() -> Vec<f32> {
    (0..24)
        .flat_map(|i: i32| {
            let x = ((i * 7) % 11) as f32 / 4.0 + 6.0 * (i % 3) as f32;
            let y = ((i * 5) % 13) as f32 / 4.0 - if i % 3 == 1 { 5.0 } else { 0.0 };
            [x, y]
        })
        .collect()
}
const SKLEARN_INERTIA_K3: f64 = 34.640625;
const SKLEARN_INERTIA_K4: f64 = 26.671875;

#[test]
fn k_equals_n_and_duplicates() {
    let x = [0.0f32, 1.0, 2.0, 3.0, 4.0];
    let fit = kmeans(&x, 1, &KMeansConfig::new(5)).unwrap();
    assert_eq!(fit.inertia, 0.0);
    let mut labels = fit.labels.clone();
    labels.sort_unstable();
    assert_eq!(labels, vec![0, 1, 2, 3, 4]);

    // More clusters than distinct points: no panic, zero inertia.
    let dup = [1.0f32, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0];
    let fit = kmeans(&dup, 2, &KMeansConfig::new(3)).unwrap();
    assert_eq!(fit.inertia, 0.0);
    assert!(fit.centroids.iter().all(|v| v.is_finite()));
}

#[test]
fn single_cluster_is_the_mean() {
    let x = [0.0f32, 0.0, 2.0, 4.0, 4.0, 2.0];
    let fit = kmeans(&x, 2, &KMeansConfig::new(1)).unwrap();
    assert_eq!(fit.centroids, vec![2.0, 2.0]);
    assert_eq!(fit.labels, vec![0, 0, 0]);
    assert!((fit.inertia - (8.0 + 4.0 + 4.0)).abs() < 1e-9);
}

#[test]
fn assign_returns_label_and_squared_distance() {
    let centroids = [0.0f32, 0.0, 10.0, 10.0];
    let got = assign(&[1.0, 2.0, 9.0, 9.0, 5.0, 5.0], 2, &centroids).unwrap();
    // The exact midpoint ties and goes to the lower label.
    assert_eq!(got, vec![(0, 5.0), (1, 2.0), (0, 50.0)]);
    let (x, _) = blobs(&CENTRES, 10, 1.0, 5);
    let fit = kmeans(&x, 3, &KMeansConfig::new(4)).unwrap();
    let pred = fit.predict(&x).unwrap();
    let labels: Vec<u32> = pred.iter().map(|p| p.0).collect();
    assert_eq!(labels, fit.labels);
    let total: f64 = pred.iter().map(|p| f64::from(p.1)).sum();
    assert!((total - fit.inertia).abs() < 1e-6 * fit.inertia.max(1.0));
}

#[test]
fn rejects_bad_input() {
    let x = [0.0f32, 1.0, 2.0, 3.0];
    let cfg = |k| KMeansConfig::new(k);
    assert_eq!(kmeans(&x, 2, &cfg(0)), Err(ClusterError::ZeroClusters));
    assert_eq!(
        kmeans(&x, 2, &cfg(3)),
        Err(ClusterError::TooManyClusters { k: 3, n: 2 })
    );
    assert_eq!(kmeans(&[], 2, &cfg(1)), Err(ClusterError::EmptyInput));
    assert_eq!(kmeans(&x, 0, &cfg(1)), Err(ClusterError::ZeroDimension));
    assert_eq!(
        kmeans(&x, 3, &cfg(1)),
        Err(ClusterError::DimensionMismatch { len: 4, d: 3 })
    );
    assert_eq!(
        kmeans(&[0.0, 1.0, f32::NAN, 3.0], 2, &cfg(1)),
        Err(ClusterError::NonFinite { row: 1, col: 0 })
    );
    assert_eq!(
        kmeans(&[0.0, f32::INFINITY], 1, &cfg(1)),
        Err(ClusterError::NonFinite { row: 1, col: 0 })
    );
    assert!(matches!(
        kmeans(&x, 2, &cfg(1).with_n_init(0)),
        Err(ClusterError::InvalidParameter(_))
    ));
    assert!(matches!(
        kmeans(&x, 2, &cfg(1).with_max_iter(0)),
        Err(ClusterError::InvalidParameter(_))
    ));
    assert!(matches!(
        kmeans(&x, 2, &cfg(1).with_tol(f64::NAN)),
        Err(ClusterError::InvalidParameter(_))
    ));
    assert_eq!(
        assign(&x, 2, &[0.0, 1.0, 2.0]),
        Err(ClusterError::DimensionMismatch { len: 3, d: 2 })
    );
    assert_eq!(assign(&x, 2, &[]), Err(ClusterError::ZeroClusters));
    assert_eq!(
        assign(&x, 2, &[0.0, f32::NAN]),
        Err(ClusterError::NonFinite { row: 0, col: 1 })
    );
}

/// MNIST-sized timing: run with
/// `cargo test --release -- --ignored kmeans_784 --nocapture`.
#[test]
#[ignore]
fn kmeans_784_timing() {
    let (n, d, k) = (10_000, 784, 10);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Ten noisy prototypes so Lloyd has real structure to converge on.
    let protos: Vec<f32> = (0..k * d).map(|_| rng.random::<f32>()).collect();
    let x: Vec<f32> = (0..n)
        .flat_map(|i| {
            let p = &protos[(i % k) * d..(i % k + 1) * d];
            p.iter()
                .map(|&v| v + 0.3 * rng.random::<f32>())
                .collect::<Vec<_>>()
        })
        .collect();
    let t = std::time::Instant::now();
    let fit = kmeans(&x, d, &KMeansConfig::new(k).with_n_init(1)).unwrap();
    println!(
        "n={n} d={d} k={k} n_init=1: {:?}, {} iterations",
        t.elapsed(),
        fit.iterations
    );
}

#[test]
fn huge_finite_values_do_not_panic() {
    let x = [3e38f32, -3e38, -3e38, 3e38, 0.0, 0.0];
    let fit = kmeans(&x, 2, &KMeansConfig::new(2).with_n_init(2)).unwrap();
    assert_eq!(fit.labels.len(), 3);
}
