//! Table metadata stays bounded under many small commits: manifests are
//! merged by tenant, `metadata.json` files leave storage once out of the
//! log, and expiry deletes what only the expired snapshots referenced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use iceberg::table::Table;
use raindrop::catalog::rewrite::{MERGE_AFTER_APPENDS, MERGED_PROPERTY};
use raindrop::maintenance::{Retention, expire_and_clean};
use raindrop::schema::PREVIOUS_METADATA_VERSIONS;

use crate::common::*;

const TENANTS: usize = 6;

/// `rows` events of batch `b<i>` for each of two neighbouring tenants, as
/// an admin sends them: every commit lists files of several tenants.
fn two_tenant_batch(i: usize, rows: usize) -> RecordBatch {
    let one = |tenant: usize, half: usize| {
        let b = id_batch(&format!("b{i}x{half}"), rows);
        let project = StringArray::from(vec![format!("t{tenant}"); rows]);
        let mut columns: Vec<ArrayRef> = vec![Arc::new(project)];
        columns.extend(b.columns().iter().cloned());
        let mut fields = vec![arrow::datatypes::Field::new(
            "project_id",
            arrow::datatypes::DataType::Utf8,
            false,
        )];
        fields.extend(b.schema().fields().iter().map(|f| f.as_ref().clone()));
        RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).unwrap()
    };
    let halves = [one(i % TENANTS, 0), one((i + 1) % TENANTS, 1)];
    arrow::compute::concat_batches(&halves[0].schema(), &halves).unwrap()
}

/// Ingest two-tenant batches `batches` of `rows` rows per tenant, one
/// `DoPut` each.
async fn ingest_small_commits(server: &TestServer, batches: std::ops::Range<usize>, rows: usize) {
    let mut admin = server.client("admin").await;
    for i in batches {
        admin
            .ingest_events(vec![two_tenant_batch(i, rows)])
            .await
            .unwrap();
    }
}

fn expected_rows(n: usize, rows: usize) -> BTreeMap<String, i64> {
    (0..n)
        .flat_map(|i| [format!("b{i}x0"), format!("b{i}x1")])
        .map(|b| (b, rows as i64))
        .collect()
}

/// File names under `raw_events`' `metadata/` directory.
fn metadata_files(server: &TestServer) -> BTreeSet<String> {
    let dir: PathBuf = server.raw_events_data().parent().unwrap().join("metadata");
    std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn name(location: &str) -> String {
    location.rsplit('/').next().unwrap().to_string()
}

async fn raw_events(server: &TestServer) -> Table {
    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    warehouse
        .catalog
        .load_table(&warehouse.raw_events_ident())
        .await
        .unwrap()
}

async fn manifests_of_current(table: &Table) -> Vec<iceberg::spec::ManifestFile> {
    let snapshot = table.metadata().current_snapshot().unwrap();
    let list = table.manifest_list_reader(snapshot).load().await.unwrap();
    list.entries().to_vec()
}

/// Wait (a liveness bound, not a speed target) until the merge after the
/// last append has landed; the table then.
async fn merged(server: &TestServer) -> Table {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut table = raw_events(server).await;
    while raindrop::catalog::rewrite::appends_since_merge(&table) > 0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        table = raw_events(server).await;
    }
    table
}

