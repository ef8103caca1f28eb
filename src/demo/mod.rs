//! `raindrop demo`: the whole product in one command. Starts an embedded
//! server over a local data directory, creates tokens, ingests realistic
//! telemetry for several tenants over Flight, loads an outcomes table per
//! tenant, runs the canonical seed query and shows what a one-day query
//! reads.

pub mod generate;

use std::time::Instant;

use arrow::util::pretty::pretty_format_batches;

use crate::client::{IngestMode, RaindropClient};
use crate::config::{DemoConfig, ServeConfig};
use crate::error::{Error, Result};
use crate::server::ServerHandle;
use crate::tenant::{Role, tokens};
use generate::{GenConfig, generate_project, project_ids};

/// The canonical query (`sql/seed-query.sql`, a verbatim copy of the
/// project's `shared/seed-query.sql`), embedded unchanged.
pub const SEED_QUERY: &str = include_str!("../../sql/seed-query.sql");

const MARKER: &str = ".raindrop-demo";

fn status(e: tonic::Status) -> Error {
    Error::Internal(format!("{:?}: {}", e.code(), e.message()))
}

/// Run the demo end to end.
pub async fn run(cfg: DemoConfig) -> Result<()> {
    let dir = cfg.data_dir.clone();
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        if dir.join(MARKER).exists() {
            println!("Resetting previous demo data in {}", dir.display());
            std::fs::remove_dir_all(&dir)?;
        } else {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty and was not created by the demo; pass --data-dir with a new directory",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(MARKER),
        "created by `raindrop demo`; deleted by the next demo run\n",
    )?;

    let serve = ServeConfig::in_dir(&dir);
    let tokens_file = serve.tokens_file();
    let projects = project_ids(cfg.projects);
    let mut secrets = vec![];
    for p in &projects {
        let secret = tokens::generate_secret();
        tokens::create_token(&tokens_file, &secret, Some(p), Role::ReadWrite, "demo")?;
        secrets.push(secret);
    }
    let server = ServerHandle::start(serve).await?;
    println!(
        "Raindrop demo: server on {} (data in {})",
        server.url(),
        dir.display()
    );

    let gen_cfg = GenConfig {
        projects: cfg.projects,
        days: cfg.days,
        events: cfg.events,
        batch_rows: cfg.batch_rows,
        seed: cfg.seed,
        end: chrono::Utc::now(),
    };
    let started = Instant::now();
    let mut ingest_time = std::time::Duration::ZERO;
    let mut total = 0i64;
    for (i, (project, secret)) in projects.iter().zip(&secrets).enumerate() {
        let data = generate_project(&gen_cfg, i);
        let mut client = RaindropClient::connect(&server.url(), secret)
            .await
            .map_err(status)?;
        let t = Instant::now();
        for batch in data.events {
            total += client.ingest_events(vec![batch]).await.map_err(status)?;
        }
        client
            .ingest(
                Some("warehouse"),
                "user_outcomes",
                IngestMode::Replace,
                vec![data.outcomes],
            )
            .await
            .map_err(status)?;
        ingest_time += t.elapsed();
        println!(
            "  [{}/{}] {project}: {} events ingested over Flight ({:.0} rows/s so far)",
            i + 1,
            projects.len(),
            data.event_count,
            total as f64 / ingest_time.as_secs_f64()
        );
    }
    println!(
        "Ingested {total} events for {} projects in {:.1}s ({:.0} rows/s end to end, acknowledged once in the write-ahead log; generation excluded)",
        projects.len(),
        started.elapsed().as_secs_f64(),
        total as f64 / ingest_time.as_secs_f64()
    );
    // Queries here see acknowledged rows at once; the flush puts them in
    // the Iceberg table for other engines (and the file counts below).
    let t = Instant::now();
    server.services.ingest.flush().await?;
    println!(
        "Committed to the Iceberg table by the last flush {:.1}s later",
        t.elapsed().as_secs_f64()
    );

    let mut client = RaindropClient::connect(&server.url(), &secrets[0])
        .await
        .map_err(status)?;
    println!(
        "\nSeed query for project '{}' (sql/seed-query.sql, unchanged):",
        projects[0]
    );
    let t = Instant::now();
    let rows = client.query(SEED_QUERY).await.map_err(status)?;
    let elapsed = t.elapsed();
    let shown: Vec<_> = rows
        .iter()
        .map(|b| b.slice(0, b.num_rows().min(12)))
        .take(1)
        .collect();
    println!("{}", pretty_format_batches(&shown)?);
    println!(
        "({} rows in {:.0} ms; first 12 shown)",
        rows.iter().map(|b| b.num_rows()).sum::<usize>(),
        elapsed.as_secs_f64() * 1000.0
    );

    let explain = |sql: &str| format!("EXPLAIN {sql}");
    for (label, sql) in [
        ("the whole history", "SELECT count(*) FROM wildedge.raw_events".to_string()),
        (
            "one day",
            "SELECT count(*) FROM wildedge.raw_events WHERE event_day = current_date - interval '1 day'".to_string(),
        ),
    ] {
        let plan = client.query(&explain(&sql)).await.map_err(status)?;
        let text = pretty_format_batches(&plan)?.to_string();
        let files = text
            .split("files=")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or("?");
        println!("Files planned for {label} of '{}': {files}", projects[0]);
    }

    println!(
        "\nTry it yourself:\n  raindrop serve --data-dir {}\n  token (project '{}', read_write): {}\n  Python: adbc_driver_flightsql.dbapi.connect(\"grpc://127.0.0.1:50051\", db_kwargs={{\"adbc.flight.sql.authorization_header\": \"Bearer <token>\"}})",
        dir.display(),
        projects[0],
        secrets[0]
    );
    server.stop().await
}
