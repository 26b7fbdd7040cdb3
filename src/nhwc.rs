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

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

/// (B, H, W, C) → (B, OH, OW, K·K·C): each output pixel's receptive field, rows ordered
/// (ky, kx, c), zeros where the field leaves the padded image.
#[derive(Clone, Copy, Debug)]
struct Im2Col {
    geometry: ConvGeometry,
}

/// The adjoint of [`Im2Col`]: scatters-and-adds (B, OH, OW, K·K·C) back onto (B, H, W, C).
#[derive(Clone, Copy, Debug)]
struct Col2Im {
    geometry: ConvGeometry,
    height: usize,
    width: usize,
}

fn f32_contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
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
type Dims4 = (usize, usize, usize, usize);

fn dims4(layout: &Layout, op: &str) -> Result<Dims4> {
    match layout.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        dims => candle_core::bail!("{op}: expected a 4-d tensor, got {dims:?}"),
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
        let grad = grad_res.contiguous()?.apply_op1_no_bwd(&Col2Im {
            geometry: self.geometry,
            height: h,
            width: w,
        })?;
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
        let mut out = vec![0f32; b * h * w * c];
        col2im_add_cpu(cols, (oh, ow), self.geometry, (h, w, c), &mut out);
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

/// # Safety
/// Every element of `s` must have been written.
unsafe fn assume_init(s: &[MaybeUninit<f32>]) -> &[f32] {
    &*(s as *const [MaybeUninit<f32>] as *const [f32])
}

/// # Safety
/// Every element of `s` must have been written.
unsafe fn assume_init_mut(s: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    &mut *(s as *mut [MaybeUninit<f32>] as *mut [f32])
}

/// One output image row (every ox of one oy) of im2col: `dst` is OW rows of K·K·C, each
/// written exactly once (a copy or a padding zero).
fn im2col_row(
    image: &[f32],
    oy: usize,
    (h, w, c): (usize, usize, usize),
    g: ConvGeometry,
    dst: &mut [MaybeUninit<f32>],
) {
    let row = g.kernel * g.kernel * c;
    for (ox, cell) in dst.chunks_exact_mut(row).enumerate() {
        for (ky, taps) in cell.chunks_exact_mut(g.kernel * c).enumerate() {
            let iy = (oy * g.stride + ky) as isize - g.padding as isize;
            for (kx, tap) in taps.chunks_exact_mut(c).enumerate() {
                let ix = (ox * g.stride + kx) as isize - g.padding as isize;
                if iy < 0 || iy >= h as isize || ix < 0 || ix >= w as isize {
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
fn im2col_images(
    images: &[f32],
    (h, w, c): (usize, usize, usize),
    g: ConvGeometry,
    dst: &mut [MaybeUninit<f32>],
) {
    let (oh, ow) = (g.output_size(h), g.output_size(w));
    let row = g.kernel * g.kernel * c;
    for (image, out) in images
        .chunks_exact(h * w * c)
        .zip(dst.chunks_exact_mut(oh * ow * row))
    {
        for (oy, out_row) in out.chunks_exact_mut(ow * row).enumerate() {
            im2col_row(image, oy, (h, w, c), g, out_row);
        }
    }
}

/// im2col of a contiguous (B, H, W, C) batch: (B·OH·OW, K·K·C) rows ordered (ky, kx, c),
/// zeros where the receptive field leaves the image.
fn im2col_cpu(x: &[f32], (b, h, w, c): Dims4, g: ConvGeometry) -> Vec<f32> {
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

/// The adjoint of [`im2col_images`] for whole images: adds each (OH·OW, K·K·C) row of `cols`
/// back onto the pixels of its receptive field in `out` (n, H, W, C).
fn col2im_add_images(
    cols: &[f32],
    (oh, ow): (usize, usize),
    g: ConvGeometry,
    (h, w, c): (usize, usize, usize),
    out: &mut [f32],
) {
    let row = g.kernel * g.kernel * c;
    for (image, src_image) in out
        .chunks_exact_mut(h * w * c)
        .zip(cols.chunks_exact(oh * ow * row))
    {
        for oy in 0..oh {
            for ox in 0..ow {
                let cell = &src_image[(oy * ow + ox) * row..(oy * ow + ox + 1) * row];
                g.for_each_tap(oy, ox, h, w, |dst, at| {
                    let (d, s) = (
                        &mut image[dst * c..(dst + 1) * c],
                        &cell[at * c..(at + 1) * c],
                    );
                    d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
                });
            }
        }
    }
}

/// The adjoint of [`im2col_cpu`]: adds each (B·OH·OW, K·K·C) row back onto the pixels of
/// its receptive field in `out` (B, H, W, C).
fn col2im_add_cpu(
    cols: &[f32],
    (oh, ow): (usize, usize),
    g: ConvGeometry,
    (h, w, c): (usize, usize, usize),
    out: &mut [f32],
) {
    let row = g.kernel * g.kernel * c;
    if h * w * c == 0 || oh * ow * row == 0 {
        return;
    }
    // Images are independent: one task per image, no two tasks write the same pixel.
    out.par_chunks_mut(h * w * c)
        .zip(cols.par_chunks(oh * ow * row))
        .for_each(|(image, src)| col2im_add_images(src, (oh, ow), g, (h, w, c), image));
}

/// A row-major (m, n) matrix product `lhs · rhs` into `dst`, every element written (none read,
/// so `dst` may be uninitialised), on the calling thread: the convolution runs one product per
/// rayon task (see [`TASK_ROWS`]). `lhs` is (m, k) and `rhs` (k, n), each given as (row
/// stride, column stride) into its slice, so transposed operands need no copy. gemm is the
/// crate candle's own CPU matmul calls.
fn matmul_into(
    dst: &mut [MaybeUninit<f32>],
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) -> Result<()> {
    // The last element each operand is read at must lie inside it: gemm takes raw pointers.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    if dst.len() != m * n
        || (m * k > 0 && last(m, k, lhs_rs, lhs_cs) >= lhs.len())
        || (k * n > 0 && last(k, n, rhs_rs, rhs_cs) >= rhs.len())
    {
        candle_core::bail!(
            "matmul_into: ({m}×{k})·({k}×{n}) does not fit operands of {} and {} and a result of {}",
            lhs.len(),
            rhs.len(),
            dst.len()
        );
    }
    // SAFETY: the bounds were checked above; dst is a distinct &mut slice of m·n elements,
    // written row-major (row stride n, column stride 1). With read_dst = false gemm never
    // reads dst (alpha is zero: every path, k = 0 included, stores without loading), so
    // uninitialised memory is fine; every element is written.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            n as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// [`matmul_into`] a new (m, n) buffer.
fn matmul_vec(
    (m, n, k): (usize, usize, usize),
    lhs: (&[f32], (usize, usize)),
    rhs: (&[f32], (usize, usize)),
) -> Result<Vec<f32>> {
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    matmul_into(
        &mut out.spare_capacity_mut()[..m * n],
        (m, n, k),
        lhs.0,
        lhs.1,
        rhs.0,
        rhs.1,
    )?;
    // SAFETY: matmul_into wrote all m·n elements.
    unsafe { out.set_len(m * n) };
    Ok(out)
}

/// Output rows per task of the blocked CPU convolution: enough for an efficient
/// single-threaded product, few enough that a task's slice of the im2col matrix (and of its
/// gradient) is still in cache when the product reads it. On the default encoder's three
/// stride-2 layers, one product per task ran 1.0-1.4× as fast as gemm splitting each whole
/// product over both cores (forward and dY·Wᵀ, two runs of session 8's probe).
const TASK_ROWS: usize = 384;

/// Whole images per task: about [`TASK_ROWS`] output rows, and at least one task per thread.
fn images_per_task(b: usize, rows_per_image: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (TASK_ROWS / rows_per_image.max(1)).clamp(1, b.div_ceil(threads).max(1))
}

/// Forward convolution on the CPU: `x` (B, H, W, C_in) and `wt` (K·K·C_in, C_out) give the
/// (B·OH·OW, C_out) rows and the im2col matrix for the weight gradient (None when it is `x`
/// itself). Blocked by images: each task writes its images' im2col rows and multiplies them
/// while they are in cache.
fn conv_forward_cpu(
    x: &[f32],
    (b, h, w, c): Dims4,
    wt: &[f32],
    cout: usize,
    g: ConvGeometry,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let (oh, ow) = (g.output_size(h), g.output_size(w));
    let (rows_per_image, k) = (oh * ow, g.kernel * g.kernel * c);
    let m = b * rows_per_image;
    if x.len() != b * h * w * c || wt.len() != k * cout {
        candle_core::bail!(
            "conv forward: input of {} and weight of {} do not fit {:?} and {cout} channels out",
            x.len(),
            wt.len(),
            (b, h, w, c)
        );
    }
    if m * cout * k == 0 {
        let cols = (!g.is_pointwise()).then(|| vec![0f32; m * k]);
        return Ok((vec![0f32; m * cout], cols));
    }
    let per_task = images_per_task(b, rows_per_image);
    let mut out: Vec<f32> = Vec::with_capacity(m * cout);
    let out_tasks =
        out.spare_capacity_mut()[..m * cout].par_chunks_mut(per_task * rows_per_image * cout);
    let cols = if g.is_pointwise() {
        out_tasks
            .zip(x.par_chunks(per_task * rows_per_image * k))
            .try_for_each(|(dst, xs)| {
                matmul_into(dst, (xs.len() / k, cout, k), xs, (k, 1), wt, (cout, 1))
            })?;
        None
    } else {
        let mut cols: Vec<f32> = Vec::with_capacity(m * k);
        out_tasks
            .zip(cols.spare_capacity_mut()[..m * k].par_chunks_mut(per_task * rows_per_image * k))
            .zip(x.par_chunks(per_task * h * w * c))
            .try_for_each(|((dst, task_cols), images)| {
                im2col_images(images, (h, w, c), g, task_cols);
                // SAFETY: im2col_images wrote every element of task_cols.
                let task_cols = unsafe { assume_init(task_cols) };
                let rows = task_cols.len() / k;
                matmul_into(dst, (rows, cout, k), task_cols, (k, 1), wt, (cout, 1))
            })?;
        // SAFETY: the tasks cover all m·k elements (B images of OH·OW rows), all written.
        unsafe { cols.set_len(m * k) };
        Some(cols)
    };
    // SAFETY: the tasks cover all m·C_out output elements, and matmul_into wrote each.
    unsafe { out.set_len(m * cout) };
    Ok((out, cols))
}

/// Backward convolution on the CPU: from dY (B·OH·OW, C_out), `wt`, `x` (B, H, W, C_in) and
/// the forward im2col matrix (None when it is `x`), writes dX (B·H·W·C_in) and
/// dW (K·K·C_in, C_out) into `dx` and `dwt`, every element.
#[allow(clippy::too_many_arguments)]
fn conv_backward_cpu(
    dy: &[f32],
    wt: &[f32],
    x: &[f32],
    (b, h, w, c): Dims4,
    cout: usize,
    g: ConvGeometry,
    cols: Option<&[f32]>,
    dx: &mut [MaybeUninit<f32>],
    dwt: &mut [MaybeUninit<f32>],
) -> Result<()> {
    let (oh, ow) = (g.output_size(h), g.output_size(w));
    let (rows_per_image, k) = (oh * ow, g.kernel * g.kernel * c);
    let m = b * rows_per_image;
    if dy.len() != m * cout
        || wt.len() != k * cout
        || x.len() != b * h * w * c
        || dx.len() != x.len()
        || dwt.len() != k * cout
        || cols.is_some_and(|cols| cols.len() != m * k)
    {
        candle_core::bail!(
            "conv backward: buffers do not fit input {:?}, {cout} channels out, kernel {}",
            (b, h, w, c),
            g.kernel
        );
    }
    if m * cout * k == 0 {
        dx.fill(MaybeUninit::new(0.0));
        dwt.fill(MaybeUninit::new(0.0));
        return Ok(());
    }
    // dW = colsᵀ · dY (cols is (m, k) row-major, read transposed): the rows split into one
    // part per thread, each a single-threaded product, then the partial sums added. In session
    // 8's probe this ran 1.9× as fast as one product split by gemm on the layer with the most
    // rows (B·14·14) and 0.8-0.9× on the two deeper layers, where dW is a smaller share of the
    // time; the whole blocked convolution was then measured end to end (README).
    let cols = cols.unwrap_or(x);
    let parts = rayon::current_num_threads().clamp(1, m);
    let per_part = m.div_ceil(parts);
    let partials = (0..m.div_ceil(per_part))
        .into_par_iter()
        .map(|p| {
            let rows = p * per_part..((p + 1) * per_part).min(m);
            matmul_vec(
                (k, cout, rows.len()),
                (&cols[rows.start * k..rows.end * k], (1, k)),
                (&dy[rows.start * cout..rows.end * cout], (cout, 1)),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    for (j, d) in dwt.iter_mut().enumerate() {
        d.write(partials.iter().map(|p| p[j]).sum());
    }
    // dX = col2im(dY · Wᵀ) (wt is (k, C_out) row-major, read transposed), blocked by images:
    // each task's slice of dY · Wᵀ is added onto its own images while in cache, and the
    // B·OH·OW × K·K·C_in product never exists whole.
    let per_task = images_per_task(b, rows_per_image);
    dx.par_chunks_mut(per_task * h * w * c)
        .zip(dy.par_chunks(per_task * rows_per_image * cout))
        .try_for_each(|(dx, dy)| {
            let rows = dy.len() / cout;
            if g.is_pointwise() {
                return matmul_into(dx, (rows, k, cout), dy, (cout, 1), wt, (1, cout));
            }
            let dcols = matmul_vec((rows, k, cout), (dy, (cout, 1)), (wt, (1, cout)))?;
            dx.fill(MaybeUninit::new(0.0));
            // SAFETY: just filled.
            let dx = unsafe { assume_init_mut(dx) };
            col2im_add_images(&dcols, (oh, ow), g, (h, w, c), dx);
            Ok(())
        })
}

/// [`conv_backward_cpu`] into one flat buffer, as the backward ops return it: dX
/// (B·H·W·C_in), dW (K·K·C_in·C_out), then `tail` (the fused node's dγ and dβ; empty for a
/// plain convolution).
#[allow(clippy::too_many_arguments)]
fn conv_backward_packed(
    dy: &[f32],
    wt: &[f32],
    x: &[f32],
    dims: Dims4,
    cout: usize,
    g: ConvGeometry,
    cols: Option<&[f32]>,
    tail: &[f32],
) -> Result<Vec<f32>> {
    let dw_len = wt.len();
    let len = x.len() + dw_len + tail.len();
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let (dx, rest) = out.spare_capacity_mut()[..len].split_at_mut(x.len());
    let (dwt, rest) = rest.split_at_mut(dw_len);
    conv_backward_cpu(dy, wt, x, dims, cout, g, cols, dx, dwt)?;
    for (d, &v) in rest.iter_mut().zip(tail) {
        d.write(v);
    }
    // SAFETY: conv_backward_cpu wrote dx and dwt whole, the loop the tail.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// Splits [`conv_backward_packed`]'s output back into dX (B, H, W, C_in), dW (K·K·C_in,
/// C_out) and the tail.
fn split_conv_grads(
    packed: &Tensor,
    (b, h, w, c): Dims4,
    (k, cout): (usize, usize),
) -> Result<(Tensor, Tensor, Tensor)> {
    let (dx_len, dw_len) = (b * h * w * c, k * cout);
    let dx = packed.narrow(0, 0, dx_len)?.reshape((b, h, w, c))?;
    let dwt = packed.narrow(0, dx_len, dw_len)?.reshape((k, cout))?;
    let tail_len = packed.dim(0)?.checked_sub(dx_len + dw_len).ok_or_else(|| {
        candle_core::Error::Msg("conv backward: gradient shorter than dX and dW".into())
    })?;
    let tail = packed.narrow(0, dx_len + dw_len, tail_len)?;
    Ok((dx, dwt, tail))
}

/// The whole CPU convolution as one autograd node: `x` (B, H, W, C_in) and `wt` (K·K·C_in, C_out)
/// in, (B·OH·OW, C_out) rows out ([`conv_forward_cpu`]). The backward computes dW = colsᵀ·dY
/// and dX = col2im(dY·Wᵀ) straight into the returned gradients ([`conv_backward_cpu`]), so
/// candle's autograd never holds the im2col matrix's gradient (a zero-filled buffer plus an
/// add over it per convolution, when im2col and matmul were two nodes).
#[derive(Debug)]
struct ConvRowsCpu {
    geometry: ConvGeometry,
    /// The forward pass's im2col matrix, for the weight gradient (None for pointwise
    /// convolutions, whose im2col matrix is `x` itself).
    cols: Mutex<Option<Arc<Vec<f32>>>>,
}

impl CustomOp2 for ConvRowsCpu {
    fn name(&self) -> &'static str {
        "conv-rows-cpu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_contiguous(s1, l1, self.name())?;
        let wt = f32_contiguous(s2, l2, self.name())?;
        let (b, h, w, c) = dims4(l1, self.name())?;
        let (_, cout) = l2.shape().dims2()?;
        let (out, cols) = conv_forward_cpu(x, (b, h, w, c), wt, cout, self.geometry)?;
        let m = out.len() / cout.max(1);
        if let Ok(mut slot) = self.cols.lock() {
            *slot = cols.map(Arc::new);
        }
        Ok((CpuStorage::F32(out), Shape::from((m, cout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let cols = if self.geometry.is_pointwise() {
            None
        } else {
            let saved = self.cols.lock().ok().and_then(|s| s.clone());
            Some(saved.ok_or_else(|| {
                candle_core::Error::Msg("convolution backward without its forward pass".into())
            })?)
        };
        let packed = grad.contiguous()?.apply_op3_no_bwd(
            &wt.contiguous()?,
            &x.contiguous()?,
            &ConvRowsCpuBackward {
                geometry: self.geometry,
                cols,
            },
        )?;
        let (dx, dwt, _) = split_conv_grads(&packed, x.dims4()?, wt.dims2()?)?;
        Ok((Some(dx), Some(dwt)))
    }
}

/// Backward of [`ConvRowsCpu`] over (dY, wt, x): one flat tensor, dX (B·H·W·C_in) then dW.
struct ConvRowsCpuBackward {
    geometry: ConvGeometry,
    /// The forward im2col matrix (None for pointwise convolutions: x is that matrix).
    cols: Option<Arc<Vec<f32>>>,
}

impl CustomOp3 for ConvRowsCpuBackward {
    fn name(&self) -> &'static str {
        "conv-rows-cpu-backward"
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
        let dy = f32_contiguous(s1, l1, self.name())?;
        let wt = f32_contiguous(s2, l2, self.name())?;
        let x = f32_contiguous(s3, l3, self.name())?;
        let (_, cout) = l1.shape().dims2()?;
        let dims = dims4(l3, self.name())?;
        let cols = self.cols.as_deref().map(|c| c.as_slice());
        let out = conv_backward_packed(dy, wt, x, dims, cout, self.geometry, cols, &[])?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// Launching the kernels of `src/cuda/nhwc.cu` (compiled to PTX by build.rs).
#[cfg(feature = "cuda")]
mod gpu {
    use super::ConvGeometry;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Shape};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/nhwc.ptx"));

    /// Runs `kernel(src, dst, n, H, W, C, OH, OW, K, S, P)` with one thread per element of
    /// the (contiguous f32) output.
    pub fn launch(
        kernel: &str,
        storage: &CudaStorage,
        layout: &Layout,
        out: Shape,
        [h, w, c, oh, ow]: [usize; 5],
        g: ConvGeometry,
    ) -> Result<(CudaStorage, Shape)> {
        let src = match &storage.slice {
            CudaStorageSlice::F32(s) => s,
            _ => candle_core::bail!("{kernel}: only f32 is supported"),
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{kernel}: input must be contiguous")
        };
        let n = out.elem_count();
        let fits = |v: usize| u32::try_from(v).ok();
        let params: Option<Vec<u32>> = [n, h, w, c, oh, ow, g.kernel, g.stride, g.padding]
            .into_iter()
            .map(fits)
            .collect();
        let Some(params) = params else {
            candle_core::bail!("{kernel}: {out:?} has more than 2^32 elements")
        };
        let dev = &storage.device;
        let src = src.slice(start..end);
        // SAFETY: the kernel writes every one of the n elements.
        let dst = unsafe { dev.alloc::<f32>(n)? };
        let func = dev.get_or_load_custom_func(kernel, "salient_nhwc", PTX)?;
        let mut builder = func.builder();
        builder.arg(&src);
        builder.arg(&dst);
        for p in &params {
            builder.arg(p);
        }
        // SAFETY: the argument list matches the kernel's signature in nhwc.cu.
        unsafe { builder.launch(LaunchConfig::for_num_elems(params[0])) }.w()?;
        Ok((
            CudaStorage {
                slice: CudaStorageSlice::F32(dst),
                device: dev.clone(),
            },
            out,
        ))
    }
}

/// Convolution of a channels-last batch `x` (B, H, W, C_in) with `weight` (C_out, C_in, K, K),
/// returning (B·OH·OW, C_out) rows and the output's (B, OH, OW): callers apply per-channel
/// operations (batch norm, ReLU) on the rows before reshaping to (B, OH, OW, C_out).
/// On the CPU the convolution is one fused op ([`ConvRowsCpu`]); elsewhere it is the im2col
/// kernel followed by candle's matmul.
pub fn conv2d_nhwc_rows(
    x: &Tensor,
    weight: &Tensor,
    geometry: ConvGeometry,
) -> Result<(Tensor, (usize, usize, usize))> {
    if x.device().is_cpu() {
        conv_rows(x, weight, geometry, |x, wt, geometry| {
            x.contiguous()?.apply_op2(
                wt,
                ConvRowsCpu {
                    geometry,
                    cols: Mutex::new(None),
                },
            )
        })
    } else {
        conv2d_nhwc_rows_im2col_op(x, weight, geometry)
    }
}

/// The im2col kernel ([`Im2Col`], CUDA or CPU) followed by candle's matmul: two autograd nodes.
fn conv2d_nhwc_rows_im2col_op(
    x: &Tensor,
    weight: &Tensor,
    geometry: ConvGeometry,
) -> Result<(Tensor, (usize, usize, usize))> {
    conv_rows(x, weight, geometry, |x, wt, geometry| {
        im2col_matmul(x, wt, geometry, |x, geometry| {
            x.contiguous()?.apply_op1(Im2Col { geometry })
        })
    })
}

/// The same convolution as [`conv2d_nhwc_rows`], with im2col composed of candle ops only (zero
/// padding, strided views and one concatenation), so it runs and differentiates on any device
/// that has no kernels of its own here, and is a second implementation to check the others
/// against. It keeps about twice the im2col matrix per convolution alive for the backward pass
/// (candle keeps every intermediate), and on an H200 it trained ResNet-18 at 0.4× the speed of
/// the CUDA im2col kernels (README, "Training on a GPU").
pub fn conv2d_nhwc_rows_portable(
    x: &Tensor,
    weight: &Tensor,
    geometry: ConvGeometry,
) -> Result<(Tensor, (usize, usize, usize))> {
    conv_rows(x, weight, geometry, |x, wt, geometry| {
        im2col_matmul(x, wt, geometry, im2col_by_views)
    })
}

/// What the convolutions share: shape checks and the weight as a contiguous (K·K·C_in, C_out)
/// matrix; `product` turns (x, that matrix) into the (B·OH·OW, C_out) rows.
fn conv_rows(
    x: &Tensor,
    weight: &Tensor,
    geometry: ConvGeometry,
    product: impl FnOnce(&Tensor, &Tensor, ConvGeometry) -> Result<Tensor>,
) -> Result<(Tensor, (usize, usize, usize))> {
    let (b, h, w, cin) = x.dims4()?;
    let (cout, wcin, kh, kw) = weight.dims4()?;
    if wcin != cin || kh != geometry.kernel || kw != geometry.kernel || geometry.stride == 0 {
        candle_core::bail!(
            "conv weight {:?} does not fit input with {cin} channels and kernel {} (stride {})",
            weight.dims(),
            geometry.kernel,
            geometry.stride
        );
    }
    let (oh, ow) = (geometry.output_size(h), geometry.output_size(w));
    // (C_out, C_in, K, K) → (C_out, K, K, C_in) → (K·K·C_in, C_out), matching im2col's rows.
    let wt = weight
        .permute((0, 2, 3, 1))?
        .reshape((cout, kh * kw * cin))?
        .t()?
        .contiguous()?;
    Ok((product(x, &wt, geometry)?, (b, oh, ow)))
}

/// im2col as a tensor (`im2col` builds the (B, OH, OW, K·K·C_in) columns; 1×1 stride-1
/// convolutions skip it), then one candle matmul with `wt`.
fn im2col_matmul(
    x: &Tensor,
    wt: &Tensor,
    geometry: ConvGeometry,
    im2col: impl FnOnce(&Tensor, ConvGeometry) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, h, w, cin) = x.dims4()?;
    let (oh, ow) = (geometry.output_size(h), geometry.output_size(w));
    let k = geometry.kernel * geometry.kernel * cin;
    let cols = if geometry.is_pointwise() {
        x.reshape((b * h * w, cin))?
    } else {
        im2col(x, geometry)?.reshape((b * oh * ow, k))?
    };
    cols.matmul(wt)
}

/// im2col of `x` (B, H, W, C) as candle views: (B, OH, OW, K·K·C), rows ordered (ky, kx, c).
fn im2col_by_views(x: &Tensor, geometry: ConvGeometry) -> Result<Tensor> {
    let (b, h, w, cin) = x.dims4()?;
    let (oh, ow) = (geometry.output_size(h), geometry.output_size(w));
    let ConvGeometry {
        kernel,
        stride,
        padding,
    } = geometry;
    // Pad so that every tap's window (offset < kernel, then `oh` steps of `stride`) fits and
    // the padded extent divides by the stride: then (Hp, Wp) reshapes to (Hp/s, s, Wp/s, s)
    // and tap (ky, kx) is the plain view [ky/s .. ky/s+oh, ky%s, kx/s .. kx/s+ow, kx%s].
    let extent = |n: usize, o: usize| {
        let needed = (kernel - 1 + stride * o).max(n + padding);
        needed.div_ceil(stride) * stride
    };
    let (hp, wp) = (extent(h, oh), extent(w, ow));
    let x = x
        .pad_with_zeros(1, padding, hp - h - padding)?
        .pad_with_zeros(2, padding, wp - w - padding)?
        .reshape((b, hp / stride, stride, wp / stride, stride, cin))?;
    let mut taps = Vec::with_capacity(kernel * kernel);
    for ky in 0..kernel {
        for kx in 0..kernel {
            taps.push(
                x.narrow(1, ky / stride, oh)?
                    .narrow(2, ky % stride, 1)?
                    .narrow(3, kx / stride, ow)?
                    .narrow(4, kx % stride, 1)?
                    .squeeze(4)?
                    .squeeze(2)?,
            );
        }
    }
    Tensor::cat(&taps, 3)
}

/// Per-channel batch statistics of the last forward pass, for the running averages.
pub type BatchStats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

/// Training-mode batch norm of (N, C) rows: y = (x − mean)·invstd·γ + β with batch mean and
/// biased variance per column, optionally followed by ReLU. Candle's composition of broadcast
/// ops spends most of its backward pass reducing broadcast gradients column-wise; this does
/// each pass in one sweep. Fusing the ReLU saves candle's ReLU backward (a zero tensor, a
/// comparison, a cast and a product) and one autograd node's gradient buffer per layer.
#[derive(Clone, Debug)]
struct BatchNormRows {
    eps: f64,
    relu: bool,
    /// (mean, biased variance) of the forward pass, for the running averages and the backward.
    stats: BatchStats,
}

/// Rows per parallel task in the batch-norm kernels.
const ROWS: usize = 256;

/// Column sums over the rows of an (N, ·) matrix, in parallel: `f(rows, acc)` adds one chunk
/// of at most [`ROWS`] rows into `acc` (`width` f32 sums, short enough to stay exact to
/// ~1e-6 relative); the chunks' sums add up in f64.
fn column_sums(
    n: usize,
    width: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) -> Vec<f64> {
    (0..n.div_ceil(ROWS))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![0f32; width];
            f(chunk * ROWS..((chunk + 1) * ROWS).min(n), &mut acc);
            acc.iter().map(|&v| v as f64).collect::<Vec<f64>>()
        })
        .reduce(
            || vec![0f64; width],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Per-column mean and biased variance of an (N, C) matrix (two passes: exact for large means).
fn moments(x: &[f32], n: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
    let sums = column_sums(n, c, |rows, acc| {
        for row in rows {
            for (a, &v) in acc.iter_mut().zip(&x[row * c..(row + 1) * c]) {
                *a += v;
            }
        }
    });
    let mean: Vec<f32> = sums.iter().map(|s| (s / n as f64) as f32).collect();
    let sq = column_sums(n, c, |rows, acc| {
        for row in rows {
            for ((a, &v), &m) in acc.iter_mut().zip(&x[row * c..(row + 1) * c]).zip(&mean) {
                let d = v - m;
                *a += d * d;
            }
        }
    });
    (mean, sq.iter().map(|s| (s / n as f64) as f32).collect())
}

/// Training-mode batch norm of (N, C) rows: returns y (with the ReLU when `relu`) and the
/// batch mean and biased variance per column.
fn bn_forward_cpu(
    x: &[f32],
    (n, c): (usize, usize),
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    if n * c == 0 {
        return (Vec::new(), vec![0.0; c], vec![0.0; c]);
    }
    let (mean, var) = moments(x, n, c);
    // y = x·scale + shift, with scale = γ·invstd and shift = β − mean·scale.
    let scale: Vec<f32> = var
        .iter()
        .zip(gamma)
        .map(|(&v, &g)| g / (v as f64 + eps).sqrt() as f32)
        .collect();
    let shift: Vec<f32> = (0..c).map(|j| beta[j] - mean[j] * scale[j]).collect();
    let mut y: Vec<f32> = Vec::with_capacity(n * c);
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    y.spare_capacity_mut()[..n * c]
        .par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c))
        .for_each(|(ys, xs)| {
            for (yr, xr) in ys.chunks_exact_mut(c).zip(xs.chunks_exact(c)) {
                for ((y, &x), (&a, &b)) in yr.iter_mut().zip(xr).zip(scale.iter().zip(&shift)) {
                    y.write((x * a + b).max(floor));
                }
            }
        });
    // SAFETY: the chunks cover all n·c elements and every one was written.
    unsafe { y.set_len(n * c) };
    (y, mean, var)
}

/// The batch norm's backward pass: from its input x, the gradient dy reaching its output, its
/// output y (for the ReLU's mask) and the forward statistics, writes dx into `dx` (every
/// element) and returns (dγ, dβ).
#[allow(clippy::too_many_arguments)]
fn bn_backward_cpu(
    (x, dy, y): (&[f32], &[f32], &[f32]),
    (n, c): (usize, usize),
    gamma: &[f32],
    (mean, var): (&[f32], &[f32]),
    eps: f64,
    relu: bool,
    dx: &mut [MaybeUninit<f32>],
) -> (Vec<f32>, Vec<f32>) {
    if n * c == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    // The gradient reaching the batch norm's output is dy where y > floor: everywhere
    // without the ReLU, where the ReLU passed its input with it.
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    let (mean, gamma) = (&mean[..c], &gamma[..c]);
    let invstd: Vec<f32> = var[..c]
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    // dβ = Σ g and Σ g·(x − mean) in one sweep; dγ = invstd · the latter.
    // (Iterator zips rather than indices: they let the compiler vectorise the rows.)
    let sums = column_sums(n, 2 * c, |rows, acc| {
        let (sum_g, sum_gx) = acc.split_at_mut(c);
        let r = rows.start * c..rows.end * c;
        let (xs, ds, ys) = (&x[r.clone()], &dy[r.clone()], &y[r]);
        for ((xr, dr), yr) in xs
            .chunks_exact(c)
            .zip(ds.chunks_exact(c))
            .zip(ys.chunks_exact(c))
        {
            let columns = sum_g.iter_mut().zip(sum_gx.iter_mut()).zip(mean);
            for (((sg, sgx), &m), ((&xv, &dv), &yv)) in columns.zip(xr.iter().zip(dr).zip(yr)) {
                let g = if yv > floor { dv } else { 0.0 };
                *sg += g;
                *sgx += g * (xv - m);
            }
        }
    });
    let dbeta: Vec<f32> = sums[..c].iter().map(|&v| v as f32).collect();
    let dgamma: Vec<f32> = (0..c).map(|j| (sums[c + j] as f32) * invstd[j]).collect();
    // dx = k·(n·g − dβ − x̂·dγ) with k = γ·invstd/n, rearranged per channel as
    // dx = a·g + b·x + d.
    let nf = n as f32;
    let k: Vec<f32> = (0..c).map(|j| gamma[j] * invstd[j] / nf).collect();
    let coef_g: Vec<f32> = (0..c).map(|j| gamma[j] * invstd[j]).collect();
    let coef_x: Vec<f32> = (0..c).map(|j| -k[j] * invstd[j] * dgamma[j]).collect();
    let offset: Vec<f32> = (0..c)
        .map(|j| -k[j] * dbeta[j] - coef_x[j] * mean[j])
        .collect();
    let (coef_g, coef_x, offset) = (&coef_g[..c], &coef_x[..c], &offset[..c]);
    dx.par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c))
        .zip(dy.par_chunks(ROWS * c).zip(y.par_chunks(ROWS * c)))
        .for_each(|((dxs, xs), (ds, ys))| {
            let rows = xs
                .chunks_exact(c)
                .zip(ds.chunks_exact(c))
                .zip(ys.chunks_exact(c));
            for (out, ((xr, dr), yr)) in dxs.chunks_exact_mut(c).zip(rows) {
                let columns = coef_g.iter().zip(coef_x).zip(offset);
                let values = xr.iter().zip(dr).zip(yr);
                for ((o, ((&a, &b), &d)), ((&xv, &dv), &yv)) in
                    out.iter_mut().zip(columns).zip(values)
                {
                    let g = if yv > floor { dv } else { 0.0 };
                    o.write(a * g + b * xv + d);
                }
            }
        });
    (dgamma, dbeta)
}

impl CustomOp3 for BatchNormRows {
    fn name(&self) -> &'static str {
        "batch-norm-rows"
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
        let gamma = f32_contiguous(s2, l2, self.name())?;
        let beta = f32_contiguous(s3, l3, self.name())?;
        let (n, c) = l1.shape().dims2()?;
        let (y, mean, var) = bn_forward_cpu(x, (n, c), gamma, beta, self.eps, self.relu);
        if let Ok(mut slot) = self.stats.lock() {
            *slot = Some((mean, var));
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = x.dims2()?;
        let (mean, var) = self
            .stats
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| {
                candle_core::Error::Msg("batch norm backward without forward statistics".into())
            })?;
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &res.contiguous()?,
            &BatchNormRowsBackward {
                eps: self.eps,
                relu: self.relu,
                gamma: gamma.to_vec1::<f32>()?,
                mean,
                var,
            },
        )?;
        let dx = packed.narrow(0, 0, n)?;
        let dgamma = packed.narrow(0, n, 1)?.reshape(c)?;
        let dbeta = packed.narrow(0, n + 1, 1)?.reshape(c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Backward of [`BatchNormRows`] over (x, dy, y); returns (N + 2, C): dx rows, then dγ, then
/// dβ. With the ReLU, dy counts only where the output y is positive.
struct BatchNormRowsBackward {
    eps: f64,
    relu: bool,
    gamma: Vec<f32>,
    /// The forward pass's batch statistics.
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl CustomOp3 for BatchNormRowsBackward {
    fn name(&self) -> &'static str {
        "batch-norm-rows-backward"
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
        let dy = f32_contiguous(s2, l2, self.name())?;
        let y = f32_contiguous(s3, l3, self.name())?;
        let (n, c) = l1.shape().dims2()?;
        let mut out: Vec<f32> = Vec::with_capacity((n + 2) * c);
        let (dx, tail) = out.spare_capacity_mut()[..(n + 2) * c].split_at_mut(n * c);
        let (dgamma, dbeta) = bn_backward_cpu(
            (x, dy, y),
            (n, c),
            &self.gamma,
            (&self.mean, &self.var),
            self.eps,
            self.relu,
            dx,
        );
        for (t, &v) in tail.iter_mut().zip(dgamma.iter().chain(&dbeta)) {
            t.write(v);
        }
        // SAFETY: bn_backward_cpu wrote all n·c elements of dx, the loop the 2·c of the tail.
        unsafe { out.set_len((n + 2) * c) };
        Ok((CpuStorage::F32(out), Shape::from((n + 2, c))))
    }
}

/// Training-mode batch norm of (N, C) rows on the CPU, followed by ReLU when `relu`; returns y
/// and the batch (mean, biased variance) for the running averages.
pub fn batch_norm_rows_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Vec<f32>, Vec<f32>)> {
    let stats: BatchStats = Arc::new(Mutex::new(None));
    let y = x.contiguous()?.apply_op3(
        gamma,
        beta,
        BatchNormRows {
            eps,
            relu,
            stats: stats.clone(),
        },
    )?;
    // The op keeps its statistics for the backward pass; the caller gets a copy.
    let taken = stats.lock().ok().and_then(|s| s.clone());
    let (mean, var) =
        taken.ok_or_else(|| candle_core::Error::Msg("batch norm ran without statistics".into()))?;
    Ok((y, mean, var))
}

/// What a fused convolution + batch norm keeps from its forward pass for the backward.
struct ConvBnSaved {
    /// The im2col matrix (None for pointwise convolutions: x is that matrix).
    cols: Option<Vec<f32>>,
    /// The convolution's output, the batch norm's input.
    conv_out: Vec<f32>,
    /// The weight matrix (K·K·C_in, C_out) and γ the forward pass used.
    wt: Vec<f32>,
    gamma: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

/// A CPU convolution followed by training-mode batch norm (and ReLU when `relu`) as one
/// autograd node over (x (B, H, W, C_in), wt (K·K·C_in, C_out), γβ (2, C_out)). As two nodes,
/// candle's autograd zero-filled a gradient buffer the size of the convolution's output and
/// added the batch norm's input gradient into it, every layer; here that gradient lives only
/// inside the backward pass.
struct ConvBnCpu {
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
        let (_, cout) = l2.shape().dims2()?;
        if l3.shape().dims2()? != (2, cout) {
            candle_core::bail!(
                "{}: γβ must be (2, {cout}), got {:?}",
                self.name(),
                l3.dims()
            );
        }
        let (gamma, beta) = gamma_beta.split_at(cout);
        let (conv_out, cols) = conv_forward_cpu(x, dims, wt, cout, self.geometry)?;
        let m = conv_out.len() / cout.max(1);
        let (y, mean, var) = bn_forward_cpu(&conv_out, (m, cout), gamma, beta, self.eps, self.relu);
        if let Ok(mut slot) = self.saved.lock() {
            *slot = Some(ConvBnSaved {
                cols,
                conv_out,
                wt: wt.to_vec(),
                gamma: gamma.to_vec(),
                mean,
                var,
            });
        }
        Ok((CpuStorage::F32(y), Shape::from((m, cout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _gamma_beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = grad.contiguous()?.apply_op3_no_bwd(
            &res.contiguous()?,
            &x.contiguous()?,
            &ConvBnCpuBackward {
                geometry: self.geometry,
                eps: self.eps,
                relu: self.relu,
                saved: self.saved.clone(),
            },
        )?;
        let (k, cout) = wt.dims2()?;
        let (dx, dwt, dgb) = split_conv_grads(&packed, x.dims4()?, (k, cout))?;
        Ok((Some(dx), Some(dwt), Some(dgb.reshape((2, cout))?)))
    }
}

/// Backward of [`ConvBnCpu`] over (dy, y, x): one flat tensor, dX (B·H·W·C_in), dW
/// (K·K·C_in·C_out), then dγ and dβ (C_out each).
struct ConvBnCpuBackward {
    geometry: ConvGeometry,
    eps: f64,
    relu: bool,
    saved: Arc<Mutex<Option<ConvBnSaved>>>,
}

impl CustomOp3 for ConvBnCpuBackward {
    fn name(&self) -> &'static str {
        "conv-bn-cpu-backward"
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
        let dy = f32_contiguous(s1, l1, self.name())?;
        let y = f32_contiguous(s2, l2, self.name())?;
        let x = f32_contiguous(s3, l3, self.name())?;
        let (m, cout) = l1.shape().dims2()?;
        let dims = dims4(l3, self.name())?;
        let guard = self.saved.lock().map_err(|_| {
            candle_core::Error::Msg("conv-bn backward: forward state poisoned".into())
        })?;
        let saved = guard.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("conv-bn backward without its forward pass".into())
        })?;
        if saved.conv_out.len() != m * cout || y.len() != m * cout {
            candle_core::bail!("conv-bn backward: gradient does not match the forward pass");
        }
        // The batch norm's input gradient, which is the convolution's output gradient.
        let mut dconv: Vec<f32> = Vec::with_capacity(m * cout);
        let (dgamma, dbeta) = bn_backward_cpu(
            (&saved.conv_out, dy, y),
            (m, cout),
            &saved.gamma,
            (&saved.mean, &saved.var),
            self.eps,
            self.relu,
            &mut dconv.spare_capacity_mut()[..m * cout],
        );
        // SAFETY: bn_backward_cpu wrote all m·C_out elements.
        unsafe { dconv.set_len(m * cout) };
        let tail: Vec<f32> = dgamma.into_iter().chain(dbeta).collect();
        let cols = saved.cols.as_deref();
        let out =
            conv_backward_packed(&dconv, &saved.wt, x, dims, cout, self.geometry, cols, &tail)?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// A convolution of channels-last `x` (B, H, W, C_in) with `weight` (C_out, C_in, K, K),
/// then training-mode batch norm with `gamma` and `beta` (and ReLU when `relu`), on the CPU
/// as one autograd node ([`ConvBnCpu`]). Returns the (B·OH·OW, C_out) rows, the output's
/// (B, OH, OW) and the batch (mean, biased variance) for the running averages.
#[allow(clippy::type_complexity)]
pub fn conv_bn_rows_train(
    x: &Tensor,
    weight: &Tensor,
    geometry: ConvGeometry,
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    relu: bool,
) -> Result<(Tensor, (usize, usize, usize), (Vec<f32>, Vec<f32>))> {
    let saved = Arc::new(Mutex::new(None));
    let (rows, dims) = conv_rows(x, weight, geometry, |x, wt, geometry| {
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
    Ok((rows, dims, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
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
