"""Read salient's Parquet output with pyarrow and DuckDB and print what they see."""
import io
import sys

import duckdb
import pyarrow.parquet as pq
from PIL import Image

for role, path in zip(["target", "reference"], sys.argv[1:3]):
    table = pq.read_table(path)
    line = f"pyarrow {role} rows={table.num_rows}"
    if "label" in table.column_names:
        line += f" labels={len(set(table.column('label').to_pylist()))}"
    print(line)
    first = table.column("image")[0].as_py()
    img = Image.open(io.BytesIO(first))
    assert img.size == (28, 28) and img.format == "PNG", (img.size, img.format)
    con = duckdb.connect()
    rows, lo, hi = con.execute(f"SELECT count(*), min(id), max(id) FROM read_parquet('{path}')").fetchone()
    print(f"duckdb {role} rows={rows} min_id={lo} max_id={hi}")
