//! Helpers shared by the integration tests: small image tables written as real Parquet files.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BinaryViewArray, Int32Array, Int64Array, LargeBinaryArray, RecordBatch,
    StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use parquet::arrow::ArrowWriter;

/// A deterministic grayscale test pattern, H×W.
pub fn gray_pattern(h: usize, w: usize, seed: u8) -> Vec<u8> {
    (0..h * w)
        .map(|i| ((i * 7 + seed as usize * 31) % 256) as u8)
        .collect()
}

pub fn png_gray(pixels: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(Cursor::new(&mut out))
        .write_image(pixels, w as u32, h as u32, ExtendedColorType::L8)
        .unwrap();
    out
}

/// RGB pixels interleaved (H×W×3).
pub fn png_rgb(pixels: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(Cursor::new(&mut out))
        .write_image(pixels, w as u32, h as u32, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

pub fn jpeg_rgb(pixels: &[u8], h: usize, w: usize) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut out), 95)
        .write_image(pixels, w as u32, h as u32, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// How the image column is stored in a test table.
#[derive(Clone, Copy, Debug)]
pub enum ImageEncoding {
    Binary,
    LargeBinary,
    BinaryView,
    HfStruct,
}

pub fn image_array(images: &[Option<Vec<u8>>], encoding: ImageEncoding) -> ArrayRef {
    let refs: Vec<Option<&[u8]>> = images.iter().map(|i| i.as_deref()).collect();
    match encoding {
        ImageEncoding::Binary => Arc::new(BinaryArray::from(refs)),
        ImageEncoding::LargeBinary => Arc::new(LargeBinaryArray::from(refs)),
        ImageEncoding::BinaryView => Arc::new(BinaryViewArray::from(refs)),
        ImageEncoding::HfStruct => {
            // A NULL image is a NULL struct, as Hugging Face writes it.
            let paths: Vec<Option<String>> = images
                .iter()
                .enumerate()
                .map(|(i, img)| img.as_ref().map(|_| format!("img_{i}.png")))
                .collect();
            let validity = arrow::buffer::NullBuffer::from(
                images.iter().map(Option::is_some).collect::<Vec<bool>>(),
            );
            let fields = Fields::from(vec![
                Field::new("bytes", DataType::Binary, true),
                Field::new("path", DataType::Utf8, true),
            ]);
            Arc::new(StructArray::new(
                fields,
                vec![
                    Arc::new(BinaryArray::from(refs)) as ArrayRef,
                    Arc::new(StringArray::from(paths)) as ArrayRef,
                ],
                Some(validity),
            ))
        }
    }
}

/// Writes a table with `id`, `image` (in `encoding`), `label` and an extra `note` column.
pub fn write_table(
    path: &Path,
    ids: &[i64],
    images: &[Option<Vec<u8>>],
    labels: Option<&[i64]>,
    encoding: ImageEncoding,
) {
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        ("id", Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
        ("image", image_array(images, encoding)),
    ];
    if let Some(labels) = labels {
        columns.push(("label", Arc::new(Int64Array::from(labels.to_vec()))));
    }
    columns.push((
        "note",
        Arc::new(StringArray::from(
            ids.iter().map(|i| format!("row {i}")).collect::<Vec<_>>(),
        )),
    ));
    write_columns(path, columns);
}

/// Writes arbitrary columns (all nullable) to a Parquet file.
pub fn write_columns(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// A table of `n` valid 28×28 grayscale PNGs, ids `first..first+n`, labels `id % 10`.
pub fn write_gray_table(path: &Path, first: i64, n: usize, encoding: ImageEncoding) {
    let ids: Vec<i64> = (first..first + n as i64).collect();
    let images: Vec<Option<Vec<u8>>> = ids
        .iter()
        .map(|&i| Some(png_gray(&gray_pattern(28, 28, i as u8), 28, 28)))
        .collect();
    let labels: Vec<i64> = ids.iter().map(|i| i % 10).collect();
    write_table(path, &ids, &images, Some(&labels), encoding);
}

/// A table of 10 unlabelled 28×28 grayscale PNGs with ids `first..first+10`, whose row `bad`
/// holds bytes that are not an image.
pub fn write_table_with_bad_row(path: &Path, first: i64, bad: usize) {
    let ids: Vec<i64> = (first..first + 10).collect();
    let mut images: Vec<Option<Vec<u8>>> = (0..10u8)
        .map(|i| Some(png_gray(&gray_pattern(28, 28, i), 28, 28)))
        .collect();
    images[bad] = Some(b"definitely not an image".to_vec());
    write_table(path, &ids, &images, None, ImageEncoding::Binary);
}

pub fn ids_column(ids: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(ids.to_vec()))
}

pub fn int32_column(values: &[i32]) -> ArrayRef {
    Arc::new(Int32Array::from(values.to_vec()))
}

/// Builds `rows` real mnist-grass images under `dir` and trains a small model on them for one
/// epoch (training also exports model.onnx). Returns the model directory and the dataset.
pub fn tiny_model(
    dir: &Path,
    architecture: salient::model::Architecture,
    head_norm: bool,
    rows: usize,
) -> (std::path::PathBuf, salient::datasets::BuiltDataset) {
    tiny_model_with(
        dir,
        rows,
        salient::train::TrainConfig {
            architecture,
            head_norm,
            ..tiny_config()
        },
    )
}

/// The settings of [`tiny_model`]: one epoch of a narrow encoder, d = 16.
pub fn tiny_config() -> salient::train::TrainConfig {
    salient::train::TrainConfig {
        width: Some(8),
        epochs: 1,
        batch_size: 64,
        dim_salient: 16,
        dim_background: 16,
        kmeans_restarts: 2,
        ..Default::default()
    }
}

/// A model trained with `config` on `rows` real mnist-grass images (train exports it).
pub fn tiny_model_with(
    dir: &Path,
    rows: usize,
    config: salient::train::TrainConfig,
) -> (std::path::PathBuf, salient::datasets::BuiltDataset) {
    use salient::datasets::{self, DatasetName};
    let data = datasets::build_with_rows(
        DatasetName::MnistGrass,
        dir,
        0,
        &datasets::default_sources_dir(),
        Some(rows),
    )
    .unwrap();
    let out = dir.join("model");
    salient::train::job::run(&salient::train::job::TrainJob {
        target: data.target.to_string_lossy().into_owned(),
        reference: Some(data.reference.to_string_lossy().into_owned()),
        out: out.clone(),
        config,
        resume: false,
        size: salient::data::SizePolicy::Exact,
        device: candle_core::Device::Cpu,
    })
    .unwrap();
    (out, data)
}

/// Every record batch of a Parquet file, in order.
pub fn read_batches(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The (id, image bytes, label) rows of an image table.
pub fn read_rows(path: &Path) -> Vec<(i64, Vec<u8>, Option<i64>)> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    let mut rows = Vec::new();
    for batch in read_batches(path) {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let images = batch.column_by_name("image").unwrap().as_binary::<i32>();
        let labels = batch
            .column_by_name("label")
            .map(|l| l.as_primitive::<Int64Type>().clone());
        for i in 0..batch.num_rows() {
            let label = labels
                .as_ref()
                .and_then(|l| l.is_valid(i).then(|| l.value(i)));
            rows.push((ids.value(i), images.value(i).to_vec(), label));
        }
    }
    rows
}

/// `rel` inside the repository. The root is read when the test runs (cargo sets
/// CARGO_MANIFEST_DIR for it), not baked in with `env!`: cargo reuses a target directory's test
/// binaries for a checkout of the same sources at another path, where the baked-in path would
/// not exist.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    std::path::PathBuf::from(root).join(rel)
}

/// Runs the `salient` binary with quiet logs.
pub fn salient(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_salient"))
        .args(args)
        .env("SALIENT_LOG", "warn")
        .output()
        .unwrap()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
