//! The convolution on channels-last activations: the fused CPU node (blocked by images, one
//! gemm per task), the im2col + matmul composition for CUDA, and a portable composition of
//! candle ops for any device.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{matmul_add_into, matmul_into, matmul_vec};
use super::im2col::{col2im_images, im2col_images, Col2Im, Im2Col};
use super::simd::Simd;
use super::{assume_init, assume_init_mut, dims4, f32_contiguous, ConvGeometry, Dims4};

/// Output rows per task of the blocked CPU convolution: enough for an efficient
/// single-threaded product, few enough that a task's slice of the im2col matrix (and of its
/// gradient) is still in cache when the product reads it. On the default encoder's three
/// stride-2 layers, one product per task ran 1.0-1.4× as fast as gemm splitting each whole
/// product over both cores (forward and dY·Wᵀ, two runs of a stand-alone gemm probe). At 384
/// rows the last layer's slice (1.8 MB) outgrows a 1 MB L2 cache; at 192, training steps ran
/// 3% faster on such a processor though the hot product alone runs a little slower
/// (docs/performance.md; `benches/gemm_probe.rs` times the products at this size).
pub const TASK_ROWS: usize = 192;

/// Whole images per task: about [`TASK_ROWS`] output rows, and at least one task per thread.
pub(super) fn images_per_task(b: usize, rows_per_image: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (TASK_ROWS / rows_per_image.max(1)).clamp(1, b.div_ceil(threads).max(1))
}

/// Forward convolution on the CPU: `x` (B, H, W, C_in) and `wt` (K·K·C_in, C_out) give the
/// (B·OH·OW, C_out) rows and the im2col matrix for the weight gradient (None when it is `x`
/// itself). Blocked by images: each task writes its images' im2col rows and multiplies them
/// while they are in cache.
pub(super) fn conv_forward_cpu(
    x: &[f32],
    dims: Dims4,
    wt: &[f32],
    cout: usize,
    g: ConvGeometry,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let (out, cols, _) = conv_forward_cpu_then(x, dims, wt, cout, g, KeepColumns::Yes, |_| ())?;
    Ok((out, cols))
}

/// Whether the forward convolution returns its im2col matrix for the backward pass, or
/// builds each task's columns in a buffer its thread reuses (the backward then builds them
/// again: [`conv_backward_recomputing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeepColumns {
    Yes,
    No,
}

/// [`conv_forward_cpu`], calling `after` on each task's output rows right after its product,
/// while they are still in cache; returns its results in task order (none when the output is
/// empty). The im2col matrix comes back only with [`KeepColumns::Yes`] (and never for
/// pointwise convolutions, whose im2col matrix is `x`).
#[allow(clippy::type_complexity)]
pub(super) fn conv_forward_cpu_then<T: Send>(
    x: &[f32],
    (b, h, w, c): Dims4,
    wt: &[f32],
    cout: usize,
    g: ConvGeometry,
    keep: KeepColumns,
    after: impl Fn(&[f32]) -> T + Sync,
) -> Result<(Vec<f32>, Option<Vec<f32>>, Vec<T>)> {
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
        let cols = (!g.is_pointwise() && keep == KeepColumns::Yes).then(|| vec![0f32; m * k]);
        return Ok((vec![0f32; m * cout], cols, Vec::new()));
    }
    let per_task = images_per_task(b, rows_per_image);
    let simd = Simd::current();
    let mut out: Vec<f32> = Vec::with_capacity(m * cout);
    let out_tasks =
        out.spare_capacity_mut()[..m * cout].par_chunks_mut(per_task * rows_per_image * cout);
    // matmul_into wrote every element of `dst`.
    let finish = |dst: &mut [MaybeUninit<f32>]| after(unsafe { assume_init(dst) });
    let (cols, results) = if g.is_pointwise() {
        let results = out_tasks
            .zip(x.par_chunks(per_task * rows_per_image * k))
            .map(|(dst, xs)| {
                matmul_into(dst, (xs.len() / k, cout, k), xs, (k, 1), wt, (cout, 1))?;
                Ok(finish(dst))
            })
            .collect::<Result<Vec<T>>>()?;
        (None, results)
    } else if keep == KeepColumns::No {
        let results = out_tasks
            .zip(x.par_chunks(per_task * h * w * c))
            .map_init(Vec::new, |scratch: &mut Vec<f32>, (dst, images)| {
                let rows = dst.len() / cout;
                let task_cols = im2col_into(scratch, images, (h, w, c), g, rows * k, simd);
                matmul_into(dst, (rows, cout, k), task_cols, (k, 1), wt, (cout, 1))?;
                Ok(finish(dst))
            })
            .collect::<Result<Vec<T>>>()?;
        (None, results)
    } else {
        let mut cols: Vec<f32> = Vec::with_capacity(m * k);
        let results = out_tasks
            .zip(cols.spare_capacity_mut()[..m * k].par_chunks_mut(per_task * rows_per_image * k))
            .zip(x.par_chunks(per_task * h * w * c))
            .map(|((dst, task_cols), images)| {
                simd.run(
                    #[inline(always)]
                    || im2col_images(images, (h, w, c), g, task_cols),
                );
                // SAFETY: im2col_images wrote every element of task_cols.
                let task_cols = unsafe { assume_init(task_cols) };
                let rows = task_cols.len() / k;
                matmul_into(dst, (rows, cout, k), task_cols, (k, 1), wt, (cout, 1))?;
                Ok(finish(dst))
            })
            .collect::<Result<Vec<T>>>()?;
        // SAFETY: the tasks cover all m·k elements (B images of OH·OW rows), all written.
        unsafe { cols.set_len(m * k) };
        (Some(cols), results)
    };
    // SAFETY: the tasks cover all m·C_out output elements, and matmul_into wrote each.
    unsafe { out.set_len(m * cout) };
    Ok((out, cols, results))
}

