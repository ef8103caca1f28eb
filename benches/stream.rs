//! Many-tenant stream benchmark (#15): telemetry as it really arrives, all
//! day, from many tenants at once, in small batches.
//!
//! - ≥ 50 tenants with Zipf-skewed volumes (`RAINDROP_BENCH_TENANTS`), uuid
//!   `event_id`s, events sent in arrival (time) order: each tenant's events
//!   sorted by time and cut into `DoPut`s of 1k, 10k and 50k rows, all
//!   tenants' batches interleaved by time;
//! - 4 and 16 concurrent clients, each holding one connection per tenant
//!   (its SDK token);
//! - reported per run: rows/s, `DoPut` p50/p99, bytes per event, metadata
//!   bytes as a share of data bytes, the most live files of one tenant-day,
//!   snapshots and manifests; DuckDB's partitioned `COPY` of the same rows
//!   (rows/s and bytes per event) in the same run.
//!
//! `RAINDROP_BENCH_SOAK_MINS=30` adds a soak: one day of events, near now,
//! cycled (with fresh `event_id`s each time round), sent in 1k-row
//! batches by 16 clients for that long with background
//! compaction and expiry at the server's defaults, sampled every minute (latency as the
//! clients, the server and its log writes saw it, metadata share,
//! files per tenant-day): are they flat? It ends with the background
//! jobs' counters (flushes, merges, compactions).
//!
//! The server runs with its defaults (buffered ingest: rows/s are given
//! until the last acknowledgement and until the final flush committed
//! everything); `RAINDROP_BENCH_FLUSH_MS=0` measures unbuffered ingest.
//! `RAINDROP_BENCH_QUERIES=1` adds the query step (live against
//! compacted); with `RAINDROP_BENCH_FLUSH_MS=600000
//! RAINDROP_BENCH_FLUSH_MIB=4096` every row it streams stays buffered.
//! `RAINDROP_BENCH_HOLD_MIB=0` turns off holding small projects' rows
//! back (`--flush-hold-mib`). `RAINDROP_BENCH_WAL=warehouse` puts the write-ahead log on the
//! warehouse's storage (`--wal-storage warehouse`);
//! `RAINDROP_BENCH_BACKEND=s3pg`, inside `scripts/services.sh`'s
//! `services_start`, puts the warehouse on its s3s-fs server and the
//! catalog in its PostgreSQL (sizes are read from s3s-fs's files).
//!
//! ```text
//! cargo bench --bench stream
//! RAINDROP_BENCH_BATCHES=1000 RAINDROP_BENCH_CLIENTS=16 RAINDROP_BENCH_SOAK_MINS=30 cargo bench --bench stream
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use chrono::Utc;
use raindrop::client::RaindropClient;
use raindrop::config::ServeConfig;
use raindrop::demo::generate::{GenConfig, generate_project, project_ids};
use raindrop::server::ServerHandle;
use raindrop::tenant::{Role, tokens};

mod common;
use common::*;

/// The server binary's allocator (`src/main.rs` says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One tenant's batch, ready to send.
type Batch = (String, RecordBatch);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("stream benchmark: run with `cargo bench --bench stream`");
        return;
    }
    raindrop::disable_library_backtraces();
    // The server's own log on stderr when asked (e.g. RUST_LOG=raindrop=info
    // shows each compaction run and how long it took).
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let events = env_usize("RAINDROP_BENCH_EVENTS", 2_000_000);
    let tenants = env_usize("RAINDROP_BENCH_TENANTS", 50);
    let batch_sizes = env_list("RAINDROP_BENCH_BATCHES", &[1_000, 10_000, 50_000]);
    let client_counts = env_list("RAINDROP_BENCH_CLIENTS", &[4, 16]);
    let soak_mins = env_usize("RAINDROP_BENCH_SOAK_MINS", 0);
    let ids = project_ids(tenants);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let history = generate(&ids, events, 30);
    println!(
        "{events} events, {tenants} tenants (Zipf-skewed), 30 days, arrival order, one DoPut per batch\n"
    );
    let work = tempfile::tempdir().unwrap();
    let ipc = work.path().join("rows.arrow");
    write_ipc(&ipc, arrival_order(&history, 50_000).iter().map(|(_, b)| b));
    settle_disk();
    let peer = run_peer("stream_peer.py", &[&ipc, &work.path().join("duckdb")]);
    let mut runs = vec![];
    for &batch_rows in &batch_sizes {
        let batches = arrival_order(&history, batch_rows);
        for &clients in &client_counts {
            settle_disk();
            let run = rt.block_on(run_once(&ids, &batches, clients));
            runs.push((batch_rows, clients, run));
        }
    }
    print_runs(&runs, peer.as_ref());
    if env_usize("RAINDROP_BENCH_QUERIES", 0) > 0 {
        let batches = arrival_order(&history, batch_sizes.first().copied().unwrap_or(1_000));
        let clients = client_counts.last().copied().unwrap_or(16);
        settle_disk();
        let rate = env_usize("RAINDROP_BENCH_QUERY_RATE", 100_000) as f64;
        rt.block_on(live_vs_compacted(
            &ids,
            &batches,
            clients,
            rate,
            &work.path().join("duckdb/duckdb-partitioned"),
        ));
    }
    if soak_mins > 0 {
        let day = generate(&ids, events.min(2_000_000), 1);
        let batch_rows = batch_sizes.first().copied().unwrap_or(1_000);
        let clients = client_counts.last().copied().unwrap_or(16);
        let batches = arrival_order(&day, batch_rows);
        // 0: as fast as answered (a capacity test, not a steady state).
        let rate = env_usize("RAINDROP_BENCH_SOAK_RATE", 0);
        rt.block_on(soak(
            &ids,
            &batches,
            clients,
            (rate > 0).then_some(rate as f64),
            Duration::from_secs(60 * soak_mins as u64),
        ));
    }
}

