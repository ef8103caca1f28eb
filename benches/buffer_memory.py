"""Server memory while acknowledged rows wait for their flush (#15).

Not run by the test command. Reproduce (release binary built; the venv of
scripts/test.sh):

    python benches/buffer_memory.py target/release/raindrop [--rows 1000000]

A collector (an admin token) sends 1,000-row `DoPut`s, each mixing 50
Zipf-skewed tenants' events in arrival order; the flush interval is 10
minutes and compaction is off, so every row stays buffered. Prints the
server's resident memory (VmRSS) above what it held before the first
`DoPut`, over the Arrow bytes sent: after the `DoPut`s, then after a query
over every tenant's rows (which gathers the buffered batches), then after
the `Flush` action. `--max-buffered-mib` counts the Arrow bytes sent; the
ratio says how much memory it stands for.
"""

import datetime as dt
import random
import sys
import tempfile
import time
import urllib.request
import uuid

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight

from bench_server import serve, token

TENANTS = 50


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def memory_metric(base):
    """The server's `raindrop_ingest_memory_bytes` (NaN from builds before it)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("raindrop_ingest_memory_bytes "):
                return float(line.split()[1])
    return float("nan")


def events(n, rng):
    """`n` events of today, in time order, over Zipf-skewed tenants."""
    weights = [1 / (i + 1) for i in range(TENANTS)]
    now = dt.datetime.now(dt.timezone.utc)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    span = max((now - start).total_seconds() - 1, 1)
    ts = sorted(start + dt.timedelta(seconds=rng.random() * span) for _ in range(n))
    return pa.table({
        "project_id": rng.choices([f"tenant-{i:02}" for i in range(TENANTS)], weights, k=n),
        "event_id": [str(uuid.uuid4()) for _ in range(n)],
        "event_type": ["inference" if rng.random() < 0.9 else "error" for _ in range(n)],
        "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "model_name": [rng.choice(["ranker", "fraud-v2", "embedder"]) for _ in range(n)],
        "model_version": [rng.choice(["1.0.3", "2.1.0"]) for _ in range(n)],
        "session_id": [f"s-{rng.randrange(n // 20 + 1)}" for _ in range(n)],
        "device_id": [f"d-{rng.randrange(n // 50 + 1)}" for _ in range(n)],
        "platform": [rng.choice(["ios", "android", "web"]) for _ in range(n)],
        "confidence": [rng.random() for _ in range(n)],
        "duration_ms": [rng.lognormvariate(3, 0.5) for _ in range(n)],
        "input_tokens": pa.array([rng.randrange(4096) for _ in range(n)], pa.int32()),
    })  # fmt: skip


def main(binary):
    rows = int(sys.argv[sys.argv.index("--rows") + 1]) if "--rows" in sys.argv else 1_000_000
    table = events(rows, random.Random(7))
    batches = table.to_batches(max_chunksize=1_000)
    sent = sum(b.nbytes for b in batches)
    with tempfile.TemporaryDirectory() as data_dir:
        admin = token(binary, data_dir, None, "admin")
        server, addr, metrics = serve(binary, data_dir, "--flush-interval-ms", "600000", "--compact-interval-secs", "0")
        auth = {"adbc.flight.sql.authorization_header": f"Bearer {admin}"}
        try:
            with flightsql.connect(f"grpc://{addr}", db_kwargs=auth, autocommit=True) as conn:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchall()
                time.sleep(1)
                base = rss_bytes(server.pid)
                with conn.cursor() as cur:
                    for b in batches:
                        cur.adbc_ingest("raw_events", pa.Table.from_batches([b]), mode="append")
                print(f"{rows:,} rows in {len(batches):,} DoPuts of {TENANTS} tenants; {sent / 1e6:.1f} MB of Arrow sent")
                print("| step | RSS above start, MB | / Arrow bytes sent | `raindrop_ingest_memory_bytes`, MB |")
                print("|---|---:|---:|---:|")

                def report(step):
                    time.sleep(1)
                    grown = rss_bytes(server.pid) - base
                    counted = memory_metric(metrics)
                    print(f"| {step} | {grown / 1e6:.1f} | {grown / sent:.2f} | {counted / 1e6:.1f} |", flush=True)

                report("buffered")
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*), count(DISTINCT project_id) FROM wildedge.raw_events")
                    assert cur.fetchall() == [(rows, TENANTS)]
                report("after a query over every tenant")
                client = flight.connect(f"grpc://{addr}")
                options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {admin}".encode())])
                list(client.do_action(flight.Action("Flush", b""), options))
                report("flushed")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main(sys.argv[1])
