//! Compaction: rewrite each partition's small data files as one file.
//!
//! Group commit keeps files as large as the concurrent load allows, but a
//! steady trickle of small `DoPut`s (or a backfill whose batches span every
//! day) still leaves many small files per `project_id`/`event_day`
//! partition, and every file costs queries a footer, a ZSTD context per
//! column and pruning work. Compaction streams a partition's small files
//! through iceberg's reader (field ids, schema evolution), merges them
//! (each is already in layout order, so a k-way merge keeps memory to a
//! batch per file, however many rows they hold), writes the result
//! through the ingest writer (same encodings and compression) and commits
//! a `replace` snapshot: same rows, fewer files.
//!
//! The snapshot is committed by [`crate::catalog::rewrite`] (hand-built, as iceberg
//! 0.10.1 has no replace action). An append that lands first makes the
//! swap fail; compaction then rebuilds the snapshot on the new metadata,
//! reusing the files it wrote. If another compaction (or an erasure)
//! replaced some of the same files first, the commit is dropped and its
//! files deleted: those rows were rewritten already. Nothing is lost or
//! duplicated either way: readers see the old files or the new ones,
//! never both.
//!
//! The replaced files stay on disk while older snapshots reference them
//! (time travel); [`super::expire_and_clean`] deletes them once those
//! snapshots expire.
//!
//! Which files a run merges (size tiers, the bound on files per
//! partition, a commit's input) is decided in [`policy`]; which
//! partitions, within a run's budget and beside a long merge, in [`plan`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::{FutureExt, StreamExt};
use iceberg::TableIdent;
use iceberg::spec::{DataFile, FormatVersion, ManifestContentType, Struct};
use iceberg::table::Table;

use crate::catalog::Warehouse;
use crate::catalog::read::{STREAM_BATCH_ROWS, stream_data_file, table_arrow_schema};
use crate::catalog::rewrite::{Manifests, Rewrite, Swap, commit_rewrite};
use crate::error::{Error, Result};
use crate::ingest::layout::merge_in_layout_order;
use crate::ingest::write::{all_or_nothing, discard_files, write_partition_stream};

mod plan;
mod policy;

use plan::{input_bytes, plan_run};
use policy::Partition;
pub use policy::{
    BACKGROUND_MAX_FILES, BACKGROUND_MIN_FILES, CompactOptions, MAX_COMMIT_BYTES, MIN_FILES,
    SHORT_MERGE_BYTES, SMALL_FILE_BYTES,
};

/// What a compaction run did.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    /// Partitions rewritten.
    pub partitions: usize,
    /// Data files replaced.
    pub files_removed: usize,
    /// Data files written in their place.
    pub files_added: usize,
    /// Rows rewritten.
    pub rows: u64,
    /// Bytes of the replaced files.
    pub bytes_removed: u64,
    /// Bytes of the files written.
    pub bytes_added: u64,
    /// Replace snapshots committed.
    pub snapshots: Vec<i64>,
    /// Times a replace snapshot was rebuilt because another commit (an
    /// append) moved the table first.
    pub rebuilds: usize,
    /// Partitions merged because they held more small files than the
    /// bound allows (`CompactOptions::max_small_files`), whatever the run's
    /// input budget.
    pub over_bound: usize,
    /// Commits dropped because another compaction (or an erasure) replaced
    /// some of their input files first: those rows were rewritten anyway,
    /// and the files this run wrote for them are deleted.
    pub superseded: usize,
}

impl CompactReport {
    /// Add `other`'s counts (a later pass of the same compaction).
    pub fn absorb(&mut self, other: CompactReport) {
        self.partitions += other.partitions;
        self.files_removed += other.files_removed;
        self.files_added += other.files_added;
        self.rows += other.rows;
        self.bytes_removed += other.bytes_removed;
        self.bytes_added += other.bytes_added;
        self.snapshots.extend(other.snapshots);
        self.rebuilds += other.rebuilds;
        self.over_bound += other.over_bound;
        self.superseded += other.superseded;
    }
}

