//! `cluster_embed()` in DataFusion: a vectorised scalar UDF that runs a model's ONNX graph over
//! whole Arrow arrays of images, plus the session set-up and statement execution that `salient
//! sql` and `salient embed` share.
//!
//! `cluster_embed(image [, 'model' [, id]])` → Struct{embedding: FixedSizeList<Float32, d>,
//! cluster_id: Int32, distance: Float32}. A NULL image gives NULL. An undecodable image fails the
//! query with an error naming the row (its id when the optional `id` argument is given); after
//! `SET salient.on_bad_image = 'null'` such rows give NULL instead.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int32Array, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Int64Type};
use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::{exec_err, plan_err, DataFusionError, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use rayon::prelude::*;

use crate::data::schema::{check_image_type, embedding_fields, ImageArray, ImageCell};
use crate::data::{decode_into, SizePolicy};
use crate::infer::{Embedded, InferenceEngine};

pub const UDF_NAME: &str = "cluster_embed";
/// The name of the first model given, usable as `cluster_embed(image, 'default')`.
pub const DEFAULT_MODEL: &str = "default";
/// The Parquet key-value metadata key naming the model that produced a file's embeddings.
pub const MODEL_METADATA_KEY: &str = "salient.model";

/// salient's session settings, changed with SQL `SET salient.<name> = <value>`.
///
/// Written out instead of with DataFusion's `extensions_options!`, whose `entries()` leave out
/// the `salient.` prefix: Ballista ships a session's settings to the scheduler and executors as
/// its `entries()`, and a key without its prefix is dropped there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SalientOptions {
    /// What `cluster_embed` does with an undecodable image: 'error' (fail the query, naming
    /// the row) or 'null' (return NULL for that row).
    pub on_bad_image: String,
    /// Resize images whose size differs from the model's instead of failing.
    pub resize: bool,
}

impl Default for SalientOptions {
    fn default() -> Self {
        Self {
            on_bad_image: "error".to_string(),
            resize: false,
        }
    }
}

impl ConfigExtension for SalientOptions {
    const PREFIX: &'static str = "salient";
}

impl ExtensionOptions for SalientOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> datafusion::common::Result<()> {
        match key {
            "on_bad_image" => self.on_bad_image = value.to_string(),
            "resize" => {
                self.resize = value.to_ascii_lowercase().parse().map_err(|_| {
                    DataFusionError::Configuration(format!(
                        "salient.resize is '{value}', expected true or false"
                    ))
                })?
            }
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "salient has no setting `{key}`; its settings are salient.on_bad_image and salient.resize"
                )))
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![
            ConfigEntry {
                key: format!("{}.on_bad_image", Self::PREFIX),
                value: Some(self.on_bad_image.clone()),
                description: "What cluster_embed does with an undecodable image: 'error' (fail the query, naming the row) or 'null' (return NULL for that row).",
            },
            ConfigEntry {
                key: format!("{}.resize", Self::PREFIX),
                value: Some(self.resize.to_string()),
                description: "Resize images whose size differs from the model's instead of failing.",
            },
        ]
    }
}

/// The models a session can call by name; the first one added is also `default`.
#[derive(Debug, Default, Clone)]
pub struct ModelSet {
    default: Option<String>,
    models: BTreeMap<String, Arc<InferenceEngine>>,
}

