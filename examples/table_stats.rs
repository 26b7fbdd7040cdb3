//! Stream an image table (file, directory or glob) record batch by record batch, decode its
//! images in parallel and print per-label pixel statistics, without ever holding the table.
//!
//!     cargo run --example table_stats -- out/quickstart/mnist-grass/target.parquet

use std::collections::BTreeMap;

use salient::data::{
    decode_batch, ImageShape, ImageTableReader, NullPolicy, ReaderOptions, SizePolicy,
};

fn main() -> anyhow::Result<()> {
    let spec = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: table_stats TABLE (file, directory or glob)"))?;
    let shape = ImageShape::new(1, 28, 28);
    let reader = ImageTableReader::open(&spec, ReaderOptions::default())?;
    println!(
        "{} file(s), {} rows",
        reader.files().len(),
        reader.validate_all()?
    );

    // label -> (images, sum of mean intensities)
    let mut per_label: BTreeMap<Option<i64>, (usize, f64)> = BTreeMap::new();
    for batch in reader {
        let decoded = decode_batch(&batch?, shape, SizePolicy::Exact, NullPolicy::Skip)?;
        for (i, label) in decoded.labels.iter().enumerate() {
            let pixels = &decoded.pixels[i * shape.len()..(i + 1) * shape.len()];
            let mean = pixels.iter().map(|&v| v as f64).sum::<f64>() / pixels.len() as f64;
            let entry = per_label.entry(*label).or_default();
            entry.0 += 1;
            entry.1 += mean;
        }
    }
    for (label, (count, sum)) in per_label {
        let label = label.map_or("none".to_string(), |l| l.to_string());
        println!(
            "label {label:>4}: {count:>6} images, mean intensity {:.1}",
            sum / count as f64
        );
    }
    Ok(())
}