/// The checks both convolution backwards start with: the input, weight, dX (when given) and
/// dW buffers fit the shapes, and so do the caller's own (`own_fit`), or an error. For an
/// empty convolution it writes dX and dW as zeros and returns true: nothing is left to do.
#[allow(clippy::too_many_arguments)]
fn backward_is_done(
    x: &[f32],
    (b, h, w, c): Dims4,
    wt: &[f32],
    cout: usize,
    g: ConvGeometry,
    dx: Option<&mut [MaybeUninit<f32>]>,
    dwt: &mut [MaybeUninit<f32>],
    own_fit: bool,
) -> Result<bool> {
    let k = g.kernel * g.kernel * c;
    if !own_fit
        || x.len() != b * h * w * c
        || wt.len() != k * cout
        || dx.as_ref().is_some_and(|dx| dx.len() != x.len())
        || dwt.len() != k * cout
    {
        candle_core::bail!(
            "conv backward: buffers do not fit input {:?}, {cout} channels out, kernel {}",
            (b, h, w, c),
            g.kernel
        );
    }
    let m = b * g.output_size(h) * g.output_size(w);
    if m * cout * k > 0 {
        return Ok(false);
    }
    if let Some(dx) = dx {
        dx.fill(MaybeUninit::new(0.0));
    }
    dwt.fill(MaybeUninit::new(0.0));
    Ok(true)
}

/// Backward convolution on the CPU: from dY (B·OH·OW, C_out), `wt`, `x` (B, H, W, C_in) and
/// the forward im2col matrix (None when it is `x`), writes dX (B·H·W·C_in) and
/// dW (K·K·C_in, C_out) into `dx` and `dwt`, every element. Without `dx` (an input that
/// needs no gradient, such as the images into the first layer) dY·Wᵀ and col2im are skipped.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_backward_cpu(
    dy: &[f32],
    wt: &[f32],
    x: &[f32],
    (b, h, w, c): Dims4,
    cout: usize,
    g: ConvGeometry,
    cols: Option<&[f32]>,
    mut dx: Option<&mut [MaybeUninit<f32>]>,
    dwt: &mut [MaybeUninit<f32>],
) -> Result<()> {
    let (oh, ow) = (g.output_size(h), g.output_size(w));
    let (rows_per_image, k) = (oh * ow, g.kernel * g.kernel * c);
    let m = b * rows_per_image;
    let own_fit = dy.len() == m * cout && cols.is_none_or(|cols| cols.len() == m * k);
    let dims = (b, h, w, c);
    if backward_is_done(x, dims, wt, cout, g, dx.as_deref_mut(), dwt, own_fit)? {
        return Ok(());
    }
    // dW = colsᵀ · dY (cols is (m, k) row-major, read transposed): the rows split into one
    // part per thread, each a single-threaded product, then the partial sums added. In a gemm
    // probe this ran 1.9× as fast as one product split by gemm on the layer with the most
    // rows (B·14·14) and 0.8-0.9× on the two deeper layers, where dW is a smaller share of the
    // time; the whole blocked convolution was then measured end to end (docs/performance.md).
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
    sum_shares(&partials, dwt);
    let Some(dx) = dx else {
        return Ok(());
    };
    // dX = col2im(dY · Wᵀ) (wt is (k, C_out) row-major, read transposed), blocked by images:
    // each task's slice of dY · Wᵀ is added onto its own images while in cache, and the
    // B·OH·OW × K·K·C_in product never exists whole.
    let per_task = images_per_task(b, rows_per_image);
    let simd = Simd::current();
    let w_by_output = weight_by_output(wt, (k, cout));
    dx.par_chunks_mut(per_task * h * w * c)
        .zip(dy.par_chunks(per_task * rows_per_image * cout))
        .try_for_each(|(dx, dy)| {
            let dcols = &mut Vec::new();
            task_input_gradient(dx, dy, &w_by_output, (k, cout), g, (h, w, c), dcols, simd)
        })
}

