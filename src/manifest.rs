//! The model directory (CONTRACT.md): `manifest.json` says what a model is (method and settings,
//! input shape and normalisation, k, d, training-data fingerprints, metrics); the candle weights
//! and k-means centroids live in `model.safetensors`; `training_log.csv` records training.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::ImageShape;
pub use crate::digest::sha256_file;
use crate::error::{Error, Result};
use crate::metrics::ClusterScores;
use crate::preprocess::Normalization;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TRAINING_LOG_FILE: &str = "training_log.csv";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const CENTROIDS_TENSOR: &str = "kmeans.centroids";

/// Identity of one input file of training.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFingerprint {
    pub path: PathBuf,
    /// sha256 of the file's size and Parquet footer.
    pub footer_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingData {
    pub target: Vec<FileFingerprint>,
    pub target_rows: usize,
    pub reference: Vec<FileFingerprint>,
    pub reference_rows: usize,
}

/// What the model's input is and how it is preprocessed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub shape: ImageShape,
    /// (x/255 − mean) / std per channel.
    pub normalization: Normalization,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    /// sha256 of `model.onnx`: the model's identity, checked before every use of the graph.
    /// Empty until the model is exported.
    #[serde(default)]
    pub id: String,
    pub created: String,
    pub method: String,
    pub config: TrainConfig,
    pub input: InputSpec,
    /// Number of clusters.
    pub k: usize,
    /// Salient embedding dimension.
    pub d: usize,
    /// Whether k-means ran on the salient embeddings of the un-augmented images (`fresh`) or on
    /// memory-bank rows (`bank`).
    pub kmeans_on: String,
    pub training_data: TrainingData,
    pub epochs_trained: usize,
    pub metrics: Option<ClusterScores>,
    /// sha256 of `model.safetensors`.
    pub weights_sha256: String,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::File {
            path,
            message: format!("not a salient manifest ({e})"),
        })
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::atomic::write_bytes_atomically(
            &dir.join(MANIFEST_FILE),
            format!("{text}\n").as_bytes(),
        )
    }
}
