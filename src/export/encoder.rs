//! ONNX export of an encoder in inference mode (running batch-norm statistics), with each
//! batch norm folded into the convolution or linear layer before it.

use candle_core::{Result, Tensor};

use super::{attr_int, attr_ints, GraphBuilder};
use crate::model::layers::{Conv, ConvBn, RowBatchNorm};
use crate::model::{Encoder, InputWhitening, Trunk};

fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()
}

impl RowBatchNorm {
    /// Per-channel (scale, shift) of the inference-mode normalisation.
    fn affine(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (w, b) = (values(&self.weight)?, values(&self.bias)?);
        let (m, v) = (
            values(self.running_mean.as_tensor())?,
            values(self.running_var.as_tensor())?,
        );
        let scale: Vec<f32> = w
            .iter()
            .zip(&v)
            .map(|(w, v)| (f64::from(*w) / (f64::from(*v) + self.eps).sqrt()) as f32)
            .collect();
        let shift = b
            .iter()
            .zip(&m)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok((scale, shift))
    }
}

impl Conv {
    /// Conv with the batch norm folded in: W' = W·scale (per output channel), B = shift.
    pub(crate) fn export_with_bn(
        &self,
        bn: &RowBatchNorm,
        g: &mut GraphBuilder,
        x: &str,
    ) -> Result<String> {
        let (cout, cin, kh, kw) = self.weight.dims4()?;
        let (scale, shift) = bn.affine()?;
        let mut w = values(&self.weight)?;
        for (o, chunk) in w.chunks_exact_mut(cin * kh * kw).enumerate() {
            chunk.iter_mut().for_each(|v| *v *= scale[o]);
        }
        let w = g.constant_f32("conv_weight", &[cout, cin, kh, kw], &w);
        let b = g.constant_f32("conv_bias", &[cout], &shift);
        let geo = self.geometry;
        let (k, s, p) = (geo.kernel as i64, geo.stride as i64, geo.padding as i64);
        Ok(g.node(
            "Conv",
            &[x, &w, &b],
            vec![
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[s, s]),
                attr_ints("pads", &[p, p, p, p]),
            ],
            None,
        ))
    }
}

impl Encoder {
    /// Appends the encoder to `g` with `x` (float N×C×H×W) as input; returns the name of the
    /// un-normalised features (N×dim).
    pub(crate) fn export_onnx(&self, g: &mut GraphBuilder, x: &str) -> Result<String> {
        let mut h = x.to_string();
        match &self.input_whitening {
            Some(InputWhitening::Kernel(filter)) => {
                let (c, one, k, _) = filter.dims4()?;
                let w = g.constant_f32("input_whitening", &[c, one, k, k], &values(filter)?);
                let (k, p) = (k as i64, (k / 2) as i64);
                h = g.node(
                    "Conv",
                    &[&h, &w],
                    vec![
                        attr_ints("kernel_shape", &[k, k]),
                        attr_ints("pads", &[p, p, p, p]),
                        attr_int("group", c as i64),
                    ],
                    None,
                );
            }
            Some(InputWhitening::Matrix { mean, matrix }) => {
                // Flatten, whiten, and back to N×C×H×W with the input's own shape.
                let d = matrix.dims2()?.0;
                let shape = g.node("Shape", &[&h], vec![], None);
                let flat = g.node("Flatten", &[&h], vec![attr_int("axis", 1)], None);
                let m = g.constant_f32("input_whitening_mean", &[1, d], &values(mean)?);
                let centred = g.node("Sub", &[&flat, &m], vec![], None);
                let w = g.constant_f32("input_whitening_matrix", &[d, d], &values(matrix)?);
                let whitened = g.node("MatMul", &[&centred, &w], vec![], None);
                h = g.node("Reshape", &[&whitened, &shape], vec![], None);
            }
            None => {}
        }
        let conv_bn_relu = |g: &mut GraphBuilder, layer: &ConvBn, x: &str| -> Result<String> {
            let y = layer.conv.export_with_bn(&layer.bn, g, x)?;
            Ok(g.node("Relu", &[&y], vec![], None))
        };
        match &self.trunk {
            Trunk::Small(layers) => {
                for layer in layers {
                    h = conv_bn_relu(g, layer, &h)?;
                }
            }
            Trunk::Resnet { stem, blocks } => {
                h = conv_bn_relu(g, stem, &h)?;
                for block in blocks {
                    let y = block.conv1.export_with_bn(&block.bn1, g, &h)?;
                    let y = g.node("Relu", &[&y], vec![], None);
                    let y = block.conv2.export_with_bn(&block.bn2, g, &y)?;
                    let s = match &block.shortcut {
                        Some((conv, bn)) => conv.export_with_bn(bn, g, &h)?,
                        None => h.clone(),
                    };
                    let sum = g.node("Add", &[&y, &s], vec![], None);
                    h = g.node("Relu", &[&sum], vec![], None);
                }
            }
        }
        let pooled = g.node("GlobalAveragePool", &[&h], vec![], None);
        let flat = g.node("Flatten", &[&pooled], vec![attr_int("axis", 1)], None);
        // candle's Linear weight is (out, in): Gemm with transB = 1, head batch norm folded.
        let (out, inp) = self.head.weight().dims2()?;
        let mut w = values(self.head.weight())?;
        let mut b = match self.head.bias() {
            Some(b) => values(b)?,
            None => vec![0.0; out],
        };
        if let Some(bn) = &self.head_norm {
            let (scale, shift) = bn.affine()?;
            for (o, row) in w.chunks_exact_mut(inp).enumerate() {
                row.iter_mut().for_each(|v| *v *= scale[o]);
                b[o] = b[o] * scale[o] + shift[o];
            }
        }
        let w = g.constant_f32("head_weight", &[out, inp], &w);
        let b = g.constant_f32("head_bias", &[out], &b);
        Ok(g.node("Gemm", &[&flat, &w, &b], vec![attr_int("transB", 1)], None))
    }
}
