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

/// What must stay exactly as it was of another tenant's outcomes table.
const OUTCOMES_FINGERPRINT: &str =
    "SELECT count(*) AS n, count(DISTINCT session_id) AS s FROM warehouse.user_outcomes";

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

async fn projects(server: &TestServer) -> ProjectTable {
    let w = server.warehouse();
    ProjectTable::open(&w.catalog_uri, &w.catalog_name)
        .await
        .unwrap()
}

/// Live data files of `raw_events` by location.
async fn live_files(w: &Warehouse) -> Vec<String> {
    file_paths(&w.raw_events().await.unwrap()).await
}

/// Locations of `table`'s live data files.
async fn file_paths(table: &iceberg::table::Table) -> Vec<String> {
    scan_tasks(table)
        .await
        .into_iter()
        .map(|t| t.data_file_path)
        .collect()
}

/// Expire every snapshot but the newest, files at once.
fn keep_one() -> Retention {
    Retention {
        max_age: None,
        max_snapshots: Some(1),
        min_file_age: Duration::ZERO,
    }
}

/// Expire every snapshot but the current one, deleting what they alone
/// referenced.
async fn expire_all_but_current(w: &Warehouse) {
    expire_and_clean(w, &w.raw_events_ident(), &keep_one(), false)
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
    let w = server.warehouse();
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
    let w = server.warehouse();
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

    // Its tokens no longer work, on a new connection or an open one: at
    // once from a token file, within the refresh interval (2 s) from a
    // PostgreSQL catalog.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let attempt = match RaindropClient::connect(&server.url(), &server.tokens["acme"]).await {
            Err(e) => Some(e.to_string()),
            Ok(mut c) => c.query("SELECT 1").await.err().map(|e| e.to_string()),
        };
        match attempt {
            Some(e) => break e,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            None => panic!("the revoked token of a deleted project still works"),
        }
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