/// Manifests of the current snapshot by tenant (the one its partition
/// summary pins it to; each must hold exactly one).
async fn manifests_by_tenant(table: &Table) -> BTreeMap<Vec<u8>, BTreeSet<String>> {
    let mut by_tenant: BTreeMap<Vec<u8>, BTreeSet<String>> = BTreeMap::new();
    for m in manifests_of_current(table).await {
        let summary = &m.partitions.as_ref().unwrap()[0];
        assert_eq!(
            summary.lower_bound, summary.upper_bound,
            "{}",
            m.manifest_path
        );
        by_tenant
            .entry(summary.lower_bound.clone().unwrap().to_vec())
            .or_default()
            .insert(m.manifest_path.clone());
    }
    by_tenant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_and_metadata_files_stay_bounded() {
    let server = TestServer::start().await;
    // Rounds of appends, each touching every tenant, each followed by its
    // merge. A merge gives each tenant one manifest of its new entries
    // (partition summaries pin it to that tenant, so other tenants'
    // queries skip it) and leaves the tenant's earlier manifests alone
    // until a size tier holds four: three rounds keep every earlier
    // manifest as it was, the fourth folds the tier into one.
    let mut before: BTreeMap<Vec<u8>, BTreeSet<String>> = BTreeMap::new();
    let mut table = raw_events(&server).await;
    for round in 1..=4 {
        let appends = (round - 1) * MERGE_AFTER_APPENDS..round * MERGE_AFTER_APPENDS;
        ingest_small_commits(&server, appends, 20).await;
        table = merged(&server).await;
        let after = manifests_by_tenant(&table).await;
        assert_eq!(after.len(), TENANTS, "round {round}");
        for (tenant, manifests) in &after {
            let kept = before.get(tenant).cloned().unwrap_or_default();
            if round < 4 {
                assert_eq!(manifests.len(), round, "round {round}: {manifests:?}");
                assert!(
                    kept.is_subset(manifests),
                    "round {round}: an earlier manifest was rewritten"
                );
            } else {
                assert_eq!(manifests.len(), 1, "round {round}: {manifests:?}");
                assert!(
                    kept.is_disjoint(manifests),
                    "round {round}: the full tier was not folded"
                );
            }
        }
        before = after;
    }
    let commits = 4 * MERGE_AFTER_APPENDS;
    let merges = table
        .metadata()
        .snapshots()
        .filter(|s| {
            s.summary()
                .additional_properties
                .contains_key(MERGED_PROPERTY)
        })
        .count();
    assert_eq!(merges, 4, "manifest merges after {commits} commits");

    // The retired metadata.json files are deleted in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let json = loop {
        let json: Vec<String> = metadata_files(&server)
            .into_iter()
            .filter(|f| f.ends_with(".metadata.json"))
            .collect();
        if json.len() <= PREVIOUS_METADATA_VERSIONS + 1 || std::time::Instant::now() > deadline {
            break json;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        json.len() <= PREVIOUS_METADATA_VERSIONS + 1,
        "{} metadata.json files after {commits} commits",
        json.len()
    );
    let table = raw_events(&server).await;
    assert!(json.contains(&name(table.metadata_location().unwrap())));
    assert_eq!(
        table.metadata().metadata_log().len(),
        PREVIOUS_METADATA_VERSIONS
    );

    // Nothing was lost or duplicated by the merges, and each tenant sees
    // exactly its own rows.
    let mut admin = server.client("admin").await;
    assert_eq!(rows_per_batch(&mut admin).await, expected_rows(commits, 20));
    let per_tenant = admin
        .query("SELECT project_id, count(*) FROM wildedge.raw_events GROUP BY 1 ORDER BY 1")
        .await
        .unwrap();
    let tenants = strings(&per_tenant, "project_id");
    assert_eq!(tenants.len(), TENANTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_what_only_expired_snapshots_referenced() {
    let server = TestServer::start().await;
    let commits = MERGE_AFTER_APPENDS + 4;
    ingest_small_commits(&server, 0..commits, 10).await;
    let data_before = parquet_files(&server.raw_events_data()).len();
    let avro_before = metadata_files(&server)
        .into_iter()
        .filter(|f| f.ends_with(".avro"))
        .count();

    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let retention = Retention {
        max_age: None,
        max_snapshots: Some(2),
        min_file_age: std::time::Duration::ZERO,
    };
    let report = expire_and_clean(warehouse, &warehouse.raw_events_ident(), &retention, true)
        .await
        .unwrap();
    let table = raw_events(&server).await;
    assert_eq!(table.metadata().snapshots().count(), 2);
    assert!(report.snapshots_expired >= commits - 1, "{report:?}");

    // What stays in metadata/ is exactly what the two snapshots reference,
    // plus the metadata.json files the log lists.
    let reachable = raindrop::maintenance::orphans::reachable(&table)
        .await
        .unwrap();
    let referenced: BTreeSet<String> = reachable
        .lists
        .iter()
        .chain(&reachable.manifests)
        .map(|k| name(k))
        .collect();
    let files = metadata_files(&server);
    let avro: BTreeSet<String> = files
        .iter()
        .filter(|f| f.ends_with(".avro"))
        .cloned()
        .collect();
    assert_eq!(avro, referenced);
    assert_eq!(report.manifests_deleted, avro_before - avro.len());
    let listed: BTreeSet<String> = table
        .metadata()
        .metadata_log()
        .iter()
        .map(|m| name(&m.metadata_file))
        .chain([name(table.metadata_location().unwrap())])
        .collect();
    let json: BTreeSet<String> = files
        .into_iter()
        .filter(|f| f.ends_with(".metadata.json"))
        .collect();
    assert!(json.is_subset(&listed), "{json:?} vs {listed:?}");

    // Data files are all still live (nothing was compacted): none deleted,
    // no row changed, and ingest and queries go on.
    assert_eq!(report.files_deleted, 0);
    assert_eq!(parquet_files(&server.raw_events_data()).len(), data_before);
    let mut admin = server.client("admin").await;
    assert_eq!(rows_per_batch(&mut admin).await, expected_rows(commits, 10));
    ingest_small_commits(&server, commits..commits + 1, 3).await;
    let mut expected = expected_rows(commits, 10);
    expected.insert(format!("b{commits}x0"), 3);
    expected.insert(format!("b{commits}x1"), 3);
    assert_eq!(rows_per_batch(&mut admin).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_compaction_replaced_go_when_their_snapshots_expire() {
    use raindrop::maintenance::compact::{CompactOptions, compact_table};
    let server = TestServer::start().await;
    let commits = MERGE_AFTER_APPENDS + 2;
    ingest_small_commits(&server, 0..commits, 10).await;
    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let ident = warehouse.raw_events_ident();
    let compacted = compact_table(warehouse, &ident, &CompactOptions::default())
        .await
        .unwrap();
    assert!(
        compacted.files_removed > compacted.files_added,
        "{compacted:?}"
    );
    let on_disk = parquet_files(&server.raw_events_data()).len();

    // The replaced files are an hour younger than the guard that protects
    // unknown files, but the expired snapshots vouch for them: they go now,
    // and only they (no data/ listing here).
    let retention = Retention {
        max_age: None,
        max_snapshots: Some(1),
        min_file_age: std::time::Duration::from_secs(3600),
    };
    let report = expire_and_clean(warehouse, &ident, &retention, false)
        .await
        .unwrap();
    assert_eq!(report.files_deleted, compacted.files_removed);
    let left = parquet_files(&server.raw_events_data()).len();
    assert_eq!(left, on_disk - compacted.files_removed);
    let table = raw_events(&server).await;
    let reachable = raindrop::maintenance::orphans::reachable(&table)
        .await
        .unwrap();
    assert_eq!(reachable.data.len(), left);
    let mut admin = server.client("admin").await;
    assert_eq!(rows_per_batch(&mut admin).await, expected_rows(commits, 10));
}
