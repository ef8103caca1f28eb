//! A tenant's derived view of `raw_events` (what the REST catalog serves):
//! at every snapshot, through appends, a manifest merge, compaction and an
//! erasure, it plans exactly the base table's files of that tenant, keeps
//! the base's snapshot ids and sequence numbers, and none of its files
//! names another tenant.

use std::collections::BTreeSet;

use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::table::{StaticTable, Table};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use raindrop::catalog::tenant_view::{TenantViews, tenant_dir};
use raindrop::maintenance::compact::{CompactOptions, compact_table};
use raindrop::tenant::scope::scope_predicate;

use crate::common::*;

/// (path, rows) of each file `table` plans at
/// `snapshot`, for `project` only when given.
async fn plan(table: &Table, snapshot: i64, project: Option<&str>) -> BTreeSet<(String, u64)> {
    let mut scan = table.scan().snapshot_id(snapshot);
    if let Some(p) = project {
        scan = scan.with_filter(scope_predicate(p));
    }
    scan.build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.data_file_path, t.record_count.unwrap_or(0)))
        .collect()
}

/// The table an engine gets from a view's `metadata.json`.
async fn open_view(location: &str, io: &iceberg::io::FileIO) -> Table {
    StaticTable::from_metadata_file(
        location,
        TableIdent::from_strs(["wildedge", "raw_events"]).unwrap(),
        io.clone(),
    )
    .await
    .unwrap()
    .into_table()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_view_plans_exactly_its_files_at_every_snapshot() {
    let server = loaded_server().await;
    let w = server.warehouse().clone();
    compact_table(&w, &w.raw_events_ident(), &CompactOptions::default())
        .await
        .unwrap();
    let data = dataset().await;
    let mut acme = server.client("acme").await;
    acme.ingest_events(vec![data.acme.events[0].clone()])
        .await
        .unwrap();
    let session = strings(
        &acme
            .query("SELECT session_id FROM wildedge.raw_events LIMIT 1")
            .await
            .unwrap(),
        "session_id",
    )
    .remove(0);
    let erased = update(
        &mut acme,
        &format!("DELETE FROM wildedge.raw_events WHERE session_id = '{session}'"),
    )
    .await
    .unwrap();
    assert!(erased > 0);

    // Each node's log state, as a flush records it: the held-back
    // projects name both tenants.
    let base = w.raw_events().await.unwrap();
    let tx = Transaction::new(&base);
    let base = tx
        .update_table_properties()
        .set("raindrop.wal.node-a".into(), "7".into())
        .set("raindrop.wal-held.node-a".into(), "acme=6,globex=7".into())
        .apply(tx)
        .unwrap()
        .commit(w.catalog.as_ref())
        .await
        .unwrap();
    let operations: BTreeSet<String> = base
        .metadata()
        .snapshots()
        .map(|s| format!("{:?}", s.summary().operation))
        .collect();
    assert!(
        operations.len() >= 2,
        "appends and replaces: {operations:?}"
    );
    let views = TenantViews::default();
    for (me, other) in [("acme", "globex"), ("globex", "acme")] {
        let view = views.view(&base, me).await.unwrap();
        let dir = tenant_dir(base.metadata().location(), me);
        assert!(
            view.metadata_location.starts_with(&dir),
            "{}",
            view.metadata_location
        );
        // What an engine gets: the metadata file written where it says.
        let derived = open_view(&view.metadata_location, base.file_io()).await;
        let (d, b) = (derived.metadata(), base.metadata());
        assert_ne!(d.uuid(), b.uuid());
        assert_eq!(d.current_snapshot_id(), b.current_snapshot_id());
        assert_eq!(d.last_sequence_number(), b.last_sequence_number());
        assert_eq!(d.metadata_log().len(), 0);
        assert!(
            d.properties()
                .keys()
                .all(|k| !k.starts_with("raindrop.wal")),
            "the nodes' log state leaks: {:?}",
            d.properties()
        );
        assert_eq!(d.snapshots().count(), b.snapshots().count());
        for s in b.snapshots() {
            let ds = d
                .snapshot_by_id(s.snapshot_id())
                .expect("same snapshot ids");
            assert_eq!(ds.sequence_number(), s.sequence_number());
            assert_eq!(ds.timestamp_ms(), s.timestamp_ms());
            assert_eq!(ds.parent_snapshot_id(), s.parent_snapshot_id());
            assert_eq!(ds.summary().operation, s.summary().operation);
            assert!(
                ds.summary().additional_properties.is_empty(),
                "base totals leak"
            );
            assert!(ds.manifest_list().starts_with(&dir));
            let want = plan(&base, s.snapshot_id(), Some(me)).await;
            let got = plan(&derived, s.snapshot_id(), None).await;
            assert_eq!(got, want, "snapshot {}", s.snapshot_id());
            assert!(
                got.iter()
                    .all(|(p, _)| p.contains(&format!("/project_id={me}/")))
            );
        }
        // Every derived file: paths, partition values and column bounds of
        // the other tenant would all carry its name.
        let local = dir.strip_prefix("file://").unwrap_or(&dir).to_string();
        if std::path::Path::new(&local).is_dir() {
            for f in std::fs::read_dir(&local).unwrap() {
                let bytes = std::fs::read(f.unwrap().path()).unwrap();
                assert!(
                    !bytes.windows(other.len()).any(|w| w == other.as_bytes()),
                    "a derived file names {other}"
                );
            }
        }
    }

    // A new commit touching only globex: acme's next view reuses every list
    // it derived (the same list path for the new snapshot as its parent's).
    let mut globex = server.client("globex").await;
    globex
        .ingest_events(vec![data.globex.events[0].clone()])
        .await
        .unwrap();
    let next = w.raw_events().await.unwrap();
    let view = views.view(&next, "acme").await.unwrap();
    let current = view.metadata.current_snapshot().unwrap();
    let parent = view
        .metadata
        .snapshot_by_id(current.parent_snapshot_id().unwrap())
        .unwrap();
    assert_eq!(current.manifest_list(), parent.manifest_list());
}

/// Files under `dir` (a local tenant view directory), by name.
fn local_files(dir: &str) -> BTreeSet<String> {
    let dir = dir.strip_prefix("file://").unwrap_or(dir);
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_cleans_tenant_views_and_the_retained_ones_still_read() {
    let server = loaded_server().await;
    let w = server.warehouse().clone();
    if !w.warehouse.starts_with("file:") && !w.warehouse.starts_with('/') {
        return; // File ages are set by hand below: local disk only.
    }
    // Manifests merged away: their copies become garbage once expired.
    compact_table(&w, &w.raw_events_ident(), &CompactOptions::default())
        .await
        .unwrap();
    let base = w.raw_events().await.unwrap();
    let views = TenantViews::default();
    views.view(&base, "acme").await.unwrap();
    let dir = tenant_dir(base.metadata().location(), "acme");
    let derived = local_files(&dir);
    assert!(derived.iter().filter(|f| f.starts_with("snap-")).count() > 1);

    // Young files are never touched, whatever the retention says.
    let retention = raindrop::maintenance::Retention {
        max_age: None,
        max_snapshots: Some(1),
        min_file_age: std::time::Duration::ZERO,
    };
    let ident = w.raw_events_ident();
    let mut acme = server.client("acme").await;
    let data = dataset().await;
    acme.ingest_events(vec![data.acme.events[1].clone()])
        .await
        .unwrap();
    let report = raindrop::maintenance::expire_and_clean(&w, &ident, &retention, false)
        .await
        .unwrap();
    assert!(report.snapshots_expired > 0);
    assert_eq!(report.view_files_deleted, 0);
    assert_eq!(local_files(&dir), derived);

    // Aged past the guard: what expired goes, what is retained stays.
    let local = dir.strip_prefix("file://").unwrap_or(&dir).to_string();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    for f in std::fs::read_dir(&local).unwrap() {
        let file = std::fs::File::options()
            .write(true)
            .open(f.unwrap().path())
            .unwrap();
        file.set_modified(old).unwrap();
    }
    acme.ingest_events(vec![data.acme.events[2].clone()])
        .await
        .unwrap();
    let report = raindrop::maintenance::expire_and_clean(&w, &ident, &retention, false)
        .await
        .unwrap();
    assert!(report.view_files_deleted > 0, "{report:?}");
    let after = w.raw_events().await.unwrap();
    let kept = local_files(&dir);
    assert_eq!(kept.len(), derived.len() - report.view_files_deleted);
    // Every copy left has its base manifest.
    let reachable = raindrop::maintenance::orphans::reachable(&after)
        .await
        .unwrap();
    let base_names: BTreeSet<&str> = reachable
        .manifests
        .iter()
        .map(|k| k.rsplit('/').next().unwrap())
        .collect();
    for f in kept
        .iter()
        .filter(|f| f.ends_with(".avro") && !f.starts_with("snap-"))
    {
        assert!(
            base_names.contains(f.as_str()),
            "{f} outlived its base manifest"
        );
    }

    // A view of the new version, from the memo of this process and from a
    // fresh one (another node): both plan exactly acme's files.
    for views in [&views, &TenantViews::default()] {
        let view = views.view(&after, "acme").await.unwrap();
        let table = open_view(&view.metadata_location, after.file_io()).await;
        let current = after.metadata().current_snapshot_id().unwrap();
        assert_eq!(
            plan(&table, current, None).await,
            plan(&after, current, Some("acme")).await
        );
    }
}
