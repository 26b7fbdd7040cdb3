//! Training end to end on a small real subset of mnist-grass: the model directory, the training
//! log, evaluation, checkpoints and resuming.

use salient::data::SizePolicy;
use salient::datasets::{self, DatasetName};
use salient::evaluate::evaluate_model;
use salient::manifest::{Manifest, CHECKPOINT_FILE, TRAINING_LOG_FILE, WEIGHTS_FILE};
use salient::metrics::ClusterScores;
use salient::train::job::{run, TrainJob};
use salient::train::{Method, TrainConfig};

fn small_config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        dim_salient: 16,
        dim_background: 16,
        kmeans_restarts: 2,
        checkpoint_every: 1,
        eval_every: 1,
        ..Default::default()
    }
}

/// The first `rows` rows of a bundled dataset (targets and references), built with `seed`.
fn built(
    name: DatasetName,
    dir: &std::path::Path,
    seed: u64,
    rows: usize,
) -> datasets::BuiltDataset {
    datasets::build_with_rows(
        name,
        dir,
        seed,
        &datasets::default_sources_dir(),
        Some(rows),
    )
    .unwrap()
}

fn mnist_grass(dir: &std::path::Path, seed: u64, rows: usize) -> datasets::BuiltDataset {
    built(DatasetName::MnistGrass, dir, seed, rows)
}

/// Evaluating the saved model (its ONNX graph) on its training table reproduces the metrics
/// training reported.
fn assert_evaluation_reproduces(
    model: &std::path::Path,
    data: &datasets::BuiltDataset,
    metrics: &ClusterScores,
) {
    let scores = evaluate_model(
        model,
        data.target.to_str().unwrap(),
        "label",
        SizePolicy::Exact,
    )
    .unwrap();
    assert_eq!(scores.n, metrics.n);
    assert!(
        (scores.acc - metrics.acc).abs() < 1e-9,
        "{} vs {}",
        scores.acc,
        metrics.acc
    );
}

fn job(
    dir: &std::path::Path,
    data: &datasets::BuiltDataset,
    config: TrainConfig,
    resume: bool,
) -> TrainJob {
    TrainJob {
        target: data.target.to_string_lossy().into_owned(),
        reference: Some(data.reference.to_string_lossy().into_owned()),
        out: dir.join("model"),
        config,
        resume,
        size: SizePolicy::Exact,
        device: candle_core::Device::Cpu,
    }
}

#[test]
fn cidfd_trains_writes_a_model_directory_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_grass(dir.path(), 0, 256);
    let report = run(&job(dir.path(), &data, small_config(2), false)).unwrap();
    assert_eq!(report.epochs, 2);
    assert_eq!((report.k, report.d), (10, 16));
    let metrics = report.metrics.expect("labelled target gives metrics");
    assert_eq!(metrics.n, 256);
    assert!((0.0..=1.0).contains(&metrics.acc), "{metrics:?}");
    // A model whose k-means put every image in one cluster has NMI 0: the clustering is real.
    assert!(metrics.nmi > 0.0 && metrics.nmi <= 1.0, "{metrics:?}");

    let model = dir.path().join("model");
    for file in [
        WEIGHTS_FILE,
        TRAINING_LOG_FILE,
        CHECKPOINT_FILE,
        "manifest.json",
    ] {
        assert!(model.join(file).is_file(), "{file} missing");
    }
    let manifest = Manifest::read(&model).unwrap();
    assert_eq!(manifest.method, "cidfd");
    assert_eq!(
        (manifest.k, manifest.d, manifest.epochs_trained),
        (10, 16, 2)
    );
    assert_eq!(manifest.input.shape.len(), 784);
    // 28×28 images leave a 28×28 object no room to move: the default front stays off, and
    // the manifest records it so.
    assert_eq!(
        (
            manifest.config.align_window,
            manifest.config.align_search_radius
        ),
        (Some(0), Some(0))
    );
    assert_eq!(manifest.training_data.target_rows, 256);
    assert_eq!(manifest.training_data.reference_rows, 256);
    assert_eq!(manifest.training_data.target[0].footer_sha256.len(), 64);

    let log = std::fs::read_to_string(model.join(TRAINING_LOG_FILE)).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines[0].starts_with("epoch,lr,loss,id_target,id_reference,fd,reference_salient"));
    assert_eq!(lines.len(), 3, "{log}");
    // Every loss in the log is a finite number.
    for line in &lines[1..] {
        let loss: f64 = line.split(',').nth(2).unwrap().parse().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
    }

    assert_evaluation_reproduces(&model, &data, &metrics);

    // Resuming a finished run with more epochs continues from the checkpoint.
    let resumed = run(&job(dir.path(), &data, small_config(3), true)).unwrap();
    assert_eq!(resumed.epochs, 3);
    let log = std::fs::read_to_string(model.join(TRAINING_LOG_FILE)).unwrap();
    assert_eq!(log.lines().count(), 4, "resume appends to the log:\n{log}");

    // A tampered weights file is refused where the weights are read (export, candle
    // evaluation); `evaluate` scores model.onnx, whose tampering tests/bad_input.rs covers.
    std::fs::write(model.join(WEIGHTS_FILE), b"not weights").unwrap();
    let err = salient::export::TrainedModel::load(&model)
        .err()
        .expect("tampered weights must be refused");
    assert!(
        err.to_string().contains("differs from the manifest"),
        "{err}"
    );
}

