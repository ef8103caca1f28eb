"""Runs one query through DuckDB's own Iceberg reader (over S3 or local files); writes the result to a file.

Why a separate script and venv: DuckDB's iceberg, httpfs and avro extensions
cannot be downloaded here (no extensions.duckdb.org). On PyPI they exist only as
`duckdb-extension-*` wheels up to 1.5.5, and each wheel pins duckdb==1.5.5. The
main venv uses duckdb 2.0.1, which refuses 1.5.5 extensions. So the tests run
this file with $HOME/.cache/raindrop/venv-duckdb/bin/python, a venv built from
requirements-duckdb.txt. It uses only the standard library and duckdb.

    python duckdb_iceberg.py --metadata s3://bucket/.../metadata/000NN-<uuid>.metadata.json \
        --sql 'SELECT project_id, count(*) AS n FROM raw_events GROUP BY 1 ORDER BY 1' \
        --out result.jsonl

The query sees a view `raw_events` over `iceberg_scan('<metadata>')`. Pass the
exact metadata location: then no version-hint guessing is needed.

Or, with `--rest http://host:port` instead of `--metadata`, DuckDB attaches
Raindrop's REST catalog as `raindrop` (OAuth2 client credentials; the secret
is the Raindrop token in RAINDROP_REST_SECRET) and runs the query in it
(`USE raindrop.wildedge`), so `wildedge.raw_events` and the tenant's own schemas
resolve as in Flight SQL.

A `file://` or plain path reads a local table. For `s3://`, the S3 settings
come from the environment: RAINDROP_TEST_S3_ENDPOINT
(`http://127.0.0.1:9000`), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION
(default us-east-1). Path-style addressing.

Output, written by DuckDB itself (COPY), chosen by the suffix of --out:
- `.parquet`: Parquet, types kept (read it with pyarrow.parquet.read_table).
  Arrow IPC would need pyarrow in this venv; Parquet needs nothing more.
- anything else: JSON lines, one object per row keyed by column name (give
  columns distinct names). TIMESTAMPTZ values are strings in UTC, such as
  "2024-01-01 08:00:00.123456+00"; DECIMAL and HUGEINT are JSON numbers.
Fetching rows into Python instead would need pytz for TIMESTAMPTZ.
"""

import argparse
import importlib.util
import os
from urllib.parse import urlsplit

import duckdb


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def extension_path(name: str) -> str:
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    root = spec.submodule_search_locations[0]
    return f"{root}/extensions/v{duckdb.__version__}/{name}.duckdb_extension"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--metadata", help="s3:// or local location of the table's metadata.json")
    source.add_argument("--rest", help="base URL of Raindrop's Iceberg REST catalog")
    ap.add_argument("--sql", required=True, help="query over the view raw_events")
    ap.add_argument("--out", required=True, help="result file: .parquet, else JSON lines")
    ap.add_argument(
        "--own-s3-keys",
        action="store_true",
        help="with --rest: read files with the S3 keys of the environment (an S3 secret of "
        "DuckDB's own) rather than credentials the catalog vends",
    )
    args = ap.parse_args()

    # No network: never try to download an extension.
    con = duckdb.connect(config={"autoinstall_known_extensions": "false"})
    # Order matters: iceberg's init looks for avro and would try to install it.
    for name in ("httpfs", "avro", "iceberg"):
        con.execute(f"LOAD {sql_str(extension_path(name))}")
    try:
        con.execute("SET TimeZone='UTC'")  # needs ICU (built into the wheel)
    except duckdb.Error:
        pass

    if args.rest:
        secret = os.environ["RAINDROP_REST_SECRET"]
        delegation = ""
        if args.own_s3_keys:
            s3_secret(con)
            delegation = ", ACCESS_DELEGATION_MODE 'none'"
        con.execute(
            f"""ATTACH 'raindrop' AS raindrop (TYPE iceberg, ENDPOINT {sql_str(args.rest)},
                CLIENT_ID 'duckdb', CLIENT_SECRET {sql_str(secret)}, READ_ONLY{delegation})"""
        )
        # DuckDB needs a schema to USE; two-part names then resolve in
        # this catalog (warehouse.user_outcomes as well).
        con.execute("USE raindrop.wildedge")
    else:
        metadata = args.metadata.removeprefix("file://")
        if metadata.startswith("s3://"):
            s3_secret(con)
        con.execute(f"CREATE VIEW raw_events AS SELECT * FROM iceberg_scan({sql_str(metadata)})")
    fmt = "parquet" if args.out.endswith(".parquet") else "json"
    query = args.sql.strip().rstrip(";")
    con.execute(f"COPY ({query}) TO {sql_str(args.out)} (FORMAT {fmt})")


def s3_secret(con) -> None:
    endpoint = urlsplit(os.environ["RAINDROP_TEST_S3_ENDPOINT"])
    con.execute(
        f"""CREATE SECRET s3test (TYPE s3,
            KEY_ID {sql_str(os.environ["AWS_ACCESS_KEY_ID"])},
            SECRET {sql_str(os.environ["AWS_SECRET_ACCESS_KEY"])},
            REGION {sql_str(os.environ.get("AWS_REGION") or "us-east-1")},
            ENDPOINT {sql_str(endpoint.netloc)},  -- host:port, no scheme
            URL_STYLE 'path', USE_SSL {str(endpoint.scheme == "https").lower()})"""
    )


if __name__ == "__main__":
    main()
