"""The production shape seen from outside: Raindrop writes to an S3 bucket
(a real s3s-fs server) and registers the table in PostgreSQL; PyIceberg
and DuckDB open the same catalog and bucket and read exactly what Raindrop
returns.

Needs the services scripts/test.sh starts (scripts/services.sh)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import DATA, SEED_QUERY, Server, call, connect, load, make_token

S3 = os.environ.get("RAINDROP_TEST_S3_ENDPOINT")
BUCKET = os.environ.get("RAINDROP_TEST_S3_BUCKET")
PG = os.environ.get("RAINDROP_TEST_PG_URI")
VEND_ROLE = "arn:aws:iam::123456789012:role/raindrop-reader"

pytestmark = pytest.mark.skipif(
    not (S3 and PG), reason="needs the S3 and PostgreSQL servers that scripts/test.sh starts"
)


@pytest.fixture(scope="module")
def sts():
    """moto's STS server (PyPI `moto`): the AssumeRole protocol of AWS STS,
    for vended credentials. It does not enforce session policies."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/moto-api/").close()
            break
        except OSError:
            time.sleep(0.2)
    yield url
    proc.terminate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory, sts):
    name = f"py{uuid.uuid4().hex[:10]}"
    args = [
        "--warehouse", f"s3://{BUCKET}/{name}",
        "--catalog-uri", PG,
        "--catalog-name", name,
        "--s3-endpoint", S3,
        "--s3-path-style",
        # One commit per DoPut, none by compaction: the manifest-merge test
        # below counts them.
        "--flush-interval-ms", "0",
        "--compact-interval-secs", "0",
        "--http-addr", "127.0.0.1:0",
        "--s3-vend-role-arn", VEND_ROLE,
        "--s3-sts-endpoint", sts,
    ]  # fmt: skip
    # Tokens live in the PostgreSQL catalog, shared by every node.
    token_args = ["--catalog-uri", PG, "--catalog-name", name]
    srv = Server(tmp_path_factory.mktemp("s3"), extra_args=args, token_args=token_args)
    srv.catalog_name = name
    srv.token_args = token_args
    yield load(srv)
    srv.stop()


def pyiceberg_catalog(srv):
    """The same PostgreSQL catalog and bucket, opened by PyIceberg."""
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog(
        srv.catalog_name,
        uri=PG.replace("postgres://", "postgresql+psycopg2://", 1),
        **{
            "s3.endpoint": S3,
            "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
            "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
            "s3.region": os.environ["AWS_REGION"],
        },
    )


def flight_rows(srv, who, sql):
    with connect(srv, who) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def by_event(table: pa.Table) -> list:
    cols = ["event_id", "project_id", "event_timestamp", "model_name", "session_id", "confidence", "duration_ms"]
    t = table.select(cols).cast(
        pa.schema([(c, pa.timestamp("us", tz="UTC") if c == "event_timestamp" else table.schema.field(c).type)
                   for c in cols])
    )
    return sorted(t.to_pylist(), key=lambda r: r["event_id"])


def test_table_lives_in_the_bucket_and_the_postgres_catalog(s3_server):
    table = pyiceberg_catalog(s3_server).load_table("wildedge.raw_events")
    assert table.metadata_location.startswith(f"s3://{BUCKET}/{s3_server.catalog_name}/")
    files = [t.file.file_path for t in table.scan().plan_files()]
    assert files and all(f.startswith(f"s3://{BUCKET}/{s3_server.catalog_name}/") for f in files)
    # Identity partitioning keeps each tenant's files under its own prefix.
    for f in files:
        project = f.split("/project_id=")[1].split("/")[0]
        assert project in DATA


