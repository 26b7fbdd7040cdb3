//! Times the pieces of one training step of the default CPU encoder on random 28×28 images:
//! forward, and forward + backward. A quick profile, not a benchmark.
//!
//!     cargo bench --bench train_step [-- BATCH [WIDTH]]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use salient::model::{Architecture, Encoder, EncoderConfig};

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
    let time = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        f()?;
        let reps = 5;
        let start = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        let secs = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{name:<28} {:>8.1} ms  {:>8.0} img/s",
            secs * 1e3,
            batch as f64 / secs
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
