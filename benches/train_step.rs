//! Times the pieces of one training step of the default CPU encoder on random 28×28 images:
//! forward, and forward + backward. A quick profile, not a benchmark.
//!
//!     cargo bench --bench train_step [-- BATCH [WIDTH]]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use salient::model::{Architecture, Encoder, EncoderConfig};

/// Timed calls of each piece, after one untimed call.
const REPS: usize = 15;

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let batch: usize = args.get(1).map_or(Ok(128), |s| s.parse())?;
    let width: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let device = Device::Cpu;
    // As `Trainer::train_epoch` does: keep the step's freed tensors mapped.
    let _keep = salient::alloc::KeepFreedMemory::new();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let encoder = Encoder::new(
        EncoderConfig {
            architecture: Architecture::SmallCnn,
            in_channels: 1,
            dim: 128,
            width,
            head_norm: false,
        },
        vb,
    )?;
    let x = Tensor::randn(0f32, 1.0, (batch, 1, 28, 28), &device)?;
    // The fastest and the median of a number of calls: on a shared machine the mean moves
    // with other load by more than most kernel changes.
    let time = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        f()?;
        let mut secs: Vec<f64> = (0..REPS)
            .map(|_| {
                let start = Instant::now();
                f().map(|()| start.elapsed().as_secs_f64())
            })
            .collect::<anyhow::Result<_>>()?;
        secs.sort_by(f64::total_cmp);
        let (fastest, median) = (secs[0], secs[REPS / 2]);
        println!(
            "{name:<28} fastest {:>7.1} ms  median {:>7.1} ms  {:>6.0} img/s (fastest)",
            fastest * 1e3,
            median * 1e3,
            batch as f64 / fastest
        );
        Ok(())
    };
    time("forward (train mode)", &mut || {
        encoder.forward_t(&x, true)?;
        Ok(())
    })?;
    time("forward + backward", &mut || {
        let y = encoder.forward_t(&x, true)?;
        y.sum_all()?.backward()?;
        Ok(())
    })?;
    Ok(())
}
