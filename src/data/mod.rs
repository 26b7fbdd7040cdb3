//! Image tables: the input contract, streaming Parquet reading and parallel image decoding.

pub mod decode;
pub mod fuzzing;
pub mod reader;
pub mod schema;
pub mod source;

pub use decode::{
    decode_batch, decode_into, decode_rows, probe_shape, probe_table_shape, DecodedBatch,
    ImageShape, NullPolicy, SizePolicy,
};
pub use reader::{ImageBatch, ImageTableReader, ReaderOptions};
pub use schema::{ColumnNames, ImageArray, ImageCell, LabelRequirement, TableLayout};
