//! The training sets in memory: a whole image table decoded to uint8, for random access.

use crate::data::{
    decode_batch, ImageShape, ImageTableReader, LabelRequirement, NullPolicy, ReaderOptions,
    SizePolicy,
};
use crate::error::{Error, Result};

/// A whole image table decoded into memory as uint8 (training needs random access).
#[derive(Clone, Debug)]
pub struct ImageSet {
    pub shape: ImageShape,
    pub ids: Vec<i64>,
    pub labels: Vec<Option<i64>>,
    pub pixels: Vec<u8>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * self.shape.len()..(i + 1) * self.shape.len()]
    }

    /// Every pixel scaled to [0, 1], rows one after another: the input of the pixel-space
    /// baselines and neighbour searches.
    pub fn unit_pixels(&self) -> Vec<f32> {
        self.pixels.iter().map(|&v| f32::from(v) / 255.0).collect()
    }

    /// Labels if every row has one (evaluation needs them all).
    pub fn complete_labels(&self) -> Option<Vec<i64>> {
        self.labels.iter().copied().collect()
    }

    /// Reads and decodes a table. NULL images are refused: every row must be trainable.
    pub fn load(
        spec: &str,
        shape: ImageShape,
        labels: LabelRequirement,
        size: SizePolicy,
    ) -> Result<Self> {
        let options = ReaderOptions {
            labels,
            ..Default::default()
        };
        let mut set = ImageSet {
            shape,
            ids: Vec::new(),
            labels: Vec::new(),
            pixels: Vec::new(),
        };
        for batch in ImageTableReader::open(spec, options)? {
            let decoded = decode_batch(&batch?, shape, size, NullPolicy::Refuse)?;
            set.ids.extend(decoded.ids);
            set.labels.extend(decoded.labels);
            set.pixels.extend(decoded.pixels);
        }
        if set.is_empty() {
            return Err(Error::Invalid(format!(
                "table `{spec}` has no rows to train on"
            )));
        }
        Ok(set)
    }
}
