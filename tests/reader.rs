//! The image-table reader against real Parquet files: every valid variant of the contract, and a
//! clear error naming the file, column or row id for each kind of bad input.

mod common;

use common::*;
use salient::data::{
    decode_batch, ImageShape, ImageTableReader, LabelRequirement, NullPolicy, ReaderOptions,
    SizePolicy,
};
use salient::Error;

const GRAY: ImageShape = ImageShape {
    channels: 1,
    height: 28,
    width: 28,
};

/// One decoded row: id, label, pixels.
type Row = (i64, Option<i64>, Vec<u8>);

fn read_all(spec: &str, options: ReaderOptions, shape: ImageShape) -> salient::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for batch in ImageTableReader::open(spec, options)? {
        let decoded = decode_batch(&batch?, shape, SizePolicy::Exact, NullPolicy::Refuse)?;
        for (i, id) in decoded.ids.iter().enumerate() {
            rows.push((
                *id,
                decoded.labels[i],
                decoded.pixels[i * shape.len()..(i + 1) * shape.len()].to_vec(),
            ));
        }
    }
    Ok(rows)
}

#[test]
fn every_binary_encoding_decodes_to_the_same_pixels() {
    let dir = tempfile::tempdir().unwrap();
    for encoding in [
        ImageEncoding::Binary,
        ImageEncoding::LargeBinary,
        ImageEncoding::BinaryView,
        ImageEncoding::HfStruct,
    ] {
        let path = dir.path().join(format!("{encoding:?}.parquet"));
        write_gray_table(&path, 100, 5, encoding);
        let rows = read_all(path.to_str().unwrap(), ReaderOptions::default(), GRAY)
            .unwrap_or_else(|e| panic!("{encoding:?}: {e}"));
        assert_eq!(rows.len(), 5, "{encoding:?}");
        for (id, label, pixels) in rows {
            assert_eq!(label, Some(id % 10));
            assert_eq!(
                pixels,
                gray_pattern(28, 28, id as u8),
                "{encoding:?} id {id}"
            );
        }
    }
}

#[test]
fn rgb_and_grayscale_convert_to_the_channels_the_model_takes() {
    let dir = tempfile::tempdir().unwrap();
    // RGB image whose three channels differ: R = pattern, G = 0, B = 255.
    let gray = gray_pattern(28, 28, 3);
    let rgb: Vec<u8> = gray.iter().flat_map(|&v| [v, 0, 255]).collect();
    let path = dir.path().join("rgb.parquet");
    write_table(
        &path,
        &[1, 2],
        &[Some(png_rgb(&rgb, 28, 28)), Some(png_gray(&gray, 28, 28))],
        None,
        ImageEncoding::Binary,
    );
    let rgb_shape = ImageShape::new(3, 28, 28);
    let rows = read_all(path.to_str().unwrap(), ReaderOptions::default(), rgb_shape).unwrap();
    // RGB stays channel-planar: R plane, then G, then B.
    assert_eq!(&rows[0].2[..784], &gray[..]);
    assert!(rows[0].2[784..1568].iter().all(|&v| v == 0));
    assert!(rows[0].2[1568..].iter().all(|&v| v == 255));
    // Grayscale is replicated into three equal planes.
    for c in 0..3 {
        assert_eq!(&rows[1].2[c * 784..(c + 1) * 784], &gray[..]);
    }
    // A model taking one channel sees the luma of the RGB image.
    let rows = read_all(path.to_str().unwrap(), ReaderOptions::default(), GRAY).unwrap();
    let expected: Vec<u8> = gray
        .iter()
        .map(|&r| ((0.2126 * r as f32) + 0.0722 * 255.0).round() as u8)
        .collect();
    let max_diff = rows[0]
        .2
        .iter()
        .zip(&expected)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap();
    assert!(max_diff <= 1, "luma differs by {max_diff}");
}

#[test]
fn jpeg_images_decode_close_to_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let rgb: Vec<u8> = (0..28 * 28).flat_map(|_| [120u8, 60, 200]).collect();
    let path = dir.path().join("jpeg.parquet");
    write_table(
        &path,
        &[7],
        &[Some(jpeg_rgb(&rgb, 28, 28))],
        Some(&[3]),
        ImageEncoding::HfStruct,
    );
    let rows = read_all(
        path.to_str().unwrap(),
        ReaderOptions::default(),
        ImageShape::new(3, 28, 28),
    )
    .unwrap();
    assert_eq!(rows[0].0, 7);
    assert_eq!(rows[0].1, Some(3));
    let mean = |c: usize| {
        rows[0].2[c * 784..(c + 1) * 784]
            .iter()
            .map(|&v| v as f32)
            .sum::<f32>()
            / 784.0
    };
    assert!(
        (mean(0) - 120.0).abs() < 3.0
            && (mean(1) - 60.0).abs() < 3.0
            && (mean(2) - 200.0).abs() < 3.0
    );
}

