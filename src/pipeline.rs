//! `salient run PIPELINE`: a declarative batch job for schedulers. A pipeline file (TOML, see
//! `pipelines/`) names its data (a bundled dataset to build, or tables to read), the training
//! settings, the embedding of a table with the exported model, and the evaluation
//! (data → train → export → embed → evaluate). Each step's inputs and settings are hashed into a key stored in
//! `OUT/pipeline_state.json` after the step succeeds; a rerun skips every step whose key and
//! outputs are unchanged, and a run that failed resumes at the step that failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::source::{parquet_fingerprint, resolve_parquet_files};
use crate::data::SizePolicy;
use crate::datasets::{self, DatasetName};
use crate::error::{Error, Result};
use crate::evaluate::evaluate_model;
use crate::manifest::MANIFEST_FILE;
use crate::metrics::ClusterScores;
use crate::train::job::{self, TrainJob};
use crate::train::TrainConfig;

pub const STATE_FILE: &str = "pipeline_state.json";
pub const METRICS_FILE: &str = "metrics.json";

/// Where the data comes from: exactly one of `dataset` (built) or `target` (read).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataStep {
    pub dataset: Option<DatasetName>,
    #[serde(default)]
    pub seed: u64,
    pub rows: Option<usize>,
    pub target: Option<String>,
    pub reference: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateStep {
    /// Table to evaluate on; default: the target table.
    pub input: Option<String>,
    #[serde(default = "default_label")]
    pub label_column: String,
}

fn default_label() -> String {
    "label".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub name: String,
    /// Output directory; relative paths are relative to the working directory.
    pub out: PathBuf,
    pub data: DataStep,
    pub train: TrainConfig,
    pub embed: Option<EmbedStep>,
    /// Scores the embedded table's clusters when there is an `[embed]` step, else the model's
    /// clusters on the input.
    pub evaluate: Option<EvaluateStep>,
    /// The HTML report on the model's clusters, with the reference table when there is one.
    pub report: Option<ReportStep>,
}

/// Embeds a table with the exported model (Parquet in, Parquet out through DataFusion).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedStep {
    /// The table to embed (default: the target table).
    pub input: Option<String>,
    /// Where the embedded table goes (default: `OUT/embedded.parquet`).
    pub output: Option<PathBuf>,
}

/// Writes `salient report`'s page on the model's clusters (`OUT/report/report.html`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportStep {
    /// The table to describe (default: the target table).
    pub input: Option<String>,
    /// Where report.html and its figures go (default: `OUT/report`).
    pub out: Option<PathBuf>,
    /// Rows sampled for the maps.
    #[serde(default = "default_report_sample")]
    pub sample: usize,
    #[serde(default = "default_label")]
    pub label_column: String,
}

fn default_report_sample() -> usize {
    2000
}

/// What happened to each step of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    Ran,
    Skipped,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub steps: Vec<(String, StepOutcome)>,
    pub metrics: Option<ClusterScores>,
    pub out: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    /// step name → key of the inputs and settings it last completed with.
    steps: BTreeMap<String, String>,
}

impl Pipeline {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let pipeline: Pipeline = toml::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        match (&pipeline.data.dataset, &pipeline.data.target) {
            (Some(_), None) | (None, Some(_)) => Ok(pipeline),
            _ => Err(Error::Invalid(format!(
                "{}: [data] needs exactly one of `dataset` (a bundled dataset to build) or `target` (a table to read)",
                path.display()
            ))),
        }
    }
}

fn key_of(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The train step's key: its data and its settings *resolved*, so that spelling out a default
/// changes nothing, while a new default (a different width, say) retrains.
fn train_key(data_key: &str, config: &TrainConfig) -> Result<String> {
    Ok(key_of(&["train", data_key, &json(&config.resolved())?]))
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Invalid(format!("internal: {e}")))
}

fn tables_fingerprint(spec: &str) -> Result<String> {
    let mut parts = Vec::new();
    for path in resolve_parquet_files(spec)? {
        parts.push(format!(
            "{}={}",
            path.display(),
            parquet_fingerprint(&path)?
        ));
    }
    Ok(parts.join(";"))
}

