//! One tenant's view of the shared `raw_events` table, as Iceberg metadata
//! of its own. The REST catalog hands it to the tenant's engines (DuckDB,
//! PyIceberg, Spark …), which plan from it and so never open a manifest
//! that lists another tenant's files, paths or column statistics.
//!
//! For each snapshot of the base table, the view has a manifest list that
//! names copies of the base manifests holding only the tenant's entries
//! (all statuses, with their snapshot ids and sequence numbers), and one
//! `metadata.json` per base version, equal to the base metadata except for
//! those lists, scrubbed summaries, no metadata log, statistics or
//! write-ahead log properties, and a table uuid of its own. Data files are never copied. Snapshot ids,
//! sequence numbers and timestamps are the base's, so time travel works.
//!
//! Every derived file is a pure function of (base file, tenant) and is
//! named after it under `<location>/tenant-metadata/project_id=<p>/`, a
//! sibling of `metadata/` that expiry and the orphan sweep do not list.
//! Writing one twice (another node, a restart) writes the same content.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{
    FormatVersion, Literal, Manifest, ManifestContentType, ManifestEntry, ManifestFile,
    ManifestListWriter, ManifestStatus, ManifestWriterBuilder, PrimitiveLiteral, Snapshot,
    TableMetadata, Transform,
};
use iceberg::table::Table;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::rewrite::summary_admits;
use crate::error::{Error, Result};

/// Folder, beside the table's `metadata/`, of every tenant's derived files.
pub const TENANT_METADATA_DIR: &str = "tenant-metadata";

/// Prefix of the table properties the ingest log keeps per node.
const LOG_PROPERTY_PREFIX: &str = "raindrop.wal";

/// The column a tenant's rows are partitioned by (identity).
const TENANT_COLUMN: &str = "project_id";

/// Derived manifests written at once (small objects; S3 round trips).
const WRITE_CONCURRENCY: usize = 16;

/// How long a derived list or manifest copy stays reusable after its last
/// use. Each use writes a `metadata.json` naming it, and cleanup keeps
/// what young `metadata.json` files name for at least twice this, so a
/// reused file always still exists.
pub const REUSE_WINDOW: Duration = Duration::from_secs(600);

/// Base manifests kept parsed (a mixed manifest of a busy table is some
/// MB; merged ones are one tenant's and small).
const BASE_MANIFESTS_CACHED: u64 = 64;

/// Tenant names remembered over all base manifests read: ~50 bytes
/// each, so at most ~12 MB (200 mixed manifests of 400 tenants are 80k).
const BASE_TENANT_NAMES_CACHED: u64 = 250_000;

/// Entries of base manifest lists kept parsed, over all lists. Entries a
/// list shares with its parent's are shared in memory, so this bounds
/// pointers more than manifests: 1,000 tenants' merged manifests over a
/// few hundred retained snapshots fit.
const BASE_LIST_ENTRIES_CACHED: u64 = 2_000_000;

/// Where a tenant's derived metadata lives.
pub fn tenant_dir(table_location: &str, project: &str) -> String {
    format!(
        "{}/{TENANT_METADATA_DIR}/project_id={project}",
        table_location.trim_end_matches('/')
    )
}

/// One tenant's metadata for one base version.
#[derive(Debug)]
pub struct TenantView {
    /// The derived `metadata.json`, readable by the tenant.
    pub metadata_location: String,
    /// Its content: what `loadTable` returns inline.
    pub metadata: TableMetadata,
}

/// A derived manifest list: the derived manifests it names, in order.
#[derive(Clone)]
struct DerivedList {
    manifests: Vec<String>,
    path: String,
}

/// Derived files already written by this process, so each base manifest
/// is copied and each snapshot's list written once per tenant.
pub struct TenantViews {
    /// (tenant, base metadata location) → the view.
    views: moka::sync::Cache<(String, String), Arc<TenantView>>,
    /// (tenant, base manifest path) → its copy, `None` when it holds none
    /// of the tenant's entries.
    manifests: moka::sync::Cache<(String, String), Option<ManifestFile>>,
    /// (tenant, snapshot id) → its derived list.
    lists: moka::sync::Cache<(String, i64), DerivedList>,
    /// Base manifests read lately, and which tenants each one holds.
    base: BaseManifests,
    /// Base manifest lists read lately, by path: each tenant's first view
    /// walks every retained snapshot's list, and with manifests merged by
    /// tenant a list has an entry per tenant; parsed once for all tenants.
    base_lists: moka::sync::Cache<String, BaseList>,
}

