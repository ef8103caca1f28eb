"""The HTTP endpoints on --http-addr, scraped by a real HTTP client:
Prometheus metrics move with ingest and queries; health and readiness."""

import re
import time
import urllib.error
import urllib.request

import pyarrow as pa
from conftest import DATA, Server, connect, flush


def scrape(url: str) -> dict:
    """Prometheus/OpenMetrics text → {'name{labels}': value}."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    assert text.rstrip().endswith("# EOF")
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_count_ingest_queries_and_storage(tmp_path):
    # No timed flush: the rows stay buffered until the Flush action.
    srv = Server(tmp_path, extra_args=["--http-addr", "127.0.0.1:0", "--flush-interval-ms", "600000"])
    try:
        assert srv.metrics_url, "the server printed no metrics address"
        base = srv.metrics_url.removesuffix("/metrics")
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz") == (200, "ready\n")

        before = scrape(srv.metrics_url)
        events = DATA["acme"][0]
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            assert cur.adbc_ingest("raw_events", events, mode="append") == events.num_rows
            cur.execute("SELECT count(*) FROM wildedge.raw_events")
            assert cur.fetchone() == (events.num_rows,)
            try:
                cur.execute("SELECT no_such_column FROM wildedge.raw_events")
            except Exception:
                pass
            # Refused by validation: counted as an error, never logged.
            try:
                cur.adbc_ingest("raw_events", pa.table({"no_such_column": [1]}), mode="append")
            except Exception:
                pass
        # Buffered rows (and the copy the query gathered) hold ingest
        # memory until their flush commits them.
        mid = scrape(srv.metrics_url)
        buffered = mid["raindrop_ingest_memory_bytes"]
        assert buffered >= events.nbytes / 2, (buffered, events.nbytes)
        assert mid["raindrop_ingest_buffered_rows"] == events.num_rows
        assert mid["raindrop_ingest_buffered_age_ms"] > 0
        # No timed flush ran, so none held rows back.
        assert mid["raindrop_ingest_held_rows"] == 0
        # Rows are counted when committed: the flush commits them now.
        flush(srv)
        after = scrape(srv.metrics_url)
        assert after["raindrop_ingest_memory_bytes"] == 0

        def delta(name):
            return after.get(name, 0) - before.get(name, 0)

        assert delta("raindrop_ingest_rows_total") == events.num_rows
        assert delta("raindrop_ingest_bytes_total") > 0
        assert delta('raindrop_maintenance_runs_total{job="flush",outcome="ok"}') >= 1
        assert after["raindrop_ingest_buffered_rows"] == 0
        assert delta('raindrop_commits_total{outcome="ok"}') >= 1
        assert delta("raindrop_commit_duration_seconds_count") >= 1
        assert delta('raindrop_queries_total{outcome="ok"}') >= 1
        assert delta('raindrop_queries_total{outcome="rejected"}') >= 1
        assert delta("raindrop_query_duration_seconds_count") >= 1
        assert delta('raindrop_storage_requests_total{op="write"}') >= 1
        # Each DoPut is counted and timed; the one accepted took one log
        # write, inside its own time on the server.
        assert delta('raindrop_ingest_requests_total{outcome="ok"}') == 1
        assert delta('raindrop_ingest_requests_total{outcome="error"}') == 1
        assert delta("raindrop_ingest_request_duration_seconds_count") == 2
        assert delta("raindrop_wal_write_duration_seconds_count") == 1
        assert 0 < delta("raindrop_wal_write_duration_seconds_sum") < delta(
            "raindrop_ingest_request_duration_seconds_sum"
        )
        assert delta('raindrop_cache_lookups_total{cache="table",result="hit"}') + delta(
            'raindrop_cache_lookups_total{cache="table",result="miss"}'
        ) >= 1
        # Low cardinality: no tenant, token or table names in any series.
        assert not any(re.search(r"acme|globex|raw_events", k) for k in after)
    finally:
        srv.stop()


def test_rows_a_flush_holds_back_are_counted_until_written(tmp_path):
    # Timed flushes hold a project's rows back while it has less than
    # --flush-hold-mib (8 MiB) buffered, here for up to an hour.
    srv = Server(
        tmp_path,
        extra_args=["--http-addr", "127.0.0.1:0", "--flush-interval-ms", "200", "--flush-hold-ms", "3600000"],
    )
    try:
        events = DATA["acme"][0]
        assert events.nbytes < 8 << 20
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            assert cur.adbc_ingest("raw_events", events, mode="append") == events.num_rows
        deadline = time.monotonic() + 30
        while (m := scrape(srv.metrics_url))["raindrop_ingest_held_rows"] != events.num_rows:
            assert time.monotonic() < deadline, "no timed flush held the rows back"
            time.sleep(0.1)
        assert m["raindrop_ingest_held_projects"] == 1
        assert m["raindrop_ingest_buffered_rows"] == events.num_rows
        # The Flush action writes held rows too.
        flush(srv)
        after = scrape(srv.metrics_url)
        assert after["raindrop_ingest_held_rows"] == 0
        assert after["raindrop_ingest_held_projects"] == 0
        assert after["raindrop_ingest_buffered_rows"] == 0
    finally:
        srv.stop()


def test_a_flush_sets_off_compaction_and_its_bytes_are_counted(tmp_path):
    # The timer is an hour away, so only the flushes can start compaction;
    # a bound of two small files per partition makes the second flush's
    # files merge with the first's.
    srv = Server(
        tmp_path,
        extra_args=["--http-addr", "127.0.0.1:0", "--compact-interval-secs", "3600", "--compact-max-files", "2"],
    )
    try:
        before = scrape(srv.metrics_url)
        events = DATA["acme"][0]
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            for _ in range(2):
                assert cur.adbc_ingest("raw_events", events, mode="append") == events.num_rows
                flush(srv)
        runs = 'raindrop_maintenance_runs_total{job="compaction",outcome="ok"}'
        deadline = time.monotonic() + 60
        while True:
            after = scrape(srv.metrics_url)
            rewritten = after.get("raindrop_compaction_rewritten_bytes_total", 0) - before.get(
                "raindrop_compaction_rewritten_bytes_total", 0
            )
            if rewritten > 0:
                break
            assert time.monotonic() < deadline, "no compaction after two flushes into the same days"
            time.sleep(0.2)
        assert after.get(runs, 0) - before.get(runs, 0) >= 1
        with connect(srv, "acme") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*), count(DISTINCT event_id) FROM wildedge.raw_events")
            assert cur.fetchone() == (2 * events.num_rows, events.num_rows)
    finally:
        srv.stop()
