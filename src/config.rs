//! Training settings: every constant of METHOD.md and every cIDFD knob, with its default.
//! Read from a TOML file (`--config`) and overridden by command-line flags.
//!
//! The defaults are salient's cIDFD, the setting `docs/quality.md` measures: a width-16 small
//! CNN, reference whitening as the salient encoder's first layer, a two-view contrast with
//! neighbour positives, small translations instead of IDFD's crops, 30 epochs. METHOD.md's
//! constants (τ, τ2, α, λ, the SGD settings, batch 128) are the defaults too. The paper read
//! plainly (ResNet-18, IDFD's augmentation and schedule) is `examples/configs/paper.toml`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Architecture;

/// Which method to train. IDFD is cIDFD's degenerate setting (λ = 0, no reference data), not a
/// second code path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    #[default]
    Cidfd,
    Idfd,
}

/// How memory banks start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BankInit {
    /// IDFD's U(−a, a).
    #[default]
    Random,
    /// Embeddings of the un-augmented images by the freshly initialised encoders.
    FirstPass,
}

/// cIDFD's reference-whitening filter side when `whitening_kernel` is unset.
pub const DEFAULT_WHITENING_KERNEL: usize = 9;
/// cIDFD's neighbour positives when `neighbour_positives` is unset.
pub const DEFAULT_NEIGHBOUR_POSITIVES: usize = 10;
/// Raw-pixel nearest images skipped as neighbour positives when `neighbour_skip_raw_nearest`
/// is unset and there are neighbour positives.
pub const DEFAULT_NEIGHBOUR_SKIP_RAW_NEAREST: usize = 3;
/// cIDFD's default two-view background correction (`two_view_lambda`).
pub const DEFAULT_TWO_VIEW_LAMBDA: f64 = 1.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub method: Method,
    pub architecture: Architecture,
    /// First-stage channels of the encoders (default: the architecture's).
    pub width: Option<usize>,
    /// Batch norm on the encoders' outputs before L2 normalisation (see `EncoderConfig`).
    pub head_norm: bool,
    /// Salient embedding dimension d_s.
    pub dim_salient: usize,
    /// Background embedding dimension d_z.
    pub dim_background: usize,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Epochs (as fractions of `epochs`) at which the learning rate is multiplied by `lr_gamma`;
    /// IDFD's are 600/950/1300/1650 of 2000 (0.3, 0.475, 0.65, 0.825).
    pub lr_milestones: Vec<f64>,
    pub lr_gamma: f64,
    /// Linear learning-rate warm-up over this many epochs (0: none).
    pub warmup_epochs: usize,
    /// Instance-discrimination temperature τ.
    pub tau: f64,
    /// Feature-decorrelation temperature τ₂.
    pub tau2: f64,
    /// Weight α of feature decorrelation.
    pub alpha: f64,
    /// Weight λ of the background similarity in the target logits.
    pub lambda: f64,
    /// Weight β of the reference-salient term 1 − ‖mean s(b)‖².
    pub beta: f64,
    /// Weight of the reference-null term: the energy of the salient encoder's un-normalised
    /// features on reference images over that on target images (see `loss::reference_null`).
    pub reference_null: f64,
    /// Weight of the salient/background cross-covariance penalty on target batches.
    pub gamma_xcov: f64,
    /// Weight of an auxiliary in-batch two-view contrast on the salient features (NT-Xent over a
    /// second augmented view of the target batch); 0 turns it off.
    pub two_view_weight: f64,
    /// Temperature of the two-view contrast.
    pub two_view_tau: f64,
    /// Weight of the background similarity in the two-view logits, as `lambda` in the bank's
    /// target logits: each pair's similarity s·s' is corrected by λ·z·z', with z the rows of
    /// the target background bank, so a positive that shares the image's background is
    /// explained by g_z and the salient encoder is not pushed to encode it. cIDFD only; 0: off;
    /// unset: the method's default, see [`TrainConfig::two_view_lambda`].
    pub two_view_lambda: Option<f64>,
    /// Pair each target image, in the two-view contrast, with a view of one of its K nearest
    /// neighbours in the reference-whitened pixel space instead of a second view of itself
    /// (0: off; unset: the method's default, see [`TrainConfig::neighbour_positives`]).
    /// Neighbours share the object more often than not, but never the background.
    pub neighbour_positives: Option<usize>,
    /// Principal components of the whitened pixels the neighbours are found in.
    pub neighbour_components: usize,
    /// Every this many epochs, find the neighbours again in the salient memory bank instead
    /// (0: keep the whitened-pixel neighbours).
    pub neighbour_refresh_every: usize,
    /// Find the neighbours among windows of this side that shift-invariant k-means aligns in
    /// the whitened pixels (one template per cluster), for objects that move within the image
    /// (0: whole images, as they are).
    pub neighbour_align_window: usize,
    /// The alignment front: the encoders see, of each image, the window of this side that
    /// correlates best with one of the templates that shift-invariant k-means fits to the
    /// reference-whitened target images (one per cluster), for objects that move within the
    /// image; a fixed first stage, part of the exported graph (0: off; single-channel images of
    /// at most 64×64 pixels; cIDFD only, the whitening is fitted to the reference set; unset:
    /// 28 for cIDFD on single-channel images whose sides both exceed 28, see
    /// [`crate::alignment::default_window`], else off).
    pub align_window: Option<usize>,
    /// With `align_window`: search each image's window only within this many pixels (rows and
    /// columns) of where a locator puts the object. The locator is a small fully convolutional
    /// CNN trained to tell target images from reference images; the centre of mass of its
    /// positive evidence map is the estimate (0: search every offset with the templates alone;
    /// unset: 3 wherever a window is on).
    pub align_search_radius: Option<usize>,
    /// Channels of the locator's first convolution (its other three have twice as many).
    pub align_locator_width: usize,
    /// Epochs of the locator's training (Adam, one-cycle learning rate).
    pub align_locator_epochs: usize,
    /// Never pair an image with any of its this many nearest images in the raw pixels (PCA to
    /// `neighbour_components`, cosine): where the background dominates the pixels, those are
    /// mostly images on overlapping crops of one background, which share the background more
    /// often than the object (0: off; unset: 3 wherever there are neighbour positives, see
    /// [`TrainConfig::neighbour_skip_raw_nearest`]).
    pub neighbour_skip_raw_nearest: Option<usize>,
    /// One softmax over a joint bank of target and reference rows (reference rows have a zero
    /// salient part) instead of separate banks.
    pub joint_bank: bool,
    /// Feature decorrelation on z (over the target and reference batches) as well as on s.
    pub fd_background: bool,
    pub bank_momentum: f64,
    pub bank_init: BankInit,
    /// Reference whitening as the salient encoder's fixed first layer: the side of the
    /// depthwise kernel fitted to the reference images' power spectrum (odd; 0: off; unset: the
    /// method's default, see [`TrainConfig::whitening_kernel`]). cIDFD only (IDFD reads no
    /// reference set).
    pub whitening_kernel: Option<usize>,
    /// The reference whitening as the whole ZCA matrix of the reference images (position-
    /// dependent; images of at most 64×64 values) instead of a `whitening_kernel`-sided kernel
    /// (see [`crate::whitening::WhiteningMatrix`]). Needs `whitening_kernel` > 0 (whitening
    /// on). Not serialised when false: kernel models' manifests and pipeline keys do not
    /// mention it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub whitening_matrix: bool,
    /// Project the salient embedding onto the directions in which the targets' embeddings vary
    /// more than the references' (fitted after training; see [`crate::subspace`]) before
    /// k-means and in the exported graph. cIDFD only; unset: on for cIDFD, see
    /// [`TrainConfig::contrastive_subspace`].
    pub contrastive_subspace: Option<bool>,
    /// ε of the whitening filter as a fraction of the mean reference power: larger keeps more
    /// of the frequencies the backgrounds are strong in.
    pub whitening_shrinkage: f64,
    pub augment: AugmentConfig,
    /// k of k-means; default: the number of distinct labels if present, else 10.
    pub clusters: Option<usize>,
    pub kmeans_restarts: usize,
    /// Evaluate (k-means + metrics on the un-augmented target set) every N epochs; 0: only at the end.
    pub eval_every: usize,
    /// Write a checkpoint every N epochs (0: only at the end).
    pub checkpoint_every: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: Method::Cidfd,
            architecture: Architecture::SmallCnn,
            width: None,
            head_norm: false,
            dim_salient: 128,
            dim_background: 128,
            epochs: 30,
            batch_size: 128,
            lr: 0.03,
            momentum: 0.9,
            weight_decay: 5e-4,
            lr_milestones: vec![0.8],
            lr_gamma: 0.1,
            warmup_epochs: 0,
            tau: 1.0,
            tau2: 2.0,
            alpha: 1.0,
            lambda: 1.0,
            beta: 0.0,
            reference_null: 0.0,
            gamma_xcov: 0.0,
            two_view_weight: 4.0,
            two_view_tau: 0.5,
            two_view_lambda: None,
            neighbour_positives: None,
            neighbour_components: 64,
            neighbour_refresh_every: 0,
            neighbour_align_window: 0,
            align_window: None,
            align_search_radius: None,
            align_locator_width: 16,
            align_locator_epochs: 6,
            neighbour_skip_raw_nearest: None,
            joint_bank: false,
            fd_background: false,
            bank_momentum: 0.5,
            bank_init: BankInit::Random,
            whitening_kernel: None,
            whitening_matrix: false,
            contrastive_subspace: None,
            whitening_shrinkage: 1.0,
            augment: AugmentConfig::default(),
            clusters: None,
            kmeans_restarts: 20,
            eval_every: 0,
            checkpoint_every: 5,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// The alignment front's window for images of `shape`, 0 for none: as set, else
    /// [`crate::alignment::default_window`] for cIDFD without a second alignment of the
    /// neighbour search, else 0.
    pub fn align_window_for(&self, shape: crate::data::ImageShape) -> usize {
        self.align_window.unwrap_or(
            if self.method == Method::Cidfd && self.neighbour_align_window == 0 {
                crate::alignment::default_window(shape)
            } else {
                0
            },
        )
    }

    /// The alignment front's window as set (0 while unset: before training resolves it for
    /// the images with [`TrainConfig::resolve_for_images`], and in manifests, it is set).
    pub fn align_window(&self) -> usize {
        self.align_window.unwrap_or(0)
    }

    /// The search radius of the alignment front: as set, else
    /// [`crate::alignment::DEFAULT_SEARCH_RADIUS`] wherever a window is on (or may be, while
    /// the window is unset).
    pub fn align_search_radius(&self) -> usize {
        self.align_search_radius.unwrap_or(match self.align_window {
            Some(0) => 0,
            _ => crate::alignment::DEFAULT_SEARCH_RADIUS,
        })
    }

    /// Settles the settings that depend on the images (the alignment front's window and, with
    /// it, its search radius), so that the manifest records them as used.
    pub fn resolve_for_images(&mut self, shape: crate::data::ImageShape) {
        let window = self.align_window_for(shape);
        self.align_window = Some(window);
        self.align_search_radius = Some(if window > 0 {
            self.align_search_radius()
        } else {
            0
        });
    }

    /// How the alignment front places its windows: near a locator's estimate when
    /// `align_search_radius` is set, else everywhere (None).
    pub fn align_locate(&self) -> Option<crate::alignment::LocateSettings> {
        (self.align_search_radius() > 0).then_some(crate::alignment::LocateSettings {
            radius: self.align_search_radius(),
            locator: crate::alignment::LocatorSettings {
                width: self.align_locator_width,
                epochs: self.align_locator_epochs,
                seed: self.seed,
            },
        })
    }

    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// The learning rate for `epoch` (0-based, fractional within the epoch).
    pub fn lr_at(&self, epoch: f64) -> f64 {
        let mut lr = self.lr;
        if self.warmup_epochs > 0 && epoch < self.warmup_epochs as f64 {
            lr *= (epoch + 1e-3) / self.warmup_epochs as f64;
        }
        for &m in &self.lr_milestones {
            if epoch >= m * self.epochs as f64 {
                lr *= self.lr_gamma;
            }
        }
        lr
    }

    /// The side of the reference-whitening filter, 0 for none: as set, else 9 for cIDFD and 0
    /// for IDFD, which reads no reference set.
    pub fn whitening_kernel(&self) -> usize {
        self.whitening_kernel.unwrap_or(match self.method {
            Method::Cidfd => DEFAULT_WHITENING_KERNEL,
            Method::Idfd => 0,
        })
    }

    /// The number of neighbour positives, 0 for none: as set, else 10 for cIDFD and 0 for
    /// IDFD (the neighbours are found in reference-whitened pixels).
    pub fn neighbour_positives(&self) -> usize {
        self.neighbour_positives.unwrap_or(match self.method {
            Method::Cidfd => DEFAULT_NEIGHBOUR_POSITIVES,
            Method::Idfd => 0,
        })
    }

    /// How many of each image's nearest raw-pixel images are never its neighbour positives:
    /// as set, else 3 where there are neighbour positives and 0 where there are none.
    pub fn neighbour_skip_raw_nearest(&self) -> usize {
        self.neighbour_skip_raw_nearest
            .unwrap_or(if self.neighbour_positives() > 0 {
                DEFAULT_NEIGHBOUR_SKIP_RAW_NEAREST
            } else {
                0
            })
    }

    /// The weight of the background correction in the two-view contrast, 0 for none: as set,
    /// else 1 for cIDFD with a two-view contrast (as `lambda` in the bank's logits) and 0
    /// otherwise (IDFD has no background encoder).
    pub fn two_view_lambda(&self) -> f64 {
        self.two_view_lambda.unwrap_or(
            if self.method == Method::Cidfd && self.two_view_weight > 0.0 {
                DEFAULT_TWO_VIEW_LAMBDA
            } else {
                0.0
            },
        )
    }

    /// Whether the salient embedding is projected onto its contrastive subspace: as set, else
    /// on for cIDFD (IDFD reads no reference set).
    pub fn contrastive_subspace(&self) -> bool {
        self.contrastive_subspace
            .unwrap_or(self.method == Method::Cidfd)
    }

    /// The encoders' first-stage width: as set, else the architecture's default.
    pub fn width(&self) -> usize {
        self.width.unwrap_or(self.architecture.default_width())
    }

    /// The same settings with every default that depends on another setting written out.
    pub fn resolved(&self) -> Self {
        Self {
            width: Some(self.width()),
            whitening_kernel: Some(self.whitening_kernel()),
            neighbour_positives: Some(self.neighbour_positives()),
            neighbour_skip_raw_nearest: Some(self.neighbour_skip_raw_nearest()),
            two_view_lambda: Some(self.two_view_lambda()),
            contrastive_subspace: Some(self.contrastive_subspace()),
            ..self.clone()
        }
    }

    /// Whether this run uses the background encoder and the reference set.
    pub fn uses_reference(&self) -> bool {
        self.method == Method::Cidfd
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(format!("invalid training setting: {m}")));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self.batch_size < 2 {
            return bad(
                "batch_size must be at least 2 (batch norm and decorrelation need a batch)",
            );
        }
        if self.dim_salient == 0 || self.dim_background == 0 {
            return bad("embedding dimensions must be positive");
        }
        if self.tau.is_nan() || self.tau2.is_nan() || self.tau <= 0.0 || self.tau2 <= 0.0 {
            return bad("tau and tau2 must be positive");
        }
        if !(0.0..1.0).contains(&self.bank_momentum) {
            return bad("bank_momentum must be in [0, 1)");
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            return bad("lr must be positive");
        }
        if self.method == Method::Idfd
            && (self.whitening_kernel() > 0
                || self.whitening_matrix
                || self.neighbour_positives() > 0
                || self.align_window() > 0
                || self.contrastive_subspace())
        {
            return bad(
                "whitening_kernel, whitening_matrix, neighbour_positives, align_window and contrastive_subspace are fitted to the reference set: method cidfd only (IDFD reads no reference set)",
            );
        }
        if self.align_search_radius.is_some_and(|r| r > 0) && self.align_window == Some(0) {
            return bad(
                "align_search_radius limits the alignment front's search: set align_window > 0",
            );
        }
        // An unset window is checked once training has settled it for the images.
        if self.align_window() > 0
            && self.align_search_radius() > 0
            && (self.align_locator_width == 0 || self.align_locator_epochs == 0)
        {
            return bad("align_search_radius needs a trained locator: align_locator_width and align_locator_epochs must be positive");
        }
        if self.align_window() > 0 && self.neighbour_align_window > 0 {
            return bad(
                "align_window already aligns the images the neighbours are found in: leave neighbour_align_window at 0",
            );
        }
        let two_view_lambda = self.two_view_lambda();
        if two_view_lambda != 0.0 {
            if self.method == Method::Idfd {
                return bad(
                    "two_view_lambda reads the background encoder's bank: method cidfd only",
                );
            }
            if self.two_view_weight <= 0.0 {
                return bad(
                    "two_view_lambda corrects the two-view contrast: set two_view_weight > 0",
                );
            }
            if !two_view_lambda.is_finite() {
                return bad("two_view_lambda must be finite");
            }
        }
        if self.neighbour_positives() > 0 && self.two_view_weight <= 0.0 {
            return bad("neighbour_positives pairs images in the two-view contrast: set two_view_weight > 0");
        }
        // Settings that shape the neighbour positives mean nothing without them.
        for (name, value, what) in [
            (
                "neighbour_align_window",
                self.neighbour_align_window,
                "aligns the neighbour search",
            ),
            (
                "neighbour_skip_raw_nearest",
                self.neighbour_skip_raw_nearest(),
                "filters the neighbour positives",
            ),
        ] {
            if value > 0 && self.neighbour_positives() == 0 {
                return bad(&format!("{name} {what}: set neighbour_positives > 0"));
            }
        }
        if self.neighbour_positives() > 0 && self.neighbour_components == 0 {
            return bad("neighbour_components must be positive");
        }
        if self.whitening_kernel().is_multiple_of(2) && self.whitening_kernel() != 0 {
            return bad("whitening_kernel must be odd (or 0 for no whitening)");
        }
        if self.whitening_matrix && self.whitening_kernel() == 0 {
            return bad(
                "whitening_matrix replaces the whitening kernel by the whole matrix: leave whitening_kernel on (> 0)",
            );
        }
        if !(self.whitening_shrinkage.is_finite() && self.whitening_shrinkage > 0.0) {
            return bad("whitening_shrinkage must be positive");
        }
        Ok(())
    }
}