/// A parsed base manifest list.
type BaseList = Arc<Vec<Arc<ManifestFile>>>;

/// What is known of base manifests across tenants.
struct BaseManifests {
    /// Parsed, by path: a manifest listing many tenants is read once for
    /// all of their first views, not once each.
    parsed: moka::sync::Cache<String, Arc<Manifest>>,
    /// The tenants each manifest read so far holds, by path. A mixed
    /// manifest's partition summary admits nearly every tenant; with this,
    /// a tenant absent from it skips reading it again after the manifest
    /// left `parsed`, so a first view costs about its own manifests, not
    /// every mixed manifest retained.
    tenants: moka::sync::Cache<String, Arc<HashSet<String>>>,
}

impl Default for TenantViews {
    fn default() -> Self {
        Self {
            views: moka::sync::Cache::builder()
                .max_capacity(4_096)
                .time_to_idle(REUSE_WINDOW)
                .build(),
            manifests: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(REUSE_WINDOW)
                .build(),
            lists: moka::sync::Cache::builder()
                .max_capacity(200_000)
                .time_to_idle(REUSE_WINDOW)
                .build(),
            base: BaseManifests {
                parsed: moka::sync::Cache::builder()
                    .max_capacity(BASE_MANIFESTS_CACHED)
                    .time_to_idle(REUSE_WINDOW)
                    .build(),
                tenants: moka::sync::Cache::builder()
                    .max_capacity(BASE_TENANT_NAMES_CACHED)
                    .weigher(|_, t: &Arc<HashSet<String>>| {
                        u32::try_from(t.len()).unwrap_or(u32::MAX).max(1)
                    })
                    .time_to_idle(REUSE_WINDOW)
                    .build(),
            },
            base_lists: moka::sync::Cache::builder()
                .max_capacity(BASE_LIST_ENTRIES_CACHED)
                .weigher(|_, list: &BaseList| u32::try_from(list.len()).unwrap_or(u32::MAX).max(1))
                .time_to_idle(REUSE_WINDOW)
                .build(),
        }
    }
}

impl TenantViews {
    /// The view of `table` (the shared `raw_events`) for `project`,
    /// derived on first use.
    pub async fn view(&self, table: &Table, project: &str) -> Result<Arc<TenantView>> {
        let base_location = table.metadata_location_result()?.to_string();
        let key = (project.to_string(), base_location.clone());
        if let Some(view) = self.views.get(&key) {
            return Ok(view);
        }
        let view = Arc::new(self.derive(table, &base_location, project).await?);
        self.views.insert(key, view.clone());
        Ok(view)
    }