@pytest.mark.parametrize("project", sorted(DATA))
def test_pyiceberg_reads_over_s3_exactly_what_raindrop_returns(s3_server, project):
    table = pyiceberg_catalog(s3_server).load_table("wildedge.raw_events")
    theirs = table.scan(row_filter=f"project_id == '{project}'").to_arrow()
    ours = flight_rows(s3_server, project, "SELECT * FROM wildedge.raw_events")
    assert theirs.num_rows == DATA[project][0].num_rows
    assert by_event(theirs) == by_event(ours)
    assert set(pc.unique(theirs.column("project_id")).to_pylist()) == {project}


def test_tenant_tables_on_s3_are_readable_by_pyiceberg(s3_server):
    catalog = pyiceberg_catalog(s3_server)
    outcomes = catalog.load_table("tenants.acme.warehouse.user_outcomes").scan().to_arrow()
    want = DATA["acme"][1]
    assert sorted(outcomes.column("session_id").to_pylist()) == sorted(want.column("session_id").to_pylist())


def test_seed_query_on_s3_matches_the_local_warehouse(s3_server, loaded):
    """The same rows behind a local and an S3 warehouse: the canonical
    query gives the same answer on both."""
    for project in DATA:
        on_s3 = flight_rows(s3_server, project, SEED_QUERY)
        local = flight_rows(loaded, project, SEED_QUERY)
        assert on_s3.num_rows > 0
        # Files are cut differently on the two servers (each loads in
        # several DoPuts), so floating-point sums may add in another order.
        assert on_s3.to_pylist() == [
            {k: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for k, v in row.items()}
            for row in local.to_pylist()
        ]


def test_loaded_table_has_merged_manifests(s3_server):
    """What the readers here read: the committer merged the manifests of
    the first 8 appends (a `replace` snapshot): fewer manifests than
    appends, each pinned to one tenant by its partition summary (a tenant's
    small manifests are folded by size tier, so a tenant may keep a few);
    later appends added their own."""
    table = pyiceberg_catalog(s3_server).load_table("wildedge.raw_events")
    merges = [s for s in table.snapshots() if "raindrop.manifests-merged" in s.summary.additional_properties]
    assert len(merges) == 1
    assert merges[0].summary.operation.value == "replace"
    manifests = table.inspect.manifests()
    appends = [s for s in table.snapshots() if s.summary.operation.value == "append"]
    before = sum(1 for s in appends if s.sequence_number < merges[0].sequence_number)
    since = sum(1 for s in appends if s.sequence_number > merges[0].sequence_number)
    assert len(DATA) <= manifests.num_rows - since < before
    tenants = set()
    for summaries in manifests.column("partition_summaries").to_pylist():
        assert summaries[0]["lower_bound"] == summaries[0]["upper_bound"]
        tenants.add(summaries[0]["lower_bound"])
    assert tenants == set(DATA)


def test_duckdb_iceberg_reader_over_s3_agrees_with_raindrop(s3_server, tmp_path):
    """DuckDB's own Iceberg reader (iceberg + httpfs + avro extensions, in
    a venv of its own: tests/clients/duckdb_iceberg.py says why) reads the table
    from the bucket, at the metadata the PostgreSQL catalog points to."""
    import pyarrow.parquet as pq

    duckdb_python = os.environ.get("RAINDROP_DUCKDB_PYTHON")
    assert duckdb_python, "RAINDROP_DUCKDB_PYTHON unset: run through scripts/test.sh"
    table = pyiceberg_catalog(s3_server).load_table("wildedge.raw_events")
    out = tmp_path / "duckdb.parquet"
    subprocess.run(
        [
            duckdb_python, os.path.join(os.path.dirname(__file__), "duckdb_iceberg.py"),
            "--metadata", table.metadata_location,
            "--sql", "SELECT * FROM raw_events",
            "--out", str(out),
        ],
        check=True,
    )  # fmt: skip
    theirs = pq.read_table(out)
    for project in DATA:
        ours = flight_rows(s3_server, project, "SELECT * FROM wildedge.raw_events")
        mine = theirs.filter(pc.equal(theirs.column("project_id"), project))
        assert mine.num_rows == DATA[project][0].num_rows
        assert by_event(mine) == by_event(ours)


