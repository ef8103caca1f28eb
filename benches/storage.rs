//! The same workload on a local warehouse and on an S3 warehouse, in one
//! run: ingest rows/s, then tenant queries cold (first after a restart:
//! empty metadata, manifest and footer caches) and hot (median of repeats).
//!
//! ```text
//! RAINDROP_S3S_BIN=~/.cache/raindrop/s3s/bin/s3s-fs cargo bench --bench storage
//! RAINDROP_BENCH_EVENTS=2000000 RAINDROP_BENCH_BATCH=5000 cargo bench --bench storage
//! ```
//!
//! Both use the SQLite catalog, so only the storage differs. The S3 server
//! is s3s-fs on loopback (started by the bench): this measures the S3
//! protocol path (signing, HTTP, one request per range read), not a
//! network's first-byte latency. Results: `benches/README.md`.

use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use chrono::Utc;
use raindrop::client::{IngestMode, RaindropClient};
use raindrop::config::ServeConfig;
use raindrop::demo::SEED_QUERY;
use raindrop::demo::generate::{GenConfig, generate_project, project_ids, project_sizes};
use raindrop::server::ServerHandle;
use raindrop::storage::S3Config;
use raindrop::tenant::{Role, tokens};

const KEY: &str = "bench-key";
const SECRET: &str = "bench-secret-0123456789";
const CLIENTS: usize = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct S3Server(Child);

