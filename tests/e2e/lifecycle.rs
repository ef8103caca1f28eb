//! Data lifecycle: per-project retention drops whole expired days, deleting
//! a project removes everything of it; neither touches another tenant, and
//! the files leave storage once the snapshots before the drop expire.

use std::collections::BTreeMap;
use std::time::Duration;

use raindrop::catalog::Warehouse;
use raindrop::client::RaindropClient;
use raindrop::error::Error;
use raindrop::maintenance::{Retention, expire_and_clean, offboard, retention};
use raindrop::tenant::projects::ProjectTable;

use crate::common::*;

/// What must stay exactly as it was for a tenant a change does not target.
const FINGERPRINT: &str = "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, \
     sum(CAST(input_tokens AS BIGINT)) AS tokens, \
     CAST(min(event_timestamp) AS VARCHAR) AS lo, CAST(max(event_timestamp) AS VARCHAR) AS hi \
     FROM wildedge.raw_events";

async fn fingerprint(client: &mut RaindropClient, sql: &str) -> String {
    let batches = client.query(sql).await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// Rows per `event_day` (as `YYYY-MM-DD`) the tenant sees.
async fn rows_per_day(client: &mut RaindropClient) -> BTreeMap<String, i64> {
    let batches = client
        .query(
            "SELECT CAST(event_day AS VARCHAR) AS day, count(*) AS n \
             FROM wildedge.raw_events GROUP BY 1 ORDER BY 1",
        )
        .await
        .unwrap();
    let days = strings(&batches, "day");
    let mut counts = vec![];
    for b in &batches {
        let n = b
            .column_by_name("n")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        counts.extend(n.values().iter().copied());
    }
    days.into_iter().zip(counts).collect()
}

fn warehouse(server: &TestServer) -> &Warehouse {
    server.handle.as_ref().unwrap().services.query.warehouse()
}

async fn projects(server: &TestServer) -> ProjectTable {
    let w = warehouse(server);
    ProjectTable::open(&w.catalog_uri, &w.catalog_name)
        .await
        .unwrap()
}

/// Live data files of `raw_events` by location.
async fn live_files(w: &Warehouse) -> Vec<String> {
    let table = w.raw_events().await.unwrap();
    scan_tasks(&table)
        .await
        .into_iter()
        .map(|t| t.data_file_path)
        .collect()
}

/// Expire every snapshot but the current one, deleting what they alone
/// referenced.
async fn expire_all_but_current(w: &Warehouse) {
    let keep_one = Retention {
        max_age: None,
        max_snapshots: Some(1),
        min_file_age: Duration::ZERO,
    };
    expire_and_clean(w, &w.raw_events_ident(), &keep_one, false)
        .await
        .unwrap();
}

fn day_of(location: &str) -> &str {
    let at = location.find("/event_day=").expect("day-partitioned path") + 11;
    &location[at..at + 10]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_expired_days_of_one_project_only() {
    let server = loaded_server().await;
    let w = warehouse(&server);
    let projects = projects(&server).await;
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    let globex_before = fingerprint(&mut globex, FINGERPRINT).await;
    let acme_days = rows_per_day(&mut acme).await;
    let first_kept = retention::today() - 10;
    let first_kept_date = chrono::NaiveDate::from_num_days_from_ce_opt(first_kept + 719_163)
        .unwrap()
        .to_string();
    let (expired, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = acme_days
        .clone()
        .into_iter()
        .partition(|(day, _)| *day < first_kept_date);
    assert!(
        expired.len() >= 10 && !kept.is_empty(),
        "fixture should span days on both sides of the cutoff: {acme_days:?}"
    );
    let before_files = live_files(w).await;

    // An unknown project is refused, and nothing is stored for it.
    let err = offboard::require_project(w, &projects, &server.token_source, "nosuch")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");

    projects.set_retention(ACME, Some(10)).await.unwrap();
    let reports = retention::enforce(w, &projects).await.unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(r.project_id, ACME);
    assert_eq!(r.partitions, expired.len());
    assert_eq!(r.rows as i64, expired.values().sum::<i64>());

    // Queries stop seeing the expired days at once; the rest is intact.
    assert_eq!(rows_per_day(&mut acme).await, kept);
    assert_eq!(fingerprint(&mut globex, FINGERPRINT).await, globex_before);

    // At the storage layer: one metadata-only delete snapshot, exact totals,
    // and no live file of acme before the cutoff.
    let table = w.raw_events().await.unwrap();
    let snapshot = table.metadata().current_snapshot().unwrap();
    assert_eq!(
        snapshot.summary().operation,
        iceberg::spec::Operation::Delete
    );
    let props = &snapshot.summary().additional_properties;
    assert_eq!(props["deleted-records"], r.rows.to_string());
    assert_eq!(props.get("added-data-files").map(String::as_str), Some("0"));
    let live = live_files(w).await;
    let total: i64 = scan_tasks(&table)
        .await
        .iter()
        .map(|t| t.record_count.unwrap_or_default() as i64)
        .sum();
    assert_eq!(props["total-records"], total.to_string());
    let dropped: Vec<&String> = before_files
        .iter()
        .filter(|f| f.contains("/project_id=acme/") && day_of(f) < first_kept_date.as_str())
        .collect();
    assert_eq!(dropped.len(), r.files);
    assert_eq!(live.len(), before_files.len() - r.files);
    assert!(dropped.iter().all(|f| !live.contains(f)));

    // Applying it again drops nothing more.
    assert!(retention::enforce(w, &projects).await.unwrap().is_empty());

    // The dropped files stay on storage until the snapshots before the drop
    // expire, then go; every live file stays.
    for f in &dropped {
        assert!(w.store.exists(f).await.unwrap(), "{f} deleted too early");
    }
    expire_all_but_current(w).await;
    for f in &dropped {
        assert!(!w.store.exists(f).await.unwrap(), "{f} still on storage");
    }
    for f in &live {
        assert!(w.store.exists(f).await.unwrap(), "live file {f} deleted");
    }
    assert_eq!(rows_per_day(&mut acme).await, kept);
    assert_eq!(fingerprint(&mut globex, FINGERPRINT).await, globex_before);

    // Keeping forever again stops further drops.
    projects.set_retention(ACME, None).await.unwrap();
    assert_eq!(
        projects.get(ACME).await.unwrap().unwrap().retention_days,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_project_removes_its_events_tables_and_tokens_only() {
    let server = loaded_server().await;
    let w = warehouse(&server);
    let projects = projects(&server).await;
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    let outcomes = "SELECT count(*) AS n, count(DISTINCT session_id) AS sessions, \
         sum(CASE WHEN converted THEN 1 ELSE 0 END) AS converted FROM warehouse.user_outcomes";
    let globex_before = fingerprint(&mut globex, FINGERPRINT).await;
    let globex_outcomes = fingerprint(&mut globex, outcomes).await;
    let acme_rows = count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await;
    let acme_table = w
        .catalog
        .load_table(&iceberg::TableIdent::new(
            w.tenant_namespace(ACME, "warehouse"),
            "user_outcomes".into(),
        ))
        .await
        .unwrap();
    let acme_table_dir = format!("{}/", acme_table.metadata().location());
    assert!(!w.store.list(&acme_table_dir).await.unwrap().is_empty());

    let r = offboard::delete_project(w, &projects, &server.token_source, ACME)
        .await
        .unwrap();
    assert_eq!(r.raw_events.rows as i64, acme_rows);
    assert_eq!(r.tables, vec!["warehouse.user_outcomes".to_string()]);
    assert_eq!(r.tokens_revoked.len(), 3, "acme, acme_read, acme_ingest");

    // Its tokens no longer work, on a new connection or an open one.
    let refused = match RaindropClient::connect(&server.url(), &server.tokens["acme"]).await {
        Err(e) => e.to_string(),
        Ok(mut c) => c
            .query("SELECT 1")
            .await
            .expect_err("a revoked token must be refused")
            .to_string(),
    };
    assert!(refused.to_lowercase().contains("token"), "{refused}");
    assert!(acme.query("SELECT 1").await.is_err());

    // Nothing of acme is live in raw_events; its own table is gone from the
    // catalog and from storage.
    assert!(
        live_files(w)
            .await
            .iter()
            .all(|f| !f.contains("/project_id=acme/"))
    );
    assert!(w.tenant_tables(ACME).await.unwrap().is_empty());
    assert!(w.store.list(&acme_table_dir).await.unwrap().is_empty());
    // Deleted is final: no retention for it, and a second delete finds
    // nothing more to remove.
    assert!(projects.set_retention(ACME, Some(5)).await.is_err());
    let again = offboard::delete_project(w, &projects, &server.token_source, ACME)
        .await
        .unwrap();
    assert_eq!(again.raw_events.files, 0);
    assert!(again.tables.is_empty() && again.tokens_revoked.is_empty());

    // Other tenants are untouched.
    assert_eq!(fingerprint(&mut globex, FINGERPRINT).await, globex_before);
    assert_eq!(fingerprint(&mut globex, outcomes).await, globex_outcomes);

    // Once the snapshots before the drop expire, no file of acme is left.
    expire_all_but_current(w).await;
    let data = format!(
        "{}/data/project_id=acme/",
        w.raw_events().await.unwrap().metadata().location()
    );
    assert_eq!(w.store.list(&data).await.unwrap().len(), 0);
    assert_eq!(fingerprint(&mut globex, FINGERPRINT).await, globex_before);
}
