//! The input contract (CONTRACT.md): which columns an image table must have, which Arrow types
//! they may take, and typed access to the image column whatever its physical encoding.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BinaryArray, BinaryViewArray, LargeBinaryArray, StructArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::{Error, Result};

/// Names of the columns salient reads. Defaults follow the contract; every command that reads a
/// table lets the user override them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnNames {
    pub id: String,
    pub image: String,
    pub label: String,
}

impl Default for ColumnNames {
    fn default() -> Self {
        Self {
            id: "id".into(),
            image: "image".into(),
            label: "label".into(),
        }
    }
}

/// Where the contract's columns sit in one file's schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLayout {
    pub id: usize,
    pub image: usize,
    pub label: Option<usize>,
}

/// Whether the label column must be present (evaluation) or is merely read when there (training
/// never reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    Ignore,
    Optional,
    Required,
}

const IMAGE_TYPES: &str =
    "Binary, LargeBinary or BinaryView holding PNG/JPEG bytes, or Struct{bytes: Binary, path: Utf8}";

/// Why a column is not an image column of the contract (the message follows the column name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageColumnError {
    #[error("struct field `bytes` has type {0}, expected Binary, LargeBinary or BinaryView")]
    BytesFieldType(DataType),
    #[error("struct {0} has no field `bytes`, expected {IMAGE_TYPES}")]
    NoBytesField(DataType),
    #[error("has type {0}, expected {IMAGE_TYPES}")]
    Type(DataType),
}

/// Checks that `data_type` is one of the image encodings of the contract.
pub fn check_image_type(data_type: &DataType) -> std::result::Result<(), ImageColumnError> {
    match data_type {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Ok(()),
        DataType::Struct(fields) => match fields.iter().find(|f| f.name() == "bytes") {
            Some(f)
                if matches!(
                    f.data_type(),
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                ) =>
            {
                Ok(())
            }
            Some(f) => Err(ImageColumnError::BytesFieldType(f.data_type().clone())),
            None => Err(ImageColumnError::NoBytesField(data_type.clone())),
        },
        other => Err(ImageColumnError::Type(other.clone())),
    }
}

/// Validates a file's schema against the contract and returns where its columns are.
pub fn validate_image_table(
    schema: &Schema,
    path: &Path,
    names: &ColumnNames,
    label: LabelRequirement,
) -> Result<TableLayout> {
    let schema_error = |column: &str, message: String| Error::Schema {
        path: path.to_path_buf(),
        column: column.to_string(),
        message,
    };
    let find = |name: &str| schema.index_of(name).ok();
    let present = || {
        schema
            .fields()
            .iter()
            .map(|f| format!("{} ({})", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let id = find(&names.id).ok_or_else(|| {
        schema_error(
            &names.id,
            format!(
                "missing; expected an Int64 row identity column (columns present: {})",
                present()
            ),
        )
    })?;
    let id_type = schema.field(id).data_type();
    if id_type != &DataType::Int64 {
        return Err(schema_error(
            &names.id,
            format!("has type {id_type}, expected Int64"),
        ));
    }

    let image = find(&names.image).ok_or_else(|| {
        schema_error(
            &names.image,
            format!(
                "missing; expected {IMAGE_TYPES} (columns present: {})",
                present()
            ),
        )
    })?;
    check_image_type(schema.field(image).data_type())
        .map_err(|message| schema_error(&names.image, message.to_string()))?;

    let label = match (label, find(&names.label)) {
        (LabelRequirement::Ignore, _) => None,
        (LabelRequirement::Required, None) => {
            return Err(schema_error(
                &names.label,
                format!(
                    "missing; evaluation needs an Int64 label column (columns present: {})",
                    present()
                ),
            ))
        }
        (_, None) => None,
        (_, Some(index)) => {
            let label_type = schema.field(index).data_type();
            if label_type != &DataType::Int64 {
                return Err(schema_error(
                    &names.label,
                    format!("has type {label_type}, expected Int64"),
                ));
            }
            Some(index)
        }
    };
    Ok(TableLayout { id, image, label })
}

/// The canonical schema of an image table, as salient writes it (`schemas/image_table.json`).
pub fn image_table_schema(with_label: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::Int64, false),
        Field::new("image", DataType::Binary, false),
    ];
    if with_label {
        fields.push(Field::new("label", DataType::Int64, true));
    }
    Arc::new(Schema::new(fields))
}

/// Columns salient appends to a table it embeds (`salient embed`, `cluster_embed()`).
pub const EMBEDDING_COLUMN: &str = "embedding";
pub const CLUSTER_ID_COLUMN: &str = "cluster_id";
pub const DISTANCE_COLUMN: &str = "distance";

/// The fields `cluster_embed()` returns for a model with embeddings of dimension `d`.
pub fn embedding_fields(d: usize) -> Vec<Field> {
    vec![
        Field::new(
            EMBEDDING_COLUMN,
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                d as i32,
            ),
            true,
        ),
        Field::new(CLUSTER_ID_COLUMN, DataType::Int32, true),
        Field::new(DISTANCE_COLUMN, DataType::Float32, true),
    ]
}

