//! salient's session settings (`SET salient.on_bad_image`, `SET salient.resize`) and what
//! `cluster_embed` reads from them.

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigOptions, ExtensionOptions};
use datafusion::common::{exec_err, DataFusionError};

use crate::data::SizePolicy;

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

/// How `cluster_embed` treats bad images, from the session's `salient.*` settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedSettings {
    pub null_on_bad_image: bool,
    pub size: SizePolicy,
}

pub(super) fn settings(config: &ConfigOptions) -> datafusion::common::Result<EmbedSettings> {
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