/// Each tenant's events over `days` days ending now (Zipf-skewed volumes).
fn generate(ids: &[String], events: usize, days: u32) -> Vec<(String, Vec<RecordBatch>)> {
    let cfg = GenConfig {
        projects: ids.len(),
        days,
        events,
        batch_rows: 50_000,
        seed: 23,
        end: Utc::now(),
    };
    ids.iter()
        .enumerate()
        .map(|(i, p)| {
            let events = generate_project(&cfg, i)
                .events
                .iter()
                .map(|b| with_project(p, b))
                .collect();
            (p.clone(), events)
        })
        .collect()
}

/// Every tenant's events cut into `batch_rows` batches in time order, and
/// the batches of all tenants interleaved in the order they fill up.
fn arrival_order(tenants: &[(String, Vec<RecordBatch>)], batch_rows: usize) -> Vec<Batch> {
    let mut all: Vec<(i64, String, RecordBatch)> = tenants
        .iter()
        .filter(|(_, bs)| !bs.is_empty())
        .flat_map(|(p, bs)| live_order(p, bs, batch_rows))
        .collect();
    all.sort_by_key(|(t, _, _)| *t);
    all.into_iter().map(|(_, p, b)| (p, b)).collect()
}

/// A server over `dir` with a token per tenant, and an admin token.
async fn start(
    dir: &Path,
    ids: &[String],
    compact_every: Option<Duration>,
) -> (ServerHandle, HashMap<String, String>, String) {
    let mut serve = ServeConfig::in_dir(dir);
    serve.limits.compact_interval_secs = compact_every.map_or(0, |d| d.as_secs());
    // 0 = unbuffered (each DoPut group commits before it is answered).
    if let Ok(ms) = std::env::var("RAINDROP_BENCH_FLUSH_MS") {
        serve.limits.flush_interval_ms = ms.parse().expect("RAINDROP_BENCH_FLUSH_MS");
    }
    // A size trigger past the rows streamed keeps every row buffered (the
    // query step's worst case, with no flush racing its queries).
    if let Ok(mib) = std::env::var("RAINDROP_BENCH_FLUSH_MIB") {
        serve.limits.flush_mib = mib.parse().expect("RAINDROP_BENCH_FLUSH_MIB");
    }
    // 0 = no project's rows held back by a flush (every flush writes
    // every partition with rows, as before 2026-12-06).
    if let Ok(mib) = std::env::var("RAINDROP_BENCH_HOLD_MIB") {
        serve.limits.flush_hold_mib = mib.parse().expect("RAINDROP_BENCH_HOLD_MIB");
    }
    // 0 = tiers alone (no bound on small files per partition).
    if let Ok(n) = std::env::var("RAINDROP_BENCH_COMPACT_MAX_FILES") {
        serve.limits.compact_max_files = n.parse().expect("RAINDROP_BENCH_COMPACT_MAX_FILES");
    }
    if std::env::var("RAINDROP_BENCH_WAL").is_ok_and(|v| v == "warehouse") {
        serve.wal_storage = raindrop::config::WalStorage::Warehouse;
    }
    if std::env::var("RAINDROP_BENCH_BACKEND").is_ok_and(|v| v == "s3pg") {
        let env =
            |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k}: run inside services_start"));
        // A bucket of its own (on s3s-fs, a directory under its root), no
        // key prefix: s3s-fs names a multipart upload's files after the
        // base64 of the key, and with any prefix the names of a tenant
        // `project-10`'s compacted files passed 255 bytes (its writes
        // failed).
        let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
        std::fs::create_dir_all(Path::new(&env("RAINDROP_TEST_S3_ROOT")).join(format!("b{run}")))
            .expect("creating the run's bucket under RAINDROP_TEST_S3_ROOT");
        serve.storage.warehouse = Some(format!("s3://b{run}"));
        serve.storage.catalog_uri = Some(env("RAINDROP_TEST_PG_URI"));
        serve.storage.catalog_name = format!("b{run}");
        serve.storage.s3 = raindrop::storage::S3Config {
            endpoint: Some(env("RAINDROP_TEST_S3_ENDPOINT")),
            region: std::env::var("AWS_REGION").ok(),
            path_style: true,
            access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
            secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
            ..Default::default()
        };
        serve.tokens_file = Some(serve.tokens_file());
    }
    let mut secrets = HashMap::new();
    for p in ids {
        let s = tokens::generate_secret();
        tokens::create_token(&serve.tokens_file(), &s, Some(p), Role::ReadWrite, "bench").unwrap();
        secrets.insert(p.clone(), s);
    }
    let admin = tokens::generate_secret();
    tokens::create_token(&serve.tokens_file(), &admin, None, Role::Admin, "bench").unwrap();
    (ServerHandle::start(serve).await.unwrap(), secrets, admin)
}