/// Augmentation of target and reference images during training. The defaults move and
/// recolour an image a little and never crop it; IDFD's (crops of 0.2–1 of the area, jitter
/// 0.4) are in `examples/configs/paper.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Area fraction range of the random resized crop.
    pub crop_scale: (f32, f32),
    /// Aspect-ratio range of the crop.
    pub crop_ratio: (f32, f32),
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub grayscale_p: f32,
    /// Probability of a reference overlay: adding the texture of a random background-only image,
    /// x ← clip(x + γ·(r − mean(r))), γ ~ U(overlay_strength). It changes the background and
    /// leaves the object, so features that tell instances apart by background stop working.
    /// Applies to target images only, and only where a reference set is given.
    pub overlay_p: f32,
    pub overlay_strength: (f32, f32),
    /// Random translation of the (cropped) view by up to this many pixels in each direction,
    /// with the border pixels repeated: small moves that never cut an object away, unlike
    /// small crops.
    pub translate: u32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop_scale: (1.0, 1.0),
            crop_ratio: (1.0, 1.0),
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.4,
            grayscale_p: 0.2,
            overlay_p: 0.0,
            overlay_strength: (0.5, 1.0),
            translate: 2,
        }
    }
}

impl AugmentConfig {
    /// IDFD's augmentation (METHOD.md): random resized crops of 0.2–1 of the area, colour
    /// jitter 0.4, grayscale with probability 0.2.
    pub fn idfd() -> Self {
        Self {
            crop_scale: (0.2, 1.0),
            crop_ratio: (3.0 / 4.0, 4.0 / 3.0),
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            grayscale_p: 0.2,
            translate: 0,
            ..Self::default()
        }
    }

