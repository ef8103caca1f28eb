"""Metadata of `raw_events` under many small commits from many tenants (#15).

Not run by the test command. Reproduce (release binary built; the venv of
scripts/test.sh):

    raindrop demo --data-dir /tmp/meta1k --events 2000000 --projects 1000 --batch-rows 20000
    python benches/metadata_growth.py target/release/raindrop /tmp/meta1k --appends 200

It serves the directory with one commit per `DoPut` (`--flush-interval-ms
0`) and background compaction off, then sends `--appends` collector-style
`DoPut`s as an admin: 1,000 rows each, Zipf-skewed over the table's
projects, uuid4 ids (the same generator as `benches/rest_catalog.py`).
Every `--every` appends it prints the bytes on disk of `data/` and
`metadata/` (by kind) and the manifests of the current snapshot, so the
growth per manifest merge (every 8 appends) shows.
"""

import sys
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql

from bench_server import serve, token
from rest_catalog import append


def tree(path: Path) -> tuple[int, int]:
    files = [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files), len(files)


def state(table_dir: Path) -> str:
    data, _ = tree(table_dir / "data")
    kinds = {"json": 0, "lists": 0, "manifests": 0}
    meta = list((table_dir / "metadata").iterdir())
    for f in meta:
        kind = "json" if f.name.endswith(".metadata.json") else "lists" if f.name.startswith("snap-") else "manifests"
        kinds[kind] += f.stat().st_size
    total = sum(kinds.values())
    mb = lambda b: f"{b / 1e6:.1f}"  # noqa: E731
    return (
        f"| {mb(data)} | {mb(total)} | {100 * total / max(data, 1):.1f}% | "
        f"{mb(kinds['json'])} / {mb(kinds['lists'])} / {mb(kinds['manifests'])} | {len(meta)} |"
    )


def main() -> None:
    binary, data_dir = sys.argv[1:3]
    arg = lambda name, default: int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default  # noqa: E731
    appends, every = arg("--appends", 200), arg("--every", 40)
    table_dir = Path(data_dir) / "warehouse" / "wildedge" / "raw_events"
    admin = token(binary, data_dir, None, "admin")
    server, addr, _ = serve(binary, data_dir, "--compact-interval-secs", "0", "--flush-interval-ms", "0")
    try:
        conn = flightsql.connect(f"grpc://{addr}", db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {admin}"}, autocommit=True)
        with conn.cursor() as cur:
            cur.execute("SELECT project_id, count(*) FROM wildedge.raw_events GROUP BY 1 ORDER BY 2 DESC, 1")
            projects = [p for p, _ in cur.fetchall()]
        print(f"{len(projects)} projects; {appends} appends of 1,000 rows\n")
        print("| appends | data MB | metadata MB | metadata / data | json / lists / manifests MB | metadata files |")
        print("|---:|---:|---:|---:|---:|---:|")
        print(f"| 0 {state(table_dir)}")
        done = 0
        while done < appends:
            n = min(every, appends - done)
            append(conn, projects, n, seed=done)
            done += n
            print(f"| {done} {state(table_dir)}", flush=True)
        conn.close()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
