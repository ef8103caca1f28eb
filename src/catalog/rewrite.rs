//! `replace` snapshots built by hand, for compaction (swap small files for
//! one) and manifest merging (regroup manifests by tenant), and `delete`
//! snapshots, for dropping whole partitions (retention, offboarding): the
//! same manifest rewrite with nothing added. iceberg 0.10.1
//! has no rewrite action and its `TableCommit` builder is crate-private, so
//! the snapshot is assembled from public parts (manifest writer,
//! manifest-list writer, metadata builder) and swapped in with the SQL
//! catalog's compare-and-swap on the metadata pointer, the same guarantee
//! every append relies on.
//!
//! Why merge: every fast append adds one manifest listing the files of all
//! the tenants in its group, so without merging a tenant's query opens one
//! manifest per commit ever made. A merge rewrites the live entries of
//! those multi-tenant manifests into one manifest per tenant, so a query
//! reads its tenant's manifests plus the few appended since the last
//! merge, and partition summaries skip every other tenant's. A tenant's
//! earlier manifests are folded in by size tier ([`MANIFEST_TIERS`]), not
//! at every merge: folding them all each time rewrote every touched
//! tenant's whole manifest every few appends, so with 1,000 tenants the
//! retained snapshots' manifests outgrew the data (1.1 GB of metadata for
//! 938 MB of data after 228 snapshots).
//!
//! Delete this file when upstream's `RewriteFilesAction` and manifest
//! merging land (apache/iceberg-rust#1607) and commit through
//! `Transaction` instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use iceberg::io::FileIO;
use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, Manifest, ManifestContentType, ManifestFile,
    ManifestListWriter, ManifestWriterBuilder, Operation, PrimitiveLiteral, Snapshot,
    SnapshotReference, SnapshotRetention, TableMetadataBuilder, Transform,
};
use iceberg::table::Table;
use iceberg::{Catalog, MetadataLocation, TableIdent, TableUpdate};

use super::cache::TableCache;
use super::summary::replace_summary;
use super::tiers::Tiers;
use crate::error::{Error, Result};

/// Snapshot summary property set on snapshots whose manifests were merged:
/// appends since the newest such snapshot are what the next merge regroups.
pub const MERGED_PROPERTY: &str = "raindrop.manifests-merged";
/// A tenant's manifests smaller than this may be folded into a merge, by
/// [`MANIFEST_TIERS`]; larger ones (thousands of entries) are left as they
/// are, so a merge rewrites a bounded amount per tenant.
pub const SMALL_MANIFEST_BYTES: i64 = 1024 * 1024;
/// Which of a tenant's small manifests a merge folds together: those of the
/// lowest size tier (under 32 KiB, 128 KiB, 512 KiB, ...) that has gathered
/// four, counting the manifest the merge writes for the tenant's new
/// entries. Each entry is rewritten about once per tier, and a tenant has
/// at most three small manifests per tier between merges.
pub const MANIFEST_TIERS: Tiers = Tiers {
    base: 8 * 1024,
    fanout: 4,
    min_count: 4,
};
/// Appends after which the committer merges manifests.
pub const MERGE_AFTER_APPENDS: usize = 8;
/// Manifests written at once by one rewrite.
const WRITE_CONCURRENCY: usize = 16;

/// Manifests read during one rewrite job, by location. Manifests are
/// immutable, so choosing partitions and building each commit (and every
/// rebuild after a concurrent append) read each one once.
#[derive(Default)]
pub struct Manifests(Mutex<HashMap<String, Arc<Manifest>>>);

impl Manifests {
    /// The manifest `file` names, read on first use.
    pub async fn get(&self, file: &ManifestFile, io: &FileIO) -> Result<Arc<Manifest>> {
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

    /// Forget every manifest but `listed` (the current snapshot's): those
    /// are all a long-lived cache needs.
    pub fn retain(&self, listed: &[ManifestFile]) {
        let keep: HashSet<&str> = listed.iter().map(|m| m.manifest_path.as_str()).collect();
        self.0
            .lock()
            .expect("manifests lock")
            .retain(|path, _| keep.contains(path.as_str()));
    }
}

/// What a rewrite snapshot changes. With files removed and none added it
/// is a metadata-only `delete` (whole partitions leave the table).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite<'a> {
    /// Live data files to mark deleted (compaction's inputs, or the files
    /// of dropped partitions).
    pub removed: &'a [DataFile],
    /// Data files to add (compaction's outputs).
    pub added: &'a [DataFile],
    /// Also merge manifests: the entries of every manifest listing several
    /// tenants become one manifest per tenant, which folds in the tenant's
    /// small manifests of any full size tier ([`MANIFEST_TIERS`]).
    pub merge: bool,
}

