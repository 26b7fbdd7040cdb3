//! The encoders of IDFD and cIDFD in candle. Device-agnostic: every tensor is created on the
//! device of the `VarBuilder`, so CUDA is one feature flag and one `Device` away. Their ONNX
//! form is written by [`crate::export`].

mod encoder;
pub(crate) mod layers;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use crate::kernels::Kernels;
pub(crate) use encoder::Trunk;
pub use encoder::{
    l2_normalize, Encoder, InputWhitening, INPUT_FILTER_TENSOR, INPUT_MATRIX_TENSOR,
    INPUT_MEAN_TENSOR,
};

/// Which encoder architecture to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// Four 3×3 convolutions (16-32-64-128 by default, batch norm, stride 2 after the first),
    /// global average pooling and a linear head: sized for CPU training.
    #[default]
    SmallCnn,
    /// ResNet-18 with the CIFAR stem (3×3 first conv, stride 1, no max-pool), as in IDFD.
    Resnet18,
}

/// Shape of one encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub architecture: Architecture,
    pub in_channels: usize,
    /// Output dimension (d_s or d_z).
    pub dim: usize,
    /// Channels of the first stage; later stages double it (small-cnn: w, 2w, 4w, 8w;
    /// resnet18: 64 by default as in IDFD).
    pub width: usize,
    /// Batch-normalise the head's output before L2 normalisation. Without it, a fresh encoder
    /// maps images that share a background to nearly one direction (the common component of
    /// pooled ReLU features dominates), where contrastive gradients vanish.
    #[serde(default)]
    pub head_norm: bool,
}

impl Architecture {
    /// The first-stage width when none is set: IDFD's 64 for ResNet-18; 16 for the small CNN,
    /// which trains at CPU speed (a quarter of the width-32 network's multiply-adds).
    pub fn default_width(&self) -> usize {
        match self {
            Architecture::SmallCnn => 16,
            Architecture::Resnet18 => 64,
        }
    }
}
