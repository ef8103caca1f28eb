"""Real clients against the real server: ADBC Flight SQL (DBAPI), PyArrow
Flight, PyIceberg on the same SQLite catalog, and DuckDB as an independent
engine recomputing the seed query."""

import os
import subprocess
import time

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import polars as pl
import pyarrow.flight as flight
import pytest

from conftest import BIN, DATA, SEED_QUERY, Server, connect, flush


def duckdb_seed(events: pa.Table, outcomes: pa.Table) -> pa.Table:
    """The unchanged seed query, run by DuckDB over the client-side data."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("ev", events)
    con.register("oc", outcomes)
    con.execute("CREATE SCHEMA wildedge; CREATE SCHEMA warehouse")
    con.execute("CREATE VIEW wildedge.raw_events AS SELECT *, CAST(event_timestamp AS DATE) AS event_day FROM ev")
    con.execute("CREATE VIEW warehouse.user_outcomes AS SELECT * FROM oc")
    return con.sql(SEED_QUERY).to_arrow_table()


def rows(table: pa.Table, tolerant: bool = False):
    """Seed-query rows as tuples; `tolerant` wraps floats in approx (engines
    sum in different orders, and DataFusion quantises percentile_cont's
    interpolation weight to 1e-6)."""

    def num(v, rel):
        return pytest.approx(v, rel=rel) if tolerant else v

    return [
        (
            r["day"].date().isoformat(),
            r["model_name"],
            num(r["avg_confidence"], 1e-9),
            num(r["p95_latency_ms"], 1e-5),
            num(r["conversion_rate"], 1e-9),
            r["inference_count"],
        )
        for r in table.to_pylist()
    ]


def test_adbc_seed_query_matches_duckdb(loaded):
    for project, (events, outcomes) in DATA.items():
        with connect(loaded, project) as conn, conn.cursor() as cur:
            cur.execute(SEED_QUERY)
            got = cur.fetch_arrow_table()
        want = duckdb_seed(events, outcomes)
        assert got.num_rows > 0
        assert rows(got) == rows(want, tolerant=True), project


def test_adbc_tenants_are_isolated(loaded):
    with connect(loaded, "globex") as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT project_id FROM wildedge.raw_events")
        assert cur.fetchall() == [("globex",)]
        cur.execute("SELECT count(*) FROM wildedge.raw_events WHERE project_id = 'acme' OR true")
        assert cur.fetchone()[0] == DATA["globex"][0].num_rows
        cur.execute("SELECT count(*) FROM warehouse.user_outcomes WHERE session_id LIKE 'acme-%'")
        assert cur.fetchone()[0] == 0


def test_adbc_basic_auth_handshake(loaded):
    conn = flightsql.connect(
        loaded.uri,
        db_kwargs={"username": "acme", "password": loaded.tokens["acme"]},
        autocommit=True,
    )
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM wildedge.raw_events")
        assert cur.fetchone()[0] == DATA["acme"][0].num_rows


def test_adbc_bad_token_and_bad_sql(loaded):
    bad = flightsql.connect(
        loaded.uri,
        db_kwargs={"adbc.flight.sql.authorization_header": "Bearer definitely-not-a-token"},
        autocommit=True,
    )
    with pytest.raises(Exception, match="(?i)unauthenticated|invalid token"):
        with bad.cursor() as cur:
            cur.execute("SELECT 1")
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        with pytest.raises(Exception, match="(?i)not allowed|permission"):
            cur.execute("DROP TABLE wildedge.raw_events")


def statement_query_command(sql: str) -> bytes:
    """Flight SQL CommandStatementQuery wrapped in protobuf Any, by hand."""

    def field(num: int, payload: bytes) -> bytes:
        n, length = len(payload), b""
        while True:
            b = n & 0x7F
            n >>= 7
            length += bytes([b | (0x80 if n else 0)])
            if not n:
                break
        return bytes([(num << 3) | 2]) + length + payload

    inner = field(1, sql.encode())
    return field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + field(2, inner)


def test_pyarrow_flight_raw_doget_and_doput(loaded):
    client = flight.FlightClient(f"grpc+tcp://{loaded.addr}")
    header = client.authenticate_basic_token("acme", loaded.tokens["acme"])
    options = flight.FlightCallOptions(headers=[header])
    descriptor = flight.FlightDescriptor.for_command(statement_query_command("SELECT count(*) AS n FROM wildedge.raw_events"))
    info = client.get_flight_info(descriptor, options)
    table = client.do_get(info.endpoints[0].ticket, options).read_all()
    assert table.schema == info.schema
    before = table.column("n")[0].as_py()
    assert before >= DATA["acme"][0].num_rows

    extra = pa.table(
        {
            "event_id": ["raw-1", "raw-2"],
            "event_type": ["feedback", "feedback"],
            "event_timestamp": pa.array([1_780_000_000_000_000, 1_780_000_000_000_001], pa.timestamp("us", tz="UTC")),
        }
    )
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("raw_events"), extra.schema, options)
    writer.write_table(extra)
    writer.done_writing()
    reader.read()
    writer.close()
    table = client.do_get(client.get_flight_info(descriptor, options).endpoints[0].ticket, options).read_all()
    assert table.column("n")[0].as_py() == before + 2

    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token("acme", "wrong-token-0123456789")


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_pyarrow_flight_doput_with_compressed_ipc(loaded, codec):
    """Clients may compress IPC bodies to save bandwidth; the server decodes both codecs Arrow defines."""
    client = flight.FlightClient(f"grpc+tcp://{loaded.addr}")
    header = (b"authorization", f"Bearer {loaded.tokens['acme']}".encode())
    compressed = flight.FlightCallOptions(headers=[header], write_options=pa.ipc.IpcWriteOptions(compression=codec))
    n = 1000
    batch = pa.table(
        {
            "event_id": [f"ipc-{codec}-{i}" for i in range(n)],
            "event_type": ["inference"] * n,
            "event_timestamp": pa.array([1_780_000_000_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "confidence": pa.array([i / n for i in range(n)], pa.float64()),
        }
    )
    writer, reader = client.do_put(flight.FlightDescriptor.for_path("raw_events"), batch.schema, compressed)
    writer.write_table(batch)
    writer.done_writing()
    reader.read()
    writer.close()
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*), sum(confidence) FROM wildedge.raw_events WHERE event_id LIKE 'ipc-{codec}-%'")
        count, total = cur.fetchone()
    assert count == n
    assert total == pytest.approx(sum(i / n for i in range(n)))


def open_pyiceberg(server):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        "raindrop",
        uri=f"sqlite:///{server.data_dir}/catalog.db",
        warehouse=f"file://{server.data_dir}/warehouse",
    )


def test_pyiceberg_reads_what_raindrop_wrote(loaded):
    catalog = open_pyiceberg(loaded)
    table = catalog.load_table("wildedge.raw_events")
    spec = table.spec()
    assert [f.name for f in spec.fields] == ["project_id", "event_day"]
    acme = table.scan(row_filter="project_id == 'acme'").to_arrow()
    events = DATA["acme"][0]
    mine = acme.filter(pc.starts_with(acme.column("event_id"), "acme-"))
    assert mine.num_rows == events.num_rows
    assert sorted(mine.column("event_id").to_pylist()) == sorted(events.column("event_id").to_pylist())
    assert pc.sum(mine.column("confidence")).as_py() == pytest.approx(pc.sum(events.column("confidence")).as_py())
    assert set(acme.column("project_id").to_pylist()) == {"acme"}


def test_polars_scan_iceberg_with_a_relative_data_dir(tmp_path):
    """Started with a relative `--data-dir` (`./../..`-style), Raindrop writes
    plain absolute locations into the table metadata: Polars' Iceberg
    reader, which refuses `.` and `..` path segments, reads every row."""
    from pyiceberg.catalog.sql import SqlCatalog

    data_dir = tmp_path / "data"
    relative = "./" + os.path.relpath(data_dir)
    assert "/../" in relative or relative.startswith("./..")
    server = Server(relative)
    try:
        events = DATA["acme"][0]
        with connect(server, "acme") as conn, conn.cursor() as cur:
            assert cur.adbc_ingest("raw_events", events, mode="append") == events.num_rows
        flush(server)
        catalog = SqlCatalog(
            "raindrop",
            uri=f"sqlite:///{data_dir.resolve()}/catalog.db",
            warehouse=f"file://{data_dir.resolve()}/warehouse",
        )
        table = catalog.load_table("wildedge.raw_events")
        location = table.metadata.location
        assert location == f"file://{data_dir.resolve()}/warehouse/wildedge/raw_events"
        got = (
            pl.scan_iceberg(table)
            .filter(pl.col("project_id") == "acme")
            .select("event_id", "confidence")
            .collect()
        )
    finally:
        server.stop()
    assert sorted(got["event_id"].to_list()) == sorted(events.column("event_id").to_pylist())
    assert got["confidence"].sum() == pytest.approx(pc.sum(events.column("confidence")).as_py())


def test_raindrop_reads_what_pyiceberg_wrote(loaded):
    catalog = open_pyiceberg(loaded)
    catalog.create_namespace_if_not_exists(("tenants", "acme", "labels"))
    data = pa.table({"session_id": ["acme-s1", "acme-s2", "acme-s3"], "label": pa.array([1, 0, 1], pa.int64())})
    table = catalog.create_table_if_not_exists("tenants.acme.labels.gold", schema=data.schema)
    table.append(data)
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        cur.execute("SELECT sum(label) AS s, count(*) AS n FROM labels.gold")
        assert cur.fetchone() == (2, 3)
    with connect(loaded, "globex") as conn, conn.cursor() as cur:
        with pytest.raises(Exception, match="(?i)not found"):
            cur.execute("SELECT * FROM labels.gold")


def test_duckdb_over_raindrop_parquet_matches_raindrop(loaded):
    """DuckDB reads Raindrop's Parquet files directly and recomputes the seed query."""
    files = str(loaded.data_dir / "warehouse/wildedge/raw_events/data/project_id=acme/**/*.parquet")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA wildedge; CREATE SCHEMA warehouse")
    con.execute(
        f"CREATE VIEW wildedge.raw_events AS SELECT *, CAST(event_timestamp AS DATE) AS event_day "
        f"FROM read_parquet('{files}', hive_partitioning = false)"
    )
    con.register("oc", DATA["acme"][1])
    con.execute("CREATE VIEW warehouse.user_outcomes AS SELECT * FROM oc")
    want = con.sql(SEED_QUERY).to_arrow_table()
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        cur.execute(SEED_QUERY)
        got = cur.fetch_arrow_table()
    assert rows(got) == rows(want, tolerant=True)