/// The weight (K·K·C_in, C_out) as (C_out, K·K·C_in) row-major, for the input gradient dY·Wᵀ.
/// gemm computes a row-major product as its transpose, so its packed operand there is the
/// weight read down its columns: from (K·K·C_in, C_out) every task would pack it with a
/// strided transpose of the whole weight, from this layout with contiguous copies
/// (docs/performance.md). Transposed once per pass, not once per task; the fused node does it
/// in its forward pass beside the convolution's tasks, where it costs no wall time (in the
/// backward, the last layer's 0.3 ms ran while the other core waited). `wt` holds k·C_out
/// values.
pub(super) fn weight_by_output(wt: &[f32], (k, cout): (usize, usize)) -> Vec<f32> {
    let mut out = vec![0f32; k * cout];
    transpose::transpose(wt, &mut out, cout, k);
    out
}

/// dW as the sum of the threads' shares, added in share order (the same sum on every run), on
/// every thread: run on one, the last layer's two 1.2 MB shares took 0.4 ms while the other
/// core waited. Writes every element of `dwt` (zeros without shares).
fn sum_shares(shares: &[Vec<f32>], dwt: &mut [MaybeUninit<f32>]) {
    const CHUNK: usize = 16 * 1024;
    dwt.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        let range = i * CHUNK..i * CHUNK + out.len();
        let Some((first, rest)) = shares.split_first() else {
            out.fill(MaybeUninit::new(0.0));
            return;
        };
        for (d, &v) in out.iter_mut().zip(&first[range.clone()]) {
            d.write(v);
        }
        // SAFETY: the loop above wrote every element of `out` (each share holds dW whole).
        let out = unsafe { assume_init_mut(out) };
        for share in rest {
            for (d, &v) in out.iter_mut().zip(&share[range.clone()]) {
                *d += v;
            }
        }
    });
}

/// One task's dX = col2im(dY·Wᵀ) over its images: `dy` is the task's (rows, C_out) rows,
/// `w_by_output` the weight as (C_out, K·K·C_in) row-major ([`weight_by_output`]), `dx` its
/// images' gradient, every element written. dY·Wᵀ goes into `dcols` (a buffer the caller may
/// reuse), and col2im then gathers it into `dx` while both are in cache; a pointwise
/// convolution's product is dX itself.
#[allow(clippy::too_many_arguments)]
fn task_input_gradient(
    dx: &mut [MaybeUninit<f32>],
    dy: &[f32],
    w_by_output: &[f32],
    (k, cout): (usize, usize),
    g: ConvGeometry,
    (h, w, c): (usize, usize, usize),
    dcols: &mut Vec<f32>,
    simd: Simd,
) -> Result<()> {
    let rows = dy.len() / cout;
    if g.is_pointwise() {
        return matmul_into(dx, (rows, k, cout), dy, (cout, 1), w_by_output, (k, 1));
    }
    dcols.clear();
    dcols.reserve(rows * k);
    let spare = &mut dcols.spare_capacity_mut()[..rows * k];
    matmul_into(spare, (rows, k, cout), dy, (cout, 1), w_by_output, (k, 1))?;
    // SAFETY: matmul_into wrote every element of `spare`.
    let dcols = unsafe { assume_init(spare) };
    let (oh, ow) = (g.output_size(h), g.output_size(w));
    simd.run(
        #[inline(always)]
        || col2im_images(dcols, (oh, ow), g, (h, w, c), dx),
    );
    Ok(())
}

