"""Reads a Parquet file salient wrote with pyarrow and DuckDB and checks the contract:
the row count, the `salient.model` metadata (name, id, k, d) and, optionally, the columns.

usage: read_embedded.py FILE MODEL_ID ROWS [COLUMNS]
"""
import json
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

path, model_id, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
table = pq.read_table(path)
assert table.num_rows == rows, (table.num_rows, rows)
kv = pq.ParquetFile(path).metadata.metadata or {}
assert b"salient.model" in kv, f"no salient.model key-value metadata: {list(kv)}"
meta = json.loads(kv[b"salient.model"])
assert meta["id"] == model_id, meta
assert {"name", "id", "k", "d"} <= set(meta), meta
if len(sys.argv) > 4:
    assert table.column_names == sys.argv[4].split(","), table.column_names
    d = meta["d"]
    emb = table.column("embedding")
    assert pa.types.is_fixed_size_list(emb.type) and emb.type.list_size == d, emb.type
    ids = table.column("cluster_id").to_pylist()
    assert all(0 <= c < meta["k"] for c in ids if c is not None), ids
con = duckdb.connect()
count = con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
assert count == rows, count
# DuckDB sees the same key-value metadata.
value = con.execute(
    f"SELECT value FROM parquet_kv_metadata('{path}') WHERE key = 'salient.model'"
).fetchone()[0]
assert json.loads(value) == meta, value
print(json.dumps({"rows": rows, "model": meta}))
