"""Erasure (`DELETE … WHERE` over ADBC), project retention, replacing a
tenant table, and project deletion (the `raindrop project` CLI on a live server's data dir), as other
engines see them: PyIceberg (on the same SQLite catalog) and DuckDB's own
Iceberg reader read exactly the rows Raindrop answers, and another tenant's
rows are untouched."""

import datetime as dt
import json
import os
import subprocess
import uuid

import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from conftest import BIN, DATA, Server, connect, flush


def project_cli(server, *args):
    return subprocess.run(
        [BIN, "project", *args, "--data-dir", str(server.data_dir)], capture_output=True, text=True
    )


def catalog(server):
    return SqlCatalog(
        "raindrop",
        uri=f"sqlite:///{server.data_dir}/catalog.db",
        warehouse=f"file://{server.data_dir}/warehouse",
    )


def raindrop_ids(server, who):
    with connect(server, who) as conn, conn.cursor() as cur:
        cur.execute("SELECT event_id FROM wildedge.raw_events")
        return sorted(r[0] for r in cur.fetchall())


def pyiceberg_ids(server, project):
    table = catalog(server).load_table("wildedge.raw_events")
    got = table.scan(row_filter=f"project_id == '{project}'", selected_fields=("event_id",)).to_arrow()
    return sorted(got.column("event_id").to_pylist())


def duckdb_rows(table, sql, tmp_path):
    """`sql` over a view `raw_events` of `table` (a PyIceberg table, at the
    metadata the catalog points to), run by DuckDB's Iceberg reader."""
    duckdb_python = os.environ.get("RAINDROP_DUCKDB_PYTHON")
    assert duckdb_python, "RAINDROP_DUCKDB_PYTHON unset: run through scripts/test.sh"
    out = tmp_path / f"duckdb-{uuid.uuid4().hex}.jsonl"
    subprocess.run(
        [
            duckdb_python, os.path.join(os.path.dirname(__file__), "duckdb_iceberg.py"),
            "--metadata", table.metadata_location,
            "--sql", sql,
            "--out", str(out),
        ],
        check=True,
    )  # fmt: skip
    return [json.loads(line) for line in out.read_text().splitlines()]


def duckdb_ids(server, tmp_path):
    """Event ids per project in raw_events, as DuckDB reads them."""
    table = catalog(server).load_table("wildedge.raw_events")
    ids = {}
    for row in duckdb_rows(table, "SELECT project_id AS p, event_id AS id FROM raw_events", tmp_path):
        ids.setdefault(row["p"], []).append(row["id"])
    return {p: sorted(v) for p, v in ids.items()}