fn read_state(path: &Path) -> State {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn save_state(path: &Path, state: &State) -> Result<()> {
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    crate::atomic::write_bytes_atomically(path, text.as_bytes())
}

/// Runs the pipeline; `force` reruns every step.
/// Runs the pipeline's steps, training on `device`. The device is not part of a step's key: a
/// model trained on one device is not retrained because the next run names another.
pub fn run(pipeline: &Pipeline, force: bool, device: &candle_core::Device) -> Result<RunReport> {
    let out = &pipeline.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let state_path = out.join(STATE_FILE);
    let mut state = if force {
        State::default()
    } else {
        read_state(&state_path)
    };
    let mut steps = Vec::new();
    let mut record =
        |state: &mut State, name: &str, key: &str, outcome: StepOutcome| -> Result<()> {
            tracing::info!(pipeline = %pipeline.name, step = name, outcome = ?outcome, "step");
            if outcome == StepOutcome::Ran {
                state.steps.insert(name.to_string(), key.to_string());
                save_state(&state_path, state)?;
            }
            steps.push((name.to_string(), outcome));
            Ok(())
        };
    let done = |state: &State, name: &str, key: &str, outputs: &[&Path]| {
        state.steps.get(name).is_some_and(|k| k == key) && outputs.iter().all(|p| p.exists())
    };

    // 1. data
    let data = &pipeline.data;
    let (target, reference, data_key) = match (&data.dataset, &data.target) {
        (Some(name), _) => {
            let dir = out.join("data");
            let target = dir.join(name.as_str()).join("target.parquet");
            let reference = dir.join(name.as_str()).join("reference.parquet");
            let key = key_of(&["data", &json(data)?]);
            if done(&state, "data", &key, &[&target, &reference]) {
                record(&mut state, "data", &key, StepOutcome::Skipped)?;
            } else {
                datasets::build_with_rows(
                    *name,
                    &dir,
                    data.seed,
                    &datasets::default_sources_dir(),
                    data.rows,
                )?;
                record(&mut state, "data", &key, StepOutcome::Ran)?;
            }
            (
                target.to_string_lossy().into_owned(),
                Some(reference.to_string_lossy().into_owned()),
                key,
            )
        }
        (None, Some(target)) => {
            let mut parts = vec!["data".to_string(), tables_fingerprint(target)?];
            if let Some(r) = &data.reference {
                parts.push(tables_fingerprint(r)?);
            }
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let key = key_of(&refs);
            record(&mut state, "data", &key, StepOutcome::Skipped)?;
            (target.clone(), data.reference.clone(), key)
        }
        (None, None) => {
            return Err(Error::Invalid(
                "[data] names no dataset and no target".into(),
            ))
        }
    };

    // 2. train
    let model = out.join("model");
    let train_key = train_key(&data_key, &pipeline.train)?;
    if done(&state, "train", &train_key, &[&model.join(MANIFEST_FILE)]) {
        record(&mut state, "train", &train_key, StepOutcome::Skipped)?;
    } else {
        // A changed configuration must not continue an old checkpoint.
        let resume = state
            .steps
            .get("train-started")
            .is_some_and(|k| k == &train_key);
        state
            .steps
            .insert("train-started".into(), train_key.clone());
        save_state(&state_path, &state)?;
        job::run(&TrainJob {
            target: target.clone(),
            reference: reference.clone(),
            out: model.clone(),
            config: pipeline.train.clone(),
            resume,
            size: SizePolicy::Exact,
            device: device.clone(),
        })?;
        record(&mut state, "train", &train_key, StepOutcome::Ran)?;
    }

    // 3. export: train writes model.onnx; a directory without it (or with a stale one) is
    // re-exported.
    let onnx = model.join(crate::export::ONNX_FILE);
    let consistent = crate::manifest::Manifest::read(&model)
        .ok()
        .zip(crate::manifest::sha256_file(&onnx).ok())
        .is_some_and(|(m, sha)| m.id == sha);
    if done(&state, "export", &train_key, &[&onnx]) && consistent {
        record(&mut state, "export", &train_key, StepOutcome::Skipped)?;
    } else {
        crate::export::export_model(&model)?;
        record(&mut state, "export", &train_key, StepOutcome::Ran)?;
    }
    let model_id = crate::manifest::Manifest::read(&model)?.id;

    // 4. embed
    let mut embedded = None;
    if let Some(step) = &pipeline.embed {
        let input = step.input.clone().unwrap_or_else(|| target.clone());
        let output = step
            .output
            .clone()
            .unwrap_or_else(|| out.join("embedded.parquet"));
        let key = key_of(&[
            "embed",
            &model_id,
            &json(step)?,
            &tables_fingerprint(&input)?,
        ]);
        if done(&state, "embed", &key, &[&output]) {
            record(&mut state, "embed", &key, StepOutcome::Skipped)?;
        } else {
            crate::etl::run(&crate::etl::EmbedJob::new(
                model.clone(),
                input,
                output.clone(),
            ))?;
            record(&mut state, "embed", &key, StepOutcome::Ran)?;
        }
        embedded = Some(output);
    }

    // 5. evaluate
    let mut metrics = None;
    if let Some(step) = &pipeline.evaluate {
        let input = match (&step.input, &embedded) {
            (Some(input), _) => input.clone(),
            (None, Some(embedded)) => embedded.to_string_lossy().into_owned(),
            (None, None) => target.clone(),
        };
        let from_embedded = step.input.is_none() && embedded.is_some();
        let key = key_of(&[
            "evaluate",
            &model_id,
            &json(step)?,
            &tables_fingerprint(&input)?,
        ]);
        let metrics_path = out.join(METRICS_FILE);
        if done(&state, "evaluate", &key, &[&metrics_path]) {
            let text =
                std::fs::read_to_string(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
            metrics = serde_json::from_str(&text).ok();
            record(&mut state, "evaluate", &key, StepOutcome::Skipped)?;
        } else {
            let scores = if from_embedded {
                crate::evaluate::score_embedded(Path::new(&input), &step.label_column)?
            } else {
                evaluate_model(&model, &input, &step.label_column, SizePolicy::Exact)?
            };
            crate::atomic::write_bytes_atomically(&metrics_path, json(&scores)?.as_bytes())?;
            metrics = Some(scores);
            record(&mut state, "evaluate", &key, StepOutcome::Ran)?;
        }
    }

    // 6. report
    if let Some(step) = &pipeline.report {
        let input = step.input.clone().unwrap_or_else(|| target.clone());
        let report_dir = step.out.clone().unwrap_or_else(|| out.join("report"));
        let mut parts = vec![
            "report".to_string(),
            model_id.clone(),
            json(step)?,
            tables_fingerprint(&input)?,
        ];
        if let Some(r) = &reference {
            parts.push(tables_fingerprint(r)?);
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let key = key_of(&refs);
        let page = report_dir.join(crate::report::REPORT_FILE);
        if done(&state, "report", &key, &[&page]) {
            record(&mut state, "report", &key, StepOutcome::Skipped)?;
        } else {
            let mut job = crate::report::ReportJob::new(model.clone(), input, report_dir);
            job.reference = reference.clone();
            job.sample = step.sample;
            job.columns.label = step.label_column.clone();
            crate::report::run(&job)?;
            record(&mut state, "report", &key, StepOutcome::Ran)?;
        }
    }
    Ok(RunReport {
        steps,
        metrics,
        out: out.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_train_key_follows_the_resolved_settings() {
        let unset = TrainConfig::default();
        let spelled_out = TrainConfig {
            width: Some(unset.width()),
            whitening_kernel: Some(unset.whitening_kernel()),
            neighbour_positives: Some(unset.neighbour_positives()),
            neighbour_skip_raw_nearest: Some(unset.neighbour_skip_raw_nearest()),
            two_view_lambda: Some(unset.two_view_lambda()),
            ..TrainConfig::default()
        };
        assert_eq!(
            train_key("d", &unset).unwrap(),
            train_key("d", &spelled_out).unwrap()
        );
        let wider = TrainConfig {
            width: Some(unset.width() * 2),
            ..TrainConfig::default()
        };
        assert_ne!(
            train_key("d", &unset).unwrap(),
            train_key("d", &wider).unwrap()
        );
        assert_ne!(
            train_key("d", &unset).unwrap(),
            train_key("e", &unset).unwrap()
        );
    }
}
