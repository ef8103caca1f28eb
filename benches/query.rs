//! End-to-end query benchmark: Raindrop over Flight SQL vs DuckDB and bare
//! DataFusion reading the same Parquet files, in one run.
//!
//! ```text
//! cargo bench --bench query            # 10M events, 50 projects, 30 days
//! RAINDROP_BENCH_EVENTS=2000000 cargo bench --bench query
//! ```
//! Data is generated and ingested once into `RAINDROP_BENCH_DIR` (default
//! `$CARGO_TARGET_DIR/raindrop-bench/<events>`), then reused. DuckDB runs
//! through `RAINDROP_PYTHON` (default: the test venv). Results: see
//! `benches/README.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::DataType;
use chrono::Utc;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use raindrop::client::{IngestMode, RaindropClient};
use raindrop::config::ServeConfig;
use raindrop::demo::generate::{GenConfig, generate_project, project_ids, project_sizes};
use raindrop::server::ServerHandle;
use raindrop::tenant::{Role, tokens};

mod common;
use common::queries::{duckdb_run, hot_median, queries, raindrop_run};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Ingest the dataset over Flight once; returns (tokens by project, admin token).
async fn prepare(dir: &Path, cfg: &GenConfig) -> (HashMap<String, String>, String) {
    let marker = dir.join("bench-tokens.json");
    if let Ok(bytes) = std::fs::read(&marker) {
        let saved: (HashMap<String, String>, String) = serde_json::from_slice(&bytes).unwrap();
        println!("reusing ingested data in {}", dir.display());
        return saved;
    }
    std::fs::create_dir_all(dir).unwrap();
    let tokens_file = ServeConfig::in_dir(dir).tokens_file();
    let mut project_tokens = HashMap::new();
    for p in project_ids(cfg.projects) {
        let secret = tokens::generate_secret();
        tokens::create_token(&tokens_file, &secret, Some(&p), Role::ReadWrite, "bench").unwrap();
        project_tokens.insert(p, secret);
    }
    let admin = tokens::generate_secret();
    tokens::create_token(&tokens_file, &admin, None, Role::Admin, "bench").unwrap();
    let server = ServerHandle::start(ServeConfig::in_dir(dir)).await.unwrap();
    let (mut rows, mut ingest_secs, mut gen_secs) = (0usize, 0f64, 0f64);
    for (i, p) in project_ids(cfg.projects).iter().enumerate() {
        let t = Instant::now();
        let data = generate_project(cfg, i);
        gen_secs += t.elapsed().as_secs_f64();
        let mut c = RaindropClient::connect(&server.url(), &project_tokens[p])
            .await
            .unwrap();
        let t = Instant::now();
        for b in data.events {
            rows += c.ingest_events(vec![b]).await.unwrap() as usize;
        }
        c.ingest(
            Some("warehouse"),
            "user_outcomes",
            IngestMode::Replace,
            vec![data.outcomes],
        )
        .await
        .unwrap();
        ingest_secs += t.elapsed().as_secs_f64();
    }
    println!(
        "ingested {rows} events for {} projects over Flight in {ingest_secs:.1}s: {:.0} rows/s (generation {gen_secs:.1}s, excluded)",
        cfg.projects,
        rows as f64 / ingest_secs
    );
    server.stop().await.unwrap();
    std::fs::write(
        &marker,
        serde_json::to_vec(&(&project_tokens, &admin)).unwrap(),
    )
    .unwrap();
    (project_tokens, admin)
}

/// A ListingTable over the Parquet files under `root`.
async fn listing_table(
    state: &datafusion::execution::SessionState,
    root: &str,
    opts: ListingOptions,
) -> ListingTable {
    let url = ListingTableUrl::parse(root).unwrap();
    let schema = opts.infer_schema(state, &url).await.unwrap();
    ListingTable::try_new(
        ListingTableConfig::new(url)
            .with_listing_options(opts)
            .with_schema(schema),
    )
    .unwrap()
}