    /// No augmentation at all (embedding the un-augmented images).
    pub fn none() -> Self {
        Self {
            crop_scale: (1.0, 1.0),
            crop_ratio: (1.0, 1.0),
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            grayscale_p: 0.0,
            overlay_p: 0.0,
            overlay_strength: (0.0, 0.0),
            translate: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_scales_idfd_milestones_to_the_epochs_run() {
        let c = TrainConfig {
            epochs: 2000,
            lr_milestones: vec![0.3, 0.475, 0.65, 0.825],
            ..Default::default()
        };
        assert!((c.lr_at(0.0) - 0.03).abs() < 1e-12);
        assert!((c.lr_at(599.0) - 0.03).abs() < 1e-12);
        assert!((c.lr_at(600.0) - 0.003).abs() < 1e-12);
        assert!((c.lr_at(1700.0) - 0.03 * 1e-4).abs() < 1e-15);
    }

    #[test]
    fn reference_fitted_settings_are_refused_for_idfd() {
        for config in [
            TrainConfig {
                method: Method::Idfd,
                whitening_kernel: Some(9),
                ..Default::default()
            },
            TrainConfig {
                method: Method::Idfd,
                two_view_weight: 1.0,
                neighbour_positives: Some(5),
                ..Default::default()
            },
            TrainConfig {
                method: Method::Idfd,
                whitening_matrix: true,
                ..Default::default()
            },
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("method cidfd only"), "{err}");
            let cidfd = TrainConfig {
                method: Method::Cidfd,
                ..config
            };
            cidfd.validate().unwrap();
        }
    }

    #[test]
    fn the_whitening_matrix_needs_whitening_on_and_is_not_written_when_off() {
        let matrix: TrainConfig = toml::from_str("whitening_matrix = true").unwrap();
        matrix.validate().unwrap();
        let off = TrainConfig {
            whitening_kernel: Some(0),
            ..matrix.clone()
        };
        let err = off.validate().unwrap_err().to_string();
        assert!(
            err.contains("whitening_matrix") && err.contains("whitening_kernel"),
            "{err}"
        );
        // Kernel models' manifests and pipeline keys do not change with the new setting.
        let written = |c: &TrainConfig| serde_json::to_string(c).unwrap();
        assert!(!written(&TrainConfig::default()).contains("whitening_matrix"));
        assert!(written(&matrix).contains("\"whitening_matrix\":true"));
    }

    #[test]
    fn the_two_view_background_correction_needs_cidfd_and_the_two_view_contrast() {
        let corrected = TrainConfig {
            two_view_lambda: Some(1.0),
            ..Default::default()
        };
        corrected.validate().unwrap();
        let idfd = TrainConfig {
            method: Method::Idfd,
            neighbour_positives: Some(0),
            whitening_kernel: Some(0),
            ..corrected.clone()
        };
        let err = idfd.validate().unwrap_err().to_string();
        assert!(
            err.contains("two_view_lambda") && err.contains("cidfd"),
            "{err}"
        );
        let no_two_view = TrainConfig {
            two_view_weight: 0.0,
            neighbour_positives: Some(0),
            ..corrected.clone()
        };
        let err = no_two_view.validate().unwrap_err().to_string();
        assert!(err.contains("two_view_weight"), "{err}");
        let infinite = TrainConfig {
            two_view_lambda: Some(f64::INFINITY),
            ..corrected
        };
        assert!(infinite.validate().is_err());
    }

    #[test]
    fn the_paper_configuration_keeps_every_salient_addition_off() {
        let paper: TrainConfig =
            toml::from_str(include_str!("../examples/configs/paper.toml")).unwrap();
        paper.validate().unwrap();
        assert_eq!(
            (
                paper.whitening_kernel(),
                paper.neighbour_positives(),
                paper.two_view_lambda(),
                paper.align_window,
                paper.contrastive_subspace()
            ),
            (0, 0, 0.0, Some(0), false)
        );
    }

    #[test]
    fn the_alignment_front_needs_cidfd_and_no_second_alignment() {
        let front = TrainConfig {
            align_window: Some(28),
            ..Default::default()
        };
        front.validate().unwrap();
        let idfd = TrainConfig {
            method: Method::Idfd,
            neighbour_positives: Some(0),
            whitening_kernel: Some(0),
            ..front.clone()
        };
        let err = idfd.validate().unwrap_err().to_string();
        assert!(
            err.contains("align_window") && err.contains("cidfd"),
            "{err}"
        );
        let twice = TrainConfig {
            neighbour_align_window: 28,
            ..front
        };
        let err = twice.validate().unwrap_err().to_string();
        assert!(err.contains("neighbour_align_window"), "{err}");
    }

    #[test]
    fn an_unset_window_aligns_only_where_a_window_has_room_to_move() {
        use crate::data::ImageShape;
        let shape = |channels, height, width| ImageShape {
            channels,
            height,
            width,
        };
        let resolved = |config: &TrainConfig, s: ImageShape| {
            let mut config = config.clone();
            config.resolve_for_images(s);
            config.validate().unwrap();
            (config.align_window, config.align_search_radius)
        };
        let default = TrainConfig::default();
        // The shifted benchmark sets: 28×28 objects in 36×36 crops.
        assert_eq!(resolved(&default, shape(1, 36, 36)), (Some(28), Some(3)));
        assert_eq!(resolved(&default, shape(1, 64, 40)), (Some(28), Some(3)));
        // No room to move (the aligned sets), colour, or beyond the dense whitening: off.
        for s in [
            shape(1, 28, 28),
            shape(1, 36, 28),
            shape(3, 36, 36),
            shape(1, 65, 64),
        ] {
            assert_eq!(resolved(&default, s), (Some(0), Some(0)), "{s}");
        }
        // IDFD reads no reference set; an aligned neighbour search is the other alignment.
        let idfd = TrainConfig {
            method: Method::Idfd,
            neighbour_positives: Some(0),
            whitening_kernel: Some(0),
            ..Default::default()
        };
        let neighbours = TrainConfig {
            neighbour_align_window: 28,
            ..Default::default()
        };
        for config in [idfd, neighbours] {
            assert_eq!(resolved(&config, shape(1, 36, 36)), (Some(0), Some(0)));
        }
        // What is set stays set: a window without a radius searches near the locator's
        // estimate, and radius 0 searches everywhere.
        let set = TrainConfig {
            align_window: Some(20),
            ..Default::default()
        };
        assert_eq!(resolved(&set, shape(1, 28, 28)), (Some(20), Some(3)));
        let everywhere = TrainConfig {
            align_search_radius: Some(0),
            ..Default::default()
        };
        assert_eq!(resolved(&everywhere, shape(1, 36, 36)), (Some(28), Some(0)));
        let off = TrainConfig {
            align_window: Some(0),
            ..Default::default()
        };
        assert_eq!(resolved(&off, shape(1, 36, 36)), (Some(0), Some(0)));
        // Without a locator the front cannot search near one: refused once the window is
        // settled (an unset window on images without room needs none).
        let no_locator = TrainConfig {
            align_locator_epochs: 0,
            ..Default::default()
        };
        no_locator.validate().unwrap();
        assert_eq!(resolved(&no_locator, shape(1, 28, 28)), (Some(0), Some(0)));
        let mut on = no_locator.clone();
        on.resolve_for_images(shape(1, 36, 36));
        assert!(on.validate().unwrap_err().to_string().contains("locator"));
        // A radius with the window switched off is a contradiction.
        let contradiction = TrainConfig {
            align_search_radius: Some(2),
            ..off
        };
        assert!(contradiction.validate().is_err());
    }

    #[test]
    fn settings_that_shape_the_neighbours_need_neighbour_positives() {
        let aligned = TrainConfig {
            neighbour_align_window: 28,
            ..Default::default()
        };
        let skip = TrainConfig {
            neighbour_skip_raw_nearest: Some(3),
            ..Default::default()
        };
        for (config, name) in [
            (aligned, "neighbour_align_window"),
            (skip, "neighbour_skip_raw_nearest"),
        ] {
            config.validate().unwrap();
            let without = TrainConfig {
                neighbour_positives: Some(0),
                ..config
            };
            let err = without.validate().unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn reference_fitted_defaults_follow_the_method() {
        let cidfd = TrainConfig::default();
        cidfd.validate().unwrap();
        assert_eq!(cidfd.whitening_kernel(), DEFAULT_WHITENING_KERNEL);
        assert_eq!(cidfd.neighbour_positives(), DEFAULT_NEIGHBOUR_POSITIVES);
        assert_eq!(
            cidfd.neighbour_skip_raw_nearest(),
            DEFAULT_NEIGHBOUR_SKIP_RAW_NEAREST
        );
        assert_eq!(cidfd.two_view_lambda(), DEFAULT_TWO_VIEW_LAMBDA);
        // Without a two-view contrast there is nothing to correct, and that is no error.
        let no_two_view = TrainConfig {
            two_view_weight: 0.0,
            neighbour_positives: Some(0),
            ..Default::default()
        };
        no_two_view.validate().unwrap();
        assert_eq!(no_two_view.two_view_lambda(), 0.0);
        // Without neighbour positives there is nothing to skip, and that is no error.
        let no_neighbours = TrainConfig {
            neighbour_positives: Some(0),
            ..Default::default()
        };
        no_neighbours.validate().unwrap();
        assert_eq!(no_neighbours.neighbour_skip_raw_nearest(), 0);
        let idfd = TrainConfig {
            method: Method::Idfd,
            ..Default::default()
        };
        // IDFD without a word about whitening or neighbours is valid: its defaults are off.
        idfd.validate().unwrap();
        assert_eq!(
            (idfd.whitening_kernel(), idfd.neighbour_positives()),
            (0, 0)
        );
        let resolved = idfd.resolved();
        assert_eq!(resolved.whitening_kernel, Some(0));
        assert_eq!(resolved.neighbour_positives, Some(0));
        assert_eq!(resolved.neighbour_skip_raw_nearest, Some(0));
        assert_eq!(resolved.two_view_lambda, Some(0.0));
        assert_eq!(resolved.width, Some(16));
        assert_eq!(resolved.contrastive_subspace, Some(false));
        assert_eq!(cidfd.resolved().contrastive_subspace, Some(true));
        let idfd_subspace = TrainConfig {
            contrastive_subspace: Some(true),
            ..idfd.clone()
        };
        let err = idfd_subspace.validate().unwrap_err().to_string();
        assert!(err.contains("contrastive_subspace"), "{err}");
        // An explicit 0 turns cIDFD's off; TOML reads the same.
        let off: TrainConfig = toml::from_str("whitening_kernel = 0").unwrap();
        assert_eq!(off.whitening_kernel(), 0);
        let idfd: TrainConfig = toml::from_str("method = \"idfd\"").unwrap();
        idfd.validate().unwrap();
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c: TrainConfig =
            toml::from_str("epochs = 3\nlambda = 0.5\n[augment]\ncrop_scale = [0.5, 1.0]").unwrap();
        assert_eq!(c.epochs, 3);
        assert_eq!(c.lambda, 0.5);
        assert_eq!(c.augment.crop_scale, (0.5, 1.0));
        assert_eq!(c.tau, 1.0);
        assert!(toml::from_str::<TrainConfig>("epohcs = 3").is_err());
    }
}
