//! The dashboard queries of `benches/query.rs` (also run by
//! `benches/stream.rs` on a streamed table), and DuckDB running them over
//! Parquet files (`benches/peers/duckdb_peer.py`).

use std::path::Path;
use std::time::Instant;

use raindrop::client::RaindropClient;
use raindrop::demo::SEED_QUERY;

pub struct Query {
    pub name: &'static str,
    pub sql: String,
    pub admin: bool,
}

pub fn queries() -> Vec<Query> {
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

pub fn duckdb_run(
    python: &str,
    data: &Path,
    project: &str,
    outcomes: Option<&Path>,
    hive: bool,
    runs: usize,
    qs: &[Query],
) -> Option<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/duckdb_peer.py");
    let req = serde_json::json!({
        "data": data, "project": project, "runs": runs, "hive": hive,
        "outcomes": outcomes.map(|o| format!("{}/*.parquet", o.display())),
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

/// The middle value of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Median wall time of `runs` calls, in milliseconds.
pub async fn hot_median(runs: usize, mut f: impl AsyncFnMut()) -> f64 {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median(times)
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
pub async fn raindrop_run(
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
