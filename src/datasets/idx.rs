//! The IDX format of MNIST and Fashion-MNIST (big-endian magic, dimensions, then uint8 data),
//! optionally gzip-compressed.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::{Error, Result};

/// An IDX array of uint8: its dimensions and values.
#[derive(Debug, Clone)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses IDX bytes (gzip is detected by its magic number).
pub fn parse_idx(bytes: &[u8], origin: &Path) -> Result<IdxArray> {
    let invalid = |message: String| Error::File {
        path: origin.to_path_buf(),
        message,
    };
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| invalid(format!("corrupt gzip stream: {e}")))?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(invalid("not an IDX file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(invalid(format!(
            "IDX element type 0x{:02x}, expected 0x08 (uint8)",
            bytes[2]
        )));
    }
    let ndim = bytes[3] as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(invalid("truncated IDX header".into()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match count {
        Some(n) if bytes.len() - header == n => Ok(IdxArray {
            dims,
            data: bytes[header..].to_vec(),
        }),
        Some(n) => Err(invalid(format!(
            "IDX dimensions {dims:?} need {n} values, the file holds {}",
            bytes.len() - header
        ))),
        None => Err(invalid(format!("IDX dimensions {dims:?} overflow"))),
    }
}

/// Reads an IDX file from disk.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(&bytes, path)
}

/// Images (N×H×W) and their labels (N) from a pair of IDX arrays.
pub fn images_and_labels(
    images: IdxArray,
    labels: IdxArray,
    origin: &Path,
) -> Result<(usize, usize, Vec<u8>, Vec<u8>)> {
    match (images.dims.as_slice(), labels.dims.as_slice()) {
        ([n, h, w], [m]) if n == m => Ok((*h, *w, images.data, labels.data)),
        (i, l) => Err(Error::File {
            path: origin.to_path_buf(),
            message: format!("IDX images {i:?} and labels {l:?} do not pair up"),
        }),
    }
}
