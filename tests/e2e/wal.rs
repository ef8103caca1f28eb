//! Buffered ingest: a `DoPut` is acknowledged once its rows are in the
//! write-ahead log, queries on the node see them at once (only the
//! caller's), a flush commits them as one snapshot with one file per
//! partition, and a log the table already holds is never replayed twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use raindrop::client::RaindropClient;
use raindrop::server::ServerHandle;

use crate::common::*;

/// A server whose timer never flushes during the test.
async fn unflushed_server() -> (ServerHandle, tempfile::TempDir) {
    custom_server(|c| c.limits.flush_interval_ms = 3_600_000).await
}

/// The write-ahead log segments under a server's data dir.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_rows_are_read_at_once_and_committed_by_one_flush() {
    let (server, dir) = unflushed_server().await;
    let mut acme = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    let mut globex = RaindropClient::connect(&server.url(), GLOBEX_TOKEN)
        .await
        .unwrap();
    let before = snapshots(&server).await;
    for i in 0..3 {
        let n = acme
            .ingest_events(vec![id_batch(&format!("a{i}"), 100)])
            .await
            .unwrap();
        assert_eq!(n, 100);
    }
    globex
        .ingest_events(vec![id_batch("g0", 50)])
        .await
        .unwrap();

    // Read-your-writes, each tenant its own rows only, nothing committed.
    let want_acme = BTreeMap::from([
        ("a0".to_string(), 100),
        ("a1".to_string(), 100),
        ("a2".to_string(), 100),
    ]);
    assert_eq!(rows_per_batch(&mut acme).await, want_acme);
    assert_eq!(
        rows_per_batch(&mut globex).await,
        BTreeMap::from([("g0".to_string(), 50)])
    );
    for sql in [
        "SELECT count(*) FROM wildedge.raw_events WHERE project_id = 'globex' OR true",
        "SELECT count(*) FROM wildedge.raw_events a JOIN wildedge.raw_events b ON a.event_id = b.event_id",
    ] {
        assert_eq!(count(&mut acme, sql).await, 300, "{sql}");
    }
    assert_eq!(
        count(
            &mut acme,
            "SELECT count(*) FROM wildedge.raw_events WHERE event_id LIKE 'g0-%'"
        )
        .await,
        0
    );
    assert_eq!(snapshots(&server).await, before, "nothing committed yet");
    assert!(parquet_files(&warehouse_files(dir.path())).is_empty());
    // Filters and projections apply to buffered rows too: `event_day`
    // (decided exactly for files) and a plain column.
    assert_eq!(
        count(
            &mut acme,
            "SELECT count(*) FROM wildedge.raw_events WHERE event_day = DATE '2026-05-28'"
        )
        .await,
        300
    );
    assert_eq!(
        count(
            &mut acme,
            "SELECT count(*) FROM wildedge.raw_events WHERE event_day < DATE '2026-05-28'"
        )
        .await,
        0
    );
    // A column read, another only filtered on: buffered rows are shaped
    // to just those two.
    assert_eq!(
        count(
            &mut acme,
            "SELECT count(DISTINCT event_id) FROM wildedge.raw_events WHERE event_day = DATE '2026-05-28' AND event_type = 'inference'"
        )
        .await,
        300
    );
    assert_eq!(
        count(
            &mut acme,
            "SELECT count(*) FROM wildedge.raw_events WHERE event_id LIKE 'a1-%'"
        )
        .await,
        100
    );

    server.services.ingest.flush().await.unwrap();
    assert_eq!(
        snapshots(&server).await,
        before + 1,
        "one commit for four requests"
    );
    // One file per (project, day): two tenants, one day.
    assert_eq!(parquet_files(&warehouse_files(dir.path())).len(), 2);
    assert_eq!(rows_per_batch(&mut acme).await, want_acme, "no row twice");
    let plan = acme
        .query("EXPLAIN SELECT count(*) FROM wildedge.raw_events")
        .await
        .unwrap();
    assert!(
        !strings(&plan, "plan").join("\n").contains("DataSourceExec"),
        "no buffered rows left to read"
    );
    // The flushed segment is gone; only the open one remains.
    assert_eq!(segments(dir.path()).len(), 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_buffered_request_is_not_logged_twice() {
    let (server, _dir) = unflushed_server().await;
    let mut acme = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    let first = acme
        .ingest_events_once("req-1", vec![id_batch("r1", 40)])
        .await
        .unwrap();
    assert_eq!(first, 40);
    // While buffered, and again after the flush committed it.
    for flushed in [false, true] {
        if flushed {
            server.services.ingest.flush().await.unwrap();
        }
        let again = acme
            .ingest_events_once("req-1", vec![id_batch("r1", 40)])
            .await
            .unwrap();
        assert_eq!(again, 40);
        assert_eq!(
            rows_per_batch(&mut acme).await,
            BTreeMap::from([("r1".to_string(), 40)])
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushing_needs_a_role_that_may_ingest() {
    let server = TestServer::start().await;
    let mut reader = server.client("acme_read").await;
    let err = reader
        .action(arrow_flight::Action::new("Flush", ""))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PermissionDenied") || err.contains("permission"),
        "{err}"
    );
    let mut writer = server.client("acme").await;
    writer
        .action(arrow_flight::Action::new("Flush", ""))
        .await
        .unwrap();
}
