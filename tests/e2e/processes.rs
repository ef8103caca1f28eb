//! Process-level tests with the real binary: two servers sharing one
//! catalog, and `kill -9` during sustained ingest. Acknowledged rows must be
//! present exactly once; no batch may be partially visible.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use raindrop::client::RaindropClient;
use raindrop::tenant::{Role, tokens};

pub(crate) const TOKEN: &str = "process-test-token-0123456789";
pub(crate) const ROWS: usize = 400;

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        Self::start_with(dir, &[])
    }

    pub(crate) fn start_with(dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(crate::common::raindrop_bin())
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--log",
                "warn",
                "--data-dir",
            ])
            .arg(dir)
            .args(crate::common::backend_args(dir))
            .args(extra)
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

    /// Node `n` of several sharing `dir`'s catalog and warehouse: each
    /// needs a write-ahead log of its own.
    fn node(dir: &Path, n: usize) -> Server {
        let wal = dir.join(format!("wal-{n}"));
        Self::start_with(dir, &["--wal-dir", wal.to_str().unwrap()])
    }

    pub(crate) fn kill9(mut self) {
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
    crate::common::id_batch(id, ROWS)
}

/// Rows per batch id ("c1b7") present in the table, as the server at
/// `url` sees them; panics on duplicate rows.
pub(crate) async fn batches_present(url: &str) -> BTreeMap<String, i64> {
    let mut c = RaindropClient::connect(url, TOKEN).await.unwrap();
    crate::common::rows_per_batch(&mut c).await
}

