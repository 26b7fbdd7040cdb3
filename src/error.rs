//! Typed errors of the library. Every variant that concerns user input names the file, the
//! column or the row id involved and what was expected, so the CLI can print it as is.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("no Parquet input matches `{spec}` (expected a .parquet file, a directory holding .parquet files, or a glob)")]
    NoInput { spec: String },

    #[error("{path}: not a readable Parquet file ({source})")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("{path}: reading record batches failed: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },

    #[error("{path}: column `{column}`: {message}")]
    Schema {
        path: PathBuf,
        column: String,
        message: String,
    },

    #[error("{path}: row id {id}: {message}")]
    Row {
        path: PathBuf,
        id: i64,
        message: String,
    },

    #[error("{path}: {message}")]
    /// A problem with a file that is not about one column or row: a corrupt model, a missing
    /// source, an inconsistent model directory.
    File { path: PathBuf, message: String },

    #[error("k-means: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),

    #[error("metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),

    #[error("baseline: {0}")]
    Baseline(#[from] crate::baselines::BaselineError),

    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("ONNX Runtime: {0}")]
    /// The ONNX Runtime library could not be found, fetched or loaded, or a run failed.
    Runtime(String),

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
