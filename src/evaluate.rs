//! Clustering embeddings and scoring clusters against labels (the evaluation protocol of
//! METHOD.md: k-means with k-means++ and restarts; ACC, NMI, ARI).

use crate::cluster::{kmeans, KMeansConfig, KMeansFit};
use crate::error::Result;
use crate::metrics::{scores, ClusterScores};

/// k-means on row-major embeddings (n×d), scored against `labels` when given.
pub fn cluster_and_score(
    embeddings: &[f32],
    d: usize,
    labels: Option<&[i64]>,
    k: usize,
    restarts: usize,
    seed: u64,
) -> Result<(KMeansFit, Option<ClusterScores>)> {
    let config = KMeansConfig::new(k)
        .with_n_init(restarts.max(1))
        .with_seed(seed);
    let fit = kmeans(embeddings, d, &config)?;
    let scored = match labels {
        Some(labels) => Some(scores(labels, &fit.labels)?),
        None => None,
    };
    Ok((fit, scored))
}

/// A trained model loaded with candle: the salient encoder, its preprocessing and centroids.
pub struct TrainedModel {
    pub manifest: crate::manifest::Manifest,
    pub encoder: crate::model::Encoder,
    pub centroids: Vec<f32>,
}

impl TrainedModel {
    pub fn load(dir: &std::path::Path) -> Result<Self> {
        use crate::error::Error;
        use crate::manifest::{sha256_file, Manifest, CENTROIDS_TENSOR, WEIGHTS_FILE};
        let manifest = Manifest::read(dir)?;
        let weights = dir.join(WEIGHTS_FILE);
        let sha = sha256_file(&weights)?;
        if sha != manifest.weights_sha256 {
            return Err(Error::File {
                path: weights,
                message: format!(
                    "sha256 {sha} differs from the manifest's {}; the model directory is inconsistent",
                    manifest.weights_sha256
                ),
            });
        }
        let device = candle_core::Device::Cpu;
        let tensors =
            candle_core::safetensors::load(&weights, &device).map_err(|e| Error::File {
                path: weights.clone(),
                message: format!("unreadable weights ({e})"),
            })?;
        let centroids = tensors
            .get(CENTROIDS_TENSOR)
            .ok_or_else(|| Error::File {
                path: weights.clone(),
                message: format!("no `{CENTROIDS_TENSOR}` tensor"),
            })?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device);
        let encoder = crate::model::Encoder::new(
            crate::model::EncoderConfig {
                architecture: manifest.config.architecture,
                in_channels: manifest.input.shape.channels,
                dim: manifest.d,
                width: manifest
                    .config
                    .width
                    .unwrap_or(manifest.config.architecture.default_width()),
                head_norm: manifest.config.head_norm,
            },
            vb.pp("salient"),
        )?;
        Ok(Self {
            manifest,
            encoder,
            centroids,
        })
    }

    /// Salient embeddings (n×d) of decoded uint8 images (n×C×H×W).
    pub fn embed(&self, pixels: &[u8]) -> Result<Vec<f32>> {
        let shape = self.manifest.input.shape;
        let n = pixels.len() / shape.len().max(1);
        let mut out = Vec::with_capacity(n * self.manifest.d);
        let none = crate::train::AugmentConfig::none();
        for start in (0..n).step_by(512) {
            let end = (start + 512).min(n);
            let images: Vec<&[u8]> = (start..end)
                .map(|i| &pixels[i * shape.len()..(i + 1) * shape.len()])
                .collect();
            let floats = crate::train::augment::augment_batch(
                &images,
                shape,
                &none,
                &self.manifest.input.normalization,
                0,
                0,
            );
            let x = candle_core::Tensor::from_vec(
                floats,
                (images.len(), shape.channels, shape.height, shape.width),
                &candle_core::Device::Cpu,
            )?;
            out.extend(
                self.encoder
                    .forward_t(&x, false)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(out)
    }

    /// Nearest centroid and squared distance of each embedding.
    pub fn assign(&self, embeddings: &[f32]) -> Result<Vec<(u32, f32)>> {
        Ok(crate::cluster::assign(
            embeddings,
            self.manifest.d,
            &self.centroids,
        )?)
    }
}

/// `salient evaluate`: the model's clusters on a labelled table, scored.
pub fn evaluate_model(
    dir: &std::path::Path,
    input: &str,
    label_column: &str,
    size: crate::data::SizePolicy,
) -> Result<ClusterScores> {
    use crate::data::{ColumnNames, LabelRequirement, ReaderOptions};
    let model = TrainedModel::load(dir)?;
    let options = ReaderOptions {
        names: ColumnNames {
            label: label_column.to_string(),
            ..Default::default()
        },
        labels: LabelRequirement::Required,
        ..Default::default()
    };
    let shape = model.manifest.input.shape;
    let mut labels = Vec::new();
    let mut predicted = Vec::new();
    for batch in crate::data::ImageTableReader::open(input, options)? {
        let batch = batch?;
        let decoded =
            crate::data::decode_batch(&batch, shape, size, crate::data::NullPolicy::Refuse)?;
        for (row, label) in decoded.labels.iter().enumerate() {
            let label = label.ok_or_else(|| crate::error::Error::Row {
                path: batch.path.to_path_buf(),
                id: decoded.ids[row],
                message: format!("`{label_column}` is NULL; evaluation needs every label"),
            })?;
            labels.push(label);
        }
        let embeddings = model.embed(&decoded.pixels)?;
        predicted.extend(model.assign(&embeddings)?.into_iter().map(|(c, _)| c));
    }
    Ok(scores(&labels, &predicted)?)
}
