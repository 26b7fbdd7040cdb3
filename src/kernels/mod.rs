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
//! On the CPU both directions are blocked by images: each rayon task builds (or sums back) a
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
mod pool;
pub mod simd;

pub use batch_norm::{batch_norm_rows_train, BatchStats};
pub use conv::{conv2d_nhwc_rows, conv2d_nhwc_rows_portable, TASK_ROWS};
pub use conv_bn::conv_bn_train;
pub use pool::mean_pool_nhwc;

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

    /// The kernel taps along one axis that read input coordinate `i` when the output has
    /// `o_len` coordinates along it: `count` taps t = first, first + stride, …, read by output
    /// coordinates o_first, o_first − 1, … (o·stride + t − padding = i). Taps that would fall in
    /// the zero padding, or past the output, are left out.
    fn axis_sources(&self, i: usize, o_len: usize) -> AxisSources {
        let none = AxisSources {
            first: 0,
            count: 0,
            o_first: 0,
        };
        let (reach, s) = (i + self.padding, self.stride);
        let Some(o_last) = o_len.checked_sub(1) else {
            return none;
        };
        // The smallest tap t ≥ reach − stride·o_last with t ≡ reach (mod stride).
        let low = reach.saturating_sub(s * o_last);
        let first = low + (reach - low) % s;
        // Taps stop at the kernel's size and at reach (the output coordinate stays ≥ 0).
        let end = self.kernel.min(reach + 1);
        if first >= end {
            return none;
        }
        AxisSources {
            first,
            count: (end - first).div_ceil(s),
            o_first: (reach - first) / s,
        }
    }
}

/// See [`ConvGeometry::axis_sources`].
#[derive(Clone, Copy, Debug, Default)]
struct AxisSources {
    first: usize,
    count: usize,
    o_first: usize,
}

/// The f32 values of a contiguous CPU tensor (a custom op's input), or an error naming `op`.
pub(crate) fn f32_contiguous<'a>(
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

