//! The encoders of IDFD and cIDFD in candle. Device-agnostic: every tensor is created on the
//! device of the `VarBuilder`, so CUDA is one feature flag and one `Device` away.

use candle_core::{Module, Result, Tensor, Var, D};
use candle_nn::{linear, Linear, VarBuilder};

use crate::nhwc::{
    batch_norm_rows_train, conv2d_nhwc_rows, conv2d_nhwc_rows_portable, conv_bn_rows_train,
    ConvGeometry,
};
use serde::{Deserialize, Serialize};

/// Which kernels run an encoder's convolutions and training-mode batch norms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernels {
    /// The device's best: `fused` on the CPU and on CUDA (with the `cuda` feature), `portable`
    /// elsewhere.
    #[default]
    Auto,
    /// The channels-last kernels of `nhwc`: im2col + one matrix product per convolution, with
    /// fused batch norm on the CPU. On CUDA (with the `cuda` feature) im2col and col2im run as
    /// salient's own kernels and batch norm as candle ops.
    Fused,
    /// Compositions of candle ops around one matrix product per convolution: any device.
    Portable,
    /// candle's own conv2d (cuDNN where the `cudnn` feature is on) and portable batch norm.
    Candle,
}

thread_local! {
    static KERNELS: std::cell::Cell<Kernels> = const { std::cell::Cell::new(Kernels::Auto) };
}

/// Runs `f` with the encoders of this thread using `kernels` (benchmarks and tests compare
/// them; training leaves the default, `auto`).
pub fn with_kernels<R>(kernels: Kernels, f: impl FnOnce() -> R) -> R {
    struct Restore(Kernels);
    impl Drop for Restore {
        fn drop(&mut self) {
            KERNELS.set(self.0);
        }
    }
    let _restore = Restore(KERNELS.replace(kernels));
    f()
}

/// The kernels that run on `device` (`auto` resolved).
fn kernels_for(device: &candle_core::Device) -> Result<Kernels> {
    match (KERNELS.get(), device.is_cpu()) {
        (Kernels::Auto, true) => Ok(Kernels::Fused),
        (Kernels::Auto, false) if cfg!(feature = "cuda") && device.is_cuda() => Ok(Kernels::Fused),
        (Kernels::Auto, false) => Ok(Kernels::Portable),
        (Kernels::Fused, false) if !cfg!(feature = "cuda") => {
            candle_core::bail!("the fused kernels run on the CPU, or on CUDA with the cuda feature")
        }
        (k, _) => Ok(k),
    }
}

/// Whether a training-mode pass on `device` runs the fused CPU kernels (the fused batch norm,
/// and convolution + batch norm as one node).
fn fused_cpu_training(device: &candle_core::Device, train: bool) -> Result<bool> {
    Ok(train && device.is_cpu() && kernels_for(device)? == Kernels::Fused)
}

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
    /// The first-stage width METHOD.md's encoders use.
    pub fn default_width(&self) -> usize {
        match self {
            Architecture::SmallCnn => 32,
            Architecture::Resnet18 => 64,
        }
    }
}

/// Batch normalisation over the rows of an (N, C) matrix of channels-last activations.
/// Batch statistics are reductions by matrix product (a ones row times the activations), which
/// candle runs on both cores; running statistics follow PyTorch (momentum 0.1, unbiased var).
#[derive(Debug, Clone)]
struct RowBatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl RowBatchNorm {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        use candle_nn::Init;
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
        Ok(Self {
            weight: vb.get_with_hints(channels, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(channels, "bias", Init::Const(0.))?,
            // Shares storage with the VarMap's variable, so updates reach checkpoints.
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// PyTorch's running averages: momentum 0.1, unbiased variance.
    fn update_running(&self, mean: &Tensor, biased_var: &Tensor, n: usize) -> Result<()> {
        let m = self.momentum;
        let unbiased = n as f64 / (n as f64 - 1.0).max(1.0);
        self.running_mean
            .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * (1.0 - m))? + (biased_var * (m * unbiased))?)?)
    }

