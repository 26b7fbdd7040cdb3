//! The inference contract's preprocessing: uint8 C×H×W images to normalised floats,
//! (x/255 − mean) / std per channel. Training augments before the same normalisation; the ONNX
//! graph starts with it.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::ImageShape;

/// Per-channel normalisation applied after augmentation: (x/255 − mean) / std.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// Mean and standard deviation per channel of uint8 images (N×C×H×W), in [0, 1] units.
    pub fn fit(pixels: &[u8], shape: ImageShape) -> Self {
        let plane = shape.height * shape.width;
        let mut sum = vec![0f64; shape.channels];
        let mut sq = vec![0f64; shape.channels];
        for image in pixels.chunks_exact(shape.len()) {
            for c in 0..shape.channels {
                for &v in &image[c * plane..(c + 1) * plane] {
                    let v = v as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
            }
        }
        let n = (pixels.len() / shape.channels.max(1)).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| ((s / n - m * m).max(0.0).sqrt()).max(1e-3) as f32)
            .collect();
        Self {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std,
        }
    }

    /// Normalises one image's floats in [0, 1] (C×H×W) in place.
    pub fn apply(&self, image: &mut [f32], shape: ImageShape) {
        let plane = shape.height * shape.width;
        for c in 0..shape.channels {
            let (m, s) = (self.mean[c], self.std[c]);
            for v in &mut image[c * plane..(c + 1) * plane] {
                *v = (*v - m) / s;
            }
        }
    }

    /// A batch of uint8 images (each C×H×W) as normalised floats, B×C×H×W.
    pub fn batch(&self, images: &[&[u8]], shape: ImageShape) -> Vec<f32> {
        let mut out = vec![0f32; images.len() * shape.len()];
        out.par_chunks_mut(shape.len().max(1))
            .zip(images.par_iter())
            .for_each(|(dst, src)| {
                for (d, &s) in dst.iter_mut().zip(src.iter()) {
                    *d = s as f32 / 255.0;
                }
                self.apply(dst, shape);
            });
        out
    }
}