    async fn derive(
        &self,
        table: &Table,
        base_location: &str,
        project: &str,
    ) -> Result<TenantView> {
        let metadata = table.metadata();
        if metadata.format_version() != FormatVersion::V2 {
            return Err(Error::Unsupported(format!(
                "tenant views are derived from format-version 2 tables; this one is {}",
                metadata.format_version()
            )));
        }
        let dir = tenant_dir(metadata.location(), project);
        let mut snapshots: Vec<&Arc<Snapshot>> = metadata.snapshots().collect();
        snapshots.sort_by_key(|s| s.sequence_number());
        let mut lists = std::collections::HashMap::new();
        for snapshot in snapshots {
            let list = self.list(table, &dir, project, snapshot).await?;
            lists.insert(snapshot.snapshot_id(), list.path);
        }

        let mut json = serde_json::to_value(metadata)
            .map_err(|e| Error::Internal(format!("serializing table metadata: {e}")))?;
        let object = json
            .as_object_mut()
            .ok_or_else(|| Error::Internal("table metadata is not a JSON object".into()))?;
        for snapshot in object
            .get_mut("snapshots")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let id = snapshot.get("snapshot-id").and_then(Value::as_i64);
            let list = id.and_then(|id| lists.get(&id)).ok_or_else(|| {
                Error::Internal(format!("snapshot {id:?} has no derived manifest list"))
            })?;
            snapshot["manifest-list"] = Value::String(list.clone());
            // Totals of the shared table would tell the tenant how much
            // everyone else writes: keep only the operation.
            let operation = snapshot
                .pointer("/summary/operation")
                .cloned()
                .unwrap_or(Value::String("append".into()));
            snapshot["summary"] = serde_json::json!({ "operation": operation });
        }
        // The base metadata log names full-table metadata files; column
        // statistics files cover every tenant.
        object.insert("metadata-log".into(), Value::Array(vec![]));
        object.remove("statistics");
        object.remove("partition-statistics");
        // Each node's write-ahead log state (`raindrop.wal.<node>`, and
        // `raindrop.wal-held.<node>`, which lists the projects whose rows a
        // node holds back) is Raindrop's bookkeeping and names tenants.
        if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
            properties.retain(|key, _| !key.starts_with(LOG_PROPERTY_PREFIX));
        }
        // Engines cache tables by uuid: a tenant's view must not collide
        // with the base table or another tenant's view.
        object.insert(
            "table-uuid".into(),
            Value::String(view_uuid(&metadata.uuid().to_string(), project)),
        );
        let metadata: TableMetadata = serde_json::from_value(json)
            .map_err(|e| Error::Internal(format!("derived table metadata is invalid: {e}")))?;
        let name = base_location.rsplit('/').next().unwrap_or(base_location);
        let metadata_location = format!("{dir}/{name}");
        let bytes = serde_json::to_vec(&metadata)
            .map_err(|e| Error::Internal(format!("serializing table metadata: {e}")))?;
        table
            .file_io()
            .new_output(&metadata_location)?
            .write(bytes.into())
            .await?;
        Ok(TenantView {
            metadata_location,
            metadata,
        })
    }

    /// The derived list of `snapshot`: its parent's when the tenant's
    /// manifests did not change, else a new one.
    async fn list(
        &self,
        table: &Table,
        dir: &str,
        project: &str,
        snapshot: &Arc<Snapshot>,
    ) -> Result<DerivedList> {
        let key = (project.to_string(), snapshot.snapshot_id());
        if let Some(list) = self.lists.get(&key) {
            return Ok(list);
        }
        let io = table.file_io();
        let base = self.base_list(table, snapshot).await?;
        // Futures made up front: a closure in the stream would make the
        // handler's future not `Send` (rust-lang/rust#102211).
        let copying: Vec<_> = base
            .iter()
            .map(|m| self.manifest(table, dir, project, m))
            .collect();
        let copies: Vec<Option<ManifestFile>> = futures::stream::iter(copying)
            .buffered(WRITE_CONCURRENCY)
            .try_collect()
            .await?;
        let copies: Vec<ManifestFile> = copies.into_iter().flatten().collect();
        let names: Vec<String> = copies.iter().map(|m| m.manifest_path.clone()).collect();
        let parent = snapshot
            .parent_snapshot_id()
            .and_then(|id| self.lists.get(&(project.to_string(), id)));
        if let Some(parent) = parent.filter(|p| p.manifests == names) {
            self.lists.insert(key, parent.clone());
            return Ok(parent);
        }
        let path = format!("{dir}/snap-{}.avro", snapshot.snapshot_id());
        let mut writer = ManifestListWriter::v2(
            io.new_output(&path)?.writer().await?,
            snapshot.snapshot_id(),
            snapshot.parent_snapshot_id(),
            snapshot.sequence_number(),
        );
        writer.add_manifests(copies.into_iter())?;
        writer.close().await?;
        let list = DerivedList {
            manifests: names,
            path,
        };
        self.lists.insert(key, list.clone());
        Ok(list)
    }

    /// The manifest list of `snapshot`, parsed once for every tenant. Its
    /// entries unchanged since the parent's list (most of them) are the
    /// parent's, in memory.
    async fn base_list(&self, table: &Table, snapshot: &Arc<Snapshot>) -> Result<BaseList> {
        let path = snapshot.manifest_list();
        if let Some(list) = self.base_lists.get(path) {
            return Ok(list);
        }
        let parent = snapshot
            .parent_snapshot_id()
            .and_then(|id| table.metadata().snapshot_by_id(id))
            .and_then(|p| self.base_lists.get(p.manifest_list()));
        let known: std::collections::HashMap<&str, &Arc<ManifestFile>> = parent
            .iter()
            .flat_map(|l| l.iter())
            .map(|m| (m.manifest_path.as_str(), m))
            .collect();
        let read = table.manifest_list_reader(snapshot).load().await?;
        let list: BaseList = Arc::new(
            read.consume_entries()
                .into_iter()
                .map(|m| match known.get(m.manifest_path.as_str()) {
                    Some(same) if ***same == m => Arc::clone(same),
                    _ => Arc::new(m),
                })
                .collect(),
        );
        self.base_lists.insert(path.to_string(), list.clone());
        Ok(list)
    }

    /// The copy of base manifest `file` holding only `project`'s entries,
    /// or `None` when it has none (often known from its partition summary
    /// without reading it).
    async fn manifest(
        &self,
        table: &Table,
        dir: &str,
        project: &str,
        file: &ManifestFile,
    ) -> Result<Option<ManifestFile>> {
        let key = (project.to_string(), file.manifest_path.clone());
        if let Some(copy) = self.manifests.get(&key) {
            return Ok(copy);
        }
        let copy = copy_manifest(table, dir, project, file, &self.base).await?;
        self.manifests.insert(key, copy.clone());
        Ok(copy)
    }
}

