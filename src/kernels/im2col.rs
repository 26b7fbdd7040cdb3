//! im2col and its adjoint col2im on channels-last batches: candle custom ops (CPU, and CUDA
//! with the `cuda` feature) and the slice kernels the fused convolution calls.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[cfg(feature = "cuda")]
use super::cuda as gpu;
use super::{dims4, f32_contiguous, ConvGeometry, Dims4};

/// (B, H, W, C) → (B, OH, OW, K·K·C): each output pixel's receptive field, rows ordered
/// (ky, kx, c), zeros where the field leaves the padded image.
#[derive(Clone, Copy, Debug)]
pub(super) struct Im2Col {
    pub(super) geometry: ConvGeometry,
}

/// The adjoint of [`Im2Col`]: sums (B, OH, OW, K·K·C) back onto (B, H, W, C).
#[derive(Clone, Copy, Debug)]
pub(super) struct Col2Im {
    geometry: ConvGeometry,
    height: usize,
    width: usize,
}

impl Col2Im {
    /// col2im onto images of `height` × `width`.
    pub(super) fn new(geometry: ConvGeometry, height: usize, width: usize) -> Self {
        Self {
            geometry,
            height,
            width,
        }
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_contiguous(storage, layout, self.name())?;
        let (b, h, w, c) = dims4(layout, self.name())?;
        let g = self.geometry;
        let (oh, ow) = (g.output_size(h), g.output_size(w));
        let out = im2col_cpu(x, (b, h, w, c), g);
        Ok((
            CpuStorage::F32(out),
            Shape::from((b, oh, ow, g.kernel * g.kernel * c)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, h, w, c) = dims4(layout, self.name())?;
        let g = self.geometry;
        let (oh, ow) = (g.output_size(h), g.output_size(w));
        let out = Shape::from((b, oh, ow, g.kernel * g.kernel * c));
        gpu::launch("im2col_nhwc", storage, layout, out, [h, w, c, oh, ow], g)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, w, _) = arg.dims4()?;
        let grad = grad_res
            .contiguous()?
            .apply_op1_no_bwd(&Col2Im::new(self.geometry, h, w))?;
        Ok(Some(grad))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im-nhwc"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = f32_contiguous(storage, layout, self.name())?;
        let (b, oh, ow, row) = dims4(layout, self.name())?;
        let (h, w) = (self.height, self.width);
        let c = row / (self.geometry.kernel * self.geometry.kernel);
        let out = col2im_cpu(cols, (oh, ow), self.geometry, (b, h, w, c));
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, oh, ow, row) = dims4(layout, self.name())?;
        let g = self.geometry;
        let (h, w) = (self.height, self.width);
        let c = row / (g.kernel * g.kernel);
        let out = Shape::from((b, h, w, c));
        gpu::launch("col2im_nhwc", storage, layout, out, [h, w, c, oh, ow], g)
    }
}

/// Copies `src` into `dst` (the same length). The first layer's runs are a 3×3 kernel row
/// over 1 or 3 channels: 3 or 9 values, for which a loop of unknown length costs more than
/// the copy; those lengths are copied as fixed-size arrays.
#[inline(always)]
fn copy_run(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [MaybeUninit<f32>], src: &[f32]) -> bool {
        let (Ok(d), Ok(s)) = (
            <&mut [MaybeUninit<f32>; N]>::try_from(dst),
            <&[f32; N]>::try_from(src),
        ) else {
            return false;
        };
        for (d, &v) in d.iter_mut().zip(s) {
            d.write(v);
        }
        true
    }
    let done = match src.len() {
        3 => fixed::<3>(dst, src),
        9 => fixed::<9>(dst, src),
        _ => false,
    };
    if !done {
        // Longer runs (a channel vector) 16 values at a time, as in add_run.
        let (d, d_rest) = dst.as_chunks_mut::<16>();
        let (s, s_rest) = src.as_chunks::<16>();
        for (d, s) in d.iter_mut().zip(s) {
            // One block load, then the stores (see add_run).
            let s = *s;
            for (d, v) in d.iter_mut().zip(s) {
                d.write(v);
            }
        }
        for (d, &v) in d_rest.iter_mut().zip(s_rest) {
            d.write(v);
        }
    }
}

/// Adds `src` onto `dst` (the same length), 16 values at a time through a block held in
/// registers. Written element by element (or over blocks in place), the adds compiled to
/// scalar `vaddss` (`perf annotate`), in col2im's 32-channel runs as elsewhere.
#[inline(always)]
fn add_run(dst: &mut [f32], src: &[f32]) {
    let (d, d_rest) = dst.as_chunks_mut::<16>();
    let (s, s_rest) = src.as_chunks::<16>();
    for (d, s) in d.iter_mut().zip(s) {
        // Whole blocks loaded into registers before the store: LLVM cannot tell that `dst`
        // and `src` do not overlap once the closure is inlined into the SIMD dispatch, and
        // element-wise it keeps every add scalar.
        let (mut sum, s) = (*d, *s);
        for (a, b) in sum.iter_mut().zip(s) {
            *a += b;
        }
        *d = sum;
    }
    for (d, s) in d_rest.iter_mut().zip(s_rest) {
        *d += s;
    }
}

