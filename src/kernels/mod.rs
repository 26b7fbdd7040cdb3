//! Channels-last (NHWC) kernels as candle custom ops: convolution as im2col + one matrix
//! product (im2col and its adjoint col2im, on the CPU and, with the `cuda` feature, as CUDA
//! kernels from `src/cuda/nhwc.cu`), and training-mode batch norm over rows with a fused
//! backward pass (CPU).
//!
//! Why: candle 0.11's CPU conv2d computes the weight gradient as a convolution whose kernel is
//! the whole B×H×W gradient map, which turns into skinny matrix products and a strided,
//! single-threaded layout copy per call; a small CNN then trains at ~60 images/s on 2 cores.
//! Here the weight gradient is a `colsᵀ · grad` product (on the CPU, one partial product per
//! thread over its share of the rows) and the input gradient a `grad · W` product plus col2im.
//! On the CPU both directions are blocked by images: each rayon task builds (or scatters) a
//! few images' im2col rows and runs its own single-threaded gemm on them while they are in
//! cache. Weights keep PyTorch's (C_out, C_in, K, K) layout so checkpoints and the ONNX export
//! see ordinary convs.

mod batch_norm;
mod conv;
mod conv_bn;
#[cfg(feature = "cuda")]
mod cuda;
mod gemm;
mod im2col;

pub use batch_norm::{batch_norm_rows_train, BatchStats};
pub use conv::{conv2d_nhwc_rows, conv2d_nhwc_rows_portable};
pub use conv_bn::conv_bn_rows_train;

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Result};

/// Which kernels run an encoder's convolutions and training-mode batch norms. An encoder
/// carries its choice ([`crate::model::Encoder::set_kernels`]); training uses `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Kernels {
    /// The device's best: `fused` on the CPU and on CUDA (with the `cuda` feature), `portable`
    /// elsewhere.
    #[default]
    Auto,
    /// The channels-last kernels of this module: im2col + one matrix product per convolution,
    /// with fused batch norm on the CPU. On CUDA (with the `cuda` feature) im2col and col2im run
    /// as salient's own kernels and batch norm as candle ops.
    Fused,
    /// Compositions of candle ops around one matrix product per convolution: any device.
    Portable,
    /// candle's own conv2d (cuDNN where the `cudnn` feature is on) and portable batch norm.
    Candle,
}

impl Kernels {
    /// The kernels that run on `device` (`auto` resolved; never returns `Auto`).
    pub fn resolve(self, device: &candle_core::Device) -> Result<Kernels> {
        match (self, device.is_cpu()) {
            (Kernels::Auto, true) => Ok(Kernels::Fused),
            (Kernels::Auto, false) if cfg!(feature = "cuda") && device.is_cuda() => {
                Ok(Kernels::Fused)
            }
            (Kernels::Auto, false) => Ok(Kernels::Portable),
            (Kernels::Fused, false) if !cfg!(feature = "cuda") => {
                candle_core::bail!(
                    "the fused kernels run on the CPU, or on CUDA with the cuda feature"
                )
            }
            (k, _) => Ok(k),
        }
    }
}

/// Geometry of a square-kernel convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    pub fn output_size(&self, input: usize) -> usize {
        (input + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// A 1×1, stride-1, unpadded convolution: its im2col matrix is the input itself.
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// Calls `f(pixel, tap)` for every kernel tap of output pixel (oy, ox) that falls inside the
    /// (h, w) input: `pixel` is the input pixel's index (iy·w + ix), `tap` is ky·K + kx, the
    /// tap's slot in an im2col row. Taps in the zero padding are skipped.
    fn for_each_tap(
        &self,
        oy: usize,
        ox: usize,
        h: usize,
        w: usize,
        mut f: impl FnMut(usize, usize),
    ) {
        for ky in 0..self.kernel {
            let iy = (oy * self.stride + ky) as isize - self.padding as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            for kx in 0..self.kernel {
                let ix = (ox * self.stride + kx) as isize - self.padding as isize;
                if ix < 0 || ix >= w as isize {
                    continue;
                }
                f(iy as usize * w + ix as usize, ky * self.kernel + kx);
            }
        }
    }
}

