//! Dashboards under load: N concurrent readers (each a panel refreshing in
//! a loop) across 2 or 20 tenants, while two clients ingest; then a
//! fairness run (one tenant floods, another's latency is measured) and a
//! cancellation run (how fast a dropped `DoGet` frees its slot and stops
//! its work).
//!
//! ```text
//! cargo build --release && cargo bench --bench dashboard
//! RAINDROP_BENCH_SECS=20 RAINDROP_BENCH_SERVER_ARGS="--max-queries 4" cargo bench --bench dashboard
//! ```
//! The server is the release binary (`RAINDROP_BIN`, default
//! `$CARGO_TARGET_DIR/release/raindrop`) in its own process, restarted for
//! each run, so its peak RSS (VmHWM) is the run's. Data: 2M events (Zipf
//! over 50 projects, 30 days, `RAINDROP_BENCH_EVENTS`), ingested once into
//! `$CARGO_TARGET_DIR/raindrop-bench/dashboard-<events>`. Results: see
//! `benches/README.md`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use chrono::Utc;
use raindrop::client::{IngestMode, RaindropClient};
use raindrop::config::ServeConfig;
use raindrop::demo::generate::{GenConfig, generate_project, project_ids};
use raindrop::tenant::{Role, tokens};

mod common;
use common::proc_status_kib;

/// Panels of a telemetry dashboard, each over one tenant's data.
const PANELS: &[&str] = &[
    "SELECT date_trunc('hour', event_timestamp) AS hour, count(*) AS n FROM wildedge.raw_events \
     WHERE event_day >= current_date - interval '1 day' GROUP BY 1 ORDER BY 1",
    "SELECT model_name, avg(confidence) AS confidence, count(*) AS n FROM wildedge.raw_events \
     WHERE event_day >= current_date - interval '7 days' GROUP BY 1 ORDER BY 1",
    "SELECT model_version, avg(CASE WHEN event_type = 'error' THEN 1.0 ELSE 0.0 END) AS error_rate \
     FROM wildedge.raw_events WHERE event_day >= current_date - interval '7 days' GROUP BY 1 ORDER BY 1",
    "SELECT model_name, approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95 \
     FROM wildedge.raw_events WHERE event_day >= current_date - interval '1 day' GROUP BY 1 ORDER BY 1",
    "SELECT device_id, count(*) AS n FROM wildedge.raw_events \
     WHERE event_day >= current_date - interval '3 days' GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"))
}

/// The server binary in its own process.
struct Server {
    child: Child,
    url: String,
}

