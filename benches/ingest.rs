//! End-to-end ingest benchmark: rows/s over Flight `DoPut` into committed
//! Iceberg data, with the references measured in the same run on the same
//! batches: an in-process `ArrowWriter` ZSTD write (the practical limit),
//! PyIceberg `append` into an equivalent table, and DuckDB's ZSTD Parquet
//! size.
//!
//! ```text
//! cargo bench --bench ingest
//! RAINDROP_BENCH_EVENTS=500000 RAINDROP_BENCH_CLIENTS=2 cargo bench --bench ingest
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::Field;
use chrono::Utc;
use parquet::arrow::ArrowWriter;
use raindrop::client::RaindropClient;
use raindrop::config::ServeConfig;
use raindrop::demo::generate::{GenConfig, generate_project, project_ids};
use raindrop::server::ServerHandle;
use raindrop::tenant::{Role, tokens};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The client batches, with `project_id` added and `attributes` dropped
/// (so every peer ingests identical, simply-typed columns).
fn with_project(project: &str, batch: &RecordBatch) -> RecordBatch {
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| batch.schema().field(i).name() != "attributes")
        .collect();
    let b = batch.project(&keep).unwrap();
    let mut fields: Vec<Arc<Field>> = vec![Arc::new(Field::new(
        "project_id",
        arrow::datatypes::DataType::Utf8,
        false,
    ))];
    fields.extend(b.schema().fields().iter().cloned());
    let mut cols =
        vec![Arc::new(arrow::array::StringArray::from(vec![project; b.num_rows()])) as _];
    cols.extend(b.columns().iter().cloned());
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap()
}

fn data_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                data_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest benchmark: run with `cargo bench --bench ingest`");
        return;
    }
    let events = env_usize("RAINDROP_BENCH_EVENTS", 2_000_000);
    let clients = env_usize("RAINDROP_BENCH_CLIENTS", 4);
    let batch_rows = env_usize("RAINDROP_BENCH_BATCH", 50_000);
    let projects = 10;
    let cfg = GenConfig {
        projects,
        days: 30,
        events,
        batch_rows,
        seed: 11,
        end: Utc::now(),
    };
    let ids = project_ids(projects);
    let batches: Vec<(String, RecordBatch)> = (0..projects)
        .flat_map(|i| {
            let p = ids[i].clone();
            generate_project(&cfg, i)
                .events
                .into_iter()
                .map(move |b| (p.clone(), with_project(&p, &b)))
        })
        .collect();
    let rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
    println!(
        "{rows} events, {} batches of <= {batch_rows} rows, {clients} concurrent clients, 10 projects, 30 days\n",
        batches.len()
    );
    let work = tempfile::tempdir().unwrap();

    // Reference: one in-process ArrowWriter, ZSTD, same writer properties.
    let t = Instant::now();
    let file = std::fs::File::create(work.path().join("arrow-writer.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(
        file,
        batches[0].1.schema(),
        Some(raindrop::schema::writer_properties()),
    )
    .unwrap();
    for (_, b) in &batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    let arrow_secs = t.elapsed().as_secs_f64();
    let arrow_bytes = std::fs::metadata(work.path().join("arrow-writer.parquet"))
        .unwrap()
        .len();

    // Raindrop: concurrent clients, one DoPut per batch, acknowledged after commit.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = work.path().join("raindrop");
    std::fs::create_dir_all(&dir).unwrap();
    let serve = ServeConfig::in_dir(&dir);
    let mut secrets = std::collections::HashMap::new();
    for p in &ids {
        let s = tokens::generate_secret();
        tokens::create_token(&serve.tokens_file(), &s, Some(p), Role::Ingest, "bench").unwrap();
        secrets.insert(p.clone(), s);
    }
    let (raindrop_secs, mut latencies, snapshots) = rt.block_on(async {
        let server = ServerHandle::start(serve).await.unwrap();
        let url = server.url();
        let shared = Arc::new(std::sync::Mutex::new(batches.clone().into_iter()));
        let t = Instant::now();
        let mut tasks = vec![];
        for _ in 0..clients {
            let (shared, url, secrets) = (shared.clone(), url.clone(), secrets.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = vec![];
                let mut conns = std::collections::HashMap::new();
                loop {
                    let next = shared.lock().unwrap().next();
                    let Some((project, batch)) = next else { break };
                    if !conns.contains_key(&project) {
                        conns.insert(
                            project.clone(),
                            RaindropClient::connect(&url, &secrets[&project])
                                .await
                                .unwrap(),
                        );
                    }
                    let c = conns.get_mut(&project).unwrap();
                    let s = Instant::now();
                    c.ingest_events(vec![batch]).await.unwrap();
                    lat.push(s.elapsed().as_secs_f64() * 1000.0);
                }
                lat
            }));
        }
        let mut all = vec![];
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let secs = t.elapsed().as_secs_f64();
        let snaps = server
            .services
            .query
            .warehouse()
            .raw_events()
            .await
            .unwrap()
            .metadata()
            .snapshots()
            .count();
        server.stop().await.unwrap();
        (secs, all, snaps)
    });
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let raindrop_bytes = data_bytes(&dir.join("warehouse/wildedge/raw_events/data"));

    // PyIceberg and DuckDB on the same batches.
    let ipc_path = work.path().join("batches.arrow");
    let mut ipc = arrow::ipc::writer::FileWriter::try_new(
        std::fs::File::create(&ipc_path).unwrap(),
        &batches[0].1.schema(),
    )
    .unwrap();
    for (_, b) in &batches {
        ipc.write(b).unwrap();
    }
    ipc.finish().unwrap();
    let python = std::env::var("RAINDROP_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/raindrop/venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let peer = std::process::Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/pyiceberg_peer.py"))
        .arg(&ipc_path)
        .arg(work.path().join("pyiceberg"))
        .output();
    let peer: Option<serde_json::Value> = match peer {
        Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout).ok(),
        Ok(out) => {
            eprintln!("peer failed: {}", String::from_utf8_lossy(&out.stderr));
            None
        }
        Err(e) => {
            eprintln!("peer not run ({python}): {e}");
            None
        }
    };

    let raindrop_rps = rows as f64 / raindrop_secs;
    let arrow_rps = rows as f64 / arrow_secs;
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| Raindrop DoPut -> committed Iceberg, rows/s | {raindrop_rps:.0} |");
    println!("| in-process ArrowWriter ZSTD, rows/s | {arrow_rps:.0} |");
    println!(
        "| Raindrop / ArrowWriter | {:.2} |",
        raindrop_rps / arrow_rps
    );
    if let Some(p) = &peer {
        let py = p["pyiceberg_rows_per_s"].as_f64().unwrap();
        println!("| PyIceberg append (one commit per batch), rows/s | {py:.0} |");
        println!("| Raindrop / PyIceberg | {:.2} |", raindrop_rps / py);
    }
    println!(
        "| DoPut latency p50 / p99, ms (includes commit) | {:.1} / {:.1} |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "| DoPuts / snapshots committed | {} / {snapshots} |",
        latencies.len()
    );
    println!(
        "| Raindrop bytes per event (data files) | {:.1} |",
        raindrop_bytes as f64 / rows as f64
    );
    println!(
        "| ArrowWriter ZSTD bytes per event (one file) | {:.1} |",
        arrow_bytes as f64 / rows as f64
    );
    if let Some(p) = &peer {
        println!(
            "| DuckDB ZSTD Parquet bytes per event | {:.1} |",
            p["duckdb_zstd_bytes_per_event"].as_f64().unwrap()
        );
    }
}
