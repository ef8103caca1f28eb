"""Cost of the tenant-scoped REST catalog on a many-tenant table (#16).

Not run by the test command. Reproduce (release binary built; the DuckDB
venv of scripts/test.sh):

    raindrop demo --data-dir /tmp/rest1k --events 2000000 --projects 1000 --batch-rows 20000
    python benches/rest_catalog.py target/release/raindrop /tmp/rest1k

It serves the directory with `--http-addr`, picks the largest, the median
and the smallest project, and for each reports:
- `loadTable` time through the REST catalog, first (derives the tenant's
  metadata) and second (cached), and the bytes and files derived;
- PyIceberg: load and scan the tenant's rows through the REST catalog, next
  to the same client on the shared table through the SQL catalog with
  `project_id == <p>` (median of 3);
- DuckDB 1.5.5: one aggregate through `ATTACH … (TYPE iceberg)`, next to
  `iceberg_scan` of the shared table's metadata with `WHERE project_id = <p>`
  (wall time of a fresh process each, extension loading included; median of 3).
Row counts are checked equal on both paths.

`--appends N` (after the two paths) first appends N collector-style
`DoPut`s of 1,000 rows each, as an admin, with Zipf-skewed projects of the
table and uuid4 ids, one commit each (`--flush-interval-ms 0`): many
snapshots, with the manifests merged by tenant every 8 appends.
"""

import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
from pyiceberg.catalog import load_catalog
from pyiceberg.catalog.sql import SqlCatalog

from bench_server import serve, timed, token

HERE = Path(__file__).resolve().parent
DUCKDB_SCRIPT = HERE.parent / "tests" / "clients" / "duckdb_iceberg.py"
DUCKDB_PYTHON = os.environ.get("RAINDROP_DUCKDB_PYTHON", str(Path.home() / ".cache/raindrop/venv-duckdb/bin/python"))
AGG = "SELECT count(*) AS n, sum(duration_ms) AS ms FROM wildedge.raw_events"


def duckdb(args, env=None):
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        subprocess.run([DUCKDB_PYTHON, str(DUCKDB_SCRIPT), *args, "--out", out.name], check=True, env={**os.environ, **(env or {})})
        return [json.loads(line) for line in Path(out.name).read_text().splitlines()]


def append(conn, projects, appends, rows=1_000, seed=11):
    """`appends` DoPuts of `rows` Zipf-skewed events each, in arrival order
    (`projects` largest first)."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(projects))]
    now = dt.datetime.now(dt.timezone.utc)
    for i in range(appends):
        picked = rng.choices(projects, weights, k=rows)
        at = now + dt.timedelta(seconds=i)
        batch = pa.table({
            "project_id": picked, "event_id": [str(uuid.uuid4()) for _ in range(rows)],
            "event_type": ["inference"] * rows, "event_timestamp": pa.array([at] * rows, pa.timestamp("us", tz="UTC")),
            "model_name": ["m"] * rows, "session_id": [f"{p}-s{rng.randrange(50)}" for p in picked],
            "confidence": [rng.random() for _ in range(rows)], "duration_ms": [rng.lognormvariate(3, 0.5) for _ in range(rows)],
        })  # fmt: skip
        with conn.cursor() as cur:
            cur.adbc_ingest("raw_events", batch, mode="append")


def main() -> None:
    binary, data_dir = sys.argv[1:3]
    appends = int(sys.argv[sys.argv.index("--appends") + 1]) if "--appends" in sys.argv else 0
    admin = token(binary, data_dir, None, "admin")
    server, addr, base = serve(
        binary, data_dir, "--compact-interval-secs", "0", *(["--flush-interval-ms", "0"] if appends else [])
    )
    try:
        conn = flightsql.connect(f"grpc://{addr}", db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {admin}"}, autocommit=True)
        by_size = "SELECT project_id, count(*) AS n FROM wildedge.raw_events GROUP BY 1 ORDER BY 2 DESC, 1"
        with conn.cursor() as cur:
            cur.execute(by_size)
            counts = cur.fetchall()
        if appends:
            append(conn, [p for p, _ in counts], appends)
            with conn.cursor() as cur:
                cur.execute(by_size)
                counts = cur.fetchall()
        conn.close()
        sql = SqlCatalog("raindrop", uri=f"sqlite:///{Path(data_dir).resolve()}/catalog.db", warehouse=f"file://{Path(data_dir).resolve()}/warehouse")
        shared = sql.load_table("wildedge.raw_events")
        meta_file = Path(shared.metadata_location.removeprefix("file://").removeprefix("file:"))
        snap = shared.current_snapshot()
        manifests = snap.manifests(shared.io)
        base_bytes = meta_file.stat().st_size + Path(snap.manifest_list.removeprefix("file://").removeprefix("file:")).stat().st_size + sum(m.manifest_length for m in manifests)
        print(f"table: {sum(n for _, n in counts):,} rows, {len(counts)} projects, {len(shared.metadata.snapshots)} snapshots, "
              f"{len(manifests)} manifests in the current snapshot; shared metadata.json {meta_file.stat().st_size:,} B, "
              f"current list + manifests + metadata.json {base_bytes:,} B")  # fmt: skip
        picks = [("largest", counts[0]), ("median", counts[len(counts) // 2]), ("smallest", counts[-1])]
        print("| project | rows | loadTable first / cached | derived (files, bytes) | PyIceberg REST / SQL catalog | DuckDB REST / iceberg_scan |")
        print("|---|---|---|---|---|---|")
        for label, (project, rows) in picks:
            secret = token(binary, data_dir, project, "read")
            time.sleep(2.5)  # the server re-reads the token file when it changes

            def load():
                req = urllib.request.Request(f"{base}/v1/namespaces/wildedge/tables/raw_events", headers={"Authorization": f"Bearer {secret}"})
                with urllib.request.urlopen(req) as resp:
                    return json.loads(resp.read())

            first, body = timed(load)
            cached, _ = timed(load, 3)
            view_dir = Path(body["metadata-location"].removeprefix("file://").removeprefix("file:")).parent
            files = list(view_dir.iterdir())
            derived = sum(f.stat().st_size for f in files)

            rest = load_catalog(project, type="rest", uri=base, credential=secret)
            py_rest, got = timed(lambda: rest.load_table("wildedge.raw_events").scan(selected_fields=("duration_ms",)).to_arrow().num_rows, 3)
            py_sql, want = timed(lambda: sql.load_table("wildedge.raw_events").scan(row_filter=f"project_id == '{project}'", selected_fields=("duration_ms",)).to_arrow().num_rows, 3)
            assert got == want == rows, (got, want, rows)

            duck_rest, d1 = timed(lambda: duckdb(["--rest", base, "--sql", AGG], {"RAINDROP_REST_SECRET": secret}), 3)
            duck_scan, d2 = timed(lambda: duckdb(["--metadata", shared.metadata_location, "--sql", AGG.replace("wildedge.raw_events", "raw_events") + f" WHERE project_id = '{project}'"]), 3)
            assert d1[0]["n"] == d2[0]["n"] == rows and abs(d1[0]["ms"] - d2[0]["ms"]) <= 1e-9 * abs(d2[0]["ms"]), (d1, d2)
            print(f"| {label} `{project}` | {rows:,} | {first:.0f} / {cached:.1f} ms | {len(files)}, {derived:,} B | "
                  f"{py_rest:.0f} / {py_sql:.0f} ms | {duck_rest:.0f} / {duck_scan:.0f} ms |")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
