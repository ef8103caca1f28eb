//! Table maintenance: compaction ([`compact`]), snapshot expiry, and
//! orphan data files — files no snapshot references: written by a commit
//! that never happened (the process died between writing Parquet and the
//! catalog commit), or replaced by compaction in snapshots since expired.
//! Readers never see them; they only cost disk.

pub mod compact;
mod replace;
pub mod schedule;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use iceberg::table::Table;

use crate::error::Result;
use crate::storage::{Store, object_key};

/// What an orphan scan found.
#[derive(Debug, Clone, Default)]
pub struct OrphanReport {
    /// Locations of data files that no snapshot references (and old enough).
    pub orphans: Vec<String>,
    /// Data files referenced by some snapshot.
    pub referenced: usize,
    /// Data files found in storage.
    pub on_disk: usize,
}

/// Data files under `table`'s `data/` prefix that no snapshot references
/// and that were last modified at least `min_age` ago (so files of commits
/// still in flight — on this node or another — are never reported).
pub async fn find_orphan_files(
    store: &Store,
    table: &Table,
    min_age: Duration,
) -> Result<OrphanReport> {
    // Fast appends make every snapshot list all earlier manifests: read
    // each manifest once, not once per snapshot that lists it.
    let mut manifests = HashSet::new();
    let mut referenced = HashSet::new();
    for snapshot in table.metadata().snapshots() {
        let list = table.manifest_list_reader(snapshot).load().await?;
        for manifest_file in list.entries() {
            if !manifests.insert(manifest_file.manifest_path.clone()) {
                continue;
            }
            let manifest = manifest_file.load_manifest(table.file_io()).await?;
            // A `deleted` entry (a file compaction replaced) does not keep
            // its file alive: only snapshots listing it as live do.
            for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
                referenced.insert(object_key(entry.file_path()).to_string());
            }
        }
    }
    let data = format!(
        "{}/data/",
        table.metadata().location().trim_end_matches('/')
    );
    let listed = store.list(&data).await;
    crate::metrics::metrics().storage("list", &listed);
    let on_disk: Vec<_> = listed?
        .into_iter()
        .filter(|o| o.location.ends_with(".parquet"))
        .collect();
    let now = SystemTime::now();
    let orphans = on_disk
        .iter()
        .filter(|o| !referenced.contains(object_key(&o.location)))
        .filter(|o| now.duration_since(o.modified).unwrap_or_default() >= min_age)
        .map(|o| o.location.clone())
        .collect();
    Ok(OrphanReport {
        orphans,
        referenced: referenced.len(),
        on_disk: on_disk.len(),
    })
}

/// Delete the files of a report; returns how many were removed.
pub async fn delete_orphans(store: &Store, report: &OrphanReport) -> Result<usize> {
    let locations = report.orphans.clone();
    let deleted = store
        .delete_stream(Box::pin(futures::stream::iter(locations)))
        .await;
    crate::metrics::metrics().storage("delete", &deleted);
    deleted?;
    Ok(report.orphans.len())
}

/// What [`expire_and_clean`] did.
#[derive(Debug, Clone, Default)]
pub struct ExpireReport {
    /// Snapshots removed from the table metadata.
    pub snapshots_expired: usize,
    /// Data files deleted because no remaining snapshot references them.
    pub files_deleted: usize,
}

/// Expire `table`'s snapshots older than `retain` (always keeping the last
/// `keep_last`), then delete the data files no remaining snapshot
/// references that were last modified at least `min_age` ago (so files of
/// commits in flight on any node are never touched).
///
/// Compaction leaves the files it replaced to the older snapshots; this is
/// what finally removes them. Request ids used for deduplication live in
/// snapshot summaries, so after a restart a server remembers ids only as
/// far back as the retained snapshots.
pub async fn expire_and_clean(
    warehouse: &crate::catalog::Warehouse,
    ident: &iceberg::TableIdent,
    retain: Duration,
    keep_last: usize,
    min_age: Duration,
) -> Result<ExpireReport> {
    use iceberg::transaction::{ApplyTransactionAction, Transaction};
    let table = warehouse.catalog.load_table(ident).await?;
    let cutoff = chrono::Utc::now().timestamp_millis() - retain.as_millis() as i64;
    let mut snapshots: Vec<_> = table.metadata().snapshots().collect();
    snapshots.sort_by_key(|s| std::cmp::Reverse(s.timestamp_ms()));
    let expirable = snapshots
        .iter()
        .skip(keep_last.max(1))
        .filter(|s| s.timestamp_ms() < cutoff)
        .count();
    if expirable == 0 {
        return Ok(ExpireReport::default());
    }
    let before = snapshots.len();
    let tx = Transaction::new(&table);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(cutoff)
        .retain_last(keep_last.max(1))
        .apply(tx)?;
    let table = tx.commit(warehouse.catalog.as_ref()).await?;
    let snapshots_expired = before.saturating_sub(table.metadata().snapshots().count());
    let report = find_orphan_files(&warehouse.store, &table, min_age).await?;
    let files_deleted = delete_orphans(&warehouse.store, &report).await?;
    Ok(ExpireReport {
        snapshots_expired,
        files_deleted,
    })
}