/// Live data files of `project` in `raw_events`.
async fn project_files(w: &Warehouse, project: &str) -> Vec<String> {
    let mut files: Vec<String> = live_files(w)
        .await
        .into_iter()
        .filter(|f| f.contains(&format!("/project_id={project}/")))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_session_removes_exactly_its_rows_in_its_project() {
    let server = loaded_server().await;
    let w = server.warehouse();
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    let mut admin = server.client("admin").await;
    let batches = acme
        .query(
            "SELECT session_id, count(*) AS n FROM wildedge.raw_events \
             GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1",
        )
        .await
        .unwrap();
    let session = strings(&batches, "session_id").remove(0);
    let rows = count(
        &mut acme,
        &format!("SELECT count(*) FROM wildedge.raw_events WHERE session_id = '{session}'"),
    )
    .await;
    assert!(rows > 1);
    let others = format!("{FINGERPRINT} WHERE (session_id IS DISTINCT FROM '{session}')");
    let acme_others = fingerprint(&mut acme, &others).await;
    let globex_before = fingerprint(&mut globex, FINGERPRINT).await;
    let globex_files = project_files(w, GLOBEX).await;
    let acme_files = project_files(w, ACME).await;
    let snapshot = || async {
        w.raw_events()
            .await
            .unwrap()
            .metadata()
            .current_snapshot_id()
    };
    let before = snapshot().await;

    // Refused, with nothing changed: no WHERE, another project's rows, a
    // token that cannot write, an admin naming no project, a tenant table.
    let refusals = [
        (
            "acme",
            "DELETE FROM wildedge.raw_events".to_string(),
            "WHERE clause",
        ),
        (
            "acme",
            format!(
                "DELETE FROM wildedge.raw_events WHERE project_id = 'globex' AND session_id = '{session}'"
            ),
            "only delete rows of project acme",
        ),
        (
            "acme_read",
            format!("DELETE FROM wildedge.raw_events WHERE session_id = '{session}'"),
            "read_write",
        ),
        (
            "admin",
            format!("DELETE FROM wildedge.raw_events WHERE session_id = '{session}'"),
            "exactly one project",
        ),
        (
            "acme",
            "DELETE FROM warehouse.user_outcomes WHERE converted".to_string(),
            "raw_events",
        ),
    ];
    for (who, sql, expected) in refusals {
        let mut c = server.client(who).await;
        let err = update(&mut c, &sql).await.expect_err(&sql);
        assert!(err.contains(expected), "{sql}: {err}");
    }
    assert_eq!(snapshot().await, before);

    let n = update(
        &mut acme,
        &format!("DELETE FROM wildedge.raw_events WHERE session_id = '{session}'"),
    )
    .await
    .unwrap();
    assert_eq!(n, rows);
    assert_eq!(
        count(
            &mut acme,
            &format!("SELECT count(*) FROM wildedge.raw_events WHERE session_id = '{session}'"),
        )
        .await,
        0
    );
    assert_eq!(fingerprint(&mut acme, &others).await, acme_others);
    assert_eq!(fingerprint(&mut globex, FINGERPRINT).await, globex_before);

    // One overwrite snapshot; globex's files untouched, acme's rewritten
    // only where the session was.
    let table = w.raw_events().await.unwrap();
    let summary = table
        .metadata()
        .current_snapshot()
        .unwrap()
        .summary()
        .clone();
    assert_eq!(summary.operation, iceberg::spec::Operation::Overwrite);
    let prop = |k: &str| -> i64 { summary.additional_properties[k].parse().unwrap() };
    assert_eq!(prop("deleted-records") - prop("added-records"), rows);
    assert_eq!(project_files(w, GLOBEX).await, globex_files);
    let acme_after = project_files(w, ACME).await;
    let replaced = acme_files
        .iter()
        .filter(|f| !acme_after.contains(f))
        .count();
    assert_eq!(replaced as i64, prop("deleted-data-files"));
    assert!(
        replaced < acme_files.len(),
        "only the session's files are rewritten"
    );

    // A condition on event_day reads only that day's files (of acme).
    let batches = acme
        .query(
            "SELECT session_id, CAST(event_day AS VARCHAR) AS day FROM wildedge.raw_events \
             ORDER BY event_timestamp DESC LIMIT 1",
        )
        .await
        .unwrap();
    let (late, day) = (
        strings(&batches, "session_id").remove(0),
        strings(&batches, "day").remove(0),
    );
    let late_rows = count(
        &mut acme,
        &format!(
            "SELECT count(*) FROM wildedge.raw_events WHERE session_id = '{late}' AND event_day = DATE '{day}'"
        ),
    )
    .await;
    let others = format!("{others} AND (session_id IS DISTINCT FROM '{late}')");
    let acme_others = fingerprint(&mut acme, &others).await;
    let log = server.access_log();
    log.start();
    let erased = update(
        &mut acme,
        &format!(
            "DELETE FROM wildedge.raw_events WHERE session_id = '{late}' AND event_day = DATE '{day}'"
        ),
    )
    .await
    .unwrap();
    let reads: Vec<String> = log
        .stop()
        .into_iter()
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    assert_eq!(erased, late_rows);
    assert!(!reads.is_empty());
    let this_day = format!("/project_id=acme/event_day={day}/");
    assert!(
        reads.iter().all(|p| p.contains(&this_day)),
        "read outside {this_day}: {reads:?}"
    );

    // An admin erases in the project it names; the same DELETE again
    // matches nothing and commits nothing.
    let globex_session = strings(
        &globex
            .query("SELECT min(session_id) AS s FROM wildedge.raw_events")
            .await
            .unwrap(),
        "s",
    )
    .remove(0);
    let globex_rows = count(
        &mut globex,
        &format!("SELECT count(*) FROM wildedge.raw_events WHERE session_id = '{globex_session}'"),
    )
    .await;
    let sql = format!(
        "DELETE FROM wildedge.raw_events WHERE project_id = 'globex' AND session_id = '{globex_session}'"
    );
    assert_eq!(update(&mut admin, &sql).await.unwrap(), globex_rows);
    let after_admin = snapshot().await;
    assert_eq!(update(&mut admin, &sql).await.unwrap(), 0);
    assert_eq!(snapshot().await, after_admin);
    assert_eq!(fingerprint(&mut acme, &others).await, acme_others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_tenant_table_is_one_commit_and_expiry_removes_the_old_files() {
    let server = loaded_server().await;
    let w = server.warehouse();
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    let ident = iceberg::TableIdent::new(
        w.tenant_namespace(ACME, "warehouse"),
        "user_outcomes".into(),
    );
    let before = w.load_table(&ident).await.unwrap();
    let old_files = file_paths(&before).await;
    let converted = count(
        &mut acme,
        "SELECT count(*) FROM warehouse.user_outcomes WHERE converted",
    )
    .await;
    let globex_outcomes = fingerprint(&mut globex, OUTCOMES_FINGERPRINT).await;

    let n = update(
        &mut acme,
        "CREATE OR REPLACE TABLE warehouse.user_outcomes AS \
         SELECT session_id, CAST(revenue * 100 AS BIGINT) AS cents \
         FROM warehouse.user_outcomes WHERE converted",
    )
    .await
    .unwrap();
    assert_eq!(n, converted);
    let batches = acme
        .query("SELECT * FROM warehouse.user_outcomes")
        .await
        .unwrap();
    let names: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["session_id", "cents"]);
    assert_eq!(
        batches.iter().map(|b| b.num_rows()).sum::<usize>() as i64,
        converted
    );

    // The same table (uuid, history), one commit on top: a new schema with
    // fresh field ids, a snapshot without parent, the old ones kept.
    let after = w.load_table(&ident).await.unwrap();
    let (old, new) = (before.metadata(), after.metadata());
    assert_eq!(new.uuid(), old.uuid());
    assert_eq!(new.snapshots().count(), old.snapshots().count() + 1);
    let current = new.current_snapshot().unwrap();
    assert_eq!(current.parent_snapshot_id(), None);
    assert!(
        new.current_schema()
            .as_struct()
            .fields()
            .iter()
            .all(|f| f.id > old.last_column_id())
    );
    assert_eq!(
        fingerprint(&mut globex, OUTCOMES_FINGERPRINT).await,
        globex_outcomes
    );

    // The old files stay until the old snapshots expire, then go.
    for f in &old_files {
        assert!(w.store.exists(f).await.unwrap(), "{f} deleted too early");
    }
    let report = expire_and_clean(w, &ident, &keep_one(), false)
        .await
        .unwrap();
    assert_eq!(report.files_deleted, old_files.len());
    for f in &old_files {
        assert!(!w.store.exists(f).await.unwrap(), "{f} still on storage");
    }
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM warehouse.user_outcomes").await,
        converted
    );

    // DROP TABLE takes the files along: nothing else would delete them.
    let table = w.load_table(&ident).await.unwrap();
    let mut files = file_paths(&table).await;
    files.push(table.metadata_location().unwrap().to_string());
    update(&mut acme, "DROP TABLE warehouse.user_outcomes")
        .await
        .unwrap();
    for f in &files {
        assert!(!w.store.exists(f).await.unwrap(), "{f} left by DROP TABLE");
    }
    assert_eq!(
        fingerprint(&mut globex, OUTCOMES_FINGERPRINT).await,
        globex_outcomes
    );
}