def test_erasure_retention_and_project_deletion_as_every_reader_sees_them(tmp_path):
    srv = Server(tmp_path, extra_args=["--compact-interval-secs", "0"])
    try:
        for who in ("acme", "globex"):
            events, outcomes = DATA[who]
            with connect(srv, who) as conn, conn.cursor() as cur:
                cur.adbc_ingest("raw_events", events, mode="append")
                cur.adbc_ingest("user_outcomes", outcomes, mode="create", db_schema_name="warehouse")
            flush(srv, who)
        acme_events = DATA["acme"][0]
        # Erasure: one session's rows, nothing else.
        erased = "acme-s3"
        assert erased in acme_events.column("session_id").to_pylist()
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM wildedge.raw_events WHERE session_id = '{erased}'")
            cur.fetchall()
        acme_events = acme_events.filter(pc.not_equal(acme_events.column("session_id"), erased))
        acme_all = sorted(acme_events.column("event_id").to_pylist())
        globex_all = sorted(DATA["globex"][0].column("event_id").to_pylist())
        days = pc.cast(acme_events.column("event_timestamp"), "date32")

        def kept_on(today):
            """acme's rows that 5 days of retention keep when run on `today`."""
            kept = acme_events.filter(pc.greater_equal(days, today - dt.timedelta(days=5)))
            return sorted(kept.column("event_id").to_pylist())

        def utc_today():
            return dt.datetime.now(dt.timezone.utc).date()

        acme_kept = kept_on(utc_today())
        assert 0 < len(acme_kept) < acme_events.num_rows, "fixture spans 10 days"
        table = catalog(srv).load_table("wildedge.raw_events")
        assert table.current_snapshot().summary.operation.value == "overwrite"
        assert raindrop_ids(srv, "acme") == acme_all
        assert pyiceberg_ids(srv, "acme") == acme_all
        assert pyiceberg_ids(srv, "globex") == globex_all
        assert duckdb_ids(srv, tmp_path) == {"acme": acme_all, "globex": globex_all}

        # Bad input changes nothing.
        bad = project_cli(srv, "set-retention", "acme", "--days", "0")
        assert bad.returncode != 0 and "between 1 and" in bad.stderr, bad.stderr
        bad = project_cli(srv, "set-retention", "nosuch", "--days", "5")
        assert bad.returncode != 0 and "not found" in bad.stderr, bad.stderr
        bad = project_cli(srv, "delete", "acme")
        assert bad.returncode != 0 and "--yes" in bad.stderr, bad.stderr
        assert raindrop_ids(srv, "acme") == acme_all

        done = project_cli(srv, "set-retention", "acme", "--days", "5")
        assert done.returncode == 0, done.stderr
        before = utc_today()
        done = project_cli(srv, "enforce-retention")
        assert done.returncode == 0, done.stderr
        # Across midnight UTC the CLI may have used either date.
        possible = [kept_on(d) for d in sorted({before, utc_today()})]
        acme_kept = next((k for k in possible if raindrop_ids(srv, "acme") == k), possible[0])
        dropped = acme_events.num_rows - len(acme_kept)
        assert f"acme: raw_events" in done.stdout and f" {dropped} rows" in done.stdout, done.stdout
        listed = project_cli(srv, "list")
        assert "5 days" in listed.stdout, listed.stdout

        table = catalog(srv).load_table("wildedge.raw_events")
        assert table.current_snapshot().summary.operation.value == "delete"
        assert raindrop_ids(srv, "acme") == acme_kept
        assert pyiceberg_ids(srv, "acme") == acme_kept
        assert pyiceberg_ids(srv, "globex") == globex_all
        assert duckdb_ids(srv, tmp_path) == {"acme": acme_kept, "globex": globex_all}

        # Replacing a table of its own: one commit, read by every engine.
        converted = sorted(
            sid for sid, c in zip(*(DATA["acme"][1].column(n).to_pylist() for n in ("session_id", "converted"))) if c
        )
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            cur.execute(
                "CREATE OR REPLACE TABLE warehouse.user_outcomes AS "
                "SELECT session_id FROM warehouse.user_outcomes WHERE converted"
            )
            cur.fetchall()
            cur.execute("SELECT session_id FROM warehouse.user_outcomes")
            assert sorted(r[0] for r in cur.fetchall()) == converted
        outcomes = catalog(srv).load_table("tenants.acme.warehouse.user_outcomes")
        assert [f.name for f in outcomes.schema().fields] == ["session_id"]
        assert sorted(outcomes.scan().to_arrow().column("session_id").to_pylist()) == converted
        got = duckdb_rows(outcomes, "SELECT session_id FROM raw_events", tmp_path)
        assert sorted(r["session_id"] for r in got) == converted

        done = project_cli(srv, "delete", "acme", "--yes")
        assert done.returncode == 0, done.stderr
        assert "table warehouse.user_outcomes dropped" in done.stdout, done.stdout
        with pytest.raises(Exception, match="(?i)token"):
            raindrop_ids(srv, "acme")
        assert raindrop_ids(srv, "globex") == globex_all
        assert pyiceberg_ids(srv, "acme") == []
        assert duckdb_ids(srv, tmp_path) == {"globex": globex_all}
        cat = catalog(srv)
        assert not cat.table_exists("tenants.acme.warehouse.user_outcomes")
        assert cat.table_exists("tenants.globex.warehouse.user_outcomes")
        with connect(srv, "globex") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM warehouse.user_outcomes")
            assert cur.fetchone()[0] == DATA["globex"][1].num_rows
    finally:
        srv.stop()


