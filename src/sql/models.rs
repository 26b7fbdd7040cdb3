//! The models a session serves by name, each with its ONNX Runtime engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::infer::InferenceEngine;

use super::*;

/// A model name that a session does not serve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnknownModel {
    #[error("no model is registered; give one with --model")]
    NoModels,
    #[error("no model named `{name}`; registered: {registered}")]
    Unknown { name: String, registered: String },
}

/// The models a session can call by name; the first one added is also `default`.
#[derive(Debug, Default, Clone)]
pub struct ModelSet {
    default: Option<String>,
    pub(super) models: BTreeMap<String, Arc<InferenceEngine>>,
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
    pub fn get(&self, name: Option<&str>) -> Result<&Arc<InferenceEngine>, UnknownModel> {
        let name = match name {
            None | Some(DEFAULT_MODEL) => self.default.as_deref().ok_or(UnknownModel::NoModels)?,
            Some(name) => name,
        };
        self.models.get(name).ok_or_else(|| UnknownModel::Unknown {
            name: name.to_string(),
            registered: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
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