/// One output image row (every ox of one oy) of im2col: `dst` is OW rows of K·K·C, each
/// written exactly once (a copy or a padding zero). Always inlined, as are the two below, so
/// that a caller's [`super::simd::Simd::run`] compiles them for its instruction set.
#[inline(always)]
pub(super) fn im2col_row(
    image: &[f32],
    oy: usize,
    (h, w, c): (usize, usize, usize),
    g: ConvGeometry,
    dst: &mut [MaybeUninit<f32>],
) {
    let row = g.kernel * g.kernel * c;
    for (ox, cell) in dst.chunks_exact_mut(row).enumerate() {
        let ix0 = (ox * g.stride) as isize - g.padding as isize;
        for (ky, taps) in cell.chunks_exact_mut(g.kernel * c).enumerate() {
            let iy = (oy * g.stride + ky) as isize - g.padding as isize;
            if iy < 0 || iy >= h as isize {
                taps.fill(MaybeUninit::new(0.0));
                continue;
            }
            // Away from the left and right edges, a kernel row's K taps are K·C consecutive
            // input values: one copy instead of K (most of the work when C is small).
            if ix0 >= 0 && ix0 as usize + g.kernel <= w {
                let src = (iy as usize * w + ix0 as usize) * c;
                copy_run(taps, &image[src..src + g.kernel * c]);
                continue;
            }
            for (kx, tap) in taps.chunks_exact_mut(c).enumerate() {
                let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                if ix < 0 || ix >= w as isize {
                    tap.fill(MaybeUninit::new(0.0));
                } else {
                    let src = (iy as usize * w + ix as usize) * c;
                    for (d, &v) in tap.iter_mut().zip(&image[src..src + c]) {
                        d.write(v);
                    }
                }
            }
        }
    }
}

/// im2col of whole images, one after the other: `images` is (n, H, W, C), `dst` n·OH·OW rows
/// of K·K·C, every element written.
#[inline(always)]
pub(super) fn im2col_images(
    images: &[f32],
    (h, w, c): (usize, usize, usize),
    g: ConvGeometry,
    dst: &mut [MaybeUninit<f32>],
) {
    let (oh, ow) = (g.output_size(h), g.output_size(w));
    let row = g.kernel * g.kernel * c;
    // (image, oy, that output row's columns) for every output row of every image.
    let rows = images
        .chunks_exact(h * w * c)
        .zip(dst.chunks_exact_mut(oh * ow * row))
        .flat_map(|(image, out)| {
            let out_rows = out.chunks_exact_mut(ow * row).enumerate();
            out_rows.map(move |(oy, out_row)| (image, oy, out_row))
        });
    let padded_len = g.kernel * (w + 2 * g.padding) * c;
    if g.kernel * c <= 16 && padded_len <= PADDED_ROWS_MAX {
        let mut padded = [0f32; PADDED_ROWS_MAX];
        for (image, oy, out_row) in rows {
            im2col_row_padded(image, oy, (h, w, c), g, &mut padded[..padded_len], out_row);
        }
    } else {
        for (image, oy, out_row) in rows {
            im2col_row(image, oy, (h, w, c), g, out_row);
        }
    }
}

/// The most values [`im2col_row_padded`]'s K zero-padded input rows may hold (8 KiB).
const PADDED_ROWS_MAX: usize = 2048;

/// [`im2col_row`] for layers whose kernel rows are short runs (K·C ≤ 16 values: the first
/// layer, 3×3 over 1 or 3 channels): the K input rows that output row `oy` reads are first
/// copied into `padded`, each with its zero padding (a row above or below the image all
/// zeros), so that every tap is then one fixed-size copy with no edge test: for runs this
/// short, the per-tap edge tests cost more than the copies. `padded` holds
/// K·(W + 2·padding)·C values, all of them written here.
#[inline(always)]
fn im2col_row_padded(
    image: &[f32],
    oy: usize,
    (h, w, c): (usize, usize, usize),
    g: ConvGeometry,
    padded: &mut [f32],
    dst: &mut [MaybeUninit<f32>],
) {
    let (pad, run) = (g.padding * c, g.kernel * c);
    let padded_row = w * c + 2 * pad;
    for (ky, line) in padded.chunks_exact_mut(padded_row).enumerate() {
        let iy = (oy * g.stride + ky) as isize - g.padding as isize;
        if iy < 0 || iy >= h as isize {
            line.fill(0.0);
            continue;
        }
        let (left, rest) = line.split_at_mut(pad);
        let (middle, right) = rest.split_at_mut(w * c);
        left.fill(0.0);
        middle.copy_from_slice(&image[iy as usize * w * c..][..w * c]);
        right.fill(0.0);
    }
    for (ox, cell) in dst.chunks_exact_mut(g.kernel * run).enumerate() {
        let start = ox * g.stride * c;
        for (taps, line) in cell
            .chunks_exact_mut(run)
            .zip(padded.chunks_exact(padded_row))
        {
            copy_run(taps, &line[start..start + run]);
        }
    }
}

