//! Training speed side by side: epochs of a cIDFD configuration (default: two small-CNN
//! encoders of width 32, d = 128, batch 128, three memory banks, instance discrimination,
//! feature decorrelation and the reference-salient term, SGD with momentum) in salient, against
//! the same architecture, losses, batch and data in PyTorch (`benches/python_train.py`). Both
//! count target + reference images per second and report the median epoch over repeats, after
//! one warm-up epoch.
//!
//!     cargo run --release --example bench_train -- TARGET.parquet REFERENCE.parquet [ROWS] [REPEATS]
//!
//! On a GPU (a build with `--features cuda` or `cudnn`), the ResNet-18 configuration:
//!
//!     bench_train T.parquet R.parquet 4096 3 --device cuda --architecture resnet18
//!
//! `--loss-log FILE` writes every step's loss (warm-up epoch included) as CSV, to compare
//! devices; `--kernels` picks the convolution kernels (`salient::model::Kernels`).

use clap::Parser;
use salient::data::{ImageShape, LabelRequirement, SizePolicy};
use salient::model::{Architecture, Kernels};
use salient::train::augment::Normalization;
use salient::train::{ImageSet, TrainConfig, Trainer};
use std::io::Write;

#[derive(Parser)]
struct Args {
    target: String,
    reference: String,
    #[arg(default_value_t = 2048)]
    rows: usize,
    #[arg(default_value_t = 3)]
    repeats: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, value_enum, default_value_t = Architecture::SmallCnn)]
    architecture: Architecture,
    #[arg(long, value_enum, default_value_t = Kernels::Auto)]
    kernels: Kernels,
    #[arg(long)]
    loss_log: Option<std::path::PathBuf>,
    /// Let cuBLAS use TF32 tensor cores for FP32 matrix products (as PyTorch's cuDNN
    /// convolutions do by default).
    #[arg(long)]
    tf32: bool,
    /// Skip the PyTorch run.
    #[arg(long)]
    no_torch: bool,
    /// The PyTorch twin (default: the one in this checkout).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python_train.py"))]
    torch_script: std::path::PathBuf,
    /// Extra arguments for python_train.py (e.g. `--no-tf32`).
    #[arg(long, allow_hyphen_values = true)]
    torch_args: Vec<String>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn first(set: ImageSet, rows: usize) -> ImageSet {
    let n = rows.min(set.len());
    ImageSet {
        shape: set.shape,
        ids: set.ids[..n].to_vec(),
        labels: set.labels[..n].to_vec(),
        pixels: set.pixels[..n * set.shape.len()].to_vec(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let device = salient::device::open(&args.device)?;
    candle_core::cuda::set_gemm_reduced_precision_f32(args.tf32);
    let device_name = salient::device::name(&device);

    let shape = ImageShape::new(1, 28, 28);
    let load = |spec: &str| {
        ImageSet::load(spec, shape, LabelRequirement::Optional, SizePolicy::Exact)
            .map(|s| first(s, args.rows))
    };
    let (t, r) = (load(&args.target)?, load(&args.reference)?);
    let config = TrainConfig {
        architecture: args.architecture,
        ..TrainConfig::default()
    };
    let norm = Normalization::fit(&t.pixels, shape);
    let mut trainer = Trainer::new(config.clone(), shape, norm, t.len(), r.len(), device)?;
    let mut losses = Vec::new();
    let mut rates = Vec::new();
    salient::model::with_kernels(args.kernels, || -> anyhow::Result<()> {
        for epoch in 0..=args.repeats {
            let stats = trainer.train_epoch(&t, Some(&r), |step, _, s| {
                losses.push((epoch, step, s.loss));
            })?;
            eprintln!(
                "epoch {epoch}: {:.0} img/s, loss {:.5}",
                stats.images_per_second, stats.losses.loss
            );
            rates.push(stats.images_per_second);
        }
        Ok(())
    })?;
    rates.remove(0); // warm-up
    let salient = median(rates);
    if let Some(path) = &args.loss_log {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "epoch,step,loss")?;
        for (epoch, step, loss) in &losses {
            writeln!(out, "{epoch},{step},{loss}")?;
        }
        out.flush()?;
    }

    println!(
        "cIDFD epochs, {} target + {} reference images {shape}, {:?} width {}, batch {}, {cores} cores, median of {}",
        t.len(),
        r.len(),
        config.architecture,
        config.width.unwrap_or(config.architecture.default_width()),
        config.batch_size,
        args.repeats
    );
    let label = format!(
        "salient (candle, {device_name}, {:?}{})",
        args.kernels,
        if args.tf32 { ", TF32" } else { "" }
    );
    println!("{label:<44} {salient:>8.0} img/s");
    if args.no_torch {
        return Ok(());
    }
    let torch_device = if device_name == "cpu" { "cpu" } else { "cuda" };
    let arch = match args.architecture {
        Architecture::SmallCnn => "small-cnn",
        Architecture::Resnet18 => "resnet18",
    };
    let out = std::process::Command::new("python3")
        .arg(&args.torch_script)
        .args([&args.target, &args.reference])
        .arg(args.rows.to_string())
        .arg(args.repeats.to_string())
        .arg(cores.to_string())
        .args(["--architecture", arch, "--device", torch_device])
        .args(&args.torch_args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "python_train.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let torch = python["images_per_second"].as_f64().unwrap_or(f64::NAN);
    let label = format!(
        "PyTorch {} ({}{})",
        python["torch"].as_str().unwrap_or("?"),
        python["device"].as_str().unwrap_or("?"),
        if python["tf32"].as_bool() == Some(true) {
            ", TF32 convs"
        } else {
            ""
        }
    );
    println!("{label:<44} {torch:>8.0} img/s");
    println!("salient / PyTorch = {:.2}", salient / torch);
    Ok(())
}