/// Live data files of the table's current snapshot, by partition.
async fn files_by_partition(
    table: &Table,
    manifests: &Manifests,
) -> Result<Vec<(Struct, Vec<DataFile>)>> {
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(vec![]);
    };
    let list = table.manifest_list_reader(snapshot).load().await?;
    manifests.retain(list.entries());
    let mut groups: HashMap<Struct, Vec<DataFile>> = HashMap::new();
    for manifest_file in list.entries() {
        let manifest = manifests.get(manifest_file, table.file_io()).await?;
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            if manifest_file.content != ManifestContentType::Data {
                return Err(Error::Unsupported(
                    "table has delete files; compaction would have to apply them first".into(),
                ));
            }
            groups
                .entry(entry.data_file().partition().clone())
                .or_default()
                .push(entry.data_file().clone());
        }
    }
    Ok(groups.into_iter().collect())
}

/// Compact `ident`: every partition with at least `min_files` small files
/// is rewritten as one file (per target file size), in commits of bounded
/// size.
pub async fn compact_table(
    warehouse: &Warehouse,
    ident: &TableIdent,
    options: &CompactOptions,
) -> Result<CompactReport> {
    compact_table_with(warehouse, ident, options, &Arc::default(), None).await
}

/// [`compact_table`] reading manifests through `manifests`, which a
/// periodic job keeps between runs (manifests never change, and a run
/// every few seconds would otherwise re-read every tenant's), and handing
/// a long merge to `long` (the periodic job's), if any.
pub async fn compact_table_with(
    warehouse: &Warehouse,
    ident: &TableIdent,
    options: &CompactOptions,
    manifests: &Arc<Manifests>,
    long: Option<&LongMerges>,
) -> Result<CompactReport> {
    // Before the table: a long merge ending in between is then either
    // still busy or already in the table, never planned again.
    let busy = long.map(LongMerges::busy).unwrap_or_default();
    let table = warehouse.catalog.load_table(ident).await?;
    if table.metadata().format_version() != FormatVersion::V2 {
        return Err(Error::Unsupported(format!(
            "compaction supports format-version 2 tables; {ident} is {}",
            table.metadata().format_version()
        )));
    }
    if table.metadata().partition_specs_iter().count() != 1 {
        return Err(Error::Unsupported(format!(
            "{ident} has several partition specs; compaction supports one"
        )));
    }
    let partitions = files_by_partition(&table, manifests)
        .await?
        .into_iter()
        .map(|(_, files)| {
            let (merging, files): (Vec<_>, Vec<_>) = files
                .into_iter()
                .partition(|f| busy.contains(f.file_path()));
            Partition {
                files,
                busy: merging.len(),
            }
        })
        .collect();
    let plan = plan_run(partitions, options, long.is_some() && busy.is_empty());
    if let (Some(lane), Some(files)) = (long, plan.long) {
        lane.start(warehouse.clone(), ident.clone(), files, manifests.clone());
    }
    // Whole partitions per commit, within one commit's input each.
    let commit_bytes = options.max_commit_bytes.min(options.short_merge_bytes);
    let mut commits: Vec<(Vec<DataFile>, usize, u64)> = vec![];
    for files in plan.short {
        let bytes = input_bytes(&files);
        match commits.last_mut() {
            Some((pending, parts, pending_bytes)) if *pending_bytes + bytes <= commit_bytes => {
                pending.extend(files);
                *parts += 1;
                *pending_bytes += bytes;
            }
            _ => commits.push((files, 1, bytes)),
        }
    }
    let mut report = CompactReport {
        over_bound: plan.over_bound,
        ..CompactReport::default()
    };
    for (files, parts, _) in commits {
        rewrite(warehouse, ident, &files, parts, manifests, &mut report).await?;
    }
    Ok(report)
}

