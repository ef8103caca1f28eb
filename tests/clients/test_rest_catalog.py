"""Raindrop's Iceberg REST catalog, through the clients customers point at
it: PyIceberg's RestCatalog and DuckDB's ATTACH (TYPE iceberg). A tenant's
engine sees `wildedge.raw_events` holding exactly its rows, and its own
tables, and nothing that names another tenant: checked in the answers, in
every derived metadata file, and by moving the other tenant's data away.
"""

import base64
import json
import os
import shutil
import subprocess
import urllib.parse
import uuid

import pyarrow as pa
import pytest
from pyiceberg.catalog import load_catalog

from conftest import BIN, SEED_QUERY, Server, call, connect, load, make_token

SEP = "%1F"  # namespace levels in a REST path


@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("rest"), extra_args=["--http-addr", "127.0.0.1:0"])
    load(srv)
    # A schema only globex has: its name must not be confirmed to acme.
    with connect(srv, "globex") as conn, conn.cursor() as cur:
        cur.adbc_ingest("churn", pa.table({"session_id": ["s1"], "churned": [True]}), mode="create", db_schema_name="analytics")
    yield srv
    srv.stop()


def rest_catalog(srv, who):
    return load_catalog(who, **{"type": "rest", "uri": srv.base, "credential": srv.tokens[who]})


def flight_rows(srv, who, sql):
    with connect(srv, who) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def tenant_metadata_dir(srv, project):
    [table_dir] = [p for p in srv.data_dir.rglob("raw_events") if (p / "metadata").is_dir()]
    return table_dir / "tenant-metadata" / f"project_id={project}"


def test_pyiceberg_sees_exactly_its_rows_and_tables(rest):
    for me, other in [("acme", "globex"), ("globex", "acme")]:
        cat = rest_catalog(rest, me)
        names = sorted(ns for ns in cat.list_namespaces())
        want = [("warehouse",), ("wildedge",)] + ([("analytics",)] if me == "globex" else [])
        assert names == sorted(want)
        assert cat.list_tables("wildedge") == [("wildedge", "raw_events")]
        assert cat.list_tables("warehouse") == [("warehouse", "user_outcomes")]
        assert cat.table_exists("wildedge.raw_events") and cat.namespace_exists("warehouse")
        assert cat.table_exists("analytics.churn") == (me == "globex")

        table = cat.load_table("wildedge.raw_events")
        got = table.scan().to_arrow()
        flight = flight_rows(rest, me, "SELECT event_id FROM wildedge.raw_events")
        assert got.num_rows == flight.num_rows > 0
        assert set(got.column("project_id").to_pylist()) == {me}
        assert sorted(got.column("event_id").to_pylist()) == sorted(flight.column("event_id").to_pylist())

        # Every manifest list, manifest and data file the engine can reach
        # is the caller's: the derived metadata names nothing else.
        io = table.io
        assert f"/tenant-metadata/project_id={me}/" in table.metadata_location
        for snap in table.metadata.snapshots:
            assert f"tenant-metadata/project_id={me}/" in snap.manifest_list
            assert set(snap.summary.additional_properties) == set(), snap.summary
            for manifest in snap.manifests(io):
                assert f"tenant-metadata/project_id={me}/" in manifest.manifest_path
                for entry in manifest.fetch_manifest_entry(io, discard_deleted=False):
                    assert f"/project_id={me}/" in entry.data_file.file_path
                    assert entry.data_file.partition[0] == me
        assert table.metadata.metadata_log == []

        outcomes = cat.load_table("warehouse.user_outcomes").scan().to_arrow()
        want_outcomes = flight_rows(rest, me, "SELECT session_id FROM warehouse.user_outcomes")
        assert sorted(outcomes.column("session_id").to_pylist()) == sorted(want_outcomes.column("session_id").to_pylist())
        assert other not in table.metadata_location

    # Time travel by snapshot id: the base table's ids, each the tenant's
    # rows as of that snapshot.
    table = rest_catalog(rest, "acme").load_table("wildedge.raw_events")
    admin = rest_catalog(rest, "admin").load_table("wildedge.raw_events")
    assert [s.snapshot_id for s in table.metadata.snapshots] == [s.snapshot_id for s in admin.metadata.snapshots]
    for snap in table.metadata.snapshots:
        at = table.scan(snapshot_id=snap.snapshot_id).to_arrow()
        full = admin.scan(snapshot_id=snap.snapshot_id, row_filter="project_id == 'acme'").to_arrow()
        assert sorted(at.column("event_id").to_pylist()) == sorted(full.column("event_id").to_pylist())
    # Three different tables to an engine's cache.
    views = {table.metadata.table_uuid, admin.metadata.table_uuid, rest_catalog(rest, "globex").load_table("wildedge.raw_events").metadata.table_uuid}
    assert len(views) == 3