/// The tenant of a base manifest entry: its partition value at `field`.
fn tenant_of(entry: &ManifestEntry, field: usize) -> Option<&str> {
    match entry.data_file().partition().fields().get(field) {
        Some(Some(Literal::Primitive(PrimitiveLiteral::String(s)))) => Some(s),
        _ => None,
    }
}

/// Write the copy of `file` with only `project`'s entries.
async fn copy_manifest(
    table: &Table,
    dir: &str,
    project: &str,
    file: &ManifestFile,
    base: &BaseManifests,
) -> Result<Option<ManifestFile>> {
    if file.content != ManifestContentType::Data {
        return Err(Error::Unsupported(format!(
            "{} is a delete manifest; tenant views cover data manifests only",
            file.manifest_path
        )));
    }
    let metadata = table.metadata();
    let spec = metadata
        .partition_spec_by_id(file.partition_spec_id)
        .ok_or_else(|| {
            Error::Internal(format!(
                "{} names unknown partition spec {}",
                file.manifest_path, file.partition_spec_id
            ))
        })?;
    let source = metadata
        .current_schema()
        .field_by_name(TENANT_COLUMN)
        .map(|f| f.id);
    let field = spec
        .fields()
        .iter()
        .position(|f| Some(f.source_id) == source && f.transform == Transform::Identity)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "partition spec {} is not by identity({TENANT_COLUMN}); no tenant view",
                spec.spec_id()
            ))
        })?;
    if !summary_admits(file, field, project.as_bytes())
        || base
            .tenants
            .get(&file.manifest_path)
            .is_some_and(|t| !t.contains(project))
    {
        return Ok(None);
    }
    let io = table.file_io();
    let manifest = match base.parsed.get(&file.manifest_path) {
        Some(m) => m,
        None => {
            let m = Arc::new(file.load_manifest(io).await?);
            base.parsed.insert(file.manifest_path.clone(), m.clone());
            let tenants = m
                .entries()
                .iter()
                .filter_map(|e| tenant_of(e, field).map(str::to_string))
                .collect();
            base.tenants
                .insert(file.manifest_path.clone(), Arc::new(tenants));
            m
        }
    };
    let entries: Vec<_> = manifest
        .entries()
        .iter()
        .filter(|e| tenant_of(e, field) == Some(project))
        .collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let name = file
        .manifest_path
        .rsplit('/')
        .next()
        .unwrap_or("manifest.avro");
    let path = format!("{dir}/{name}");
    let mut writer = ManifestWriterBuilder::new(
        io.new_output(&path)?,
        Some(file.added_snapshot_id),
        manifest.metadata().schema().clone(),
        manifest.metadata().partition_spec().clone(),
    )
    .build_v2_data();
    for entry in entries {
        let seq = entry.sequence_number().ok_or_else(|| {
            Error::Internal(format!("{} has no sequence number", entry.file_path()))
        })?;
        let data = entry.data_file().clone();
        match entry.status() {
            ManifestStatus::Added => writer.add_file(data, seq)?,
            ManifestStatus::Existing => writer.add_existing_file(
                data,
                entry.snapshot_id().unwrap_or(file.added_snapshot_id),
                seq,
                entry.file_sequence_number,
            )?,
            ManifestStatus::Deleted => {
                writer.add_delete_file(data, seq, entry.file_sequence_number)?
            }
        }
    }
    let mut copy = writer.write_manifest_file().await?;
    // The copy stands in for the base manifest in the base snapshot: same
    // sequence numbers, so added entries inherit the same file sequence.
    copy.sequence_number = file.sequence_number;
    copy.min_sequence_number = file.min_sequence_number;
    copy.added_snapshot_id = file.added_snapshot_id;
    Ok(Some(copy))
}

/// A uuid of its own for `project`'s view of table `base`, stable across
/// nodes and restarts.
fn view_uuid(base: &str, project: &str) -> String {
    let digest = Sha256::digest(format!("raindrop-tenant-view:{base}:{project}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}