/// `DoPut` latencies: (seconds since the start, milliseconds).
type Latencies = Arc<Mutex<Vec<(f64, f64)>>>;

/// `DoPut`s refused because the ingest buffer was full (then resent).
static REJECTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Most resident memory of this process (the server runs in-process)
/// seen by [`sample_memory`] since last taken, KiB.
static RSS_MAX_KIB: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Take [`RSS_MAX_KIB`], in MB.
fn take_rss_peak_mb() -> f64 {
    RSS_MAX_KIB.swap(0, std::sync::atomic::Ordering::Relaxed) as f64 * 1024.0 / 1e6
}

/// Sample resident memory every second (the soak reports each minute's
/// peak: compaction's memory comes and goes between minute marks).
fn sample_memory() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        loop {
            let kib = proc_status_kib("self", "VmRSS:");
            RSS_MAX_KIB.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Send `batches` from `clients` concurrent clients until they run out
/// (or, cycling through them, until `until`): as fast as they are answered,
/// or paced to `rate` rows/s (batch `i` is sent no sooner than its turn).
async fn drive(
    url: &str,
    secrets: &HashMap<String, String>,
    batches: Arc<Vec<Batch>>,
    clients: usize,
    until: Option<Instant>,
    rate: Option<f64>,
    latencies: Latencies,
) -> usize {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = vec![];
    for _ in 0..clients {
        let (url, secrets, batches) = (url.to_string(), secrets.clone(), batches.clone());
        let (next, latencies) = (next.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut conns: HashMap<String, RaindropClient> = HashMap::new();
            let mut rows = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (project, batch) = match until {
                    None if i >= batches.len() => break,
                    Some(t) if Instant::now() >= t => break,
                    _ => &batches[i % batches.len()],
                };
                let fresh;
                let batch = if i >= batches.len() && !same_ids() {
                    fresh = with_fresh_ids(batch);
                    &fresh
                } else {
                    batch
                };
                if !conns.contains_key(project) {
                    let c = RaindropClient::connect(&url, &secrets[project])
                        .await
                        .unwrap();
                    conns.insert(project.clone(), c);
                }
                let c = conns.get_mut(project).unwrap();
                if let Some(rate) = rate {
                    let turn = i as f64 * batch.num_rows() as f64 / rate;
                    let at = started + Duration::from_secs_f64(turn);
                    tokio::time::sleep_until(at.into()).await;
                }
                let s = Instant::now();
                // A full ingest buffer answers ResourceExhausted: back off
                // and resend, as a client should (counted, not timed).
                while let Err(e) = c.ingest_events(vec![batch.clone()]).await {
                    let e = e.to_string();
                    assert!(e.contains("ingest buffers are full"), "{e}");
                    REJECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let ms = s.elapsed().as_secs_f64() * 1000.0;
                latencies
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), ms));
                rows += batch.num_rows();
            }
            rows
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await.unwrap();
    }
    rows
}

/// `RAINDROP_BENCH_SAME_IDS=1`: a soak sends its batches again unchanged
/// (duplicate rows, which compress to a few bytes a row once compacted).
fn same_ids() -> bool {
    std::env::var("RAINDROP_BENCH_SAME_IDS").is_ok_and(|v| v == "1")
}