def test_derived_metadata_never_names_another_tenant(rest):
    for me, other in [("acme", b"globex"), ("globex", b"acme")]:
        rest_catalog(rest, me).load_table("wildedge.raw_events")
        files = [p for p in tenant_metadata_dir(rest, me).iterdir()]
        assert any(p.name.endswith(".metadata.json") for p in files)
        assert any(p.name.startswith("snap-") for p in files)
        for p in files:
            # Paths, partition values and column bounds of the other
            # tenant would all carry its name.
            assert other not in p.read_bytes(), p


def duckdb(srv, who, sql, tmp_path):
    duckdb_python = os.environ.get("RAINDROP_DUCKDB_PYTHON")
    assert duckdb_python, "RAINDROP_DUCKDB_PYTHON unset: run through scripts/test.sh"
    out = tmp_path / f"duckdb-{uuid.uuid4().hex}.jsonl"
    subprocess.run(
        [duckdb_python, os.path.join(os.path.dirname(__file__), "duckdb_iceberg.py"), "--rest", srv.base, "--sql", sql, "--out", str(out)],
        check=True,
        env={**os.environ, "RAINDROP_REST_SECRET": srv.tokens[who]},
    )
    return [json.loads(line) for line in out.read_text().splitlines()]


def daft(srv, who, tmp_path):
    """Daft (daft_rest.py, in the DuckDB venv) reading as `who`: (events, by_model)."""
    import pyarrow.parquet as pq

    out = tmp_path / f"daft-{uuid.uuid4().hex}"
    out.mkdir()
    subprocess.run(
        [os.environ["RAINDROP_DUCKDB_PYTHON"], os.path.join(os.path.dirname(__file__), "daft_rest.py"), "--rest", srv.base, "--out", str(out)],
        check=True,
        env={**os.environ, "RAINDROP_REST_SECRET": srv.tokens[who]},
    )
    return pq.read_table(out / "events.parquet"), pq.read_table(out / "by_model.parquet")


