"""Cost of the REST catalog's S3 remote signer (#16), on an S3 warehouse.

Not run by the test command. Reproduce (release binary built; the S3
server of scripts/services.sh running, whose variables this reads):

    source scripts/services.sh && services_install_s3s && services_start
    ~/.cache/raindrop/venv/bin/python benches/rest_signer.py target/release/raindrop

It starts `raindrop serve` on a fresh prefix of the test bucket, loads
50 Zipf-skewed tenants (uuid4 event ids, events in arrival order, 5,000-row
DoPuts), and for the largest, the median and the smallest tenant reports:
- PyIceberg scanning the tenant's rows through the REST catalog with no S3
  key (every S3 request signed by Raindrop), next to the same client on the
  shared table through the SQL catalog with the bucket's own key and
  `project_id == <p>` (median of 3; row counts checked equal);
- how many signatures the REST scan asked for;
- the signer's own latency: one `POST …/sign` from a warm client (median
  of 200).

By default each PyIceberg reader thread gets its own S3 filesystem, the
workaround the client suite uses for apache/iceberg-python#3896;
`SIGNER_BENCH_SHARED_FS=1` measures PyIceberg's default shared filesystem
(racy upstream, so occasionally a read fails).
"""

import datetime as dt
import json
import os
import random
import sys
import tempfile
import urllib.request
import uuid

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import s3fs
from pyiceberg.catalog import load_catalog
from pyiceberg.catalog.sql import SqlCatalog

from bench_server import serve, timed, token

TENANTS = 50
EVENTS = 500_000
BATCH = 5_000
S3 = os.environ["RAINDROP_TEST_S3_ENDPOINT"]
BUCKET = os.environ["RAINDROP_TEST_S3_BUCKET"]
KEYS = {
    "s3.endpoint": S3,
    "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
    "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
    "s3.region": os.environ["AWS_REGION"],
}


def metric(base, series):
    with urllib.request.urlopen(f"{base}/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
    return 0.0


def events(rng):
    """(project, batch) pairs in arrival order: Zipf-skewed tenants over 30 days."""
    projects = [f"tenant-{i:02d}" for i in range(TENANTS)]
    weights = [1 / (i + 1) for i in range(TENANTS)]
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    step = dt.timedelta(days=30) / EVENTS
    pending = {p: [] for p in projects}
    for i, project in enumerate(rng.choices(projects, weights, k=EVENTS)):
        rows = pending[project]
        rows.append((str(uuid.uuid4()), start + i * step, f"{project}-s{rng.randrange(EVENTS // 20)}", rng.random(), rng.lognormvariate(3, 0.5)))
        if len(rows) == BATCH:
            yield project, rows
            pending[project] = []
    for project, rows in pending.items():
        if rows:
            yield project, rows


def main() -> None:
    binary = sys.argv[1]
    data_dir = tempfile.mkdtemp(prefix="signer-bench-")
    prefix = f"signer-bench-{uuid.uuid4().hex[:8]}"
    admin = token(binary, data_dir, None, "admin")
    tokens = {f"tenant-{i:02d}": token(binary, data_dir, f"tenant-{i:02d}", "read_write") for i in range(TENANTS)}
    server, addr, base = serve(
        binary, data_dir, "--warehouse", f"s3://{BUCKET}/{prefix}", "--s3-endpoint", S3, "--s3-path-style"
    )
    # PyIceberg 0.12's signer hook races between reader threads
    # (apache/iceberg-python#3896): one filesystem per thread, unless asked.
    s3fs.S3FileSystem.cachable = os.environ.get("SIGNER_BENCH_SHARED_FS") == "1"
    try:
        conns = {}
        counts = {}
        for project, rows in events(random.Random(7)):
            if project not in conns:
                conns[project] = flightsql.connect(f"grpc://{addr}", db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {tokens[project]}"}, autocommit=True)
            batch = pa.table({
                "event_id": [r[0] for r in rows], "event_type": ["inference"] * len(rows),
                "event_timestamp": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
                "model_name": ["m"] * len(rows), "session_id": [r[2] for r in rows],
                "confidence": [r[3] for r in rows], "duration_ms": [r[4] for r in rows],
            })  # fmt: skip
            with conns[project].cursor() as cur:
                cur.adbc_ingest("raw_events", batch, mode="append")
            counts[project] = counts.get(project, 0) + len(rows)
        for conn in conns.values():
            conn.close()
        # Commit every acknowledged row now (the `Flush` action).
        client = flight.FlightClient(f"grpc+tcp://{addr}")
        options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {admin}".encode())])
        list(client.do_action(flight.Action("Flush", b""), options))
        client.close()
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        sql = SqlCatalog("raindrop", uri=f"sqlite:///{data_dir}/catalog.db", **KEYS)
        print(f"table: {sum(counts.values()):,} rows, {len(counts)} tenants, on s3://{BUCKET}/{prefix} (s3s-fs)")
        print("| tenant | rows | PyIceberg REST, keyless (signed) / SQL catalog, own key | signatures per REST scan |")
        print("|---|---|---|---|")
        sign_ms = None
        for label, (project, rows) in [("largest", ranked[0]), ("median", ranked[len(ranked) // 2]), ("smallest", ranked[-1])]:
            rest = load_catalog(project, type="rest", uri=base, credential=tokens[project])
            signed_before = metric(base, 'raindrop_rest_sign_requests_total{outcome="ok"}')
            rest_ms, got = timed(lambda: rest.load_table("wildedge.raw_events").scan(selected_fields=("duration_ms",)).to_arrow().num_rows, 3)
            signatures = (metric(base, 'raindrop_rest_sign_requests_total{outcome="ok"}') - signed_before) / 3
            sql_ms, want = timed(lambda: sql.load_table("wildedge.raw_events").scan(row_filter=f"project_id == '{project}'", selected_fields=("duration_ms",)).to_arrow().num_rows, 3)
            assert got == want == rows, (got, want, rows)
            print(f"| {label} `{project}` | {rows:,} | {rest_ms:.0f} / {sql_ms:.0f} ms | {signatures:.0f} |")
            if sign_ms is None:
                table = rest.load_table("wildedge.raw_events")
                uri = f"{S3}/{BUCKET}/{next(iter(table.scan().plan_files())).file.file_path.removeprefix(f's3://{BUCKET}/')}"
                body = json.dumps({"method": "GET", "region": KEYS["s3.region"], "uri": uri, "headers": {}}).encode()
                req = lambda: urllib.request.urlopen(urllib.request.Request(
                    f"{base}/v1/namespaces/wildedge/tables/raw_events/sign", data=body, method="POST",
                    headers={"Authorization": f"Bearer {tokens[project]}", "Content-Type": "application/json"})).read()  # fmt: skip
                sign_ms, _ = timed(req, 200)
        print(f"one signature (POST …/sign, warm, median of 200): {sign_ms:.2f} ms")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