def with_a_filesystem_per_thread(monkeypatch):
    """PyIceberg 0.12 hooks its remote signer on an S3 client that fsspec
    shares between PyIceberg's reader threads, unregistering and
    re-registering it each time a thread opens the filesystem; a request
    in that gap leaves unsigned and the store refuses it, now and then
    (apache/iceberg-python#3896). Give each thread a filesystem of its own,
    as the proposed fix does."""
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "cachable", False)


def test_the_rest_catalog_serves_each_tenant_its_view_from_the_bucket(s3_server, monkeypatch):
    """The REST catalog over S3 + PostgreSQL, as a tenant's PyIceberg sees
    it with no S3 credential at all: loadTable points it at Raindrop's
    remote signer, which signs each read of the tenant's own files (the
    bucket refuses unsigned reads: test below)."""
    from pyiceberg.catalog import load_catalog

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with_a_filesystem_per_thread(monkeypatch)
    for me in DATA:
        catalog = load_catalog(me, type="rest", uri=s3_server.base, credential=s3_server.tokens[me])
        table = catalog.load_table("wildedge.raw_events")
        assert table.metadata_location.startswith(f"s3://{BUCKET}/")
        assert f"/tenant-metadata/project_id={me}/" in table.metadata_location
        assert table.io.properties["s3.remote-signing-enabled"] == "true"
        # The only keys it holds are the vended ones from moto's STS, which
        # the store does not know: every read below was signed by Raindrop.
        assert table.io.properties["s3.access-key-id"].startswith("ASIA")
        got = table.scan().to_arrow()
        want = flight_rows(s3_server, me, "SELECT event_id FROM wildedge.raw_events")
        assert set(got.column("project_id").to_pylist()) == {me}
        assert sorted(got.column("event_id").to_pylist()) == sorted(want.column("event_id").to_pylist())
        outcomes = catalog.load_table("warehouse.user_outcomes").scan().to_arrow()
        assert outcomes.num_rows == DATA[me][1].num_rows


def metric(srv, series: str) -> float:
    """One series of the server's /metrics (0 when absent)."""
    with urllib.request.urlopen(srv.metrics_url) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
    return 0.0


def s3_url(location: str) -> str:
    """The path-style URL of an `s3://` location on the test store."""
    return f"{S3}/{BUCKET}/{location.removeprefix(f's3://{BUCKET}/')}"


