//! ONNX export: one graph holding the whole inference path of a trained model, so that any
//! ONNX Runtime can serve it with no salient code around it.
//!
//! `image` (uint8 N×C×H×W) → float → [the alignment front's object window, for models trained
//! with `align_window`] → per-channel normalisation → salient encoder (batch norm
//! folded into the convolutions and the head) → L2 normalisation → [projected onto the
//! contrastive subspace and normalised again, for models with one] → `embedding` (float32 N×d);
//! nearest k-means centroid → `cluster_id` (int32 N) and its squared distance → `distance`
//! (float32 N). The batch dimension is dynamic.

use std::path::Path;

use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

pub use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
mod encoder;
mod trained;

pub use trained::TrainedModel;

pub const ONNX_FILE: &str = "model.onnx";
/// Opset 17: every operator used here has its axes as attributes except ReduceSum/Unsqueeze
/// (inputs since opset 13).
pub const OPSET: i64 = 17;
pub const INPUT_IMAGE: &str = "image";
pub const OUTPUT_EMBEDDING: &str = "embedding";
pub const OUTPUT_CLUSTER_ID: &str = "cluster_id";
pub const OUTPUT_DISTANCE: &str = "distance";

/// Builds an ONNX graph node by node; every intermediate gets a fresh, readable name.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

impl GraphBuilder {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// A float32 initializer.
    pub fn constant_f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let name = self.fresh(hint);
        self.initializers.push(tensor(
            &name,
            dims,
            DataType::FLOAT,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        name
    }

    /// A one-dimensional int64 initializer (shapes, axes).
    pub fn constant_i64(&mut self, hint: &str, data: &[i64]) -> String {
        self.constant_i64_shaped(hint, &[data.len()], data)
    }

    /// An int64 initializer of any shape (indices).
    pub fn constant_i64_shaped(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let name = self.fresh(hint);
        self.initializers.push(tensor(
            &name,
            dims,
            DataType::INT64,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        name
    }

    /// Adds a node with one output named after the operator (or `output` when given).
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        output: Option<&str>,
    ) -> String {
        let out = output.map_or_else(|| self.fresh(&op.to_lowercase()), str::to_string);
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name,
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attributes,
            ..Default::default()
        });
        out
    }

    fn finish(self, inputs: Vec<ValueInfoProto>, outputs: Vec<ValueInfoProto>) -> GraphProto {
        GraphProto {
            name: "salient".into(),
            node: self.nodes,
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..Default::default()
        }
    }
}

fn tensor(name: &str, dims: &[usize], data_type: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data: raw,
        ..Default::default()
    }
}

pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: value,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: values.to_vec(),
        ..Default::default()
    }
}

/// A tensor value description; `None` dimensions are the dynamic batch dimension `N`.
fn value_info(name: &str, elem: DataType, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => tensor_shape_proto::dimension::Value::DimValue(*v as i64),
                None => tensor_shape_proto::dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto {
                    dim,
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// L2 normalisation of the rows of `x`, the norm clamped at 1e-12 as candle's `l2_normalize`
/// does (so a row of zeros stays zero, as in [`crate::subspace::ContrastiveSubspace::apply`]).
fn l2_normalize(g: &mut GraphBuilder, x: &str, output: Option<&str>) -> String {
    let norm = g.node(
        "ReduceL2",
        &[x],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 1)],
        None,
    );
    let eps = g.constant_f32("norm_eps", &[], &[1e-12]);
    let norm = g.node("Max", &[&norm, &eps], vec![], None);
    g.node("Div", &[x, &norm], vec![], output)
}

