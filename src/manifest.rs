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
use crate::model::Architecture;
use crate::preprocess::Normalization;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TRAINING_LOG_FILE: &str = "training_log.csv";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const CENTROIDS_TENSOR: &str = "kmeans.centroids";
/// Version of `manifest.json` this salient writes. Format 2 writes every setting resolved;
/// format 3 adds `contrastive_subspace` (read as off from older manifests).
pub const FORMAT_VERSION: u32 = 3;

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
        let mut manifest: Self = serde_json::from_str(&text).map_err(|e| Error::File {
            path: path.clone(),
            message: format!("not a salient manifest ({e})"),
        })?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(Error::File {
                path,
                message: format!(
                    "manifest format {} is newer than this salient reads ({FORMAT_VERSION})",
                    manifest.format_version
                ),
            });
        }
        if manifest.format_version < 2 {
            // Format 1 left unset settings to the defaults of its time: a width-32 small CNN,
            // and no whitening or neighbours unless written.
            let config = &mut manifest.config;
            config.width.get_or_insert(match config.architecture {
                Architecture::SmallCnn => 32,
                Architecture::Resnet18 => 64,
            });
            config.whitening_kernel.get_or_insert(0);
            config.neighbour_positives.get_or_insert(0);
        }
        if manifest.format_version < 3 {
            // Before format 3 no model had a contrastive subspace.
            manifest.config.contrastive_subspace.get_or_insert(false);
        }
        Ok(manifest)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::atomic::write_bytes_atomically(
            &dir.join(MANIFEST_FILE),
            format!("{text}\n").as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(format_version: u32, config: TrainConfig) -> Manifest {
        Manifest {
            format_version,
            name: "m".into(),
            id: String::new(),
            created: "2026-11-29T00:00:00Z".into(),
            method: "cidfd".into(),
            config,
            input: InputSpec {
                shape: ImageShape::new(1, 28, 28),
                normalization: Normalization {
                    mean: vec![0.5],
                    std: vec![0.25],
                },
            },
            k: 3,
            d: 16,
            kmeans_on: "fresh".into(),
            training_data: TrainingData {
                target: vec![],
                target_rows: 0,
                reference: vec![],
                reference_rows: 0,
            },
            epochs_trained: 1,
            metrics: None,
            weights_sha256: String::new(),
        }
    }

    #[test]
    fn format_1_manifests_keep_the_defaults_of_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let unset = TrainConfig {
            width: None,
            whitening_kernel: None,
            neighbour_positives: None,
            ..Default::default()
        };
        manifest(1, unset.clone()).write(dir.path()).unwrap();
        let read = Manifest::read(dir.path()).unwrap().config;
        assert_eq!(read.width(), 32);
        assert_eq!(
            (read.whitening_kernel(), read.neighbour_positives()),
            (0, 0)
        );

        // Format 2 writes resolved settings; unset ones take today's defaults, except the
        // contrastive subspace, which no format 2 model has.
        manifest(2, unset.clone()).write(dir.path()).unwrap();
        let read = Manifest::read(dir.path()).unwrap().config;
        assert_eq!(read.width(), 16);
        assert_eq!(
            read.whitening_kernel(),
            crate::config::DEFAULT_WHITENING_KERNEL
        );
        assert!(!read.contrastive_subspace());

        manifest(FORMAT_VERSION, unset).write(dir.path()).unwrap();
        let read = Manifest::read(dir.path()).unwrap().config;
        assert!(read.contrastive_subspace());
    }

    #[test]
    fn a_newer_format_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        manifest(FORMAT_VERSION + 1, TrainConfig::default())
            .write(dir.path())
            .unwrap();
        let err = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(MANIFEST_FILE) && err.contains("newer"),
            "{err}"
        );
    }
}
