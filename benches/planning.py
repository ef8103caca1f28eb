"""Planning time of dashboard queries, compared across server builds (#20).

Not run by the test command. `EXPLAIN <query>` over Flight SQL parses,
plans, optimizes and builds the physical plan (including the Iceberg scan
planning) but executes nothing, so its round trip is the planning time a
query pays; the query itself runs next to it. Used to check that building
DataFusion's planning crates at opt-level 1 (Cargo.toml) costs no query
time. Reproduce (the query bench's data directory and tokens, the venv of
scripts/test.sh):

    RAINDROP_BENCH_EVENTS=2000000 RAINDROP_BENCH_DIR=/tmp/qbench cargo bench --bench query
    python benches/planning.py /tmp/qbench --rounds 3 before/raindrop after/raindrop

Each round serves the directory with each binary in turn (background
compaction off) and prints, per query, the median of `--runs` round trips
in ms, as one JSON line per binary.
"""

import argparse
import json
import socket
import statistics
import subprocess
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions

QUERIES = {
    "hourly p95 1d": "SELECT date_trunc('hour', event_timestamp) AS hour, model_name, "
    "avg(confidence) AS mean_confidence, percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms, "
    "count(*) AS n FROM wildedge.raw_events WHERE event_type = 'inference' "
    "AND event_day = current_date - interval '1 day' GROUP BY 1, 2 ORDER BY 1, 2",
    "error rate 7d": "SELECT model_version, avg(CASE WHEN event_type = 'error' THEN 1.0 ELSE 0.0 END) AS error_rate, "
    "count(*) AS n FROM wildedge.raw_events WHERE event_day >= current_date - interval '7 days' GROUP BY 1 ORDER BY 1",
    "top 20 sessions": "SELECT session_id, count(*) AS events, avg(duration_ms) AS mean_ms FROM wildedge.raw_events "
    "WHERE event_day >= current_date - interval '1 day' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
    "seed": (Path(__file__).resolve().parent.parent / "sql/seed-query.sql").read_text().strip().rstrip(";"),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(binary, data_dir, token, runs):
    port = free_port()
    server = subprocess.Popen(
        [binary, "serve", "--data-dir", data_dir, "--addr", f"127.0.0.1:{port}", "--compact-interval-secs", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        auth = {DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}
        with flightsql.connect(f"grpc://127.0.0.1:{port}", db_kwargs=auth) as conn, conn.cursor() as cur:
            medians = {}
            for name, sql in QUERIES.items():
                for kind, text in (("explain", "EXPLAIN " + sql), ("run", sql)):
                    for _ in range(5):  # warm caches
                        cur.execute(text)
                        cur.fetchall()
                    times = []
                    for _ in range(runs):
                        started = time.perf_counter()
                        cur.execute(text)
                        cur.fetchall()
                        times.append((time.perf_counter() - started) * 1e3)
                    medians[f"{name} {kind}"] = round(statistics.median(times), 2)
            return medians
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", help="the query bench's data directory (RAINDROP_BENCH_DIR)")
    parser.add_argument("binaries", nargs="+", help="raindrop binaries to compare")
    parser.add_argument("--project", default="stark")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    with open(f"{args.data_dir}/bench-tokens.json") as f:
        token = json.load(f)[0][args.project]
    for round_no in range(1, args.rounds + 1):
        for binary in args.binaries:
            print(round_no, binary, json.dumps(measure(binary, args.data_dir, token, args.runs)), flush=True)


if __name__ == "__main__":
    main()
