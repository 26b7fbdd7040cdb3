//! `salient embed`: Parquet in, Parquet out. The input streams through DataFusion in record
//! batches, `cluster_embed` appends `embedding`, `cluster_id` and `distance`, and the output is
//! written batch by batch into a temporary file that is renamed into place when complete.
//! Memory stays bounded by a few batches and one row group, whatever the input size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::execution::FunctionRegistry;
use datafusion::functions::core::expr_fn::get_field;
use datafusion::prelude::{col, lit, Expr, ParquetReadOptions};
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::data::reader::open_builder;
use crate::data::schema::{CLUSTER_ID_COLUMN, DISTANCE_COLUMN, EMBEDDING_COLUMN};
use crate::data::source::resolve_parquet_files;
use crate::data::{ColumnNames, LabelRequirement, ReaderOptions};
use crate::error::{Error, Result};
use crate::infer::{shared_engine, EngineOptions};
use crate::sql::{
    datafusion_error, session, session_config, ModelSet, DEFAULT_MODEL, MODEL_METADATA_KEY,
    UDF_NAME,
};

/// One `salient embed` run.
#[derive(Clone, Debug)]
pub struct EmbedJob {
    pub model: PathBuf,
    /// A Parquet file, a directory of them, or a glob.
    pub input: String,
    pub output: PathBuf,
    pub columns: ColumnNames,
    /// Rows per DataFusion batch (and per `cluster_embed` call).
    pub batch_size: usize,
    /// Rows per output row group: the writer holds one row group in memory.
    pub row_group_rows: usize,
    /// ONNX Runtime threads: single-threaded sessions running at once (default: all cores).
    pub threads: usize,
    pub resize: bool,
    /// Undecodable images give NULL outputs instead of failing the run.
    pub null_on_bad_image: bool,
}

impl EmbedJob {
    pub fn new(model: PathBuf, input: String, output: PathBuf) -> Self {
        Self {
            model,
            input,
            output,
            columns: ColumnNames::default(),
            batch_size: 1024,
            row_group_rows: 16 * 1024,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            resize: false,
            null_on_bad_image: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct EmbedReport {
    pub rows: u64,
    pub output: PathBuf,
    pub seconds: f64,
    pub model_id: String,
}

/// Runs the job on its own Tokio runtime.
pub fn run(job: &EmbedJob) -> Result<EmbedReport> {
    let started = std::time::Instant::now();
    // Contract errors (missing column, wrong type, not Parquet) name the file before any work.
    let files = resolve_parquet_files(&job.input)?;
    let mut total_rows = 0u64;
    let contract = ReaderOptions {
        names: job.columns.clone(),
        labels: LabelRequirement::Optional,
        ..Default::default()
    };
    for file in &files {
        let (footer, _) = open_builder(file, &contract)?;
        total_rows += footer.metadata().file_metadata().num_rows().max(0) as u64;
        for name in [EMBEDDING_COLUMN, CLUSTER_ID_COLUMN, DISTANCE_COLUMN] {
            if footer.schema().column_with_name(name).is_some() {
                return Err(Error::Schema {
                    path: file.clone(),
                    column: name.into(),
                    message: "already exists; salient embed appends this column".into(),
                });
            }
        }
    }
    // `cluster_embed` runs each call's 256-image batches as parallel tasks, so single-threaded
    // sessions, one per thread, keep the cores busy (the fastest set-up in `bench_embed`).
    let engine = shared_engine(
        &job.model,
        EngineOptions {
            intra_threads: 1,
            max_sessions: job.threads.max(1),
            ..Default::default()
        },
    )?;
    let model_id = engine.manifest.id.clone();
    let mut models = ModelSet::new();
    let model_name = engine.manifest.name.clone();
    models.add(&model_name, engine)?;
    let metadata = models.metadata_value();
    let models = Arc::new(models);

    // One partition keeps the input order (each call still runs on every core); input column
    // types are kept as they are (no forced view types).
    let mut config = session_config()
        .with_target_partitions(1)
        .with_batch_size(job.batch_size.max(1));
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    {
        let options = config
            .options_mut()
            .extensions
            .get_mut::<crate::sql::SalientOptions>()
            .ok_or_else(|| Error::Invalid("internal: salient options missing".into()))?;
        options.resize = job.resize;
        options.on_bad_image = if job.null_on_bad_image {
            "null"
        } else {
            "error"
        }
        .into();
    }
    let ctx = session(models, config);
    let runtime = crate::sql::runtime()?;
    let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let mut stream = runtime.block_on(async {
        let df = ctx
            .read_parquet(paths, ParquetReadOptions::default())
            .await
            .map_err(datafusion_error)?;
        let input_columns: Vec<Expr> = df
            .schema()
            .fields()
            .iter()
            .map(|f| col(datafusion::common::Column::from_name(f.name())))
            .collect();
        let udf = ctx
            .udf(UDF_NAME)
            .map_err(|e| Error::Invalid(format!("internal: {e}")))?;
        let call = udf.call(vec![
            col(datafusion::common::Column::from_name(&job.columns.image)),
            lit(DEFAULT_MODEL),
            col(datafusion::common::Column::from_name(&job.columns.id)),
        ]);
        let mut with_result = input_columns.clone();
        with_result.push(call.alias("__salient"));
        let mut output = input_columns;
        for name in [EMBEDDING_COLUMN, CLUSTER_ID_COLUMN, DISTANCE_COLUMN] {
            output.push(get_field(col("__salient"), name).alias(name));
        }
        let df = df
            .select(with_result)
            .and_then(|df| df.select(output))
            .map_err(datafusion_error)?;
        df.execute_stream().await.map_err(datafusion_error)
    })?;

    let bar = crate::progress::rows_bar(total_rows, "embedding");
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(job.row_group_rows.max(1)))
        .set_key_value_metadata(metadata.map(|m| vec![KeyValue::new(MODEL_METADATA_KEY.into(), m)]))
        .build();
    let schema = stream.schema();
    let mut rows = 0u64;
    let mut last_log = std::time::Instant::now();
    crate::atomic::write_atomically(&job.output, |file| {
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| parquet_error(&job.output, e))?;
        while let Some(batch) = runtime.block_on(stream.next()) {
            let batch = batch.map_err(datafusion_error)?;
            rows += batch.num_rows() as u64;
            writer
                .write(&batch)
                .map_err(|e| parquet_error(&job.output, e))?;
            match &bar {
                Some(bar) => bar.set_position(rows),
                None if last_log.elapsed().as_secs() >= 10 => {
                    last_log = std::time::Instant::now();
                    tracing::info!(rows, total_rows, "embedding");
                }
                None => {}
            }
        }
        writer.close().map_err(|e| parquet_error(&job.output, e))?;
        Ok(())
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(rows, seconds, output = %job.output.display(), "embedded");
    Ok(EmbedReport {
        rows,
        output: job.output.clone(),
        seconds,
        model_id,
    })
}

fn parquet_error(path: &Path, source: parquet::errors::ParquetError) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        source,
    }
}
