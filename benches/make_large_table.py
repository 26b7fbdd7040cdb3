"""Writes an image table of N rows for scale tests by repeating a real table's images with new,
unique ids (row groups of 16,384 rows, written group by group so memory stays small).

usage: make_large_table.py SOURCE.parquet OUT.parquet N
"""
import sys

import pyarrow as pa
import pyarrow.parquet as pq

source, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = pq.read_table(source, columns=["id", "image", "label"])
group = 16_384
with pq.ParquetWriter(out, table.schema, compression="snappy") as writer:
    written = 0
    while written < n:
        take = min(group, n - written)
        idx = pa.array([(written + i) % table.num_rows for i in range(take)])
        chunk = table.take(idx)
        chunk = chunk.set_column(0, table.schema.field("id"), pa.array(range(written, written + take), pa.int64()))
        writer.write_table(chunk, row_group_size=group)
        written += take
print(f"{out}: {n} rows")
