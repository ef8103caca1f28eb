//! The object store goes away during ingest and comes back (S3 suite
//! only): clients get retryable errors while it is down, nothing
//! acknowledged is lost or doubled, nothing partial is visible, and the
//! server recovers by itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use raindrop::client::RaindropClient;

use crate::common::*;

const ROWS: usize = 200;

/// An s3s-fs process of the test's own; killed when dropped.
struct S3Process(Child);

impl Drop for S3Process {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// Start an S3 server on `port` over `root`.
fn start_s3(port: u16, root: &Path) -> S3Process {
    let bin = std::env::var("RAINDROP_TEST_S3S_BIN").expect("RAINDROP_TEST_S3S_BIN");
    let child = S3Process(
        Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &std::env::var("AWS_ACCESS_KEY_ID").unwrap()])
            .args([
                "--secret-key",
                &std::env::var("AWS_SECRET_ACCESS_KEY").unwrap(),
            ])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("s3s-fs did not listen on {port}");
}

fn batch(id: &str) -> RecordBatch {
    id_batch(id, ROWS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_outage_loses_nothing_and_heals() {
    let Some(_) = s3pg() else {
        eprintln!("skipped: needs RAINDROP_TEST_BACKEND=s3pg");
        return;
    };
    let store_root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(store_root.path().join("faults")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s3 = start_s3(port, store_root.path());
    let (server, _dir) = custom_server(|c| {
        c.storage.warehouse = Some("s3://faults/wh".into());
        c.storage.s3.endpoint = Some(format!("http://127.0.0.1:{port}"));
    })
    .await;
    let mut client = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();

    let mut acked = vec![];
    for k in 0..3 {
        let id = format!("f{k}");
        let n = client
            .ingest_events_once(&id, vec![batch(&id)])
            .await
            .unwrap();
        assert_eq!(n as usize, ROWS);
        acked.push(id);
    }

    // Down: every refusal says "retry".
    drop(s3);
    let mut refused = vec![];
    for k in 3..6 {
        let id = format!("f{k}");
        match client.ingest_events_once(&id, vec![batch(&id)]).await {
            Ok(n) => {
                assert_eq!(n as usize, ROWS);
                acked.push(id);
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Aborted
                    ),
                    "not retryable while the store is down: {status:?}"
                );
                refused.push(id);
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "no write failed while the store was down"
    );

    // Back: the server recovers by itself, and the refused requests,
    // retried with their ids, are committed once.
    let _s3 = start_s3(port, store_root.path());
    let started = Instant::now();
    for id in refused {
        loop {
            match client.ingest_events_once(&id, vec![batch(&id)]).await {
                Ok(n) => {
                    assert_eq!(n as usize, ROWS);
                    acked.push(id);
                    break;
                }
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("still failing after the restart: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no recovery within 30 s: {e}"),
            }
        }
    }

    let rows = client
        .query("SELECT split_part(event_id, '-', 1) AS b, count(*) AS n, count(DISTINCT event_id) AS d FROM wildedge.raw_events GROUP BY 1")
        .await
        .unwrap();
    let mut present = BTreeMap::new();
    for r in &rows {
        let (b, n, d) = (
            r.column(0).as_string::<i32>(),
            r.column(1).as_primitive::<Int64Type>(),
            r.column(2).as_primitive::<Int64Type>(),
        );
        for i in 0..r.num_rows() {
            assert_eq!(n.value(i), d.value(i), "duplicates in {}", b.value(i));
            assert_eq!(n.value(i) as usize, ROWS, "{} is partial", b.value(i));
            present.insert(b.value(i).to_string(), n.value(i));
        }
    }
    let want: BTreeMap<String, i64> = acked.iter().map(|id| (id.clone(), ROWS as i64)).collect();
    assert_eq!(
        present, want,
        "acknowledged rows lost, or unacknowledged rows visible"
    );
}