pub(super) fn f32_contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// The four dimensions of a channels-last tensor (B, H, W, C).
pub(super) type Dims4 = (usize, usize, usize, usize);

pub(super) fn dims4(layout: &Layout, op: &str) -> Result<Dims4> {
    match layout.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        dims => candle_core::bail!("{op}: expected a 4-d tensor, got {dims:?}"),
    }
}

/// # Safety
/// Every element of `s` must have been written.
pub(super) unsafe fn assume_init(s: &[MaybeUninit<f32>]) -> &[f32] {
    &*(s as *const [MaybeUninit<f32>] as *const [f32])
}

/// # Safety
/// Every element of `s` must have been written.
pub(super) unsafe fn assume_init_mut(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32])
}

#[cfg(test)]
mod tests {
    use super::conv::conv2d_nhwc_rows_im2col_op;
    use super::*;
    use candle_core::Tensor;
    use candle_core::{Device, Var, D};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Training-mode batch norm of (N, C) rows (then ReLU when `relu`) as candle ops, and the
    /// batch mean and biased variance as (1, C).
    fn batch_norm_reference(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        relu: bool,
    ) -> (Tensor, Tensor, Tensor) {
        let c = x.dim(1).unwrap();
        let m = x.mean_keepdim(0).unwrap();
        let centered = x.broadcast_sub(&m).unwrap();
        let v = centered.sqr().unwrap().mean_keepdim(0).unwrap();
        let y = centered
            .broadcast_div(&(v.clone() + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&gamma.reshape((1, c)).unwrap())
            .unwrap()
            .broadcast_add(&beta.reshape((1, c)).unwrap())
            .unwrap();
        let y = if relu { y.relu().unwrap() } else { y };
        (y, m, v)
    }

    /// The fused convolution + batch norm node equals the portable convolution followed by
    /// candle's batch norm ops, forward (output and statistics) and backward (x, W, γ, β).
    #[test]
    fn fused_conv_batch_norm_matches_the_composition() {
        for (relu, (kernel, stride, padding)) in [
            (true, (3, 1, 1)),
            (false, (3, 2, 1)),
            (true, (1, 2, 0)),
            (false, (1, 1, 0)),
        ] {
            let geometry = ConvGeometry {
                kernel,
                stride,
                padding,
            };
            let x = Var::from_tensor(&random(&[7, 6, 6, 3], 11)).unwrap();
            let w = Var::from_tensor(&random(&[4, 3, kernel, kernel], 12)).unwrap();
            let gamma = Var::from_tensor(&random(&[4], 13)).unwrap();
            let beta = Var::from_tensor(&random(&[4], 14)).unwrap();
            let eps = 1e-5;
            let (ours, dims, (mean, var)) = conv_bn_rows_train(
                x.as_tensor(),
                w.as_tensor(),
                geometry,
                (gamma.as_tensor(), beta.as_tensor()),
                eps,
                relu,
            )
            .unwrap();
            let (rows, ref_dims) =
                conv2d_nhwc_rows_portable(x.as_tensor(), w.as_tensor(), geometry).unwrap();
            let (reference, m, v) =
                batch_norm_reference(&rows, gamma.as_tensor(), beta.as_tensor(), eps, relu);
            let case = format!("{geometry:?} relu {relu}");
            assert_eq!(dims, ref_dims, "{case}");
            assert_eq!(ours.dims(), reference.dims(), "{case}");
            assert!(max_diff(&ours, &reference) < 1e-4, "{case}: forward");
            let mv: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
            let vv: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            for j in 0..4 {
                assert!((mv[j] - mean[j]).abs() < 1e-5, "{case}: mean");
                assert!((vv[j] - var[j]).abs() < 1e-4, "{case}: variance");
            }
            let up = random(reference.dims(), 15);
            let g_ref = (reference * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g_ours = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("x", &x), ("W", &w), ("γ", &gamma), ("β", &beta)] {
                let d = max_diff(g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
                assert!(d < 1e-3, "{case}: gradient of {name} differs by {d}");
            }
        }
    }

    /// The fused batch norm (with and without its ReLU) equals the composition of candle ops,
    /// forward and backward.
    #[test]
    fn fused_batch_norm_matches_candle_ops() {
        for relu in [false, true] {
            fused_batch_norm_case(relu);
        }
    }

    fn fused_batch_norm_case(relu: bool) {
        let x = Var::from_tensor(&random(&[300, 5], 4)).unwrap();
        let gamma = Var::from_tensor(&random(&[5], 5)).unwrap();
        let beta = Var::from_tensor(&random(&[5], 6)).unwrap();
        let eps = 1e-5;
        let (ours, mean, var) = batch_norm_rows_train(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            eps,
            relu,
        )
        .unwrap();
        let (reference, m, v) = batch_norm_reference(
            x.as_tensor(),
            gamma.as_tensor(),
            beta.as_tensor(),
            eps,
            relu,
        );
        if relu {
            let zeros = ours
                .eq(0f32)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap();
            let share = zeros.mean_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                share > 0.2 && share < 0.8,
                "the ReLU cuts {share} of the rows"
            );
        }
        assert!(max_diff(&ours, &reference) < 1e-5, "relu {relu}");
        let mv: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        let vv: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        for j in 0..5 {
            assert!((mv[j] - mean[j]).abs() < 1e-6 && (vv[j] - var[j]).abs() < 1e-5);
        }
        let up = random(&[300, 5], 7);
        let g_ref = (reference * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_ours = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
        for var in [&x, &gamma, &beta] {
            let d = max_diff(g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
            assert!(d < 1e-4, "relu {relu}: gradient differs by {d}");
        }
    }

    /// Both NHWC convolutions (the fused CPU kernels and the portable composition of candle
    /// ops) and their gradients equal candle's own NCHW conv2d, odd sizes and strides included.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        type ConvFn = fn(&Tensor, &Tensor, ConvGeometry) -> Result<(Tensor, (usize, usize, usize))>;
        let implementations: [(&str, ConvFn); 3] = [
            ("fused", conv2d_nhwc_rows),
            ("im2col op + matmul", conv2d_nhwc_rows_im2col_op),
            ("portable", conv2d_nhwc_rows_portable),
        ];
        for (stride, padding, kernel, h) in [
            (1, 1, 3, 7),
            (2, 1, 3, 8),
            (2, 1, 3, 7),
            (2, 0, 1, 6),
            (2, 0, 1, 7),
            (1, 0, 1, 5),
        ] {
            let geometry = ConvGeometry {
                kernel,
                stride,
                padding,
            };
            // Batch 7 makes the blocked CPU convolution run tasks of several images, one of
            // them shorter than the others.
            for ((name, conv), batch) in implementations.into_iter().flat_map(|i| [(i, 2), (i, 7)])
            {
                let x_nchw = Var::from_tensor(&random(&[batch, 3, h, h], 1)).unwrap();
                let w = Var::from_tensor(&random(&[4, 3, kernel, kernel], 2)).unwrap();
                let reference = x_nchw
                    .as_tensor()
                    .conv2d(w.as_tensor(), padding, stride, 1, 1)
                    .unwrap();
                let x_nhwc = x_nchw.as_tensor().permute((0, 2, 3, 1)).unwrap();
                let (rows, (b, oh, ow)) = conv(&x_nhwc, w.as_tensor(), geometry).unwrap();
                let ours = rows
                    .reshape((b, oh, ow, 4))
                    .unwrap()
                    .permute((0, 3, 1, 2))
                    .unwrap();
                assert_eq!(
                    ours.dims(),
                    reference.dims(),
                    "{name} {geometry:?} batch {batch}"
                );
                assert!(
                    max_diff(&ours, &reference) < 1e-5,
                    "{name} forward {geometry:?} batch {batch}"
                );

                // A fixed random upstream gradient through both paths.
                let up = random(reference.dims(), 3);
                let g_ref = (reference * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let g_ours = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
                for var in [&x_nchw, &w] {
                    let d = max_diff(g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
                    assert!(d < 1e-4, "{name} gradient {geometry:?} batch {batch}: {d}");
                }
            }
        }
    }
}