/// `batch` with new uuid `event_id`s, for a batch sent again: a soak
/// cycles through its batches, and the same rows again would be
/// duplicates. Sorted next to each other in compacted files they
/// compressed to ~5 bytes a row, so files stayed small and compaction's
/// memory per Parquet byte was 30x what real telemetry needs.
fn with_fresh_ids(batch: &RecordBatch) -> RecordBatch {
    let ids: arrow::array::StringArray = (0..batch.num_rows())
        .map(|_| Some(uuid::Uuid::new_v4().to_string()))
        .collect();
    let i = batch.schema().index_of("event_id").unwrap();
    let mut columns = batch.columns().to_vec();
    columns[i] = Arc::new(ids);
    RecordBatch::try_new(batch.schema(), columns).unwrap()
}

/// The table as storage holds it right now.
#[derive(Debug, Clone, Default)]
struct TableState {
    data_bytes: u64,
    metadata_bytes: u64,
    metadata_files: usize,
    /// Of `metadata_bytes`: `metadata.json` files, manifest lists, manifests.
    json_bytes: u64,
    list_bytes: u64,
    manifest_bytes: u64,
    live_files: usize,
    /// Most live data files of one (tenant, day) partition.
    max_files_per_partition: usize,
    /// Most live files below compaction's small-file size
    /// (`SMALL_FILE_BYTES`) in one partition: what compaction still owes.
    max_small_files_per_partition: usize,
    /// Bytes of the largest partition: at the target file size, it needs
    /// this / `TARGET_FILE_SIZE` files however well compacted.
    max_partition_bytes: u64,
    snapshots: usize,
    manifests: usize,
}

impl TableState {
    fn breakdown(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        format!(
            "{:.1} / {:.1} / {:.1}",
            mb(self.json_bytes),
            mb(self.list_bytes),
            mb(self.manifest_bytes)
        )
    }
}

async fn table_state(dir: &Path, warehouse: &raindrop::catalog::Warehouse) -> TableState {
    // On s3s-fs the objects are files under its root, by bucket and key.
    let root: PathBuf = match warehouse.warehouse.strip_prefix("s3://") {
        Some(key) => Path::new(&std::env::var("RAINDROP_TEST_S3_ROOT").unwrap())
            .join(key)
            .join("wildedge/raw_events"),
        None => dir.join("warehouse/wildedge/raw_events"),
    };
    let table = warehouse.raw_events().await.unwrap();
    let mut state = TableState {
        data_bytes: tree_bytes(&root.join("data")),
        metadata_bytes: tree_bytes(&root.join("metadata")),
        metadata_files: count_files(&root.join("metadata")),
        snapshots: table.metadata().snapshots().count(),
        ..TableState::default()
    };
    for e in std::fs::read_dir(root.join("metadata")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let len = e.metadata().map_or(0, |m| m.len());
        if name.ends_with(".metadata.json") {
            state.json_bytes += len;
        } else if name.starts_with("snap-") {
            state.list_bytes += len;
        } else {
            state.manifest_bytes += len;
        }
    }
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return state;
    };
    state.manifests = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .unwrap()
        .entries()
        .len();
    let tasks = live_files(&table).await;
    // (files, small files, bytes) per partition.
    let mut per_partition: HashMap<String, (usize, usize, u64)> = HashMap::new();
    let small = raindrop::maintenance::compact::SMALL_FILE_BYTES;
    for t in &tasks {
        let partition = t.data_file_path.rsplit_once('/').map_or("", |(dir, _)| dir);
        let p = per_partition.entry(partition.to_string()).or_default();
        p.0 += 1;
        p.1 += usize::from(t.file_size_in_bytes < small);
        p.2 += t.file_size_in_bytes;
    }
    state.live_files = tasks.len();
    // Where a tenant-day holds more files than the background bound, say
    // which sizes (MB), to read beside the server's compaction log.
    let bound = raindrop::maintenance::compact::BACKGROUND_MAX_FILES;
    for (partition, files) in &per_partition {
        if files.0 > bound {
            let mut sizes: Vec<u64> = tasks
                .iter()
                .filter(|t| t.data_file_path.starts_with(&format!("{partition}/")))
                .map(|t| t.file_size_in_bytes / 1_000_000)
                .collect();
            sizes.sort_unstable();
            eprintln!(
                "{:?}: {partition} holds {} files over the bound of {bound}, MB: {sizes:?}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default(),
                files.0
            );
        }
    }
    let most =
        |f: fn(&(usize, usize, u64)) -> u64| per_partition.values().map(f).max().unwrap_or(0);
    state.max_files_per_partition = most(|p| p.0 as u64) as usize;
    state.max_small_files_per_partition = most(|p| p.1 as u64) as usize;
    state.max_partition_bytes = most(|p| p.2);
    state
}

