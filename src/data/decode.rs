//! Image decoding: PNG/JPEG bytes to uint8 tensors of the model's shape (C×H×W), in parallel.
//! Images stay uint8 until a training batch or the ONNX graph turns them into floats.

use std::io::Cursor;

use arrow::array::Array;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::reader::ImageBatch;
use super::schema::{ImageArray, ImageCell};
use crate::error::{Error, Result};

/// The shape images are decoded to: channels (1 grayscale, 3 RGB), height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// Number of uint8 values in one decoded image.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// What to do with an image whose size differs from the model's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SizePolicy {
    /// Refuse it: silently resizing changes what the model sees.
    #[default]
    Exact,
    /// Resize it (bilinear) to the model's size.
    Resize,
}

/// Refuse images whose header claims more than this many pixels per side or bytes in total:
/// a few bytes of PNG can otherwise ask for gigabytes.
/// Why one image could not be decoded into the model's input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("internal: output buffer holds {got} values, shape {shape} needs {needed}")]
    Buffer {
        got: usize,
        shape: ImageShape,
        needed: usize,
    },
    #[error("cannot read image bytes: {0}")]
    Unreadable(String),
    #[error("image is {0}, expected PNG or JPEG bytes")]
    OtherFormat(String),
    #[error("{len} bytes that are neither PNG nor JPEG (starting {start:02x?})")]
    NotAnImage { len: usize, start: Vec<u8> },
    #[error("expected PNG or JPEG bytes")]
    NotPngOrJpeg,
    #[error("undecodable image ({0})")]
    Undecodable(String),
    #[error("image is {width}x{height} (width x height), the model expects {expected_width}x{expected_height}; opt into resizing to accept it")]
    Size {
        width: usize,
        height: usize,
        expected_width: usize,
        expected_height: usize,
    },
    #[error("models take 1 or 3 channels, not {0}")]
    Channels(usize),
}

const MAX_SIDE: u32 = 16_384;
const MAX_ALLOC: u64 = 512 << 20;

/// Decodes one PNG or JPEG image into `out` (C×H×W, uint8). Grayscale images are replicated to
/// three channels and colour images reduced to luma as `shape.channels` asks.
pub fn decode_into(
    bytes: &[u8],
    shape: ImageShape,
    policy: SizePolicy,
    out: &mut [u8],
) -> std::result::Result<(), ImageError> {
    if out.len() != shape.len() {
        return Err(ImageError::Buffer {
            got: out.len(),
            shape,
            needed: shape.len(),
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Unreadable(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Png) | Some(ImageFormat::Jpeg) => {}
        Some(other) => return Err(ImageError::OtherFormat(format!("{other:?}"))),
        None => {
            return Err(ImageError::NotAnImage {
                len: bytes.len(),
                start: bytes[..bytes.len().min(8)].to_vec(),
            })
        }
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    let image = fit(image, shape, policy)?;
    match shape.channels {
        1 => out.copy_from_slice(image.to_luma8().as_raw()),
        3 => {
            let rgb = image.to_rgb8();
            let plane = shape.height * shape.width;
            for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
                out[i] = px[0];
                out[plane + i] = px[1];
                out[2 * plane + i] = px[2];
            }
        }
        c => return Err(ImageError::Channels(c)),
    }
    Ok(())
}

fn fit(
    image: DynamicImage,
    shape: ImageShape,
    policy: SizePolicy,
) -> std::result::Result<DynamicImage, ImageError> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if (w, h) == (shape.width, shape.height) {
        return Ok(image);
    }
    match policy {
        SizePolicy::Exact => Err(ImageError::Size {
            width: w,
            height: h,
            expected_width: shape.width,
            expected_height: shape.height,
        }),
        SizePolicy::Resize => Ok(image.resize_exact(
            shape.width as u32,
            shape.height as u32,
            image::imageops::FilterType::Triangle,
        )),
    }
}

/// What to do with a NULL image when decoding for training or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NullPolicy {
    /// A NULL image is an error naming the row.
    Refuse,
    /// NULL rows are dropped from the decoded batch (their ids are reported in `skipped`).
    Skip,
}

/// A decoded batch: pixels of the valid rows, in row order, with their ids and labels.
#[derive(Clone, Debug, Default)]
pub struct DecodedBatch {
    pub shape: Option<ImageShape>,
    pub ids: Vec<i64>,
    pub labels: Vec<Option<i64>>,
    /// `ids.len() × shape.len()` uint8 values, C×H×W per image.
    pub pixels: Vec<u8>,
    /// Ids of NULL images dropped under [`NullPolicy::Skip`].
    pub skipped: Vec<i64>,
}

