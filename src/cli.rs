//! What the `raindrop` binary does for each subcommand.
//!
//! This lives in the library rather than in `main.rs` so that the async code
//! it drives is compiled once, here: an `async fn` is compiled in the crate
//! that polls it, and awaiting the server from `main` made the binary
//! recompile the whole server stack (156 s of a release build).

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::{Cli, Command, LogConfig, ProjectArgs, ProjectCommand, TokenCommand};
use crate::tenant::tokens;

/// Run the parsed command line to completion on a multi-threaded runtime.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_logging(&cli.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => serve(config).await,
            Command::Token(cmd) => token(cmd).await,
            Command::Demo(config) => Ok(crate::demo::run(config).await?),
            Command::Orphans(config) => orphans(config).await,
            Command::Compact(config) => compact(config).await,
            Command::Project(cmd) => project(cmd).await,
        }
    })
}

fn init_logging(log: &LogConfig) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| log.filter.clone());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        // Colours only for a terminal: log files and collectors get text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(config: crate::config::ServeConfig) -> anyhow::Result<()> {
    let services = crate::server::build_services(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let addr = listener.local_addr()?;
    let http = match config.http_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding --http-addr {a}"))?,
        ),
        None => None,
    };
    println!(
        "Raindrop {} listening on grpc://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(l) = &http {
        println!("  metrics  : http://{}/metrics", l.local_addr()?);
    }
    println!("  warehouse: {}", services.query.warehouse().warehouse);
    println!("  data dir : {}", config.storage.data_dir.display());
    println!(
        "  tokens   : {} ({} configured)",
        services.tokens.source(),
        services.tokens.len()
    );
    println!("Connect with any Flight SQL client, e.g. Python ADBC:");
    println!(
        "  adbc_driver_flightsql.dbapi.connect(\"grpc://{addr}\", db_kwargs={{\"adbc.flight.sql.authorization_header\": \"Bearer <token>\"}})"
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    crate::server::run(
        listener,
        http,
        services.clone(),
        &config,
        Box::pin(shutdown),
    )
    .await?;
    services.maintenance.stop().await;
    Ok(())
}

async fn orphans(config: crate::config::OrphansConfig) -> anyhow::Result<()> {
    let warehouse = crate::catalog::open(&config.storage).await?;
    let table = warehouse.raw_events().await?;
    let min_age = std::time::Duration::from_secs(config.min_age_mins * 60);
    let report = crate::maintenance::find_orphan_files(&warehouse.store, &table, min_age).await?;
    for location in &report.orphans {
        println!("{location}");
    }
    eprintln!(
        "raw_events: {} data files on disk, {} referenced, {} orphaned (older than {} min)",
        report.on_disk,
        report.referenced,
        report.orphans.len(),
        config.min_age_mins
    );
    if config.delete {
        let n = crate::maintenance::delete_orphans(&warehouse.store, &report).await?;
        eprintln!("deleted {n} orphan files");
    }
    Ok(())
}

