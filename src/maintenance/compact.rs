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
//! iceberg 0.10.1 has no replace action and its `TableCommit` builder is
//! crate-private, so the snapshot is assembled from public parts (manifest
//! writer, manifest-list writer, metadata builder) and swapped in with the
//! SQL catalog's compare-and-swap on the metadata pointer, the same
//! guarantee every append relies on. An append that lands first makes the
//! swap fail; compaction then rebuilds the snapshot on the new metadata,
//! reusing the files it wrote. Nothing is lost or duplicated either way:
//! readers see the old files or the new ones, never both.
//!
//! The replaced files stay on disk while older snapshots reference them
//! (time travel); [`super::expire_and_clean`] deletes them once those
//! snapshots expire.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;
use iceberg::spec::{
    DataFile, FormatVersion, Literal, MAIN_BRANCH, Manifest, ManifestContentType, ManifestFile,
    ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot, SnapshotReference,
    SnapshotRetention, Struct, Summary, Transform,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableIdent, TableUpdate};

use crate::catalog::Warehouse;
use crate::error::{Error, Result};
use crate::ingest::writer::{delete_files, write_data_files};
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

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            min_files: 2,
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

/// Manifests read during one compaction run, by location. Manifests are
/// immutable, so choosing partitions and building each commit (and every
/// rebuild after a concurrent append) read each one once.
#[derive(Default)]
struct Manifests(HashMap<String, Arc<Manifest>>);

impl Manifests {
    async fn get(&mut self, file: &ManifestFile, io: &FileIO) -> Result<Arc<Manifest>> {
        if let Some(m) = self.0.get(&file.manifest_path) {
            return Ok(m.clone());
        }
        let m = Arc::new(file.load_manifest(io).await?);
        self.0.insert(file.manifest_path.clone(), m.clone());
        Ok(m)
    }
}

/// Live data files of the table's current snapshot, by partition.
async fn files_by_partition(
    table: &Table,
    manifests: &mut Manifests,
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
    let mut manifests = Manifests::default();
    let mut candidates: Vec<Vec<DataFile>> = files_by_partition(&table, &mut manifests)
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
        rewrite(warehouse, ident, &files, parts, &mut manifests, &mut report).await?;
    }
    Ok(report)
}

/// Attempts to swap in one replace snapshot before giving up.
const MAX_ATTEMPTS: u32 = 5;