def fetch(url, headers=None, method="GET"):
    """A plain HTTP request to the store: (status, body)."""
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_signer_signs_only_what_the_token_may_read(s3_server):
    """The attack corpus of the remote signer: a tenant gets signatures for
    its own data partition and derived metadata only, through the endpoint
    of the table they belong to; every other object, method, sub-resource,
    host or encoding trick gets 403 and no signature."""
    acme, admin = s3_server.tokens["acme"], s3_server.tokens["admin"]
    full = pyiceberg_catalog(s3_server).load_table("wildedge.raw_events")
    files = [t.file.file_path for t in full.scan().plan_files()]
    own = s3_url(next(f for f in files if "/project_id=acme/" in f))
    foreign = s3_url(next(f for f in files if "/project_id=globex/" in f))
    raw_sign = "/v1/namespaces/wildedge/tables/raw_events/sign"

    def sign(token, uri, method="GET", path=raw_sign):
        body = {"method": method, "region": os.environ["AWS_REGION"], "uri": uri,
                "headers": {"x-amz-checksum-mode": ["ENABLED"]}}  # fmt: skip
        return call(s3_server, "POST", path, token=token, body=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"})  # fmt: skip

    # The store refuses unsigned reads: what a keyless client reads, Raindrop signed.
    assert fetch(own)[0] == 403
    status, body = sign(acme, own)
    assert status == 200 and body["uri"] == own
    signed = {k: ", ".join(v) for k, v in body["headers"].items()}
    signed["x-amz-checksum-mode"] = "ENABLED"
    status, data = fetch(own, signed)
    assert status == 200 and data[:4] == b"PAR1"
    # The signature covers the key: replayed on another object, the store refuses it.
    assert fetch(foreign, signed)[0] == 403
    assert sign(acme, own, "HEAD")[0] == 200
    view = call(s3_server, "GET", "/v1/namespaces/wildedge/tables/raw_events", token=acme)[1]
    assert sign(acme, s3_url(view["metadata-location"]))[0] == 200

    own_dir = "/project_id=acme/"
    for method, uri in [
        ("GET", foreign),  # another tenant's data file
        ("HEAD", foreign),
        ("GET", s3_url(full.metadata_location)),  # the shared metadata
        ("GET", s3_url(view["metadata-location"]).replace(own_dir, "/project_id=globex/")),
        ("GET", own.replace(own_dir, f"{own_dir}%2E%2E/project_id=globex/")),
        ("GET", own.replace(own_dir, f"{own_dir}..%2Fproject_id=globex/")),
        ("GET", own.replace(own_dir, f"{own_dir}../../")),
        ("GET", own.replace(own_dir, "/project_id=acme%2F..%2Fproject_id=globex/")),
        ("GET", own.replace(own_dir, "/project_id=acm/")),
        ("GET", own.replace(own_dir, "/project_id=acmex/")),
        ("PUT", own),
        ("DELETE", own),
        ("POST", own),
        ("GET", own + "?acl"),
        ("GET", f"{S3}/{BUCKET}?list-type=2&prefix={s3_server.catalog_name}/"),
        ("HEAD", f"{S3}/{BUCKET}"),
        ("GET", own.replace(f"/{BUCKET}/", "/another-bucket/")),
        ("GET", own.replace(S3, "http://attacker.example:9000")),
    ]:
        status, body = sign(acme, uri, method)
        assert status == 403 and body["error"]["type"] == "ForbiddenException", (method, uri, body)

    # A tenant table's files sign only through that table's endpoint.
    def first_file(name):
        return s3_url(next(iter(pyiceberg_catalog(s3_server).load_table(name).scan().plan_files())).file.file_path)

    own_outcomes = first_file("tenants.acme.warehouse.user_outcomes")
    foreign_outcomes = first_file("tenants.globex.warehouse.user_outcomes")
    outcomes_sign = "/v1/namespaces/warehouse/tables/user_outcomes/sign"
    assert sign(acme, own_outcomes, path=outcomes_sign)[0] == 200
    assert sign(acme, foreign_outcomes, path=outcomes_sign)[0] == 403
    assert sign(acme, own, path=outcomes_sign)[0] == 403
    assert sign(acme, own_outcomes)[0] == 403
    # Another tenant's table answers as a name that does not exist.
    path = "/v1/namespaces/tenants%1Fglobex%1Fwarehouse/tables/user_outcomes/sign"
    assert sign(acme, foreign_outcomes, path=path)[0] == 404

    # Who may ask: a read token. None, a wrong one or an ingest-only one may not.
    ingest = make_token(s3_server.data_dir, "acme", "ingest", s3_server.token_args)
    assert sign(None, own)[0] == 401
    assert sign("rdk_not_a_token", own)[0] == 401
    # Nodes re-read the tokens of a PostgreSQL catalog every 2 s.
    deadline = time.monotonic() + 30
    while (status := sign(ingest, own)[0]) == 401 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status == 403
    # An admin reads the whole table, and still only reads.
    assert sign(admin, foreign)[0] == 200
    assert sign(admin, s3_url(full.metadata_location))[0] == 200
    before = metric(s3_server, 'raindrop_rest_sign_requests_total{outcome="rejected"}')
    assert sign(admin, own, "PUT")[0] == 403
    # Operators see refusals in the metrics.
    assert metric(s3_server, 'raindrop_rest_sign_requests_total{outcome="rejected"}') == before + 1


def test_loadtable_vends_sts_credentials_for_the_callers_prefixes_only(s3_server, sts):
    """Vended credentials: loadTable asks STS (moto here) for keys whose
    session policy reads exactly what the signer would sign, and returns
    them as `storage-credentials` scoped to those prefixes."""
    ask = {"X-Iceberg-Access-Delegation": "vended-credentials"}
    table = f"s3://{BUCKET}/{s3_server.catalog_name}/wildedge/raw_events"
    got = {}
    for me in DATA:
        status, body = call(s3_server, "GET", "/v1/namespaces/wildedge/tables/raw_events", token=s3_server.tokens[me], headers=ask)
        assert status == 200, body
        creds = body["storage-credentials"]
        assert sorted(c["prefix"] for c in creds) == [
            f"{table}/data/project_id={me}/",
            f"{table}/tenant-metadata/project_id={me}/",
        ]
        cfg = creds[0]["config"]
        assert cfg["s3.access-key-id"].startswith("ASIA") and cfg["s3.session-token"]
        expires_in = int(cfg["s3.session-token-expires-at-ms"]) / 1000 - time.time()
        assert 600 < expires_in <= 900
        assert body["config"]["s3.access-key-id"] == cfg["s3.access-key-id"]
        got[me] = cfg["s3.access-key-id"]
    assert got["acme"] != got["globex"]

    # The policy each STS session was given: s3:GetObject on those prefixes.
    with urllib.request.urlopen(f"{sts}/moto-api/data.json") as resp:
        state = json.dumps(json.load(resp))
    for me in DATA:
        assert f"arn:aws:s3:::{BUCKET}/{s3_server.catalog_name}/wildedge/raw_events/data/project_id={me}/*" in state.replace("\\", "")
    # The tenant's own table: its location only.
    status, body = call(s3_server, "GET", "/v1/namespaces/warehouse/tables/user_outcomes", token=s3_server.tokens["acme"], headers=ask)
    assert [c["prefix"] for c in body["storage-credentials"]] == [
        f"s3://{BUCKET}/{s3_server.catalog_name}/tenants/acme/warehouse/user_outcomes/"
    ]
    # Reused while fresh: the same keys, no new STS call.
    calls = metric(s3_server, 'raindrop_sts_calls_total{outcome="ok"}')
    status, body = call(s3_server, "GET", "/v1/namespaces/wildedge/tables/raw_events", token=s3_server.tokens["acme"], headers=ask)
    assert body["storage-credentials"][0]["config"]["s3.access-key-id"] == got["acme"]
    assert metric(s3_server, 'raindrop_sts_calls_total{outcome="ok"}') == calls > 0
    # Not asked for: none.
    status, body = call(s3_server, "GET", "/v1/namespaces/wildedge/tables/raw_events", token=s3_server.tokens["acme"])
    assert "storage-credentials" not in body and "s3.access-key-id" not in body["config"]


def test_duckdb_with_its_own_keys_reads_through_the_rest_catalog(s3_server, tmp_path):
    """An operator's DuckDB with S3 keys of its own (an admin token, no
    vended credentials) attaches the REST catalog and reads the bucket: the
    signing properties loadTable returns must not get in its way."""
    out = tmp_path / "duckdb-admin.jsonl"
    subprocess.run(
        [
            os.environ["RAINDROP_DUCKDB_PYTHON"], os.path.join(os.path.dirname(__file__), "duckdb_iceberg.py"),
            "--rest", s3_server.base, "--own-s3-keys",
            "--sql", "SELECT project_id AS p, count(*) AS n FROM wildedge.raw_events GROUP BY 1 ORDER BY 1",
            "--out", str(out),
        ],
        check=True,
        env={**os.environ, "RAINDROP_REST_SECRET": s3_server.tokens["admin"]},
    )  # fmt: skip
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got == [{"p": p, "n": DATA[p][0].num_rows} for p in sorted(DATA)]