/// The schema of an embedded table: every input column, then the embedding columns
/// (`schemas/embedded_table.json` shows it for the canonical input and d = 128).
pub fn embedded_table_schema(input: &Schema, d: usize) -> SchemaRef {
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(embedding_fields(d));
    Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
}

/// One cell of an image column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageCell<'a> {
    Null,
    Bytes(&'a [u8]),
    /// A Hugging Face struct whose `bytes` are null but whose `path` is set: the image lives
    /// elsewhere, and salient reads embedded bytes only.
    PathOnly(&'a str),
}

enum Values<'a> {
    Binary(&'a BinaryArray),
    Large(&'a LargeBinaryArray),
    View(&'a BinaryViewArray),
}

/// Read access to an image column in any of the contract's encodings.
pub struct ImageArray<'a> {
    values: Values<'a>,
    /// The struct array when the column is a Hugging Face struct (its own nulls and `path`).
    outer: Option<&'a StructArray>,
}

impl<'a> ImageArray<'a> {
    pub fn try_new(array: &'a dyn Array) -> std::result::Result<Self, ImageColumnError> {
        check_image_type(array.data_type())?;
        let (values, outer) = match array.data_type() {
            DataType::Struct(_) => {
                let outer = array.as_struct();
                let bytes = outer
                    .column_by_name("bytes")
                    .ok_or_else(|| ImageColumnError::NoBytesField(array.data_type().clone()))?;
                (Self::values_of(bytes.as_ref())?, Some(outer))
            }
            _ => (Self::values_of(array)?, None),
        };
        Ok(Self { values, outer })
    }

    fn values_of(array: &'a dyn Array) -> std::result::Result<Values<'a>, ImageColumnError> {
        match array.data_type() {
            DataType::Binary => Ok(Values::Binary(array.as_binary::<i32>())),
            DataType::LargeBinary => Ok(Values::Large(array.as_binary::<i64>())),
            DataType::BinaryView => Ok(Values::View(array.as_binary_view())),
            other => Err(ImageColumnError::Type(other.clone())),
        }
    }

    pub fn len(&self) -> usize {
        match &self.values {
            Values::Binary(a) => a.len(),
            Values::Large(a) => a.len(),
            Values::View(a) => a.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, row: usize) -> ImageCell<'a> {
        if let Some(outer) = self.outer {
            if outer.is_null(row) {
                return ImageCell::Null;
            }
        }
        let bytes = match &self.values {
            Values::Binary(a) => a.is_valid(row).then(|| a.value(row)),
            Values::Large(a) => a.is_valid(row).then(|| a.value(row)),
            Values::View(a) => a.is_valid(row).then(|| a.value(row)),
        };
        match bytes {
            Some(b) => ImageCell::Bytes(b),
            None => self
                .outer
                .and_then(|s| s.column_by_name("path"))
                .and_then(|p| path_at(p.as_ref(), row))
                .map_or(ImageCell::Null, ImageCell::PathOnly),
        }
    }
}

fn path_at(array: &dyn Array, row: usize) -> Option<&str> {
    if array.is_null(row) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().value(row)),
        DataType::Utf8View => Some(array.as_string_view().value(row)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schemas/*.json` are generated from the code; regenerate with SALIENT_UPDATE_SCHEMAS=1.
    #[test]
    fn the_schema_files_match_the_code() {
        // Read at run time: cargo reuses test binaries for a checkout at another path.
        let root = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets it");
        let dir = std::path::Path::new(&root).join("schemas");
        let input = image_table_schema(true);
        for (name, schema) in [
            ("image_table.json", input.clone()),
            ("embedded_table.json", embedded_table_schema(&input, 128)),
        ] {
            let expected = serde_json::to_string_pretty(schema.as_ref()).unwrap() + "\n";
            let path = dir.join(name);
            if std::env::var_os("SALIENT_UPDATE_SCHEMAS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &expected).unwrap();
            }
            let found = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                found,
                expected,
                "{} is stale: rerun with SALIENT_UPDATE_SCHEMAS=1",
                path.display()
            );
            let parsed: Schema = serde_json::from_str(&found).unwrap();
            assert_eq!(&parsed, schema.as_ref());
        }
    }

    #[test]
    fn every_contract_image_type_is_accepted_and_others_are_named() {
        use arrow::datatypes::Fields;
        for ok in [
            DataType::Binary,
            DataType::LargeBinary,
            DataType::BinaryView,
        ] {
            assert!(check_image_type(&ok).is_ok());
            let hf = DataType::Struct(Fields::from(vec![
                Field::new("bytes", ok, true),
                Field::new("path", DataType::Utf8, true),
            ]));
            assert!(check_image_type(&hf).is_ok());
        }
        let err = check_image_type(&DataType::Utf8).unwrap_err();
        assert_eq!(err, ImageColumnError::Type(DataType::Utf8));
        let err = err.to_string();
        assert!(err.contains("Utf8") && err.contains("expected"), "{err}");
        let no_bytes =
            DataType::Struct(Fields::from(vec![Field::new("path", DataType::Utf8, true)]));
        assert!(check_image_type(&no_bytes)
            .unwrap_err()
            .to_string()
            .contains("no field `bytes`"));
    }
}