/// im2col of `images` into `scratch` (grown to `len` elements when needed; its contents are
/// overwritten), returning the `len` columns written.
fn im2col_into<'a>(
    scratch: &'a mut Vec<f32>,
    images: &[f32],
    hwc: (usize, usize, usize),
    g: ConvGeometry,
    len: usize,
    simd: Simd,
) -> &'a [f32] {
    scratch.clear();
    scratch.reserve(len);
    let cols = &mut scratch.spare_capacity_mut()[..len];
    simd.run(
        #[inline(always)]
        || im2col_images(images, hwc, g, cols),
    );
    // SAFETY: im2col_images wrote every element of `cols`.
    unsafe { assume_init(cols) }
}

/// What one part of [`conv_backward_recomputing`] carries from task to task: its share of dW
/// and buffers it reuses.
struct BackwardScratch {
    dw: Vec<f32>,
    dy: Vec<f32>,
    cols: Vec<f32>,
    dcols: Vec<f32>,
}

/// Backward convolution on the CPU without the forward pass's im2col matrix
/// ([`KeepColumns::No`]), blocked by images as the forward pass: each task gets its rows of
/// dY from `dy_rows` (the fused node computes them there, from the batch norm's backward),
/// builds its im2col columns again, adds colsᵀ·dY to its part's share of dW and writes its
/// images' dX = col2im(dY·Wᵀ), all while the task's rows are in cache; the parts' shares of
/// dW are added at the end. Neither the (B·OH·OW, K·K·C_in) columns nor the (B·OH·OW, C_out)
/// dY exist whole. The weight comes as (C_out, K·K·C_in) ([`weight_by_output`]), the layout
/// dY·Wᵀ packs fastest. Writes dX (when given) and dW whole, as [`conv_backward_cpu`].
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_backward_recomputing(
    x: &[f32],
    (b, h, w, c): Dims4,
    w_by_output: &[f32],
    cout: usize,
    g: ConvGeometry,
    dy_rows: impl Fn(std::ops::Range<usize>, &mut [MaybeUninit<f32>]) + Sync,
    mut dx: Option<&mut [MaybeUninit<f32>]>,
    dwt: &mut [MaybeUninit<f32>],
) -> Result<()> {
    let (oh, ow) = (g.output_size(h), g.output_size(w));
    let (rows_per_image, k) = (oh * ow, g.kernel * g.kernel * c);
    // The checks read only the weight's length, the same in either layout.
    let dims = (b, h, w, c);
    if backward_is_done(x, dims, w_by_output, cout, g, dx.as_deref_mut(), dwt, true)? {
        return Ok(());
    }
    let per_task = images_per_task(b, rows_per_image);
    let simd = Simd::current();
    let task = |scratch: &mut BackwardScratch,
                images: std::ops::Range<usize>,
                dx: Option<&mut [MaybeUninit<f32>]>|
     -> Result<()> {
        let rows = images.start * rows_per_image..images.end * rows_per_image;
        let n = rows.len();
        let dy = {
            scratch.dy.clear();
            scratch.dy.reserve(n * cout);
            let dy = &mut scratch.dy.spare_capacity_mut()[..n * cout];
            dy_rows(rows, dy);
            // SAFETY: dy_rows writes every element it is given.
            unsafe { assume_init(dy) }
        };
        let x_images = &x[images.start * h * w * c..images.end * h * w * c];
        let cols = if g.is_pointwise() {
            x_images
        } else {
            im2col_into(&mut scratch.cols, x_images, (h, w, c), g, n * k, simd)
        };
        // dW += colsᵀ · dY (cols is (n, k) row-major, read transposed).
        matmul_add_into(&mut scratch.dw, (k, cout, n), cols, (1, k), dy, (cout, 1))?;
        match dx {
            Some(dx) => task_input_gradient(
                dx,
                dy,
                w_by_output,
                (k, cout),
                g,
                (h, w, c),
                &mut scratch.dcols,
                simd,
            ),
            None => Ok(()),
        }
    };
    // One part of consecutive images per thread, as equal as whole images allow, each with
    // its own share of dW: a fixed partition, so that dW is summed in the same order on every
    // run. Within a part, tasks of `per_task` images. (Parts of whole tasks would be uneven
    // where few tasks cover the batch: 144 and 112 images of 256 on the default encoder's
    // last layer, one thread idle for the difference.)
    let parts = rayon::current_num_threads().clamp(1, b);
    let bounds: Vec<usize> = (0..=parts).map(|p| p * b / parts).collect();
    let image_len = h * w * c;
    let part = |images: std::ops::Range<usize>,
                dx: Option<&mut [MaybeUninit<f32>]>|
     -> Result<Vec<f32>> {
        let mut scratch = BackwardScratch {
            dw: vec![0f32; k * cout],
            dy: Vec::new(),
            cols: Vec::new(),
            dcols: Vec::new(),
        };
        let tasks = images
            .clone()
            .step_by(per_task)
            .map(|start| start..(start + per_task).min(images.end));
        match dx {
            Some(dx) => {
                for (task_images, dx) in tasks.zip(dx.chunks_mut((per_task * image_len).max(1))) {
                    task(&mut scratch, task_images, Some(dx))?;
                }
            }
            None => {
                for task_images in tasks {
                    task(&mut scratch, task_images, None)?;
                }
            }
        }
        Ok(scratch.dw)
    };
    let shares: Vec<Vec<f32>> = match dx {
        Some(mut dx) => {
            let mut slices = Vec::with_capacity(parts);
            for p in 0..parts {
                let len = (bounds[p + 1] - bounds[p]) * image_len;
                let (head, tail) = std::mem::take(&mut dx).split_at_mut(len);
                slices.push((bounds[p]..bounds[p + 1], head));
                dx = tail;
            }
            slices
                .into_par_iter()
                .map(|(images, dx)| part(images, Some(dx)))
                .collect::<Result<_>>()?
        }
        None => (0..parts)
            .into_par_iter()
            .map(|p| part(bounds[p]..bounds[p + 1], None))
            .collect::<Result<_>>()?,
    };
    sum_shares(&shares, dwt);
    Ok(())
}

