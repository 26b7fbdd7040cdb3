//! The `salient` binary as a user meets it: exit statuses, one clear error line, no panics.

mod common;

use std::path::Path;
use std::process::Output;

use common::{salient, stderr};

/// `salient train` with a target, a reference, an output directory and an optional config file.
fn train(target: &Path, reference: &Path, out: &Path, config: Option<&Path>) -> Output {
    let mut args = vec![
        "train",
        "--target",
        target.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(config) = config {
        args.extend(["--config", config.to_str().unwrap()]);
    }
    salient(&args)
}

#[test]
fn datasets_list_names_every_dataset() {
    let out = salient(&["datasets", "list"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("mnist-grass") && stdout.contains("fashion-textures"),
        "{stdout}"
    );
}

#[test]
fn usage_errors_exit_2_and_input_errors_exit_1_without_panicking() {
    let out = salient(&["train", "--target"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.parquet");
    let model = dir.path().join("model");
    let out = train(&missing, &missing, &model, None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.contains("missing.parquet"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!model.exists(), "a failed run wrote {}", model.display());

    let out = salient(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--input",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("manifest.json"), "{}", stderr(&out));
}

/// An unknown device, or CUDA in a build without it, is refused before any file is read, with
/// the accepted spellings or the way to get CUDA, and exit status 1.
#[test]
fn unusable_devices_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.parquet");
    let model = dir.path().join("model");
    let with_device = |device: &str| {
        salient(&[
            "train",
            "--target",
            missing.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--device",
            device,
        ])
    };
    let out = with_device("gpu");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("unknown device `gpu`") && err.contains("`cuda:N`"),
        "{err}"
    );
    assert!(!err.contains("missing.parquet"), "read input first: {err}");
    let out = salient(&["run", missing.to_str().unwrap(), "--device", "gpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown device `gpu`"),
        "{}",
        stderr(&out)
    );
    if !cfg!(feature = "cuda") {
        let out = with_device("cuda:0");
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("built without CUDA") && err.contains("--features cuda"),
            "{err}"
        );
    }
    assert!(!model.exists());
}

#[test]
fn a_missing_source_is_explained_and_nothing_is_written() {
    let empty = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = salient(&[
        "datasets",
        "build",
        "fashion-textures",
        "--out",
        out_dir.path().to_str().unwrap(),
        "--sources",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("fetch-fashion-mnist.sh"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 0);
}

#[test]
fn train_evaluate_export_and_inspect_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let build = salient(&[
        "datasets",
        "build",
        "mnist-grass",
        "--out",
        d.to_str().unwrap(),
        "--rows",
        "96",
    ]);
    assert_eq!(build.status.code(), Some(0), "{}", stderr(&build));
    let target = d.join("mnist-grass/target.parquet");
    let reference = d.join("mnist-grass/reference.parquet");
    let config = d.join("tiny.toml");
    std::fs::write(
        &config,
        "epochs = 1\nbatch_size = 32\nwidth = 8\ndim_salient = 8\ndim_background = 8\nkmeans_restarts = 2\n",
    )
    .unwrap();
    let model = d.join("model");
    let trained = train(&target, &reference, &model, Some(&config));
    assert_eq!(trained.status.code(), Some(0), "{}", stderr(&trained));
    let eval = salient(&[
        "evaluate",
        "--model",
        model.to_str().unwrap(),
        "--input",
        target.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(eval.status.code(), Some(0), "{}", stderr(&eval));
    let v: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    for key in ["acc", "nmi", "ari"] {
        let x = v[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x) || key == "ari", "{key} = {x}");
    }
    assert_eq!(v["n"], 96);

    // inspect: the id is the sha256 of model.onnx; export rewrites the same file and id.
    let inspect = salient(&["inspect", model.to_str().unwrap(), "--format", "json"]);
    assert_eq!(inspect.status.code(), Some(0), "{}", stderr(&inspect));
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let onnx = model.join("model.onnx");
    let id = salient::export::sha256_hex(&std::fs::read(&onnx).unwrap());
    assert_eq!(info["id"], id.as_str());
    assert_eq!(
        (info["k"].as_u64(), info["d"].as_u64()),
        (Some(10), Some(8))
    );
    assert_eq!(info["input"], "uint8 N×1×28×28");
    let export = salient(&["export", model.to_str().unwrap()]);
    assert_eq!(export.status.code(), Some(0), "{}", stderr(&export));
    assert!(String::from_utf8_lossy(&export.stdout).contains(&id));
    // A model file that does not match its manifest is refused by name.
    std::fs::write(&onnx, b"tampered").unwrap();
    let refused = salient(&["inspect", model.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains("model.onnx") && message.contains("differs from the manifest"),
        "{message}"
    );

    // An unknown setting in the config file is refused by name.
    std::fs::write(&config, "epohcs = 1\n").unwrap();
    let bad = train(&target, &reference, &d.join("model2"), Some(&config));
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("epohcs"), "{}", stderr(&bad));
}