#[test]
fn directories_and_globs_read_every_file_in_order_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    write_gray_table(
        &dir.path().join("part-0.parquet"),
        0,
        50,
        ImageEncoding::Binary,
    );
    write_gray_table(
        &dir.path().join("part-1.parquet"),
        50,
        30,
        ImageEncoding::BinaryView,
    );
    std::fs::write(dir.path().join("notes.txt"), "not a table").unwrap();

    let options = ReaderOptions {
        batch_size: 16,
        ..Default::default()
    };
    let reader = ImageTableReader::open(dir.path().to_str().unwrap(), options.clone()).unwrap();
    assert_eq!(reader.files().len(), 2);
    assert_eq!(reader.validate_all().unwrap(), 80);
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    assert!(batches.iter().all(|b| b.len() <= 16));
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.ids.values().to_vec())
        .collect();
    assert_eq!(ids, (0..80).collect::<Vec<_>>());

    let glob = format!("{}/part-1*.parquet", dir.path().display());
    let rows = read_all(&glob, options, GRAY).unwrap();
    assert_eq!(rows.len(), 30);
    assert_eq!(rows[0].0, 50);
}

fn expect_err(result: salient::Result<impl std::fmt::Debug>) -> (Error, String) {
    let err = result.expect_err("expected an error");
    let message = err.to_string();
    (err, message)
}