/// A convolution's backward into one flat buffer, as the backward ops return it: dX
/// (`dx_len` elements, only when `need_dx`), dW (`dw_len`), then `tail` (the fused node's dγ
/// and dβ; empty for a plain convolution). `backward` is [`conv_backward_cpu`] or
/// [`conv_backward_recomputing`], which write dX (when given) and dW whole.
pub(super) fn conv_backward_packed(
    (dx_len, dw_len): (usize, usize),
    need_dx: bool,
    tail: &[f32],
    backward: impl FnOnce(Option<&mut [MaybeUninit<f32>]>, &mut [MaybeUninit<f32>]) -> Result<()>,
) -> Result<Vec<f32>> {
    let dx_len = if need_dx { dx_len } else { 0 };
    let len = dx_len + dw_len + tail.len();
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let (dx, rest) = out.spare_capacity_mut()[..len].split_at_mut(dx_len);
    let (dwt, rest) = rest.split_at_mut(dw_len);
    backward(need_dx.then_some(dx), dwt)?;
    for (d, &v) in rest.iter_mut().zip(tail) {
        d.write(v);
    }
    // SAFETY: the backward wrote dx and dwt whole (both backward functions' contract), the
    // loop the tail.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// Splits [`conv_backward_packed`]'s output back into dX (B, H, W, C_in; None unless
/// `need_dx`), dW (K·K·C_in, C_out) and the tail.
pub(super) fn split_conv_grads(
    packed: &Tensor,
    (b, h, w, c): Dims4,
    (k, cout): (usize, usize),
    need_dx: bool,
) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    let (dx_len, dw_len) = (if need_dx { b * h * w * c } else { 0 }, k * cout);
    let dx = if need_dx {
        Some(packed.narrow(0, 0, dx_len)?.reshape((b, h, w, c))?)
    } else {
        None
    };
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
pub(super) struct ConvRowsCpu {
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
                need_dx: x.track_op(),
            },
        )?;
        let (dx, dwt, _) = split_conv_grads(&packed, x.dims4()?, wt.dims2()?, x.track_op())?;
        Ok((dx, Some(dwt)))
    }
}

