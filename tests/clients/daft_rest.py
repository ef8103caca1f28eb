"""Reads a tenant's telemetry with Daft through Raindrop's Iceberg REST catalog; writes what it read.

Daft plans Iceberg scans with PyIceberg (`daft.read_iceberg(table)`) and reads
the data files with its own IO. It runs in the DuckDB venv
($HOME/.cache/raindrop/venv-duckdb, requirements-duckdb.txt): daft 0.7 needs
pyarrow < 26, which the main venv is past.

    RAINDROP_REST_SECRET=<token> python daft_rest.py --rest http://host:port --out DIR

Writes two Parquet files into DIR:
- `events.parquet`: `wildedge.raw_events` as Daft reads it (event_id, project_id);
- `by_model.parquet`: inference events joined with the tenant's
  `warehouse.user_outcomes` on session_id, per model: inference_count,
  avg_confidence, conversion_rate (the seed query's join, in Daft's API).
"""

import argparse
import os

import daft
import pyarrow.parquet as pq
from daft import col
from pyiceberg.catalog import load_catalog


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rest", required=True, help="base URL of Raindrop's Iceberg REST catalog")
    ap.add_argument("--out", required=True, help="directory for the result files")
    args = ap.parse_args()

    catalog = load_catalog("raindrop", type="rest", uri=args.rest, credential=os.environ["RAINDROP_REST_SECRET"])
    events = daft.read_iceberg(catalog.load_table("wildedge.raw_events"))
    outcomes = daft.read_iceberg(catalog.load_table("warehouse.user_outcomes"))

    pq.write_table(events.select("event_id", "project_id").to_arrow(), os.path.join(args.out, "events.parquet"))
    by_model = (
        events.where(col("event_type") == "inference")
        .join(outcomes, on="session_id")
        .groupby("model_name")
        .agg(
            col("event_id").count().alias("inference_count"),
            col("confidence").mean().alias("avg_confidence"),
            col("converted").cast(daft.DataType.int64()).mean().alias("conversion_rate"),
        )
        .sort("model_name")
    )
    pq.write_table(by_model.to_arrow(), os.path.join(args.out, "by_model.parquet"))


if __name__ == "__main__":
    main()
