//! ONNX export and the real ONNX Runtime: candle and ORT agree on real images, the file passes
//! onnx.checker and Python's onnxruntime, and a corrupted or mismatched model is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use salient::data::{decode_batch, ImageTableReader, NullPolicy, ReaderOptions, SizePolicy};
use salient::export::TrainedModel;
use salient::export::ONNX_FILE;
use salient::infer::{EngineOptions, InferenceEngine};
use salient::manifest::Manifest;
use salient::model::{Architecture, InputWhitening};

/// A small model trained for one epoch on 256 real mnist-grass images (train exports it), and
/// its target table.
fn trained(dir: &Path, config: salient::train::TrainConfig) -> (PathBuf, PathBuf) {
    let (model, data) = common::tiny_model_with(dir, 256, config);
    (model, data.target)
}

/// The decoded pixels of every image of a table.
fn pixels(table: &Path, model: &TrainedModel) -> Vec<u8> {
    let mut all = Vec::new();
    let reader =
        ImageTableReader::open(&table.to_string_lossy(), ReaderOptions::default()).unwrap();
    for batch in reader {
        let batch = batch.unwrap();
        let decoded = decode_batch(
            &batch,
            model.manifest.input.shape,
            SizePolicy::Exact,
            NullPolicy::Refuse,
        )
        .unwrap();
        all.extend(decoded.pixels);
    }
    all
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn parity(config: salient::train::TrainConfig) {
    let architecture = config.architecture;
    let whitening = match (config.whitening_kernel() > 0, config.whitening_matrix) {
        (false, _) => "none",
        (true, false) => "kernel",
        (true, true) => "matrix",
    };
    let aligned = config.align_window() > 0;
    let subspace = config.contrastive_subspace();
    let dim = config.dim_salient;
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, target) = trained(dir.path(), config);
    let manifest = Manifest::read(&model_dir).unwrap();
    assert_eq!(manifest.id.len(), 64, "train exports and records the id");

    let candle = TrainedModel::load(&model_dir).unwrap();
    let loaded = match candle.encoder.input_whitening() {
        None => "none",
        Some(InputWhitening::Kernel(_)) => "kernel",
        Some(InputWhitening::Matrix { .. }) => "matrix",
    };
    assert_eq!(loaded, whitening);
    assert_eq!(candle.alignment.is_some(), aligned);
    assert_eq!(candle.subspace.is_some(), subspace);
    if let Some(subspace) = &candle.subspace {
        assert!(
            (1..=dim).contains(&subspace.rank()),
            "rank {}",
            subspace.rank()
        );
    }
    let pixels = pixels(&target, &candle);
    assert_eq!(pixels.len(), 256 * 28 * 28);
    let want = candle.embed(&pixels).unwrap();
    let want_assign = candle.assign(&want).unwrap();

    // Batches of 100 exercise the dynamic batch dimension and a ragged last batch.
    let engine = InferenceEngine::load(
        &model_dir,
        EngineOptions {
            batch_size: 100,
            ..Default::default()
        },
    )
    .unwrap();
    let got = engine.run(&pixels).unwrap();
    let err = max_abs_diff(&want, &got.embedding);
    assert!(err <= 1e-4, "embeddings differ by {err}");
    let ids: Vec<i32> = want_assign.iter().map(|(c, _)| *c as i32).collect();
    assert_eq!(got.cluster_id, ids, "cluster ids differ");
    let want_dist: Vec<f32> = want_assign.iter().map(|(_, d)| *d).collect();
    assert!(max_abs_diff(&want_dist, &got.distance) <= 1e-4);
    // More than one cluster is used, so the comparison of ids means something.
    let mut distinct = got.cluster_id.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 1,
        "all images in one cluster: {distinct:?}"
    );
    eprintln!("{architecture:?}: max |candle - ort| = {err:e}");

    // Python: onnx.checker and onnxruntime give the same outputs.
    let bin = dir.path().join("check");
    std::fs::write(dir.path().join("pixels.bin"), &pixels).unwrap();
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(bin.with_extension("embedding.bin"), le(&got.embedding)).unwrap();
    std::fs::write(bin.with_extension("distance.bin"), le(&got.distance)).unwrap();
    let ids_le: Vec<u8> = got
        .cluster_id
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(bin.with_extension("cluster_id.bin"), ids_le).unwrap();
    let out = Command::new("python3")
        .arg(common::repo_path("tests/interop/check_onnx.py"))
        .arg(&model_dir)
        .arg(dir.path().join("pixels.bin"))
        .arg(&bin)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "check_onnx.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn small_cnn_candle_and_onnx_runtime_agree_on_256_real_images() {
    parity(common::tiny_config());
}

#[test]
fn without_the_contrastive_subspace_candle_and_onnx_runtime_agree() {
    parity(salient::train::TrainConfig {
        contrastive_subspace: Some(false),
        ..common::tiny_config()
    });
}

#[test]
fn resnet18_with_head_norm_candle_and_onnx_runtime_agree() {
    parity(salient::train::TrainConfig {
        architecture: Architecture::Resnet18,
        head_norm: true,
        ..common::tiny_config()
    });
}

#[test]
fn the_reference_whitening_layer_runs_the_same_in_onnx_runtime() {
    parity(salient::train::TrainConfig {
        whitening_kernel: Some(7),
        ..common::tiny_config()
    });
}

#[test]
fn the_reference_whitening_matrix_runs_the_same_in_onnx_runtime() {
    parity(salient::train::TrainConfig {
        whitening_kernel: Some(7),
        whitening_matrix: true,
        ..common::tiny_config()
    });
}

