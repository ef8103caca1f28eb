//! End-to-end ingest benchmark: rows/s over Flight `DoPut` into committed
//! Iceberg data, with the references measured in the same run on the same
//! batches: an in-process `ArrowWriter` ZSTD write (the practical limit),
//! PyIceberg `append` into an equivalent table, and DuckDB's ZSTD Parquet
//! size.
//!
//! The same events are sent in two arrival orders:
//! - **live**: as SDKs send telemetry, in time order: each project's events
//!   sorted by time, cut into batches, batches sent in the order they would
//!   fill up (a batch covers a short time range, usually one day);
//! - **backfill**: the generator's order, where every batch spans all 30
//!   days (an import of history; the small-files worst case, since each
//!   batch touches 30 `event_day` partitions).
//!
//! ```text
//! cargo bench --bench ingest
//! RAINDROP_BENCH_EVENTS=500000 RAINDROP_BENCH_CLIENTS=2 cargo bench --bench ingest
//! ```

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use chrono::Utc;
use parquet::arrow::ArrowWriter;
use raindrop::client::RaindropClient;
use raindrop::config::ServeConfig;
use raindrop::demo::generate::{GenConfig, generate_project, project_ids};
use raindrop::server::ServerHandle;
use raindrop::tenant::{Role, tokens};

mod common;
use common::*;

/// What one arrival order measured.
struct Run {
    rows: usize,
    batches: usize,
    arrow_rps: f64,
    arrow_bytes: u64,
    raindrop_rps: f64,
    latencies: Vec<f64>,
    commits: Vec<f64>,
    snapshots: usize,
    files: usize,
    raindrop_bytes: u64,
    /// `raindrop compact` right after the ingest: seconds, and the live
    /// data files and their bytes afterwards.
    compact_secs: f64,
    compacted_files: usize,
    compacted_bytes: u64,
    peer: Option<serde_json::Value>,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("ingest benchmark: run with `cargo bench --bench ingest`");
        return;
    }
    raindrop::disable_library_backtraces();
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
    let generated: Vec<(String, Vec<RecordBatch>)> = (0..projects)
        .map(|i| {
            let p = ids[i].clone();
            let events = generate_project(&cfg, i)
                .events
                .iter()
                .map(|b| with_project(&p, b))
                .collect();
            (p, events)
        })
        .collect();
    let backfill: Vec<(String, RecordBatch)> = generated
        .iter()
        .flat_map(|(p, bs)| bs.iter().map(move |b| (p.clone(), b.clone())))
        .collect();
    let mut live: Vec<(i64, String, RecordBatch)> = generated
        .iter()
        .flat_map(|(p, bs)| live_order(p, bs, batch_rows))
        .collect();
    live.sort_by_key(|(t, _, _)| *t);
    let live: Vec<(String, RecordBatch)> = live.into_iter().map(|(_, p, b)| (p, b)).collect();
    drop(generated);
    println!(
        "{events} events, 10 projects (skewed), 30 days, {clients} concurrent clients, DoPuts of <= {batch_rows} rows\n"
    );
    // `RAINDROP_BENCH_ORDERS=live` (or `backfill`) runs one scenario only.
    let orders = std::env::var("RAINDROP_BENCH_ORDERS").unwrap_or_else(|_| "live,backfill".into());
    let mut runs: Vec<(&str, Run)> = vec![];
    for (name, batches) in [("live", &live), ("backfill", &backfill)] {
        if orders.split(',').any(|o| o == name) {
            runs.push((name, run(batches, clients, &ids)));
        }
    }
    print_table(&runs);
}

fn run(batches: &[(String, RecordBatch)], clients: usize, ids: &[String]) -> Run {
    let rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
    let work = tempfile::tempdir().unwrap();

    // Reference: one in-process ArrowWriter, ZSTD, same writer properties.
    settle_disk();
    let t = Instant::now();
    let file = std::fs::File::create(work.path().join("arrow-writer.parquet")).unwrap();
    let mut w = ArrowWriter::try_new(
        file,
        batches[0].1.schema(),
        Some(raindrop::schema::writer_properties()),
    )
    .unwrap();
    for (_, b) in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    let arrow_secs = t.elapsed().as_secs_f64();
    let arrow_bytes = std::fs::metadata(work.path().join("arrow-writer.parquet"))
        .unwrap()
        .len();

    // Raindrop: concurrent clients, one DoPut per batch, acknowledged after commit.
    // Raindrop fsyncs every file it commits: flush what earlier steps left
    // dirty, so their writeback does not land on this measurement.
    settle_disk();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = work.path().join("raindrop");
    std::fs::create_dir_all(&dir).unwrap();
    let mut serve = ServeConfig::in_dir(&dir);
    // Compaction is measured separately, after the ingest.
    serve.limits.compact_interval_secs = 0;
    // Each DoPut commits before it is answered, as the rows/s label says;
    // buffered ingest (acknowledged from the write-ahead log, committed
    // later) is measured by `benches/stream.rs`.
    serve.limits.flush_interval_ms = 0;
    let mut secrets = std::collections::HashMap::new();
    for p in ids {
        let s = tokens::generate_secret();
        tokens::create_token(&serve.tokens_file(), &s, Some(p), Role::Ingest, "bench").unwrap();
        secrets.insert(p.clone(), s);
    }
    let (raindrop_secs, mut latencies, mut commits, snapshots, compacted) = rt.block_on(async {
        let server = ServerHandle::start(serve).await.unwrap();
        let url = server.url();
        // Owned, so the spawned client tasks can share it.
        let owned: Vec<(String, RecordBatch)> = batches.to_vec();
        let shared = Arc::new(std::sync::Mutex::new(owned.into_iter()));
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
        let commits: Vec<f64> = server
            .services
            .ingest
            .commit_times()
            .snapshot()
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
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
        let data_dir = dir.join("warehouse/wildedge/raw_events/data");
        let written = (tree_bytes(&data_dir), count_files(&data_dir));
        let compacted = compact(server.services.query.warehouse()).await;
        server.stop().await.unwrap();
        (secs, all, commits, snaps, (written, compacted))
    });
    let ((raindrop_bytes, files), (compact_secs, compacted_files, compacted_bytes)) = compacted;
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    commits.sort_by(|a, b| a.partial_cmp(b).unwrap());

    // PyIceberg and DuckDB on the same batches.
    let ipc_path = work.path().join("batches.arrow");
    write_ipc(&ipc_path, batches.iter().map(|(_, b)| b));
    settle_disk();
    let peer = run_peer(
        "pyiceberg_peer.py",
        &[&ipc_path, &work.path().join("pyiceberg")],
    );
    Run {
        rows,
        batches: batches.len(),
        arrow_rps: rows as f64 / arrow_secs,
        arrow_bytes,
        raindrop_rps: rows as f64 / raindrop_secs,
        latencies,
        commits,
        snapshots,
        files,
        raindrop_bytes,
        compact_secs,
        compacted_files,
        compacted_bytes,
        peer,
    }
}

