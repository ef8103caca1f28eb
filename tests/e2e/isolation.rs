//! A tenant never sees, lists or infers another tenant's data, whatever SQL
//! it sends; and planned files never leave its partition.

use tonic::Code;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_sql_sees_only_own_rows() {
    let server = loaded_server().await;
    let data = dataset().await;
    let acme_n = data.acme.event_count as i64;
    let mut acme = server.client("acme").await;

    let projects = strings(
        &acme
            .query("SELECT DISTINCT project_id FROM wildedge.raw_events")
            .await
            .unwrap(),
        "project_id",
    );
    assert_eq!(projects, vec![ACME.to_string()]);

    // Each must count exactly acme's rows (or none of globex's).
    let cases = [
        ("SELECT count(*) FROM wildedge.raw_events", acme_n),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE project_id = 'globex'",
            0,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE project_id = 'globex' OR true",
            acme_n,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE project_id <> 'acme'",
            0,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE project_id IN ('globex', 'acme')",
            acme_n,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE lower(project_id) = 'globex'",
            0,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE NOT (project_id = 'acme')",
            0,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE session_id LIKE 'globex%'",
            0,
        ),
        (
            "WITH x AS (SELECT * FROM wildedge.raw_events WHERE project_id = 'globex') SELECT count(*) FROM x",
            0,
        ),
        (
            "SELECT count(*) FROM (SELECT event_id FROM wildedge.raw_events UNION ALL \
             SELECT event_id FROM wildedge.raw_events WHERE project_id = 'globex')",
            acme_n,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE session_id IN \
             (SELECT session_id FROM wildedge.raw_events WHERE project_id = 'globex')",
            0,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events a JOIN wildedge.raw_events b \
             ON a.event_id = b.event_id WHERE b.project_id = 'globex'",
            0,
        ),
        (
            "SELECT count(*) FROM raindrop.wildedge.raw_events WHERE event_id LIKE 'globex-%'",
            0,
        ),
        (
            "SELECT count(*) FROM wildedge.raw_events WHERE CAST(project_id AS VARCHAR) = 'globex'",
            0,
        ),
    ];
    // Record every object the storage layer reads while acme attacks.
    let log = server.access_log();
    log.start();
    for (sql, want) in cases {
        assert_eq!(count(&mut acme, sql).await, want, "{sql}");
    }
    let reads = log.stop();
    let data_reads: Vec<_> = reads.iter().filter(|p| p.ends_with(".parquet")).collect();
    assert!(
        !data_reads.is_empty(),
        "the recorder saw no data files: {reads:?}"
    );
    for p in &data_reads {
        assert!(
            p.contains("/data/project_id=acme/"),
            "acme's queries opened {p}"
        );
    }
    assert!(
        reads.iter().all(|p| !p.contains("globex")),
        "acme's queries touched globex objects: {reads:?}"
    );

    // Own tables only, in listings and by name.
    let tables = acme
        .query("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema <> 'information_schema'")
        .await
        .unwrap();
    let mut listed: Vec<String> = strings(&tables, "table_schema")
        .into_iter()
        .zip(strings(&tables, "table_name"))
        .map(|(s, t)| format!("{s}.{t}"))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec!["warehouse.user_outcomes", "wildedge.raw_events"]
    );
    let schemata = strings(
        &acme
            .query("SELECT schema_name FROM information_schema.schemata")
            .await
            .unwrap(),
        "schema_name",
    );
    assert!(
        schemata
            .iter()
            .all(|s| !s.contains("globex") && !s.contains("tenants")),
        "{schemata:?}"
    );
    let shown = strings(&acme.query("SHOW TABLES").await.unwrap(), "table_name");
    assert!(shown.contains(&"user_outcomes".to_string()));

    let sessions = strings(
        &acme
            .query("SELECT session_id FROM warehouse.user_outcomes")
            .await
            .unwrap(),
        "session_id",
    );
    assert_eq!(sessions.len(), data.acme.outcomes.num_rows());
    assert!(sessions.iter().all(|s| s.starts_with("acme-")));

    // Other tenants' tables cannot be named at all.
    for sql in [
        "SELECT * FROM tenants.globex.warehouse.user_outcomes",
        "SELECT * FROM \"tenants.globex.warehouse\".user_outcomes",
        "SELECT * FROM globex.user_outcomes",
    ] {
        let err = acme.query(sql).await.unwrap_err();
        assert!(
            matches!(err.code(), Code::NotFound | Code::InvalidArgument),
            "{sql}: {err:?}"
        );
    }

    // Every file acme's scan plans is in acme's partition, and a one-day
    // query plans strictly fewer than the whole history.
    let acme_files = parquet_files(&server.raw_events_data().join("project_id=acme")).len();
    let globex_files = parquet_files(&server.raw_events_data().join("project_id=globex")).len();
    assert!(acme_files > 0 && globex_files > 0);
    let planned = planned_files(
        &mut acme,
        "SELECT * FROM wildedge.raw_events WHERE project_id = 'globex' OR true",
    )
    .await;
    assert_eq!(
        planned,
        vec![acme_files],
        "acme plans exactly its own files"
    );

    // Admin sees everything.
    let mut admin = server.client("admin").await;
    let total = count(&mut admin, "SELECT count(*) FROM wildedge.raw_events").await;
    assert_eq!(
        total as usize,
        data.acme.event_count + data.globex.event_count
    );
    assert_eq!(
        planned_files(&mut admin, "SELECT * FROM wildedge.raw_events").await,
        vec![acme_files + globex_files]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_escapes_are_refused() {
    let server = loaded_server().await;
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    let all = "SELECT count(*) FROM wildedge.raw_events";
    let (acme_rows, globex_rows) = (count(&mut acme, all).await, count(&mut globex, all).await);
    for (sql, code) in [
        (
            "INSERT INTO wildedge.raw_events (project_id) VALUES ('x')",
            Code::PermissionDenied,
        ),
        // Erasure needs a condition, and only ever touches acme's rows.
        ("DELETE FROM wildedge.raw_events", Code::InvalidArgument),
        (
            "DELETE FROM wildedge.raw_events WHERE project_id = 'globex'",
            Code::PermissionDenied,
        ),
        (
            "DELETE FROM wildedge.raw_events WHERE session_id IN (SELECT session_id FROM wildedge.raw_events)",
            Code::Unimplemented,
        ),
        (
            "UPDATE wildedge.raw_events SET model_name = 'x'",
            Code::PermissionDenied,
        ),
        ("DROP TABLE wildedge.raw_events", Code::PermissionDenied),
        (
            "CREATE EXTERNAL TABLE leak STORED AS PARQUET LOCATION '/'",
            Code::PermissionDenied,
        ),
        (
            "CREATE TABLE wildedge.t AS SELECT 1 AS a",
            Code::PermissionDenied,
        ),
        (
            "CREATE VIEW v AS SELECT * FROM wildedge.raw_events",
            Code::Unimplemented,
        ),
        (
            "COPY (SELECT 1) TO '/tmp/raindrop-leak.parquet'",
            Code::PermissionDenied,
        ),
        (
            "SET datafusion.execution.target_partitions = 1",
            Code::PermissionDenied,
        ),
        ("EXPLAIN CREATE TABLE t AS SELECT 1", Code::PermissionDenied),
    ] {
        let err = acme.query(sql).await.unwrap_err();
        assert_eq!(err.code(), code, "{sql}: {err:?}");
    }
    assert!(!std::path::Path::new("/tmp/raindrop-leak.parquet").exists());
    assert_eq!(count(&mut acme, all).await, acme_rows);
    assert_eq!(count(&mut globex, all).await, globex_rows);
    // Table functions that read files or URLs are not registered.
    for sql in [
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
    ] {
        let err = acme.query(sql).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{sql}: {err:?}");
        assert!(
            !err.message().contains("root:"),
            "{sql} leaked file contents"
        );
    }
}

/// Sessions start from one shared base state; each must still get its own
/// catalog list, or one tenant's session could resolve another's schemas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_never_share_a_catalog() {
    use raindrop::client::IngestMode;
    use raindrop::tenant::{Principal, Role};
    let server = TestServer::start().await;
    let data = dataset().await;
    let mut acme = server.client("acme").await;
    acme.ingest(
        Some("private"),
        "notes",
        IngestMode::Create,
        vec![data.acme.outcomes.clone()],
    )
    .await
    .unwrap();
    let engine = &server.handle.as_ref().unwrap().services.query;
    let who = |project: &str| Principal {
        token_id: format!("t-{project}"),
        project_id: Some(project.to_string()),
        role: Role::ReadWrite,
    };
    let catalog = engine.warehouse().catalog_name.clone();
    let schemas = |ctx: &datafusion::prelude::SessionContext| {
        let mut names = ctx.catalog(&catalog).unwrap().schema_names();
        names.sort();
        names
    };
    let a = engine.session(&who(ACME)).await.unwrap();
    assert!(schemas(&a).contains(&"private".to_string()));
    let g = engine.session(&who(GLOBEX)).await.unwrap();
    assert!(
        !schemas(&g).contains(&"private".to_string()),
        "{:?}",
        schemas(&g)
    );
    // Creating globex's session left acme's untouched, and vice versa.
    assert!(
        schemas(&a).contains(&"private".to_string()),
        "{:?}",
        schemas(&a)
    );
    assert!(!std::sync::Arc::ptr_eq(
        &a.state().catalog_list().clone(),
        &g.state().catalog_list().clone()
    ));
}
