"""A second client salient did not write: InfluxData's `flightsql-dbapi`, a Flight SQL client in
Python over pyarrow's Flight (C++ gRPC), independent of ADBC's Go driver. Against a running
`salient serve`.

usage: flightsql_dbapi_client.py URI TOKEN [CA_CERT]
  URI      grpc://HOST:PORT, or grpc+tls://HOST:PORT with CA_CERT the PEM to trust
Prints one line per check; tests/serve.rs reads them. Exits non-zero on an unexpected outcome.
"""

import json
import sys
from urllib.parse import urlparse

from flightsql import FlightSQLClient

uri, token = sys.argv[1], sys.argv[2]
ca_cert = open(sys.argv[3], "rb").read() if len(sys.argv) > 3 else None
address = urlparse(uri)
tls = address.scheme == "grpc+tls"
QUERY = "SELECT id, cluster_embed(image)['cluster_id'] AS cluster_id FROM t ORDER BY id"


def client(token=token, insecure=not tls, **kwargs):
    if ca_cert is not None and "tls_root_certs" not in kwargs:
        kwargs["tls_root_certs"] = ca_cert
    return FlightSQLClient(
        host=address.hostname, port=address.port, token=token, insecure=insecure, **kwargs
    )


def fetch(c, info):
    return c.do_get(info.endpoints[0].ticket).read_all()


def error_of(call):
    try:
        call()
    except Exception as e:  # pyarrow.flight raises its own error classes
        return str(e).replace("\n", " ")
    raise SystemExit("the call succeeded")


c = client()
table = fetch(c, c.execute(QUERY))
print("query", json.dumps(dict(zip(table["id"].to_pylist(), table["cluster_id"].to_pylist()))))
tables = fetch(c, c.get_tables())
print("tables", json.dumps(sorted(tables["table_name"].to_pylist())))
print("wrong_token", error_of(lambda: client(token="not-the-token").execute("SELECT 1")))

if tls:
    # Without trusting the certificate, and in plain text to the TLS port.
    print("untrusted", error_of(lambda: client(tls_root_certs=b"").execute("SELECT 1")))
    print("plaintext", error_of(lambda: client(insecure=True).execute("SELECT 1")))
c.close()