/// Compact `raw_events` once; seconds taken, and the live data files and
/// bytes afterwards (the replaced files stay on disk for older snapshots).
async fn compact(warehouse: &raindrop::catalog::Warehouse) -> (f64, usize, u64) {
    use raindrop::maintenance::compact::{CompactOptions, compact_table};
    let t = Instant::now();
    let ident = warehouse.raw_events_ident();
    compact_table(warehouse, &ident, &CompactOptions::default())
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let tasks = live_files(&warehouse.raw_events().await.unwrap()).await;
    let bytes = tasks.iter().map(|t| t.file_size_in_bytes).sum();
    (secs, tasks.len(), bytes)
}

fn print_table(runs: &[(&str, Run)]) {
    let row = |label: &str, f: &dyn Fn(&Run) -> String| {
        let cells: Vec<String> = runs.iter().map(|(_, r)| f(r)).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    let names: Vec<&str> = runs.iter().map(|(n, _)| *n).collect();
    println!("| measure | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(runs.len()));
    row("events / DoPuts", &|r| {
        format!("{} / {}", r.rows, r.batches)
    });
    row("Raindrop DoPut -> committed Iceberg, rows/s", &|r| {
        format!("{:.0}", r.raindrop_rps)
    });
    row("in-process ArrowWriter ZSTD, rows/s", &|r| {
        format!("{:.0}", r.arrow_rps)
    });
    row("**Raindrop / ArrowWriter** (target >= 0.5)", &|r| {
        format!("**{:.2}**", r.raindrop_rps / r.arrow_rps)
    });
    let py = |r: &Run| {
        r.peer
            .as_ref()
            .and_then(|p| p["pyiceberg_rows_per_s"].as_f64())
    };
    row("PyIceberg append (one commit per batch), rows/s", &|r| {
        py(r).map_or("-".into(), |v| format!("{v:.0}"))
    });
    row("**Raindrop / PyIceberg** (target >= 3)", &|r| {
        py(r).map_or("-".into(), |v| format!("**{:.2}**", r.raindrop_rps / v))
    });
    let p50_p99 = |v: &[f64]| (percentile(v, 0.5), percentile(v, 0.99));
    row(
        "**catalog commit p50 / p99, ms** (target p50 <= 50)",
        &|r| {
            let (p50, p99) = p50_p99(&r.commits);
            format!("**{p50:.1}** / {p99:.1}")
        },
    );
    row(
        "DoPut latency p50 / p99, ms (validate + write + commit + queueing)",
        &|r| {
            let (p50, p99) = p50_p99(&r.latencies);
            format!("{p50:.1} / {p99:.1}")
        },
    );
    row("snapshots committed / data files", &|r| {
        format!("{} / {}", r.snapshots, r.files)
    });
    row("**Raindrop bytes per event** (data files)", &|r| {
        format!("**{:.1}**", r.raindrop_bytes as f64 / r.rows as f64)
    });
    row("`raindrop compact` afterwards: seconds / rows/s", &|r| {
        format!(
            "{:.1} / {:.0}",
            r.compact_secs,
            r.rows as f64 / r.compact_secs
        )
    });
    row("after compaction: data files / **bytes per event**", &|r| {
        format!(
            "{} / **{:.1}**",
            r.compacted_files,
            r.compacted_bytes as f64 / r.rows as f64
        )
    });
    row("ArrowWriter ZSTD bytes per event (one file)", &|r| {
        format!("{:.1}", r.arrow_bytes as f64 / r.rows as f64)
    });
    let peer_bytes = |key: &'static str| {
        move |r: &Run| {
            r.peer
                .as_ref()
                .and_then(|p| p[key].as_f64())
                .map_or("-".into(), |v| format!("{v:.1}"))
        }
    };
    row(
        "DuckDB ZSTD Parquet bytes per event (one file)",
        &peer_bytes("duckdb_zstd_bytes_per_event"),
    );
    row(
        "DuckDB bytes per event, partitioned by project and day",
        &peer_bytes("duckdb_partitioned_bytes_per_event"),
    );
    row(
        "PyIceberg bytes per event (its data files)",
        &peer_bytes("pyiceberg_bytes_per_event"),
    );
}
