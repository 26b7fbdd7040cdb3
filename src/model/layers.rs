//! The layers the encoders are built from: bias-free convolutions and row batch norms on
//! channels-last activations, conv-bn(-ReLU) blocks and ResNet basic blocks. A [`Pass`] says
//! whether a forward pass trains and which kernels run it.

use candle_core::{Result, Tensor, Var};
use candle_nn::VarBuilder;

use crate::kernels::{
    batch_norm_rows_train, conv2d_nhwc_rows, conv2d_nhwc_rows_portable, conv_bn_train,
    ConvGeometry, Kernels,
};

/// One forward pass: training mode (batch statistics, running averages updated) or not, and
/// the kernels that run it (resolved for the input's device).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pass {
    pub train: bool,
    pub kernels: Kernels,
}

impl Pass {
    /// Whether this pass on `device` runs the fused CPU training kernels (the fused batch norm,
    /// and convolution + batch norm as one node).
    fn fused_cpu_training(&self, device: &candle_core::Device) -> bool {
        self.train && device.is_cpu() && self.kernels == Kernels::Fused
    }
}

/// Batch normalisation over the rows of an (N, C) matrix of channels-last activations.
/// Batch statistics are reductions by matrix product (a ones row times the activations), which
/// candle runs on both cores; running statistics follow PyTorch (momentum 0.1, unbiased var).
#[derive(Debug, Clone)]
pub(crate) struct RowBatchNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) running_mean: Var,
    pub(crate) running_var: Var,
    pub(crate) eps: f64,
    pub(crate) momentum: f64,
}

impl RowBatchNorm {
    pub(crate) fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
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
    pub(crate) fn forward_rows(&self, x: &Tensor, pass: Pass, relu: bool) -> Result<Tensor> {
        let (n, c) = x.dims2()?;
        if pass.fused_cpu_training(x.device()) {
            // Fused kernel: one sweep per pass instead of candle's broadcast reductions.
            let (y, mean, var) =
                batch_norm_rows_train(x, &self.weight, &self.bias, self.eps, relu)?;
            self.update_running_from((mean, var), n)?;
            return Ok(y);
        }
        let (centered, var) = if pass.train {
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
pub(crate) struct Conv {
    pub(crate) weight: Tensor,
    pub(crate) geometry: ConvGeometry,
}

impl Conv {
    pub(crate) fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
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

    pub(crate) fn rows(&self, x: &Tensor, pass: Pass) -> Result<(Tensor, (usize, usize, usize))> {
        match pass.kernels {
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
pub(crate) fn conv_bn_rows(
    conv: &Conv,
    bn: &RowBatchNorm,
    x: &Tensor,
    pass: Pass,
    relu: bool,
) -> Result<(Tensor, (usize, usize, usize))> {
    if pass.fused_cpu_training(x.device()) {
        let y = fused_conv_bn(conv, bn, x, relu)?;
        let (b, oh, ow, c) = y.dims4()?;
        return Ok((y.reshape((b * oh * ow, c))?, (b, oh, ow)));
    }
    let (rows, dims) = conv.rows(x, pass)?;
    Ok((bn.forward_rows(&rows, pass, relu)?, dims))
}

/// [`conv_bn_rows`] reshaped to channels-last (B, OH, OW, C_out). The fused CPU node returns
/// that shape itself, which keeps a reshape node out of the graph between two layers.
pub(crate) fn conv_bn_nhwc(
    conv: &Conv,
    bn: &RowBatchNorm,
    x: &Tensor,
    pass: Pass,
    relu: bool,
) -> Result<Tensor> {
    if pass.fused_cpu_training(x.device()) {
        return fused_conv_bn(conv, bn, x, relu);
    }
    let (rows, (b, oh, ow)) = conv_bn_rows(conv, bn, x, pass, relu)?;
    let c = rows.dim(1)?;
    rows.reshape((b, oh, ow, c))
}

/// The fused CPU training node, with the batch norm's running averages updated.
fn fused_conv_bn(conv: &Conv, bn: &RowBatchNorm, x: &Tensor, relu: bool) -> Result<Tensor> {
    let (y, stats) = conv_bn_train(
        x,
        &conv.weight,
        conv.geometry,
        (&bn.weight, &bn.bias),
        bn.eps,
        relu,
    )?;
    let (b, oh, ow, _) = y.dims4()?;
    bn.update_running_from(stats, b * oh * ow)?;
    Ok(y)
}

/// conv → batch norm → ReLU, channels-last in and out.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    pub(crate) conv: Conv,
    pub(crate) bn: RowBatchNorm,
}

impl ConvBn {
    pub(crate) fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: Conv::new(cin, cout, 3, stride, vb.pp("conv"))?,
            bn: RowBatchNorm::new(cout, vb.pp("bn"))?,
        })
    }

    pub(crate) fn forward_t(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        conv_bn_nhwc(&self.conv, &self.bn, x, pass, true)
    }
}

/// ResNet basic block: two 3×3 conv-bn, identity or 1×1-conv shortcut.
#[derive(Debug, Clone)]
pub(crate) struct BasicBlock {
    pub(crate) conv1: Conv,
    pub(crate) bn1: RowBatchNorm,
    pub(crate) conv2: Conv,
    pub(crate) bn2: RowBatchNorm,
    pub(crate) shortcut: Option<(Conv, RowBatchNorm)>,
}

impl BasicBlock {
    pub(crate) fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
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

    pub(crate) fn forward_t(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let y = conv_bn_nhwc(&self.conv1, &self.bn1, x, pass, true)?;
        let (b, oh, ow, c) = y.dims4()?;
        let (y, _) = conv_bn_rows(&self.conv2, &self.bn2, &y, pass, false)?;
        let s = match &self.shortcut {
            Some((conv, bn)) => conv_bn_rows(conv, bn, x, pass, false)?.0,
            None => x.reshape((b * oh * ow, c))?,
        };
        (y + s)?.relu()?.reshape((b, oh, ow, c))
    }
}