/// im2col of a contiguous (B, H, W, C) batch: (B·OH·OW, K·K·C) rows ordered (ky, kx, c),
/// zeros where the receptive field leaves the image.
pub(super) fn im2col_cpu(x: &[f32], (b, h, w, c): Dims4, g: ConvGeometry) -> Vec<f32> {
    let (oh, ow) = (g.output_size(h), g.output_size(w));
    let row = g.kernel * g.kernel * c;
    let len = b * oh * ow * row;
    if len == 0 {
        return Vec::new();
    }
    // Every element is written exactly once below, so the buffer starts uninitialised
    // instead of being zero-filled first: the matrix is K·K times the size of the activations.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // One output image row (all ox of one (b, oy)) per task.
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(ow * row)
        .enumerate()
        .for_each(|(task, dst)| {
            let (bi, oy) = (task / oh, task % oh);
            let image = &x[bi * h * w * c..(bi + 1) * h * w * c];
            im2col_row(image, oy, (h, w, c), g, dst);
        });
    // SAFETY: the chunks above cover all `len` elements (B·OH tasks of OW·row each) and
    // every one of them was written.
    unsafe { out.set_len(len) };
    out
}

/// The adjoint of [`im2col_images`] for whole images: each pixel of `out` (n, H, W, C) is the
/// sum of the (OH·OW, K·K·C) rows of `cols` at the taps that read it. A gather: every output
/// element is written exactly once (no zero-fill, no read-modify-write per tap), its terms
/// added in ascending (ky, kx) order, zero where no tap reads the pixel.
#[inline(always)]
pub(super) fn col2im_images(
    cols: &[f32],
    (oh, ow): (usize, usize),
    g: ConvGeometry,
    (h, w, c): (usize, usize, usize),
    out: &mut [MaybeUninit<f32>],
) {
    let row = g.kernel * g.kernel * c;
    // Which taps read each row and column: the same for every image, and the divisions stay
    // out of the pixel loop.
    let rows: Vec<_> = (0..h).map(|iy| g.axis_sources(iy, oh)).collect();
    let columns: Vec<_> = (0..w).map(|ix| g.axis_sources(ix, ow)).collect();
    for (image, src_image) in out
        .chunks_exact_mut(h * w * c)
        .zip(cols.chunks_exact(oh * ow * row))
    {
        for (pixel, dst) in image.chunks_exact_mut(c).enumerate() {
            let (ys, xs) = (rows[pixel / w], columns[pixel % w]);
            let mut written = false;
            for j in 0..ys.count {
                let (ky, oy) = (ys.first + j * g.stride, ys.o_first - j);
                for i in 0..xs.count {
                    let (kx, ox) = (xs.first + i * g.stride, xs.o_first - i);
                    let at = (oy * ow + ox) * row + (ky * g.kernel + kx) * c;
                    let src = &src_image[at..at + c];
                    if written {
                        // SAFETY: the first source wrote every element of `dst`.
                        add_run(unsafe { super::assume_init_mut(dst) }, src);
                    } else {
                        copy_run(dst, src);
                        written = true;
                    }
                }
            }
            if !written {
                dst.fill(MaybeUninit::new(0.0));
            }
        }
    }
}

/// The adjoint of [`im2col_cpu`]: (B·OH·OW, K·K·C) rows summed back onto the pixels of their
/// receptive fields, (B, H, W, C).
pub(super) fn col2im_cpu(
    cols: &[f32],
    (oh, ow): (usize, usize),
    g: ConvGeometry,
    (b, h, w, c): Dims4,
) -> Vec<f32> {
    let len = b * h * w * c;
    let row = g.kernel * g.kernel * c;
    if len == 0 {
        return Vec::new();
    }
    if oh * ow * row == 0 {
        return vec![0.0; len];
    }
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // Images are independent: one task per image, each writing only its own pixels.
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(h * w * c)
        .zip(cols.par_chunks(oh * ow * row))
        .for_each(|(image, src)| col2im_images(src, (oh, ow), g, (h, w, c), image));
    // SAFETY: the B image chunks cover all `len` elements and col2im_images writes each.
    unsafe { out.set_len(len) };
    out
}