/// Decodes `(row, bytes)` images in parallel into `pixels` (resized to one `shape` per image, in
/// order) and returns each image's outcome; a failed image leaves zeros in its slot.
pub fn decode_rows(
    rows: &[(usize, &[u8])],
    shape: ImageShape,
    size: SizePolicy,
    pixels: &mut Vec<u8>,
) -> Vec<std::result::Result<(), ImageError>> {
    pixels.clear();
    pixels.resize(rows.len() * shape.len(), 0);
    if shape.is_empty() {
        return Vec::new();
    }
    pixels
        .par_chunks_mut(shape.len())
        .zip(rows.par_iter())
        .map(|(out, (_, bytes))| decode_into(bytes, shape, size, out))
        .collect()
}

/// Decodes every image of `batch` in parallel. The first bad row (in row order) fails the whole
/// batch with an error naming the file and the row id.
pub fn decode_batch(
    batch: &ImageBatch,
    shape: ImageShape,
    size: SizePolicy,
    nulls: NullPolicy,
) -> Result<DecodedBatch> {
    let images = ImageArray::try_new(batch.images.as_ref()).map_err(|message| Error::File {
        path: batch.path.to_path_buf(),
        message: message.to_string(),
    })?;
    let row_error = |row: usize, message: String| Error::Row {
        path: batch.path.to_path_buf(),
        id: batch.ids.value(row),
        message,
    };
    let mut rows = Vec::with_capacity(batch.len());
    let mut skipped = Vec::new();
    for row in 0..batch.len() {
        match images.get(row) {
            ImageCell::Bytes(bytes) => rows.push((row, bytes)),
            ImageCell::Null => match nulls {
                NullPolicy::Refuse => {
                    return Err(row_error(row, "image is NULL; expected PNG or JPEG bytes".into()))
                }
                NullPolicy::Skip => skipped.push(batch.ids.value(row)),
            },
            ImageCell::PathOnly(path) => {
                return Err(row_error(
                    row,
                    format!("image.bytes is NULL and image.path is `{path}`; salient reads embedded image bytes only"),
                ))
            }
        }
    }
    let mut pixels = Vec::new();
    let results = decode_rows(&rows, shape, size, &mut pixels);
    if let Some((i, Err(message))) = results.into_iter().enumerate().find(|(_, r)| r.is_err()) {
        return Err(row_error(rows[i].0, message.to_string()));
    }
    Ok(DecodedBatch {
        shape: Some(shape),
        ids: rows.iter().map(|&(row, _)| batch.ids.value(row)).collect(),
        labels: rows
            .iter()
            .map(|&(row, _)| {
                batch
                    .labels
                    .as_ref()
                    .and_then(|l| l.is_valid(row).then(|| l.value(row)))
            })
            .collect(),
        pixels,
        skipped,
    })
}

/// The shape of one encoded image as stored: 1 channel for grayscale, 3 for colour.
pub fn probe_shape(bytes: &[u8]) -> std::result::Result<ImageShape, ImageError> {
    use image::ImageDecoder;
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Unreadable(e.to_string()))?;
    if !matches!(
        reader.format(),
        Some(ImageFormat::Png) | Some(ImageFormat::Jpeg)
    ) {
        return Err(ImageError::NotPngOrJpeg);
    }
    let decoder = reader
        .into_decoder()
        .map_err(|e| ImageError::Undecodable(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let channels = if decoder.color_type().has_color() {
        3
    } else {
        1
    };
    Ok(ImageShape::new(channels, h as usize, w as usize))
}

/// The shape of a table's first non-NULL image: what a model trained on it takes.
pub fn probe_table_shape(spec: &str, options: &super::ReaderOptions) -> Result<ImageShape> {
    for batch in super::ImageTableReader::open(spec, options.clone())? {
        let batch = batch?;
        let images = ImageArray::try_new(batch.images.as_ref()).map_err(|message| Error::File {
            path: batch.path.to_path_buf(),
            message: message.to_string(),
        })?;
        for row in 0..batch.len() {
            if let ImageCell::Bytes(bytes) = images.get(row) {
                return probe_shape(bytes).map_err(|e| Error::Row {
                    path: batch.path.to_path_buf(),
                    id: batch.ids.value(row),
                    message: e.to_string(),
                });
            }
        }
    }
    Err(Error::Invalid(format!(
        "table `{spec}` has no image to take the model's input shape from"
    )))
}
