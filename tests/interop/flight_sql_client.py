"""A client salient did not write: ADBC's Flight SQL driver (the Go driver behind
adbc-driver-flightsql) with pyarrow, against a running `salient serve`.

usage: flight_sql_client.py URI TOKEN
Prints one line per check; tests/serve.rs reads them. Exits non-zero on an unexpected outcome.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

uri, token = sys.argv[1], sys.argv[2]
QUERY = "SELECT id, cluster_embed(image)['cluster_id'] AS cluster_id FROM t ORDER BY id"


def connect(token=token):
    return flight_sql.connect(
        uri, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
    )


def rows(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetch_arrow_table()


def refused(conn, sql):
    """The error message of a statement that must fail."""
    try:
        rows(conn, sql)
    except Exception as e:  # the driver raises its own DB-API error classes
        return str(e).replace("\n", " ")
    raise SystemExit(f"not refused: {sql}")


with connect() as conn:
    table = rows(conn, QUERY)
    print("query", json.dumps(dict(zip(table["id"].to_pylist(), table["cluster_id"].to_pylist()))))

    # A prepared statement with a parameter (the driver binds it over DoPut).
    prepared = rows(conn, "SELECT count(*) AS n FROM t WHERE id < $1", (10,))
    print("prepared", prepared["n"][0].as_py())

    # Metadata: what a client asks on connect.
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    tables = sorted(
        t["table_name"]
        for catalog in objects
        for schema in catalog["catalog_db_schemas"] or []
        for t in schema["db_schema_tables"] or []
    )
    print("tables", json.dumps(tables))
    schema = conn.adbc_get_table_schema("t")
    print("schema", json.dumps(schema.names))

    for name, sql in [
        ("create", "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc/'"),
        ("copy", "COPY (SELECT 1) TO '/tmp/salient-serve-copy.parquet'"),
        ("insert", "INSERT INTO t SELECT * FROM t"),
        ("set", "SET salient.on_bad_image = 'null'"),
        ("drop", "DROP TABLE t"),
    ]:
        print("refused", name, refused(conn, sql))

    print("bad_image", refused(conn, "SELECT cluster_embed(image) FROM bad"))

# 16 clients x 20 queries at once: every answer equals the single-client one.
def client(_):
    with connect() as conn:
        return [rows(conn, QUERY).equals(table) for _ in range(20)]


with ThreadPoolExecutor(16) as pool:
    results = [ok for batch in pool.map(client, range(16)) for ok in batch]
print("concurrent", len(results), sum(results))

for name, bad in [("wrong", "not-the-token"), ("empty", "")]:
    try:
        with connect(bad) as conn:
            rows(conn, "SELECT 1")
        raise SystemExit(f"{name} token admitted")
    except SystemExit:
        raise
    except Exception as e:
        print("token", name, str(e).replace("\n", " "))
