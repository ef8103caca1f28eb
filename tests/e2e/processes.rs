//! Process-level tests with the real binary: two servers sharing one
//! catalog, and `kill -9` during sustained ingest. Acknowledged rows must be
//! present exactly once; no batch may be partially visible.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::Int64Type;
use raindrop::client::RaindropClient;
use raindrop::tenant::{Role, tokens};

const TOKEN: &str = "process-test-token-0123456789";
const ROWS: usize = 400;

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_raindrop"))
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--log",
                "warn",
                "--data-dir",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(addr) = line.split("listening on grpc://").nth(1) {
                break format!("http://{}", addr.trim());
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn batch(id: &str) -> RecordBatch {
    let ids: Vec<String> = (0..ROWS).map(|i| format!("{id}-{i}")).collect();
    let ts: Vec<i64> = (0..ROWS as i64)
        .map(|i| 1_780_000_000_000_000 + i * 1_000_000)
        .collect();
    RecordBatch::try_from_iter(vec![
        ("event_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        (
            "event_type",
            Arc::new(StringArray::from(vec!["inference"; ROWS])),
        ),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        ),
    ])
    .unwrap()
}

/// Rows per batch id ("c1b7") present in the table.
async fn batches_present(url: &str) -> BTreeMap<String, i64> {
    let mut c = RaindropClient::connect(url, TOKEN).await.unwrap();
    let rows = c
        .query("SELECT split_part(event_id, '-', 1) AS b, count(*) AS n, count(DISTINCT event_id) AS d FROM wildedge.raw_events GROUP BY 1")
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for r in &rows {
        let b = r.column(0).as_string::<i32>();
        let n = r.column(1).as_primitive::<Int64Type>();
        let d = r.column(2).as_primitive::<Int64Type>();
        for i in 0..r.num_rows() {
            assert_eq!(
                n.value(i),
                d.value(i),
                "duplicate rows in batch {}",
                b.value(i)
            );
            out.insert(b.value(i).to_string(), n.value(i));
        }
    }
    out
}

/// Ingest `batches` for `client`, each with its id as request id; stop at
/// the first error (the server died: the round is over).
async fn ingest_loop(
    url: String,
    client: usize,
    batches: std::ops::Range<usize>,
    acked: Arc<Mutex<BTreeSet<String>>>,
) {
    let Ok(mut c) = RaindropClient::connect(&url, TOKEN).await else {
        return;
    };
    for k in batches {
        let id = format!("c{client}b{k}");
        match c.ingest_events_once(&id, vec![batch(&id)]).await {
            Ok(n) => {
                assert_eq!(n as usize, ROWS);
                acked.lock().unwrap().insert(id);
            }
            Err(_) => return,
        }
    }
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    tokens::create_token(
        &dir.path().join("tokens.json"),
        TOKEN,
        Some("acme"),
        Role::ReadWrite,
        "",
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_catalog() {
    let dir = setup();
    let a = Server::start(dir.path());
    let b = Server::start(dir.path());
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut tasks = vec![];
    for client in 0..4 {
        let url = if client % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        tasks.push(tokio::spawn(ingest_loop(url, client, 0..5, acked.clone())));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 20, "every batch acknowledged");
    for url in [&a.url, &b.url] {
        let present = batches_present(url).await;
        assert_eq!(present.keys().cloned().collect::<BTreeSet<_>>(), acked);
        assert!(present.values().all(|n| *n == ROWS as i64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_acknowledged_row() {
    let dir = setup();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next = [0usize; 3];
    for round in 0..4u64 {
        let server = Server::start(dir.path());
        let mut tasks = vec![];
        for (client, from) in next.iter().enumerate() {
            tasks.push(tokio::spawn(ingest_loop(
                server.url.clone(),
                client,
                *from..*from + 1000,
                acked.clone(),
            )));
        }
        // Let ingest run, then pull the plug mid-stream.
        tokio::time::sleep(Duration::from_millis(600 + 250 * round)).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        // Resume each client at its first unacknowledged batch (retried
        // with the same request id: it may or may not have committed).
        let a = acked.lock().unwrap();
        for (client, n) in next.iter_mut().enumerate() {
            while a.contains(&format!("c{client}b{n}")) {
                *n += 1;
            }
        }
    }
    // Final round: finish the in-doubt batches, then check.
    let server = Server::start(dir.path());
    for (client, n) in next.iter().enumerate() {
        ingest_loop(server.url.clone(), client, *n..*n + 1, acked.clone()).await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "the test ingested too little to mean anything: {}",
        acked.len()
    );
    let present = batches_present(&server.url).await;
    eprintln!(
        "kill -9 test: {} batches acknowledged, {} present",
        acked.len(),
        present.len()
    );
    for id in &acked {
        assert_eq!(
            present.get(id),
            Some(&(ROWS as i64)),
            "acknowledged batch {id} missing or partial"
        );
    }
    for (id, n) in &present {
        assert_eq!(*n, ROWS as i64, "batch {id} is partially visible");
    }

    // Files written by commits that never happened are found, are not
    // referenced by any snapshot, and can be deleted without changing a row.
    let warehouse = raindrop::catalog::open(&raindrop::config::StorageConfig::in_dir(dir.path()))
        .await
        .unwrap();
    let table = warehouse.raw_events().await.unwrap();
    let report = raindrop::maintenance::find_orphan_files(&table, Duration::ZERO)
        .await
        .unwrap();
    eprintln!(
        "kill -9 test: {} data files, {} referenced, {} orphans",
        report.on_disk,
        report.referenced,
        report.orphans.len()
    );
    assert_eq!(report.on_disk, report.referenced + report.orphans.len());
    raindrop::maintenance::delete_orphans(&report).unwrap();
    assert_eq!(batches_present(&server.url).await, present);
}
