//! A CPU convolution followed by training-mode batch norm (and ReLU) as one autograd node.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::batch_norm::{
    block_moments, bn_backward_coefficients, bn_backward_rows, bn_normalize, combine_moments,
    BnAffine,
};
use super::conv::{
    conv_backward_packed, conv_backward_recomputing, conv_forward_cpu_then, conv_rows,
    split_conv_grads, weight_by_output, KeepColumns,
};
use super::simd::Simd;
use super::{dims4, f32_contiguous, ConvGeometry};

/// What a fused convolution + batch norm keeps from its forward pass for the backward. Not
/// the im2col matrix: the backward builds each task's columns again while they are in cache,
/// which is cheaper than writing the whole matrix to memory and reading it back.
pub(super) struct ConvBnSaved {
    /// The convolution's output, the batch norm's input.
    conv_out: Vec<f32>,
    /// The weight the forward pass used, by output channel: (C_out, K·K·C_in), the layout the
    /// backward's dY·Wᵀ takes ([`weight_by_output`]); γ and β.
    w_by_output: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

/// A CPU convolution followed by training-mode batch norm (and ReLU when `relu`) as one
/// autograd node over (x (B, H, W, C_in), wt (K·K·C_in, C_out), γβ (2, C_out)). As two nodes,
/// candle's autograd zero-filled a gradient buffer the size of the convolution's output and
/// added the batch norm's input gradient into it, every layer; here that gradient exists only
/// a task's rows at a time, inside the backward pass.
pub(super) struct ConvBnCpu {
    geometry: ConvGeometry,
    eps: f64,
    relu: bool,
    saved: Arc<Mutex<Option<ConvBnSaved>>>,
}

impl CustomOp3 for ConvBnCpu {
    fn name(&self) -> &'static str {
        "conv-bn-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_contiguous(s1, l1, self.name())?;
        let wt = f32_contiguous(s2, l2, self.name())?;
        let gamma_beta = f32_contiguous(s3, l3, self.name())?;
        let dims = dims4(l1, self.name())?;
        let (k, cout) = l2.shape().dims2()?;
        if l3.shape().dims2()? != (2, cout) {
            candle_core::bail!(
                "{}: γβ must be (2, {cout}), got {:?}",
                self.name(),
                l3.dims()
            );
        }
        let (gamma, beta) = gamma_beta.split_at(cout);
        // The batch statistics come from each convolution task's output while it is still in
        // cache, which saves the batch norm two passes over the whole output.
        let simd = Simd::current();
        // The backward's copy of the weight is transposed here, by whichever thread is free
        // while the other runs convolution tasks.
        let (forward, w_by_output) = rayon::join(
            || {
                conv_forward_cpu_then(x, dims, wt, cout, self.geometry, KeepColumns::No, |rows| {
                    block_moments(simd, rows, cout)
                })
            },
            || weight_by_output(wt, (k, cout)),
        );
        let (conv_out, _, blocks) = forward?;
        let (mean, var) = combine_moments(&blocks, cout);
        let (b, h, w, _) = dims;
        let (oh, ow) = (self.geometry.output_size(h), self.geometry.output_size(w));
        let m = b * oh * ow;
        let affine = BnAffine::new(gamma, beta, self.eps, (&mean, &var));
        let y = bn_normalize(simd, &conv_out, (m, cout), &affine, self.relu);
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some(ConvBnSaved {
                conv_out,
                w_by_output,
                gamma: gamma.to_vec(),
                beta: beta.to_vec(),
                mean,
                var,
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((b, oh, ow, cout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _gamma_beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = grad.contiguous()?.apply_op2_no_bwd(
            &x.contiguous()?,
            &ConvBnCpuBackward {
                geometry: self.geometry,
                eps: self.eps,
                relu: self.relu,
                saved: self.saved.clone(),
                need_dx: x.track_op(),
            },
        )?;
        let (k, cout) = wt.dims2()?;
        let (dx, dwt, dgb) = split_conv_grads(&packed, x.dims4()?, (k, cout), x.track_op())?;
        Ok((dx, Some(dwt), Some(dgb.reshape((2, cout))?)))
    }
}

/// Backward of [`ConvBnCpu`] over (dy, x): one flat tensor, dX (B·H·W·C_in, when
/// `need_dx`), dW (K·K·C_in·C_out), then dγ and dβ (C_out each).
pub(super) struct ConvBnCpuBackward {
    geometry: ConvGeometry,
    eps: f64,
    relu: bool,
    saved: Arc<Mutex<Option<ConvBnSaved>>>,
    /// Whether x needs a gradient (it does not when nothing before it has parameters).
    need_dx: bool,
}

impl CustomOp2 for ConvBnCpuBackward {
    fn name(&self) -> &'static str {
        "conv-bn-cpu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dy = f32_contiguous(s1, l1, self.name())?;
        let x = f32_contiguous(s2, l2, self.name())?;
        let (b, oh, ow, cout) = dims4(l1, self.name())?;
        let m = b * oh * ow;
        let dims = dims4(l2, self.name())?;
        let guard = self.saved.lock().map_err(|_| {
            candle_core::Error::Msg("conv-bn backward: forward state poisoned".into())
        })?;
        let saved = guard.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("conv-bn backward without its forward pass".into())
        })?;
        if saved.conv_out.len() != m * cout {
            candle_core::bail!("conv-bn backward: gradient does not match the forward pass");
        }
        // dγ, dβ and the coefficients of the batch norm's input gradient in one sweep; that
        // gradient, the convolution's output gradient, is then computed task by task inside
        // the convolution's backward, where its rows are used. The ReLU's mask comes from the
        // convolution's output and the forward pass's map (rebuilt from γ, β and the
        // statistics), so the node's output is not read.
        let simd = Simd::current();
        let coefficients = bn_backward_coefficients(
            simd,
            (&saved.conv_out, dy),
            (m, cout),
            (&saved.gamma, &saved.beta),
            (&saved.mean, &saved.var),
            self.eps,
            self.relu,
        );
        let tail: Vec<f32> = coefficients
            .dgamma
            .iter()
            .chain(&coefficients.dbeta)
            .copied()
            .collect();
        let dy_rows = |rows: std::ops::Range<usize>, dconv: &mut [_]| {
            let r = rows.start * cout..rows.end * cout;
            let inputs = (&saved.conv_out[r.clone()], &dy[r]);
            simd.run(
                #[inline(always)]
                || bn_backward_rows(&coefficients, inputs, dconv),
            );
        };
        let out = conv_backward_packed(
            (x.len(), saved.w_by_output.len()),
            self.need_dx,
            &tail,
            |dx, dwt| {
                conv_backward_recomputing(
                    x,
                    dims,
                    &saved.w_by_output,
                    cout,
                    self.geometry,
                    dy_rows,
                    dx,
                    dwt,
                )
            },
        )?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// A convolution of channels-last `x` (B, H, W, C_in) with `weight` (C_out, C_in, K, K),
/// then training-mode batch norm with `gamma` and `beta` (and ReLU when `relu`), on the CPU
/// as one autograd node ([`ConvBnCpu`]). Returns the channels-last output (B, OH, OW, C_out)
/// and the batch (mean, biased variance) for the running averages. The node's output is
/// channels-last itself, so a following layer takes it without a reshape node (each node
/// between two layers costs a zero-filled gradient buffer and an add in candle's backward).
#[allow(clippy::type_complexity)]
pub fn conv_bn_train(
    x: &Tensor,
    weight: &Tensor,
    geometry: ConvGeometry,
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
) -> Result<(Tensor, (Vec<f32>, Vec<f32>))> {
    let saved = Arc::new(Mutex::new(None));
    let (y, _) = conv_rows(x, weight, geometry, |x, wt, geometry| {
        let gamma_beta = Tensor::stack(&[gamma, beta], 0)?;
        x.contiguous()?.apply_op3(
            wt,
            &gamma_beta,
            ConvBnCpu {
                geometry,
                eps,
                relu,
                saved: saved.clone(),
            },
        )
    })?;
    let stats = saved
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(|s| (s.mean.clone(), s.var.clone())));
    let stats =
        stats.ok_or_else(|| candle_core::Error::Msg("conv-bn ran without statistics".into()))?;
    Ok((y, stats))
}