/// Put the catalog back to its state right after [`prepare`]: each run
/// starts from the same table, not one grown by the runs before (their
/// files stay behind, unreferenced).
fn reset_catalog(dir: &Path) {
    let base = dir.join("catalog.base.db");
    if !base.exists() {
        std::fs::copy(dir.join("catalog.db"), &base).unwrap();
    }
    for stale in ["catalog.db-wal", "catalog.db-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    std::fs::copy(&base, dir.join("catalog.db")).unwrap();
}

impl Server {
    fn start(dir: &Path, extra: &[String]) -> Self {
        let bin = std::env::var("RAINDROP_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| target_dir().join("release/raindrop"));
        let mut child = Command::new(&bin)
            .args(["serve", "--addr", "127.0.0.1:0", "--log", "error"])
            .arg("--data-dir")
            .arg(dir)
            // Maintenance would compete with the readers at random times.
            .args(["--compact-interval-secs", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release first)", bin.display()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("server exited").unwrap();
            if let Some(addr) = line.split("listening on grpc://").nth(1) {
                break format!("http://{}", addr.split_whitespace().next().unwrap());
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }

    /// Peak resident memory so far, MiB.
    fn peak_rss_mib(&self) -> f64 {
        proc_status_kib(&self.child.id().to_string(), "VmHWM:") as f64 / 1024.0
    }

    /// CPU time used so far (user + system), seconds.
    fn cpu_secs(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ingest the dataset once; tokens by project.
fn prepare(dir: &Path, cfg: &GenConfig) -> HashMap<String, String> {
    let marker = dir.join("bench-tokens.json");
    if let Ok(bytes) = std::fs::read(&marker) {
        println!("reusing ingested data in {}", dir.display());
        return serde_json::from_slice(&bytes).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    let tokens_file = ServeConfig::in_dir(dir).tokens_file();
    let mut project_tokens = HashMap::new();
    for p in project_ids(cfg.projects) {
        let secret = tokens::generate_secret();
        tokens::create_token(&tokens_file, &secret, Some(&p), Role::ReadWrite, "bench").unwrap();
        project_tokens.insert(p, secret);
    }
    let server = Server::start(dir, &[]);
    let rt = runtime();
    rt.block_on(async {
        for (i, p) in project_ids(cfg.projects).iter().enumerate() {
            let data = generate_project(cfg, i);
            let mut c = RaindropClient::connect(&server.url, &project_tokens[p])
                .await
                .unwrap();
            for b in data.events {
                c.ingest_events(vec![b]).await.unwrap();
            }
            c.ingest(
                Some("warehouse"),
                "user_outcomes",
                IngestMode::Replace,
                vec![data.outcomes],
            )
            .await
            .unwrap();
        }
    });
    drop(server);
    // Compact once, as the background job would have by now.
    let status = Command::new(
        std::env::var("RAINDROP_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| target_dir().join("release/raindrop")),
    )
    .arg("compact")
    .arg("--data-dir")
    .arg(dir)
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(status.success());
    std::fs::write(&marker, serde_json::to_vec(&project_tokens).unwrap()).unwrap();
    reset_catalog(dir);
    project_tokens
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Default)]
struct Outcome {
    latencies_ms: Vec<f64>,
    refused: usize,
    failed: usize,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.latencies_ms.extend(other.latencies_ms);
        self.refused += other.refused;
        self.failed += other.failed;
    }

    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        self.latencies_ms.sort_by(f64::total_cmp);
        let i = ((self.latencies_ms.len() - 1) as f64 * p).round() as usize;
        self.latencies_ms[i]
    }
}

/// One dashboard panel refreshing as fast as it is answered until `stop`.
async fn reader(url: String, token: String, panel: usize, stop: Arc<AtomicBool>) -> Outcome {
    let mut c = RaindropClient::connect(&url, &token).await.unwrap();
    let mut out = Outcome::default();
    let mut i = panel;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match c.query(PANELS[i % PANELS.len()]).await {
            Ok(_) => out.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => out.refused += 1,
            Err(s) => {
                out.failed += 1;
                eprintln!("query failed: {s:?}");
            }
        }
        i += 1;
    }
    out
}

/// Two clients appending 2,000-row batches to the readers' tenants.
fn ingest_load(
    url: &str,
    tenants: &[(String, String)],
    batches: &Arc<Vec<RecordBatch>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..2)
        .map(|k| {
            let (url, tenants, batches, stop) = (
                url.to_string(),
                tenants.to_vec(),
                batches.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut rows = 0;
                let mut n = k;
                while !stop.load(Ordering::Relaxed) {
                    let (_, token) = &tenants[n % tenants.len()];
                    let mut c = RaindropClient::connect(&url, token).await.unwrap();
                    let b = batches[n % batches.len()].clone();
                    rows += c.ingest_events(vec![b]).await.unwrap() as usize;
                    n += 2;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                rows
            })
        })
        .collect()
}

struct Run {
    queries: usize,
    qps: f64,
    p50: f64,
    p99: f64,
    refused: usize,
    failed: usize,
    rss_mib: f64,
    ingested: usize,
}

fn dashboard_run(
    dir: &Path,
    extra: &[String],
    readers: &[(String, String)],
    ingest_tenants: &[(String, String)],
    batches: &Arc<Vec<RecordBatch>>,
    secs: u64,
) -> (Run, Vec<Outcome>) {
    reset_catalog(dir);
    let server = Server::start(dir, extra);
    let rt = runtime();
    let (outcomes, ingested, elapsed) = rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let ingest = ingest_load(&server.url, ingest_tenants, batches, &stop);
        let started = Instant::now();
        let handles: Vec<_> = readers
            .iter()
            .enumerate()
            .map(|(i, (_, token))| {
                tokio::spawn(reader(server.url.clone(), token.clone(), i, stop.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut outcomes = vec![];
        for h in handles {
            outcomes.push(h.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut ingested = 0;
        for h in ingest {
            ingested += h.await.unwrap();
        }
        (outcomes, ingested, elapsed)
    });
    let mut all = Outcome::default();
    let per_reader: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| {
            let copy = Outcome {
                latencies_ms: o.latencies_ms.clone(),
                refused: o.refused,
                failed: o.failed,
            };
            all.merge(o);
            copy
        })
        .collect();
    let run = Run {
        queries: all.latencies_ms.len(),
        qps: all.latencies_ms.len() as f64 / elapsed,
        p50: all.percentile(0.5),
        p99: all.percentile(0.99),
        refused: all.refused,
        failed: all.failed,
        rss_mib: server.peak_rss_mib(),
        ingested,
    };
    (run, per_reader)
}

/// How fast a dropped `DoGet` frees its slot (the next waiter's `DoGet`
/// answers) and how much CPU the dropped query uses after the drop.
fn cancellation(dir: &Path, token: &str) -> (f64, f64) {
    let extra = ["--max-queries-per-tenant", "1"].map(String::from);
    reset_catalog(dir);
    let server = Server::start(dir, &extra);
    let rt = runtime();
    rt.block_on(async {
        // Runs until its time limit, on both cores.
        let heavy = "SELECT count(*) FROM generate_series(1, 100000000000) WHERE value % 7 = 3";
        let mut c = RaindropClient::connect(&server.url, token).await.unwrap();
        let info = c.inner_mut().execute(heavy.into(), None).await.unwrap();
        let held = c
            .inner_mut()
            .do_get(info.endpoint[0].ticket.clone().unwrap())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let url = server.url.clone();
        let token = token.to_string();
        let waiter = tokio::spawn(async move {
            let mut c = RaindropClient::connect(&url, &token).await.unwrap();
            let info = c
                .inner_mut()
                .execute("SELECT 1".into(), None)
                .await
                .unwrap();
            let _s = c
                .inner_mut()
                .do_get(info.endpoint[0].ticket.clone().unwrap())
                .await
                .unwrap();
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiter.is_finished(), "the second query did not wait");
        let dropped = Instant::now();
        drop(held);
        drop(c);
        let admitted = waiter.await.unwrap();
        let freed_ms = (admitted - dropped).as_secs_f64() * 1e3;
        // CPU the server burns in the second after the drop (the heavy
        // query used both cores before it).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu0 = server.cpu_secs();
        tokio::time::sleep(Duration::from_secs(1)).await;
        (freed_ms, server.cpu_secs() - cpu0)
    })
}

fn main() {
    // `cargo test --all-targets` runs benches too: only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("dashboard benchmark: run with `cargo bench --bench dashboard`");
        return;
    }
    let events = env_usize("RAINDROP_BENCH_EVENTS", 2_000_000);
    let secs = env_usize("RAINDROP_BENCH_SECS", 15) as u64;
    let extra: Vec<String> = std::env::var("RAINDROP_BENCH_SERVER_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let cfg = GenConfig {
        projects: 50,
        days: 30,
        events,
        batch_rows: 20_000,
        seed: 42,
        end: Utc::now(),
    };
    let dir = target_dir().join(format!("raindrop-bench/dashboard-{events}"));
    let tokens = prepare(&dir, &cfg);
    let tenant = |i: usize| {
        let p = &project_ids(cfg.projects)[i];
        (p.clone(), tokens[p].clone())
    };
    let small = GenConfig {
        events: 40_000,
        batch_rows: 2_000,
        end: Utc::now(),
        ..cfg.clone()
    };
    let batches = Arc::new(generate_project(&small, 0).events);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "{events} events, 50 projects; {secs} s per run; {cores} cores; server args {extra:?}; \
         2 clients ingest 2,000-row batches every 250 ms during each run"
    );
    println!(
        "| readers | tenants | queries | q/s | p50 ms | p99 ms | refused | failed | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut single_median = f64::NAN;
    for tenants in [2, 20] {
        let ids: Vec<_> = (0..tenants).map(tenant).collect();
        for readers in [1, 8, 32, 128] {
            let rs: Vec<_> = (0..readers).map(|i| ids[i % tenants].clone()).collect();
            let (r, _) = dashboard_run(&dir, &extra, &rs, &ids, &batches, secs);
            if readers == 1 && tenants == 2 {
                single_median = r.p50;
            }
            println!(
                "| {readers} | {tenants} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.0} |",
                r.queries, r.qps, r.p50, r.p99, r.refused, r.failed, r.rss_mib
            );
            assert!(r.ingested > 0);
        }
    }
    println!(
        "target: p99 at 32 readers <= 32 x single-reader median / cores = {:.1} ms",
        32.0 * single_median / cores as f64
    );

    // Fairness: tenant B's one reader alone, then with A flooding (32).
    let (a, b) = (tenant(0), tenant(1));
    let (_, mut alone) = dashboard_run(
        &dir,
        &extra,
        std::slice::from_ref(&b),
        std::slice::from_ref(&a),
        &batches,
        secs,
    );
    let mut flood = vec![a.clone(); 32];
    flood.push(b.clone());
    let (_, mut with_flood) = dashboard_run(
        &dir,
        &extra,
        &flood,
        std::slice::from_ref(&a),
        &batches,
        secs,
    );
    let mut b_alone = alone.remove(0);
    let mut b_flooded = with_flood.pop().unwrap();
    let mut a_all = Outcome::default();
    with_flood.into_iter().for_each(|o| a_all.merge(o));
    println!(
        "fairness: B alone p50 {:.1} / p99 {:.1} ms; B with A flooding (32 readers) p50 {:.1} / p99 {:.1} ms \
         ({} queries); A's p50 {:.1} / p99 {:.1} ms; refused A {} B {}",
        b_alone.percentile(0.5),
        b_alone.percentile(0.99),
        b_flooded.percentile(0.5),
        b_flooded.percentile(0.99),
        b_flooded.latencies_ms.len(),
        a_all.percentile(0.5),
        a_all.percentile(0.99),
        a_all.refused,
        b_flooded.refused
    );

    let (freed_ms, cpu_after) = cancellation(&dir, &tenant(0).1);
    println!(
        "cancellation: a dropped DoGet's slot reached the next query in {freed_ms:.1} ms; \
         the server used {cpu_after:.2} CPU-s in the second after the drop"
    );
}