/// Backward of [`ConvRowsCpu`] over (dY, wt, x): one flat tensor, dX (B·H·W·C_in) then dW.
pub(super) struct ConvRowsCpuBackward {
    geometry: ConvGeometry,
    /// The forward im2col matrix (None for pointwise convolutions: x is that matrix).
    cols: Option<Arc<Vec<f32>>>,
    /// Whether x needs a gradient (it does not when nothing before it has parameters).
    need_dx: bool,
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
        let out = conv_backward_packed((x.len(), wt.len()), self.need_dx, &[], |dx, dwt| {
            conv_backward_cpu(dy, wt, x, dims, cout, self.geometry, cols, dx, dwt)
        })?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// im2col and the matrix product with the (K·K·C_in, C_out) weight as one autograd node, for
/// the devices that have im2col kernels (CUDA; the CPU runs it too, for the tests). Candle's
/// autograd gives each node's inputs a zero-filled gradient buffer that the node's gradient is
/// added to: with im2col and the product as two nodes that buffer has the im2col matrix's size
/// (K·K times the activations'), and on an H200 filling and adding it took about an eighth of
/// a ResNet-18 step (docs/gpu.md). The backward recomputes the columns rather than keeping
/// them from the forward pass, then computes dW = colsᵀ·dY and dX = col2im(dY·Wᵀ) directly.
#[derive(Clone, Copy, Debug)]
pub(super) struct Im2ColProduct {
    pub(super) geometry: ConvGeometry,
}

impl Im2ColProduct {
    /// (B·OH·OW, C_out) rows from `x` (B, H, W, C_in, contiguous) and `wt`, with `im2col`
    /// building the columns on the storages' device.
    fn forward<S: BackendStorage>(
        &self,
        (x, xl): (&S, &Layout),
        (wt, wl): (&S, &Layout),
        im2col: impl FnOnce(&S, &Layout) -> Result<(S, Shape)>,
    ) -> Result<(S, Shape)> {
        let (b, h, w, c) = dims4(xl, self.name())?;
        let (k, cout) = wl.shape().dims2()?;
        let g = self.geometry;
        if k != g.kernel * g.kernel * c {
            candle_core::bail!(
                "{}: weight of {k} rows does not fit kernel {} over {c} channels",
                self.name(),
                g.kernel
            );
        }
        if !xl.is_contiguous() {
            candle_core::bail!("{}: input must be contiguous", self.name());
        }
        let m = b * g.output_size(h) * g.output_size(w);
        let out = if g.is_pointwise() {
            // A 1×1, stride-1 convolution's im2col matrix is the input itself.
            let rows = Layout::contiguous_with_offset((m, k), xl.start_offset());
            x.matmul(wt, (1, m, cout, k), &rows, wl)?
        } else {
            let (cols, _) = im2col(x, xl)?;
            cols.matmul(wt, (1, m, cout, k), &Layout::contiguous((m, k)), wl)?
        };
        Ok((out, Shape::from((m, cout))))
    }
}

impl CustomOp2 for Im2ColProduct {
    fn name(&self) -> &'static str {
        "im2col-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let im2col = Im2Col {
            geometry: self.geometry,
        };
        self.forward((s1, l1), (s2, l2), |s, l| im2col.cpu_fwd(s, l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let im2col = Im2Col {
            geometry: self.geometry,
        };
        self.forward((s1, l1), (s2, l2), |s, l| im2col.cuda_fwd(s, l))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let need_dx = x.track_op();
        // Nothing here needs differentiating again: detached, no graph is built.
        let (x, wt, dy) = (x.detach(), wt.detach(), grad.detach().contiguous()?);
        let (b, h, w, c) = x.dims4()?;
        let g = self.geometry;
        let (oh, ow) = (g.output_size(h), g.output_size(w));
        let k = g.kernel * g.kernel * c;
        let cols = if g.is_pointwise() {
            x.contiguous()?.reshape((b * h * w, c))?
        } else {
            x.contiguous()?
                .apply_op1_no_bwd(&Im2Col { geometry: g })?
                .reshape((b * oh * ow, k))?
        };
        let dwt = cols.t()?.matmul(&dy)?;
        drop(cols);
        let dx = if need_dx {
            let dcols = dy.matmul(&wt.t()?)?;
            Some(if g.is_pointwise() {
                dcols.reshape((b, h, w, c))?
            } else {
                dcols
                    .reshape((b, oh, ow, k))?
                    .apply_op1_no_bwd(&Col2Im::new(g, h, w))?
            })
        } else {
            None
        };
        Ok((dx, Some(dwt)))
    }
}

/// Convolution of a channels-last batch `x` (B, H, W, C_in) with `weight` (C_out, C_in, K, K),
/// returning (B·OH·OW, C_out) rows and the output's (B, OH, OW): callers apply per-channel
/// operations (batch norm, ReLU) on the rows before reshaping to (B, OH, OW, C_out).
/// On the CPU the convolution is one fused op ([`ConvRowsCpu`]); elsewhere im2col and the
/// product are one node ([`Im2ColProduct`]).
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
        conv2d_nhwc_rows_one_node(x, weight, geometry)
    }
}