def test_raindrop_follows_pyiceberg_schema_evolution(loaded):
    """Columns added or renamed by another engine: Raindrop reads old files by
    field id (renames need iceberg's reader, which EXPLAIN shows), new columns
    are null in old files."""
    from pyiceberg.types import StringType

    catalog = open_pyiceberg(loaded)
    catalog.create_namespace_if_not_exists(("tenants", "acme", "labels"))
    first = pa.table({"session_id": ["acme-s1", "acme-s2"], "label": pa.array([1, 1], pa.int64())})
    table = catalog.create_table("tenants.acme.labels.evolving", schema=first.schema)
    table.append(first)
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        cur.execute("EXPLAIN SELECT sum(label) FROM labels.evolving")
        plan = "\n".join(str(r) for r in cur.fetchall())
        assert "IcebergScanExec" in plan and "reader=iceberg" not in plan, plan

    with table.update_schema() as update:
        update.rename_column("label", "gold_label")
        update.add_column("note", StringType())
    table = catalog.load_table("tenants.acme.labels.evolving")
    table.append(
        pa.table(
            {
                "session_id": ["acme-s3"],
                "gold_label": pa.array([5], pa.int64()),
                "note": ["relabelled"],
            }
        )
    )
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        cur.execute("SELECT sum(gold_label) AS s, count(*) AS n, count(note) AS notes FROM labels.evolving")
        assert cur.fetchone() == (7, 3, 1)
        cur.execute("EXPLAIN SELECT sum(gold_label) FROM labels.evolving")
        plan = "\n".join(str(r) for r in cur.fetchall())
        assert "reader=iceberg (renamed columns)" in plan, plan


