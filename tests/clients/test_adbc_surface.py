"""The ADBC Flight SQL driver's whole surface: prepared statements with and
without parameters, executemany, metadata (get_info, get_objects at every
depth, table schema, table types) and every ingest mode."""

import re
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import DATA, connect


def test_execute_with_and_without_parameters(loaded):
    events = DATA["acme"][0]
    want = pc.sum(pc.equal(events.column("model_name"), "recommender")).as_py()
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM wildedge.raw_events WHERE model_name = ?", ("recommender",))
        assert cur.fetchone()[0] == want
        cur.execute("SELECT count(*) AS n FROM wildedge.raw_events WHERE model_name = $1", ("fraud-detector",))
        assert cur.fetchone()[0] == pc.sum(pc.equal(events.column("model_name"), "fraud-detector")).as_py()
        cur.execute("SELECT model_name, count(*) AS n FROM wildedge.raw_events WHERE model_name IS NOT NULL GROUP BY 1 ORDER BY 1")
        table = cur.fetch_arrow_table()
        assert table.column("model_name").to_pylist() == sorted(set(events.column("model_name").to_pylist()))


def test_updates_and_executemany(loaded):
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE scratch.kv (k VARCHAR, v BIGINT)")
        cur.executemany("INSERT INTO scratch.kv VALUES (?, ?)", [("a", 1), ("b", 2), ("c", 3)])
        cur.execute("SELECT sum(v) AS s, count(*) AS n FROM scratch.kv")
        assert cur.fetchone() == (6, 3)
        cur.execute(
            "CREATE TABLE scratch.conv AS SELECT session_id FROM warehouse.user_outcomes WHERE converted"
        )
        cur.execute("SELECT count(*) FROM scratch.conv")
        assert cur.fetchone()[0] == pc.sum(DATA["acme"][1].column("converted")).as_py()
        cur.execute("DROP TABLE scratch.conv")
        with pytest.raises(Exception, match="(?i)not found"):
            cur.execute("SELECT * FROM scratch.conv")
        with pytest.raises(Exception, match="(?i)raw_events cannot be modified|permission"):
            cur.execute("INSERT INTO wildedge.raw_events (event_id) VALUES ('x')")


def test_get_info_objects_schema_and_types(loaded):
    with connect(loaded, "acme") as conn:
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Raindrop"
        assert info["vendor_version"]
        assert info["driver_name"]

        catalogs = conn.adbc_get_objects(depth="catalogs").read_all().to_pylist()
        assert [c["catalog_name"] for c in catalogs] == ["raindrop"]

        schemas = conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
        names = {s["db_schema_name"] for s in schemas[0]["catalog_db_schemas"]}
        assert {"wildedge", "warehouse", "information_schema"} <= names
        assert not any("globex" in n or "tenants" in n for n in names)

        tables = conn.adbc_get_objects(depth="tables", db_schema_filter="wild%").read_all().to_pylist()
        listed = [t["table_name"] for s in tables[0]["catalog_db_schemas"] for t in s["db_schema_tables"]]
        assert listed == ["raw_events"]

        for depth in ["columns", "all"]:
            cols = conn.adbc_get_objects(depth=depth, table_name_filter="raw_events").read_all().to_pylist()
            columns = [
                c["column_name"]
                for s in cols[0]["catalog_db_schemas"]
                for t in s["db_schema_tables"]
                for c in t["table_columns"]
            ]
            assert columns[:4] == ["project_id", "event_id", "event_type", "event_timestamp"], depth
            assert "event_day" in columns
        other = conn.adbc_get_objects(depth="all", catalog_filter="nope").read_all()
        assert other.num_rows == 0

        schema = conn.adbc_get_table_schema("raw_events", db_schema_filter="wildedge")
        assert schema.field("event_timestamp").type == pa.timestamp("us", tz="+00:00")
        assert schema.field("event_day").type == pa.date32()
        assert set(conn.adbc_get_table_types()) == {"TABLE", "SYSTEM TABLE"}


def test_ingest_modes(loaded):
    def data(ids):
        return pa.table({"id": pa.array(ids, pa.int64()), "label": [f"l{i}" for i in ids]})

    with connect(loaded, "globex") as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("modes", data([1, 2]), mode="create", db_schema_name="ml") == 2
        with pytest.raises(Exception, match="(?i)exists"):
            cur.adbc_ingest("modes", data([3]), mode="create", db_schema_name="ml")
        assert cur.adbc_ingest("modes", data([3]), mode="append", db_schema_name="ml") == 1
        assert cur.adbc_ingest("modes", data([4]), mode="create_append", db_schema_name="ml") == 1
        cur.execute("SELECT sum(id) FROM ml.modes")
        assert cur.fetchone()[0] == 10
        assert cur.adbc_ingest("modes", data([7, 8]), mode="replace", db_schema_name="ml") == 2
        cur.execute("SELECT sum(id) FROM ml.modes")
        assert cur.fetchone()[0] == 15
        with pytest.raises(Exception, match="(?i)does not exist|not found"):
            cur.adbc_ingest("missing", data([1]), mode="append", db_schema_name="ml")
        with pytest.raises(Exception, match="(?i)temporary"):
            cur.adbc_ingest("tmp", data([1]), mode="create", temporary=True)
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        with pytest.raises(Exception, match="(?i)not found"):
            cur.execute("SELECT * FROM ml.modes")


def test_rejected_requests_are_logged_with_rpc_and_token_id(loaded):
    """An operator sees what clients fail on: the RPC, the token id and the
    reason, at warn level, and never the token itself."""
    with connect(loaded, "acme") as conn, conn.cursor() as cur:
        with pytest.raises(Exception, match="(?i)not found"):
            cur.execute("SELECT * FROM scratch.no_such_table_for_the_log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in list(loaded.log) if "no_such_table_for_the_log" in line]
        if lines:
            break
        time.sleep(0.05)
    assert lines, "no log line for the rejected query"
    line = lines[0]
    assert "WARN" in line and "request rejected" in line, line
    # The driver prepares every statement: the RPC is DoAction.
    assert re.search(r"rpc\{rpc=(DoAction|GetFlightInfo) token_id=\w+\}", line), line
    assert not any(token in "".join(loaded.log) for token in loaded.tokens.values())
