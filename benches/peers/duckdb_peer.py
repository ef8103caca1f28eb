"""DuckDB peer for benches/query.rs and benches/stream.rs: runs the same SQL
over Parquet files laid out `project_id=<p>/event_day=<d>/`, with threads=2,
and reports median hot latency.

stdin: {"data": <data dir>, "project": <id>, "outcomes": <glob> | null,
        "hive": <bool: the files lack project_id (DuckDB's own partitioned
                 COPY), so the admin view takes both columns from paths>,
        "runs": N, "queries": [{"name", "sql", "admin"}]}
stdout: {"<name>": {"median_ms": float, "rows": int}}
"""

import json
import statistics
import sys
import time

import duckdb

req = json.load(sys.stdin)
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute("SET TimeZone = 'UTC'")
con.execute("CREATE SCHEMA wildedge; CREATE SCHEMA warehouse")
data = req["data"]
# Tenant view: the tenant's prefix, with event_day from the directory name.
con.execute(
    f"CREATE VIEW wildedge.tenant_events AS SELECT * FROM read_parquet("
    f"'{data}/project_id={req['project']}/*/*.parquet', hive_partitioning = true, hive_types = {{'event_day': DATE}})"
)
if req.get("hive"):
    con.execute(
        f"CREATE VIEW wildedge.all_events AS SELECT * FROM read_parquet("
        f"'{data}/*/*/*.parquet', hive_partitioning = true, hive_types = {{'event_day': DATE}})"
    )
else:
    # Admin view: every file; event_day computed (project_id is in the files).
    con.execute(
        f"CREATE VIEW wildedge.all_events AS SELECT *, CAST(event_timestamp AS DATE) AS event_day "
        f"FROM read_parquet('{data}/*/*/*.parquet', hive_partitioning = false)"
    )
if req.get("outcomes"):
    con.execute(f"CREATE VIEW warehouse.user_outcomes AS SELECT * FROM read_parquet('{req['outcomes']}')")

out = {}
for q in req["queries"]:
    view = "wildedge.all_events" if q["admin"] else "wildedge.tenant_events"
    sql = q["sql"].replace("wildedge.raw_events", view)
    rows = len(con.execute(sql).fetchall())  # warm-up
    times = []
    for _ in range(req["runs"]):
        t = time.perf_counter()
        con.execute(sql).fetchall()
        times.append((time.perf_counter() - t) * 1000)
    out[q["name"]] = {"median_ms": statistics.median(times), "rows": rows}
print(json.dumps(out))
