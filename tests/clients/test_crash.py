"""After kill -9 during ingest, nothing acknowledged is lost: the restarted
server serves every acknowledged batch (replayed from its write-ahead log),
and once it commits them PyIceberg reads exactly the rows Raindrop served."""

import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

from conftest import Server


def batch(tag: str, n: int = 200) -> pa.Table:
    return pa.table(
        {
            "event_id": [f"{tag}-{i}" for i in range(n)],
            "event_type": ["inference"] * n,
            "event_timestamp": pa.array([1_780_000_000_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")),
        }
    )


def test_pyiceberg_reads_a_crashed_table(tmp_path):
    data = tmp_path / "data"
    srv = Server(data)
    acked, stop = [], threading.Event()

    def producer():
        conn = flightsql.connect(
            srv.uri,
            db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {srv.tokens['acme']}"},
            autocommit=True,
        )
        k = 0
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.adbc_ingest("raw_events", batch(f"b{k}"), mode="append")
                    acked.append(f"b{k}")
                    k += 1
        except Exception:
            pass  # the server was killed under us

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(1.5)
    srv.proc.kill()  # SIGKILL mid-ingest
    srv.proc.wait()
    stop.set()
    t.join(timeout=30)
    assert len(acked) > 3

    # Raindrop, restarted on the same directory, replays its write-ahead
    # log: it serves every acknowledged batch at once; stopping it commits
    # them to the table (SIGTERM flushes).
    srv2 = Server(data)
    try:
        conn = flightsql.connect(
            srv2.uri,
            db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {srv2.tokens['acme']}"},
            autocommit=True,
        )
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM wildedge.raw_events")
            served = cur.fetchone()[0]
    finally:
        srv2.stop()

    catalog = SqlCatalog("raindrop", uri=f"sqlite:///{data}/catalog.db", warehouse=f"file://{data}/warehouse")
    table = catalog.load_table("wildedge.raw_events").scan().to_arrow()
    ids = table.column("event_id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate rows"
    batches = {}
    for i in ids:
        b = i.split("-")[0]
        batches[b] = batches.get(b, 0) + 1
    assert all(n == 200 for n in batches.values()), "a batch is partially visible"
    assert set(acked) <= set(batches), "an acknowledged batch is missing"
    assert served == len(ids), "Raindrop served other rows than the table holds"