/// The serialized ONNX model of a loaded, trained model.
pub fn onnx_bytes(model: &TrainedModel) -> Result<Vec<u8>> {
    let manifest = &model.manifest;
    let shape = manifest.input.shape;
    let (k, d) = (manifest.k, manifest.d);
    let norm = &manifest.input.normalization;
    if norm.mean.len() != shape.channels || norm.std.len() != shape.channels {
        return Err(Error::Invalid(format!(
            "manifest normalisation has {} means and {} stds for {} channels",
            norm.mean.len(),
            norm.std.len(),
            shape.channels
        )));
    }
    if model.centroids.len() != k * d {
        return Err(Error::Invalid(format!(
            "{} centroid values, expected k×d = {k}×{d}",
            model.centroids.len()
        )));
    }
    let mut g = GraphBuilder::default();

    // Preprocessing: (x/255 − mean)/std as one multiply-add per channel.
    let pixels = g.node(
        "Cast",
        &[INPUT_IMAGE],
        vec![attr_int("to", DataType::FLOAT as i64)],
        None,
    );
    // The alignment front cuts the object window out of the image before the normalisation.
    let pixels = match &model.alignment {
        Some(front) => front.export_onnx(&mut g, &pixels)?,
        None => pixels,
    };
    let scale: Vec<f32> = norm.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = norm
        .mean
        .iter()
        .zip(&norm.std)
        .map(|(m, s)| -m / s)
        .collect();
    let c = shape.channels;
    let scale = g.constant_f32("input_scale", &[1, c, 1, 1], &scale);
    let shift = g.constant_f32("input_shift", &[1, c, 1, 1], &shift);
    let scaled = g.node("Mul", &[&pixels, &scale], vec![], None);
    let x = g.node("Add", &[&scaled, &shift], vec![], None);

    let features = model.encoder.export_onnx(&mut g, &x)?;

    let embedding = match &model.subspace {
        None => l2_normalize(&mut g, &features, Some(OUTPUT_EMBEDDING)),
        Some(subspace) => {
            // Projected onto the contrastive subspace (x · P) and normalised again.
            let unit = l2_normalize(&mut g, &features, None);
            let projector = g.constant_f32("contrastive_subspace", &[d, d], subspace.projector());
            let projected = g.node("MatMul", &[&unit, &projector], vec![], None);
            l2_normalize(&mut g, &projected, Some(OUTPUT_EMBEDDING))
        }
    };

    // Nearest centroid by squared distance, computed as a difference (not the expanded
    // ‖e‖² − 2e·c + ‖c‖²) so it matches candle's and k-means' arithmetic closely.
    let centroids = g.constant_f32("centroids", &[k, d], &model.centroids);
    let axis1 = g.constant_i64("axis1", &[1]);
    let expanded = g.node("Unsqueeze", &[&embedding, &axis1], vec![], None);
    let diff = g.node("Sub", &[&expanded, &centroids], vec![], None);
    let sq = g.node("Mul", &[&diff, &diff], vec![], None);
    let axis2 = g.constant_i64("axis2", &[2]);
    let distances = g.node(
        "ReduceSum",
        &[&sq, &axis2],
        vec![attr_int("keepdims", 0)],
        None,
    );
    let nearest = g.node(
        "ArgMin",
        &[&distances],
        vec![attr_int("axis", 1), attr_int("keepdims", 0)],
        None,
    );
    g.node(
        "Cast",
        &[&nearest],
        vec![attr_int("to", DataType::INT32 as i64)],
        Some(OUTPUT_CLUSTER_ID),
    );
    g.node(
        "ReduceMin",
        &[&distances],
        vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)],
        Some(OUTPUT_DISTANCE),
    );

    let graph = g.finish(
        vec![value_info(
            INPUT_IMAGE,
            DataType::UINT8,
            &[
                None,
                Some(shape.channels),
                Some(shape.height),
                Some(shape.width),
            ],
        )],
        vec![
            value_info(OUTPUT_EMBEDDING, DataType::FLOAT, &[None, Some(d)]),
            value_info(OUTPUT_CLUSTER_ID, DataType::INT32, &[None]),
            value_info(OUTPUT_DISTANCE, DataType::FLOAT, &[None]),
        ],
    );
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "salient".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: 1,
        doc_string: format!(
            "salient {} model `{}`: k = {k}, d = {d}",
            manifest.method, manifest.name
        ),
        graph: Some(graph).into(),
        ..Default::default()
    };
    model
        .write_to_bytes()
        .map_err(|e| Error::Invalid(format!("serialising the ONNX model failed: {e}")))
}

/// `salient export MODEL`: writes `MODEL/model.onnx` from the candle weights and records its
/// sha256 as the model's id in the manifest. Returns the id.
pub fn export_model(dir: &Path) -> Result<String> {
    let model = TrainedModel::load(dir)?;
    let bytes = onnx_bytes(&model)?;
    let id = sha256_hex(&bytes);
    crate::atomic::write_bytes_atomically(&dir.join(ONNX_FILE), &bytes)?;
    let mut manifest: Manifest = model.manifest;
    manifest.id = id.clone();
    manifest.write(dir)?;
    tracing::info!(model = %dir.display(), id = %id, bytes = bytes.len(), "exported ONNX model");
    Ok(id)
}
