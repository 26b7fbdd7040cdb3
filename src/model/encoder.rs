//! An encoder: an optional fixed input filter, a trunk (small CNN or ResNet-18), global average
//! pooling, a linear head (optionally batch-normalised) and L2 normalisation.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

use super::layers::{BasicBlock, ConvBn, Pass, RowBatchNorm};
use super::{Architecture, EncoderConfig};
use crate::kernels::Kernels;

#[derive(Debug, Clone)]
pub(crate) enum Trunk {
    Small(Vec<ConvBn>),
    Resnet {
        stem: ConvBn,
        blocks: Vec<BasicBlock>,
    },
}

/// An encoder: trunk, global average pooling, linear head, L2 normalisation.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Fixed reference whitening applied to the input before the trunk; not a parameter: it
    /// is fitted to the reference set, never trained.
    pub(crate) input_whitening: Option<InputWhitening>,
    pub(crate) trunk: Trunk,
    pub(crate) head: Linear,
    pub(crate) head_norm: Option<RowBatchNorm>,
    /// The kernels that run the convolutions and batch norms (`auto` unless set).
    kernels: Kernels,
    pub config: EncoderConfig,
}

/// Name of the salient encoder's input filter in `model.safetensors`.
pub const INPUT_FILTER_TENSOR: &str = "salient.input_whitening";
/// Names of the salient encoder's input whitening matrix and mean in `model.safetensors`.
pub const INPUT_MATRIX_TENSOR: &str = "salient.input_whitening_matrix";
pub const INPUT_MEAN_TENSOR: &str = "salient.input_whitening_mean";

/// The salient encoder's fixed first layer: reference whitening, as a kernel or a matrix
/// (see [`crate::whitening`]).
#[derive(Debug, Clone)]
pub enum InputWhitening {
    /// One k×k kernel per channel (C×1×k×k), applied depthwise with zero padding k/2.
    Kernel(Tensor),
    /// `(x − mean) · matrix` on each flattened image: mean 1×d, matrix d×d, d = C·H·W.
    Matrix { mean: Tensor, matrix: Tensor },
}

impl Encoder {
    pub fn new(config: EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let (trunk, features) = match config.architecture {
            Architecture::SmallCnn => {
                let w = config.width;
                let widths = [w, 2 * w, 4 * w, 8 * w];
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
                let w = config.width;
                let stem = ConvBn::new(config.in_channels, w, 1, vb.pp("stem"))?;
                let mut blocks = Vec::new();
                let mut cin = w;
                for (stage, &w) in [w, 2 * w, 4 * w, 8 * w].iter().enumerate() {
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
        let head_norm = if config.head_norm {
            Some(RowBatchNorm::new(config.dim, vb.pp("head_bn"))?)
        } else {
            None
        };
        Ok(Self {
            input_whitening: None,
            kernels: Kernels::Auto,
            trunk,
            head,
            head_norm,
            config,
        })
    }

    /// Runs this encoder's convolutions and batch norms with `kernels` (benchmarks and tests
    /// compare them; training leaves the default, `auto`).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// Sets the fixed input filter (one `size`×`size` kernel per input channel).
    pub fn set_input_filter(
        &mut self,
        filter: &crate::whitening::WhiteningFilter,
        device: &candle_core::Device,
    ) -> Result<()> {
        if filter.channels != self.config.in_channels {
            candle_core::bail!(
                "input filter for {} channels on an encoder of {}",
                filter.channels,
                self.config.in_channels
            );
        }
        self.input_whitening = Some(InputWhitening::Kernel(Tensor::from_slice(
            &filter.weights,
            (filter.channels, 1, filter.size, filter.size),
            device,
        )?));
        Ok(())
    }

    /// Sets the input filter from its stored tensor (C×1×k×k).
    pub fn set_input_filter_tensor(&mut self, filter: Tensor) -> Result<()> {
        let (c, one, kh, kw) = filter.dims4()?;
        if c != self.config.in_channels || one != 1 || kh != kw || kh % 2 == 0 {
            candle_core::bail!(
                "input filter of shape {:?}, expected {}x1xkxk with k odd",
                filter.dims(),
                self.config.in_channels
            );
        }
        self.input_whitening = Some(InputWhitening::Kernel(filter));
        Ok(())
    }

    /// Sets the fixed input whitening matrix.
    pub fn set_input_matrix(
        &mut self,
        whitening: &crate::whitening::WhiteningMatrix,
        device: &candle_core::Device,
    ) -> Result<()> {
        let d = whitening.mean.len();
        self.set_input_matrix_tensors(
            Tensor::from_slice(&whitening.mean, (1, d), device)?,
            Tensor::from_slice(&whitening.matrix, (d, d), device)?,
        )
    }

    /// Sets the input whitening from its stored tensors (mean 1×d, matrix d×d).
    pub fn set_input_matrix_tensors(&mut self, mean: Tensor, matrix: Tensor) -> Result<()> {
        let (one, d) = mean.dims2()?;
        let (rows, cols) = matrix.dims2()?;
        if one != 1 || rows != d || cols != d || d % self.config.in_channels != 0 {
            candle_core::bail!(
                "input whitening of shapes {:?} and {:?}, expected 1xd and dxd with d a multiple of {} channels",
                mean.dims(),
                matrix.dims(),
                self.config.in_channels
            );
        }
        self.input_whitening = Some(InputWhitening::Matrix { mean, matrix });
        Ok(())
    }

    pub fn input_whitening(&self) -> Option<&InputWhitening> {
        self.input_whitening.as_ref()
    }

    /// Un-normalised features (B×dim) of a float batch (B×C×H×W).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let pass = Pass {
            train,
            kernels: self.kernels.resolve(x.device())?,
        };
        let filtered;
        let x = match &self.input_whitening {
            Some(InputWhitening::Kernel(filter)) => {
                let (c, _, k, _) = filter.dims4()?;
                filtered = x.conv2d(filter, k / 2, 1, 1, c)?;
                &filtered
            }
            Some(InputWhitening::Matrix { mean, matrix }) => {
                filtered = x
                    .flatten_from(1)?
                    .broadcast_sub(mean)?
                    .matmul(matrix)?
                    .reshape(x.dims())?;
                &filtered
            }
            None => x,
        };
        // The trunk runs channels-last (see `crate::kernels`).
        let mut h = x.permute((0, 2, 3, 1))?.contiguous()?;
        match &self.trunk {
            Trunk::Small(layers) => {
                for layer in layers {
                    h = layer.forward_t(&h, pass)?;
                }
            }
            Trunk::Resnet { stem, blocks } => {
                h = stem.forward_t(&h, pass)?;
                for block in blocks {
                    h = block.forward_t(&h, pass)?;
                }
            }
        }
        // Global average pooling over H and W.
        let pooled = crate::kernels::mean_pool_nhwc(&h)?;
        let out = self.head.forward(&pooled)?;
        match &self.head_norm {
            Some(bn) => bn.forward_rows(&out, pass, false),
            None => Ok(out),
        }
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