/// im2col and the product as one node ([`Im2ColProduct`]).
pub(super) fn conv2d_nhwc_rows_one_node(
    x: &Tensor,
    weight: &Tensor,
    geometry: ConvGeometry,
) -> Result<(Tensor, (usize, usize, usize))> {
    conv_rows(x, weight, geometry, |x, wt, geometry| {
        x.contiguous()?.apply_op2(wt, Im2ColProduct { geometry })
    })
}

/// The im2col kernel ([`Im2Col`], CUDA or CPU) followed by candle's matmul: two autograd nodes
/// (the tests check [`Im2ColProduct`]'s single node against it).
#[cfg(test)]
pub(super) fn conv2d_nhwc_rows_im2col_op(
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
/// the CUDA im2col kernels (docs/gpu.md).
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
pub(super) fn conv_rows(
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
    let wt = if weight.device().is_cpu() {
        weight.apply_op1(WeightMatrixCpu)?
    } else {
        weight
            .permute((0, 2, 3, 1))?
            .reshape((cout, kh * kw * cin))?
            .t()?
            .contiguous()?
    };
    Ok((product(x, &wt, geometry)?, (b, oh, ow)))
}

/// A convolution's weight (C_out, C_in, K, K) as the (K·K·C_in, C_out) matrix that multiplies
/// im2col's rows (ordered ky, kx, c), in one CPU node whose backward writes the weight's
/// gradient in the weight's own layout. As candle's permute, reshape, transpose and copy,
/// the backward passed a transposed, permuted view down, copied element by element twice
/// (by the reshape, and when the gradient was stored) on the main thread while the workers
/// waited.
struct WeightMatrixCpu;

impl CustomOp1 for WeightMatrixCpu {
    fn name(&self) -> &'static str {
        "conv-weight-matrix"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = f32_contiguous(storage, layout, self.name())?;
        let (cout, cin, kh, kw) = dims4(layout, self.name())?;
        let taps = kh * kw;
        let mut wt = vec![0f32; w.len()];
        // (max(1): an empty weight has no filters to move.)
        for (co, filter) in w.chunks_exact((cin * taps).max(1)).enumerate() {
            for (ci, channel) in filter.chunks_exact(taps.max(1)).enumerate() {
                for (t, &v) in channel.iter().enumerate() {
                    wt[(t * cin + ci) * cout + co] = v;
                }
            }
        }
        Ok((CpuStorage::F32(wt), Shape::from((taps * cin, cout))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dims = arg.dims4()?;
        let dw = grad
            .contiguous()?
            .apply_op1_no_bwd(&WeightFromMatrixCpu { dims })?;
        Ok(Some(dw))
    }
}

/// The inverse of [`WeightMatrixCpu`]: a (K·K·C_in, C_out) matrix back to (C_out, C_in, K, K).
struct WeightFromMatrixCpu {
    dims: Dims4,
}

impl CustomOp1 for WeightFromMatrixCpu {
    fn name(&self) -> &'static str {
        "conv-weight-from-matrix"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let wt = f32_contiguous(storage, layout, self.name())?;
        let (cout, cin, kh, kw) = self.dims;
        let taps = kh * kw;
        if wt.len() != cout * cin * taps {
            candle_core::bail!(
                "{}: {} values do not fit a weight of {:?}",
                self.name(),
                wt.len(),
                self.dims
            );
        }
        let mut w = vec![0f32; wt.len()];
        for (j, row) in wt.chunks_exact(cout.max(1)).enumerate() {
            let (t, ci) = (j / cin, j % cin);
            for (co, &v) in row.iter().enumerate() {
                w[(co * cin + ci) * taps + t] = v;
            }
        }
        Ok((CpuStorage::F32(w), Shape::from(self.dims)))
    }
}

/// im2col as a tensor (`im2col` builds the (B, OH, OW, K·K·C_in) columns; 1×1 stride-1
/// convolutions skip it), then one candle matmul with `wt`.
pub(super) fn im2col_matmul(
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
pub(super) fn im2col_by_views(x: &Tensor, geometry: ConvGeometry) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// The weight by output channel is the weight matrix transposed.
    #[test]
    fn the_weight_by_output_is_the_transpose() {
        for (k, cout) in [(7, 37), (288, 64), (3, 1), (0, 4)] {
            let wt: Vec<f32> = (0..k * cout).map(|i| i as f32).collect();
            let out = weight_by_output(&wt, (k, cout));
            assert_eq!(out.len(), k * cout);
            for o in 0..cout {
                for i in 0..k {
                    assert_eq!(out[o * k + i], wt[i * cout + o], "{k}×{cout} at ({o}, {i})");
                }
            }
        }
    }

    /// dW's shares are summed in share order on every chunk, bit for bit the sequential sum,
    /// across chunk boundaries; without shares dW is zero.
    #[test]
    fn shares_sum_in_order() {
        let len = 40_000;
        let shares: Vec<Vec<f32>> = (0..3)
            .map(|s| {
                (0..len)
                    .map(|i| ((i * 7 + s * 13) % 101) as f32 * 0.1 - 5.0)
                    .collect()
            })
            .collect();
        let mut dwt = vec![MaybeUninit::new(f32::NAN); len];
        sum_shares(&shares, &mut dwt);
        for (j, d) in dwt.iter().enumerate() {
            let expected = (shares[0][j] + shares[1][j]) + shares[2][j];
            assert_eq!(
                unsafe { d.assume_init() }.to_bits(),
                expected.to_bits(),
                "element {j}"
            );
        }
        let mut empty = vec![MaybeUninit::new(f32::NAN); 5];
        sum_shares(&[], &mut empty);
        assert!(empty.iter().all(|d| unsafe { d.assume_init() } == 0.0));
    }

    /// The weight-matrix node equals candle's permute, reshape and transpose, forward, and its
    /// backward gives the weight the same gradient (the same values, moved), also for an empty
    /// weight.
    #[test]
    fn the_weight_matrix_node_equals_the_view_chain() {
        let (cout, cin, k) = (5, 3, 3);
        let device = Device::Cpu;
        let values: Vec<f32> = (0..cout * cin * k * k).map(|i| i as f32).collect();
        let w = Var::from_tensor(&Tensor::from_vec(values, (cout, cin, k, k), &device).unwrap())
            .unwrap();
        let by_views = w
            .permute((0, 2, 3, 1))
            .unwrap()
            .reshape((cout, k * k * cin))
            .unwrap()
            .t()
            .unwrap();
        let ours = w.apply_op1(WeightMatrixCpu).unwrap();
        assert_eq!(ours.dims(), &[k * k * cin, cout]);
        assert_eq!(
            ours.to_vec2::<f32>().unwrap(),
            by_views.to_vec2::<f32>().unwrap()
        );
        let up: Vec<f32> = (0..k * k * cin * cout).map(|i| (i as f32).sin()).collect();
        let up = Tensor::from_vec(up, (k * k * cin, cout), &device).unwrap();
        let gradient = |t: Tensor| -> Vec<f32> {
            let grads = (t * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g = grads.get(&w).unwrap();
            assert_eq!(g.dims(), &[cout, cin, k, k]);
            g.flatten_all().unwrap().to_vec1().unwrap()
        };
        assert_eq!(gradient(ours), gradient(by_views));
        let empty = Tensor::zeros((0, 2, 3, 3), DType::F32, &device).unwrap();
        let matrix = empty.apply_op1(WeightMatrixCpu).unwrap();
        assert_eq!(matrix.dims(), &[18, 0]);
    }
}