/// Background compaction's long merges ([`CompactOptions::short_merge_bytes`]):
/// one at a time, each in its own task beside the runs, so runs stay
/// short and every partition a long merge does not touch keeps its bound
/// on files meanwhile. The merge's files are left out of the runs' plans
/// until it ends. Dropping this (the server stopping) aborts the merge:
/// what it wrote is then an orphan for the sweep, as after a crash.
#[derive(Debug, Default)]
pub struct LongMerges {
    /// Paths of the files the running merge rewrites; empty: none runs.
    busy: Arc<Mutex<HashSet<String>>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl LongMerges {
    fn busy(&self) -> HashSet<String> {
        self.busy.lock().expect("long merges lock").clone()
    }

    /// Merge `files` (one partition's) in a task of its own, unless a
    /// merge runs already.
    fn start(
        &self,
        warehouse: Warehouse,
        ident: TableIdent,
        files: Vec<DataFile>,
        manifests: Arc<Manifests>,
    ) {
        {
            let mut busy = self.busy.lock().expect("long merges lock");
            if !busy.is_empty() {
                return;
            }
            busy.extend(files.iter().map(|f| f.file_path().to_string()));
        }
        let done = Done(self.busy.clone());
        let task = tokio::spawn(async move {
            let _done = done;
            let started = std::time::Instant::now();
            let mut report = CompactReport::default();
            let merged = rewrite(&warehouse, &ident, &files, 1, &manifests, &mut report).await;
            crate::metrics::count_run("long-merge", merged.is_ok());
            match merged {
                Ok(()) => tracing::info!(
                    files_removed = report.files_removed,
                    files_added = report.files_added,
                    bytes_removed = report.bytes_removed,
                    superseded = report.superseded,
                    ms = started.elapsed().as_millis() as u64,
                    "raw_events compacted (long merge)"
                ),
                Err(e) => tracing::warn!(error = %e, "a long compaction merge failed; will retry"),
            }
        });
        *self.task.lock().expect("long merges lock") = Some(task.abort_handle());
    }
}

impl Drop for LongMerges {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().expect("long merges lock").take() {
            task.abort();
        }
    }
}

/// Clears the busy files when a long merge ends, however it ends.
struct Done(Arc<Mutex<HashSet<String>>>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.lock().expect("long merges lock").clear();
    }
}

/// Rebuilds of one replace snapshot (after concurrent appends) before
/// giving up.
const MAX_REBUILDS: usize = 5;

/// Why an attempt to commit a replace snapshot did not land.
enum Attempt {
    /// Another commit moved the table first: rebuild and retry.
    Moved,
    /// Some of the input files were replaced meanwhile: drop this commit.
    Superseded(usize),
    /// Give up.
    Failed(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Failed(e)
    }
}

impl From<iceberg::Error> for Attempt {
    fn from(e: iceberg::Error) -> Self {
        Attempt::Failed(e.into())
    }
}