    /// The running averages from batch statistics computed by a CPU kernel, over `n` rows.
    fn update_running_from(&self, (mean, var): (Vec<f32>, Vec<f32>), n: usize) -> Result<()> {
        let device = self.running_mean.device();
        let c = mean.len();
        self.update_running(
            &Tensor::from_vec(mean, c, device)?,
            &Tensor::from_vec(var, c, device)?,
            n,
        )
    }

    /// Batch norm of (N, C) rows, then ReLU when `relu`.
    fn forward_rows(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let (n, c) = x.dims2()?;
        if fused_cpu_training(x.device(), train)? {
            // Fused kernel: one sweep per pass instead of candle's broadcast reductions.
            let (y, mean, var) =
                batch_norm_rows_train(x, &self.weight, &self.bias, self.eps, relu)?;
            self.update_running_from((mean, var), n)?;
            return Ok(y);
        }
        let (centered, var) = if train {
            let avg = (Tensor::ones((1, n), x.dtype(), x.device())? / n as f64)?;
            let mean = avg.matmul(x)?;
            let centered = x.broadcast_sub(&mean)?;
            let var = avg.matmul(&centered.sqr()?)?;
            self.update_running(&mean.detach().reshape(c)?, &var.detach().reshape(c)?, n)?;
            (centered, var)
        } else {
            let mean = self.running_mean.as_tensor().reshape((1, c))?;
            (
                x.broadcast_sub(&mean)?,
                self.running_var.as_tensor().reshape((1, c))?,
            )
        };
        let scale = self
            .weight
            .reshape((1, c))?
            .broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let y = centered
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.reshape((1, c))?)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
}

/// A bias-free convolution on channels-last activations, returning (B·OH·OW, C_out) rows.
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    geometry: ConvGeometry,
}

impl Conv {
    fn new(cin: usize, cout: usize, kernel: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin, kernel, kernel),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok(Self {
            weight,
            geometry: ConvGeometry {
                kernel,
                stride,
                padding: kernel / 2,
            },
        })
    }

    fn rows(&self, x: &Tensor) -> Result<(Tensor, (usize, usize, usize))> {
        match kernels_for(x.device())? {
            Kernels::Fused => conv2d_nhwc_rows(x, &self.weight, self.geometry),
            Kernels::Candle => {
                let g = self.geometry;
                let y = x
                    .permute((0, 3, 1, 2))?
                    .conv2d(&self.weight, g.padding, g.stride, 1, 1)?;
                let (b, c, oh, ow) = y.dims4()?;
                let rows = y.permute((0, 2, 3, 1))?.reshape((b * oh * ow, c))?;
                Ok((rows, (b, oh, ow)))
            }
            Kernels::Auto | Kernels::Portable => {
                conv2d_nhwc_rows_portable(x, &self.weight, self.geometry)
            }
        }
    }
}

/// `conv` then `bn` (then ReLU when `relu`) on channels-last `x`: the (B·OH·OW, C_out) rows
/// and (B, OH, OW). Training on the CPU with the fused kernels runs them as one autograd node.
fn conv_bn_rows(
    conv: &Conv,
    bn: &RowBatchNorm,
    x: &Tensor,
    train: bool,
    relu: bool,
) -> Result<(Tensor, (usize, usize, usize))> {
    if fused_cpu_training(x.device(), train)? {
        let (rows, dims, stats) = conv_bn_rows_train(
            x,
            &conv.weight,
            conv.geometry,
            (&bn.weight, &bn.bias),
            bn.eps,
            relu,
        )?;
        bn.update_running_from(stats, rows.dim(0)?)?;
        return Ok((rows, dims));
    }
    let (rows, dims) = conv.rows(x)?;
    Ok((bn.forward_rows(&rows, train, relu)?, dims))
}

