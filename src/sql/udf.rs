//! The `cluster_embed` scalar UDF: argument checks, its return type, and the vectorised
//! evaluation over whole Arrow arrays of images.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int32Array, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Int64Type};
use datafusion::common::{exec_err, plan_err, DataFusionError, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use rayon::prelude::*;

use crate::data::decode::ImageError;
use crate::data::decode_into;
use crate::data::schema::{
    check_image_type, embedding_fields, ImageArray, ImageCell, ImageColumnError,
};
use crate::infer::{Embedded, InferenceEngine};

use super::options::settings;
use super::*;

/// The `cluster_embed` scalar UDF.
#[derive(Debug)]
pub struct ClusterEmbed {
    models: Arc<ModelSet>,
    signature: Signature,
}

// DataFusion compares UDFs to deduplicate expressions: two instances are the same function
// when they serve the same models.

impl PartialEq for ClusterEmbed {
    fn eq(&self, other: &Self) -> bool {
        self.model_ids() == other.model_ids()
    }
}

impl Eq for ClusterEmbed {}

impl Hash for ClusterEmbed {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.model_ids().hash(state)
    }
}

impl ClusterEmbed {
    pub fn new(models: Arc<ModelSet>) -> Self {
        Self {
            models,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn model_ids(&self) -> Vec<(&str, &str)> {
        self.models
            .models
            .iter()
            .map(|(n, e)| (n.as_str(), e.manifest.id.as_str()))
            .collect()
    }
}

/// The struct type `cluster_embed` returns for embeddings of dimension `d`.
pub fn result_type(d: usize) -> DataType {
    DataType::Struct(Fields::from(embedding_fields(d)))
}

fn scalar_string(value: &ScalarValue) -> Option<&str> {
    match value {
        ScalarValue::Utf8(s) | ScalarValue::Utf8View(s) | ScalarValue::LargeUtf8(s) => s.as_deref(),
        _ => None,
    }
}

/// The argument types `cluster_embed` accepts, after `coerce_types`.
fn check_arguments(fields: &[FieldRef]) -> datafusion::common::Result<()> {
    if fields.is_empty() || fields.len() > 3 {
        return plan_err!(
            "{UDF_NAME} takes (image), (image, 'model') or (image, 'model', id); got {} arguments",
            fields.len()
        );
    }
    if let Err(message) = check_image_type(fields[0].data_type()) {
        return plan_err!("{UDF_NAME}: the image argument {message}");
    }
    if let Some(t) = fields.get(1).map(|f| f.data_type()) {
        if !matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) {
            return plan_err!(
                "{UDF_NAME}: the model argument is {t}, expected a model name string"
            );
        }
    }
    if let Some(t) = fields.get(2).map(|f| f.data_type()) {
        if *t != DataType::Int64 {
            return plan_err!("{UDF_NAME}: the id argument is {t}, expected an integer");
        }
    }
    Ok(())
}

impl ScalarUDFImpl for ClusterEmbed {
    fn name(&self) -> &str {
        UDF_NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Only coerces (a NULL image to Binary, any integer id to Int64); the arguments are
    /// validated in `return_field_from_args`, whose errors reach the user as written, while an
    /// error here would come wrapped in DataFusion's "no function matches" candidate list.
    fn coerce_types(&self, arg_types: &[DataType]) -> datafusion::common::Result<Vec<DataType>> {
        Ok(arg_types
            .iter()
            .enumerate()
            .map(|(i, t)| match (i, t) {
                (0, DataType::Null) => DataType::Binary,
                (2, t) if t.is_integer() || *t == DataType::Null => DataType::Int64,
                (_, t) => t.clone(),
            })
            .collect())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        // Planning goes through `return_field_from_args`, which sees the model name.
        let engine = self
            .models
            .get(None)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        Ok(result_type(engine.manifest.d))
    }

    fn return_field_from_args(
        &self,
        args: ReturnFieldArgs,
    ) -> datafusion::common::Result<FieldRef> {
        check_arguments(args.arg_fields)?;
        let name = match (args.arg_fields.get(1), args.scalar_arguments.get(1)) {
            (None, _) => None,
            (Some(_), Some(Some(value))) => match scalar_string(value) {
                Some(name) => Some(name),
                None => return plan_err!("{UDF_NAME}: the model name must not be NULL"),
            },
            (Some(_), _) => {
                return plan_err!("{UDF_NAME}: the model name must be a string literal, e.g. cluster_embed(image, 'default')")
            }
        };
        let engine = self
            .models
            .get(name)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        Ok(Arc::new(Field::new(
            self.name(),
            result_type(engine.manifest.d),
            true,
        )))
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let name = match args.args.get(1) {
            None => None,
            Some(ColumnarValue::Scalar(v)) => scalar_string(v),
            Some(ColumnarValue::Array(_)) => {
                return exec_err!("{UDF_NAME}: the model name must be a string literal")
            }
        };
        let engine = self
            .models
            .get(name)
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        let images = args.args[0].to_array(args.number_rows)?;
        let ids = match args.args.get(2) {
            Some(v) => Some(v.to_array(args.number_rows)?),
            None => None,
        };
        let options = settings(&args.config_options)?;
        let result = embed_array(engine, &images, ids.as_ref(), &options)
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

/// Why `cluster_embed` failed on an array of images.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{UDF_NAME}: the image argument {0}")]
    Column(#[from] ImageColumnError),
    #[error("{UDF_NAME}: {row}: image.bytes is NULL and image.path is `{path}`; salient reads embedded image bytes only")]
    PathOnly { row: String, path: String },
    #[error(
        "{UDF_NAME}: {row}: {source} (SET salient.on_bad_image = 'null' to get NULL for such rows)"
    )]
    BadImage { row: String, source: ImageError },
    #[error("{0}")]
    Inference(#[from] crate::Error),
    #[error("{UDF_NAME}: building the result: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{UDF_NAME}: internal: a batch was skipped but none failed")]
    SkippedBatch,
}

/// Runs `engine` over every image of `images` (any encoding of the contract) and returns the
/// struct column with NULL where the image is NULL (or bad, under `null_on_bad_image`).
///
/// The rows are cut into the engine's batches, and each batch is decoded and run as one rayon
/// task. Every DataFusion partition calling this feeds the same rayon pool, so all cores work
/// until the query ends. When each partition ran its own batches, the partition holding more
/// row groups ran alone on one core for the last 1.5–3 s of a 7 s, 100k-row query (`vmstat`).
/// Each task holds only its own batch of decoded pixels.
pub fn embed_array(
    engine: &InferenceEngine,
    images: &ArrayRef,
    ids: Option<&ArrayRef>,
    settings: &EmbedSettings,
) -> Result<StructArray, EmbedError> {
    let n = images.len();
    let d = engine.manifest.d;
    let column = ImageArray::try_new(images.as_ref())?;
    let ids = ids.map(|a| a.as_primitive::<Int64Type>());
    let row_name = |row: usize| match ids {
        Some(ids) if ids.is_valid(row) => format!("row id {}", ids.value(row)),
        _ => format!("row {row} of a batch of {n}"),
    };
    // The rows with bytes, in order; NULL rows stay NULL.
    let mut rows: Vec<(usize, &[u8])> = Vec::with_capacity(n);
    for row in 0..n {
        match column.get(row) {
            ImageCell::Bytes(bytes) => rows.push((row, bytes)),
            ImageCell::Null => {}
            ImageCell::PathOnly(path) => {
                if !settings.null_on_bad_image {
                    return Err(EmbedError::PathOnly {
                        row: row_name(row),
                        path: path.to_string(),
                    });
                }
            }
        }
    }
    // Once a batch fails, the batches after it are skipped (None): the error returned is the
    // first in row order, and it comes from that batch or an earlier one.
    let first_failed = AtomicUsize::new(usize::MAX);
    let batches: Vec<Option<Result<EmbeddedRows, EmbedError>>> = rows
        .par_chunks(engine.options.batch_size.max(1))
        .enumerate()
        .map(|(i, rows)| {
            if i > first_failed.load(Ordering::Relaxed) {
                return None;
            }
            let result = embed_rows(engine, rows, settings, &row_name);
            if result.is_err() {
                first_failed.fetch_min(i, Ordering::Relaxed);
            }
            Some(result)
        })
        .collect();
    let mut embedding = vec![0f32; n * d];
    let mut cluster_id = vec![0i32; n];
    let mut distance = vec![0f32; n];
    let mut valid = vec![false; n];
    let mut bad = 0usize;
    for batch in batches {
        // The first failing batch in row order holds the first bad row; skipped batches come
        // only after a failed one.
        let Some(batch) = batch else {
            return Err(EmbedError::SkippedBatch);
        };
        let batch = batch?;
        bad += batch.bad;
        for (j, &row) in batch.rows.iter().enumerate() {
            embedding[row * d..(row + 1) * d]
                .copy_from_slice(&batch.out.embedding[j * d..(j + 1) * d]);
            cluster_id[row] = batch.out.cluster_id[j];
            distance[row] = batch.out.distance[j];
            valid[row] = true;
        }
    }
    if bad > 0 {
        tracing::warn!(
            rows = bad,
            "undecodable images gave NULL (salient.on_bad_image = 'null')"
        );
    }
    let nulls = NullBuffer::from(valid);
    let fields = embedding_fields(d);
    let item = match fields[0].data_type() {
        DataType::FixedSizeList(item, _) => item.clone(),
        _ => unreachable!("embedding_fields gives a FixedSizeList first"),
    };
    let embedding = FixedSizeListArray::try_new(
        item,
        d as i32,
        Arc::new(Float32Array::from(embedding)),
        Some(nulls.clone()),
    )?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(embedding),
        Arc::new(Int32Array::new(cluster_id.into(), Some(nulls.clone()))),
        Arc::new(Float32Array::new(distance.into(), Some(nulls.clone()))),
    ];
    Ok(StructArray::try_new(
        Fields::from(fields),
        columns,
        Some(nulls),
    )?)
}

/// The graph's outputs for the good rows of one batch, and how many rows were bad.
struct EmbeddedRows {
    /// Row numbers in the caller's array, one per output row.
    rows: Vec<usize>,
    out: Embedded,
    bad: usize,
}

/// Decodes one batch of rows (packing the good images together) and runs the graph on them.
fn embed_rows(
    engine: &InferenceEngine,
    rows: &[(usize, &[u8])],
    settings: &EmbedSettings,
    row_name: &(impl Fn(usize) -> String + Sync),
) -> Result<EmbeddedRows, EmbedError> {
    let shape = engine.manifest.input.shape;
    let len = shape.len();
    let mut pixels = vec![0u8; rows.len() * len];
    let mut good = Vec::with_capacity(rows.len());
    let mut bad = 0;
    for &(row, bytes) in rows {
        // A bad image may leave part of its slot written; the next good one overwrites it.
        let slot = &mut pixels[good.len() * len..(good.len() + 1) * len];
        match decode_into(bytes, shape, settings.size, slot) {
            Ok(()) => good.push(row),
            Err(message) if settings.null_on_bad_image => {
                bad += 1;
                tracing::debug!(row = %row_name(row), %message, "bad image gives NULL");
            }
            Err(source) => {
                return Err(EmbedError::BadImage {
                    row: row_name(row),
                    source,
                })
            }
        }
    }
    pixels.truncate(good.len() * len);
    let out = engine.run(&pixels)?;
    Ok(EmbeddedRows {
        rows: good,
        out,
        bad,
    })
}
