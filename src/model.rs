//! The encoders of IDFD and cIDFD in candle. Device-agnostic: every tensor is created on the
//! device of the `VarBuilder`, so CUDA is one feature flag and one `Device` away.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{
    batch_norm, conv2d_no_bias, linear, BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder,
};
use serde::{Deserialize, Serialize};

/// Which encoder architecture to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// Four 3×3 convolutions (32-64-128-256, batch norm, stride 2 after the first), global
    /// average pooling and a linear head: sized for CPU training.
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
}

fn bn_config() -> candle_nn::BatchNormConfig {
    candle_nn::BatchNormConfig {
        eps: 1e-5,
        remove_mean: true,
        affine: true,
        momentum: 0.1,
    }
}

fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv2d_no_bias(
        cin,
        cout,
        3,
        Conv2dConfig {
            padding: 1,
            stride,
            ..Default::default()
        },
        vb,
    )
}

/// conv → batch norm → ReLU.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(cin, cout, stride, vb.pp("conv"))?,
            bn: batch_norm(cout, bn_config(), vb.pp("bn"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        x.apply(&self.conv)?.apply_t(&self.bn, train)?.relu()
    }
}

/// ResNet basic block: two 3×3 conv-bn, identity or 1×1-conv shortcut.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            let conv = conv2d_no_bias(
                cin,
                cout,
                1,
                Conv2dConfig {
                    stride,
                    ..Default::default()
                },
                vb.pp("shortcut.conv"),
            )?;
            Some((conv, batch_norm(cout, bn_config(), vb.pp("shortcut.bn"))?))
        } else {
            None
        };
        Ok(Self {
            conv1: conv3x3(cin, cout, stride, vb.pp("conv1"))?,
            bn1: batch_norm(cout, bn_config(), vb.pp("bn1"))?,
            conv2: conv3x3(cout, cout, 1, vb.pp("conv2"))?,
            bn2: batch_norm(cout, bn_config(), vb.pp("bn2"))?,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x.apply(&self.conv1)?.apply_t(&self.bn1, train)?.relu()?;
        let y = y.apply(&self.conv2)?.apply_t(&self.bn2, train)?;
        let s = match &self.shortcut {
            Some((conv, bn)) => x.apply(conv)?.apply_t(bn, train)?,
            None => x.clone(),
        };
        (y + s)?.relu()
    }
}

#[derive(Debug, Clone)]
enum Trunk {
    Small(Vec<ConvBn>),
    Resnet {
        stem: ConvBn,
        blocks: Vec<BasicBlock>,
    },
}

/// An encoder: trunk, global average pooling, linear head, L2 normalisation.
#[derive(Debug, Clone)]
pub struct Encoder {
    trunk: Trunk,
    head: Linear,
    pub config: EncoderConfig,
}

impl Encoder {
    pub fn new(config: EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let (trunk, features) = match config.architecture {
            Architecture::SmallCnn => {
                let widths = [32, 64, 128, 256];
                let mut layers = Vec::new();
                let mut cin = config.in_channels;
                for (i, &w) in widths.iter().enumerate() {
                    let stride = if i == 0 { 1 } else { 2 };
                    layers.push(ConvBn::new(cin, w, stride, vb.pp(format!("layer{i}")))?);
                    cin = w;
                }
                (Trunk::Small(layers), cin)
            }
            Architecture::Resnet18 => {
                let stem = ConvBn::new(config.in_channels, 64, 1, vb.pp("stem"))?;
                let mut blocks = Vec::new();
                let mut cin = 64;
                for (stage, &w) in [64, 128, 256, 512].iter().enumerate() {
                    for b in 0..2 {
                        let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                        blocks.push(BasicBlock::new(
                            cin,
                            w,
                            stride,
                            vb.pp(format!("layer{stage}.{b}")),
                        )?);
                        cin = w;
                    }
                }
                (Trunk::Resnet { stem, blocks }, cin)
            }
        };
        let head = linear(features, config.dim, vb.pp("head"))?;
        Ok(Self {
            trunk,
            head,
            config,
        })
    }

    /// Un-normalised features (B×dim) of a float batch (B×C×H×W).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        match &self.trunk {
            Trunk::Small(layers) => {
                for layer in layers {
                    h = layer.forward_t(&h, train)?;
                }
            }
            Trunk::Resnet { stem, blocks } => {
                h = stem.forward_t(&h, train)?;
                for block in blocks {
                    h = block.forward_t(&h, train)?;
                }
            }
        }
        // Global average pooling over H and W.
        let pooled = h.mean(D::Minus1)?.mean(D::Minus1)?;
        self.head.forward(&pooled)
    }

    /// L2-normalised embeddings (B×dim).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        l2_normalize(&self.features(x, train)?)
    }
}

/// Normalises each row to unit length (rows of zeros stay zero).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

/// Converts a uint8 batch (B×C×H×W values) to normalised floats on the encoder's device.
pub fn normalize_batch(
    pixels: &[f32],
    batch: usize,
    shape: crate::data::ImageShape,
    mean: &[f32],
    std: &[f32],
    device: &candle_core::Device,
) -> Result<Tensor> {
    let x = Tensor::from_slice(
        pixels,
        (batch, shape.channels, shape.height, shape.width),
        device,
    )?;
    let mean = Tensor::from_slice(mean, (1, shape.channels, 1, 1), device)?;
    let std = Tensor::from_slice(std, (1, shape.channels, 1, 1), device)?;
    x.to_dtype(DType::F32)?
        .broadcast_sub(&mean)?
        .broadcast_div(&std)
}