/// conv → batch norm → ReLU, channels-last in and out.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv,
    bn: RowBatchNorm,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv::new(cin, cout, 3, stride, vb.pp("conv"))?,
            bn: RowBatchNorm::new(cout, vb.pp("bn"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (rows, (b, oh, ow)) = conv_bn_rows(&self.conv, &self.bn, x, train, true)?;
        let c = rows.dim(1)?;
        rows.reshape((b, oh, ow, c))
    }
}

/// ResNet basic block: two 3×3 conv-bn, identity or 1×1-conv shortcut.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv,
    bn1: RowBatchNorm,
    conv2: Conv,
    bn2: RowBatchNorm,
    shortcut: Option<(Conv, RowBatchNorm)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some((
                Conv::new(cin, cout, 1, stride, vb.pp("shortcut.conv"))?,
                RowBatchNorm::new(cout, vb.pp("shortcut.bn"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv::new(cin, cout, 3, stride, vb.pp("conv1"))?,
            bn1: RowBatchNorm::new(cout, vb.pp("bn1"))?,
            conv2: Conv::new(cout, cout, 3, 1, vb.pp("conv2"))?,
            bn2: RowBatchNorm::new(cout, vb.pp("bn2"))?,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (rows, (b, oh, ow)) = conv_bn_rows(&self.conv1, &self.bn1, x, train, true)?;
        let c = rows.dim(1)?;
        let y = rows.reshape((b, oh, ow, c))?;
        let (y, _) = conv_bn_rows(&self.conv2, &self.bn2, &y, train, false)?;
        let s = match &self.shortcut {
            Some((conv, bn)) => conv_bn_rows(conv, bn, x, train, false)?.0,
            None => x.reshape((b * oh * ow, c))?,
        };
        (y + s)?.relu()?.reshape((b, oh, ow, c))
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
    /// Fixed depthwise filter applied to the input before the trunk (reference whitening,
    /// C×1×k×k); not a parameter: it is fitted to the reference set, never trained.
    input_filter: Option<Tensor>,
    trunk: Trunk,
    head: Linear,
    head_norm: Option<RowBatchNorm>,
    pub config: EncoderConfig,
}

/// Name of the salient encoder's input filter in `model.safetensors`.
pub const INPUT_FILTER_TENSOR: &str = "salient.input_whitening";

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
            input_filter: None,
            trunk,
            head,
            head_norm,
            config,
        })
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
        self.input_filter = Some(Tensor::from_slice(
            &filter.weights,
            (filter.channels, 1, filter.size, filter.size),
            device,
        )?);
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
        self.input_filter = Some(filter);
        Ok(())
    }

    pub fn input_filter(&self) -> Option<&Tensor> {
        self.input_filter.as_ref()
    }

    /// Un-normalised features (B×dim) of a float batch (B×C×H×W).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let filtered;
        let x = match &self.input_filter {
            Some(filter) => {
                let (c, _, k, _) = filter.dims4()?;
                filtered = x.conv2d(filter, k / 2, 1, 1, c)?;
                &filtered
            }
            None => x,
        };
        // The trunk runs channels-last (see `nhwc`).
        let mut h = x.permute((0, 2, 3, 1))?.contiguous()?;
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
        let (b, hh, ww, c) = h.dims4()?;
        let pooled = h.reshape((b, hh * ww, c))?.mean(1)?;
        let out = self.head.forward(&pooled)?;
        match &self.head_norm {
            Some(bn) => bn.forward_rows(&out, train, false),
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

/// ONNX export of the encoder in inference mode (running batch-norm statistics), with each
/// batch norm folded into the convolution or linear layer before it.
mod onnx_export {
    use super::*;
    use crate::export::{attr_int, attr_ints, GraphBuilder};

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()
    }

    impl RowBatchNorm {
        /// Per-channel (scale, shift) of the inference-mode normalisation.
        fn affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
            let (w, b) = (values(&self.weight)?, values(&self.bias)?);
            let (m, v) = (
                values(self.running_mean.as_tensor())?,
                values(self.running_var.as_tensor())?,
            );
            let scale: Vec<f32> = w
                .iter()
                .zip(&v)
                .map(|(w, v)| (f64::from(*w) / (f64::from(*v) + self.eps).sqrt()) as f32)
                .collect();
            let shift = b
                .iter()
                .zip(&m)
                .zip(&scale)
                .map(|((b, m), s)| b - m * s)
                .collect();
            Ok((scale, shift))
        }
    }

    impl Conv {
        /// Conv with the batch norm folded in: W' = W·scale (per output channel), B = shift.
        fn export_with_bn(
            &self,
            bn: &RowBatchNorm,
            g: &mut GraphBuilder,
            x: &str,
        ) -> Result<String> {
            let (cout, cin, kh, kw) = self.weight.dims4()?;
            let (scale, shift) = bn.affine()?;
            let mut w = values(&self.weight)?;
            for (o, chunk) in w.chunks_exact_mut(cin * kh * kw).enumerate() {
                chunk.iter_mut().for_each(|v| *v *= scale[o]);
            }
            let w = g.constant_f32("conv_weight", &[cout, cin, kh, kw], &w);
            let b = g.constant_f32("conv_bias", &[cout], &shift);
            let geo = self.geometry;
            let (k, s, p) = (geo.kernel as i64, geo.stride as i64, geo.padding as i64);
            Ok(g.node(
                "Conv",
                &[x, &w, &b],
                vec![
                    attr_ints("kernel_shape", &[k, k]),
                    attr_ints("strides", &[s, s]),
                    attr_ints("pads", &[p, p, p, p]),
                ],
                None,
            ))
        }
    }

    impl Encoder {
        /// Appends the encoder to `g` with `x` (float N×C×H×W) as input; returns the name of the
        /// un-normalised features (N×dim).
        pub(crate) fn export_onnx(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
            let mut h = x.to_string();
            if let Some(filter) = &self.input_filter {
                let (c, one, k, _) = filter.dims4()?;
                let w = g.constant_f32("input_whitening", &[c, one, k, k], &values(filter)?);
                let (k, p) = (k as i64, (k / 2) as i64);
                h = g.node(
                    "Conv",
                    &[&h, &w],
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("pads", &[p, p, p, p]),
                        attr_int("group", c as i64),
                    ],
                    None,
                );
            }
            let conv_bn_relu = |g: &mut GraphBuilder, layer: &ConvBn, x: &str| -> Result<String> {
                let y = layer.conv.export_with_bn(&layer.bn, g, x)?;
                Ok(g.node("Relu", &[&y], vec![], None))
            };
            match &self.trunk {
                Trunk::Small(layers) => {
                    for layer in layers {
                        h = conv_bn_relu(g, layer, &h)?;
                    }
                }
                Trunk::Resnet { stem, blocks } => {
                    h = conv_bn_relu(g, stem, &h)?;
                    for block in blocks {
                        let y = block.conv1.export_with_bn(&block.bn1, g, &h)?;
                        let y = g.node("Relu", &[&y], vec![], None);
                        let y = block.conv2.export_with_bn(&block.bn2, g, &y)?;
                        let s = match &block.shortcut {
                            Some((conv, bn)) => conv.export_with_bn(bn, g, &h)?,
                            None => h.clone(),
                        };
                        let sum = g.node("Add", &[&y, &s], vec![], None);
                        h = g.node("Relu", &[&sum], vec![], None);
                    }
                }
            }
            let pooled = g.node("GlobalAveragePool", &[&h], vec![], None);
            let flat = g.node("Flatten", &[&pooled], vec![attr_int("axis", 1)], None);
            // candle's Linear weight is (out, in): Gemm with transB = 1, head batch norm folded.
            let (out, inp) = self.head.weight().dims2()?;
            let mut w = values(self.head.weight())?;
            let mut b = match self.head.bias() {
                Some(b) => values(b)?,
                None => vec![0.0; out],
            };
            if let Some(bn) = &self.head_norm {
                let (scale, shift) = bn.affine()?;
                for (o, row) in w.chunks_exact_mut(inp).enumerate() {
                    row.iter_mut().for_each(|v| *v *= scale[o]);
                    b[o] = b[o] * scale[o] + shift[o];
                }
            }
            let w = g.constant_f32("head_weight", &[out, inp], &w);
            let b = g.constant_f32("head_bias", &[out], &b);
            Ok(g.node("Gemm", &[&flat, &w, &b], vec![attr_int("transB", 1)], None))
        }
    }
}

