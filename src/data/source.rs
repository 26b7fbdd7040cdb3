//! Resolving a table argument (a file, a directory of files, or a glob) into Parquet files.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Expands `spec` into a sorted list of Parquet files. A directory contributes its `*.parquet`
/// files (not recursively, as DataFusion's listing tables do); a pattern with `*`, `?` or `[`
/// is a glob. Matching nothing is an error, since an empty training set is always a mistake.
pub fn resolve_parquet_files(spec: &str) -> Result<Vec<PathBuf>> {
    let path = PathBuf::from(spec);
    let mut files = if path.is_dir() {
        let entries = std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&path, e))?;
            let p = entry.path();
            if p.is_file() && p.extension().is_some_and(|e| e == "parquet") {
                files.push(p);
            }
        }
        files
    } else if spec.contains(['*', '?', '[']) {
        let paths = glob::glob(spec)
            .map_err(|e| Error::Invalid(format!("`{spec}` is not a valid glob: {e}")))?;
        let mut files = Vec::new();
        for p in paths {
            let p = p.map_err(|e| Error::io(e.path().to_path_buf(), e.into()))?;
            if p.is_file() {
                files.push(p);
            }
        }
        files
    } else if path.exists() {
        vec![path]
    } else {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    };
    files.sort();
    if files.is_empty() {
        return Err(Error::NoInput {
            spec: spec.to_string(),
        });
    }
    Ok(files)
}

/// Opens a Parquet file's footer (no rows read), so a truncated or foreign file is refused by
/// name before a query plans over it.
pub fn check_parquet(path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|source| Error::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(())
}

/// A cheap, content-based fingerprint of a Parquet file: sha256 of its size and footer (the
/// footer holds every row group's offsets, sizes and statistics), without reading the data.
pub fn parquet_fingerprint(path: &std::path::Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let corrupt = || Error::File {
        path: path.to_path_buf(),
        message: "not a readable Parquet file (no valid PAR1 footer)".into(),
    };
    if size < 12 {
        return Err(corrupt());
    }
    let mut tail = [0u8; 8];
    file.seek(SeekFrom::End(-8))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| Error::io(path, e))?;
    if &tail[4..] != b"PAR1" {
        return Err(corrupt());
    }
    let footer_len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    if footer_len + 12 > size {
        return Err(corrupt());
    }
    let mut footer = vec![0u8; footer_len as usize];
    file.seek(SeekFrom::End(-8 - footer_len as i64))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    hasher.update(size.to_le_bytes());
    hasher.update(&footer);
    Ok(hex::encode(hasher.finalize()))
}