#[test]
fn a_missing_column_is_named_with_the_file_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_image.parquet");
    write_columns(&path, vec![("id", ids_column(&[1, 2]))]);
    let (err, message) = expect_err(read_all(
        path.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        matches!(err, Error::Schema { ref column, .. } if column == "image"),
        "{err:?}"
    );
    assert!(message.contains("no_image.parquet"), "{message}");
    assert!(
        message.contains("`image`") && message.contains("missing"),
        "{message}"
    );
    assert!(message.contains("Binary"), "{message}");

    let path = dir.path().join("no_id.parquet");
    write_columns(
        &path,
        vec![(
            "image",
            image_array(
                &[Some(png_gray(&gray_pattern(28, 28, 0), 28, 28))],
                ImageEncoding::Binary,
            ),
        )],
    );
    let (err, message) = expect_err(read_all(
        path.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        matches!(err, Error::Schema { ref column, .. } if column == "id"),
        "{err:?}"
    );
    assert!(message.contains("Int64"), "{message}");
}

#[test]
fn a_wrong_type_is_named_with_the_type_found_and_expected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("int32_id.parquet");
    write_columns(
        &path,
        vec![
            ("id", int32_column(&[1])),
            (
                "image",
                image_array(&[Some(vec![1, 2, 3])], ImageEncoding::Binary),
            ),
        ],
    );
    let (_, message) = expect_err(read_all(
        path.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        message.contains("`id`") && message.contains("Int32") && message.contains("expected Int64"),
        "{message}"
    );

    let path = dir.path().join("string_image.parquet");
    write_columns(
        &path,
        vec![
            ("id", ids_column(&[1])),
            (
                "image",
                std::sync::Arc::new(arrow::array::StringArray::from(vec!["a.png"])),
            ),
        ],
    );
    let (_, message) = expect_err(read_all(
        path.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        message.contains("`image`")
            && message.contains("Utf8")
            && message.contains("expected Binary"),
        "{message}"
    );

    // A label of the wrong type matters only when labels are read.
    let path = dir.path().join("bad_label.parquet");
    write_columns(
        &path,
        vec![
            ("id", ids_column(&[1])),
            (
                "image",
                image_array(
                    &[Some(png_gray(&gray_pattern(28, 28, 0), 28, 28))],
                    ImageEncoding::Binary,
                ),
            ),
            ("label", int32_column(&[4])),
        ],
    );
    let (_, message) = expect_err(read_all(
        path.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        message.contains("`label`") && message.contains("expected Int64"),
        "{message}"
    );
    let ignore_labels = ReaderOptions {
        labels: LabelRequirement::Ignore,
        ..Default::default()
    };
    assert_eq!(
        read_all(path.to_str().unwrap(), ignore_labels, GRAY)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_required_label_column_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unlabelled.parquet");
    let image = png_gray(&gray_pattern(28, 28, 0), 28, 28);
    write_table(&path, &[1], &[Some(image)], None, ImageEncoding::Binary);
    let options = ReaderOptions {
        labels: LabelRequirement::Required,
        ..Default::default()
    };
    let (_, message) = expect_err(read_all(path.to_str().unwrap(), options, GRAY));
    assert!(
        message.contains("`label`") && message.contains("missing"),
        "{message}"
    );
}

#[test]
fn truncated_and_foreign_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    write_gray_table(&good, 0, 20, ImageEncoding::Binary);
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (err, message) = expect_err(read_all(
        truncated.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(matches!(err, Error::Parquet { .. }), "{err:?}");
    assert!(
        message.contains("truncated.parquet") && message.contains("not a readable Parquet file"),
        "{message}"
    );

    let text = dir.path().join("text.parquet");
    std::fs::write(&text, "id,image\n1,abc\n").unwrap();
    let (_, message) = expect_err(read_all(
        text.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        message.contains("text.parquet") && message.contains("not a readable Parquet file"),
        "{message}"
    );

    let missing = dir.path().join("missing.parquet");
    let (_, message) = expect_err(read_all(
        missing.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        message.contains("missing.parquet") && message.contains("no such file"),
        "{message}"
    );

    let (err, _) = expect_err(read_all(
        &format!("{}/*.nothing", dir.path().display()),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(matches!(err, Error::NoInput { .. }), "{err:?}");
}

#[test]
fn an_undecodable_image_names_its_row_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.parquet");
    let good = png_gray(&gray_pattern(28, 28, 1), 28, 28);
    let truncated_png = good[..good.len() / 2].to_vec();
    write_table(
        &path,
        &[10, 11, 12, 13],
        &[
            Some(good.clone()),
            Some(truncated_png),
            Some(b"GIF89a....".to_vec()),
            Some(vec![0; 40]),
        ],
        None,
        ImageEncoding::Binary,
    );
    let (err, message) = expect_err(read_all(
        path.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(matches!(err, Error::Row { id: 11, .. }), "{err:?}");
    assert!(
        message.contains("corrupt.parquet") && message.contains("row id 11"),
        "{message}"
    );

    for (id, bytes, expected) in [
        (12, b"GIF89a....".to_vec(), "expected PNG or JPEG"),
        (13, vec![0; 40], "neither PNG nor JPEG"),
    ] {
        let path = dir.path().join(format!("bad_{id}.parquet"));
        write_table(
            &path,
            &[id],
            &[Some(bytes)],
            None,
            ImageEncoding::LargeBinary,
        );
        let (_, message) = expect_err(read_all(
            path.to_str().unwrap(),
            ReaderOptions::default(),
            GRAY,
        ));
        assert!(
            message.contains(&format!("row id {id}")) && message.contains(expected),
            "{message}"
        );
    }
}

#[test]
fn a_size_mismatch_is_refused_unless_resizing_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.parquet");
    write_table(
        &path,
        &[5],
        &[Some(png_gray(&gray_pattern(32, 32, 0), 32, 32))],
        None,
        ImageEncoding::Binary,
    );
    let (_, message) = expect_err(read_all(
        path.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        message.contains("row id 5") && message.contains("32x32") && message.contains("28x28"),
        "{message}"
    );

    let batch = ImageTableReader::open(path.to_str().unwrap(), ReaderOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let decoded = decode_batch(&batch, GRAY, SizePolicy::Resize, NullPolicy::Refuse).unwrap();
    assert_eq!(decoded.pixels.len(), 784);
}

#[test]
fn null_images_are_refused_or_skipped_as_asked_and_ids_must_be_unique() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nulls.parquet");
    let img = png_gray(&gray_pattern(28, 28, 2), 28, 28);
    write_table(
        &path,
        &[1, 2, 3],
        &[Some(img.clone()), None, Some(img.clone())],
        None,
        ImageEncoding::HfStruct,
    );
    let batch = ImageTableReader::open(path.to_str().unwrap(), ReaderOptions::default())
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let err = decode_batch(&batch, GRAY, SizePolicy::Exact, NullPolicy::Refuse).unwrap_err();
    assert!(
        err.to_string().contains("row id 2") && err.to_string().contains("NULL"),
        "{err}"
    );
    let decoded = decode_batch(&batch, GRAY, SizePolicy::Exact, NullPolicy::Skip).unwrap();
    assert_eq!(decoded.ids, vec![1, 3]);
    assert_eq!(decoded.skipped, vec![2]);

    // A Hugging Face struct that points to a file instead of embedding the bytes is named.
    let path_only = dir.path().join("path_only.parquet");
    let fields = arrow::datatypes::Fields::from(vec![
        arrow::datatypes::Field::new("bytes", arrow::datatypes::DataType::Binary, true),
        arrow::datatypes::Field::new("path", arrow::datatypes::DataType::Utf8, true),
    ]);
    let image: arrow::array::ArrayRef = std::sync::Arc::new(arrow::array::StructArray::new(
        fields,
        vec![
            std::sync::Arc::new(arrow::array::BinaryArray::from(vec![None::<&[u8]>])),
            std::sync::Arc::new(arrow::array::StringArray::from(vec![Some(
                "photos/cat.jpg",
            )])),
        ],
        None,
    ));
    write_columns(&path_only, vec![("id", ids_column(&[9])), ("image", image)]);
    let (_, message) = expect_err(read_all(
        path_only.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        message.contains("row id 9") && message.contains("photos/cat.jpg"),
        "{message}"
    );

    let dup = dir.path().join("dup.parquet");
    write_table(
        &dup,
        &[4, 4],
        &[Some(img.clone()), Some(img)],
        None,
        ImageEncoding::Binary,
    );
    let (_, message) = expect_err(read_all(
        dup.to_str().unwrap(),
        ReaderOptions::default(),
        GRAY,
    ));
    assert!(
        message.contains("row id 4") && message.contains("unique"),
        "{message}"
    );
}
