//! Test fixture: a server over a temp dir with tokens for two tenants.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::Int64Type;
use chrono::{NaiveDate, Utc};
use raindrop::client::{IngestMode, RaindropClient};
use raindrop::config::ServeConfig;
use raindrop::demo::generate::{GenConfig, ProjectData, generate_project};
use raindrop::server::ServerHandle;
use raindrop::tenant::tokens::TokenSource;
use raindrop::tenant::{Role, tokens};

pub use crate::backend::{
    backend_args, s3pg, storage_config, token_args, token_source, use_backend, warehouse_files,
};

pub const ACME: &str = "acme";
pub const GLOBEX: &str = "globex";

/// Server config of the fixture: fixed query parallelism, so plans (and the
/// `.slt` files that pin them) are the same on any machine.
fn fixture_config(dir: &Path) -> ServeConfig {
    let mut cfg = ServeConfig::in_dir(dir);
    use_backend(&mut cfg.storage, dir);
    cfg.limits.query_partitions = 2;
    // Tests that count files or snapshots compact when they choose to.
    cfg.limits.compact_interval_secs = 0;
    unbuffered(&mut cfg);
    cfg
}

/// Each `DoPut` commits before it is answered, as most tests here assume
/// (file layouts, snapshots, compaction); buffered ingest, the default,
/// is tested in `wal.rs` and by the process tests, which run the binary.
pub fn unbuffered(cfg: &mut ServeConfig) {
    cfg.limits.flush_interval_ms = 0;
}

/// A running server plus its data dir and tokens by name.
pub struct TestServer {
    pub dir: Arc<tempfile::TempDir>,
    pub handle: Option<ServerHandle>,
    pub tokens: HashMap<&'static str, String>,
    /// Where the server reads its tokens (the file, or the catalog database).
    pub token_source: TokenSource,
}

/// A token labelled `name`, in `source`.
async fn add_token(source: &TokenSource, name: &str, project: Option<&str>, role: Role) -> String {
    let secret = format!("test-token-{name}-{}", uuid::Uuid::new_v4());
    tokens::create(source, &secret, project, role, name)
        .await
        .unwrap();
    secret
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let cfg = fixture_config(dir.path());
        let source = cfg.token_source();
        let mut tokens = HashMap::new();
        for (name, project, role) in [
            ("acme", Some(ACME), Role::ReadWrite),
            ("globex", Some(GLOBEX), Role::ReadWrite),
            ("acme_read", Some(ACME), Role::Read),
            ("acme_ingest", Some(ACME), Role::Ingest),
            ("admin", None, Role::Admin),
        ] {
            tokens.insert(name, add_token(&source, name, project, role).await);
        }
        let handle = ServerHandle::start(cfg).await.unwrap();
        Self {
            dir,
            handle: Some(handle),
            tokens,
            token_source: source,
        }
    }

    pub fn url(&self) -> String {
        self.handle.as_ref().unwrap().url()
    }

    pub async fn client(&self, token: &str) -> RaindropClient {
        RaindropClient::connect(&self.url(), &self.tokens[token])
            .await
            .unwrap()
    }

    /// Stop and start again over the same directory.
    pub async fn restart(&mut self) {
        self.handle.take().unwrap().stop().await.unwrap();
        let handle = ServerHandle::start(fixture_config(self.dir.path()))
            .await
            .unwrap();
        self.handle = Some(handle);
    }

    /// The running server's catalog and storage.
    pub fn warehouse(&self) -> &raindrop::catalog::Warehouse {
        self.handle.as_ref().unwrap().services.query.warehouse()
    }

    /// The storage access log of the running server.
    pub fn access_log(&self) -> Arc<raindrop::storage::AccessLog> {
        self.handle
            .as_ref()
            .unwrap()
            .services
            .query
            .warehouse()
            .access_log
            .clone()
    }

    /// Root of `raw_events` data files (as the store keeps them).
    pub fn raw_events_data(&self) -> PathBuf {
        warehouse_files(self.dir.path()).join("wildedge/raw_events/data")
    }
}

/// Tokens (read_write) of servers started by [`custom_server`].
pub const ACME_TOKEN: &str = "custom-acme-token-0123456789";
pub const GLOBEX_TOKEN: &str = "custom-globex-token-0123456789";
pub const ADMIN_TOKEN: &str = "custom-admin-token-0123456789";