/// Ingest `batches` for `client`, each with its id as request id; stop at
/// the first error (the server died: the round is over).
pub(crate) async fn ingest_loop(
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

/// A dir for servers on the suite's backend, with [`TOKEN`] where they
/// read tokens (on PostgreSQL: the catalog database, shared by all nodes).
pub(crate) async fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = crate::common::token_source(dir.path());
    tokens::create(&source, TOKEN, Some("acme"), Role::ReadWrite, "")
        .await
        .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_catalog() {
    let dir = setup().await;
    let a = Server::node(dir.path(), 0);
    let b = Server::node(dir.path(), 1);
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
    // A node reads the rows it acknowledged at once, another node's once
    // they are committed: the `Flush` action commits them now.
    for url in [&a.url, &b.url] {
        let mut c = RaindropClient::connect(url, TOKEN).await.unwrap();
        c.action(arrow_flight::Action::new("Flush", ""))
            .await
            .unwrap();
    }
    for url in [&a.url, &b.url] {
        let present = batches_present(url).await;
        assert_eq!(present.keys().cloned().collect::<BTreeSet<_>>(), acked);
        assert!(present.values().all(|n| *n == ROWS as i64));
    }
}

/// A client that retries on another node (its first node timed out, or a
/// load balancer moved it) must not get its batch committed twice: every
/// node learns the ids other nodes committed before it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_another_node_is_not_committed_twice() {
    let dir = setup().await;
    let (a, b) = (Server::node(dir.path(), 0), Server::node(dir.path(), 1));
    let mut on_a = RaindropClient::connect(&a.url, TOKEN).await.unwrap();
    let mut on_b = RaindropClient::connect(&b.url, TOKEN).await.unwrap();
    // Node b is already writing (its id memory is loaded) before a commits.
    on_b.ingest_events_once("w", vec![batch("w")])
        .await
        .unwrap();
    on_a.ingest_events_once("x", vec![batch("x")])
        .await
        .unwrap();
    let again = on_b
        .ingest_events_once("x", vec![batch("x")])
        .await
        .unwrap();
    assert_eq!(again as usize, ROWS, "the retry reports the original rows");
    let want = BTreeMap::from([
        ("w".to_string(), ROWS as i64),
        ("x".to_string(), ROWS as i64),
    ]);
    assert_eq!(batches_present(&b.url).await, want);
    // Both nodes buffered "x" (b could not know a's unflushed rows); each
    // flush leaves out what the table already holds: committed once.
    sigterm_and_wait(a);
    sigterm_and_wait(b);
    let c = Server::node(dir.path(), 2);
    assert_eq!(batches_present(&c.url).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_acknowledged_row() {
    let dir = setup().await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next = [0usize; 3];
    // Flushes every 300 ms, so the kills below land before, during and
    // after flushes, and during the replay of the previous kill's log.
    let flushing = ["--flush-interval-ms", "300"];
    for round in 0..4u64 {
        let run = Duration::from_millis(600 + 250 * round);
        kill_during_ingest(dir.path(), &flushing, run, &mut next, &acked).await;
    }
    // Final round: finish the in-doubt batches, then check.
    let server = Server::start_with(dir.path(), &flushing);
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
    assert_each_acked_whole(&acked, &present);

    // Files written by commits that never happened are found, are not
    // referenced by any snapshot, and can be deleted without changing a row.
    // Nothing may commit meanwhile (with no age limit, a flush's file
    // written before the listing and committed after it would look
    // orphaned): stop the server, which flushes, and check with a new one.
    sigterm_and_wait(server);
    let warehouse = raindrop::catalog::open(&crate::common::storage_config(dir.path()))
        .await
        .unwrap();
    let table = warehouse.raw_events().await.unwrap();
    let report = raindrop::maintenance::find_orphan_files(&warehouse.store, &table, Duration::ZERO)
        .await
        .unwrap();
    eprintln!(
        "kill -9 test: {} data files, {} referenced, {} orphans",
        report.on_disk,
        report.referenced,
        report.orphans.len()
    );
    assert_eq!(report.on_disk, report.referenced + report.orphans.len());
    raindrop::maintenance::delete_orphans(&warehouse.store, &report)
        .await
        .unwrap();
    let server = Server::start_with(dir.path(), &flushing);
    assert_eq!(batches_present(&server.url).await, present);
}

/// One round of `kill -9` during ingest: a server with `args` over `dir`,
/// three clients ingesting from `next` for `run`, then the plug pulled.
/// Each client's `next` moves to its first unacknowledged batch (retried
/// later with the same request id: it may or may not have committed).
pub(crate) async fn kill_during_ingest(
    dir: &Path,
    args: &[&str],
    run: Duration,
    next: &mut [usize; 3],
    acked: &Arc<Mutex<BTreeSet<String>>>,
) {
    let server = Server::start_with(dir, args);
    let mut tasks = vec![];
    for (client, from) in next.iter().enumerate() {
        tasks.push(tokio::spawn(ingest_loop(
            server.url.clone(),
            client,
            *from..*from + 1000,
            acked.clone(),
        )));
    }
    tokio::time::sleep(run).await;
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let a = acked.lock().unwrap();
    for (client, n) in next.iter_mut().enumerate() {
        while a.contains(&format!("c{client}b{n}")) {
            *n += 1;
        }
    }
}

/// Every acknowledged batch is present with all its rows, and no batch
/// present is partial.
pub(crate) fn assert_each_acked_whole(acked: &BTreeSet<String>, present: &BTreeMap<String, i64>) {
    for id in acked {
        assert_eq!(
            present.get(id),
            Some(&(ROWS as i64)),
            "acknowledged batch {id} missing or partial"
        );
    }
    for (id, n) in present {
        assert_eq!(*n, ROWS as i64, "batch {id} is partially visible");
    }
}

/// `raindrop serve` with one S3 or catalog setting wrong: exits non-zero
/// at once, with one line naming the setting to fix. (S3 suite only: the
/// local suite has no store to misconfigure.)
#[test]
fn bad_storage_settings_fail_at_start_naming_the_setting() {
    if crate::common::s3pg().is_none() {
        eprintln!("skipped: needs RAINDROP_TEST_BACKEND=s3pg");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = crate::common::backend_args(dir.path());
    let with = |flag: &str, value: &str| {
        let mut args = base.clone();
        match args.iter().position(|a| a == flag) {
            Some(i) => args[i + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
        args
    };
    let cases = [
        (
            with("--s3-secret-access-key", "not-the-secret"),
            "credentials rejected",
        ),
        (
            with("--warehouse", "s3://no-such-bucket/x"),
            "bucket no-such-bucket does not exist",
        ),
        (
            with("--s3-endpoint", "http://127.0.0.1:9"),
            "cannot reach the S3 endpoint http://127.0.0.1:9",
        ),
        (
            with(
                "--catalog-uri",
                "postgres://postgres:pw@127.0.0.1:9/raindrop",
            ),
            "cannot open the catalog at postgres://postgres:***@127.0.0.1:9/raindrop (--catalog-uri)",
        ),
    ];
    for (args, want) in cases {
        let started = std::time::Instant::now();
        let out = Command::new(crate::common::raindrop_bin())
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--log",
                "off",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(
            stderr.contains(want),
            "{args:?}: wanted {want:?} in {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            !stderr.contains(&std::env::var("AWS_SECRET_ACCESS_KEY").unwrap()),
            "secret in {stderr}"
        );
        // Retries back off, but a misconfiguration is not retried forever.
        assert!(started.elapsed() < Duration::from_secs(60), "{args:?}");
    }
}

/// Maintenance runs on one node at a time, the holder of a lease in the
/// catalog database; when that node is killed, another takes the lease
/// over and does the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_moves_to_another_node_when_its_holder_dies() {
    use raindrop::catalog::lease::Lease;
    let dir = setup().await;
    // Unbuffered ingest: each `DoPut` below is a commit of its own.
    let args = [
        "--flush-interval-ms",
        "0",
        "--compact-interval-secs",
        "1",
        "--maintenance-lease-secs",
        "2",
        "--compact-min-files",
        "2",
    ];
    let mut nodes: Vec<Server> = (0..3)
        .map(|n| {
            let wal = dir.path().join(format!("wal-{n}"));
            let mut args = args.to_vec();
            args.extend(["--wal-dir", wal.to_str().unwrap()]);
            Server::start_with(dir.path(), &args)
        })
        .collect();
    let warehouse = raindrop::catalog::open(&crate::common::storage_config(dir.path()))
        .await
        .unwrap();
    let observer = Lease::open(
        &warehouse.catalog_uri,
        &warehouse.catalog_name,
        "maintenance",
        "observer".into(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    // The pid of the valid holder other than `not`, once there is one.
    let holder = async |not: Option<u32>| -> u32 {
        for _ in 0..300 {
            if let Some((holder, true)) = observer.current().await.unwrap() {
                let pid: u32 = holder.split('/').nth(1).unwrap().parse().unwrap();
                if Some(pid) != not {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no valid maintenance lease holder within 30 s");
    };
    let first = holder(None).await;
    let i = nodes
        .iter()
        .position(|n| n.child.id() == first)
        .expect("the holder is one of the nodes");
    nodes.remove(i).kill9();

    let second = holder(Some(first)).await;
    assert!(
        nodes.iter().any(|n| n.child.id() == second),
        "the new holder {second} is a surviving node"
    );
    // The new holder compacts: three one-file commits into one partition
    // (through another node) become one file.
    let other = nodes.iter().find(|n| n.child.id() != second).unwrap();
    let mut c = RaindropClient::connect(&other.url, TOKEN).await.unwrap();
    for k in 0..3 {
        let id = format!("m{k}");
        c.ingest_events_once(&id, vec![batch(&id)]).await.unwrap();
    }
    let ident = warehouse.raw_events_ident();
    let mut compacted = false;
    for _ in 0..300 {
        let table = warehouse.catalog.load_table(&ident).await.unwrap();
        compacted = table
            .metadata()
            .snapshots()
            .any(|s| s.summary().operation == iceberg::spec::Operation::Replace);
        if compacted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(compacted, "no compaction within 30 s after the takeover");
    assert_eq!(
        batches_present(&other.url).await,
        BTreeMap::from([
            ("m0".into(), ROWS as i64),
            ("m1".into(), ROWS as i64),
            ("m2".into(), ROWS as i64)
        ])
    );
}

/// An admin's schema change on one node reaches the others at once: a
/// node that loaded the old schema accepts the new column on its next
/// `DoPut`, and a write-ahead log written before the change replays after
/// it, its rows reading the new column as null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_reaches_every_node_and_older_logs_replay() {
    let dir = setup().await;
    let admin = "process-admin-token-0123456789";
    tokens::create(
        &crate::common::token_source(dir.path()),
        admin,
        None,
        Role::Admin,
        "",
    )
    .await
    .unwrap();
    // Flushed only when asked: the rows stay in each node's log.
    let node = |n: usize| {
        let wal = dir.path().join(format!("wal-{n}"));
        Server::start_with(
            dir.path(),
            &[
                "--wal-dir",
                wal.to_str().unwrap(),
                "--flush-interval-ms",
                "3600000",
            ],
        )
    };
    let (a, b) = (node(0), node(1));
    let mut on_b = RaindropClient::connect(&b.url, TOKEN).await.unwrap();
    on_b.ingest_events(vec![batch("bold")]).await.unwrap();
    let mut on_a = RaindropClient::connect(&a.url, TOKEN).await.unwrap();
    on_a.ingest_events(vec![batch("aold")]).await.unwrap();
    a.kill9();
    let a = node(0);
    let mut as_admin = RaindropClient::connect(&a.url, admin).await.unwrap();
    crate::common::update(
        &mut as_admin,
        "ALTER TABLE wildedge.raw_events ADD COLUMN gpu_temp DOUBLE",
    )
    .await
    .unwrap();
    let temps: arrow::array::ArrayRef = Arc::new(arrow::array::Float64Array::from_iter_values(
        (0..ROWS).map(|i| i as f64),
    ));
    let new = crate::common::with_columns(batch("bnew"), vec![("gpu_temp", temps)]);
    on_b.ingest_events(vec![new]).await.unwrap();
    for url in [&a.url, &b.url] {
        let mut c = RaindropClient::connect(url, TOKEN).await.unwrap();
        c.action(arrow_flight::Action::new("Flush", ""))
            .await
            .unwrap();
    }
    let want = BTreeMap::from([
        ("aold".to_string(), ROWS as i64),
        ("bnew".to_string(), ROWS as i64),
        ("bold".to_string(), ROWS as i64),
    ]);
    for url in [&a.url, &b.url] {
        assert_eq!(batches_present(url).await, want);
        let mut c = RaindropClient::connect(url, TOKEN).await.unwrap();
        let nulls = crate::common::count(
            &mut c,
            "SELECT count(*) FROM wildedge.raw_events WHERE gpu_temp IS NULL",
        )
        .await;
        assert_eq!(nulls, 2 * ROWS as i64);
    }
}

/// Tokens are shared by every node: one created with `raindrop token
/// create` works on all of them, and one revoked stops working on all
/// (on PostgreSQL through the catalog database; locally through the
/// shared token file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_created_or_revoked_once_reach_every_node() {
    let dir = setup().await;
    let nodes = [Server::node(dir.path(), 0), Server::node(dir.path(), 1)];
    let cli = |args: &[&str]| {
        let out = Command::new(crate::common::raindrop_bin())
            .arg("token")
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .args(crate::common::token_args(dir.path()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let secret = cli(&[
        "create",
        "--project",
        "acme",
        "--role",
        "read",
        "--label",
        "shared",
    ])
    .trim()
    .to_string();
    // Within a few refresh intervals (2 s each) every node accepts it...
    let accepted = async |url: &str, want: bool| {
        for _ in 0..100 {
            let ok = match RaindropClient::connect(url, &secret).await {
                Ok(mut c) => c.query("SELECT 1").await.is_ok(),
                Err(_) => false,
            };
            if ok == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{url}: token accepted should be {want} within 10 s");
    };
    for node in &nodes {
        accepted(&node.url, true).await;
    }
    // ...and once revoked, every node refuses it.
    let listed = cli(&["list"]);
    let id = listed
        .lines()
        .find(|l| l.trim_end().ends_with("shared"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the new token is listed")
        .to_string();
    cli(&["revoke", &id]);
    for node in &nodes {
        accepted(&node.url, false).await;
    }
}

/// The status line and body of `GET path` on `addr`, over plain HTTP/1.0.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// SIGTERM while a `DoPut` is mid-stream: the stream is allowed to finish
/// and is acknowledged, `/readyz` answers 503 meanwhile, no new call is
/// served, the process exits 0, and the rows are there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_put_finish() {
    let dir = setup().await;
    let http = format!("127.0.0.1:{}", crate::common::free_port());
    let mut server = Server::start_with(dir.path(), &["--http-addr", &http]);
    assert!(
        http_get(&http, "/readyz")
            .unwrap()
            .starts_with("HTTP/1.0 200")
    );

    let (tx, rx) = futures::channel::mpsc::unbounded::<RecordBatch>();
    tx.unbounded_send(batch("d0")).unwrap();
    let mut client = RaindropClient::connect(&server.url, TOKEN).await.unwrap();
    let put = tokio::spawn(async move { client.ingest_events_stream("drain", rx).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!put.is_finished(), "the DoPut ended before its stream did");

    let pid = server.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let mut draining = String::new();
    for _ in 0..100 {
        draining = http_get(&http, "/readyz").unwrap_or_default();
        if draining.starts_with("HTTP/1.0 503") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        draining.starts_with("HTTP/1.0 503") && draining.contains("shutting down"),
        "/readyz while draining: {draining}"
    );
    let fresh = tokio::time::timeout(Duration::from_secs(3), async {
        let mut c = RaindropClient::connect(&server.url, TOKEN).await?;
        c.query("SELECT 1").await
    })
    .await;
    assert!(
        !matches!(fresh, Ok(Ok(_))),
        "a new call was served while draining"
    );

    // The open stream still delivers, and is committed and acknowledged.
    tx.unbounded_send(batch("d1")).unwrap();
    drop(tx);
    let rows = tokio::time::timeout(Duration::from_secs(30), put)
        .await
        .expect("the in-flight DoPut was not answered")
        .unwrap()
        .expect("the in-flight DoPut failed");
    assert_eq!(rows as usize, 2 * ROWS);
    let exited = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (server, status)
    });
    let (_server, status) = tokio::time::timeout(Duration::from_secs(30), exited)
        .await
        .expect("the server did not exit after draining")
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let restarted = Server::start(dir.path());
    let present = batches_present(&restarted.url).await;
    let want = BTreeMap::from([
        ("d0".to_string(), ROWS as i64),
        ("d1".to_string(), ROWS as i64),
    ]);
    assert_eq!(present, want);
}

/// Crash states of buffered ingest, with the real binary: a segment left
/// on disk after its flush committed (a crash between the commit and the
/// deletion: put back here) replays nothing; a segment acknowledged but
/// never flushed (`kill -9`) is replayed and committed once at start;
/// request ids of both stay known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_replays_exactly_what_the_table_lacks() {
    let dir = setup().await;
    let never = ["--flush-interval-ms", "3600000"];
    let server = Server::start_with(dir.path(), &never);
    let mut c = RaindropClient::connect(&server.url, TOKEN).await.unwrap();
    c.ingest_events_once("committed", vec![batch("c")])
        .await
        .unwrap();
    let saved: Vec<_> = crate::wal::segments(dir.path())
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect();
    assert!(
        saved.iter().any(|(_, b)| !b.is_empty()),
        "the row is logged"
    );
    // SIGTERM flushes (commits "c" and deletes its segment)...
    sigterm_and_wait(server);
    // ...and the segment comes back, as if the process died just before
    // deleting it.
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }

    let server = Server::start_with(dir.path(), &never);
    let mut c = RaindropClient::connect(&server.url, TOKEN).await.unwrap();
    c.ingest_events_once("pending", vec![batch("p")])
        .await
        .unwrap();
    let want = BTreeMap::from([
        ("c".to_string(), ROWS as i64),
        ("p".to_string(), ROWS as i64),
    ]);
    assert_eq!(batches_present(&server.url).await, want);
    server.kill9();

    let server = Server::start_with(dir.path(), &never);
    assert_eq!(batches_present(&server.url).await, want);
    // Replayed rows are committed at start, not at the next interval: the
    // log holds only the new, empty segment once that is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while crate::wal::segments(dir.path()).len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "replayed rows were not flushed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warehouse = raindrop::catalog::open(&crate::common::storage_config(dir.path()))
        .await
        .unwrap();
    let table = warehouse.raw_events().await.unwrap();
    let committed: i64 = table
        .metadata()
        .current_snapshot()
        .and_then(|s| {
            s.summary()
                .additional_properties
                .get("total-records")
                .cloned()
        })
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(committed, 2 * ROWS as i64, "each row committed once");
    let mut c = RaindropClient::connect(&server.url, TOKEN).await.unwrap();
    for (id, b) in [("committed", "c"), ("pending", "p")] {
        let n = c.ingest_events_once(id, vec![batch(b)]).await.unwrap();
        assert_eq!(n as usize, ROWS);
    }
    assert_eq!(batches_present(&server.url).await, want);
}

/// SIGTERM `server` and wait for it to exit cleanly.
pub(crate) fn sigterm_and_wait(mut server: Server) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "server exited with {status}");
}
