//! Compaction: rewrite each partition's small data files as one file.
//!
//! Group commit keeps files as large as the concurrent load allows, but a
//! steady trickle of small `DoPut`s (or a backfill whose batches span every
//! day) still leaves many small files per `project_id`/`event_day`
//! partition, and every file costs queries a footer, a ZSTD context per
//! column and pruning work. Compaction reads a partition's small files with
//! iceberg's reader (field ids, schema evolution), writes them back through
//! the ingest writer (same sort, encodings and compression) and commits a
//! `replace` snapshot: same rows, fewer files.
//!
//! The snapshot is committed by [`crate::catalog::rewrite`] (hand-built, as iceberg
//! 0.10.1 has no replace action). An append that lands first makes the
//! swap fail; compaction then rebuilds the snapshot on the new metadata,
//! reusing the files it wrote. Nothing is lost or duplicated either way:
//! readers see the old files or the new ones, never both.
//!
//! The replaced files stay on disk while older snapshots reference them
//! (time travel); [`super::expire_and_clean`] deletes them once those
//! snapshots expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use backon::{ExponentialBuilder, Retryable};
use futures::TryStreamExt;
use iceberg::TableIdent;
use iceberg::scan::FileScanTask;
use iceberg::spec::{DataFile, FormatVersion, ManifestContentType, Struct};
use iceberg::table::Table;

use crate::catalog::Warehouse;
use crate::catalog::rewrite::{Manifests, Rewrite, Swap, commit_rewrite};
use crate::error::{Error, Result};
use crate::ingest::write::{delete_files, write_data_files};
use crate::schema;

/// Which partitions to compact.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Compact a partition once it has at least this many small files.
    pub min_files: usize,
    /// Files at least this large are left alone.
    pub small_file_bytes: u64,
    /// Input bytes (compressed Parquet) of one commit, and of one
    /// partition per run. Bounds memory: a commit's input is decoded and
    /// sorted in memory, about 10x its Parquet size at peak.
    pub max_commit_bytes: u64,
}

/// Small files a partition needs before `raindrop compact` rewrites it.
pub const MIN_FILES: usize = 2;
/// The same for background compaction, which waits for more: a partition
/// that receives a steady trickle is then not rewritten on every run.
pub const BACKGROUND_MIN_FILES: usize = 4;

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            min_files: MIN_FILES,
            small_file_bytes: schema::TARGET_FILE_SIZE as u64 / 2,
            max_commit_bytes: 64 * 1024 * 1024,
        }
    }
}

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
/// is rewritten as one file (per 128 MiB), in commits of bounded size.
pub async fn compact_table(
    warehouse: &Warehouse,
    ident: &TableIdent,
    options: &CompactOptions,
) -> Result<CompactReport> {
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
    let manifests = Manifests::default();
    let mut candidates: Vec<Vec<DataFile>> = files_by_partition(&table, &manifests)
        .await?
        .into_iter()
        .map(|(_, files)| {
            // Smallest first, up to one commit's input: a partition with
            // more small data than that is finished by later runs.
            let mut small: Vec<DataFile> = files
                .into_iter()
                .filter(|f| f.file_size_in_bytes() < options.small_file_bytes)
                .collect();
            small.sort_by_key(|f| f.file_size_in_bytes());
            let mut total = 0;
            small
                .into_iter()
                .take_while(|f| {
                    total += f.file_size_in_bytes();
                    total <= options.max_commit_bytes
                })
                .collect::<Vec<_>>()
        })
        .filter(|files| files.len() >= options.min_files.max(2))
        .collect();
    // Most files first: they gain the most.
    candidates.sort_by_key(|files| std::cmp::Reverse(files.len()));

    // Whole partitions per commit, at most `max_commit_bytes` of input each
    // (a single larger partition gets a commit of its own).
    let mut commits: Vec<(Vec<DataFile>, usize, u64)> = vec![];
    for files in candidates {
        let bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
        match commits.last_mut() {
            Some((pending, parts, pending_bytes))
                if *pending_bytes + bytes <= options.max_commit_bytes =>
            {
                pending.extend(files);
                *parts += 1;
                *pending_bytes += bytes;
            }
            _ => commits.push((files, 1, bytes)),
        }
    }
    let mut report = CompactReport::default();
    for (files, parts, _) in commits {
        rewrite(warehouse, ident, &files, parts, &manifests, &mut report).await?;
    }
    Ok(report)
}

