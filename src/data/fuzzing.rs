//! The untrusted-input path that the fuzz target (`fuzz/fuzz_targets/image_input.rs`) drives:
//! an image column in one of the contract's Arrow encodings, read cell by cell as the
//! `cluster_embed` UDF and the readers do, then probed and decoded to a model shape. It lives in
//! the library so that `tests/fuzz_regressions.rs` replays the fuzzer's corpus and every crash it
//! found on stable Rust, in CI.

use std::sync::Arc;

use arrow::array::StructArray;
use arrow::array::{ArrayRef, BinaryArray, BinaryViewArray, LargeBinaryArray, StringArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields};

use super::decode::{decode_rows, probe_shape, ImageShape, SizePolicy};
use super::schema::{ImageArray, ImageCell};

/// Reads `data` as: one flags byte (bit 0: RGB model, bit 1: resize, bits 2–3: the column's
/// encoding), one byte choosing the model's side (1–64 pixels), then the image bytes. The column
/// holds three rows: the bytes, a NULL, and the bytes cut in half. Panics only on a bug: any
/// input must give an outcome per row, never a crash.
pub fn image_input(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&side, image)) = rest.split_first() else {
        return;
    };
    let channels = if flags & 1 == 0 { 1 } else { 3 };
    let side = 1 + usize::from(side) % 64;
    let shape = ImageShape::new(channels, side, side);
    let policy = if flags & 2 == 0 {
        SizePolicy::Exact
    } else {
        SizePolicy::Resize
    };
    let cells = [Some(image), None, Some(&image[..image.len() / 2])];
    let column = column(&cells, (flags >> 2) & 3);
    let images = ImageArray::try_new(column.as_ref()).expect("every encoding is in the contract");
    let mut rows = Vec::new();
    for row in 0..images.len() {
        match images.get(row) {
            ImageCell::Bytes(bytes) => rows.push((row, bytes)),
            ImageCell::Null | ImageCell::PathOnly(_) => {}
        }
    }
    assert_eq!(rows.len(), 2, "two rows hold bytes");
    let _ = probe_shape(image);
    let mut pixels = Vec::new();
    let outcomes = decode_rows(&rows, shape, policy, &mut pixels);
    assert_eq!(outcomes.len(), rows.len());
    assert_eq!(pixels.len(), rows.len() * shape.len());
}

fn column(cells: &[Option<&[u8]>], encoding: u8) -> ArrayRef {
    match encoding {
        0 => Arc::new(BinaryArray::from(cells.to_vec())),
        1 => Arc::new(LargeBinaryArray::from(cells.to_vec())),
        2 => Arc::new(BinaryViewArray::from(cells.to_vec())),
        _ => {
            // Hugging Face's struct: NULL rows are NULL structs with a path.
            let fields = Fields::from(vec![
                Field::new("bytes", DataType::Binary, true),
                Field::new("path", DataType::Utf8, true),
            ]);
            let paths: Vec<Option<&str>> = cells.iter().map(|_| Some("image.png")).collect();
            let validity = NullBuffer::from(cells.iter().map(Option::is_some).collect::<Vec<_>>());
            let bytes: ArrayRef = Arc::new(BinaryArray::from(cells.to_vec()));
            let paths: ArrayRef = Arc::new(StringArray::from(paths));
            Arc::new(StructArray::new(fields, vec![bytes, paths], Some(validity)))
        }
    }
}
