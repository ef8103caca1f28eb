//! Snapshot expiry, and deleting what only the expired snapshots needed:
//! their manifest lists, manifests no retained snapshot lists, data files
//! no retained snapshot lists as live, and `metadata.json` files older than
//! the table's metadata log. Without it, every commit's metadata would stay
//! on storage forever.

use std::cmp::Reverse;
use std::collections::HashSet;
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};

use super::orphans::{self, delete_all, old_enough};
use super::views::clean_tenant_views;
use crate::catalog::Warehouse;
use crate::catalog::files::{
    delete_retired, deletes_after_commit, metadata_version, oldest_listed_version,
};
use crate::error::Result;
use crate::storage::object_key;

/// The fewest snapshots a server keeps by count. A commit is confirmed by
/// finding its snapshot in the table's history; that history must not be
/// expired from under it, however many nodes commit meanwhile.
pub const MIN_RETAINED_SNAPSHOTS: usize = 100;

/// Which snapshots to keep. The current snapshot is always kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Expire snapshots older than this (`None`: any age).
    pub max_age: Option<Duration>,
    /// Keep at most this many snapshots, the newest (`None`: any number).
    /// Each one costs every commit and every table load some hundreds of
    /// bytes of `metadata.json`.
    pub max_snapshots: Option<usize>,
    /// Unreferenced files found by listing storage, rather than through an
    /// expired snapshot, are deleted only once this old, so files of
    /// commits in flight (on any node) are never touched.
    pub min_file_age: Duration,
}

/// What [`expire_and_clean`] did.
#[derive(Debug, Clone, Default)]
pub struct ExpireReport {
    /// Snapshots removed from the table metadata.
    pub snapshots_expired: usize,
    /// Data files deleted because no remaining snapshot references them.
    pub files_deleted: usize,
    /// Manifest lists and manifests deleted.
    pub manifests_deleted: usize,
    /// `metadata.json` files deleted.
    pub metadata_files_deleted: usize,
    /// Files of tenant views (REST catalog) deleted: `raw_events` only.
    pub view_files_deleted: usize,
}

/// Snapshots of `table` that `retention` expires: beyond the newest
/// `max_snapshots`, or older than `max_age`; never the current one.
pub fn expiring(table: &Table, retention: &Retention) -> Vec<i64> {
    let metadata = table.metadata();
    let current = metadata.current_snapshot_id();
    let cutoff = retention.max_age.map_or(i64::MIN, |age| {
        chrono::Utc::now().timestamp_millis() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX)
    });
    let keep = retention.max_snapshots.map_or(usize::MAX, |n| n.max(1));
    let mut snapshots: Vec<_> = metadata.snapshots().collect();
    snapshots.sort_by_key(|s| Reverse((s.sequence_number(), s.timestamp_ms())));
    snapshots
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            Some(s.snapshot_id()) != current && (*i >= keep || s.timestamp_ms() < cutoff)
        })
        .map(|(_, s)| s.snapshot_id())
        .collect()
}

/// Expire `ident`'s snapshots as `retention` says, then delete what no
/// retained snapshot references: what the expired snapshots referenced
/// (manifest lists, manifests, data files) at once, anything else
/// unreferenced under the table's `metadata/` (and with `sweep_data`, its
/// `data/`) once `min_file_age` old, and `metadata.json` files older than
/// the metadata log.
///
/// Compaction leaves the files it replaced to the older snapshots; this is
/// what finally removes them. Request ids used for deduplication live in
/// snapshot summaries, so after a restart a server remembers ids only as
/// far back as the retained snapshots.
pub async fn expire_and_clean(
    warehouse: &Warehouse,
    ident: &TableIdent,
    retention: &Retention,
    sweep_data: bool,
) -> Result<ExpireReport> {
    let table = warehouse.catalog.load_table(ident).await?;
    let ids = expiring(&table, retention);
    if ids.is_empty() {
        return Ok(ExpireReport::default());
    }
    let expired: HashSet<i64> = ids.iter().copied().collect();
    let tx = Transaction::new(&table);
    // Every id is chosen above: pin iceberg's own age cutoff to the epoch.
    let tx = tx
        .expire_snapshots()
        .expire_snapshot_ids(ids)
        .expire_older_than_ms(0)
        .retain_last(1)
        .apply(tx)?;
    let after = tx.commit(warehouse.catalog.as_ref()).await?;
    warehouse.tables.insert(&after);
    delete_retired(&table, &after);
    let mut report = ExpireReport {
        snapshots_expired: table.metadata().snapshots().count()
            - after.metadata().snapshots().count(),
        ..ExpireReport::default()
    };

    let store = &warehouse.store;
    let reachable = orphans::reachable(&after).await?;
    // What the expired snapshots referenced and no retained snapshot does
    // is garbage now: committed once, so no commit in flight needs it, and
    // no age guard is needed. Their manifest lists, their manifests, and the
    // data files those list (live or replaced) that no retained snapshot
    // lists as live.
    let expired_lists: Vec<_> = table
        .metadata()
        .snapshots()
        .filter(|s| expired.contains(&s.snapshot_id()))
        .cloned()
        .collect();
    let mut garbage: HashSet<String> = expired_lists
        .iter()
        .map(|s| object_key(s.manifest_list()).into_owned())
        .collect();
    let mut dead_manifests = vec![];
    for list in orphans::load_lists(&table, expired_lists).await? {
        for m in list.entries() {
            let key = object_key(&m.manifest_path);
            if !reachable.manifests.contains(key.as_ref()) && garbage.insert(key.into_owned()) {
                dead_manifests.push(m.clone());
            }
        }
    }
    let mut dead_data: HashSet<String> = HashSet::new();
    let mut data_files = vec![];
    for manifest in orphans::load_manifests(&table, dead_manifests).await? {
        for entry in manifest.entries() {
            let key = object_key(entry.file_path());
            if !reachable.data.contains(key.as_ref()) && dead_data.insert(key.into_owned()) {
                data_files.push(entry.file_path().to_string());
            }
        }
    }
    // The rest of metadata/ (a bounded directory) is listed every time:
    // retired metadata.json files, and .avro files of failed commits.
    let oldest = oldest_listed_version(&after).filter(|_| deletes_after_commit(&after));
    let mut manifests = vec![];
    let mut metadata_files = vec![];
    for object in orphans::list(store, &after, "metadata").await? {
        let key = object_key(&object.location);
        let key = key.as_ref();
        if let Some(version) = metadata_version(&object.location) {
            if oldest.is_some_and(|oldest| version < oldest) {
                metadata_files.push(object.location);
            }
        } else if object.location.ends_with(".avro")
            && !reachable.lists.contains(key)
            && !reachable.manifests.contains(key)
            && (garbage.contains(key) || old_enough(&object, retention.min_file_age))
        {
            manifests.push(object.location);
        }
    }
    // data/ can be large: listed only when asked (files of failed commits).
    if sweep_data {
        let orphans =
            orphans::orphan_data_files(store, &after, &reachable, retention.min_file_age).await?;
        data_files.extend(
            orphans
                .orphans
                .into_iter()
                .filter(|o| !dead_data.contains(object_key(o).as_ref())),
        );
    }
    if *ident == warehouse.raw_events_ident() {
        report.view_files_deleted =
            clean_tenant_views(store, &after, &reachable, retention.min_file_age).await?;
    }
    report.manifests_deleted = delete_all(store, manifests).await?;
    report.metadata_files_deleted = delete_all(store, metadata_files).await?;
    report.files_deleted = delete_all(store, data_files).await?;
    Ok(report)
}
