//! Training speed side by side: one epoch of the default CPU configuration (cIDFD, two small-CNN
//! encoders of width 32, d = 128, batch 128, three memory banks, instance discrimination, feature
//! decorrelation and the reference-salient term, SGD with momentum) in salient, against the same
//! architecture, losses, batch and data in PyTorch on CPU (`benches/python_train.py`). Both count
//! target + reference images per second and report the median epoch over repeats.
//!
//!     cargo run --release --example bench_train -- TARGET.parquet REFERENCE.parquet [ROWS] [REPEATS]

use salient::data::{ImageShape, LabelRequirement, SizePolicy};
use salient::train::augment::Normalization;
use salient::train::{ImageSet, TrainConfig, Trainer};

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
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("TARGET.parquet");
    let reference = args.next().expect("REFERENCE.parquet");
    let rows: usize = args.next().map_or(Ok(2048), |s| s.parse())?;
    let repeats: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

    let shape = ImageShape::new(1, 28, 28);
    let load = |spec: &str| {
        ImageSet::load(spec, shape, LabelRequirement::Optional, SizePolicy::Exact)
            .map(|s| first(s, rows))
    };
    let (t, r) = (load(&target)?, load(&reference)?);
    let config = TrainConfig::default();
    let norm = Normalization::fit(&t.pixels, shape);
    let mut trainer = Trainer::new(
        config.clone(),
        shape,
        norm,
        t.len(),
        r.len(),
        candle_core::Device::Cpu,
    )?;
    let mut rates = Vec::new();
    for _ in 0..=repeats {
        let stats = trainer.train_epoch(&t, Some(&r), |_, _, _| {})?;
        rates.push(stats.images_per_second);
    }
    rates.remove(0); // warm-up
    let salient = median(rates);

    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/python_train.py"
        ))
        .args([&target, &reference])
        .arg(rows.to_string())
        .arg(repeats.to_string())
        .arg(cores.to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "python_train.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let torch = python["images_per_second"].as_f64().unwrap_or(f64::NAN);

    println!(
        "one cIDFD epoch, {} target + {} reference images {shape}, small-cnn width {}, batch {}, {cores} cores, median of {repeats}",
        t.len(),
        r.len(),
        config.width.unwrap_or(config.architecture.default_width()),
        config.batch_size
    );
    println!("{:<36} {:>8.0} img/s", "salient (candle, CPU)", salient);
    println!(
        "{:<36} {:>8.0} img/s",
        format!("PyTorch {} (CPU)", python["torch"].as_str().unwrap_or("?")),
        torch
    );
    println!(
        "salient / PyTorch = {:.2}   (target >= 1.0)",
        salient / torch
    );
    Ok(())
}