impl ModelSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, name: &str, engine: Arc<InferenceEngine>) -> crate::Result<()> {
        if name.is_empty() || name == DEFAULT_MODEL && self.default.is_some() {
            return Err(crate::Error::Invalid(format!(
                "model name `{name}` is empty or reserved"
            )));
        }
        if self.models.contains_key(name) {
            return Err(crate::Error::Invalid(format!(
                "model `{name}` is given twice"
            )));
        }
        if self.default.is_none() {
            self.default = Some(name.to_string());
        }
        self.models.insert(name.to_string(), engine);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The engine called `name` (`None`: the default model).
    pub fn get(&self, name: Option<&str>) -> Result<&Arc<InferenceEngine>, String> {
        let name = match name {
            None | Some(DEFAULT_MODEL) => self
                .default
                .as_deref()
                .ok_or_else(|| "no model is registered; give one with --model".to_string())?,
            Some(name) => name,
        };
        self.models.get(name).ok_or_else(|| {
            format!(
                "no model named `{name}`; registered: {}",
                self.models.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The `salient.model` metadata value: the model's name, id, k and d as JSON (an array
    /// when the session has several models).
    pub fn metadata_value(&self) -> Option<String> {
        let describe = |name: &str, e: &InferenceEngine| {
            serde_json::json!({
                "name": name,
                "id": e.manifest.id,
                "k": e.manifest.k,
                "d": e.manifest.d,
            })
        };
        match self.models.len() {
            0 => None,
            1 => self
                .models
                .iter()
                .next()
                .map(|(n, e)| describe(n, e).to_string()),
            _ => Some(
                serde_json::Value::Array(self.models.iter().map(|(n, e)| describe(n, e)).collect())
                    .to_string(),
            ),
        }
    }
}

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
        let engine = self.models.get(None).map_err(DataFusionError::Plan)?;
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
        let engine = self.models.get(name).map_err(DataFusionError::Plan)?;
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
        let engine = self.models.get(name).map_err(DataFusionError::Execution)?;
        let images = args.args[0].to_array(args.number_rows)?;
        let ids = match args.args.get(2) {
            Some(v) => Some(v.to_array(args.number_rows)?),
            None => None,
        };
        let options = settings(&args.config_options)?;
        let result = embed_array(engine, &images, ids.as_ref(), &options)
            .map_err(DataFusionError::Execution)?;
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

/// How `cluster_embed` treats bad images, from the session's `salient.*` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedSettings {
    pub null_on_bad_image: bool,
    pub size: SizePolicy,
}

fn settings(config: &ConfigOptions) -> datafusion::common::Result<EmbedSettings> {
    let defaults = SalientOptions::default();
    let options = config
        .extensions
        .get::<SalientOptions>()
        .unwrap_or(&defaults);
    let null_on_bad_image = match options.on_bad_image.to_ascii_lowercase().as_str() {
        "error" => false,
        "null" => true,
        other => return exec_err!("salient.on_bad_image is '{other}', expected 'error' or 'null'"),
    };
    Ok(EmbedSettings {
        null_on_bad_image,
        size: if options.resize {
            SizePolicy::Resize
        } else {
            SizePolicy::Exact
        },
    })
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
) -> Result<StructArray, String> {
    let n = images.len();
    let d = engine.manifest.d;
    let column = ImageArray::try_new(images.as_ref())
        .map_err(|m| format!("{UDF_NAME}: the image argument {m}"))?;
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
                    return Err(format!(
                        "{UDF_NAME}: {}: image.bytes is NULL and image.path is `{path}`; salient reads embedded image bytes only",
                        row_name(row)
                    ));
                }
            }
        }
    }
    // Once a batch fails, the batches after it are skipped (None): the error returned is the
    // first in row order, and it comes from that batch or an earlier one.
    let first_failed = AtomicUsize::new(usize::MAX);
    let batches: Vec<Option<Result<EmbeddedRows, String>>> = rows
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
            return Err(format!(
                "{UDF_NAME}: internal: a batch was skipped but none failed"
            ));
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
    )
    .map_err(|e| e.to_string())?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(embedding),
        Arc::new(Int32Array::new(cluster_id.into(), Some(nulls.clone()))),
        Arc::new(Float32Array::new(distance.into(), Some(nulls.clone()))),
    ];
    StructArray::try_new(Fields::from(fields), columns, Some(nulls)).map_err(|e| e.to_string())
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
) -> Result<EmbeddedRows, String> {
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
            Err(message) => {
                return Err(format!(
                    "{UDF_NAME}: {}: {message} (SET salient.on_bad_image = 'null' to get NULL for such rows)",
                    row_name(row)
                ))
            }
        }
    }
    pixels.truncate(good.len() * len);
    let out = engine.run(&pixels).map_err(|e| e.to_string())?;
    Ok(EmbeddedRows {
        rows: good,
        out,
        bad,
    })
}

/// A session configuration with salient's settings registered (so `SET salient.…` works).
pub fn session_config() -> SessionConfig {
    SessionConfig::new().with_option_extension(SalientOptions::default())
}