/// What one (batch size, clients) run measured.
struct Run {
    rows: usize,
    /// Until the last `DoPut` was acknowledged.
    secs: f64,
    /// Until every row was committed to the table (the final flush).
    committed_secs: f64,
    latencies: Vec<f64>,
    /// `DoPut`s as the server timed them, and its log writes.
    acks: Acks,
    state: TableState,
}

async fn run_once(ids: &[String], batches: &[Batch], clients: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (server, secrets, _) = start(dir.path(), ids, None).await;
    let latencies: Latencies = Arc::default();
    let acks = Acks::now();
    let t = Instant::now();
    let rows = drive(
        &server.url(),
        &secrets,
        Arc::new(batches.to_vec()),
        clients,
        None,
        None,
        latencies.clone(),
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    let acks = Acks::now().since(&acks);
    server.services.ingest.flush().await.unwrap();
    let committed_secs = t.elapsed().as_secs_f64();
    let state = table_state(dir.path(), server.services.query.warehouse()).await;
    server.stop().await.unwrap();
    let mut latencies: Vec<f64> = latencies.lock().unwrap().iter().map(|l| l.1).collect();
    latencies.sort_by(f64::total_cmp);
    Run {
        rows,
        secs,
        committed_secs,
        latencies,
        acks,
        state,
    }
}

fn print_runs(runs: &[(usize, usize, Run)], peer: Option<&serde_json::Value>) {
    println!(
        "| batch rows | clients | rows/s acked / committed | DoPut p50 / p99 ms | on the server p50 / p99 ms | log writes p50 / p99 ms | DoPuts per log write | bytes/event | metadata / data | json / lists / manifests MB | most files in a tenant-day | live files | snapshots | manifests |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (batch, clients, r) in runs {
        let s = &r.state;
        println!(
            "| {batch} | {clients} | {:.0} / {:.0} | {:.1} / {:.1} | {} | {:.1} | {:.1}% ({:.1} MB in {} files) | {} | {} | {} | {} | {} |",
            r.rows as f64 / r.secs,
            r.rows as f64 / r.committed_secs,
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.99),
            r.acks.columns(),
            s.data_bytes as f64 / r.rows as f64,
            100.0 * s.metadata_bytes as f64 / s.data_bytes.max(1) as f64,
            s.metadata_bytes as f64 / 1e6,
            s.metadata_files,
            s.breakdown(),
            s.max_files_per_partition,
            s.live_files,
            s.snapshots,
            s.manifests,
        );
    }
    if let Some(p) = peer {
        println!(
            "\nDuckDB partitioned COPY of the same rows (threads=2): {:.0} rows/s, {:.1} bytes/event",
            p["duckdb_rows_per_s"].as_f64().unwrap_or(f64::NAN),
            p["duckdb_bytes_per_event"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

/// Stream `batches` for `length` with the server's default background
/// compaction and expiry, printing a row per minute.
async fn soak(
    ids: &[String],
    batches: &[Batch],
    clients: usize,
    rate: Option<f64>,
    length: Duration,
) {
    let dir = tempfile::tempdir().unwrap();
    let minute = Duration::from_secs(60);
    let every = Duration::from_secs(raindrop::config::limits::COMPACT_INTERVAL_SECS);
    let (server, secrets, admin) = start(dir.path(), ids, Some(every)).await;
    let tenant_token = secrets[&ids[0]].clone();
    let latencies: Latencies = Arc::default();
    let until = Instant::now() + length;
    let driver = {
        let (url, batches, latencies) =
            (server.url(), Arc::new(batches.to_vec()), latencies.clone());
        tokio::spawn(async move {
            drive(
                &url,
                &secrets,
                batches,
                clients,
                Some(until),
                rate,
                latencies,
            )
            .await
        })
    };
    println!(
        "\nsoak: {clients} clients, DoPuts of {} rows, {} tenants, {}, compaction every {} s and after each flush, at most {} small files per partition (0: tiers alone)\n",
        batches.first().map_or(0, |b| b.1.num_rows()),
        ids.len(),
        rate.map_or("as fast as answered".into(), |r| format!(
            "paced to {r:.0} rows/s"
        )),
        every.as_secs(),
        std::env::var("RAINDROP_BENCH_COMPACT_MAX_FILES")
            .unwrap_or(raindrop::maintenance::compact::BACKGROUND_MAX_FILES.to_string()),
    );
    println!(
        "| minute | rows/s acked | DoPut p50 / p99 ms | on the server p50 / p99 ms | log writes p50 / p99 ms | DoPuts per log write | refused (buffer full) | rows not yet committed | data MB | metadata / data | json / lists / manifests MB | metadata files | most files (small) in a tenant-day | largest tenant-day MB | snapshots | manifests | compaction input MB | RSS peak MB |"
    );
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let sampler = sample_memory();
    let started = Instant::now();
    // Compaction's input during the soak only (earlier rows compact too).
    let rewritten_before = raindrop::metrics::metrics().compaction_bytes.get();
    let mut seen = 0;
    let mut acks = Acks::now();
    let mut m = 0;
    let mut sampled = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep(minute.min(until - Instant::now())).await;
        m += 1;
        let window: Vec<(f64, f64)> = latencies.lock().unwrap()[seen..].to_vec();
        seen += window.len();
        let mut ms: Vec<f64> = window.iter().map(|l| l.1).collect();
        ms.sort_by(f64::total_cmp);
        let rows = ms.len() * batches.first().map_or(0, |b| b.1.num_rows());
        let since = sampled.elapsed().as_secs_f64();
        sampled = Instant::now();
        let s = table_state(dir.path(), server.services.query.warehouse()).await;
        let rewritten = raindrop::metrics::metrics().compaction_bytes.get() - rewritten_before;
        let now = Acks::now();
        let minute_acks = now.since(&acks);
        acks = now;
        println!(
            "| {m} | {:.0} | {:.1} / {:.1} | {} | {} | {} | {:.0} | {:.1}% | {} | {} | {} ({}) | {:.0} | {} | {} | {:.0} | {:.0} |",
            rows as f64 / since,
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            minute_acks.columns(),
            REJECTED.swap(0, std::sync::atomic::Ordering::Relaxed),
            server.services.ingest.buffered_rows().0,
            s.data_bytes as f64 / 1e6,
            100.0 * s.metadata_bytes as f64 / s.data_bytes.max(1) as f64,
            s.breakdown(),
            s.metadata_files,
            s.max_files_per_partition,
            s.max_small_files_per_partition,
            s.max_partition_bytes as f64 / 1e6,
            s.snapshots,
            s.manifests,
            rewritten as f64 / 1e6,
            take_rss_peak_mb(),
        );
    }
    let rows = driver.await.unwrap();
    println!(
        "\nsoak total: {rows} rows in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // How the background jobs fared (compaction keeping up or not).
    for line in raindrop::metrics::metrics().encode().lines() {
        if line.starts_with("raindrop_maintenance_runs_total")
            || line.starts_with("raindrop_commits_total")
        {
            println!("{line}");
        }
    }
    // Today's partitions as the stream left them, then compacted.
    println!(
        "\nqueries after the soak, tenant '{}' (the largest), {QUERY_RUNS} hot runs in rounds, median:",
        ids[0]
    );
    let qs = stream_queries();
    let peak = |phase: &str| println!("RSS peak during {phase}: {:.0} MB", take_rss_peak_mb());
    let live = time_queries("live", &server, dir.path(), &tenant_token, &admin, &qs).await;
    peak("the live queries");
    // Once the last flush committed and background compaction had 30 s
    // to catch up: the tiered layout alone, no buffered rows, no rewrite
    // running.
    server.services.ingest.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let settled = time_queries("settled", &server, dir.path(), &tenant_token, &admin, &qs).await;
    peak("the final flush and the settled queries");
    compact_fully(&server).await;
    peak("the full compaction");
    let compacted =
        time_queries("compacted", &server, dir.path(), &tenant_token, &admin, &qs).await;
    sampler.abort();
    print_timings(
        &qs,
        &[
            ("live", &live),
            ("settled", &settled),
            ("compacted", &compacted),
        ],
        None,
    );
    server.stop().await.unwrap();
}

/// How the in-process server timed its `DoPut`s and their log writes.
struct Acks {
    served: Buckets,
    written: Buckets,
}

impl Acks {
    /// The histograms as the metrics registry has them now.
    fn now() -> Self {
        let text = raindrop::metrics::metrics().encode();
        Self {
            served: Buckets::read(&text, "ingest_request_duration_seconds"),
            written: Buckets::read(&text, "wal_write_duration_seconds"),
        }
    }

    /// What was observed after `earlier`.
    fn since(&self, earlier: &Self) -> Self {
        Self {
            served: self.served.since(&earlier.served),
            written: self.written.since(&earlier.written),
        }
    }

    /// The table cells: the server's p50 / p99, the log writes' p50 /
    /// p99, and `DoPut`s per log write.
    fn columns(&self) -> String {
        let (s, w) = (&self.served, &self.written);
        format!(
            "{:.1} / {:.1} | {:.1} / {:.1} | {:.1}",
            s.quantile_ms(0.5),
            s.quantile_ms(0.99),
            w.quantile_ms(0.5),
            w.quantile_ms(0.99),
            s.count() as f64 / w.count().max(1) as f64
        )
    }
}

/// A latency histogram of the in-process server's metrics: cumulative
/// counts per upper bound, in seconds.
struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    /// `raindrop_<name>` in `text`, the registry's exposition.
    fn read(text: &str, name: &str) -> Self {
        let prefix = format!("raindrop_{name}_bucket{{le=\"");
        Self(
            text.lines()
                .filter_map(|line| {
                    let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, count.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// What was observed after `earlier`.
    fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .zip(&earlier.0)
                .map(|(&(le, now), &(_, then))| (le, now - then))
                .collect(),
        )
    }

    fn count(&self) -> u64 {
        self.0.last().map_or(0, |b| b.1)
    }

    /// The `q` quantile in ms, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does (buckets are 1.5x apart).
    fn quantile_ms(&self, q: f64) -> f64 {
        let rank = q * self.count() as f64;
        let mut below = (0.0, 0u64);
        for &(le, count) in &self.0 {
            if count as f64 >= rank && count > below.1 {
                if le.is_infinite() {
                    return below.0 * 1e3;
                }
                let within = (rank - below.1 as f64) / (count - below.1) as f64;
                return (below.0 + (le - below.0) * within) * 1e3;
            }
            below = (le, count);
        }
        f64::NAN
    }
}

/// Hot runs per query (median) in the query comparisons, in rounds.
const QUERY_RUNS: usize = 15;

/// The dashboard queries of `benches/query.rs` but the seed query (it
/// needs the tenant's outcomes table), plus the all-tenant query over 30
/// days.
fn stream_queries() -> Vec<common::queries::Query> {
    let mut qs: Vec<_> = common::queries::queries()
        .into_iter()
        .filter(|q| !q.sql.contains("user_outcomes"))
        .collect();
    qs.push(common::queries::Query {
        name: "admin: events per project, 30 days",
        sql: "SELECT project_id, count(*) AS events, avg(confidence) AS mean_confidence FROM wildedge.raw_events \
              WHERE event_day >= current_date - interval '30 days' GROUP BY 1 ORDER BY 1"
            .into(),
        admin: true,
    });
    qs
}

/// Per query: median ms, rows, files planned.
type Timings = Vec<(f64, usize, usize)>;

/// Time `qs` on `server` (tenant queries as `tenant`), after printing the
/// table's layout.
async fn time_queries(
    label: &str,
    server: &ServerHandle,
    dir: &Path,
    token: &str,
    admin: &str,
    qs: &[common::queries::Query],
) -> Timings {
    let state = table_state(dir, server.services.query.warehouse()).await;
    println!(
        "{label}: {} live files, most in a tenant-day {} ({} small), {} rows buffered",
        state.live_files,
        state.max_files_per_partition,
        state.max_small_files_per_partition,
        server.services.ingest.buffer().map_or(0, |b| b.held().0)
    );
    let mut out = vec![];
    for q in qs {
        let token = if q.admin { admin } else { token };
        // Where the time goes, operator by operator.
        if env_usize("RAINDROP_BENCH_ANALYZE", 0) > 0 {
            let mut c = RaindropClient::connect(&server.url(), token).await.unwrap();
            let plan = c
                .query(&format!("EXPLAIN ANALYZE {}", q.sql))
                .await
                .unwrap();
            println!(
                "{label}, {}:\n{}",
                q.name,
                arrow::util::pretty::pretty_format_batches(&plan).unwrap()
            );
        }
        // One run for the rows and files (and to warm the caches).
        let (_, rows, files, _) =
            common::queries::raindrop_run(&server.url(), token, &q.sql, 1).await;
        out.push((f64::NAN, rows, files));
    }
    // Timed in rounds, each query once per round: a burst of background
    // work (a flush, a merge's commit) then slows one run of several
    // queries, not every run of one. (Timing each query's runs back to
    // back, one live query read 1.90x compacted in one run and 1.09x in
    // the next on the same build.)
    let mut clients = vec![];
    for q in qs {
        let token = if q.admin { admin } else { token };
        clients.push(RaindropClient::connect(&server.url(), token).await.unwrap());
    }
    let mut times = vec![Vec::with_capacity(QUERY_RUNS); qs.len()];
    for _ in 0..QUERY_RUNS {
        for (i, q) in qs.iter().enumerate() {
            let t = Instant::now();
            clients[i].query(&q.sql).await.unwrap();
            times[i].push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    for (o, t) in out.iter_mut().zip(times) {
        o.0 = common::queries::median(t);
    }
    out
}

/// Commit what is buffered and compact the table fully (`raindrop
/// compact`), racing the background compaction until a pass finds
/// nothing left to merge.
async fn compact_fully(server: &ServerHandle) {
    use raindrop::maintenance::compact::{CompactOptions, compact_table};
    server.services.ingest.flush().await.unwrap();
    let warehouse = server.services.query.warehouse();
    let ident = warehouse.raw_events_ident();
    for _ in 0..10 {
        match compact_table(warehouse, &ident, &CompactOptions::default()).await {
            Ok(r) if r.files_removed == 0 => break,
            Ok(_) => {}
            Err(e) => eprintln!("compaction raced the background: {e}"),
        }
    }
}

/// Each state's timings, the last one (fully compacted) the reference
/// every other is divided by, and DuckDB when it ran.
fn print_timings(
    qs: &[common::queries::Query],
    states: &[(&str, &Timings)],
    duck: Option<&serde_json::Value>,
) {
    let (reference, compacted) = states.last().expect("a compacted state");
    let mut head = String::from("| query |");
    for (label, _) in states {
        head += &format!(" {label} ms | files |");
    }
    for (label, _) in &states[..states.len() - 1] {
        head += &format!(" {label} / {reference} |");
    }
    head += " DuckDB ms | first / DuckDB | rows |";
    println!("\n{head}");
    println!("|---|{}", "---:|".repeat(head.matches('|').count() - 2));
    for (i, q) in qs.iter().enumerate() {
        let (dk, dk_rows) = duck
            .and_then(|d| d.get(q.name))
            .map(|v| {
                (
                    v["median_ms"].as_f64().unwrap(),
                    v["rows"].as_u64().unwrap() as usize,
                )
            })
            .unwrap_or((f64::NAN, 0));
        let first = &states[0].1[i];
        let agree =
            states.iter().all(|(_, t)| t[i].1 == first.1) && (dk.is_nan() || first.1 == dk_rows);
        let mut row = format!("| {} |", q.name);
        for (_, t) in states {
            row += &format!(" {:.1} | {} |", t[i].0, t[i].2);
        }
        for (_, t) in &states[..states.len() - 1] {
            row += &format!(" {:.2} |", t[i].0 / compacted[i].0);
        }
        let check = if agree { "" } else { " (row counts differ!)" };
        row += &format!(" {dk:.1} | {:.2} | {}{check} |", first.0 / dk, first.1);
        println!("{row}");
    }
}

/// The queries on a table as streaming at `rate` rows/s left it
/// (buffered ingest and background compaction at the server's defaults,
/// just after the last `DoPut`), then on the same table fully compacted,
/// and DuckDB over its own partitioned files of the same rows. Tenant
/// queries run as the largest tenant.
async fn live_vs_compacted(
    ids: &[String],
    batches: &[Batch],
    clients: usize,
    rate: f64,
    duckdb: &Path,
) {
    let dir = tempfile::tempdir().unwrap();
    let every = Duration::from_secs(raindrop::config::limits::COMPACT_INTERVAL_SECS);
    let (server, secrets, admin) = start(dir.path(), ids, Some(every)).await;
    let t = Instant::now();
    let rows = drive(
        &server.url(),
        &secrets,
        Arc::new(batches.to_vec()),
        clients,
        None,
        Some(rate),
        Latencies::default(),
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    let tenant = &ids[0];
    let qs = stream_queries();
    println!(
        "\nqueries, 30 days: {rows} rows streamed in {secs:.1} s ({clients} clients, {}-row DoPuts, paced to {rate:.0} rows/s); tenant '{tenant}' (the largest); {QUERY_RUNS} hot runs in rounds, median",
        batches.first().map_or(0, |b| b.1.num_rows())
    );
    let live = time_queries("live", &server, dir.path(), &secrets[tenant], &admin, &qs).await;
    compact_fully(&server).await;
    let compacted = time_queries(
        "compacted",
        &server,
        dir.path(),
        &secrets[tenant],
        &admin,
        &qs,
    )
    .await;
    let duck = common::queries::duckdb_run(&python(), duckdb, tenant, None, true, QUERY_RUNS, &qs);
    print_timings(
        &qs,
        &[("live", &live), ("compacted", &compacted)],
        duck.as_ref(),
    );
    server.stop().await.unwrap();
}