/// A trained model directory loaded with candle: the salient encoder, its preprocessing and
/// centroids. `export` builds the ONNX graph from it; the ONNX parity tests compare against it.
pub struct TrainedModel {
    pub manifest: crate::manifest::Manifest,
    pub encoder: Encoder,
    pub centroids: Vec<f32>,
}

impl TrainedModel {
    pub fn load(dir: &std::path::Path) -> crate::Result<Self> {
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
        let input_filter = if manifest.config.whitening_kernel > 0 {
            Some(
                tensors
                    .get(INPUT_FILTER_TENSOR)
                    .cloned()
                    .ok_or_else(|| Error::File {
                        path: weights.clone(),
                        message: format!(
                            "no `{INPUT_FILTER_TENSOR}` tensor, though the manifest sets whitening_kernel = {}",
                            manifest.config.whitening_kernel
                        ),
                    })?,
            )
        } else {
            None
        };
        let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device);
        let mut encoder = Encoder::new(
            EncoderConfig {
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
        if let Some(filter) = input_filter {
            encoder
                .set_input_filter_tensor(filter)
                .map_err(|e| Error::File {
                    path: weights.clone(),
                    message: format!("`{INPUT_FILTER_TENSOR}`: {e}"),
                })?;
        }
        Ok(Self {
            manifest,
            encoder,
            centroids,
        })
    }

    /// Salient embeddings (n×d) of decoded uint8 images (n×C×H×W).
    pub fn embed(&self, pixels: &[u8]) -> crate::Result<Vec<f32>> {
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
    pub fn assign(&self, embeddings: &[f32]) -> crate::Result<Vec<(u32, f32)>> {
        Ok(crate::cluster::assign(
            embeddings,
            self.manifest.d,
            &self.centroids,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// max |a − b| over max |b|, where scales under 1e-2 count as 1e-2 (a gradient that is
    /// zero in exact arithmetic, such as a bias under batch norm, is rounding noise in both).
    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-2)
    }

    /// max |t| over every element.
    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The kernels the GPU runs (portable, candle) compute the same training-mode forward pass,
    /// the same gradients and the same batch-norm running statistics as the fused CPU kernels,
    /// for both architectures. Checked here on the CPU, where all three run.
    #[test]
    fn all_kernels_agree_forward_and_backward() {
        use rand::{Rng, SeedableRng};
        for (architecture, head_norm) in [
            (Architecture::SmallCnn, false),
            (Architecture::Resnet18, true),
        ] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let config = EncoderConfig {
                architecture,
                in_channels: 1,
                dim: 16,
                width: 4,
                head_norm,
            };
            let encoder = Encoder::new(config, vb).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
            let pixels: Vec<f32> = (0..6 * 28 * 28)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let x = Tensor::from_vec(pixels, (6, 1, 28, 28), &Device::Cpu).unwrap();
            let up = Tensor::from_vec(
                (0..6 * 16)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect(),
                (6, 16),
                &Device::Cpu,
            )
            .unwrap();
            // Gradients, and the batch norms' running statistics after one training-mode pass
            // from their initial values (mean 0, variance 1).
            let run = |kernels| {
                with_kernels(kernels, || {
                    let is_running =
                        |n: &str| n.ends_with("running_mean") || n.ends_with("running_var");
                    for (n, v) in varmap.data().lock().unwrap().iter() {
                        if n.ends_with("running_mean") {
                            v.set(&v.zeros_like().unwrap()).unwrap();
                        } else if n.ends_with("running_var") {
                            v.set(&v.ones_like().unwrap()).unwrap();
                        }
                    }
                    let y = encoder.features(&x, true).unwrap();
                    let grads = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
                    let vars = varmap.data().lock().unwrap();
                    let mut named: Vec<(String, Tensor)> = vars
                        .iter()
                        .filter_map(|(n, v)| grads.get(v).map(|g| (n.clone(), g.clone())))
                        .collect();
                    named.sort_by(|a, b| a.0.cmp(&b.0));
                    let mut running: Vec<(String, Tensor)> = vars
                        .iter()
                        .filter(|(n, _)| is_running(n))
                        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
                        .collect();
                    running.sort_by(|a, b| a.0.cmp(&b.0));
                    (y, named, running)
                })
            };
            let (y_fused, g_fused, r_fused) = run(Kernels::Fused);
            assert!(g_fused.len() > 10, "{architecture:?}: too few gradients");
            assert!(
                r_fused.len() >= 8,
                "{architecture:?}: too few running statistics"
            );
            for (name, r) in &r_fused {
                let moved = if name.ends_with("running_mean") {
                    r.abs().unwrap().max_all().unwrap()
                } else {
                    (r - 1.0).unwrap().abs().unwrap().max_all().unwrap()
                };
                let moved = moved.to_scalar::<f32>().unwrap();
                assert!(moved > 1e-6, "{architecture:?}: {name} was not updated");
            }
            for kernels in [Kernels::Portable, Kernels::Candle] {
                let (y, g, r) = run(kernels);
                let d = max_rel_diff(&y, &y_fused);
                assert!(d < 1e-4, "{architecture:?} {kernels:?} forward: {d}");
                assert_eq!(r.len(), r_fused.len(), "{architecture:?} {kernels:?}");
                for ((name, a), (_, b)) in r.iter().zip(&r_fused) {
                    let d = max_rel_diff(a, b);
                    assert!(d < 1e-4, "{architecture:?} {kernels:?} {name}: {d}");
                }
                assert_eq!(g.len(), g_fused.len(), "{architecture:?} {kernels:?}");
                // Gradients are compared against the largest gradient of their kind (weights,
                // batch-norm scales, biases): a bias gradient that nearly cancels out to zero is
                // a sum of terms of the usual size, and summation order alone moves it by far
                // more than its own magnitude's 1e-3.
                let kind_scale = |suffix: &str| {
                    g_fused
                        .iter()
                        .filter(|(n, _)| n.ends_with(suffix))
                        .map(|(_, t)| max_abs(t))
                        .fold(1e-2f32, f32::max)
                };
                for ((name, a), (_, b)) in g.iter().zip(&g_fused) {
                    let suffix = name.rsplit('.').next().unwrap_or("");
                    let abs = max_abs(&(a - b).unwrap());
                    let d = abs / kind_scale(suffix);
                    assert!(
                        d < 1e-3,
                        "{architecture:?} {kernels:?} gradient of {name}: {d} (max |diff| {abs})"
                    );
                }
            }
        }
    }

    #[test]
    fn kernel_choice_is_scoped_to_the_closure() {
        assert_eq!(kernels_for(&Device::Cpu).unwrap(), Kernels::Fused);
        with_kernels(Kernels::Portable, || {
            assert_eq!(kernels_for(&Device::Cpu).unwrap(), Kernels::Portable)
        });
        assert_eq!(kernels_for(&Device::Cpu).unwrap(), Kernels::Fused);
    }
}