async fn datafusion_ctx(data: &Path, project: Option<&str>, outcomes: &Path) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.sql("CREATE SCHEMA wildedge").await.unwrap();
    ctx.sql("CREATE SCHEMA warehouse").await.unwrap();
    let state = ctx.state();
    let parquet =
        || ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let (root, opts) = match project {
        // Tenant: its prefix, with event_day as a directory partition column.
        Some(p) => (
            format!("{}/project_id={p}/", data.display()),
            parquet().with_table_partition_cols(vec![("event_day".to_string(), DataType::Date32)]),
        ),
        None => (format!("{}/", data.display()), parquet()),
    };
    let table = listing_table(&state, &root, opts).await;
    let name = if project.is_some() {
        "wildedge.raw_events"
    } else {
        "wildedge.all_files"
    };
    ctx.register_table(name, Arc::new(table)).unwrap();
    if project.is_none() {
        ctx.sql("CREATE VIEW wildedge.raw_events AS SELECT *, CAST(event_timestamp AS DATE) AS event_day FROM wildedge.all_files")
            .await
            .unwrap();
    }
    let table = listing_table(&state, &format!("{}/", outcomes.display()), parquet()).await;
    ctx.register_table("warehouse.user_outcomes", Arc::new(table))
        .unwrap();
    ctx
}

async fn datafusion_run(ctx: &SessionContext, sql: &str, runs: usize) -> (f64, usize) {
    let rows: usize = ctx
        .sql(sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let ms = hot_median(runs, async || {
        ctx.sql(sql).await.unwrap().collect().await.unwrap();
    })
    .await;
    (ms, rows)
}

fn main() {
    // `cargo test --all-targets` builds and runs benches as tests: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("query benchmark: run with `cargo bench --bench query`");
        return;
    }
    raindrop::disable_library_backtraces();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let events = env_usize("RAINDROP_BENCH_EVENTS", 10_000_000);
        let projects = env_usize("RAINDROP_BENCH_PROJECTS", 50);
        let runs = env_usize("RAINDROP_BENCH_RUNS", 5);
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        let dir = std::env::var("RAINDROP_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(target).join(format!("raindrop-bench/{events}-{projects}")));
        let dir = std::path::absolute(dir).unwrap();
        let cfg = GenConfig {
            projects,
            days: 30,
            events,
            batch_rows: 250_000,
            seed: 7,
            end: Utc::now(),
        };
        let (tokens, admin) = prepare(&dir, &cfg).await;
        // A mid-sized tenant: the 6th largest.
        let ids = project_ids(projects);
        let tenant = ids[5.min(projects - 1)].clone();
        let size = project_sizes(projects, events)[5.min(projects - 1)];
        println!("tenant '{tenant}': {size} of {events} events; {runs} hot runs per query, median\n");

        let server = ServerHandle::start(ServeConfig::in_dir(&dir)).await.unwrap();
        let data = dir.join("warehouse/wildedge/raw_events/data");
        let outcomes = dir.join(format!("warehouse/tenants/{tenant}/warehouse/user_outcomes/data"));
        let df_tenant = datafusion_ctx(&data, Some(&tenant), &outcomes).await;
        let df_admin = datafusion_ctx(&data, None, &outcomes).await;
        let qs = queries();
        let python = common::python();
        let duck = duckdb_run(&python, &data, &tenant, Some(&outcomes), false, runs, &qs);

        println!("| query | Raindrop ms | manifests | files read | DataFusion ms | DuckDB ms | Raindrop/DataFusion | Raindrop/DuckDB | rows |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for q in &qs {
            let token = if q.admin { &admin } else { &tokens[&tenant] };
            let (rd, rows, files, (m_used, m_all)) =
                raindrop_run(&server.url(), token, &q.sql, runs).await;
            let ctx = if q.admin { &df_admin } else { &df_tenant };
            let (df, df_rows) = datafusion_run(ctx, &q.sql, runs).await;
            let (dk, dk_rows) = duck
                .as_ref()
                .and_then(|d| d.get(q.name))
                .map(|v| (v["median_ms"].as_f64().unwrap(), v["rows"].as_u64().unwrap() as usize))
                .unwrap_or((f64::NAN, 0));
            let check = if rows == df_rows && (dk.is_nan() || rows == dk_rows) { "" } else { " (row counts differ!)" };
            println!(
                "| {} | {rd:.1} | {m_used}/{m_all} | {files} | {df:.1} | {dk:.1} | {:.2} | {:.2} | {rows}{check} |",
                q.name,
                rd / df,
                rd / dk
            );
        }
        server.stop().await.unwrap();
    });
}
