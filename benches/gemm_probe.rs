//! Times candle's CPU matrix products at the shapes of the default encoder's convolutions
//! (width 32, batch 128, 28×28): forward cols·W, backward dY·Wᵀ and colsᵀ·dY. Prints GFLOP/s.
//!
//! Then the products as the training step's blocked convolution runs them, one per thread
//! (about `kernels::TASK_ROWS` output rows per forward and dY·Wᵀ task, or the first
//! argument's count, dW in one part per thread), in both orientations of dW: colsᵀ·dY, and
//! dWᵀ = dYᵀ·cols.
//!
//!     cargo bench --bench gemm_probe [-- TASK_ROWS]

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`.
    let task_rows: usize = std::env::args().skip(1).find(|a| a != "--bench").map_or(
        Ok(salient::kernels::TASK_ROWS),
        |a| {
            a.parse()
                .map_err(|e| anyhow::anyhow!("TASK_ROWS {a:?}: {e}"))
        },
    )?;
    let dev = Device::Cpu;
    let shapes = [
        (100_352, 9, 32),
        (25_088, 288, 64),
        (6_272, 576, 128),
        (2_048, 1_152, 256),
    ];
    let mut total = 0.0;
    for (m, k, n) in shapes {
        let cols = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (k, n), &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (m, n), &dev)?;
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> anyhow::Result<f64> {
            f()?;
            let reps = 10;
            let start = Instant::now();
            for _ in 0..reps {
                f()?;
            }
            Ok(start.elapsed().as_secs_f64() / reps as f64)
        };
        let flops = 2.0 * (m * k * n) as f64;
        let fwd = time(&|| cols.matmul(&w))?;
        let dcols = time(&|| dy.matmul(&w.t()?))?;
        let dw = time(&|| cols.t()?.matmul(&dy))?;
        total += fwd + dcols + dw;
        println!(
            "M {m:>6} K {k:>5} N {n:>4}: fwd {:>6.1} GFLOP/s  dcols {:>6.1}  dW {:>6.1}  ({:.1} ms total)",
            flops / fwd / 1e9,
            flops / dcols / 1e9,
            flops / dw / 1e9,
            (fwd + dcols + dw) * 1e3
        );
    }
    println!(
        "all three products of the four layers: {:.1} ms",
        total * 1e3
    );
    println!("single-threaded, at the blocked convolution's shapes (GFLOP/s per core):");
    // (rows per image, K, C_out) of the three stride-2 layers, batch 128.
    for (per_image, k, n) in [(196, 288, 64), (49, 576, 128), (16, 1_152, 256)] {
        let rows = (task_rows / per_image).max(1) * per_image;
        let part = 128 * per_image / 2;
        let cols: Vec<f32> = (0..part * k)
            .map(|i| ((i * 7919) % 997) as f32 / 997.0)
            .collect();
        let dy: Vec<f32> = (0..part * n)
            .map(|i| ((i * 104_729) % 991) as f32 / 991.0)
            .collect();
        let wt: Vec<f32> = (0..k * n).map(|i| ((i * 31) % 89) as f32 / 89.0).collect();
        let mut out = vec![0f32; part * k.max(n)];
        // (m, n, k), dst (rs, cs), lhs and its (rs, cs), rhs and its (rs, cs).
        let mut run = |(m, nn, kk): (usize, usize, usize),
                       dst: (isize, isize),
                       lhs: (&[f32], isize, isize),
                       rhs: (&[f32], isize, isize)| {
            let once = |out: &mut [f32]| unsafe {
                gemm::gemm(
                    m,
                    nn,
                    kk,
                    out.as_mut_ptr(),
                    dst.1,
                    dst.0,
                    false,
                    lhs.0.as_ptr(),
                    lhs.2,
                    lhs.1,
                    rhs.0.as_ptr(),
                    rhs.2,
                    rhs.1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
            once(&mut out);
            let reps = 20;
            let start = Instant::now();
            for _ in 0..reps {
                once(&mut out);
            }
            let secs = start.elapsed().as_secs_f64() / reps as f64;
            2.0 * (m * nn * kk) as f64 / secs / 1e9
        };
        let (ki, ni) = (k as isize, n as isize);
        let fwd = run((rows, n, k), (ni, 1), (&cols, ki, 1), (&wt, ni, 1));
        // dY·Wᵀ with the weight as the convolution holds it (K, C_out), read transposed, and
        // as the backward passes it, (C_out, K) row-major (`conv::weight_by_output`).
        let dcols_strided = run((rows, k, n), (ki, 1), (&dy, ni, 1), (&wt, 1, ni));
        let dcols = run((rows, k, n), (ki, 1), (&dy, ni, 1), (&wt, ki, 1));
        let dw = run((k, n, part), (ni, 1), (&cols, 1, ki), (&dy, ni, 1));
        let dwt = run((n, k, part), (ki, 1), (&dy, 1, ni), (&cols, ki, 1));
        // dW summed task by task over the part's rows (gemm reading and adding to dst), as a
        // backward that recomputes each task's columns in cache would run it.
        let mut acc = vec![0f32; k * n];
        let tasks = part / rows;
        let accumulate = |acc: &mut [f32]| {
            for t in 0..tasks {
                unsafe {
                    gemm::gemm(
                        k,
                        n,
                        rows,
                        acc.as_mut_ptr(),
                        1,
                        ni,
                        t > 0,
                        cols[t * rows * k..].as_ptr(),
                        ki,
                        1,
                        dy[t * rows * n..].as_ptr(),
                        1,
                        ni,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            }
        };
        accumulate(&mut acc);
        let start = Instant::now();
        for _ in 0..20 {
            accumulate(&mut acc);
        }
        let secs = start.elapsed().as_secs_f64() / 20.0;
        let dw_tasks = 2.0 * (k * n * tasks * rows) as f64 / secs / 1e9;
        println!(
            "rows {rows:>4} K {k:>5} N {n:>4} (dW over {part:>5} rows): fwd {fwd:>6.1}  dcols {dcols:>6.1} \
             (W read transposed {dcols_strided:>6.1})  dW = colsT.dY {dw:>6.1}  dWT = dYT.cols {dwt:>6.1}  dW task by task {dw_tasks:>6.1}"
        );
    }
    Ok(())
}