def test_duckdb_and_daft_run_the_seed_query_with_the_other_tenant_gone(rest, tmp_path):
    # The storage layer decides: with globex's data files moved away, acme's
    # engines still answer, so they never open them.
    [data] = [p for p in rest.data_dir.rglob("project_id=globex") if p.parent.name == "data"]
    moved = data.with_name("elsewhere")
    shutil.move(data, moved)
    try:
        tables = duckdb(rest, "acme", "SELECT schema_name AS s, table_name AS t FROM duckdb_tables() WHERE database_name = 'raindrop' ORDER BY 1, 2", tmp_path)
        assert [(r["s"], r["t"]) for r in tables] == [("warehouse", "user_outcomes"), ("wildedge", "raw_events")]

        counts = duckdb(rest, "acme", "SELECT project_id AS p, count(*) AS n FROM wildedge.raw_events GROUP BY 1", tmp_path)
        n = flight_rows(rest, "acme", "SELECT count(*) AS n FROM wildedge.raw_events").column("n")[0].as_py()
        assert counts == [{"p": "acme", "n": n}]

        # `event_day` is the name Raindrop gives the day partition; other
        # engines see only the table's columns (docs/clients.md).
        assert SEED_QUERY.count("e.event_day") == 1
        seed = duckdb(rest, "acme", SEED_QUERY.replace("e.event_day", "CAST(e.event_timestamp AS DATE)"), tmp_path)
        want = flight_rows(rest, "acme", SEED_QUERY).to_pylist()
        assert len(seed) == len(want) > 0
        for d, f in zip(seed, want):
            assert d["model_name"] == f["model_name"] and d["inference_count"] == f["inference_count"]
            assert d["avg_confidence"] == pytest.approx(f["avg_confidence"])
            assert d["conversion_rate"] == pytest.approx(f["conversion_rate"])

        # PyIceberg too.
        got = rest_catalog(rest, "acme").load_table("wildedge.raw_events").scan().to_arrow()
        assert got.num_rows == n

        # And Daft: exactly acme's events, and the seed query's join per model.
        events, by_model = daft(rest, "acme", tmp_path)
        ids = flight_rows(rest, "acme", "SELECT event_id FROM wildedge.raw_events").column("event_id").to_pylist()
        assert sorted(events.column("event_id").to_pylist()) == sorted(ids)
        assert set(events.column("project_id").to_pylist()) == {"acme"}
        want = flight_rows(rest, "acme", """
            SELECT e.model_name, count(*) AS inference_count, avg(e.confidence) AS avg_confidence,
                   avg(o.converted::int) AS conversion_rate
            FROM wildedge.raw_events e JOIN warehouse.user_outcomes o ON e.session_id = o.session_id
            WHERE e.event_type = 'inference' GROUP BY 1 ORDER BY 1""").to_pylist()
        got = by_model.to_pylist()
        assert [r["model_name"] for r in got] == [r["model_name"] for r in want] and want
        for d, f in zip(got, want):
            assert d["inference_count"] == f["inference_count"]
            assert d["avg_confidence"] == pytest.approx(f["avg_confidence"])
            assert d["conversion_rate"] == pytest.approx(f["conversion_rate"])
    finally:
        shutil.move(moved, data)


