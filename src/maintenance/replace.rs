//! A `replace` snapshot built by hand: iceberg 0.10.1 has no rewrite
//! action and its `TableCommit` builder is crate-private, so the snapshot
//! is assembled from public parts (manifest writer, manifest-list writer,
//! metadata builder) and swapped in with the SQL catalog's compare-and-swap
//! on the metadata pointer, the same guarantee every append relies on.
//!
//! Delete this file when upstream's `RewriteFilesAction` lands
//! (apache/iceberg-rust#1607) and commit through `Transaction` instead.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, Literal, MAIN_BRANCH, Manifest, ManifestContentType, ManifestFile,
    ManifestListWriter, ManifestWriterBuilder, Operation, Snapshot, SnapshotReference,
    SnapshotRetention, Summary, Transform,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableIdent, TableUpdate};

use crate::catalog::Warehouse;
use crate::error::{Error, Result};

/// Manifests read during one compaction run, by location. Manifests are
/// immutable, so choosing partitions and building each commit (and every
/// rebuild after a concurrent append) read each one once.
#[derive(Default)]
pub(super) struct Manifests(Mutex<HashMap<String, Arc<Manifest>>>);

impl Manifests {
    pub(super) async fn get(&self, file: &ManifestFile, io: &FileIO) -> Result<Arc<Manifest>> {
        let cached = self
            .0
            .lock()
            .expect("manifests lock")
            .get(&file.manifest_path)
            .cloned();
        if let Some(m) = cached {
            return Ok(m);
        }
        let m = Arc::new(file.load_manifest(io).await?);
        self.0
            .lock()
            .expect("manifests lock")
            .insert(file.manifest_path.clone(), m.clone());
        Ok(m)
    }
}

/// Build a `replace` snapshot on `base` (its data manifests with `removed`
/// marked deleted, plus one manifest of `added`) and swap it in.
pub(super) async fn commit_replace(
    warehouse: &Warehouse,
    ident: &TableIdent,
    base: &Table,
    removed_files: &[DataFile],
    added: &[DataFile],
    cache: &Manifests,
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
pub(super) enum Swap {
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
