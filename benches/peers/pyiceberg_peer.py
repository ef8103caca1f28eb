"""Ingest peers for benches/ingest.rs, on the same batches Raindrop ingests.

argv: <arrow ipc file> <work dir>
Prints JSON: PyIceberg append rows/s into an equivalent partitioned table
(one append = one commit per client batch, like one DoPut) and its bytes per
event, and DuckDB's ZSTD Parquet bytes per event for the same rows: one
file, and partitioned like raw_events.
"""

import json
import os
import sys
import time

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.transforms import DayTransform, IdentityTransform

src, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
reader = ipc.open_file(src)
batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
table = pa.Table.from_batches(batches)
rows = table.num_rows

catalog = SqlCatalog(
    "bench", uri=f"sqlite:///{work}/catalog.db", warehouse=f"file://{work}/warehouse"
)
catalog.create_namespace("wildedge")
schema = table.schema
ice = catalog.create_table("wildedge.raw_events", schema=schema)
with ice.update_spec() as spec:
    spec.add_field("project_id", IdentityTransform(), "project_id")
    spec.add_field("event_timestamp", DayTransform(), "event_day")
ice = catalog.load_table("wildedge.raw_events")
start = time.perf_counter()
for b in batches:
    ice.append(pa.Table.from_batches([b]))
pyiceberg_secs = time.perf_counter() - start



def tree_bytes(root, suffix=".parquet"):
    return sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(root)
        for f in files
        if f.endswith(suffix)
    )


out = os.path.join(work, "duckdb.parquet")
con = duckdb.connect()
con.execute("SET threads = 2")
con.register("t", table)
con.execute(f"COPY t TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
# The same rows under Raindrop's partitioning (one file per project and
# day, rows in arrival order): what partitioning alone costs in bytes.
parted = os.path.join(work, "duckdb-partitioned")
con.execute(
    f"""COPY (SELECT *, CAST(event_timestamp AT TIME ZONE 'UTC' AS DATE) AS event_day FROM t)
        TO '{parted}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (project_id, event_day))"""
)
print(
    json.dumps(
        {
            "rows": rows,
            "pyiceberg_rows_per_s": rows / pyiceberg_secs,
            "pyiceberg_secs": pyiceberg_secs,
            "duckdb_zstd_bytes_per_event": os.path.getsize(out) / rows,
            "duckdb_partitioned_bytes_per_event": tree_bytes(parted) / rows,
            "pyiceberg_bytes_per_event": tree_bytes(f"{work}/warehouse") / rows,
        }
    )
)
