//! The object store, or the catalog database, goes away during ingest and
//! comes back (S3 + PostgreSQL suite only): clients get retryable errors
//! while it is down, nothing acknowledged is lost or doubled, nothing
//! partial is visible, and the server recovers by itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
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

/// An S3 server of the test's own over a temp dir, which the test may
/// stop and start again on the same port and files.
struct OwnS3 {
    root: tempfile::TempDir,
    port: u16,
}

impl OwnS3 {
    /// A new store with bucket `faults`, and its server started.
    fn start_new() -> (OwnS3, S3Process) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("faults")).unwrap();
        let own = OwnS3 {
            root,
            port: free_port(),
        };
        let process = own.start();
        (own, process)
    }

    fn start(&self) -> S3Process {
        start_s3(self.port, self.root.path())
    }

    /// A server whose warehouse is in this store, `adjust`ed.
    async fn server(
        &self,
        adjust: impl FnOnce(&mut raindrop::config::ServeConfig),
    ) -> (raindrop::server::ServerHandle, tempfile::TempDir) {
        let port = self.port;
        custom_server(|c| {
            c.storage.warehouse = Some("s3://faults/wh".into());
            c.storage.s3.endpoint = Some(format!("http://127.0.0.1:{port}"));
            adjust(c);
        })
        .await
    }
}

fn batch(id: &str) -> RecordBatch {
    id_batch(id, ROWS)
}

/// Ingest `ids` (one batch each, the id as request id) while something is
/// down: the acknowledged go to `acked`; every refusal must say "retry".
/// Returns the refused ids.
async fn ingest_while_down(
    client: &mut RaindropClient,
    ids: impl IntoIterator<Item = String>,
    acked: &mut Vec<String>,
) -> Vec<String> {
    let mut refused = vec![];
    for id in ids {
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
                    "not retryable while down: {status:?}"
                );
                refused.push(id);
            }
        }
    }
    refused
}

