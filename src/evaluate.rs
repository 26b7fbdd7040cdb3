//! Clustering embeddings and scoring clusters against labels (the evaluation protocol of
//! METHOD.md: k-means with k-means++ and restarts; ACC, NMI, ARI).

use crate::cluster::{kmeans, KMeansConfig, KMeansFit};
use crate::error::Result;
use crate::metrics::{scores, ClusterScores};

/// k-means on row-major embeddings (n×d), scored against `labels` when given.
pub fn cluster_and_score(
    embeddings: &[f32],
    d: usize,
    labels: Option<&[i64]>,
    k: usize,
    restarts: usize,
    seed: u64,
) -> Result<(KMeansFit, Option<ClusterScores>)> {
    let config = KMeansConfig::new(k)
        .with_n_init(restarts.max(1))
        .with_seed(seed);
    let fit = kmeans(embeddings, d, &config)?;
    let scored = match labels {
        Some(labels) => Some(scores(labels, &fit.labels)?),
        None => None,
    };
    Ok((fit, scored))
}

/// `salient evaluate`: the model's clusters on a labelled table, scored. The clusters come from
/// model.onnx in ONNX Runtime, the graph SQL and `embed` run, so a corrupt or mismatched graph is
/// refused here too and the scores describe what is deployed.
pub fn evaluate_model(
    dir: &std::path::Path,
    input: &str,
    label_column: &str,
    size: crate::data::SizePolicy,
) -> Result<ClusterScores> {
    use crate::data::{ColumnNames, LabelRequirement, ReaderOptions};
    let engine = crate::infer::InferenceEngine::load(dir, crate::infer::EngineOptions::default())?;
    let options = ReaderOptions {
        names: ColumnNames {
            label: label_column.to_string(),
            ..Default::default()
        },
        labels: LabelRequirement::Required,
        ..Default::default()
    };
    let shape = engine.manifest.input.shape;
    let mut labels = Vec::new();
    let mut predicted = Vec::new();
    for batch in crate::data::ImageTableReader::open(input, options)? {
        let batch = batch?;
        let decoded =
            crate::data::decode_batch(&batch, shape, size, crate::data::NullPolicy::Refuse)?;
        for (row, label) in decoded.labels.iter().enumerate() {
            let label = label.ok_or_else(|| crate::error::Error::Row {
                path: batch.path.to_path_buf(),
                id: decoded.ids[row],
                message: format!("`{label_column}` is NULL; evaluation needs every label"),
            })?;
            labels.push(label);
        }
        if decoded.ids.is_empty() {
            continue;
        }
        let embedded = engine.run(&decoded.pixels)?;
        predicted.extend(embedded.cluster_id.into_iter().map(|c| c as u32));
    }
    if labels.is_empty() {
        return Err(crate::error::Error::Invalid(format!(
            "{input}: the table has no rows to score"
        )));
    }
    Ok(scores(&labels, &predicted)?)
}

/// Scores the `cluster_id` column of a table salient wrote (`salient embed`, `COPY`) against
/// its label column: the clusters exactly as the ONNX graph assigned them.
pub fn score_embedded(path: &std::path::Path, label_column: &str) -> Result<ClusterScores> {
    use crate::error::Error;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, Int64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let cluster_column = crate::data::schema::CLUSTER_ID_COLUMN;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let parquet = |source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
    let schema = builder.schema().clone();
    let mut indices = Vec::new();
    for (name, expected) in [
        (label_column, arrow::datatypes::DataType::Int64),
        (cluster_column, arrow::datatypes::DataType::Int32),
    ] {
        let (i, field) = schema.column_with_name(name).ok_or_else(|| Error::Schema {
            path: path.to_path_buf(),
            column: name.into(),
            message: "missing".into(),
        })?;
        if *field.data_type() != expected {
            return Err(Error::Schema {
                path: path.to_path_buf(),
                column: name.into(),
                message: format!("has type {}, expected {expected}", field.data_type()),
            });
        }
        indices.push(i);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder.with_projection(mask).build().map_err(parquet)?;
    let (mut labels, mut predicted) = (Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        let label = batch
            .column_by_name(label_column)
            .map(|c| c.as_primitive::<Int64Type>().clone());
        let cluster = batch
            .column_by_name(cluster_column)
            .map(|c| c.as_primitive::<Int32Type>().clone());
        let (Some(label), Some(cluster)) = (label, cluster) else {
            return Err(Error::Invalid(format!(
                "{}: projection lost a column",
                path.display()
            )));
        };
        for i in 0..batch.num_rows() {
            // Rows without a label or a cluster (NULL image) are not scored.
            if label.is_valid(i) && cluster.is_valid(i) {
                labels.push(label.value(i));
                predicted.push(cluster.value(i).max(0) as u32);
            }
        }
    }
    Ok(scores(&labels, &predicted)?)
}
