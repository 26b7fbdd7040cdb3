//! A trained model directory loaded with candle, for the export and the parity checks.

use crate::digest::sha256_file;
use crate::model::{
    Encoder, EncoderConfig, InputWhitening, INPUT_FILTER_TENSOR, INPUT_MATRIX_TENSOR,
    INPUT_MEAN_TENSOR,
};
use crate::subspace::{ContrastiveSubspace, SUBSPACE_TENSOR};

/// A trained model directory loaded with candle: the salient encoder, its preprocessing and
/// centroids. `export` builds the ONNX graph from it; the ONNX parity tests compare against it.
pub struct TrainedModel {
    pub manifest: crate::manifest::Manifest,
    pub encoder: Encoder,
    /// cIDFD's background encoder (trained on target and reference, not exported); `None` for
    /// IDFD, which has none.
    pub background: Option<Encoder>,
    pub centroids: Vec<f32>,
    /// The alignment front (`align_window`), which cuts each image's object window before the
    /// encoders; `None` when the model sees whole images.
    pub alignment: Option<crate::alignment::AlignmentFront>,
    /// The salient embedding's contrastive subspace (`contrastive_subspace`), applied after the
    /// encoder's L2 normalisation; `None` when the model keeps the whole embedding.
    pub subspace: Option<ContrastiveSubspace>,
}