def test_token_endpoint_issues_short_lived_tokens(rest):
    secret = rest.tokens["acme"]
    form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_secret": secret, "scope": "catalog"}).encode()
    status, body = call(rest, "POST", "/v1/oauth/tokens", body=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body["token_type"] == "bearer" and body["expires_in"] > 0
    access = body["access_token"]
    assert access.startswith("rda.") and secret not in access
    assert call(rest, "GET", "/v1/namespaces", token=access)[0] == 200

    # DuckDB's way: Basic client_id:client_secret.
    basic = base64.b64encode(f"duckdb:{secret}".encode()).decode()
    status, body = call(rest, "POST", "/v1/oauth/tokens", body=b"grant_type=client_credentials", headers={"Authorization": f"Basic {basic}"})
    assert status == 200 and body["access_token"].startswith("rda.")

    status, body = call(rest, "POST", "/v1/oauth/tokens", body=b"grant_type=client_credentials&client_secret=rd_wrong_0000000000")
    assert status == 401 and body["error"] == "invalid_client"
    status, body = call(rest, "POST", "/v1/oauth/tokens", body=b"grant_type=password&client_secret=" + secret.encode())
    assert status == 400 and body["error"] == "unsupported_grant_type"

    # A tampered access token (another token id, same MAC) is refused.
    _, token_id, exp, mac = access.split(".")
    assert call(rest, "GET", "/v1/namespaces", token=f"rda.{'0' * len(token_id)}.{exp}.{mac}")[0] == 401

    # Revoking the token revokes its access tokens at once.
    doomed = make_token(rest.data_dir, "acme", "read")
    status, body = call(rest, "POST", "/v1/oauth/tokens", body=f"grant_type=client_credentials&client_secret={doomed}".encode())
    doomed_access = body["access_token"]
    assert call(rest, "GET", "/v1/config", token=doomed_access)[0] == 200
    subprocess.run([BIN, "token", "revoke", doomed_access.split(".")[1], "--data-dir", str(rest.data_dir)], check=True, capture_output=True)
    for token in (doomed, doomed_access):
        status, body = call(rest, "GET", "/v1/config", token=token)
        assert status == 401 and body["error"]["type"] == "NotAuthorizedException"


def test_errors_follow_the_spec(rest):
    status, body = call(rest, "GET", "/v1/config")
    assert status == 401 and body["error"]["code"] == 401 and "Bearer" in body["error"]["message"]
    status, body = call(rest, "GET", "/v1/config", token=rest.tokens["acme"])
    assert status == 200 and body["defaults"] == {} and body["overrides"] == {}
    assert all(e.split()[0] in ("GET", "HEAD") for e in body["endpoints"])

    ingest_only = make_token(rest.data_dir, "acme", "ingest")
    status, body = call(rest, "GET", "/v1/namespaces", token=ingest_only)
    assert status == 403 and body["error"]["type"] == "ForbiddenException"

    acme = rest.tokens["acme"]
    for method, path in [
        ("POST", "/v1/namespaces"),
        ("DELETE", "/v1/namespaces/wildedge"),
        ("POST", "/v1/namespaces/wildedge/tables"),
        ("POST", "/v1/namespaces/wildedge/tables/raw_events"),
        ("DELETE", "/v1/namespaces/wildedge/tables/raw_events"),
        ("POST", "/v1/tables/rename"),
        ("POST", "/v1/transactions/commit"),
    ]:
        status, body = call(rest, method, path, token=acme, body=b"{}")
        assert status == 403 and "read-only" in body["error"]["message"], (method, path)
    status, body = call(rest, "PUT", "/v1/namespaces", token=acme, body=b"{}")
    assert status == 405 and body["error"]["code"] == 405
    status, body = call(rest, "GET", "/v1/no/such/route", token=acme)
    assert status == 404 and body["error"]["type"] == "NotFoundException"

    # A local warehouse: paths are served as they are, nothing to sign.
    status, body = call(rest, "GET", "/v1/namespaces/wildedge/tables/raw_events", token=acme)
    assert status == 200 and body["config"] == {}
    sign = json.dumps({"method": "GET", "region": "us-east-1", "uri": body["metadata-location"], "headers": {}})
    status, body = call(rest, "POST", "/v1/namespaces/wildedge/tables/raw_events/sign", token=acme, body=sign.encode())
    assert status == 400 and "not on an S3 warehouse" in body["error"]["message"]
    status, body = call(rest, "POST", "/v1/namespaces/wildedge/tables/raw_events/sign", token=acme, body=b"{")
    assert status == 400 and "RemoteSignRequest" in body["error"]["message"]


def test_a_tenant_cannot_reach_another_tenants_names(rest):
    acme = rest.tokens["acme"]
    missing = call(rest, "GET", "/v1/namespaces/nosuchschema/tables", token=acme)
    assert missing[0] == 404
    # Another tenant's schema, the real tree, traversal and odd encodings:
    # each answers exactly as a name that does not exist.
    for ns in [
        "analytics",  # globex's schema
        "tenants",
        f"tenants{SEP}globex",
        f"tenants{SEP}globex{SEP}warehouse",
        f"tenants{SEP}acme{SEP}warehouse",
        "..",
        "%2E%2E%2Fglobex",
        f"wildedge{SEP}..",
        "warehouse%00",
        "WILDEDGE",
    ]:
        status, body = call(rest, "GET", f"/v1/namespaces/{ns}/tables", token=acme)
        assert status == 404 and body["error"]["type"] == "NoSuchNamespaceException", ns
        assert call(rest, "HEAD", f"/v1/namespaces/{ns}", token=acme)[0] == 404, ns
        status, body = call(rest, "GET", f"/v1/namespaces/{ns}/tables/user_outcomes", token=acme)
        assert status == 404, ns
    for table in ["churn", "raw_events%2F..%2F..", "user_outcomes"]:
        assert call(rest, "HEAD", f"/v1/namespaces/wildedge/tables/{table}", token=acme)[0] == 404, table
    status, body = call(rest, "GET", f"/v1/namespaces?parent=tenants{SEP}globex", token=acme)
    assert status == 404

    # The admin sees the real tree, including every tenant's namespace.
    admin = rest.tokens["admin"]
    status, body = call(rest, "GET", "/v1/namespaces", token=admin)
    assert ["tenants"] in body["namespaces"] and ["wildedge"] in body["namespaces"]
    status, body = call(rest, "GET", f"/v1/namespaces?parent=tenants", token=admin)
    assert sorted(body["namespaces"]) == [["tenants", "acme"], ["tenants", "globex"]]
    status, body = call(rest, "GET", f"/v1/namespaces/tenants{SEP}globex{SEP}analytics/tables", token=admin)
    assert body["identifiers"] == [{"namespace": ["tenants", "globex", "analytics"], "name": "churn"}]
    status, body = call(rest, "GET", "/v1/namespaces/wildedge/tables/raw_events", token=admin)
    assert "/metadata/" in body["metadata-location"] and "tenant-metadata" not in body["metadata-location"]


INSTALL_EXTENSIONS = """
import duckdb, importlib.util, sys
con = duckdb.connect(config={"extension_directory": sys.argv[1], "autoinstall_known_extensions": "false"})
for name in ("httpfs", "avro", "iceberg"):
    root = importlib.util.find_spec(f"duckdb_extension_{name}").submodule_search_locations[0]
    con.execute(f"INSTALL '{root}/extensions/v{duckdb.__version__}/{name}.duckdb_extension'")
"""

READ_MODEL = """
import duckdb, json, sys
rows = duckdb.connect(sys.argv[1], read_only=True).sql("SELECT * FROM conversion_by_model ORDER BY 1").fetchall()
print(json.dumps(rows))
"""


def test_dbt_builds_a_model_from_the_tenants_catalog(rest, tmp_path):
    """A tenant's dbt project (tests/clients/dbt): raw_events and its
    outcomes as sources in the attached REST catalog, one model joining them."""
    python = os.environ.get("RAINDROP_DUCKDB_PYTHON")
    assert python, "RAINDROP_DUCKDB_PYTHON unset: run through scripts/test.sh"
    extensions = tmp_path / "extensions"
    subprocess.run([python, "-c", INSTALL_EXTENSIONS, str(extensions)], check=True)
    project = os.path.join(os.path.dirname(__file__), "dbt")
    target = tmp_path / "model.duckdb"
    env = {
        **os.environ,
        "DBT_DUCKDB_PATH": str(target),
        "DBT_DUCKDB_EXTENSIONS": str(extensions),
        "RAINDROP_REST": rest.base,
        "RAINDROP_REST_SECRET": rest.tokens["acme"],
        # No tracking (no network, and no .user.yml left in the project).
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    run = subprocess.run(
        [os.path.join(os.path.dirname(python), "dbt"), "run", "--profiles-dir", project, "--project-dir", project,
         "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    got = json.loads(subprocess.run([python, "-c", READ_MODEL, str(target)], check=True, capture_output=True, text=True).stdout)
    want = flight_rows(
        rest,
        "acme",
        "SELECT e.model_name, count(*) AS n, avg(CAST(o.converted AS INT)) AS rate FROM wildedge.raw_events e "
        "JOIN warehouse.user_outcomes o ON e.session_id = o.session_id WHERE e.event_type = 'inference' GROUP BY 1 ORDER BY 1",
    ).to_pylist()
    assert len(got) == len(want) > 0
    for (model, n, rate), w in zip(got, want):
        assert (model, n) == (w["model_name"], w["n"])
        assert rate == pytest.approx(w["rate"])