/// Rebuilds of one replace snapshot (after concurrent appends) before
/// giving up.
const MAX_REBUILDS: usize = 5;

/// Why an attempt to commit a replace snapshot did not land.
enum Attempt {
    /// Another commit moved the table first: rebuild and retry.
    Moved,
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
    let batches = read_files(&table, files).await?;
    let added = write_data_files(&table, batches).await?;
    let added_paths: Vec<String> = added.iter().map(|f| f.file_path().to_string()).collect();
    let rows_in: u64 = files.iter().map(|f| f.record_count()).sum();
    let rows_out: u64 = added.iter().map(|f| f.record_count()).sum();
    if rows_in != rows_out {
        delete_files(&table, &added_paths).await;
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
            Swap::Moot(n) => Err(Attempt::Failed(Error::Aborted(format!(
                "{n} of the files being compacted were replaced meanwhile; nothing committed"
            )))),
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
            let e = match failure {
                Attempt::Moved => Error::Aborted(format!(
                    "{ident} kept changing while compacting ({MAX_REBUILDS} rebuilds); nothing committed"
                )),
                Attempt::Failed(e) => e,
            };
            delete_files(&table, &added_paths).await;
            return Err(e);
        }
    };
    let bytes_added: u64 = added.iter().map(|f| f.file_size_in_bytes()).sum();
    let bytes_removed: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
    tracing::info!(
        table = %ident, partitions, files_removed = files.len(), files_added = added.len(),
        rows = rows_in, bytes_removed, bytes_added, snapshot_id, "compacted"
    );
    report.partitions += partitions;
    report.files_removed += files.len();
    report.files_added += added.len();
    report.rows += rows_in;
    report.bytes_removed += bytes_removed;
    report.bytes_added += bytes_added;
    report.snapshots.push(snapshot_id);
    Ok(())
}

/// All rows of `files`, in the table's current schema.
async fn read_files(table: &Table, files: &[DataFile]) -> Result<Vec<RecordBatch>> {
    let schema = table.metadata().current_schema().clone();
    let spec = table.metadata().default_partition_spec().clone();
    let field_ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let tasks: Vec<FileScanTask> = files
        .iter()
        .map(|f| FileScanTask {
            file_size_in_bytes: f.file_size_in_bytes(),
            start: 0,
            length: f.file_size_in_bytes(),
            record_count: Some(f.record_count()),
            data_file_path: f.file_path().to_string(),
            data_file_format: f.file_format(),
            schema: schema.clone(),
            project_field_ids: field_ids.clone(),
            predicate: None,
            deletes: vec![],
            partition: Some(f.partition().clone()),
            partition_spec: Some(spec.clone()),
            name_mapping: None,
            case_sensitive: true,
        })
        .collect();
    let target = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
    let stream = table
        .reader_builder()
        .with_data_file_concurrency_limit(2)
        .build()
        .read(Box::pin(futures::stream::iter(tasks.into_iter().map(Ok))))?;
    let batches: Vec<RecordBatch> = stream.stream().try_collect().await?;
    // The reader may hand identity-partition columns back run-end encoded
    // (a constant per file): bring every column to the table's type.
    batches
        .into_iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(target.fields())
                .map(|(c, f)| {
                    if c.data_type() == f.data_type() {
                        Ok(c.clone())
                    } else {
                        arrow::compute::cast(c, f.data_type())
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(target.clone(), columns)?)
        })
        .collect()
}
