"""A client that starts streaming a large result, prints `streaming` after its first batch and
then stalls, to be killed mid-stream by tests/serve.rs (ADBC's Flight SQL driver).

usage: flight_sql_stall.py URI TOKEN
"""

import sys
import time

import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions

uri, token = sys.argv[1], sys.argv[2]
# 192 x 192 x 20 rows, each embedded: far more than the driver and the network buffer, so the
# server is still producing it when this client is killed.
QUERY = (
    "SELECT a.id, b.id AS other, cluster_embed(a.image) AS c "
    "FROM t a, t b, (SELECT id FROM t LIMIT 20) c"
)

conn = flight_sql.connect(
    uri, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
)
cur = conn.cursor()
cur.execute(QUERY)
reader = cur.fetch_record_batch()
batch = reader.read_next_batch()
print("streaming", batch.num_rows, flush=True)
time.sleep(600)
