//! Locations every reader opens (#17): tables an older Raindrop made under
//! a misspelled data dir (`<dir>/./warehouse/...`, which Polars' Iceberg
//! reader refuses) get a normalised location when the server starts; the
//! files already written under the old spelling stay referenced, readable,
//! and safe from orphan sweeps and expiry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use iceberg::TableIdent;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use raindrop::catalog::Warehouse;
use raindrop::client::IngestMode;
use raindrop::maintenance::compact::{CompactOptions, compact_table};
use raindrop::maintenance::{Retention, expire_and_clean, find_orphan_files};

use crate::common::*;

/// Point `ident` at its own directory spelled with a `/./`, as a server
/// started with `--data-dir <dir>/.` used to write it.
async fn misspell(warehouse: &Warehouse, ident: &TableIdent) {
    let table = warehouse.load_table(ident).await.unwrap();
    let location = table
        .metadata()
        .location()
        .replacen("/warehouse/", "/./warehouse/", 1);
    assert_ne!(location, table.metadata().location());
    let tx = Transaction::new(&table);
    tx.update_location()
        .set_location(location)
        .apply(tx)
        .unwrap()
        .commit(warehouse.catalog.as_ref())
        .await
        .unwrap();
}

/// Data files of `ident`'s current snapshot, as its manifests spell them.
async fn data_files(warehouse: &Warehouse, ident: &TableIdent) -> Vec<String> {
    let table = warehouse.catalog.load_table(ident).await.unwrap();
    let mut files: Vec<String> = scan_tasks(&table)
        .await
        .into_iter()
        .map(|t| t.data_file_path)
        .collect();
    files.sort();
    files.dedup();
    files
}

fn labels(ids: &[&str]) -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        (
            "session_id",
            Arc::new(StringArray::from(ids.to_vec())) as ArrayRef,
        ),
        ("label", Arc::new(Int64Array::from(vec![1; ids.len()]))),
    ])
    .unwrap()
}

fn exists(location: &str) -> bool {
    std::path::Path::new(raindrop::storage::object_key(location).as_ref()).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misspelled_locations_are_repaired_at_start_and_old_files_kept() {
    if s3pg().is_some() {
        eprintln!("skipped: local paths only (object-store keys are literal)");
        return;
    }
    let mut server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    for id in ["a", "b"] {
        acme.ingest_events(vec![id_batch(id, 50)]).await.unwrap();
    }
    acme.ingest(
        Some("labels"),
        "gold",
        IngestMode::Create,
        vec![labels(&["s1"])],
    )
    .await
    .unwrap();

    // What an older build left: both tables under a `/./` spelling, and a
    // file written through it (compaction merges `a` and `b` into one).
    let warehouse = raindrop::catalog::open(&storage_config(server.dir.path()))
        .await
        .unwrap();
    let raw = warehouse.raw_events_ident();
    let gold = TableIdent::new(warehouse.tenant_namespace(ACME, "labels"), "gold".into());
    let want_raw = warehouse.catalog.load_table(&raw).await.unwrap();
    let want_raw = want_raw.metadata().location().to_string();
    let want_gold = warehouse.catalog.load_table(&gold).await.unwrap();
    let want_gold = want_gold.metadata().location().to_string();
    misspell(&warehouse, &raw).await;
    misspell(&warehouse, &gold).await;
    let report = compact_table(&warehouse, &raw, &CompactOptions::default())
        .await
        .unwrap();
    assert_eq!(report.files_removed, 2, "{report:?}");
    let old = data_files(&warehouse, &raw).await;
    assert!(
        old.len() == 1 && old[0].contains("/./warehouse/"),
        "{old:?}"
    );

    // The restarted server normalises both locations...
    server.restart().await;
    for (ident, want) in [(&raw, &want_raw), (&gold, &want_gold)] {
        let table = warehouse.catalog.load_table(ident).await.unwrap();
        assert_eq!(table.metadata().location(), want.as_str(), "{ident}");
    }
    // ...so files written from now on have plain paths, old ones still read.
    let mut acme = server.client("acme").await;
    acme.ingest_events(vec![id_batch("c", 50)]).await.unwrap();
    acme.ingest(
        Some("labels"),
        "gold",
        IngestMode::Append,
        vec![labels(&["s2"])],
    )
    .await
    .unwrap();
    // raw_events: compaction's file under the old spelling, one new file;
    // the tenant table: its first file predates the misspelling.
    for (ident, want) in [(&raw, (1, 1)), (&gold, (0, 2))] {
        let files = data_files(&warehouse, ident).await;
        let (old, new): (Vec<_>, Vec<_>) = files.iter().partition(|f| f.contains("/./"));
        assert_eq!((old.len(), new.len()), want, "{ident}: {files:?}");
    }
    let want_rows: BTreeMap<String, i64> = [("a", 50), ("b", 50), ("c", 50)]
        .map(|(b, n)| (b.to_string(), n))
        .into();
    assert_eq!(rows_per_batch(&mut acme).await, want_rows);
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM labels.gold").await,
        2
    );

    // Maintenance compares files by normalised path: the file under the
    // old spelling is referenced, not an orphan, and expiry keeps it while
    // deleting the two files compaction replaced.
    let table = warehouse.catalog.load_table(&raw).await.unwrap();
    let orphans = find_orphan_files(&warehouse.store, &table, Duration::ZERO)
        .await
        .unwrap();
    assert!(orphans.orphans.is_empty(), "{orphans:?}");
    let retention = Retention {
        max_age: Some(Duration::ZERO),
        max_snapshots: None,
        min_file_age: Duration::ZERO,
    };
    let expired = expire_and_clean(&warehouse, &raw, &retention, true)
        .await
        .unwrap();
    assert_eq!(expired.files_deleted, 2, "{expired:?}");
    for file in data_files(&warehouse, &raw).await {
        assert!(exists(&file), "{file} was deleted");
    }
    assert_eq!(rows_per_batch(&mut acme).await, want_rows);
}