/// Retry each refused id (same request id) until it is committed, within
/// `within` of now: the server must recover by itself.
async fn retry_until_committed(
    client: &mut RaindropClient,
    refused: Vec<String>,
    acked: &mut Vec<String>,
    within: Duration,
) {
    let started = Instant::now();
    for id in refused {
        loop {
            match client.ingest_events_once(&id, vec![batch(&id)]).await {
                Ok(n) => {
                    assert_eq!(n as usize, ROWS);
                    acked.push(id);
                    break;
                }
                Err(e) if started.elapsed() < within => {
                    eprintln!("still failing after the restart: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no recovery within {within:?}: {e}"),
            }
        }
    }
}

/// The table holds every acknowledged batch exactly once and whole, and
/// nothing else.
async fn assert_exactly(client: &mut RaindropClient, acked: &[String]) {
    let want: BTreeMap<String, i64> = acked.iter().map(|id| (id.clone(), ROWS as i64)).collect();
    assert_eq!(
        rows_per_batch(client).await,
        want,
        "acknowledged rows lost or partial, or unacknowledged rows visible"
    );
}

/// Ingest `ids` that must all be acknowledged.
async fn ingest_all(
    client: &mut RaindropClient,
    ids: std::ops::Range<usize>,
    acked: &mut Vec<String>,
) {
    for k in ids {
        let id = format!("f{k}");
        let n = client
            .ingest_events_once(&id, vec![batch(&id)])
            .await
            .unwrap();
        assert_eq!(n as usize, ROWS);
        acked.push(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_outage_loses_nothing_and_heals() {
    let Some(_) = s3pg() else {
        eprintln!("skipped: needs RAINDROP_TEST_BACKEND=s3pg");
        return;
    };
    let (store, s3) = OwnS3::start_new();
    let (server, _dir) = store.server(|_| {}).await;
    let mut client = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    let mut acked = vec![];
    ingest_all(&mut client, 0..3, &mut acked).await;

    drop(s3);
    let refused = ingest_while_down(&mut client, (3..6).map(|k| format!("f{k}")), &mut acked).await;
    assert!(
        !refused.is_empty(),
        "no write failed while the store was down"
    );

    // Back: the refused requests, retried with their ids, land once.
    let _s3 = store.start();
    retry_until_committed(&mut client, refused, &mut acked, Duration::from_secs(30)).await;
    assert_exactly(&mut client, &acked).await;
}

/// With the log on object storage: a repeat of a request whose PUT is
/// still in flight gets that PUT's outcome. Here the store is down, so
/// both fail; answering the repeat "deduplicated" at once would have
/// acknowledged rows that were never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_of_a_request_being_logged_gets_its_outcome() {
    let Some(_) = s3pg() else {
        eprintln!("skipped: needs RAINDROP_TEST_BACKEND=s3pg");
        return;
    };
    let (store, s3) = OwnS3::start_new();
    let (server, _dir) = store
        .server(|c| {
            c.limits.flush_interval_ms = 1000;
            c.wal_storage = raindrop::config::WalStorage::Warehouse;
        })
        .await;
    let mut acked = vec![];
    let mut client = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    ingest_all(&mut client, 0..2, &mut acked).await;

    drop(s3);
    let url = server.url();
    let first = tokio::spawn(async move {
        let mut c = RaindropClient::connect(&url, ACME_TOKEN).await.unwrap();
        c.ingest_events_once("r", vec![batch("r")]).await
    });
    // The first attempt's PUT is being retried against the dead store.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let repeat = client.ingest_events_once("r", vec![batch("r")]).await;
    assert!(repeat.is_err(), "a repeat was acknowledged: {repeat:?}");
    assert!(first.await.unwrap().is_err(), "written to a dead store");

    let _s3 = store.start();
    retry_until_committed(
        &mut client,
        vec!["r".into()],
        &mut acked,
        Duration::from_secs(30),
    )
    .await;
    client
        .action(arrow_flight::Action::new("Flush", ""))
        .await
        .unwrap();
    assert_exactly(&mut client, &acked).await;
}

/// A PostgreSQL cluster of the test's own (so stopping it disturbs no
/// other test), in a temp dir; stopped when dropped.
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    fn start_new() -> Postgres {
        let bin =
            PathBuf::from(std::env::var("RAINDROP_TEST_PG_BIN").expect("RAINDROP_TEST_PG_BIN"));
        let dir = tempfile::tempdir().unwrap();
        // PostgreSQL refuses to run as root: root runs it as `postgres`,
        // which must reach the directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pg = Postgres {
            bin,
            dir,
            port: free_port(),
        };
        std::fs::create_dir(pg.home()).unwrap();
        if Self::as_root() {
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(pg.home())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let init = pg
            .tool("initdb")
            .arg("-D")
            .arg(pg.home().join("data"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(init.success(), "initdb failed");
        pg.start();
        let created = Command::new(pg.bin.join("psql"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-c", "CREATE DATABASE raindrop"])
            .status()
            .unwrap();
        assert!(created.success());
        pg
    }

    fn as_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("pg")
    }

    fn tool(&self, name: &str) -> Command {
        if Self::as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(name));
            c
        } else {
            Command::new(self.bin.join(name))
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let status = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.home().join("data"))
            .args(["-w", "-s"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    fn start(&self) {
        let home = self.home();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            home.display()
        );
        let log = home.join("log");
        self.pg_ctl(&["-l", log.to_str().unwrap(), "-o", &options, "start"]);
    }

    /// Stop as an operator would for a restart: sessions are cut off and
    /// open transactions rolled back.
    fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    fn uri(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/raindrop", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.tool("pg_ctl")
            .arg("-D")
            .arg(self.home().join("data"))
            .args(["-w", "-s", "-m", "immediate", "stop"])
            .status()
            .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_database_outage_loses_nothing_and_heals() {
    let Some(_) = s3pg() else {
        eprintln!("skipped: needs RAINDROP_TEST_BACKEND=s3pg");
        return;
    };
    let pg = Postgres::start_new();
    let (server, _dir) = custom_server(|c| c.storage.catalog_uri = Some(pg.uri())).await;
    let mut client = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    let mut acked = vec![];
    ingest_all(&mut client, 0..3, &mut acked).await;

    // Down for longer than a request waits for a connection (30 s): the
    // request is refused, retryably. Tokens keep working from memory.
    pg.stop();
    let refused = ingest_while_down(&mut client, ["f3".to_string()], &mut acked).await;
    assert_eq!(
        refused,
        ["f3"],
        "a write succeeded with the catalog database down"
    );

    // Down briefly: a request sent meanwhile waits for the database and
    // then commits, or is refused retryably.
    let mut other = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let mut acked = vec![];
        let refused = ingest_while_down(&mut other, ["f4".to_string()], &mut acked).await;
        (other, acked, refused)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.start();
    let (_, waited_acked, mut refused_too) = waiting.await.unwrap();
    acked.extend(waited_acked);
    refused_too.extend(refused);

    retry_until_committed(
        &mut client,
        refused_too,
        &mut acked,
        Duration::from_secs(60),
    )
    .await;
    ingest_all(&mut client, 5..7, &mut acked).await;
    assert_exactly(&mut client, &acked).await;
}