/// Build a `replace` snapshot on `base` and swap it in: manifests that list
/// a removed file (or, when merging, that list several tenants) are
/// rewritten one per tenant, with removed files marked deleted and added
/// files listed; every other manifest is kept as it is.
pub async fn commit_rewrite(
    tables: &TableCache,
    ident: &TableIdent,
    base: &Table,
    change: Rewrite<'_>,
    cache: &Manifests,
) -> Result<Swap> {
    let removed: HashSet<&str> = change.removed.iter().map(|f| f.file_path()).collect();
    let metadata = base.metadata();
    if metadata.format_version() != FormatVersion::V2 {
        return Err(Error::Unsupported(format!(
            "{ident} is format-version {}; only version 2 tables are rewritten",
            metadata.format_version()
        )));
    }
    let current = metadata
        .current_snapshot()
        .ok_or_else(|| Error::Internal(format!("{ident} has no snapshot to rewrite")))?;
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
    // Entries are regrouped by tenant: the first partition field, when it
    // is an identity transform (`project_id` for raw_events).
    let by_tenant = metadata
        .default_partition_spec()
        .fields()
        .first()
        .is_some_and(|f| f.transform == Transform::Identity);
    let tenant_of = |f: &DataFile| -> Option<Vec<u8>> {
        by_tenant
            .then(|| f.partition().fields().first().cloned().flatten())
            .flatten()
            .and_then(|l| literal_key(&l))
    };

    // Which manifests to rewrite: those listing a removed file, and when
    // merging, those listing several tenants; then, by size tier, the
    // small manifests of each tenant.
    let list = base.manifest_list_reader(current).load().await?;
    let mut rewrite: Vec<bool> = vec![false; list.entries().len()];
    let mut loaded: HashMap<usize, Arc<Manifest>> = HashMap::new();
    for (i, manifest_file) in list.entries().iter().enumerate() {
        if manifest_file.content != ManifestContentType::Data {
            continue;
        }
        let mixed = single_tenant(manifest_file, by_tenant).is_none();
        if change.merge && mixed {
            rewrite[i] = true;
        }
        if !removed.is_empty() {
            let manifest = cache.get(manifest_file, io).await?;
            if manifest
                .entries()
                .iter()
                .any(|e| e.is_alive() && removed.contains(e.file_path()))
            {
                rewrite[i] = true;
            }
            loaded.insert(i, manifest);
        }
    }
    if change.merge {
        let mut tenants: HashSet<Vec<u8>> = change.added.iter().filter_map(tenant_of).collect();
        for (i, manifest_file) in list.entries().iter().enumerate() {
            if rewrite[i] {
                let manifest = match loaded.get(&i) {
                    Some(m) => m.clone(),
                    None => cache.get(manifest_file, io).await?,
                };
                let alive = manifest.entries().iter().filter(|e| e.is_alive());
                tenants.extend(alive.filter_map(|e| tenant_of(e.data_file())));
                loaded.insert(i, manifest);
            }
        }
        let mut small: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for (i, manifest_file) in list.entries().iter().enumerate() {
            if !rewrite[i]
                && manifest_file.content == ManifestContentType::Data
                && manifest_file.manifest_length < SMALL_MANIFEST_BYTES
                && let Some(tenant) = single_tenant(manifest_file, by_tenant)
            {
                small.entry(tenant).or_default().push(i);
            }
        }
        for (tenant, mut manifests) in small {
            manifests.sort_by_key(|&i| list.entries()[i].manifest_length);
            let mut sizes: Vec<u64> = manifests
                .iter()
                .map(|&i| list.entries()[i].manifest_length.max(0) as u64)
                .collect();
            // The tenant's entries being regrouped get a manifest of their
            // own: it counts as the smallest.
            let fresh = tenants.contains(&tenant);
            if fresh {
                sizes.insert(0, 0);
            }
            let n = MANIFEST_TIERS
                .to_merge(&sizes)
                .saturating_sub(usize::from(fresh));
            for &i in &manifests[..n] {
                rewrite[i] = true;
            }
        }
    }

    let mut manifests: Vec<ManifestFile> = vec![];
    let mut clusters: BTreeMap<Option<Vec<u8>>, Vec<Entry>> = BTreeMap::new();
    let mut found = 0;
    let mut rewritten = 0;
    for (i, manifest_file) in list.entries().iter().enumerate() {
        if !rewrite[i] {
            if manifest_file.content != ManifestContentType::Data
                && cache
                    .get(manifest_file, io)
                    .await?
                    .entries()
                    .iter()
                    .any(|e| e.is_alive())
            {
                return Err(Error::Unsupported(format!(
                    "{ident} gained delete files; its manifests are not rewritten"
                )));
            }
            manifests.push(manifest_file.clone());
            continue;
        }
        rewritten += 1;
        let manifest = match loaded.get(&i) {
            Some(m) => m.clone(),
            None => cache.get(manifest_file, io).await?,
        };
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
            clusters.entry(tenant_of(e.file())).or_default().push(e);
        }
    }
    if found != removed.len() {
        // Another compaction replaced some of them first: ours is moot.
        return Ok(Swap::Moot(removed.len() - found));
    }
    for f in change.added {
        clusters
            .entry(tenant_of(f))
            .or_default()
            .push(Entry::Added(f.clone()));
    }
    let mut writes = vec![];
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
        writes.push(writer.write_manifest_file());
    }
    // One small object per tenant: written concurrently (S3 round trips).
    let written: Vec<ManifestFile> = futures::stream::iter(writes)
        .buffered(WRITE_CONCURRENCY)
        .try_collect()
        .await?;
    manifests.extend(written);

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

    let mut summary = replace_summary(current.summary(), change.removed, change.added);
    summary
        .additional_properties
        .insert("manifests-replaced".into(), rewritten.to_string());
    if change.merge {
        summary
            .additional_properties
            .insert(MERGED_PROPERTY.into(), "true".into());
    }
    let snapshot = Snapshot::builder()
        .with_manifest_list(list_path)
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(current.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_summary(summary)
        .with_schema_id(metadata.current_schema_id())
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
        .build();
    let builder = base
        .metadata()
        .clone()
        .into_builder(Some(base.metadata_location_result()?.to_string()));
    let builder = TableUpdate::AddSnapshot { snapshot }.apply(builder)?;
    let builder = TableUpdate::SetSnapshotRef {
        ref_name: MAIN_BRANCH.to_string(),
        reference: SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
    }
    .apply(builder)?;
    Ok(if swap_in(tables, ident, base, builder).await? {
        Swap::Committed(snapshot_id)
    } else {
        Swap::Moved
    })
}