async fn compact(config: crate::config::CompactConfig) -> anyhow::Result<()> {
    use crate::maintenance::compact::{CompactOptions, CompactReport, compact_table};
    /// Passes when a running server's compaction keeps replacing files
    /// this one planned to merge.
    const PASSES: usize = 3;
    let warehouse = crate::catalog::open(&config.storage).await?;
    let options = CompactOptions {
        min_files: config.min_files,
        ..CompactOptions::default()
    };
    let mut r = CompactReport::default();
    for _ in 0..PASSES {
        let pass = compact_table(&warehouse, &warehouse.raw_events_ident(), &options).await?;
        // Commits another compaction beat were dropped: plan again on the
        // files live now.
        let again = pass.superseded > 0;
        r.absorb(pass);
        if !again {
            break;
        }
    }
    eprintln!(
        "raw_events: {} partitions compacted, {} files ({} bytes) replaced by {} files ({} bytes), {} rows, {} snapshots ({} commits dropped: a server's compaction merged those files first)",
        r.partitions,
        r.files_removed,
        r.bytes_removed,
        r.files_added,
        r.bytes_added,
        r.rows,
        r.snapshots.len(),
        r.superseded
    );
    Ok(())
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            project,
            role,
            token,
            label,
            file,
        } => {
            let secret = token.unwrap_or_else(tokens::generate_secret);
            let source = file.source();
            let rec = tokens::create(&source, &secret, project.as_deref(), role, &label).await?;
            eprintln!(
                "created token {} (project {}, role {}) in {}; the secret is shown only once:",
                rec.id,
                rec.project_id.as_deref().unwrap_or("*"),
                rec.role,
                source
            );
            println!("{secret}");
        }
        TokenCommand::List { file } => {
            println!(
                "{:<14} {:<20} {:<11} {:<26} label",
                "id", "project", "role", "created"
            );
            for t in tokens::list(&file.source()).await? {
                println!(
                    "{:<14} {:<20} {:<11} {:<26} {}",
                    t.id,
                    t.project_id.as_deref().unwrap_or("*"),
                    t.role,
                    t.created_at,
                    t.label
                );
            }
        }
        TokenCommand::Revoke { id, file } => {
            tokens::revoke(&file.source(), &id).await?;
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

async fn project(cmd: ProjectCommand) -> anyhow::Result<()> {
    use crate::maintenance::{offboard, retention};
    use crate::tenant::projects::{ProjectTable, validate_retention_days};
    let open = |args: &ProjectArgs| {
        let storage = args.storage.clone();
        async move {
            let warehouse = crate::catalog::open(&storage).await?;
            let projects =
                ProjectTable::open(&warehouse.catalog_uri, &warehouse.catalog_name).await?;
            anyhow::Ok((warehouse, projects))
        }
    };
    match cmd {
        ProjectCommand::SetRetention {
            project,
            days,
            forever: _,
            args,
        } => {
            let days = days.map(validate_retention_days).transpose()?;
            let (warehouse, projects) = open(&args).await?;
            offboard::require_project(&warehouse, &projects, &args.token_source(), &project)
                .await?;
            projects.set_retention(&project, days).await?;
            match days {
                Some(d) => eprintln!(
                    "project {project}: events kept {d} days; older event_day partitions are dropped at the next maintenance run (hourly, or `raindrop project enforce-retention`)"
                ),
                None => eprintln!("project {project}: events kept forever"),
            }
        }
        ProjectCommand::List { args } => {
            let (_, projects) = open(&args).await?;
            println!("{:<24} {:<12} deleted", "project", "retention");
            for p in projects.list().await? {
                let retention = p
                    .retention_days
                    .map_or("forever".to_string(), |d| format!("{d} days"));
                let deleted = p
                    .deleted_at_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or(String::new(), |t| t.to_rfc3339());
                println!("{:<24} {:<12} {}", p.project_id, retention, deleted);
            }
        }
        ProjectCommand::EnforceRetention { args } => {
            let (warehouse, projects) = open(&args).await?;
            let reports = retention::enforce(&warehouse, &projects).await?;
            for r in &reports {
                print_drop(r);
            }
            eprintln!(
                "{} projects lost partitions; their files leave storage when the snapshots before the drop expire",
                reports.len()
            );
        }
        ProjectCommand::Delete { project, yes, args } => {
            if !yes {
                anyhow::bail!(
                    "deleting project {project} removes its events, tables and tokens for good; run again with --yes"
                );
            }
            let (warehouse, projects) = open(&args).await?;
            let r = offboard::delete_project(&warehouse, &projects, &args.token_source(), &project)
                .await?;
            print_drop(&r.raw_events);
            for t in &r.tables {
                println!("{project}: table {t} dropped, files deleted");
            }
            for id in &r.tokens_revoked {
                println!("{project}: token {id} revoked");
            }
            eprintln!(
                "project {project} deleted; raw_events files leave storage when the snapshots before the drop expire"
            );
        }
    }
    Ok(())
}

fn print_drop(r: &crate::maintenance::retention::DropReport) {
    println!(
        "{}: raw_events {} partitions, {} files, {} rows, {} bytes dropped{}",
        r.project_id,
        r.partitions,
        r.files,
        r.rows,
        r.bytes,
        r.snapshot_id
            .map_or(String::new(), |id| format!(" (snapshot {id})"))
    );
}