impl TrainedModel {
    pub fn load(dir: &std::path::Path) -> crate::Result<Self> {
        use crate::error::Error;
        use crate::manifest::{Manifest, CENTROIDS_TENSOR, WEIGHTS_FILE};
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
        // A tensor the manifest's settings call for; `setting` says which, for the error.
        let stored = |name: &str, setting: &str| {
            tensors.get(name).cloned().ok_or_else(|| Error::File {
                path: weights.clone(),
                message: format!("no `{name}` tensor{setting}"),
            })
        };
        // The values of a stored tensor as f32, flattened.
        let values = |name: &str, tensor: candle_core::Tensor| {
            tensor
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| Error::File {
                    path: weights.clone(),
                    message: format!("`{name}`: {e}"),
                })
        };
        let centroids = values(CENTROIDS_TENSOR, stored(CENTROIDS_TENSOR, "")?)?;
        let whitening_setting = format!(
            ", though the manifest sets whitening_kernel = {}{}",
            manifest.config.whitening_kernel(),
            if manifest.config.whitening_matrix {
                " and whitening_matrix = true"
            } else {
                ""
            }
        );
        let input_whitening = match (
            manifest.config.whitening_kernel() > 0,
            manifest.config.whitening_matrix,
        ) {
            (false, _) => None,
            (true, false) => Some(InputWhitening::Kernel(stored(
                INPUT_FILTER_TENSOR,
                &whitening_setting,
            )?)),
            (true, true) => Some(InputWhitening::Matrix {
                mean: stored(INPUT_MEAN_TENSOR, &whitening_setting)?,
                matrix: stored(INPUT_MATRIX_TENSOR, &whitening_setting)?,
            }),
        };
        // Training records the window and radius it used; a manifest without them predates
        // the front.
        let alignment = match manifest.config.align_window() {
            0 => None,
            window => Some(
                crate::alignment::AlignmentFront::from_tensors(
                    &tensors,
                    manifest.input.shape,
                    window,
                    (manifest.config.align_search_radius() > 0).then_some((
                        manifest.config.align_search_radius(),
                        manifest.config.align_locator_width,
                    )),
                )
                .map_err(|message| Error::File {
                    path: weights.clone(),
                    message,
                })?,
            ),
        };
        // Format 3 manifests record the setting resolved; older ones are read as off.
        let subspace = if manifest.config.contrastive_subspace() {
            let tensor = stored(
                SUBSPACE_TENSOR,
                ", though the manifest sets contrastive_subspace = true",
            )?;
            let d = manifest.d;
            let subspace_error = |message: String| Error::File {
                path: weights.clone(),
                message: format!("`{SUBSPACE_TENSOR}`: {message}"),
            };
            if tensor.dims() != [d, d] {
                return Err(subspace_error(format!(
                    "shape {:?}, expected [{d}, {d}] for d = {d}",
                    tensor.dims()
                )));
            }
            let projector = values(SUBSPACE_TENSOR, tensor)?;
            Some(ContrastiveSubspace::from_projector(projector, d).map_err(subspace_error)?)
        } else {
            None
        };
        let has_background = tensors.keys().any(|k| k.starts_with("background."));
        let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device);
        let encoder_config = |dim| EncoderConfig {
            architecture: manifest.config.architecture,
            in_channels: manifest.input.shape.channels,
            dim,
            width: manifest.config.width(),
            head_norm: manifest.config.head_norm,
        };
        let mut encoder = Encoder::new(encoder_config(manifest.d), vb.pp("salient"))?;
        let background = if has_background {
            Some(
                Encoder::new(
                    encoder_config(manifest.config.dim_background),
                    vb.pp("background"),
                )
                .map_err(|e| Error::File {
                    path: weights.clone(),
                    message: format!("the background encoder's weights: {e}"),
                })?,
            )
        } else {
            None
        };
        let whitening_error = |name: &str, e: candle_core::Error| Error::File {
            path: weights.clone(),
            message: format!("`{name}`: {e}"),
        };
        match input_whitening {
            Some(InputWhitening::Kernel(filter)) => encoder
                .set_input_filter_tensor(filter)
                .map_err(|e| whitening_error(INPUT_FILTER_TENSOR, e))?,
            Some(InputWhitening::Matrix { mean, matrix }) => {
                // The encoder sees the whole image, or the alignment front's window of it.
                let input_values = match &alignment {
                    Some(front) => front.window * front.window * manifest.input.shape.channels,
                    None => manifest.input.shape.len(),
                };
                if matrix.dims() != [input_values, input_values] {
                    return Err(Error::File {
                        path: weights.clone(),
                        message: format!(
                            "`{INPUT_MATRIX_TENSOR}` has shape {:?}, expected [{input_values}, {input_values}] for the encoder's input",
                            matrix.dims()
                        ),
                    });
                }
                encoder
                    .set_input_matrix_tensors(mean, matrix)
                    .map_err(|e| whitening_error(INPUT_MATRIX_TENSOR, e))?
            }
            None => {}
        }
        Ok(Self {
            manifest,
            encoder,
            background,
            centroids,
            alignment,
            subspace,
        })
    }

    /// Salient embeddings (n×d) of decoded uint8 images (n×C×H×W), projected onto the
    /// contrastive subspace where the model has one: what k-means and the ONNX graph see.
    pub fn embed(&self, pixels: &[u8]) -> crate::Result<Vec<f32>> {
        let embeddings = self.forward(&self.encoder, self.manifest.d, pixels)?;
        Ok(match &self.subspace {
            Some(subspace) => subspace.apply(&embeddings),
            None => embeddings,
        })
    }

    /// Background embeddings (n×`dim_background`) of decoded uint8 images, or `None` for a
    /// model without a background encoder (IDFD).
    pub fn embed_background(&self, pixels: &[u8]) -> crate::Result<Option<Vec<f32>>> {
        let Some(background) = &self.background else {
            return Ok(None);
        };
        self.forward(background, self.manifest.config.dim_background, pixels)
            .map(Some)
    }

    fn forward(&self, encoder: &Encoder, dim: usize, pixels: &[u8]) -> crate::Result<Vec<f32>> {
        let windows;
        let (pixels, shape) = match &self.alignment {
            Some(front) => {
                windows = front.crop(pixels)?;
                (windows.as_slice(), front.window_shape())
            }
            None => (pixels, self.manifest.input.shape),
        };
        let n = pixels.len() / shape.len().max(1);
        let mut out = Vec::with_capacity(n * dim);
        for start in (0..n).step_by(512) {
            let end = (start + 512).min(n);
            let images: Vec<&[u8]> = (start..end)
                .map(|i| &pixels[i * shape.len()..(i + 1) * shape.len()])
                .collect();
            let floats = self.manifest.input.normalization.batch(&images, shape);
            let x = candle_core::Tensor::from_vec(
                floats,
                (images.len(), shape.channels, shape.height, shape.width),
                &candle_core::Device::Cpu,
            )?;
            out.extend(
                encoder
                    .forward_t(&x, false)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(out)
    }

    /// Nearest centroid and squared distance of each embedding.
    pub fn assign(&self, embeddings: &[f32]) -> crate::Result<Vec<(u32, f32)>> {
        Ok(crate::cluster::assign(
            embeddings,
            self.manifest.d,
            &self.centroids,
        )?)
    }
}