/// Write the metadata `builder` (made from `base`'s) yields and swap the
/// catalog pointer to it if it still points at `base`'s: `false` when
/// another commit moved it first. On success the new table is cached and
/// `base`'s retired metadata files deleted.
pub async fn swap_in(
    tables: &TableCache,
    ident: &TableIdent,
    base: &Table,
    builder: TableMetadataBuilder,
) -> Result<bool> {
    let io = base.file_io();
    let old_location = base.metadata_location_result()?.to_string();
    let new_metadata = builder.build()?.metadata;
    let new_location = MetadataLocation::from_str(&old_location)?
        .with_next_version()
        .with_new_metadata(&new_metadata);
    new_metadata.write_to(io, &new_location).await?;
    let pointer = tables.pointer().ok_or_else(|| {
        Error::Unsupported("rewriting a table needs a SQL catalog (compare-and-swap)".into())
    })?;
    if !pointer
        .swap(ident, &old_location, &new_location.to_string())
        .await?
    {
        return Ok(false);
    }
    // Committed: nothing after this point may turn into an error, or the
    // caller would delete files the new snapshot references.
    let committed = iceberg::Runtime::try_current().and_then(|runtime| {
        Table::builder()
            .identifier(ident.clone())
            .metadata(new_metadata)
            .metadata_location(new_location.to_string())
            .file_io(io.clone())
            .runtime(runtime)
            .build()
    });
    match committed {
        Ok(table) => {
            tables.insert(&table);
            super::files::delete_retired(base, &table);
        }
        Err(e) => tracing::debug!(table = %ident, error = %e, "rewritten table not cached"),
    }
    Ok(true)
}

