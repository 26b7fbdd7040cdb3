//! `salient run`: steps run once, reruns skip what did not change, a changed setting reruns
//! only the steps after it, and a broken pipeline file is refused by name.

mod common;

use candle_core::Device;
use salient::pipeline::{run, Pipeline, StepOutcome, STATE_FILE};

fn pipeline(out: &std::path::Path, epochs: usize) -> Pipeline {
    let text = format!(
        r#"
name = "tiny"
out = "{}"
[data]
dataset = "mnist-grass"
rows = 96
[train]
epochs = {epochs}
batch_size = 32
width = 8
dim_salient = 8
dim_background = 8
kmeans_restarts = 2
[embed]
[evaluate]
[report]
sample = 50
"#,
        out.display()
    );
    let file = out.with_extension("toml");
    std::fs::write(&file, text).unwrap();
    Pipeline::from_file(&file).unwrap()
}

fn outcomes(report: &salient::pipeline::RunReport) -> Vec<(&str, StepOutcome)> {
    report
        .steps
        .iter()
        .map(|(s, o)| (s.as_str(), o.clone()))
        .collect()
}

#[test]
fn reruns_skip_unchanged_steps_and_changes_rerun_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    let first = run(&pipeline(&out, 1), false, &Device::Cpu).unwrap();
    use StepOutcome::*;
    assert_eq!(
        outcomes(&first),
        vec![
            ("data", Ran),
            ("train", Ran),
            ("export", Ran),
            ("embed", Ran),
            ("evaluate", Ran),
            ("report", Ran)
        ]
    );
    // Evaluation scores the embedded table: the clusters the ONNX graph assigned.
    assert_eq!(first.metrics.unwrap().n, 96);
    assert!(out.join(STATE_FILE).is_file() && out.join("metrics.json").is_file());
    assert!(out.join("embedded.parquet").is_file());
    assert!(out.join("report/report.html").is_file());

    let again = run(&pipeline(&out, 1), false, &Device::Cpu).unwrap();
    assert_eq!(
        outcomes(&again),
        vec![
            ("data", Skipped),
            ("train", Skipped),
            ("export", Skipped),
            ("embed", Skipped),
            ("evaluate", Skipped),
            ("report", Skipped)
        ]
    );
    assert_eq!(again.metrics.unwrap().acc, first.metrics.unwrap().acc);

    let changed = run(&pipeline(&out, 2), false, &Device::Cpu).unwrap();
    assert_eq!(
        outcomes(&changed),
        vec![
            ("data", Skipped),
            ("train", Ran),
            ("export", Ran),
            ("embed", Ran),
            ("evaluate", Ran),
            ("report", Ran)
        ]
    );

    // A lost output is rebuilt even though the state says the step is done; a re-export gives
    // the same bytes (same id), so the embedding that depends on it is still valid.
    std::fs::remove_file(out.join("metrics.json")).unwrap();
    std::fs::remove_file(out.join("model/model.onnx")).unwrap();
    std::fs::remove_file(out.join("report/report.html")).unwrap();
    let rebuilt = run(&pipeline(&out, 2), false, &Device::Cpu).unwrap();
    assert_eq!(
        outcomes(&rebuilt),
        vec![
            ("data", Skipped),
            ("train", Skipped),
            ("export", Ran),
            ("embed", Skipped),
            ("evaluate", Ran),
            ("report", Ran)
        ]
    );
}

#[test]
fn a_pipeline_without_data_or_with_unknown_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "name = \"x\"\nout = \"o\"\n[data]\nseed = 1\n[train]\n",
    )
    .unwrap();
    let err = Pipeline::from_file(&file).unwrap_err().to_string();
    assert!(
        err.contains("bad.toml") && err.contains("exactly one of"),
        "{err}"
    );
    std::fs::write(
        &file,
        "name = \"x\"\nout = \"o\"\n[data]\ndataset = \"mnist-grass\"\n[train]\nepochz = 1\n",
    )
    .unwrap();
    let err = Pipeline::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("epochz"), "{err}");
}

#[test]
fn the_shipped_pipelines_parse() {
    let mut parsed = 0;
    for entry in std::fs::read_dir(common::repo_path("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Pipeline::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            parsed += 1;
        }
    }
    // The README promises these jobs; an empty or renamed directory must not pass silently.
    assert!(parsed >= 2, "only {parsed} pipelines in pipelines/");
}

#[test]
fn the_shipped_training_configs_parse() {
    let dir = common::repo_path("examples/configs");
    let mut parsed = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = salient::train::TrainConfig::from_toml_file(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            parsed.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    parsed.sort();
    assert!(parsed.contains(&"paper.toml".to_string()), "{parsed:?}");
    assert!(
        parsed.contains(&"quickstart.toml".to_string()),
        "{parsed:?}"
    );
}

#[test]
fn a_rerun_after_a_failed_step_resumes_at_that_step() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("job");
    // The embed step writes under `blocker`, which is a regular file: the step fails.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let file = dir.path().join("job.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"resume\"\nout = \"{}\"\n[data]\ndataset = \"mnist-grass\"\nrows = 64\n\
             [train]\nepochs = 1\nbatch_size = 32\nwidth = 8\ndim_salient = 8\n\
             dim_background = 8\nkmeans_restarts = 1\n[embed]\noutput = \"{}\"\n[evaluate]\n",
            out.display(),
            blocker.join("embedded.parquet").display()
        ),
    )
    .unwrap();
    let pipeline = Pipeline::from_file(&file).unwrap();
    let err = run(&pipeline, false, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("blocker"), "{err}");
    let trained = std::fs::metadata(out.join("model/manifest.json"))
        .unwrap()
        .modified()
        .unwrap();

    // The cause removed, the rerun starts at the step that failed.
    std::fs::remove_file(&blocker).unwrap();
    std::fs::create_dir(&blocker).unwrap();
    let report = run(&pipeline, false, &Device::Cpu).unwrap();
    use StepOutcome::*;
    assert_eq!(
        outcomes(&report),
        vec![
            ("data", Skipped),
            ("train", Skipped),
            ("export", Skipped),
            ("embed", Ran),
            ("evaluate", Ran)
        ]
    );
    assert!(blocker.join("embedded.parquet").is_file());
    assert_eq!(report.metrics.unwrap().n, 64);
    let after = std::fs::metadata(out.join("model/manifest.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(trained, after, "the model was not retrained");
}