#[test]
fn the_default_aligns_objects_that_move_within_larger_images() {
    let dir = tempfile::tempdir().unwrap();
    let data = built(DatasetName::MnistGrassShifted, dir.path(), 0, 256);
    let config = TrainConfig {
        align_locator_epochs: 1,
        eval_every: 0,
        ..small_config(1)
    };
    let report = run(&job(dir.path(), &data, config, false)).unwrap();
    let model = dir.path().join("model");
    let manifest = Manifest::read(&model).unwrap();
    assert_eq!(manifest.input.shape.len(), 36 * 36);
    assert_eq!(
        (
            manifest.config.align_window,
            manifest.config.align_search_radius
        ),
        (Some(28), Some(3))
    );
    // The fitted front and its locator are stored with the encoders, and the exported graph
    // computes them: it takes whole 36×36 images and reproduces the training metrics.
    let tensors =
        candle_core::safetensors::load(model.join(WEIGHTS_FILE), &candle_core::Device::Cpu)
            .unwrap();
    for name in [
        salient::alignment::TEMPLATES_TENSOR,
        salient::alignment::WHITENING_TENSOR,
    ] {
        assert!(tensors.contains_key(name), "{name} missing");
    }
    assert!(
        tensors
            .keys()
            .any(|k| k.starts_with(salient::alignment::LOCATOR_PREFIX)),
        "no locator tensors"
    );
    let metrics = report.metrics.expect("labelled target gives metrics");
    assert_eq!(metrics.n, 256);
    assert_evaluation_reproduces(&model, &data, &metrics);
}

#[test]
fn idfd_needs_no_reference_and_cidfd_refuses_to_run_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_grass(dir.path(), 1, 64);
    let mut idfd = job(
        dir.path(),
        &data,
        TrainConfig {
            method: Method::Idfd,
            ..small_config(1)
        },
        false,
    );
    idfd.reference = None;
    let report = run(&idfd).unwrap();
    assert_eq!(report.epochs, 1);
    assert_eq!(
        Manifest::read(&idfd.out)
            .unwrap()
            .training_data
            .reference_rows,
        0
    );

    let mut cidfd = job(dir.path(), &data, small_config(1), false);
    cidfd.reference = None;
    let err = run(&cidfd).unwrap_err();
    assert!(err.to_string().contains("--reference"), "{err}");
}

#[test]
fn skipped_raw_neighbours_must_leave_room_for_the_positives() {
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_grass(dir.path(), 1, 64);
    let too_many = job(
        dir.path(),
        &data,
        TrainConfig {
            neighbour_skip_raw_nearest: Some(54),
            ..small_config(1)
        },
        false,
    );
    let err = run(&too_many).unwrap_err().to_string();
    assert!(
        err.contains("neighbour_skip_raw_nearest (54)") && err.contains("(64)"),
        "{err}"
    );
    assert!(!too_many.out.join(WEIGHTS_FILE).exists());

    let fits = job(
        dir.path(),
        &data,
        TrainConfig {
            neighbour_skip_raw_nearest: Some(3),
            ..small_config(1)
        },
        false,
    );
    assert_eq!(run(&fits).unwrap().epochs, 1);
}