/// The live data files of `table`'s current snapshot that `keep` selects,
/// reading only the data manifests `may_hold` admits (by their partition
/// summaries).
pub async fn live_data_files(
    table: &Table,
    cache: &Manifests,
    may_hold: impl Fn(&ManifestFile) -> bool,
    keep: impl Fn(&DataFile) -> bool,
) -> Result<Vec<DataFile>> {
    let Some(current) = table.metadata().current_snapshot() else {
        return Ok(vec![]);
    };
    let list = table.manifest_list_reader(current).load().await?;
    let mut files = vec![];
    for manifest_file in list.entries() {
        if manifest_file.content != ManifestContentType::Data || !may_hold(manifest_file) {
            continue;
        }
        let manifest = cache.get(manifest_file, table.file_io()).await?;
        files.extend(
            manifest
                .entries()
                .iter()
                .filter(|e| e.is_alive() && keep(e.data_file()))
                .map(|e| e.data_file().clone()),
        );
    }
    Ok(files)
}

/// Appends committed since the newest snapshot whose manifests were merged
/// (or since the table began): how many multi-tenant manifests a query of
/// the current snapshot may have to open.
pub fn appends_since_merge(table: &Table) -> usize {
    let metadata = table.metadata();
    let mut appends = 0;
    let mut next = metadata.current_snapshot_id();
    while let Some(snapshot) = next.and_then(|id| metadata.snapshot_by_id(id)) {
        let summary = snapshot.summary();
        if summary.additional_properties.contains_key(MERGED_PROPERTY) {
            break;
        }
        if summary.operation == Operation::Append {
            appends += 1;
        }
        next = snapshot.parent_snapshot_id();
    }
    appends
}

/// Merge `ident`'s manifests (see the module docs) on the current table,
/// rebuilding on the new metadata if another commit lands first, up to
/// `attempts` times. Returns the merge snapshot, or `None` if the table
/// kept moving.
pub async fn merge_manifests(
    catalog: &dyn Catalog,
    tables: &TableCache,
    ident: &TableIdent,
    attempts: usize,
) -> Result<Option<i64>> {
    let cache = Manifests::default();
    for _ in 0..attempts.max(1) {
        let base = tables.load(catalog, ident).await?;
        // Manifests are written in format 2; a v1 table (made by another
        // engine) keeps its manifests as they are.
        if base.metadata().current_snapshot().is_none()
            || base.metadata().format_version() != FormatVersion::V2
        {
            return Ok(None);
        }
        let change = Rewrite {
            merge: true,
            ..Rewrite::default()
        };
        match commit_rewrite(tables, ident, &base, change, &cache).await? {
            Swap::Committed(id) => return Ok(Some(id)),
            Swap::Moved | Swap::Moot(_) => continue,
        }
    }
    Ok(None)
}

/// The tenant a manifest's partition summary pins its files to (lower and
/// upper bound of the first field equal, no nulls); `None` when it may hold
/// several.
fn single_tenant(manifest: &ManifestFile, by_tenant: bool) -> Option<Vec<u8>> {
    if !by_tenant {
        return None;
    }
    let summary = manifest.partitions.as_ref()?.first()?;
    match (&summary.lower_bound, &summary.upper_bound) {
        (Some(lo), Some(hi)) if lo == hi && !summary.contains_null => Some(lo.to_vec()),
        _ => None,
    }
}

/// Whether a manifest's summary of partition field `field` admits `value`
/// (in the single-value binary form, e.g. a tenant's UTF-8 bytes): true
/// when there is no summary or no bound to rule it out.
pub fn summary_admits(manifest: &ManifestFile, field: usize, value: &[u8]) -> bool {
    manifest
        .partitions
        .as_ref()
        .and_then(|p| p.get(field))
        .is_none_or(|s| {
            s.lower_bound.as_ref().is_none_or(|lo| lo.as_ref() <= value)
                && s.upper_bound.as_ref().is_none_or(|hi| value <= hi.as_ref())
        })
}

/// A partition value in the single-value binary form partition summaries
/// use (for the tenant types Raindrop partitions by).
fn literal_key(value: &iceberg::spec::Literal) -> Option<Vec<u8>> {
    match value {
        iceberg::spec::Literal::Primitive(p) => match p {
            PrimitiveLiteral::String(s) => Some(s.as_bytes().to_vec()),
            PrimitiveLiteral::Int(v) => Some(v.to_le_bytes().to_vec()),
            PrimitiveLiteral::Long(v) => Some(v.to_le_bytes().to_vec()),
            _ => None,
        },
        _ => None,
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
pub enum Swap {
    /// The catalog now points at the new snapshot.
    Committed(i64),
    /// Another commit moved the table first: rebuild on its metadata.
    Moved,
    /// This many of the files to replace are no longer live (another
    /// compaction replaced them): give up.
    Moot(usize),
}

/// A snapshot id not used by the table yet (positive, random).
pub fn unique_snapshot_id(table: &Table) -> i64 {
    loop {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) >> 1) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}
