"""DuckDB peer for benches/stream.rs: the same rows, in the same arrival
order, written by one partitioned ZSTD `COPY` (project_id, event_day), as a
batch job would: rows/s and bytes per event.

argv: <arrow ipc file> <work dir>
"""

import json
import os
import sys
import time

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc

src, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
reader = ipc.open_file(src)
table = pa.Table.from_batches([reader.get_batch(i) for i in range(reader.num_record_batches)])
con = duckdb.connect()
con.execute("SET threads = 2")
con.register("t", table)
out = os.path.join(work, "duckdb-partitioned")
start = time.perf_counter()
con.execute(
    f"""COPY (SELECT *, CAST(event_timestamp AT TIME ZONE 'UTC' AS DATE) AS event_day FROM t)
        TO '{out}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (project_id, event_day))"""
)
secs = time.perf_counter() - start
size = sum(
    os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(out) for f in files
)
print(
    json.dumps(
        {
            "duckdb_rows_per_s": table.num_rows / secs,
            "duckdb_bytes_per_event": size / table.num_rows,
        }
    )
)
