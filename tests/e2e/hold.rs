//! Small projects' rows held back by the flush (`--flush-hold-mib`,
//! `--flush-hold-ms`), with the real binary: one file instead of one per
//! flush, read by queries meanwhile, and exactly once across `kill -9`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raindrop::catalog::Warehouse;
use raindrop::client::RaindropClient;
use raindrop::tenant::{Role, tokens};

use crate::common::{id_batch, rows_per_batch, scan_tasks};
use crate::processes::{ROWS, Server, TOKEN, setup, sigterm_and_wait};

const TINY_TOKEN: &str = "process-test-token-tiny-0123456789";

/// Live data files of `project` in raw_events.
async fn files_of(warehouse: &Warehouse, project: &str) -> usize {
    let table = warehouse.raw_events().await.unwrap();
    let partition = format!("project_id={project}/");
    scan_tasks(&table)
        .await
        .iter()
        .filter(|t| t.data_file_path.contains(&partition))
        .count()
}

/// The table's held-projects properties (one per node that holds rows).
async fn held(warehouse: &Warehouse) -> Vec<String> {
    let table = warehouse.raw_events().await.unwrap();
    table
        .metadata()
        .properties()
        .iter()
        .filter(|(k, v)| k.starts_with("raindrop.wal-held.") && !v.is_empty())
        .map(|(_, v)| v.clone())
        .collect()
}

/// Wait up to 30 s for `project` to have `n` live files.
async fn wait_for_files(warehouse: &Warehouse, project: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = files_of(warehouse, project).await;
        if files == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{project} has {files} files, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_projects_rows_wait_for_one_file_and_survive_kill_dash_nine() {
    let dir = setup().await;
    let source = crate::common::token_source(dir.path());
    tokens::create(&source, TINY_TOKEN, Some("tiny"), Role::ReadWrite, "")
        .await
        .unwrap();
    let args = |hold_ms: &'static str| {
        vec![
            "--flush-interval-ms",
            "200",
            "--flush-hold-mib",
            "1",
            "--flush-hold-ms",
            hold_ms,
            "--compact-interval-secs",
            "0",
        ]
    };
    let server = Server::start_with(dir.path(), &args("3600000"));
    let warehouse = raindrop::catalog::open(&crate::common::storage_config(dir.path()))
        .await
        .unwrap();
    let mut acme = RaindropClient::connect(&server.url, TOKEN).await.unwrap();
    let mut tiny = RaindropClient::connect(&server.url, TINY_TOKEN)
        .await
        .unwrap();
    // Three flushes, each with a large project's rows (2 MiB and more in
    // Arrow) and a small one's (400 rows).
    let mut want = BTreeMap::new();
    for round in 0..3 {
        let id = format!("t{round}");
        tiny.ingest_events_once(&id, vec![id_batch(&id, ROWS)])
            .await
            .unwrap();
        want.insert(id, ROWS as i64);
        let before = files_of(&warehouse, "acme").await;
        let id = format!("a{round}");
        acme.ingest_events_once(&id, vec![id_batch(&id, 50_000)])
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while files_of(&warehouse, "acme").await == before {
            assert!(Instant::now() < deadline, "acme's rows were not flushed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(files_of(&warehouse, "tiny").await, 0, "written, not held");
    assert_eq!(held(&warehouse).await, vec!["tiny=1".to_string()]);
    // Queries read held rows as they read any buffered row.
    assert_eq!(rows_per_batch(&mut tiny).await, want);

    // Replay after kill -9 recovers exactly the held rows and writes them
    // at once, all three flushes' worth as one file.
    server.kill9();
    let server = Server::start_with(dir.path(), &args("3600000"));
    wait_for_files(&warehouse, "tiny", 1).await;
    assert!(held(&warehouse).await.is_empty());
    let mut tiny = RaindropClient::connect(&server.url, TINY_TOKEN)
        .await
        .unwrap();
    assert_eq!(rows_per_batch(&mut tiny).await, want);
    let mut acme = RaindropClient::connect(&server.url, TOKEN).await.unwrap();
    let acme_rows = rows_per_batch(&mut acme).await;
    assert_eq!(acme_rows.values().sum::<i64>(), 150_000);
    // A retry of a request whose rows were held is still known.
    let n = tiny
        .ingest_events_once("t1", vec![id_batch("t1", ROWS)])
        .await
        .unwrap();
    assert_eq!(n as usize, ROWS);
    assert_eq!(rows_per_batch(&mut tiny).await, want);
    sigterm_and_wait(server);

    // Held rows are written once they are old, with nothing else arriving.
    let server = Server::start_with(dir.path(), &args("500"));
    let mut tiny = RaindropClient::connect(&server.url, TINY_TOKEN)
        .await
        .unwrap();
    tiny.ingest_events_once("t3", vec![id_batch("t3", ROWS)])
        .await
        .unwrap();
    want.insert("t3".into(), ROWS as i64);
    wait_for_files(&warehouse, "tiny", 2).await;
    assert!(held(&warehouse).await.is_empty());
    assert_eq!(rows_per_batch(&mut tiny).await, want);
}
