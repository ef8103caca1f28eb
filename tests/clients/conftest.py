"""Fixtures: the real `raindrop` binary serving a temp dir, plus tokens."""

import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pytest

import telemetry

ROOT = Path(__file__).resolve().parents[2]
SEED_QUERY = (ROOT / "sql" / "seed-query.sql").read_text()
DATA = {p: telemetry.make(p, n, seed) for p, n, seed in [("acme", 400, 1), ("globex", 150, 2)]}

BIN = os.environ.get("RAINDROP_BIN", "target/release/raindrop")


def make_token(data_dir: Path, project, role: str, token_args=()) -> str:
    secret = f"pytest-{role}-{uuid.uuid4().hex}"
    args = [BIN, "token", "create", "--role", role, "--token", secret, "--data-dir", str(data_dir), *token_args]
    if project:
        args += ["--project", project]
    subprocess.run(args, check=True, capture_output=True, text=True)
    return secret


class Server:
    def __init__(self, data_dir: Path, extra_args=(), token_args=()):
        """`token_args`: the catalog flags of `raindrop token create`, for
        servers whose tokens live in a PostgreSQL catalog."""
        self.data_dir = data_dir
        self.tokens = {
            "acme": make_token(data_dir, "acme", "read_write", token_args),
            "globex": make_token(data_dir, "globex", "read_write", token_args),
            "admin": make_token(data_dir, None, "admin", token_args),
        }
        self.proc = subprocess.Popen(
            [BIN, "serve", "--addr", "127.0.0.1:0", "--data-dir", str(data_dir), "--log", "warn", *extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.metrics_url = None
        for line in self.proc.stdout:
            m = re.search(r"listening on grpc(?:\+tls)?://([\d.]+:\d+)", line)
            if m:
                self.addr = m.group(1)
            m = re.search(r"metrics\s*: (http://\S+)", line)
            if m:
                self.metrics_url = m.group(1)
            if line.lstrip().startswith("warehouse:"):
                break
        else:
            raise RuntimeError("server exited before listening")
        self.uri = f"grpc://{self.addr}"
        # The HTTP port (metrics, REST catalog) when --http-addr is given.
        self.base = self.metrics_url.removesuffix("/metrics") if self.metrics_url else None
        # Keep reading the log: a full pipe would block the server, and
        # tests check what it warns about.
        self.log = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("raindrop"))
    yield srv
    srv.stop()


def call(srv, method, path, token=None, body=None, headers=None):
    """One HTTP call to the server's HTTP port: (status, parsed JSON body or None)."""
    req = urllib.request.Request(srv.base + path, method=method, data=body, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def connect(server, who):
    return flightsql.connect(
        server.uri,
        db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {server.tokens[who]}"},
        autocommit=True,
    )


# DoPuts per tenant when loading: 12 appends in all, so the committer has
# merged the manifests once (after the 8th) and 4 appends came after it;
# every reader below reads a table of merged and appended manifests.
LOAD_SLICES = 6


def flush(server, who="acme"):
    """Commit every acknowledged row (the `Flush` action), so engines that
    read the Iceberg table directly see it now, not after the interval."""
    import pyarrow.flight as flight

    client = flight.FlightClient(f"grpc+tcp://{server.addr}")
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {server.tokens[who]}".encode())])
    list(client.do_action(flight.Action("Flush", b""), options))
    client.close()


def load(server):
    """Both tenants' telemetry and outcomes, loaded with adbc_ingest, then
    flushed (the readers below include PyIceberg and DuckDB)."""
    for project, (events, outcomes) in DATA.items():
        with connect(server, project) as conn, conn.cursor() as cur:
            step = -(-events.num_rows // LOAD_SLICES)
            for start in range(0, events.num_rows, step):
                part = events.slice(start, step)
                assert cur.adbc_ingest("raw_events", part, mode="append") == part.num_rows
            n = cur.adbc_ingest("user_outcomes", outcomes, mode="create", db_schema_name="warehouse")
            assert n == outcomes.num_rows
    flush(server)
    return server


@pytest.fixture(scope="session")
def loaded(server):
    return load(server)