/// Rewrite `files` (whole partitions) and commit the replacement.
async fn rewrite(
    warehouse: &Warehouse,
    ident: &TableIdent,
    files: &[DataFile],
    partitions: usize,
    manifests: &mut Manifests,
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
    let mut base = table;
    let mut attempt = 0;
    let snapshot_id = loop {
        let failure = match commit_replace(warehouse, ident, &base, files, &added, manifests).await
        {
            Ok(Swap::Committed(id)) => break id,
            Ok(Swap::Moved) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(table = %ident, attempt, "table moved while compacting; retrying");
                attempt += 1;
                report.rebuilds += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
                base = warehouse.catalog.load_table(ident).await?;
                continue;
            }
            Ok(Swap::Moved) => Error::Aborted(format!(
                "{ident} kept changing while compacting ({MAX_ATTEMPTS} attempts); nothing committed"
            )),
            Ok(Swap::Moot(n)) => Error::Aborted(format!(
                "{n} of the files being compacted were replaced meanwhile; nothing committed"
            )),
            Err(e) => e,
        };
        delete_files(&base, &added_paths).await;
        return Err(failure);
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

/// Build a `replace` snapshot on `base` (its data manifests with `removed`
/// marked deleted, plus one manifest of `added`) and swap it in.
async fn commit_replace(
    warehouse: &Warehouse,
    ident: &TableIdent,
    base: &Table,
    removed_files: &[DataFile],
    added: &[DataFile],
    cache: &mut Manifests,
) -> Result<Swap> {
    let removed: HashSet<&str> = removed_files.iter().map(|f| f.file_path()).collect();
    let metadata = base.metadata();
    let current = metadata
        .current_snapshot()
        .ok_or_else(|| Error::Internal(format!("{ident} has no snapshot to compact")))?;
    let io = base.file_io();
    let snapshot_id = unique_snapshot_id(base);
    let sequence_number = metadata.next_sequence_number();
    let commit_uuid = uuid::Uuid::now_v7();
    let mut counter = 0;
    let mut manifest_writer = || {
        counter += 1;
        let path = format!(
            "{}/metadata/{commit_uuid}-m{counter}.avro",
            metadata.location()
        );
        Ok::<_, Error>(
            ManifestWriterBuilder::new(
                io.new_output(path)?,
                Some(snapshot_id),
                metadata.current_schema().clone(),
                metadata.default_partition_spec().as_ref().clone(),
            )
            .build_v2_data(),
        )
    };

    // Manifests that list a replaced file are rewritten; their entries are
    // regrouped by tenant (the first identity partition field), so the
    // manifest count shrinks and each tenant's files stay in manifests that
    // partition summaries can skip for other tenants' queries.
    let mut manifests: Vec<ManifestFile> = vec![];
    let mut clusters: HashMap<Option<Literal>, Vec<Entry>> = HashMap::new();
    let cluster_of = |f: &DataFile| -> Option<Literal> {
        let first = metadata.default_partition_spec().fields().first()?;
        (first.transform == Transform::Identity)
            .then(|| f.partition().fields().first().cloned().flatten())
            .flatten()
    };
    let mut found = 0;
    let list = base.manifest_list_reader(current).load().await?;
    for manifest_file in list.entries() {
        let manifest = cache.get(manifest_file, io).await?;
        let touches = manifest
            .entries()
            .iter()
            .any(|e| e.is_alive() && removed.contains(e.file_path()));
        if !touches {
            if manifest_file.content != ManifestContentType::Data
                && manifest.entries().iter().any(|e| e.is_alive())
            {
                return Err(Error::Unsupported(format!(
                    "{ident} gained delete files; compaction stopped"
                )));
            }
            manifests.push(manifest_file.clone());
            continue;
        }
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let seq = entry.sequence_number().ok_or_else(|| {
                Error::Internal(format!("{} has no sequence number", entry.file_path()))
            })?;
            let file = entry.data_file().clone();
            let file_seq = entry.file_sequence_number;
            let e = if removed.contains(entry.file_path()) {
                found += 1;
                Entry::Deleted(file, seq, file_seq)
            } else {
                let added_by = entry
                    .snapshot_id()
                    .unwrap_or(manifest_file.added_snapshot_id);
                Entry::Existing(file, added_by, seq, file_seq)
            };
            clusters.entry(cluster_of(e.file())).or_default().push(e);
        }
    }
    if found != removed.len() {
        // Another compaction replaced some of them first: ours is moot.
        return Ok(Swap::Moot(removed.len() - found));
    }
    for f in added {
        clusters
            .entry(cluster_of(f))
            .or_default()
            .push(Entry::Added(f.clone()));
    }
    for entries in clusters.into_values() {
        let mut writer = manifest_writer()?;
        for e in entries {
            match e {
                Entry::Added(f) => writer.add_file(f, -1)?,
                Entry::Existing(f, snapshot, seq, file_seq) => {
                    writer.add_existing_file(f, snapshot, seq, file_seq)?
                }
                Entry::Deleted(f, seq, file_seq) => writer.add_delete_file(f, seq, file_seq)?,
            }
        }
        manifests.push(writer.write_manifest_file().await?);
    }

    let list_path = format!(
        "{}/metadata/snap-{snapshot_id}-0-{commit_uuid}.avro",
        metadata.location()
    );
    let mut list_writer = ManifestListWriter::v2(
        io.new_output(&list_path)?.writer().await?,
        snapshot_id,
        Some(current.snapshot_id()),
        sequence_number,
    );
    list_writer.add_manifests(manifests.into_iter())?;
    list_writer.close().await?;

    let snapshot = Snapshot::builder()
        .with_manifest_list(list_path)
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(current.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_summary(replace_summary(current.summary(), removed_files, added))
        .with_schema_id(metadata.current_schema_id())
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .build();
    let old_location = base.metadata_location_result()?.to_string();
    let mut builder = metadata.clone().into_builder(Some(old_location.clone()));
    builder = TableUpdate::AddSnapshot { snapshot }.apply(builder)?;
    builder = TableUpdate::SetSnapshotRef {
        ref_name: MAIN_BRANCH.to_string(),
        reference: SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
    }
    .apply(builder)?;
    let new_metadata = builder.build()?.metadata;
    let new_location = MetadataLocation::from_str(&old_location)?
        .with_next_version()
        .with_new_metadata(&new_metadata);
    new_metadata.write_to(io, &new_location).await?;
    let pointer = warehouse.tables.pointer().ok_or_else(|| {
        Error::Unsupported("compaction needs a SQL catalog (compare-and-swap)".into())
    })?;
    if pointer
        .swap(ident, &old_location, &new_location.to_string())
        .await?
    {
        Ok(Swap::Committed(snapshot_id))
    } else {
        Ok(Swap::Moved)
    }
}

/// A manifest entry of a replace snapshot.
enum Entry {
    /// Written by the compaction (sequence number inherited).
    Added(DataFile),
    /// Kept: added by snapshot `.1` with data/file sequence numbers.
    Existing(DataFile, i64, i64, Option<i64>),
    /// Replaced, with its original sequence numbers.
    Deleted(DataFile, i64, Option<i64>),
}

impl Entry {
    fn file(&self) -> &DataFile {
        match self {
            Entry::Added(f) | Entry::Existing(f, ..) | Entry::Deleted(f, ..) => f,
        }
    }
}

/// How an attempt to swap in a replace snapshot ended.
enum Swap {
    /// The catalog now points at the new snapshot.
    Committed(i64),
    /// Another commit moved the table first: rebuild on its metadata.
    Moved,
    /// This many of the files to replace are no longer live (another
    /// compaction replaced them): give up.
    Moot(usize),
}

/// A snapshot id not used by the table yet (positive, random).
fn unique_snapshot_id(table: &Table) -> i64 {
    loop {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) >> 1) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

/// Summary of a replace snapshot: what it swapped, and the table totals
/// carried over from `previous` (rows unchanged, files and bytes adjusted).
fn replace_summary(previous: &Summary, removed: &[DataFile], added: &[DataFile]) -> Summary {
    let rows: u64 = added.iter().map(|f| f.record_count()).sum();
    let bytes_added: u64 = added.iter().map(|f| f.file_size_in_bytes()).sum();
    let bytes_removed: u64 = removed.iter().map(|f| f.file_size_in_bytes()).sum();
    let mut props = HashMap::from([
        ("added-data-files".to_string(), added.len().to_string()),
        ("deleted-data-files".to_string(), removed.len().to_string()),
        ("added-records".to_string(), rows.to_string()),
        ("deleted-records".to_string(), rows.to_string()),
        ("added-files-size".to_string(), bytes_added.to_string()),
        ("removed-files-size".to_string(), bytes_removed.to_string()),
    ]);
    let total =
        |key: &str| -> Option<i128> { previous.additional_properties.get(key)?.parse().ok() };
    let carried = [
        ("total-records", 0),
        (
            "total-data-files",
            added.len() as i128 - removed.len() as i128,
        ),
        (
            "total-files-size",
            bytes_added as i128 - bytes_removed as i128,
        ),
        ("total-delete-files", 0),
        ("total-position-deletes", 0),
        ("total-equality-deletes", 0),
    ];
    for (key, delta) in carried {
        if let Some(v) = total(key) {
            props.insert(key.to_string(), (v + delta).max(0).to_string());
        }
    }
    Summary {
        operation: Operation::Replace,
        additional_properties: props,
    }
}