#[test]
fn the_whitening_matrix_of_the_aligned_windows_runs_the_same_in_onnx_runtime() {
    parity(salient::train::TrainConfig {
        align_window: Some(20),
        align_search_radius: Some(0),
        whitening_kernel: Some(7),
        whitening_matrix: true,
        ..common::tiny_config()
    });
}

#[test]
fn the_alignment_front_runs_the_same_in_onnx_runtime() {
    parity(salient::train::TrainConfig {
        align_window: Some(20),
        align_search_radius: Some(0),
        ..common::tiny_config()
    });
}

#[test]
fn the_located_alignment_front_runs_the_same_in_onnx_runtime() {
    parity(salient::train::TrainConfig {
        align_window: Some(20),
        align_search_radius: Some(2),
        align_locator_width: 4,
        align_locator_epochs: 1,
        ..common::tiny_config()
    });
}

fn load_error(dir: &Path) -> String {
    InferenceEngine::load(dir, EngineOptions::default())
        .expect_err("model must be refused")
        .to_string()
}

#[test]
fn corrupted_missing_or_mismatched_models_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = trained(dir.path(), common::tiny_config());
    let onnx = model_dir.join(ONNX_FILE);
    let good = std::fs::read(&onnx).unwrap();

    // One flipped byte: the sha256 no longer matches the manifest's id.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&onnx, &bad).unwrap();
    let err = load_error(&model_dir);
    assert!(
        err.contains("model.onnx") && err.contains("differs from the manifest's id"),
        "{err}"
    );

    // Garbage whose hash the manifest agrees with: ONNX Runtime refuses to parse it.
    std::fs::write(&onnx, b"not an onnx model").unwrap();
    let mut manifest = Manifest::read(&model_dir).unwrap();
    let original_id = manifest.id.clone();
    manifest.id = salient::export::sha256_hex(b"not an onnx model");
    manifest.write(&model_dir).unwrap();
    let err = load_error(&model_dir);
    assert!(
        err.contains("model.onnx") && err.contains("ONNX Runtime cannot load it"),
        "{err}"
    );

    // Missing file.
    std::fs::remove_file(&onnx).unwrap();
    let err = load_error(&model_dir);
    assert!(err.contains("missing"), "{err}");

    // `export` restores a consistent directory with the same id (the export is deterministic).
    let id = salient::export::export_model(&model_dir).unwrap();
    assert_eq!(id, original_id);
    assert_eq!(std::fs::read(&onnx).unwrap(), good);
    InferenceEngine::load(&model_dir, EngineOptions::default()).unwrap();
}

/// Rewrites the model's weights with `projector` as the contrastive subspace's tensor, or
/// without one, keeping the manifest's sha256 of the weights consistent.
fn replace_subspace_tensor(model_dir: &Path, projector: Option<candle_core::Tensor>) -> Manifest {
    let weights = model_dir.join(salient::manifest::WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let name = salient::subspace::SUBSPACE_TENSOR;
    let old = match projector {
        Some(projector) => tensors.insert(name.to_string(), projector),
        None => tensors.remove(name),
    };
    assert!(old.is_some());
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let mut manifest = Manifest::read(model_dir).unwrap();
    manifest.weights_sha256 = salient::manifest::sha256_file(&weights).unwrap();
    manifest.write(model_dir).unwrap();
    manifest
}

#[test]
fn a_model_without_the_subspace_its_manifest_promises_or_with_a_misshapen_one_is_refused_and_older_models_load(
) {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, _) = trained(dir.path(), common::tiny_config());
    let d = common::tiny_config().dim_salient;
    assert!(TrainedModel::load(&model_dir).unwrap().subspace.is_some());

    // The right number of values in the wrong shape.
    let flat =
        candle_core::Tensor::zeros(d * d, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    replace_subspace_tensor(&model_dir, Some(flat));
    let err = TrainedModel::load(&model_dir)
        .err()
        .expect("a flat projector")
        .to_string();
    assert!(
        err.contains("salient.contrastive_subspace") && err.contains(&format!("[{d}, {d}]")),
        "{err}"
    );

    let mut manifest = replace_subspace_tensor(&model_dir, None);
    let err = TrainedModel::load(&model_dir)
        .err()
        .expect("the weights lack the projector")
        .to_string();
    assert!(
        err.contains("model.safetensors")
            && err.contains("salient.contrastive_subspace")
            && err.contains("contrastive_subspace = true"),
        "{err}"
    );

    // A format 2 manifest predates the subspace: the same weights load and export without it.
    manifest.format_version = 2;
    manifest.config.contrastive_subspace = None;
    manifest.write(&model_dir).unwrap();
    let loaded = TrainedModel::load(&model_dir).unwrap();
    assert!(loaded.subspace.is_none());
    salient::export::export_model(&model_dir).unwrap();
    InferenceEngine::load(&model_dir, EngineOptions::default()).unwrap();
}

#[test]
fn the_session_pool_grows_to_the_callers_and_gives_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let (model_dir, target) = trained(dir.path(), common::tiny_config());
    let candle = TrainedModel::load(&model_dir).unwrap();
    let pixels = pixels(&target, &candle);
    let engine = InferenceEngine::load(
        &model_dir,
        EngineOptions {
            max_sessions: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let alone = engine.run(&pixels).unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| engine.run(&pixels))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    for r in results {
        assert_eq!(r, alone);
    }
    assert!(
        (1..=3).contains(&engine.sessions()),
        "{}",
        engine.sessions()
    );
}
