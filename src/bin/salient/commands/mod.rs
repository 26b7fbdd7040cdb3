//! The subcommands, grouped by concept: one argument struct per subcommand, whose `run` does
//! the work and prints the result.

use clap::{Subcommand, ValueEnum};

mod datasets;
mod model;
mod report;
#[cfg(feature = "serve")]
mod serve;
mod sql;
mod train;

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Build or list the bundled datasets with characteristic backgrounds.
    Datasets(datasets::DatasetsArgs),
    /// Train a model on a target table (and a reference table of backgrounds), fit k-means, and
    /// write the model directory.
    Train(train::TrainArgs),
    /// Score a model's clusters against a labelled table (ACC, NMI, ARI).
    Evaluate(model::EvaluateArgs),
    /// Write MODEL/model.onnx from the model's candle weights (train does it too) and record its
    /// sha256 as the model id.
    Export(model::ExportArgs),
    /// What a model is: id, input, k, d, training data, metrics. Verifies model.onnx against
    /// the manifest and loads it in ONNX Runtime.
    Inspect(model::InspectArgs),
    /// Parquet in, Parquet out: every input column plus `embedding`, `cluster_id` and
    /// `distance`, streamed through DataFusion and written atomically.
    Embed(model::EmbedArgs),
    /// One HTML page to look at a model's clusters: montages, maps of the salient and
    /// background embeddings, training curves, reference check and scores.
    Report(report::ReportArgs),
    /// Run SQL with `cluster_embed()` registered. Without SQL, an interactive prompt.
    Sql(sql::SqlArgs),
    /// Serve SQL with `cluster_embed()` over Arrow Flight SQL (ADBC, JDBC, BI tools): read-only,
    /// a bearer token required, TLS, per-query limits.
    #[cfg(feature = "serve")]
    Serve(serve::ServeArgs),
    /// Run an Apache Ballista scheduler that knows `cluster_embed` (feature `ballista`).
    #[cfg(feature = "ballista")]
    Scheduler(sql::SchedulerArgs),
    /// Run an Apache Ballista executor with `cluster_embed` (feature `ballista`).
    #[cfg(feature = "ballista")]
    Executor(sql::ExecutorArgs),
    /// Run the baselines (raw, PCA, contrastive PCA) and IDFD / cIDFD on the same data and seeds.
    Compare(train::CompareArgs),
    /// Run a scheduled job described by a pipeline file (see pipelines/); steps whose inputs and
    /// settings did not change since the last successful run are skipped.
    Run(train::RunArgs),
    /// The README's main job on the bundled data; prints where everything went.
    Quickstart(train::QuickstartArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}
