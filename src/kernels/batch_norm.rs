//! Training-mode batch norm over the rows of an (N, C) matrix, optionally followed by ReLU,
//! with a fused single-sweep backward pass (CPU).

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_contiguous;
use super::simd::Simd;

/// Per-channel batch statistics of the last forward pass, for the running averages.
pub type BatchStats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

/// Training-mode batch norm of (N, C) rows: y = (x − mean)·invstd·γ + β with batch mean and
/// biased variance per column, optionally followed by ReLU. Candle's composition of broadcast
/// ops spends most of its backward pass reducing broadcast gradients column-wise; this does
/// each pass in one sweep. Fusing the ReLU saves candle's ReLU backward (a zero tensor, a
/// comparison, a cast and a product) and one autograd node's gradient buffer per layer.
#[derive(Clone, Debug)]
pub(super) struct BatchNormRows {
    eps: f64,
    relu: bool,
    /// (mean, biased variance) of the forward pass, for the running averages and the backward.
    stats: BatchStats,
}

/// Rows per parallel task in the batch-norm kernels.
pub(super) const ROWS: usize = 256;

/// Column sums over the rows of an (N, ·) matrix, in parallel: `f(rows, acc)` adds one chunk
/// of at most [`ROWS`] rows into `acc` (`width` f32 sums, short enough to stay exact to
/// ~1e-6 relative), compiled for `simd`; the chunks' sums add up in f64.
pub(super) fn column_sums(
    simd: Simd,
    n: usize,
    width: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) -> Vec<f64> {
    (0..n.div_ceil(ROWS))
        .into_par_iter()
        .map(|chunk| {
            let mut acc = vec![0f32; width];
            simd.run(
                #[inline(always)]
                || f(chunk * ROWS..((chunk + 1) * ROWS).min(n), &mut acc),
            );
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
pub(super) fn moments(simd: Simd, x: &[f32], n: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
    let sums = column_sums(
        simd,
        n,
        c,
        #[inline(always)]
        |rows, acc| {
            for row in rows {
                for (a, &v) in acc.iter_mut().zip(&x[row * c..(row + 1) * c]) {
                    *a += v;
                }
            }
        },
    );
    let mean: Vec<f32> = sums.iter().map(|s| (s / n as f64) as f32).collect();
    let sq = column_sums(
        simd,
        n,
        c,
        #[inline(always)]
        |rows, acc| {
            for row in rows {
                for ((a, &v), &m) in acc.iter_mut().zip(&x[row * c..(row + 1) * c]).zip(&mean) {
                    let d = v - m;
                    *a += d * d;
                }
            }
        },
    );
    (mean, sq.iter().map(|s| (s / n as f64) as f32).collect())
}

/// Moments of one block of (·, C) rows, for [`combine_moments`]: (rows, per-column mean,
/// per-column sum of squared deviations from that mean). The corrected two-pass algorithm
/// (Chan, Golub and LeVeque): a first pass for an f32 mean m, a second for Σ(x − m) and
/// Σ(x − m)², which remove m's rounding error from both results; the block is small enough
/// to stay in cache (a convolution task's output). Compiled for `simd`.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct BlockMoments {
    rows: usize,
    /// In f64: rounded to f32, a mean far from zero would lose the digits that the
    /// differences between blocks' means carry.
    mean: Vec<f64>,
    m2: Vec<f64>,
}

pub(super) fn block_moments(simd: Simd, x: &[f32], c: usize) -> BlockMoments {
    let rows = x.len().checked_div(c).unwrap_or(0);
    let mut mean = vec![0f32; c];
    let mut m2 = vec![0f32; c];
    if rows == 0 {
        let zeros = vec![0f64; c];
        return BlockMoments {
            rows,
            mean: zeros.clone(),
            m2: zeros,
        };
    }
    let mut residual = vec![0f32; c];
    simd.run(
        #[inline(always)]
        || {
            for row in x.chunks_exact(c) {
                mean.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
            }
            let inv = 1.0 / rows as f32;
            mean.iter_mut().for_each(|s| *s *= inv);
            for row in x.chunks_exact(c) {
                for (((a, r), &v), &m) in m2.iter_mut().zip(residual.iter_mut()).zip(row).zip(&mean)
                {
                    let d = v - m;
                    *r += d;
                    *a += d * d;
                }
            }
        },
    );
    let n = rows as f64;
    BlockMoments {
        rows,
        mean: mean
            .iter()
            .zip(&residual)
            .map(|(&m, &r)| m as f64 + r as f64 / n)
            .collect(),
        m2: m2
            .iter()
            .zip(&residual)
            .map(|(&a, &r)| (a as f64 - (r as f64) * (r as f64) / n).max(0.0))
            .collect(),
    }
}

/// Per-column mean and biased variance of the rows of all blocks together (Chan et al.'s
/// pairwise update, in f64): as exact as [`moments`]'s two passes, without reading the rows
/// again.
pub(super) fn combine_moments(blocks: &[BlockMoments], c: usize) -> (Vec<f32>, Vec<f32>) {
    let n: usize = blocks.iter().map(|b| b.rows).sum();
    if n == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let mut mean = vec![0f64; c];
    for b in blocks {
        for (m, &bm) in mean.iter_mut().zip(&b.mean) {
            *m += b.rows as f64 * bm;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut m2 = vec![0f64; c];
    for b in blocks {
        for ((a, &bm2), (&bm, &m)) in m2.iter_mut().zip(&b.m2).zip(b.mean.iter().zip(&mean)) {
            let d = bm - m;
            *a += bm2 + b.rows as f64 * d * d;
        }
    }
    (
        mean.iter().map(|&m| m as f32).collect(),
        m2.iter().map(|&v| (v / n as f64) as f32).collect(),
    )
}

/// Training-mode batch norm of (N, C) rows: returns y (with the ReLU when `relu`) and the
/// batch mean and biased variance per column; the sweeps are compiled for `simd`.
pub(super) fn bn_forward_cpu(
    simd: Simd,
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
    let (mean, var) = moments(simd, x, n, c);
    let affine = BnAffine::new(gamma, beta, eps, (&mean, &var));
    let y = bn_normalize(simd, x, (n, c), &affine, relu);
    (y, mean, var)
}

/// A training-mode batch norm's per-channel map y = x·scale + shift, with scale = γ·invstd and
/// shift = β − mean·scale, from the batch statistics. The backward pass builds it again to
/// find where the ReLU passed its input (x·scale + shift > 0, the same floats as the forward
/// pass), instead of reading the output back.
#[derive(Debug)]
pub(super) struct BnAffine {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl BnAffine {
    pub(super) fn new(
        gamma: &[f32],
        beta: &[f32],
        eps: f64,
        (mean, var): (&[f32], &[f32]),
    ) -> Self {
        let scale: Vec<f32> = var
            .iter()
            .zip(gamma)
            .map(|(&v, &g)| g / (v as f64 + eps).sqrt() as f32)
            .collect();
        let shift = beta
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((&b, &m), &a)| b - m * a)
            .collect();
        Self { scale, shift }
    }
}

/// y = x·scale + shift for (N, C) rows, then ReLU when `relu`; compiled for `simd`.
pub(super) fn bn_normalize(
    simd: Simd,
    x: &[f32],
    (n, c): (usize, usize),
    BnAffine { scale, shift }: &BnAffine,
    relu: bool,
) -> Vec<f32> {
    if n * c == 0 {
        return Vec::new();
    }
    let mut y: Vec<f32> = Vec::with_capacity(n * c);
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    y.spare_capacity_mut()[..n * c]
        .par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c))
        .for_each(|(ys, xs)| {
            simd.run(
                #[inline(always)]
                || {
                    for (yr, xr) in ys.chunks_exact_mut(c).zip(xs.chunks_exact(c)) {
                        let columns = scale.iter().zip(shift);
                        for ((y, &x), (&a, &b)) in yr.iter_mut().zip(xr).zip(columns) {
                            y.write((x * a + b).max(floor));
                        }
                    }
                },
            )
        });
    // SAFETY: the chunks cover all n·c elements and every one was written.
    unsafe { y.set_len(n * c) };
    y
}

/// What the batch norm's backward pass needs beyond the rows themselves: dγ and dβ, and
/// per channel the coefficients of dx = a·g + b·x + d, with g = dy where the ReLU passed
/// (where x·scale + shift > 0; everywhere without the ReLU).
pub(super) struct BnBackward {
    pub(super) dgamma: Vec<f32>,
    pub(super) dbeta: Vec<f32>,
    coef_g: Vec<f32>,
    coef_x: Vec<f32>,
    offset: Vec<f32>,
    affine: BnAffine,
    floor: f32,
}

/// The batch norm's backward pass, first half: one sweep over its input x and the gradient
/// dy reaching its output for dγ, dβ and the coefficients of dx ([`bn_backward_rows`] writes
/// dx). The ReLU's mask comes from the forward pass's map, built again from γ, β and the
/// statistics ([`BnAffine`]). Compiled for `simd`.
pub(super) fn bn_backward_coefficients(
    simd: Simd,
    (x, dy): (&[f32], &[f32]),
    (n, c): (usize, usize),
    (gamma, beta): (&[f32], &[f32]),
    (mean, var): (&[f32], &[f32]),
    eps: f64,
    relu: bool,
) -> BnBackward {
    let affine = BnAffine::new(gamma, beta, eps, (mean, var));
    // The gradient reaching the batch norm's output is dy where x·scale + shift > floor:
    // everywhere without the ReLU, where the ReLU passed its input with it.
    let floor = if relu { 0.0 } else { f32::NEG_INFINITY };
    if n * c == 0 {
        let zeros = vec![0.0; c];
        return BnBackward {
            dgamma: zeros.clone(),
            dbeta: zeros.clone(),
            coef_g: zeros.clone(),
            coef_x: zeros.clone(),
            offset: zeros,
            affine,
            floor,
        };
    }
    let (scale, shift) = (&affine.scale[..c], &affine.shift[..c]);
    let (mean, gamma) = (&mean[..c], &gamma[..c]);
    let invstd: Vec<f32> = var[..c]
        .iter()
        .map(|&v| (1.0 / (v as f64 + eps).sqrt()) as f32)
        .collect();
    // dβ = Σ g and Σ g·(x − mean) in one sweep; dγ = invstd · the latter.
    // (Iterator zips rather than indices: they let the compiler vectorise the rows.)
    let sums = column_sums(
        simd,
        n,
        2 * c,
        #[inline(always)]
        |rows, acc| {
            let (sum_g, sum_gx) = acc.split_at_mut(c);
            let r = rows.start * c..rows.end * c;
            let (xs, ds) = (&x[r.clone()], &dy[r]);
            for (xr, dr) in xs.chunks_exact(c).zip(ds.chunks_exact(c)) {
                let sums = sum_g.iter_mut().zip(sum_gx.iter_mut());
                let columns = mean.iter().zip(scale).zip(shift);
                for ((sg, sgx), (((&m, &a), &b), (&xv, &dv))) in
                    sums.zip(columns.zip(xr.iter().zip(dr)))
                {
                    let g = if xv * a + b > floor { dv } else { 0.0 };
                    *sg += g;
                    *sgx += g * (xv - m);
                }
            }
        },
    );
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
    BnBackward {
        dgamma,
        dbeta,
        coef_g,
        coef_x,
        offset,
        affine,
        floor,
    }
}

/// The batch norm's backward pass, second half, on some rows of (x, dy): writes every
/// element of their dx, on the calling thread. Always inlined, so that it gets the target
/// features of the caller's [`Simd::run`].
#[inline(always)]
pub(super) fn bn_backward_rows(
    coefficients: &BnBackward,
    (x, dy): (&[f32], &[f32]),
    dx: &mut [MaybeUninit<f32>],
) {
    let BnBackward {
        coef_g,
        coef_x,
        offset,
        affine: BnAffine { scale, shift },
        floor,
        ..
    } = coefficients;
    let c = coef_g.len();
    if c == 0 {
        return;
    }
    let rows = x.chunks_exact(c).zip(dy.chunks_exact(c));
    for (out, (xr, dr)) in dx.chunks_exact_mut(c).zip(rows) {
        let mask = scale.iter().zip(shift);
        let columns = coef_g.iter().zip(coef_x).zip(offset).zip(mask);
        let values = xr.iter().zip(dr);
        for ((o, (((&a, &b), &d), (&sa, &sb))), (&xv, &dv)) in
            out.iter_mut().zip(columns).zip(values)
        {
            let g = if xv * sa + sb > *floor { dv } else { 0.0 };
            o.write(a * g + b * xv + d);
        }
    }
}

/// The batch norm's whole backward pass: from its input x, the gradient dy reaching its
/// output, γ, β and the forward statistics, writes dx into `dx` (every element) and returns
/// (dγ, dβ). The sweeps are compiled for `simd`.
#[allow(clippy::too_many_arguments)]
pub(super) fn bn_backward_cpu(
    simd: Simd,
    (x, dy): (&[f32], &[f32]),
    (n, c): (usize, usize),
    (gamma, beta): (&[f32], &[f32]),
    (mean, var): (&[f32], &[f32]),
    eps: f64,
    relu: bool,
    dx: &mut [MaybeUninit<f32>],
) -> (Vec<f32>, Vec<f32>) {
    let coefficients =
        bn_backward_coefficients(simd, (x, dy), (n, c), (gamma, beta), (mean, var), eps, relu);
    if n * c > 0 {
        let chunk = ROWS * c;
        dx.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(dy.par_chunks(chunk))
            .for_each(|((dxs, xs), ds)| {
                simd.run(
                    #[inline(always)]
                    || bn_backward_rows(&coefficients, (xs, ds), dxs),
                )
            });
    }
    (coefficients.dgamma, coefficients.dbeta)
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
        let (y, mean, var) =
            bn_forward_cpu(Simd::current(), x, (n, c), gamma, beta, self.eps, self.relu);
        if let Ok(mut slot) = self.stats.lock() {
            *slot = Some((mean, var));
        }
        Ok((CpuStorage::F32(y), Shape::from((n, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
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
        let packed = x.contiguous()?.apply_op2_no_bwd(
            &grad.contiguous()?,
            &BatchNormRowsBackward {
                eps: self.eps,
                relu: self.relu,
                gamma: gamma.to_vec1::<f32>()?,
                beta: beta.to_vec1::<f32>()?,
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

/// Backward of [`BatchNormRows`] over (x, dy); returns (N + 2, C): dx rows, then dγ, then dβ.
/// With the ReLU, dy counts only where the output was positive.
pub(super) struct BatchNormRowsBackward {
    eps: f64,
    relu: bool,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    /// The forward pass's batch statistics.
    mean: Vec<f32>,
    var: Vec<f32>,
}

impl CustomOp2 for BatchNormRowsBackward {
    fn name(&self) -> &'static str {
        "batch-norm-rows-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_contiguous(s1, l1, self.name())?;
        let dy = f32_contiguous(s2, l2, self.name())?;
        let (n, c) = l1.shape().dims2()?;
        let mut out: Vec<f32> = Vec::with_capacity((n + 2) * c);
        let (dx, tail) = out.spare_capacity_mut()[..(n + 2) * c].split_at_mut(n * c);
        let (dgamma, dbeta) = bn_backward_cpu(
            Simd::current(),
            (x, dy),
            (n, c),
            (&self.gamma, &self.beta),
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