/// The `cluster_embed` UDF serving `models`.
pub fn cluster_embed_udf(models: Arc<ModelSet>) -> ScalarUDF {
    ScalarUDF::new_from_impl(ClusterEmbed::new(models))
}

/// Registers `cluster_embed` serving `models` on `ctx`.
pub fn register(ctx: &SessionContext, models: Arc<ModelSet>) {
    ctx.register_udf(cluster_embed_udf(models));
}

/// A new session with salient's settings and `cluster_embed` registered.
pub fn session(models: Arc<ModelSet>, config: SessionConfig) -> SessionContext {
    let config = if config
        .options()
        .extensions
        .get::<SalientOptions>()
        .is_some()
    {
        config
    } else {
        config.with_option_extension(SalientOptions::default())
    };
    let ctx = SessionContext::new_with_config(config);
    // DataFusion 55 pushes struct field accesses (`c['cluster_id']`) below the projection that
    // computes `c = cluster_embed(image)`, substituting the call into each access: three fields
    // would run the model three times. Without this rule the call stays computed once (the
    // projection merge rule already refuses to duplicate it). `tests/sql.rs` checks the plan.
    ctx.remove_optimizer_rule("push_down_leaf_projections");
    ctx.add_analyzer_rule(Arc::new(AttachRowIds));
    register(&ctx, models);
    ctx
}

/// The one Int64 column named `id` of a schema, if there is exactly one.
fn unique_id_column(
    schema: &datafusion::common::DFSchema,
) -> Option<datafusion::logical_expr::Expr> {
    let mut ids = schema
        .iter()
        .filter(|(_, f)| f.name() == "id" && *f.data_type() == DataType::Int64);
    match (ids.next(), ids.next()) {
        (Some(id), None) => Some(datafusion::logical_expr::Expr::Column(
            datafusion::common::Column::from(id),
        )),
        _ => None,
    }
}

/// Passes the table's `id` column to `cluster_embed(image[, 'model'])` wherever the call's input
/// has exactly one Int64 column named `id` (the image-table contract), so that a bad image in
/// plain SQL is reported by row id, as `embed` reports it. Output names stay as written.
#[derive(Debug)]
struct AttachRowIds;

impl datafusion::optimizer::AnalyzerRule for AttachRowIds {
    fn name(&self) -> &str {
        "salient_attach_row_ids"
    }

    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &ConfigOptions,
    ) -> datafusion::common::Result<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::logical_expr::expr::ScalarFunction;
        use datafusion::logical_expr::expr_rewriter::NamePreserver;
        use datafusion::logical_expr::Expr;

        plan.transform_up_with_subqueries(|node| {
            let id = match node.inputs().as_slice() {
                [input] => unique_id_column(input.schema()),
                _ => None,
            };
            let Some(id) = id else {
                return Ok(Transformed::no(node));
            };
            let names = NamePreserver::new(&node);
            let rewritten = node.map_expressions(|expr| {
                let saved = names.save(&expr);
                let out = expr.transform_up(|e| match e {
                    Expr::ScalarFunction(f) if f.func.name() == UDF_NAME && f.args.len() < 3 => {
                        let mut args = f.args;
                        if args.len() == 1 {
                            args.push(datafusion::logical_expr::lit(DEFAULT_MODEL));
                        }
                        args.push(id.clone());
                        Ok(Transformed::yes(Expr::ScalarFunction(
                            ScalarFunction::new_udf(f.func, args),
                        )))
                    }
                    e => Ok(Transformed::no(e)),
                })?;
                Ok(out.update_data(|e| saved.restore(e)))
            })?;
            if rewritten.transformed {
                rewritten.map_data(|plan| plan.recompute_schema())
            } else {
                Ok(rewritten)
            }
        })
        .map(|t| t.data)
    }
}

/// How `salient sql` prints results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

