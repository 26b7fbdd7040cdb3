//! `cluster_embed()` in your own DataFusion session: load a model exported by `salient train`,
//! register the function on a `SessionContext`, and query a Parquet table of images.
//!
//!     cargo run --example cluster_embed -- MODEL_DIR TABLE.parquet
//!
//! (`salient quickstart` leaves a model in `out/quickstart/model` and its table in
//! `out/quickstart/data/mnist-grass-012/target.parquet`.)

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::prelude::{ParquetReadOptions, SessionContext};
use salient::infer::{shared_engine, EngineOptions};
use salient::sql::{register, session_config, ModelSet};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(table)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: cluster_embed MODEL_DIR TABLE.parquet");
    };

    // One ONNX Runtime engine per model, served under a name (the first is also `default`).
    let mut models = ModelSet::new();
    models.add(
        "digits",
        shared_engine(&PathBuf::from(model), EngineOptions::default())?,
    )?;

    // `session_config()` registers salient's settings (`SET salient.on_bad_image = 'null'`).
    let ctx = SessionContext::new_with_config(session_config());
    register(&ctx, Arc::new(models));
    ctx.register_parquet("images", &table, ParquetReadOptions::default())
        .await?;

    // The result is a struct {embedding, cluster_id, distance}; fields by bracket.
    let df = ctx
        .sql(
            "SELECT c['cluster_id'] AS cluster, count(*) AS images, avg(c['distance']) AS mean_distance \
             FROM (SELECT cluster_embed(image, 'digits') AS c FROM images) \
             GROUP BY 1 ORDER BY 1",
        )
        .await?;
    df.show().await?;
    Ok(())
}
