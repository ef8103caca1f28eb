//! The write-ahead log on object storage (`--wal-storage warehouse`), with
//! the real binary: `kill -9` loses no acknowledged row and another node
//! adopts the dead node's log; a paused node whose log was adopted meanwhile
//! commits nothing twice and refuses new rows. Checked at the storage
//! layer: no log object, mark or lease is left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raindrop::client::{IngestMode, RaindropClient};

use crate::processes::{
    ROWS, Server, TOKEN, assert_each_acked_whole, batches_present, ingest_loop, kill_during_ingest,
    setup, sigterm_and_wait,
};

/// A log on object storage whose lease lapses 2 s after its node stops.
fn log_args(flush_ms: &'static str) -> Vec<&'static str> {
    vec![
        "--wal-storage",
        "warehouse",
        "--wal-lease-secs",
        "2",
        "--flush-interval-ms",
        flush_ms,
    ]
}

/// Every object of the write-ahead logs in the warehouse rooted at `dir`,
/// and the table's `raindrop.wal.*` marks and `raindrop.wal-held.*`
/// held projects.
async fn logs_left(dir: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let warehouse = raindrop::catalog::open(&crate::common::storage_config(dir))
        .await
        .unwrap();
    let objects = warehouse
        .store
        .list(&format!("{}/_raindrop/wal", warehouse.warehouse))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.location)
        .collect();
    let table = warehouse.raw_events().await.unwrap();
    let marks = table
        .metadata()
        .properties()
        .keys()
        .filter(|k| k.starts_with("raindrop.wal.") || k.starts_with("raindrop.wal-held."))
        .cloned()
        .collect();
    (objects, marks)
}

/// Poll `url` until it shows every batch of `want` (adoption runs once a
/// lease has lapsed), or give up after 120 s (three logs of ~150k rows
/// each, under the full suite's load).
async fn wait_for(url: &str, want: &BTreeSet<String>) -> BTreeMap<String, i64> {
    let started = Instant::now();
    loop {
        let present = batches_present(url).await;
        if want.iter().all(|id| present.contains_key(id)) || started.elapsed().as_secs() > 120 {
            return present;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_nothing_and_another_node_adopts_the_log() {
    let dir = setup().await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next = [0usize; 3];
    let mut only_in_the_log = 0;
    for round in 0..3u64 {
        // Round 0 never flushes: its rows reach the table only through the
        // next node's adoption. Later rounds flush every 300 ms, so kills
        // land around flushes and adoptions of the previous log.
        let args = log_args(if round == 0 { "600000" } else { "300" });
        let run = Duration::from_millis(800 + 700 * round);
        kill_during_ingest(dir.path(), &args, run, &mut next, &acked).await;
        if round == 0 {
            only_in_the_log = acked.lock().unwrap().len();
        }
    }
    assert!(
        only_in_the_log > 5,
        "round 0 acknowledged too little to mean anything: {only_in_the_log}"
    );
    let server = Server::start_with(dir.path(), &log_args("300"));
    for (client, n) in next.iter().enumerate() {
        ingest_loop(server.url.clone(), client, *n..*n + 1, acked.clone()).await;
    }
    let acked = acked.lock().unwrap().clone();
    let present = wait_for(&server.url, &acked).await;
    eprintln!(
        "object-log kill -9 test: {} batches acknowledged ({only_in_the_log} only in the first log), {} present",
        acked.len(),
        present.len()
    );
    assert_each_acked_whole(&acked, &present);
    // Wait out the last killed node's lease, so its log is adopted too
    // (it may hold parts of requests that were never acknowledged): then
    // only the live node's own mark is left.
    let started = Instant::now();
    let marks = async || {
        let (_, keys) = logs_left(dir.path()).await;
        keys.iter()
            .filter(|k| k.starts_with("raindrop.wal."))
            .count()
    };
    while marks().await > 1 && started.elapsed().as_secs() < 30 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A clean stop retires the last log at once.
    sigterm_and_wait(server);
    let (objects, marks) = logs_left(dir.path()).await;
    assert_eq!(objects, Vec::<String>::new(), "log objects left behind");
    assert_eq!(marks, Vec::<String>::new(), "log marks left in the table");
    let server = Server::start_with(dir.path(), &log_args("300"));
    assert_eq!(batches_present(&server.url).await, present);
}

fn signal(server: &Server, sig: &str) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_whose_log_was_adopted_commits_nothing_twice() {
    let dir = setup().await;
    // A flushes every 5 s: the rows below are only in its log and buffer
    // when it is paused.
    let a = Server::start_with(dir.path(), &log_args("5000"));
    let mut c = RaindropClient::connect(&a.url, TOKEN).await.unwrap();
    let mut acked = BTreeSet::new();
    // Three without request ids: only the log's mark keeps them from being
    // committed twice.
    for k in 0..5 {
        let id = format!("z{k}");
        let rows = vec![crate::common::id_batch(&id, ROWS)];
        let n = if k < 3 {
            c.ingest(None, "raw_events", IngestMode::Append, rows).await
        } else {
            c.ingest_events_once(&id, rows).await
        }
        .unwrap();
        assert_eq!(n as usize, ROWS);
        acked.insert(id);
    }
    // A stops renewing its lease (a long pause, a partition) but lives.
    signal(&a, "-STOP");
    let b = Server::start_with(dir.path(), &log_args("300"));
    let present = wait_for(&b.url, &acked).await;
    assert_eq!(
        present,
        acked.iter().map(|id| (id.clone(), ROWS as i64)).collect(),
        "B adopted A's log"
    );
    // A wakes up with rows it still thinks are its own to commit.
    signal(&a, "-CONT");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused = c
        .ingest_events_once("late", vec![crate::common::id_batch("late", ROWS)])
        .await
        .expect_err("a node whose log was adopted must refuse rows");
    let message = refused.to_string();
    assert!(
        message.contains("lease") && message.contains("restart"),
        "{message}"
    );
    // Another flush interval of A's: still every row once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(batches_present(&b.url).await, present);
    let (objects, marks) = logs_left(dir.path()).await;
    assert_eq!(objects, Vec::<String>::new(), "A's log objects left behind");
    assert_eq!(marks, Vec::<String>::new(), "A's mark left in the table");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_of_one_request_are_all_answered_and_logged_once() {
    let dir = setup().await;
    let server = Server::start_with(dir.path(), &log_args("300"));
    // A client that timed out and retried, many times over, while the
    // first attempt may still be in flight: every attempt gets the same
    // answer, and the rows are logged and committed once.
    let mut tasks = vec![];
    for _ in 0..8 {
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = RaindropClient::connect(&url, TOKEN).await.unwrap();
            c.ingest_events_once("same", vec![crate::common::id_batch("same", ROWS)])
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap() as usize, ROWS);
    }
    let want = BTreeMap::from([("same".to_string(), ROWS as i64)]);
    assert_eq!(batches_present(&server.url).await, want);
    sigterm_and_wait(server);
    let server = Server::start_with(dir.path(), &log_args("300"));
    assert_eq!(batches_present(&server.url).await, want);
}
