//! The whole library path in one program: build a small `mnist-grass-012` subset (bundled data,
//! no network), train cIDFD with the quickstart's settings for a few epochs, then cluster the
//! table with `cluster_embed()` in a DataFusion session and compare with the labels in SQL.
//!
//!     cargo run --release --example train_and_query -- [OUT_DIR] [EPOCHS]
//!
//! It shows the API, not the model's quality: two epochs on 600 images take about 10 s on 2 CPU
//! cores (30 epochs about 75 s), and on so few images the clusters still mix the digits. The
//! quickstart runs the same path on all 3,119 images for 30 epochs (ACC 0.88, docs/quality.md).

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use salient::config::TrainConfig;
use salient::data::SizePolicy;
use salient::datasets::{self, DatasetName};
use salient::device;
use salient::infer::{shared_engine, EngineOptions};
use salient::sql::{register, session_config, ModelSet};
use salient::train::job::{self, TrainJob};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "out/train_and_query".into()));
    let epochs: usize = args.next().map_or(Ok(2), |e| e.parse())?;

    // 1. Data: 600 digits 0-2 on grass, and 600 grass-only references.
    let data = datasets::build_with_rows(
        DatasetName::MnistGrass012,
        &out.join("data"),
        0,
        &datasets::default_sources_dir(),
        Some(600),
    )?;

    // 2. Training: the quickstart's settings (reference whitening, neighbour positives).
    let mut config = TrainConfig::from_toml_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/configs/quickstart.toml"),
    )?;
    config.epochs = epochs;
    config.clusters = Some(3);
    let report = job::run(&TrainJob {
        target: data.target.display().to_string(),
        reference: Some(data.reference.display().to_string()),
        out: out.join("model"),
        config,
        resume: false,
        size: SizePolicy::Exact,
        device: device::open("cpu")?,
    })?;
    println!(
        "trained {} epochs in {:.0} s; model in {}",
        report.epochs,
        report.seconds,
        report.out.display()
    );

    // 3. Serving: the exported ONNX model as `cluster_embed` in a DataFusion session.
    let mut models = ModelSet::new();
    models.add(
        "digits",
        shared_engine(&report.out, EngineOptions::default())?,
    )?;
    let ctx = SessionContext::new_with_config(session_config());
    register(&ctx, Arc::new(models));
    ctx.register_parquet(
        "images",
        &data.target.display().to_string(),
        ParquetReadOptions::default(),
    )
    .await?;
    // Which digit each cluster holds: the labels per cluster.
    ctx.sql(
        "SELECT cluster, label, count(*) AS images \
         FROM (SELECT cluster_embed(image, 'digits')['cluster_id'] AS cluster, label FROM images) \
         GROUP BY cluster, label ORDER BY cluster, images DESC",
    )
    .await?
    .show()
    .await?;
    Ok(())
}
