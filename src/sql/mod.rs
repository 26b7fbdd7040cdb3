//! `cluster_embed()` in DataFusion: a vectorised scalar UDF that runs a model's ONNX graph over
//! whole Arrow arrays of images, plus the session set-up and statement execution that `salient
//! sql` and `salient embed` share.
//!
//! `cluster_embed(image [, 'model' [, id]])` → Struct{embedding: FixedSizeList<Float32, d>,
//! cluster_id: Int32, distance: Float32}. A NULL image gives NULL. An undecodable image fails the
//! query with an error naming the row (its id when the optional `id` argument is given); after
//! `SET salient.on_bad_image = 'null'` such rows give NULL instead.

mod format;
mod models;
mod options;
mod row_ids;
mod statement;
mod udf;

use std::sync::Arc;

use datafusion::common::DataFusionError;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use format::{format_batches, OutputFormat};
pub use models::{ModelSet, UnknownModel};
pub use options::{EmbedSettings, SalientOptions};
use row_ids::AttachRowIds;
pub use statement::execute;
pub use udf::{embed_array, result_type, ClusterEmbed, EmbedError};

pub const UDF_NAME: &str = "cluster_embed";
/// The name of the first model given, usable as `cluster_embed(image, 'default')`.
pub const DEFAULT_MODEL: &str = "default";
/// The Parquet key-value metadata key naming the model that produced a file's embeddings.
pub const MODEL_METADATA_KEY: &str = "salient.model";

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

/// DataFusion's errors, with the `cluster_embed` message (naming the row) kept readable.
pub fn datafusion_error(e: DataFusionError) -> crate::Error {
    crate::Error::Invalid(e.to_string())
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
