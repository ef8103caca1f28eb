"""Queries over buffered rows, before and after the flush (#15).

Not run by the test command. Reproduce (release binary built; the venv of
scripts/test.sh):

    python benches/buffered_query.py target/release/raindrop

One tenant: 40,000 of yesterday's rows, flushed, then 150 `DoPut`s of
1,000 of today's rows in time order, left in the buffer (flush interval
10 minutes, compaction off). The hourly p95 dashboard query runs on
yesterday and on today (median of 5 after 2 warm-up runs), then again
after the `Flush` action. Buffered batches outside a query's time range
should cost nothing: yesterday's query should take about as long
buffered as flushed.
"""

import datetime as dt
import random
import sys
import tempfile
import uuid

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight

from bench_server import serve, timed, token

QUERY = (
    "SELECT date_trunc('hour', event_timestamp) AS hour, model_name, avg(confidence), "
    "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms), count(*) FROM wildedge.raw_events "
    "WHERE event_type = 'inference' AND event_day = {day} GROUP BY 1, 2 ORDER BY 1, 2"
)
DAYS = {"yesterday": "current_date - interval '1 day'", "today": "current_date"}
rng = random.Random(7)


def rows(n, start, span_s):
    """`n` events from `start` over `span_s` seconds, in time order."""
    ts = sorted(start + dt.timedelta(seconds=rng.random() * span_s) for _ in range(n))
    return pa.table({
        "event_id": [str(uuid.uuid4()) for _ in range(n)],
        "event_type": ["inference" if rng.random() < 0.9 else "error" for _ in range(n)],
        "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "model_name": [rng.choice(["a", "b", "c"]) for _ in range(n)],
        "session_id": [f"s{rng.randrange(5000)}" for _ in range(n)],
        "confidence": [rng.random() for _ in range(n)],
        "duration_ms": [rng.lognormvariate(3, 0.5) for _ in range(n)],
    })  # fmt: skip


def main(binary):
    now = dt.datetime.now(dt.timezone.utc)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as data_dir:
        secret = token(binary, data_dir, "acme", "read_write")
        server, addr, _ = serve(binary, data_dir, "--flush-interval-ms", "600000", "--compact-interval-secs", "0")
        auth = {"adbc.flight.sql.authorization_header": f"Bearer {secret}"}

        def flush():
            client = flight.FlightClient(f"grpc+tcp://{addr}")
            options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {secret}".encode())])
            list(client.do_action(flight.Action("Flush", b""), options))
            client.close()

        def times(conn):
            out = {}
            with conn.cursor() as cur:
                for name, day in DAYS.items():
                    run = lambda: (cur.execute(QUERY.format(day=day)), cur.fetch_arrow_table())  # noqa: E731
                    timed(run, 2)
                    out[name] = timed(run, 5)[0]
            return out

        try:
            with flightsql.connect(f"grpc://{addr}", db_kwargs=auth, autocommit=True) as conn:
                with conn.cursor() as cur:
                    for i in range(40):
                        start = today - dt.timedelta(days=1) + dt.timedelta(minutes=30 * i)
                        cur.adbc_ingest("raw_events", rows(1000, start, 1800), mode="append")
                    flush()
                    span = max(60.0, (now - today).total_seconds() - 60)
                    for i in range(150):
                        start = today + dt.timedelta(seconds=span * i / 150)
                        cur.adbc_ingest("raw_events", rows(1000, start, span / 150), mode="append")
                buffered = times(conn)
                flush()
                flushed = times(conn)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print("| query (hourly p95, one day) | 150k of today's rows buffered, ms | after Flush, ms |")
    print("|---|---:|---:|")
    for name in DAYS:
        print(f"| {name} | {buffered[name]:.1f} | {flushed[name]:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1])
