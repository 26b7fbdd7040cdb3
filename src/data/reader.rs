//! Streaming reader of image tables: one Parquet file after another, record batch by record
//! batch, reading only the contract's columns. Memory stays bounded by the batch size whatever
//! the table's size.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::schema::{validate_image_table, ColumnNames, LabelRequirement, TableLayout};
use super::source::resolve_parquet_files;
use crate::error::{Error, Result};

/// One record batch of an image table, reduced to the contract's columns.
#[derive(Clone, Debug)]
pub struct ImageBatch {
    pub path: Arc<PathBuf>,
    pub ids: Int64Array,
    pub images: ArrayRef,
    pub labels: Option<Int64Array>,
}

impl ImageBatch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Options of [`ImageTableReader`].
#[derive(Clone, Debug)]
pub struct ReaderOptions {
    pub names: ColumnNames,
    pub labels: LabelRequirement,
    pub batch_size: usize,
    /// Refuse a table whose ids repeat (training maps ids to memory-bank rows). Costs one
    /// `i64` per row of memory, so streaming ETL leaves it off.
    pub check_unique_ids: bool,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            names: ColumnNames::default(),
            labels: LabelRequirement::Optional,
            batch_size: 1024,
            check_unique_ids: true,
        }
    }
}

/// Iterator over the [`ImageBatch`]es of a table made of one or more Parquet files.
pub struct ImageTableReader {
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<(Arc<PathBuf>, TableLayout, ParquetRecordBatchReader)>,
    options: ReaderOptions,
    seen_ids: HashSet<i64>,
    /// Rows of the current file already returned, to name a bad row's position.
    file_rows_done: usize,
}

impl ImageTableReader {
    /// Opens the table named by `spec` (file, directory or glob). Files are validated as they are
    /// reached; [`ImageTableReader::validate_all`] checks every schema up front.
    pub fn open(spec: &str, options: ReaderOptions) -> Result<Self> {
        let files = resolve_parquet_files(spec)?;
        Ok(Self::from_files(files, options))
    }

    pub fn from_files(files: Vec<PathBuf>, options: ReaderOptions) -> Self {
        Self {
            files,
            next_file: 0,
            current: None,
            options,
            seen_ids: HashSet::new(),
            file_rows_done: 0,
        }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Opens every file's footer and validates its schema, so a bad file late in a directory is
    /// reported before hours of work. Returns the total row count from the footers.
    pub fn validate_all(&self) -> Result<u64> {
        let mut rows = 0u64;
        for path in &self.files {
            let (builder, _) = open_builder(path, &self.options)?;
            rows += builder.metadata().file_metadata().num_rows().max(0) as u64;
        }
        Ok(rows)
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some(path) = self.files.get(self.next_file).cloned() else {
            return Ok(false);
        };
        self.next_file += 1;
        let (builder, layout) = open_builder(&path, &self.options)?;
        let mut roots = vec![layout.id, layout.image];
        roots.extend(layout.label);
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(self.options.batch_size.max(1))
            .build()
            .map_err(|source| Error::Parquet {
                path: path.clone(),
                source,
            })?;
        // After projection the columns keep their relative order.
        let projected = project_layout(layout);
        self.current = Some((Arc::new(path), projected, reader));
        self.file_rows_done = 0;
        Ok(true)
    }

    fn convert(
        &mut self,
        path: &Arc<PathBuf>,
        layout: TableLayout,
        batch: RecordBatch,
    ) -> Result<ImageBatch> {
        let names = &self.options.names;
        let ids = batch
            .column(layout.id)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .clone();
        if ids.null_count() > 0 {
            let row = (0..ids.len()).find(|&i| ids.is_null(i)).unwrap_or(0);
            return Err(Error::Schema {
                path: path.to_path_buf(),
                column: names.id.clone(),
                message: format!(
                    "row {} of the file has a null id; every row needs an Int64 id",
                    self.file_rows_done + row
                ),
            });
        }
        if self.options.check_unique_ids {
            for id in ids.values().iter() {
                if !self.seen_ids.insert(*id) {
                    return Err(Error::Row {
                        path: path.to_path_buf(),
                        id: *id,
                        message: format!("id repeats; `{}` must be unique in the table", names.id),
                    });
                }
            }
        }
        self.file_rows_done += batch.num_rows();
        let labels = layout.label.map(|i| {
            batch
                .column(i)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .clone()
        });
        Ok(ImageBatch {
            path: path.clone(),
            ids,
            images: batch.column(layout.image).clone(),
            labels,
        })
    }
}

impl Iterator for ImageTableReader {
    type Item = Result<ImageBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        self.next_file = self.files.len();
                        return Some(Err(e));
                    }
                }
            }
            let (path, layout, reader) = self.current.as_mut()?;
            match reader.next() {
                Some(Ok(batch)) => {
                    let (path, layout) = (path.clone(), *layout);
                    return Some(self.convert(&path, layout, batch));
                }
                Some(Err(source)) => {
                    let path = path.to_path_buf();
                    self.current = None;
                    self.next_file = self.files.len();
                    return Some(Err(Error::Arrow { path, source }));
                }
                None => self.current = None,
            }
        }
    }
}

/// Opens a Parquet file and checks its schema against the contract (footer only, no rows read).
pub(crate) fn open_builder(
    path: &Path,
    options: &ReaderOptions,
) -> Result<(ParquetRecordBatchReaderBuilder<File>, TableLayout)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|source| Error::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let layout = validate_image_table(builder.schema(), path, &options.names, options.labels)?;
    Ok((builder, layout))
}

/// Column positions after projecting to {id, image, label}: the reader keeps schema order.
fn project_layout(layout: TableLayout) -> TableLayout {
    let mut order: Vec<(usize, u8)> = vec![(layout.id, 0), (layout.image, 1)];
    if let Some(l) = layout.label {
        order.push((l, 2));
    }
    order.sort();
    let pos = |tag: u8| order.iter().position(|&(_, t)| t == tag);
    TableLayout {
        id: pos(0).unwrap_or(0),
        image: pos(1).unwrap_or(1),
        label: layout.label.and(pos(2)),
    }
}
