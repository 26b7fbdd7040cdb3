//! Times candle's CPU matrix products at the shapes of the default encoder's convolutions
//! (width 32, batch 128, 28×28): forward cols·W, backward dY·Wᵀ and colsᵀ·dY. Prints GFLOP/s.
//!
//!     cargo bench --bench gemm_probe

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
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
    Ok(())
}