/// A server over a fresh dir with `adjust`ed config, read_write tokens
/// [`ACME_TOKEN`] and [`GLOBEX_TOKEN`], and [`ADMIN_TOKEN`]. Keep the dir
/// alive with the server.
pub async fn custom_server(
    adjust: impl FnOnce(&mut ServeConfig),
) -> (ServerHandle, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::in_dir(dir.path());
    use_backend(&mut cfg.storage, dir.path());
    unbuffered(&mut cfg);
    adjust(&mut cfg);
    for (token, project, role) in [
        (ACME_TOKEN, Some(ACME), Role::ReadWrite),
        (GLOBEX_TOKEN, Some(GLOBEX), Role::ReadWrite),
        (ADMIN_TOKEN, None, Role::Admin),
    ] {
        tokens::create(&cfg.token_source(), token, project, role, "")
            .await
            .unwrap();
    }
    (ServerHandle::start(cfg).await.unwrap(), dir)
}

/// Every Parquet file under `dir`, recursively.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out
}

/// Generated data for the two test tenants.
pub struct Dataset {
    pub acme: ProjectData,
    pub globex: ProjectData,
}

/// The fixture's 30 whole days end at `today`'s UTC midnight.
pub fn dataset_config(today: NaiveDate) -> GenConfig {
    GenConfig {
        projects: 2,
        days: 30,
        events: 24_000,
        batch_rows: 4_000,
        seed: 1234,
        // Whole days: how many files each day gets does not depend on the
        // time of day the tests run (pinned plans count them).
        end: today.and_hms_opt(0, 0, 0).expect("midnight").and_utc(),
    }
}

/// The dataset for the current UTC day, generated once per day: tests
/// compare it with queries on `current_date`, so a run that crosses
/// midnight needs the next day's data (see [`on_one_utc_day`]).
pub async fn dataset() -> &'static Dataset {
    static DATA: tokio::sync::Mutex<BTreeMap<NaiveDate, &'static Dataset>> =
        tokio::sync::Mutex::const_new(BTreeMap::new());
    let today = Utc::now().date_naive();
    let mut cache = DATA.lock().await;
    cache.entry(today).or_insert_with(|| {
        let cfg = dataset_config(today);
        Box::leak(Box::new(Dataset {
            acme: generate_project(&cfg, 0),
            globex: generate_project(&cfg, 1),
        }))
    })
}

/// Runs a test whose expectations depend on today's date, once more if it
/// failed while the UTC date changed: the fixture was loaded for one day
/// and `current_date` was evaluated on the next. Any other failure fails.
pub async fn on_one_utc_day<F, Fut>(body: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let day = Utc::now().date_naive();
    let Err(failure) = tokio::spawn(body()).await else {
        return;
    };
    if Utc::now().date_naive() == day {
        std::panic::resume_unwind(failure.into_panic());
    }
    eprintln!("the UTC date changed during the test: running it again on the new day");
    if let Err(failure) = tokio::spawn(body()).await {
        std::panic::resume_unwind(failure.into_panic());
    }
}

/// A server loaded with both tenants' telemetry and outcomes.
pub async fn loaded_server() -> TestServer {
    let server = TestServer::start().await;
    let data = dataset().await;
    for (token, project) in [("acme", &data.acme), ("globex", &data.globex)] {
        let mut c = server.client(token).await;
        for b in &project.events {
            let n = c.ingest_events(vec![b.clone()]).await.unwrap();
            assert_eq!(n as usize, b.num_rows());
        }
        let n = c
            .ingest(
                Some("warehouse"),
                "user_outcomes",
                IngestMode::Create,
                vec![project.outcomes.clone()],
            )
            .await
            .unwrap();
        assert_eq!(n as usize, project.outcomes.num_rows());
    }
    server
}

/// Single i64 value of a one-row, one-column result.
pub fn scalar_i64(batches: &[RecordBatch]) -> i64 {
    let b = batches.iter().find(|b| b.num_rows() > 0).expect("one row");
    let col = b.column(0);
    assert!(!col.is_null(0));
    col.as_primitive::<Int64Type>().value(0)
}

pub async fn count(client: &mut RaindropClient, sql: &str) -> i64 {
    scalar_i64(&client.query(sql).await.unwrap())
}

