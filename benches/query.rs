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
use raindrop::demo::SEED_QUERY;
use raindrop::demo::generate::{GenConfig, generate_project, project_ids, project_sizes};
use raindrop::server::ServerHandle;
use raindrop::tenant::{Role, tokens};

struct Query {
    name: &'static str,
    sql: String,
    admin: bool,
}

fn queries() -> Vec<Query> {
    let q = |name, sql: &str, admin| Query {
        name,
        sql: sql.to_string(),
        admin,
    };
    vec![
        q("seed query (join outcomes, 30 days)", SEED_QUERY, false),
        q(
            "hourly p95 + mean confidence, 1 day",
            "SELECT date_trunc('hour', event_timestamp) AS hour, model_name, avg(confidence) AS mean_confidence, \
             percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms, count(*) AS n \
             FROM wildedge.raw_events WHERE event_type = 'inference' AND event_day = current_date - interval '1 day' \
             GROUP BY 1, 2 ORDER BY 1, 2",
            false,
        ),
        q(
            "error rate by model version, 7 days",
            "SELECT model_version, avg(CASE WHEN event_type = 'error' THEN 1.0 ELSE 0.0 END) AS error_rate, count(*) AS n \
             FROM wildedge.raw_events WHERE event_day >= current_date - interval '7 days' GROUP BY 1 ORDER BY 1",
            false,
        ),
        q(
            "confidence histogram per model, 30 days",
            "SELECT model_name, least(floor(confidence * 10), 9) AS bucket, count(*) AS n \
             FROM wildedge.raw_events WHERE event_type = 'inference' AND event_day >= current_date - interval '30 days' \
             GROUP BY 1, 2 ORDER BY 1, 2",
            false,
        ),
        q(
            "top 20 sessions, last day",
            "SELECT session_id, count(*) AS events, avg(duration_ms) AS mean_ms FROM wildedge.raw_events \
             WHERE event_day >= current_date - interval '1 day' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
            false,
        ),
        q(
            "admin: events per project, 7 days",
            "SELECT project_id, count(*) AS events, avg(confidence) AS mean_confidence FROM wildedge.raw_events \
             WHERE event_day >= current_date - interval '7 days' GROUP BY 1 ORDER BY 1",
            true,
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median wall time of `runs` calls, in milliseconds.
async fn hot_median(runs: usize, mut f: impl AsyncFnMut()) -> f64 {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median(times)
}

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

/// Sum of a `key=<n>` field over every scan line of an `EXPLAIN`.
fn explain_sum(text: &str, key: &str) -> usize {
    text.split("IcebergScanExec: ")
        .skip(1)
        .filter_map(|s| {
            s.split(key)
                .nth(1)?
                .split([',', '/'])
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

/// Median hot ms, rows, files planned and manifests overlapping/total.
async fn raindrop_run(
    url: &str,
    token: &str,
    sql: &str,
    runs: usize,
) -> (f64, usize, usize, (usize, usize)) {
    let mut c = RaindropClient::connect(url, token).await.unwrap();
    let plan = c.query(&format!("EXPLAIN {sql}")).await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    let files = explain_sum(&text, " files=");
    let manifests = (
        explain_sum(&text, "manifests="),
        text.split("IcebergScanExec: ")
            .skip(1)
            .filter_map(|s| {
                s.split("manifests=")
                    .nth(1)?
                    .split('/')
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum(),
    );
    let rows: usize = c
        .query(sql)
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    let ms = hot_median(runs, async || {
        c.query(sql).await.unwrap();
    })
    .await;
    (ms, rows, files, manifests)
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

fn duckdb_run(
    python: &str,
    data: &Path,
    project: &str,
    outcomes: &Path,
    runs: usize,
    qs: &[Query],
) -> Option<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/duckdb_peer.py");
    let req = serde_json::json!({
        "data": data, "project": project, "outcomes": format!("{}/*.parquet", outcomes.display()), "runs": runs,
        "queries": qs.iter().map(|q| serde_json::json!({"name": q.name, "sql": q.sql, "admin": q.admin})).collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| eprintln!("DuckDB peer not run ({python}): {e}"))
        .ok()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        eprintln!("DuckDB peer failed");
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
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
        let python = std::env::var("RAINDROP_PYTHON").unwrap_or_else(|_| {
            format!("{}/.cache/raindrop/venv/bin/python", std::env::var("HOME").unwrap_or_default())
        });
        let duck = duckdb_run(&python, &data, &tenant, &outcomes, runs, &qs);

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