def test_compaction_is_invisible_to_readers(tmp_path):
    """`raindrop compact` on a live server's data dir rewrites each
    partition's small files as one (a `replace` snapshot). PyIceberg, DuckDB
    and Raindrop read exactly the rows they read before."""
    # One commit per DoPut, so the days have several files to compact.
    srv = Server(tmp_path, extra_args=["--flush-interval-ms", "0", "--compact-interval-secs", "0"])
    try:
        events, _ = DATA["acme"]
        query = "SELECT count(*), count(DISTINCT event_id), sum(duration_ms) FROM wildedge.raw_events"
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            step = events.num_rows // 4 + 1
            for start in range(0, events.num_rows, step):
                cur.adbc_ingest("raw_events", events.slice(start, step), mode="append")
            cur.execute(query)
            before = cur.fetchone()
        assert before[0] == events.num_rows

        table = open_pyiceberg(srv).load_table("wildedge.raw_events")
        files_before = table.inspect.files().num_rows
        partitions = table.inspect.partitions().num_rows
        assert files_before > partitions  # several DoPuts hit the same days

        done = subprocess.run([BIN, "compact", "--data-dir", str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"{files_before} files" in done.stderr, done.stderr

        table = open_pyiceberg(srv).load_table("wildedge.raw_events")
        assert table.current_snapshot().summary.operation.value == "replace"
        files = table.inspect.files()
        assert files.num_rows == partitions
        rows = table.scan().to_arrow()
        assert rows.num_rows == events.num_rows
        assert sorted(rows["event_id"].to_pylist()) == sorted(events["event_id"].to_pylist())
        paths = files["file_path"].to_pylist()
        duck = duckdb.sql(f"SELECT count(*) FROM read_parquet({[p.removeprefix('file://') for p in paths]})").fetchall()[0]
        assert duck[0] == events.num_rows

        with connect(srv, "acme") as conn, conn.cursor() as cur:
            cur.execute(query)
            after = cur.fetchone()
        assert after[:2] == before[:2] and abs(after[2] - before[2]) < 1e-6 * abs(before[2])
    finally:
        srv.stop()


def test_large_batches_need_the_raised_message_limit(tmp_path):
    """The ADBC driver refuses to send a message over 16 MiB; with
    `with_max_msg_size` raised to the server's 64 MiB, the same batch is
    accepted whole (docs/clients.md, "Batch size")."""
    n = 250_000
    now = int(time.time() * 1_000_000)
    big = pa.table(
        {
            "event_id": [f"big-{i:08d}-{'x' * 24}" for i in range(n)],
            "event_type": ["inference"] * n,
            "event_timestamp": pa.array([now - i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "model_name": [f"model-{i % 7}" for i in range(n)],
            "session_id": [f"session-{i // 4:08d}" for i in range(n)],
            "confidence": [0.5] * n,
            "duration_ms": [12.5] * n,
        }
    ).combine_chunks()
    assert big.nbytes > 16 << 20
    srv = Server(tmp_path)
    try:
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            with pytest.raises(Exception, match=r"(?i)resource.?exhausted|larger than max"):
                cur.adbc_ingest("raw_events", big, mode="append")
        raised = flightsql.connect(
            srv.uri,
            db_kwargs={
                "adbc.flight.sql.authorization_header": f"Bearer {srv.tokens['acme']}",
                "adbc.flight.sql.client_option.with_max_msg_size": str(64 << 20),
            },
            autocommit=True,
        )
        with raised, raised.cursor() as cur:
            assert cur.adbc_ingest("raw_events", big, mode="append") == n
            cur.execute("SELECT count(*), count(DISTINCT event_id) FROM wildedge.raw_events")
            assert cur.fetchone() == (n, n)
    finally:
        srv.stop()
