//! `compare`: the suite's baselines on a bundled dataset, every method through the same k-means.

mod common;

use salient::compare::{self, CompareJob, CompareMethod};
use salient::data::SizePolicy;
use salient::datasets::{self, DatasetName};
use salient::train::TrainConfig;

fn job(
    dir: &std::path::Path,
    built: &datasets::BuiltDataset,
    methods: Vec<CompareMethod>,
) -> CompareJob {
    CompareJob {
        target: built.target.to_string_lossy().into_owned(),
        reference: built.reference.to_string_lossy().into_owned(),
        clusters: built.classes,
        seeds: 1,
        methods,
        components: 20,
        cpca_alphas: vec![2.0],
        align_window: 0,
        train: TrainConfig::default(),
        work_dir: dir.join("compare"),
        size: SizePolicy::Exact,
        device: candle_core::Device::Cpu,
    }
}

/// The contrastive-PCA protocol's dataset (digits 0 and 1 on grass), dataset seed 0.
fn mnist_grass_01(dir: &std::path::Path) -> datasets::BuiltDataset {
    datasets::build(
        DatasetName::MnistGrass01,
        dir,
        0,
        &datasets::default_sources_dir(),
    )
    .unwrap()
}

#[test]
fn whitening_beats_raw_pixels_and_tic_equals_it_on_aligned_digits() {
    let dir = tempfile::tempdir().unwrap();
    let built = mnist_grass_01(dir.path());
    let methods = vec![
        CompareMethod::Raw,
        CompareMethod::Whiten,
        CompareMethod::Tic,
    ];
    let rows = compare::run(&job(dir.path(), &built, methods)).unwrap();
    let names: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["raw", "whiten(ref)", "tic(ref,w=28)"]);
    let (raw, whiten, tic) = (&rows[0].1, &rows[1].1, &rows[2].1);
    assert_eq!(raw.n, built.target_rows);
    // On mnist-grass-01 the grass dominates raw pixels (ACC 0.88 over the full table);
    // reference whitening removes it (0.96).
    assert!(
        whiten.acc > raw.acc + 0.04,
        "whiten {whiten:?}, raw {raw:?}"
    );
    assert!(whiten.nmi > raw.nmi + 0.1, "whiten {whiten:?}, raw {raw:?}");
    // With a window the size of the image there is one offset: tic's aligned windows are the
    // whitened rows themselves, so the common k-means must score them identically.
    assert_eq!(
        (tic.acc, tic.nmi, tic.ari),
        (whiten.acc, whiten.nmi, whiten.ari)
    );
}

#[test]
fn whitening_with_pca_clusters_in_the_neighbour_space_named_by_its_components() {
    let dir = tempfile::tempdir().unwrap();
    let built = mnist_grass_01(dir.path());
    let mut both = job(
        dir.path(),
        &built,
        vec![CompareMethod::Whiten, CompareMethod::WhitenPca],
    );
    both.train.neighbour_components = 32;
    let rows = compare::run(&both).unwrap();
    let names: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["whiten(ref)", "whiten(ref)+pca(32)"]);
    let (whiten, reduced) = (&rows[0].1, &rows[1].1);
    assert_eq!(reduced.n, built.target_rows);
    // The digits live in the top whitened components: keeping 32 of 784 loses none of the
    // separation whitening gives (ACC 0.96 on this table, raw pixels 0.88).
    assert!(reduced.acc > 0.94, "{reduced:?}");
    assert!(
        (reduced.acc - whiten.acc).abs() < 0.02,
        "whiten {whiten:?}, +pca {reduced:?}"
    );
}

#[test]
fn tic_refuses_a_window_larger_than_the_images() {
    let dir = tempfile::tempdir().unwrap();
    let built = mnist_grass_01(dir.path());
    let mut too_wide = job(dir.path(), &built, vec![CompareMethod::Tic]);
    too_wide.align_window = 40;
    let err = compare::run(&too_wide).unwrap_err().to_string();
    assert!(err.contains("40") && err.contains("28"), "{err}");
}

#[test]
fn aligned_neighbours_and_the_schedule_name_their_cidfd_row_and_idfd_ignores_the_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let built = datasets::build_with_rows(
        DatasetName::MnistGrass01,
        dir.path(),
        0,
        &datasets::default_sources_dir(),
        Some(256),
    )
    .unwrap();
    let mut both = job(
        dir.path(),
        &built,
        vec![CompareMethod::Idfd, CompareMethod::Cidfd],
    );
    both.train = TrainConfig {
        neighbour_align_window: 20,
        neighbour_skip_raw_nearest: Some(2),
        ..common::tiny_config()
    };
    let rows = compare::run(&both).unwrap();
    let names: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    // The tiny config's one epoch is not the default schedule, so it names the rows too.
    assert_eq!(
        names,
        [
            "idfd(epochs=1)",
            "cidfd(align=20,skip=2,view_lambda=1,subspace,epochs=1)"
        ]
    );
    assert!(dir
        .path()
        .join("compare/cidfd-align20-skip2-view_lambda1-subspace-epochs1-seed0/model.onnx")
        .exists());
    assert!(rows
        .iter()
        .all(|(_, s)| s.n == 256 && (0.0..=1.0).contains(&s.acc)));
}
