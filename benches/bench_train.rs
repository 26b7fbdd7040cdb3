//! Training speed side by side: epochs of a cIDFD configuration (default: two small-CNN
//! encoders of width 32, d = 128, batch 128, three memory banks, instance discrimination,
//! feature decorrelation and the reference-salient term, SGD with momentum) in salient, against
//! the same architecture, losses, batch and data in PyTorch (`benches/python_train.py`). Both
//! count target + reference images per second and report the median epoch over repeats, after
//! one warm-up epoch. The two alternate in `--rounds` rounds (default 3), and the ratio is the
//! median of the per-round ratios: on shared virtual CPUs the speed drifts over minutes.
//!
//!     cargo bench --bench bench_train -- TARGET.parquet REFERENCE.parquet [ROWS] [REPEATS]
//!
//! On a GPU (a build with `--features cuda` or `cudnn`), the ResNet-18 configuration:
//!
//!     bench_train T.parquet R.parquet 4096 3 --device cuda --architecture resnet18
//!
//! `--loss-log FILE` writes every step's loss (warm-up epoch included) as CSV, to compare
//! devices; `--kernels` picks the convolution kernels (`salient::kernels::Kernels`).

use clap::Parser;
use salient::data::{ImageShape, LabelRequirement, SizePolicy};
use salient::kernels::Kernels;
use salient::model::Architecture;
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
    /// Rounds of (salient epochs, PyTorch run), for a ratio per round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
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
    /// Time each phase of the training step (the device is synchronised between phases) and
    /// print the mean per step over the timed epochs.
    #[arg(long)]
    phases: bool,
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

/// Mean milliseconds per step of each phase over the profiled epochs, and its share of the
/// step.
fn print_phases(epochs: &[salient::train::StepPhases]) {
    let steps: usize = epochs.iter().map(|p| p.steps).sum();
    if steps == 0 {
        return;
    }
    let mut totals: Vec<(&str, f64)> = Vec::new();
    for (phase, seconds) in epochs.iter().flat_map(|p| p.seconds.iter()) {
        match totals.iter_mut().find(|(p, _)| p == phase) {
            Some((_, t)) => *t += seconds,
            None => totals.push((phase, *seconds)),
        }
    }
    let step: f64 = totals.iter().map(|(_, t)| t).sum();
    println!("step phases (synchronised after each; mean of {steps} steps):");
    for (phase, total) in &totals {
        println!(
            "  {phase:<40} {:>8.2} ms  {:>5.1} %",
            1e3 * total / steps as f64,
            100.0 * total / step
        );
    }
    println!("  {:<40} {:>8.2} ms", "step", 1e3 * step / steps as f64);
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
    // `cargo bench` appends `--bench`.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
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
    // What the PyTorch twin computes: instance discrimination, decorrelation and the
    // reference-salient term, IDFD's augmentation, width 32 (small CNN) or 64 (ResNet-18).
    let config = TrainConfig {
        architecture: args.architecture,
        width: Some(match args.architecture {
            Architecture::SmallCnn => 32,
            Architecture::Resnet18 => 64,
        }),
        beta: 5.0,
        two_view_weight: 0.0,
        whitening_kernel: Some(0),
        neighbour_positives: Some(0),
        augment: salient::train::AugmentConfig::idfd(),
        ..TrainConfig::default()
    };
    let norm = Normalization::fit(&t.pixels, shape);
    let mut trainer = Trainer::new(config.clone(), shape, norm, t.len(), r.len(), device)?;
    trainer.set_kernels(args.kernels);
    let mut losses = Vec::new();
    let torch_device = if device_name == "cpu" { "cpu" } else { "cuda" };
    let arch = match args.architecture {
        Architecture::SmallCnn => "small-cnn",
        Architecture::Resnet18 => "resnet18",
    };
    // One round: `repeats` timed salient epochs (after a warm-up epoch in the first round),
    // then the PyTorch twin's run (its own warm-up plus `repeats` epochs). The machine's speed
    // drifts over minutes (shared virtual CPUs), so the ratio is taken per round, from runs
    // seconds apart, and the report gives the median round.
    let mut rounds = Vec::new();
    let mut torch_info = None;
    let mut phase_totals: Vec<salient::train::StepPhases> = Vec::new();
    for round in 0..args.rounds.max(1) {
        let mut rates = Vec::new();
        let first = if round == 0 { 0 } else { 1 };
        for epoch in first..=args.repeats {
            // The warm-up epoch is not profiled.
            trainer.profile_phases(args.phases && epoch > 0);
            let stats = trainer.train_epoch(&t, Some(&r), |step, _, s| {
                losses.push((round * (args.repeats + 1) + epoch, step, s.loss));
            })?;
            eprintln!(
                "round {round} epoch {epoch}: {:.0} img/s, loss {:.5}",
                stats.images_per_second, stats.losses.loss
            );
            if epoch > 0 {
                rates.push(stats.images_per_second);
            }
            if let Some(p) = trainer.take_phases() {
                phase_totals.push(p);
            }
        }
        let salient = median(rates);
        let torch = if args.no_torch {
            None
        } else {
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
            let rate = python["images_per_second"].as_f64().unwrap_or(f64::NAN);
            eprintln!(
                "round {round}: salient {salient:.0} img/s, PyTorch {rate:.0} img/s, ratio {:.2}",
                salient / rate
            );
            torch_info = Some(python);
            Some(rate)
        };
        rounds.push((salient, torch));
    }
    if let Some(path) = &args.loss_log {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "epoch,step,loss")?;
        for (epoch, step, loss) in &losses {
            writeln!(out, "{epoch},{step},{loss}")?;
        }
        out.flush()?;
    }

    println!(
        "processor: {} ({})",
        salient::device::cpu_model(),
        salient::device::cpu_vector_extensions()
    );
    println!(
        "cIDFD epochs, {} target + {} reference images {shape}, {:?} width {}, batch {}, {cores} cores, median of {} epochs per round, {} round(s)",
        t.len(),
        r.len(),
        config.architecture,
        config.width(),
        config.batch_size,
        args.repeats,
        rounds.len()
    );
    let label = format!(
        "salient (candle, {device_name}, {:?}, gemm {}, own kernels {}{})",
        args.kernels,
        salient::device::gemm_kernels(),
        salient::kernels::simd::Simd::current().level().name(),
        if args.tf32 { ", TF32" } else { "" }
    );
    let salient = median(rounds.iter().map(|r| r.0).collect());
    println!("{label:<44} {salient:>8.0} img/s");
    print_phases(&phase_totals);
    let Some(python) = torch_info else {
        return Ok(());
    };
    let torch = median(rounds.iter().filter_map(|r| r.1).collect());
    let label = format!(
        "PyTorch {} ({}, {}{})",
        python["torch"].as_str().unwrap_or("?"),
        python["device"].as_str().unwrap_or("?"),
        python["cpu_capability"].as_str().unwrap_or("?"),
        if python["tf32"].as_bool() == Some(true) {
            ", TF32 convs"
        } else {
            ""
        }
    );
    println!("{label:<44} {torch:>8.0} img/s");
    let ratios: Vec<f64> = rounds
        .iter()
        .filter_map(|&(s, t)| t.map(|t| s / t))
        .collect();
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "salient / PyTorch = {:.2} (median round; rounds {})",
        median(ratios),
        shown.join(", ")
    );
    Ok(())
}
