//! Global average pooling of channels-last activations as one autograd node (CPU).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::simd::Simd;
use super::{dims4, f32_contiguous};

/// The mean over H and W of a (B, H, W, C) tensor: (B, C). As candle ops (a reshape, then
/// `mean` over the middle dimension) the sum reduces a strided dimension, and the backward
/// adds a reshape node's and a broadcast's gradient buffers; here each image's H·W rows of C
/// channels are added in order, and the backward writes g / (H·W) into every pixel once.
struct MeanPoolCpu;

/// 1 / (H·W) as candle's `mean` applies it (an f64 scale rounded to f32).
fn scale(pixels: usize) -> f32 {
    (1f64 / pixels.max(1) as f64) as f32
}

impl CustomOp1 for MeanPoolCpu {
    fn name(&self) -> &'static str {
        "mean-pool-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_contiguous(storage, layout, self.name())?;
        let (b, h, w, c) = dims4(layout, self.name())?;
        let (pixels, simd) = (h * w, Simd::current());
        let mut out = vec![0f32; b * c];
        if pixels > 0 && c > 0 {
            out.par_chunks_mut(c)
                .zip(x.par_chunks(pixels * c))
                .for_each(|(sums, image)| {
                    simd.run(
                        #[inline(always)]
                        || {
                            for row in image.chunks_exact(c) {
                                sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
                            }
                            let k = scale(pixels);
                            sums.iter_mut().for_each(|s| *s *= k);
                        },
                    )
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (b, h, w, c) = arg.dims4()?;
        let dx = grad
            .contiguous()?
            .apply_op1_no_bwd(&MeanPoolBackwardCpu { h, w })?;
        Ok(Some(dx.reshape((b, h, w, c))?))
    }
}

/// Backward of [`MeanPoolCpu`]: (B, C) gradients to (B, H, W, C), each pixel g / (H·W).
struct MeanPoolBackwardCpu {
    h: usize,
    w: usize,
}

impl CustomOp1 for MeanPoolBackwardCpu {
    fn name(&self) -> &'static str {
        "mean-pool-nhwc-backward"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_contiguous(storage, layout, self.name())?;
        let (b, c) = layout.shape().dims2()?;
        let pixels = self.h * self.w;
        let k = scale(pixels);
        let len = b * pixels * c;
        let mut dx: Vec<f32> = Vec::with_capacity(len);
        if len > 0 {
            let simd = Simd::current();
            dx.spare_capacity_mut()[..len]
                .par_chunks_mut(pixels * c)
                .zip(g.par_chunks(c))
                .for_each(|(image, g)| {
                    simd.run(
                        #[inline(always)]
                        || {
                            for row in image.chunks_exact_mut(c) {
                                row.iter_mut().zip(g).for_each(|(d, &v)| {
                                    d.write(v * k);
                                });
                            }
                        },
                    )
                });
            // SAFETY: one chunk of H·W·C values per image, every value written.
            unsafe { dx.set_len(len) };
        }
        Ok((CpuStorage::F32(dx), Shape::from((b, self.h, self.w, c))))
    }
}

/// Global average pooling of channels-last `x` (B, H, W, C) to (B, C): one autograd node on
/// the CPU ([`MeanPoolCpu`]), candle's `mean` elsewhere.
pub fn mean_pool_nhwc(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1(MeanPoolCpu);
    }
    x.reshape((b, h * w, c))?.mean(1)
}