/// Formats record batches for the terminal or a pipe.
pub fn format_batches(
    batches: &[arrow::array::RecordBatch],
    format: OutputFormat,
) -> crate::Result<String> {
    let fail =
        |e: arrow::error::ArrowError| crate::Error::Invalid(format!("formatting results: {e}"));
    match format {
        OutputFormat::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)
            .map_err(fail)?
            .to_string()),
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(Vec::new());
            for batch in batches {
                writer.write(batch).map_err(fail)?;
            }
            writer.finish().map_err(fail)?;
            let mut out = String::from_utf8_lossy(&writer.into_inner()).into_owned();
            if out.is_empty() {
                out.push_str("[]");
            }
            out.push('\n');
            Ok(out)
        }
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut writer = arrow::csv::Writer::new(&mut out);
                for batch in batches {
                    writer.write(batch).map_err(|e| {
                        crate::Error::Invalid(format!(
                            "CSV output needs flat columns ({e}); select fields, e.g. cluster_embed(image)['cluster_id'], or use --format json"
                        ))
                    })?;
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
    }
}

/// Executes one or more `;`-separated SQL statements and returns the rows of the last one.
/// `COPY … TO` a Parquet file is made atomic (written to a temporary file next to the target,
/// renamed when complete) and carries the `salient.model` metadata of the session's models.
pub async fn execute(
    ctx: &SessionContext,
    models: &ModelSet,
    sql: &str,
) -> crate::Result<Vec<arrow::array::RecordBatch>> {
    use datafusion::sql::parser::{DFParser, Statement};
    let statements = DFParser::parse_sql(sql).map_err(|e| crate::Error::Invalid(e.to_string()))?;
    let mut last = Vec::new();
    for mut statement in statements {
        rewrite_field_access(&mut statement);
        let mut copy_target = None;
        let statement = match statement {
            Statement::CopyTo(_) if is_distributed(ctx) => {
                return Err(crate::Error::Invalid(
                    "COPY is not available with --scheduler: Ballista's executors would write the file on their own machines, where salient cannot make it atomic; SELECT the rows (--format json or csv), or run `salient embed` for Parquet output".into(),
                ));
            }
            Statement::CopyTo(mut copy) => {
                copy_target = Some(prepare_copy(&mut copy, models)?);
                Statement::CopyTo(copy)
            }
            other => other,
        };
        let result = run_statement(ctx, statement).await;
        last = match (result, copy_target) {
            (Ok(batches), None) => batches,
            (Ok(batches), Some(target)) => {
                target.commit()?;
                batches
            }
            (Err(e), Some(target)) => {
                target.abandon();
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        };
    }
    Ok(last)
}

/// Whether `ctx` runs its queries on a Ballista cluster (its configuration has Ballista's
/// settings).
fn is_distributed(ctx: &SessionContext) -> bool {
    ctx.state()
        .config()
        .options()
        .entries()
        .iter()
        .any(|e| e.key.starts_with("ballista."))
}

/// DataFusion 55 plans `expr['field']` but refuses `expr.field` on a function result ("Dot
/// access not supported for non-string expr"). Users write `cluster_embed(image).cluster_id`, so
/// such accesses are rewritten to the bracket form before planning.
fn rewrite_field_access(statement: &mut datafusion::sql::parser::Statement) {
    use datafusion::sql::parser::{CopyToSource, Statement};
    use datafusion::sql::sqlparser::ast::{
        visit_expressions_mut, AccessExpr, Expr as SqlExpr, Value, ValueWithSpan,
    };
    use datafusion::sql::sqlparser::tokenizer::Span;
    use std::ops::ControlFlow;
    fn fix(e: &mut SqlExpr) -> ControlFlow<()> {
        if let SqlExpr::CompoundFieldAccess { root, access_chain } = e {
            if matches!(**root, SqlExpr::Function(_) | SqlExpr::Nested(_)) {
                for access in access_chain.iter_mut() {
                    if let AccessExpr::Dot(SqlExpr::Identifier(ident)) = access {
                        *access = AccessExpr::Dot(SqlExpr::Value(ValueWithSpan {
                            value: Value::SingleQuotedString(ident.value.clone()),
                            span: Span::empty(),
                        }));
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }
    match statement {
        Statement::Statement(s) => {
            let _ = visit_expressions_mut(s.as_mut(), fix);
        }
        Statement::CopyTo(copy) => {
            if let CopyToSource::Query(query) = &mut copy.source {
                let _ = visit_expressions_mut(query.as_mut(), fix);
            }
        }
        Statement::Explain(explain) => rewrite_field_access(&mut explain.statement),
        _ => {}
    }
}

async fn run_statement(
    ctx: &SessionContext,
    statement: datafusion::sql::parser::Statement,
) -> crate::Result<Vec<arrow::array::RecordBatch>> {
    let state = ctx.state();
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(datafusion_error)?;
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(datafusion_error)?;
    df.collect().await.map_err(datafusion_error)
}

/// DataFusion's errors, with the `cluster_embed` message (naming the row) kept readable.
pub fn datafusion_error(e: DataFusionError) -> crate::Error {
    crate::Error::Invalid(e.to_string())
}

/// Where a `COPY` really writes, and where its output goes when it succeeds.
struct CopyTarget {
    temporary: std::path::PathBuf,
    target: std::path::PathBuf,
}

impl CopyTarget {
    fn commit(self) -> crate::Result<()> {
        std::fs::rename(&self.temporary, &self.target)
            .map_err(|e| crate::Error::io(&self.target, e))
    }

    fn abandon(self) {
        let _ = std::fs::remove_file(&self.temporary);
        let _ = std::fs::remove_dir_all(&self.temporary);
    }
}

/// Redirects a COPY to a temporary path beside its target and adds the model metadata.
fn prepare_copy(
    copy: &mut datafusion::sql::parser::CopyToStatement,
    models: &ModelSet,
) -> crate::Result<CopyTarget> {
    use datafusion::sql::sqlparser::ast::Value;
    let is_parquet = copy.stored_as.as_deref().map_or(
        copy.target.to_ascii_lowercase().ends_with(".parquet"),
        |s| s.eq_ignore_ascii_case("parquet"),
    );
    let key = format!("format.metadata::{MODEL_METADATA_KEY}");
    if is_parquet && !copy.options.iter().any(|(k, _)| *k == key) {
        if let Some(value) = models.metadata_value() {
            copy.options.push((key, Value::SingleQuotedString(value)));
        }
    }
    if copy.target.contains("://") {
        return Err(crate::Error::Invalid(format!(
            "COPY to `{}`: salient writes local paths only (atomically, via a temporary file)",
            copy.target
        )));
    }
    let target = std::path::PathBuf::from(&copy.target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    let directory_output = copy.target.ends_with('/') || target.extension().is_none();
    if directory_output && target.exists() {
        return Err(crate::Error::File {
            path: target,
            message: "exists; COPY to a directory writes a new directory (remove it first)".into(),
        });
    }
    // Same directory, so the final rename is atomic; keeps the extension DataFusion reads the
    // output kind from.
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let temporary = dir.join(match target.extension() {
        Some(ext) if !directory_output => {
            format!(".{name}.{unique}.tmp.{}", ext.to_string_lossy())
        }
        _ => format!(".{name}.{unique}.tmp"),
    });
    copy.target = if directory_output {
        format!("{}/", temporary.display())
    } else {
        temporary.display().to_string()
    };
    Ok(CopyTarget { temporary, target })
}

/// A multi-threaded Tokio runtime for the commands that are not async themselves.
pub fn runtime() -> crate::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Invalid(format!("starting the async runtime: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distributed engine rebuilds a session's settings on another process from its
    /// `entries()`: salient's must come out with their prefix and set the same values there.
    #[test]
    fn settings_survive_a_round_trip_through_their_entries() {
        let mut sent = session_config();
        sent.options_mut()
            .set("salient.on_bad_image", "null")
            .unwrap();
        sent.options_mut().set("salient.resize", "TRUE").unwrap();
        let mut received = session_config();
        for entry in sent.options().entries() {
            if let Some(value) = entry.value {
                received.options_mut().set(&entry.key, &value).unwrap();
            }
        }
        let options = received
            .options()
            .extensions
            .get::<SalientOptions>()
            .unwrap();
        assert_eq!(options.on_bad_image, "null");
        assert!(options.resize);
        let unknown = received.options_mut().set("salient.colour", "red");
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("salient.on_bad_image"));
        let bad = received.options_mut().set("salient.resize", "sometimes");
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("expected true or false"));
    }
}