/// [`f32_contiguous`] for an in-place op's destination.
pub(crate) fn f32_contiguous_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_mut_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
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
    use super::conv::{conv2d_nhwc_rows_im2col_op, conv2d_nhwc_rows_one_node};
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

    /// The gradients of Σ(t · up): every test's backward pass against a fixed upstream
    /// gradient `up`.
    fn grads_against(t: Tensor, up: &Tensor) -> candle_core::backprop::GradStore {
        (t * up).unwrap().sum_all().unwrap().backward().unwrap()
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
    /// Batch 7 of 6×6 runs two tasks of unequal size; batch 5 of 20×20 (400 output rows per
    /// image) one image per task, more tasks than threads, so the backward's shares of dW
    /// are summed across tasks and threads.
    #[test]
    fn fused_conv_batch_norm_matches_the_composition() {
        for (relu, (kernel, stride, padding), (batch, side)) in [
            (true, (3, 1, 1), (7, 6)),
            (false, (3, 2, 1), (7, 6)),
            (true, (1, 2, 0), (7, 6)),
            (false, (1, 1, 0), (7, 6)),
            (true, (3, 1, 1), (5, 20)),
            (false, (1, 1, 0), (5, 20)),
        ] {
            let geometry = ConvGeometry {
                kernel,
                stride,
                padding,
            };
            let x = Var::from_tensor(&random(&[batch, side, side, 3], 11)).unwrap();
            let w = Var::from_tensor(&random(&[4, 3, kernel, kernel], 12)).unwrap();
            let gamma = Var::from_tensor(&random(&[4], 13)).unwrap();
            let beta = Var::from_tensor(&random(&[4], 14)).unwrap();
            let eps = 1e-5;
            let (ours, (mean, var)) = conv_bn_train(
                x.as_tensor(),
                w.as_tensor(),
                geometry,
                (gamma.as_tensor(), beta.as_tensor()),
                eps,
                relu,
            )
            .unwrap();
            let (b, oh, ow, c) = ours.dims4().unwrap();
            let (dims, ours) = ((b, oh, ow), ours.reshape((b * oh * ow, c)).unwrap());
            let (rows, ref_dims) =
                conv2d_nhwc_rows_portable(x.as_tensor(), w.as_tensor(), geometry).unwrap();
            let (reference, m, v) =
                batch_norm_reference(&rows, gamma.as_tensor(), beta.as_tensor(), eps, relu);
            let case = format!("{geometry:?} relu {relu} batch {batch} of {side}x{side}");
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
            let g_ref = grads_against(reference, &up);
            let g_ours = grads_against(ours, &up);
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
        let g_ref = grads_against(reference, &up);
        let g_ours = grads_against(ours, &up);
        for var in [&x, &gamma, &beta] {
            let d = max_diff(g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
            assert!(d < 1e-4, "relu {relu}: gradient differs by {d}");
        }
    }

    fn random_vec(n: usize, seed: u64) -> Vec<f32> {
        random(&[n], seed).to_vec1().unwrap()
    }

    /// The batch-norm sweeps, im2col and col2im give bit-identical results on every
    /// instruction set this processor runs (each is forced in turn): the wider vectors change
    /// how many columns one instruction handles, never the order of any sum. Widths that are
    /// not multiples of 8 or 16 and more rows than one task's chunk exercise the loop tails.
    #[test]
    fn every_simd_level_gives_identical_kernel_results() {
        use self::simd::Simd;
        use std::mem::MaybeUninit;
        let levels = Simd::available();
        let baseline = levels[0];
        for (n, c) in [(700, 37), (300, 64), (5, 3)] {
            let (x, dy) = (random_vec(n * c, 21), random_vec(n * c, 22));
            let (gamma, beta) = (random_vec(c, 23), random_vec(c, 24));
            for relu in [false, true] {
                let run = |simd: Simd| {
                    let (y, mean, var) =
                        batch_norm::bn_forward_cpu(simd, &x, (n, c), &gamma, &beta, 1e-5, relu);
                    let mut dx = vec![MaybeUninit::new(f32::NAN); n * c];
                    let (dg, db) = batch_norm::bn_backward_cpu(
                        simd,
                        (&x, &dy),
                        (n, c),
                        (&gamma, &beta),
                        (&mean, &var),
                        1e-5,
                        relu,
                        &mut dx,
                    );
                    let dx: Vec<f32> = dx.iter().map(|v| unsafe { v.assume_init() }).collect();
                    (y, mean, var, dx, dg, db)
                };
                let expected = run(baseline);
                assert!(expected.3.iter().all(|v| v.is_finite()), "dx fully written");
                for &simd in &levels[1..] {
                    assert_eq!(run(simd), expected, "{:?}, {n}×{c}", simd.level());
                }
            }
        }
        for (c, geometry) in [
            (1, (3, 1, 1)),
            (5, (3, 2, 1)),
            (33, (3, 2, 1)),
            (16, (1, 2, 0)),
        ] {
            let g = ConvGeometry {
                kernel: geometry.0,
                stride: geometry.1,
                padding: geometry.2,
            };
            let (images, h, w) = (3, 9, 7);
            let x = random_vec(images * h * w * c, 25);
            let (oh, ow) = (g.output_size(h), g.output_size(w));
            let row = g.kernel * g.kernel * c;
            let cols_in = random_vec(images * oh * ow * row, 26);
            let run = |simd: Simd| {
                let mut cols = vec![MaybeUninit::new(f32::NAN); images * oh * ow * row];
                simd.run(
                    #[inline(always)]
                    || im2col::im2col_images(&x, (h, w, c), g, &mut cols),
                );
                let cols: Vec<f32> = cols.iter().map(|v| unsafe { v.assume_init() }).collect();
                let mut back = vec![MaybeUninit::new(f32::NAN); images * h * w * c];
                simd.run(
                    #[inline(always)]
                    || im2col::col2im_images(&cols_in, (oh, ow), g, (h, w, c), &mut back),
                );
                let back: Vec<f32> = back.iter().map(|v| unsafe { v.assume_init() }).collect();
                (cols, back)
            };
            let expected = run(baseline);
            assert!(
                expected.0.iter().all(|v| v.is_finite())
                    && expected.1.iter().all(|v| v.is_finite()),
                "cols and col2im's images fully written"
            );
            // col2im is im2col's adjoint: ⟨im2col(x), cols⟩ = ⟨x, col2im(cols)⟩.
            let dot =
                |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a * b) as f64).sum::<f64>();
            let (lhs, rhs) = (dot(&expected.0, &cols_in), dot(&x, &expected.1));
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
            for &simd in &levels[1..] {
                assert_eq!(run(simd), expected, "{:?}, {g:?}, c {c}", simd.level());
            }
        }
    }

    /// Statistics combined from blocks (as the fused node gathers them from its convolution
    /// tasks) equal the two passes over all rows, even with means far from zero and blocks of
    /// unequal sizes, and a block's moments are bit-identical on every instruction set.
    #[test]
    fn block_moments_combine_to_the_two_pass_moments() {
        use self::simd::Simd;
        let c = 19;
        let x: Vec<f32> = random_vec(1000 * c, 43)
            .iter()
            .enumerate()
            .map(|(i, v)| 1000.0 * (i % c) as f32 + v)
            .collect();
        let simd = Simd::current();
        let blocks: Vec<_> = [0, 384, 400, 1000]
            .windows(2)
            .map(|w| batch_norm::block_moments(simd, &x[w[0] * c..w[1] * c], c))
            .collect();
        let (mean, var) = batch_norm::combine_moments(&blocks, c);
        for j in 0..c {
            // The exact moments of the f32 values, in f64.
            let column: Vec<f64> = x.iter().skip(j).step_by(c).map(|&v| v as f64).collect();
            let m = column.iter().sum::<f64>() / 1000.0;
            let v = column.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 1000.0;
            assert!(
                (mean[j] as f64 - m).abs() <= 1e-6 * m.abs().max(1.0),
                "mean {j}"
            );
            let error = (var[j] as f64 - v).abs() / v;
            assert!(
                error < 5e-5,
                "variance of column {j} (mean {m}) off by {error}"
            );
            assert!((v - 1.0 / 3.0).abs() < 0.05, "uniform(-1, 1) variance");
        }
        let expected = batch_norm::block_moments(Simd::Baseline, &x, c);
        for simd in Simd::available() {
            assert_eq!(batch_norm::block_moments(simd, &x, c), expected);
        }
        assert_eq!(
            batch_norm::combine_moments(&[], 3),
            (vec![0.0; 3], vec![0.0; 3])
        );
    }

    /// A convolution whose input needs no gradient (the images into an encoder's first layer)
    /// returns none for it, skipping dY·Wᵀ and col2im, and still gives the weight, γ and β
    /// the gradients they get when the input is a variable.
    #[test]
    fn no_input_gradient_is_computed_for_an_input_that_needs_none() {
        let geometry = ConvGeometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let plain = random(&[4, 6, 6, 1], 31);
        let variable = Var::from_tensor(&plain).unwrap();
        let w = Var::from_tensor(&random(&[5, 1, 3, 3], 32)).unwrap();
        let gamma = Var::from_tensor(&random(&[5], 33)).unwrap();
        let beta = Var::from_tensor(&random(&[5], 34)).unwrap();
        let up = random(&[4 * 6 * 6, 5], 35);
        let grads = |x: &Tensor| {
            let (y, _) = conv_bn_train(
                x,
                w.as_tensor(),
                geometry,
                (gamma.as_tensor(), beta.as_tensor()),
                1e-5,
                true,
            )
            .unwrap();
            let y = y.reshape((4 * 6 * 6, 5)).unwrap();
            grads_against(y, &up)
        };
        let (g_plain, g_var) = (grads(&plain), grads(variable.as_tensor()));
        assert!(
            g_plain.get(&plain).is_none(),
            "an input gradient was computed"
        );
        assert!(g_var.get(variable.as_tensor()).is_some());
        for (name, var) in [("W", &w), ("γ", &gamma), ("β", &beta)] {
            let d = max_diff(g_plain.get(var).unwrap(), g_var.get(var).unwrap());
            assert!(d == 0.0, "gradient of {name} differs by {d}");
        }
        let (rows, _) = conv2d_nhwc_rows(&plain, w.as_tensor(), geometry).unwrap();
        let g = grads_against(rows, &up);
        assert!(
            g.get(&plain).is_none(),
            "plain convolution: input gradient computed"
        );
        assert!(g.get(w.as_tensor()).is_some());
    }

    /// The pooling node equals candle's reshape + mean, forward and backward, and keeps the
    /// trunk's output out of a reshape node: its gradient is the pooled gradient / (H·W).
    #[test]
    fn mean_pool_matches_candle_mean() {
        for (b, h, w, c) in [(3, 4, 4, 37), (2, 1, 1, 5), (4, 7, 3, 16)] {
            let x = Var::from_tensor(&random(&[b, h, w, c], 41)).unwrap();
            let ours = mean_pool_nhwc(x.as_tensor()).unwrap();
            let reference = x.reshape((b, h * w, c)).unwrap().mean(1).unwrap();
            assert_eq!(ours.dims(), &[b, c]);
            assert!(
                max_diff(&ours, &reference) < 1e-6,
                "forward {b}×{h}×{w}×{c}"
            );
            let up = random(&[b, c], 42);
            let g_ours = grads_against(ours, &up);
            let g_ref = grads_against(reference, &up);
            let d = max_diff(g_ours.get(&x).unwrap(), g_ref.get(&x).unwrap());
            assert!(d < 1e-7, "backward {b}×{h}×{w}×{c} differs by {d}");
        }
    }

    /// Every NHWC convolution (the fused CPU kernels, im2col and the product as two nodes or
    /// as one, and the portable composition of candle ops) and its gradients equal candle's
    /// own NCHW conv2d, odd sizes and strides included.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        type ConvFn = fn(&Tensor, &Tensor, ConvGeometry) -> Result<(Tensor, (usize, usize, usize))>;
        let implementations: [(&str, ConvFn); 4] = [
            ("fused", conv2d_nhwc_rows),
            ("im2col op + matmul", conv2d_nhwc_rows_im2col_op),
            ("im2col and product as one node", conv2d_nhwc_rows_one_node),
            ("portable", conv2d_nhwc_rows_portable),
        ];
        // 3 input channels take im2col's padded-row path for short kernel rows (K·C ≤ 16),
        // 8 channels its general path.
        let cases = [
            (1, 1, 3, 7),
            (2, 1, 3, 8),
            (2, 1, 3, 7),
            (2, 0, 1, 6),
            (2, 0, 1, 7),
            (1, 0, 1, 5),
        ];
        for ((stride, padding, kernel, h), cin) in cases.into_iter().flat_map(|c| [(c, 3), (c, 8)])
        {
            let geometry = ConvGeometry {
                kernel,
                stride,
                padding,
            };
            // Batch 7 makes the blocked CPU convolution run tasks of several images, one of
            // them shorter than the others.
            for ((name, conv), batch) in implementations.into_iter().flat_map(|i| [(i, 2), (i, 7)])
            {
                let x_nchw = Var::from_tensor(&random(&[batch, cin, h, h], 1)).unwrap();
                let w = Var::from_tensor(&random(&[4, cin, kernel, kernel], 2)).unwrap();
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
                    "{name} {geometry:?} batch {batch}, {cin} channels"
                );
                assert!(
                    max_diff(&ours, &reference) < 1e-5,
                    "{name} forward {geometry:?} batch {batch}, {cin} channels"
                );

                // A fixed random upstream gradient through both paths.
                let up = random(reference.dims(), 3);
                let g_ref = grads_against(reference, &up);
                let g_ours = grads_against(ours, &up);
                for var in [&x_nchw, &w] {
                    let d = max_diff(g_ours.get(var).unwrap(), g_ref.get(var).unwrap());
                    assert!(
                        d < 1e-4,
                        "{name} gradient {geometry:?} batch {batch}, {cin} channels: {d}"
                    );
                }
            }
        }
    }
}
