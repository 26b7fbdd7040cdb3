//! Single-threaded row-major matrix products with the `gemm` crate (the kernels candle's own
//! CPU matmul calls), writing into possibly uninitialised buffers.

use std::mem::MaybeUninit;

use candle_core::Result;

/// A row-major (m, n) matrix product `lhs · rhs` into `dst`, every element written (none read,
/// so `dst` may be uninitialised), on the calling thread: the convolution runs one product per
/// rayon task (see `conv::TASK_ROWS`). `lhs` is (m, k) and `rhs` (k, n), each given as (row
/// stride, column stride) into its slice, so transposed operands need no copy. gemm is the
/// crate candle's own CPU matmul calls.
pub(super) fn matmul_into(
    dst: &mut [MaybeUninit<f32>],
    shape: (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) -> Result<()> {
    let len = dst.len();
    product(
        (dst.as_mut_ptr().cast(), len),
        shape,
        (lhs, lhs_strides),
        (rhs, rhs_strides),
        false,
    )
}

/// [`matmul_into`] that adds the product to `dst` instead of overwriting it.
pub(super) fn matmul_add_into(
    dst: &mut [f32],
    shape: (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) -> Result<()> {
    let len = dst.len();
    product(
        (dst.as_mut_ptr(), len),
        shape,
        (lhs, lhs_strides),
        (rhs, rhs_strides),
        true,
    )
}

/// dst = lhs · rhs, or dst += lhs · rhs when `accumulate`, single-threaded. `dst` is the
/// pointer and length of a slice that only this call uses, uninitialised unless `accumulate`.
fn product(
    (dst, dst_len): (*mut f32, usize),
    (m, n, k): (usize, usize, usize),
    (lhs, (lhs_rs, lhs_cs)): (&[f32], (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (&[f32], (usize, usize)),
    accumulate: bool,
) -> Result<()> {
    // The last element each operand is read at must lie inside it: gemm takes raw pointers.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    if dst_len != m * n
        || (m * k > 0 && last(m, k, lhs_rs, lhs_cs) >= lhs.len())
        || (k * n > 0 && last(k, n, rhs_rs, rhs_cs) >= rhs.len())
    {
        candle_core::bail!(
            "matmul_into: ({m}×{k})·({k}×{n}) does not fit operands of {} and {} and a result of {}",
            lhs.len(),
            rhs.len(),
            dst_len
        );
    }
    // SAFETY: the bounds were checked above; dst is a distinct &mut slice of m·n elements,
    // written row-major (row stride n, column stride 1). With read_dst = false gemm never
    // reads dst (alpha is zero: every path, k = 0 included, stores without loading), so
    // uninitialised memory is fine; every element is written. With read_dst = true and
    // alpha = 1 it adds the product to dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
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
pub(super) fn matmul_vec(
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