impl Drop for S3Server {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn start_s3(root: &Path) -> (S3Server, u16) {
    let bin = std::env::var("RAINDROP_S3S_BIN").unwrap_or_else(|_| {
        format!(
            "{}/.cache/raindrop/s3s/bin/s3s-fs",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    std::fs::create_dir_all(root.join("bench")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin} (scripts/services.sh installs it): {e}"));
    let server = S3Server(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (server, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("s3s-fs did not start");
}

/// A server config over `dir`, on S3 when `s3_port` is given.
fn config(dir: &Path, s3_port: Option<u16>) -> ServeConfig {
    let mut cfg = ServeConfig::in_dir(dir);
    cfg.limits.compact_interval_secs = 0;
    if let Some(port) = s3_port {
        cfg.storage.warehouse = Some("s3://bench/warehouse".into());
        cfg.storage.s3 = S3Config {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("us-east-1".into()),
            path_style: true,
            access_key_id: Some(KEY.into()),
            secret_access_key: Some(SECRET.into()),
            ..S3Config::default()
        };
    }
    cfg
}

/// Every project's batches interleaved round-robin (events arrive from all
/// tenants at once), each batch tagged with its project.
fn arrival_order(data: &[(String, Vec<RecordBatch>)]) -> VecDeque<(String, RecordBatch)> {
    let mut out = VecDeque::new();
    let longest = data.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    for i in 0..longest {
        for (p, batches) in data {
            if let Some(b) = batches.get(i) {
                out.push_back((p.clone(), b.clone()));
            }
        }
    }
    out
}

/// Ingest everything with [`CLIENTS`] concurrent clients; rows/s.
async fn ingest(
    url: &str,
    tokens: &std::collections::HashMap<String, String>,
    queue: VecDeque<(String, RecordBatch)>,
) -> f64 {
    let queue = Arc::new(Mutex::new(queue));
    let started = Instant::now();
    let mut tasks = vec![];
    for _ in 0..CLIENTS {
        let (queue, url, tokens) = (queue.clone(), url.to_string(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let mut clients = std::collections::HashMap::new();
            let mut rows = 0usize;
            loop {
                let Some((p, b)) = queue.lock().unwrap().pop_front() else {
                    return rows;
                };
                if !clients.contains_key(&p) {
                    let c = RaindropClient::connect(&url, &tokens[&p]).await.unwrap();
                    clients.insert(p.clone(), c);
                }
                let c = clients.get_mut(&p).unwrap();
                rows += c.ingest_events(vec![b]).await.unwrap() as usize;
            }
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await.unwrap();
    }
    rows as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    // `cargo test --all-targets` builds and runs benches as tests: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("storage benchmark: run with `cargo bench --bench storage`");
        return;
    }
    raindrop::disable_library_backtraces();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let events = env_usize("RAINDROP_BENCH_EVENTS", 1_000_000);
        let projects = env_usize("RAINDROP_BENCH_PROJECTS", 50);
        let batch = env_usize("RAINDROP_BENCH_BATCH", 5_000);
        let runs = env_usize("RAINDROP_BENCH_RUNS", 5);
        let spec = GenConfig {
            projects,
            days: 30,
            events,
            batch_rows: batch,
            seed: 7,
            end: Utc::now(),
        };
        let ids = project_ids(projects);
        let sizes = project_sizes(projects, events);
        let data: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let d = generate_project(&spec, i);
                (p.clone(), d.events, d.outcomes)
            })
            .collect();
        let events_by_project: Vec<_> = data.iter().map(|(p, e, _)| (p.clone(), e.clone())).collect();
        println!(
            "{events} events, {projects} Zipf-skewed projects, 30 days, {batch}-row batches in arrival order, {CLIENTS} clients; {runs} hot runs per query, median\n"
        );
        let queries = [
            ("seed query (join outcomes, 30 days)", SEED_QUERY.to_string()),
            (
                "hourly p95, 1 day",
                "SELECT date_trunc('hour', event_timestamp) AS hour, percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95 \
                 FROM wildedge.raw_events WHERE event_day = current_date - interval '1 day' GROUP BY 1 ORDER BY 1"
                    .to_string(),
            ),
            (
                "error rate by model, 7 days",
                "SELECT model_name, avg(CASE WHEN event_type = 'error' THEN 1.0 ELSE 0.0 END) AS error_rate, count(*) AS n \
                 FROM wildedge.raw_events WHERE event_day >= current_date - interval '7 days' GROUP BY 1 ORDER BY 1"
                    .to_string(),
            ),
        ];
        // The largest tenant, a mid-sized one, and one from the tail.
        let tenants = [0, 5.min(projects - 1), (projects * 4 / 5).min(projects - 1)];

        let s3_root = tempfile::tempdir().unwrap();
        let (_s3, port) = start_s3(s3_root.path());
        let mut results = vec![];
        for (name, s3_port) in [("local", None), ("S3 (s3s-fs)", Some(port))] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(dir.path(), s3_port);
            let mut tokens = std::collections::HashMap::new();
            for p in &ids {
                let secret = tokens::generate_secret();
                tokens::create_token(&cfg.tokens_file(), &secret, Some(p), Role::ReadWrite, "bench")
                    .unwrap();
                tokens.insert(p.clone(), secret);
            }
            let server = ServerHandle::start(cfg.clone()).await.unwrap();
            let rows_per_sec = ingest(&server.url(), &tokens, arrival_order(&events_by_project)).await;
            for (p, _, outcomes) in &data {
                let mut c = RaindropClient::connect(&server.url(), &tokens[p]).await.unwrap();
                c.ingest(Some("warehouse"), "user_outcomes", IngestMode::Replace, vec![outcomes.clone()])
                    .await
                    .unwrap();
            }
            server.stop().await.unwrap();
            println!("{name}: ingest {rows_per_sec:.0} rows/s");

            // Cold: a fresh process state per query, so no cache holds
            // anything of it yet.
            let mut timings = vec![];
            for (qname, sql) in &queries {
                for &t in &tenants {
                    let server = ServerHandle::start(cfg.clone()).await.unwrap();
                    let mut c = RaindropClient::connect(&server.url(), &tokens[&ids[t]]).await.unwrap();
                    let started = Instant::now();
                    let rows: usize = c.query(sql).await.unwrap().iter().map(|b| b.num_rows()).sum();
                    let cold = started.elapsed().as_secs_f64() * 1e3;
                    let mut hot = vec![];
                    for _ in 0..runs {
                        let started = Instant::now();
                        c.query(sql).await.unwrap();
                        hot.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                    server.stop().await.unwrap();
                    timings.push((*qname, t, rows, cold, median(hot)));
                }
            }
            results.push((name, rows_per_sec, timings));
        }

        let (local, s3) = (&results[0], &results[1]);
        println!("\n| | local | S3 (s3s-fs) | S3 / local |\n|---|---:|---:|---:|");
        println!("| ingest rows/s | {:.0} | {:.0} | {:.2} |", local.1, s3.1, s3.1 / local.1);
        println!("\n| query | tenant (events) | rows | local cold ms | S3 cold ms | local hot ms | S3 hot ms | S3/local hot |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
        for (l, s) in local.2.iter().zip(&s3.2) {
            let (qname, t, rows, lc, lh) = *l;
            let (_, _, srows, sc, sh) = *s;
            let check = if rows == srows { "" } else { " (row counts differ!)" };
            println!(
                "| {qname} | {} ({}) | {rows}{check} | {lc:.1} | {sc:.1} | {lh:.1} | {sh:.1} | {:.2} |",
                ids[t], sizes[t], sh / lh
            );
        }
    });
}