def test_schema_evolution_as_every_reader_sees_it(tmp_path):
    """An admin adds a column and widens another over ADBC; files written
    before keep their schema. Raindrop, PyIceberg, DuckDB's Iceberg reader
    and Polars read the old rows with the new column null and the widened
    one as 64-bit, filter on the widened column across old and new files,
    and agree on every answer; clients sending the old schema keep
    ingesting."""
    import polars as pl
    import pyarrow as pa

    srv = Server(tmp_path, extra_args=["--compact-interval-secs", "0"])
    events = DATA["acme"][0]
    n_old, n_new = 200, 100
    old = events.slice(0, n_old).append_column("input_tokens", pa.array(range(n_old), pa.int32()))
    new = (
        events.slice(n_old, n_new)
        .append_column("input_tokens", pa.array([5_000_000_000 + i for i in range(n_new)], pa.int64()))
        .append_column("gpu_temp", pa.array([40.0 + i for i in range(n_new)], pa.float64()))
    )
    old_again = events.slice(n_old + n_new, 50).append_column("input_tokens", pa.array(range(50), pa.int32()))
    try:
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            cur.adbc_ingest("raw_events", old, mode="append")
        flush(srv)
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            with pytest.raises(Exception, match="(?i)admin"):
                cur.execute("ALTER TABLE wildedge.raw_events ADD COLUMN gpu_temp DOUBLE")
        with connect(srv, "admin") as conn, conn.cursor() as cur:
            with pytest.raises(Exception, match="narrows"):
                cur.execute("ALTER TABLE wildedge.raw_events ALTER COLUMN confidence TYPE REAL")
            cur.execute(
                "ALTER TABLE wildedge.raw_events ADD COLUMN gpu_temp DOUBLE COMMENT 'GPU temperature, °C', "
                "ALTER COLUMN input_tokens TYPE BIGINT"
            )
            cur.fetchall()
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            cur.adbc_ingest("raw_events", new, mode="append")
            cur.adbc_ingest("raw_events", old_again, mode="append")
        flush(srv)

        nulls = n_old + 50
        big = (n_old - 150) + n_new  # old rows 150..199 and every new row; old_again stays below 150
        total = sum(range(n_old)) + sum(5_000_000_000 + i for i in range(n_new)) + sum(range(50))
        answer = (
            "SELECT count(*) FILTER (WHERE gpu_temp IS NULL) AS nulls, "
            "count(*) FILTER (WHERE input_tokens >= 150) AS big, sum(input_tokens) AS total, "
            "count(*) AS n FROM raw_events"
        )
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            cur.execute(answer.replace("FROM raw_events", "FROM wildedge.raw_events"))
            assert cur.fetchone() == (nulls, big, total, n_old + n_new + 50)
            cur.execute("SELECT count(*) FROM wildedge.raw_events WHERE input_tokens >= 150")
            assert cur.fetchone()[0] == big

        table = catalog(srv).load_table("wildedge.raw_events")
        gpu = table.schema().find_field("gpu_temp")
        assert gpu.doc == "GPU temperature, °C" and not gpu.required
        assert str(table.schema().find_field("input_tokens").field_type) == "long"
        got = table.scan().to_arrow()
        assert got.schema.field("input_tokens").type == pa.int64()
        assert got.column("gpu_temp").null_count == nulls
        assert pc.sum(got.column("input_tokens")).as_py() == total
        # PyIceberg prunes with the filter: old files' 4-byte bounds.
        assert table.scan(row_filter="input_tokens >= 150").to_arrow().num_rows == big

        typed = answer.replace(" FROM raw_events", ", typeof(input_tokens) AS t FROM raw_events GROUP BY t")
        rows = duckdb_rows(table, typed, tmp_path)
        assert rows == [{"nulls": nulls, "big": big, "total": total, "n": n_old + n_new + 50, "t": "BIGINT"}]

        frame = pl.scan_iceberg(table).collect()
        assert frame.schema["input_tokens"] == pl.Int64
        assert frame["gpu_temp"].null_count() == nulls
        assert frame["input_tokens"].sum() == total
        assert pl.scan_iceberg(table).filter(pl.col("input_tokens") >= 150).collect().height == big
    finally:
        srv.stop()
