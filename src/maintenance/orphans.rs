//! Files no snapshot references: data files written by a commit that never
//! happened (the process died between writing Parquet and the catalog
//! commit) or replaced by compaction in snapshots since expired, and
//! manifests and manifest lists of commits that failed. Readers never see
//! them; they only cost storage.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{Manifest, ManifestFile, ManifestList, SnapshotRef};
use iceberg::table::Table;

use crate::error::Result;
use crate::storage::{ObjectInfo, Store, object_key};

/// Manifests (and their lists) read at once while walking snapshots.
const READ_CONCURRENCY: usize = 16;

/// Everything the retained snapshots of a table reference, by object key
/// (see [`object_key`]), so two spellings of one location match.
#[derive(Debug, Default)]
pub struct Reachable {
    /// Manifest lists of retained snapshots.
    pub lists: HashSet<String>,
    /// Manifests those lists name.
    pub manifests: HashSet<String>,
    /// Data files some retained snapshot lists as live.
    pub data: HashSet<String>,
}

/// Walk every snapshot of `table`: each manifest is read once, however
/// many snapshots list it (fast appends make every list repeat the older
/// manifests).
pub async fn reachable(table: &Table) -> Result<Reachable> {
    let mut out = Reachable::default();
    let lists = load_lists(table, table.metadata().snapshots().cloned().collect()).await?;
    let mut manifest_files = vec![];
    for snapshot in table.metadata().snapshots() {
        out.lists
            .insert(object_key(snapshot.manifest_list()).into_owned());
    }
    for list in &lists {
        for m in list.entries() {
            if out
                .manifests
                .insert(object_key(&m.manifest_path).into_owned())
            {
                manifest_files.push(m.clone());
            }
        }
    }
    for manifest in load_manifests(table, manifest_files).await? {
        // A `deleted` entry (a file compaction replaced) does not keep its
        // file alive: only snapshots listing it as live do.
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            out.data.insert(object_key(entry.file_path()).into_owned());
        }
    }
    Ok(out)
}

/// The manifests `files` name, read concurrently.
pub(super) async fn load_manifests(
    table: &Table,
    files: Vec<ManifestFile>,
) -> Result<Vec<Manifest>> {
    let io = table.file_io().clone();
    // Owned futures: a spawned task needs them `Send` for any lifetime.
    Ok(futures::stream::iter(files)
        .map(move |m| {
            let io = io.clone();
            async move { m.load_manifest(&io).await }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?)
}

/// The manifest lists of `snapshots` of `table`, read concurrently.
pub(super) async fn load_lists(
    table: &Table,
    snapshots: Vec<SnapshotRef>,
) -> Result<Vec<ManifestList>> {
    let table = table.clone();
    Ok(futures::stream::iter(snapshots)
        .map(move |s| {
            let table = table.clone();
            async move { table.manifest_list_reader(&s).load().await }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?)
}

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
    let reachable = reachable(table).await?;
    orphan_data_files(store, table, &reachable, min_age).await
}

/// [`find_orphan_files`] with the references already walked.
pub(super) async fn orphan_data_files(
    store: &Store,
    table: &Table,
    reachable: &Reachable,
    min_age: Duration,
) -> Result<OrphanReport> {
    let on_disk: Vec<_> = list(store, table, "data")
        .await?
        .into_iter()
        .filter(|o| o.location.ends_with(".parquet"))
        .collect();
    let orphans = on_disk
        .iter()
        .filter(|o| !reachable.data.contains(object_key(&o.location).as_ref()))
        .filter(|o| old_enough(o, min_age))
        .map(|o| o.location.clone())
        .collect();
    Ok(OrphanReport {
        orphans,
        referenced: reachable.data.len(),
        on_disk: on_disk.len(),
    })
}

/// Objects under the table's `dir/` prefix (`data`, `metadata`).
pub(super) async fn list(store: &Store, table: &Table, dir: &str) -> Result<Vec<ObjectInfo>> {
    let prefix = format!(
        "{}/{dir}/",
        table.metadata().location().trim_end_matches('/')
    );
    let listed = store.list(&prefix).await;
    crate::metrics::metrics().storage("list", &listed);
    Ok(listed?)
}

/// Whether an object was last modified at least `min_age` ago.
pub(super) fn old_enough(object: &ObjectInfo, min_age: Duration) -> bool {
    SystemTime::now()
        .duration_since(object.modified)
        .unwrap_or_default()
        >= min_age
}

/// Delete the files of a report; returns how many were removed.
pub async fn delete_orphans(store: &Store, report: &OrphanReport) -> Result<usize> {
    delete_all(store, report.orphans.clone()).await
}

/// Delete `locations`; returns how many were asked for.
pub(super) async fn delete_all(store: &Store, locations: Vec<String>) -> Result<usize> {
    if locations.is_empty() {
        return Ok(0);
    }
    let n = locations.len();
    let deleted = store
        .delete_stream(Box::pin(futures::stream::iter(locations)))
        .await;
    crate::metrics::metrics().storage("delete", &deleted);
    deleted?;
    Ok(n)
}