/// Rewrite `files` (whole partitions) and commit the replacement.
async fn rewrite(
    warehouse: &Warehouse,
    ident: &TableIdent,
    files: &[DataFile],
    partitions: usize,
    manifests: &Manifests,
    report: &mut CompactReport,
) -> Result<()> {
    let table = warehouse.catalog.load_table(ident).await?;
    let added = merge_partitions(&table, files).await?;
    let rows_in: u64 = files.iter().map(|f| f.record_count()).sum();
    let rows_out: u64 = added.iter().map(|f| f.record_count()).sum();
    if rows_in != rows_out {
        discard_files(&table, &added).await;
        return Err(Error::Internal(format!(
            "compaction of {ident} read {rows_in} rows but wrote {rows_out}; nothing committed"
        )));
    }
    // An append that lands first moves the table: rebuild the snapshot on
    // the new metadata (reusing the files written), with backoff.
    let first = Mutex::new(Some(table.clone()));
    let attempt = || async {
        let reuse = first.lock().expect("first attempt lock").take();
        let base = match reuse {
            Some(t) => t,
            None => warehouse.catalog.load_table(ident).await?,
        };
        // Merging as well: the manifests are being rewritten anyway.
        let change = Rewrite {
            removed: files,
            added: &added,
            merge: true,
        };
        match commit_rewrite(&warehouse.tables, ident, &base, change, manifests).await? {
            Swap::Committed(id) => Ok(id),
            Swap::Moved => Err(Attempt::Moved),
            Swap::Moot(n) => Err(Attempt::Superseded(n)),
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(40))
        .with_max_times(MAX_REBUILDS);
    let committed = attempt
        .retry(backoff)
        .when(|e| matches!(e, Attempt::Moved))
        .notify(|_, _| {
            tracing::debug!(table = %ident, "table moved while compacting; rebuilding");
            report.rebuilds += 1;
        })
        .await;
    let snapshot_id = match committed {
        Ok(id) => id,
        Err(failure) => {
            discard_files(&table, &added).await;
            return match failure {
                Attempt::Superseded(n) => {
                    tracing::info!(
                        table = %ident, replaced = n, files = files.len(),
                        "another compaction replaced some of these files first; dropped this commit"
                    );
                    report.superseded += 1;
                    Ok(())
                }
                Attempt::Moved => Err(Error::Aborted(format!(
                    "{ident} kept changing while compacting ({MAX_REBUILDS} rebuilds); nothing committed"
                ))),
                Attempt::Failed(e) => Err(e),
            };
        }
    };
    let (bytes_added, bytes_removed) = (input_bytes(&added), input_bytes(files));
    tracing::info!(
        table = %ident, partitions, files_removed = files.len(), files_added = added.len(),
        rows = rows_in, bytes_removed, bytes_added, snapshot_id, "compacted"
    );
    report.partitions += partitions;
    report.files_removed += files.len();
    report.files_added += added.len();
    report.rows += rows_in;
    report.bytes_removed += bytes_removed;
    crate::metrics::metrics()
        .compaction_bytes
        .inc_by(bytes_removed);
    report.bytes_added += bytes_added;
    report.snapshots.push(snapshot_id);
    Ok(())
}

/// Merge each partition's `files` into new files in layout order, several
/// partitions at once (one per core). Each input is already in layout
/// order, so a partition is a streaming merge: memory holds a batch and a
/// row group's compressed pages per input file, whatever the rows add up
/// to. On error, nothing written is kept.
async fn merge_partitions(table: &Table, files: &[DataFile]) -> Result<Vec<DataFile>> {
    let mut partitions: HashMap<Struct, Vec<DataFile>> = HashMap::new();
    for f in files {
        partitions
            .entry(f.partition().clone())
            .or_default()
            .push(f.clone());
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Handle::current();
    let merges: Vec<futures::future::BoxFuture<'static, Result<Vec<DataFile>>>> = partitions
        .into_iter()
        .map(|(partition, files)| {
            let (table, runtime) = (table.clone(), runtime.clone());
            async move {
                let schema = table_arrow_schema(&table)?;
                let inputs = files
                    .iter()
                    .map(|f| stream_data_file(&table, f))
                    .collect::<Result<Vec<_>>>()?;
                // Decoding, merging and encoding never yield: on a
                // background thread, not the runtime workers that answer
                // requests.
                crate::background::run("merging data files", move || {
                    runtime.block_on(async {
                        let merged = merge_in_layout_order(schema, inputs, STREAM_BATCH_ROWS)?;
                        write_partition_stream(&table, partition, merged).await
                    })
                })
                .await?
            }
            .boxed()
        })
        .collect();
    let results: Vec<Result<Vec<DataFile>>> = futures::stream::iter(merges)
        .buffer_unordered(workers)
        .collect()
        .await;
    let mut added = vec![];
    let mut first_error = None;
    for result in results {
        match result {
            Ok(files) => added.extend(files),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    all_or_nothing(table, added, first_error).await
}