/// All string values of column `name` across batches.
pub fn strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
    let mut out = vec![];
    for b in batches {
        let col = arrow::compute::cast(
            b.column_by_name(name).unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let col = col.as_string::<i32>();
        out.extend((0..col.len()).map(|i| col.value(i).to_string()));
    }
    out
}

/// `EXPLAIN` a query and return the `files=` count of each Iceberg scan.
pub async fn planned_files(client: &mut RaindropClient, sql: &str) -> Vec<usize> {
    let plan = client.query(&format!("EXPLAIN {sql}")).await.unwrap();
    let text = strings(&plan, "plan").join("\n");
    let files: Vec<usize> = text
        .split("IcebergScanExec: ")
        .skip(1)
        .map(|s| {
            s.split("files=")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(!files.is_empty(), "no IcebergScanExec in plan:\n{text}");
    files
}

/// `rows` events with ids `<id>-<n>`, all in one day (one partition): a
/// batch whose presence, and completeness, a query can check by id.
pub fn id_batch(id: &str, rows: usize) -> RecordBatch {
    let ids: Vec<String> = (0..rows).map(|i| format!("{id}-{i}")).collect();
    let ts: Vec<i64> = (0..rows as i64)
        .map(|i| 1_780_000_000_000_000 + i * 1_000_000)
        .collect();
    RecordBatch::try_from_iter(vec![
        ("event_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        (
            "event_type",
            Arc::new(StringArray::from(vec!["inference"; rows])),
        ),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        ),
    ])
    .unwrap()
}

/// Rows per batch id (the `<id>` of [`id_batch`]'s `<id>-<n>` event ids)
/// in `raw_events`, as `client` sees them; panics on duplicate rows.
pub async fn rows_per_batch(client: &mut RaindropClient) -> BTreeMap<String, i64> {
    let rows = client
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

/// A TCP port free on loopback right now (for servers started by a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server binary the process tests start: `RAINDROP_BIN`, or
/// `raindrop` in the profile directory this test binary was built into
/// (`target/release/deps/e2e-*` -> `target/release/raindrop`). This crate is
/// not the binary's package, so cargo does not rebuild the binary for `-p
/// raindrop-e2e` or `--test e2e` alone; a binary older than the library
/// this test binary links would test old code, so that fails here.
/// Looked up once per test run: `deps/` holds thousands of files.
pub fn raindrop_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(find_raindrop_bin).clone()
}

fn find_raindrop_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("RAINDROP_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let deps = exe
        .parent()
        .expect("test binary inside target/<profile>/deps");
    let bin = deps.parent().expect("target/<profile>").join("raindrop");
    let rebuild = "run `cargo build --release --bin raindrop` (scripts/test.sh builds the whole workspace), or set RAINDROP_BIN";
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(bin_time) = modified(&bin) else {
        panic!("{} not found: {rebuild}", bin.display());
    };
    let newest_lib = std::fs::read_dir(deps)
        .expect("list target/<profile>/deps")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libraindrop-") && n.ends_with(".rlib"))
        })
        .filter_map(|p| modified(&p))
        .max();
    assert!(
        newest_lib.is_none_or(|lib| lib <= bin_time),
        "{} is older than the raindrop library: {rebuild}",
        bin.display()
    );
    bin
}

/// Snapshots of `raw_events` as `server` sees it now.
pub async fn snapshots(server: &ServerHandle) -> usize {
    let table = server
        .services
        .query
        .warehouse()
        .raw_events()
        .await
        .unwrap();
    table.metadata().snapshots().count()
}

/// The scan tasks of `table`'s current snapshot: one per live data file.
pub async fn scan_tasks(table: &iceberg::table::Table) -> Vec<iceberg::scan::FileScanTask> {
    use futures::TryStreamExt;
    table
        .scan()
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// Run update `sql` (`CommandStatementUpdate`); the error as text.
pub async fn update(client: &mut RaindropClient, sql: &str) -> Result<i64, String> {
    client
        .inner_mut()
        .execute_update(sql.to_string(), None)
        .await
        .map_err(|e| e.to_string())
}

/// `batch` with `extra` columns appended.
pub fn with_columns(batch: RecordBatch, extra: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = batch.schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .zip(batch.columns().iter().cloned())
        .chain(extra);
    RecordBatch::try_from_iter(columns).unwrap()
}
