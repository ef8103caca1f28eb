//! Per-project retention of `raw_events`: whole `event_day` partitions
//! older than a project's retention leave the table in one metadata-only
//! `delete` snapshot (no data is rewritten). Readers stop seeing them at
//! that commit; their files leave storage when the last snapshot that
//! lists them expires ([`super::expire`]).
//!
//! Days are whole UTC days, as `event_day` is: with 90 days of retention,
//! on day D the partitions of days before D − 90 go.

use std::collections::BTreeSet;

use iceberg::spec::{DataFile, Literal, ManifestFile, PrimitiveLiteral};
use iceberg::table::Table;

use crate::catalog::Warehouse;
use crate::catalog::rewrite::{
    Manifests, Rewrite, Swap, commit_rewrite, live_data_files, summary_admits,
};
use crate::error::{Error, Result};
use crate::schema::{EVENT_DAY_PARTITION, col};
use crate::tenant::projects::ProjectTable;

/// Commits attempted before a drop gives up (another node or compaction
/// committed in between each time); the next run retries.
const ATTEMPTS: usize = 8;

/// What dropping one project's partitions did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropReport {
    /// The project.
    pub project_id: String,
    /// `event_day` partitions removed.
    pub partitions: usize,
    /// Data files no longer in the table.
    pub files: usize,
    /// Rows in them.
    pub rows: u64,
    /// Their bytes (still on storage until their snapshots expire).
    pub bytes: u64,
    /// The `delete` snapshot, if anything was dropped.
    pub snapshot_id: Option<i64>,
}

/// Today as `event_day` counts days: UTC days since 1970-01-01.
pub fn today() -> i32 {
    chrono::Utc::now()
        .timestamp()
        .div_euclid(86_400)
        .try_into()
        .unwrap_or(i32::MAX)
}

/// Drop every `raw_events` partition of `project_id` whose `event_day` is
/// before `first_kept_day` (`i32::MAX`: all of them), retrying on a table
/// that moved meanwhile.
pub async fn drop_partitions(
    warehouse: &Warehouse,
    project_id: &str,
    first_kept_day: i32,
) -> Result<DropReport> {
    let ident = warehouse.raw_events_ident();
    let cache = Manifests::default();
    for _ in 0..ATTEMPTS {
        let table = warehouse
            .tables
            .load(warehouse.catalog.as_ref(), &ident)
            .await?;
        let (files, days) = partition_files(&table, project_id, first_kept_day, &cache).await?;
        let mut report = DropReport {
            project_id: project_id.to_string(),
            ..DropReport::default()
        };
        if files.is_empty() {
            return Ok(report);
        }
        let change = Rewrite {
            removed: &files,
            added: &[],
            merge: false,
        };
        match commit_rewrite(&warehouse.tables, &ident, &table, change, &cache).await? {
            Swap::Committed(id) => {
                report.partitions = days;
                report.files = files.len();
                report.rows = files.iter().map(|f| f.record_count()).sum();
                report.bytes = files.iter().map(|f| f.file_size_in_bytes()).sum();
                report.snapshot_id = Some(id);
                return Ok(report);
            }
            // Another commit first, or compaction replaced some of the
            // files: plan again on the new snapshot.
            Swap::Moved | Swap::Moot(_) => continue,
        }
    }
    Err(Error::Aborted(format!(
        "raw_events kept changing while dropping project {project_id}'s partitions ({ATTEMPTS} attempts); the next run retries"
    )))
}

/// Apply every project's retention (and finish deleted projects) as of
/// today; returns what was dropped, per project that lost anything.
pub async fn enforce(warehouse: &Warehouse, projects: &ProjectTable) -> Result<Vec<DropReport>> {
    let today = today();
    let mut out = vec![];
    for policy in projects.list().await? {
        let Some(first_kept) = policy.first_kept_day(today) else {
            continue;
        };
        let report = drop_partitions(warehouse, &policy.project_id, first_kept).await?;
        if report.files > 0 {
            tracing::info!(
                project = %report.project_id,
                partitions = report.partitions,
                files = report.files,
                rows = report.rows,
                "raw_events partitions dropped by retention"
            );
            out.push(report);
        }
    }
    Ok(out)
}

/// The live data files of `project_id` in days before `first_kept_day`,
/// and how many distinct days they cover. Manifests whose partition
/// summaries rule the project or the days out are not read.
async fn partition_files(
    table: &Table,
    project_id: &str,
    first_kept_day: i32,
    cache: &Manifests,
) -> Result<(Vec<DataFile>, usize)> {
    let spec = table.metadata().default_partition_spec();
    let position = |name: &str| spec.fields().iter().position(|f| f.name == name);
    let (Some(project_at), Some(day_at)) =
        (position(col::PROJECT_ID), position(EVENT_DAY_PARTITION))
    else {
        return Err(Error::Internal(format!(
            "raw_events is not partitioned by {} and {EVENT_DAY_PARTITION}",
            col::PROJECT_ID
        )));
    };
    let day_of = |f: &DataFile| -> Option<i32> {
        let fields = f.partition().fields();
        let project = fields.get(project_at).cloned().flatten();
        let day = fields.get(day_at).cloned().flatten();
        match (project, day) {
            (
                Some(Literal::Primitive(PrimitiveLiteral::String(p))),
                Some(Literal::Primitive(PrimitiveLiteral::Int(d))),
            ) if p == project_id && d < first_kept_day => Some(d),
            _ => None,
        }
    };
    let files = live_data_files(
        table,
        cache,
        |m| may_hold(m, project_at, day_at, project_id, first_kept_day),
        |f| day_of(f).is_some(),
    )
    .await?;
    let days: BTreeSet<i32> = files.iter().filter_map(day_of).collect();
    Ok((files, days.len()))
}

/// Whether a manifest's partition summaries allow files of `project_id`
/// before `first_kept_day` (true when a summary is missing).
fn may_hold(
    manifest: &ManifestFile,
    project_at: usize,
    day_at: usize,
    project_id: &str,
    first_kept_day: i32,
) -> bool {
    let day_ok = manifest
        .partitions
        .as_ref()
        .and_then(|p| p.get(day_at))
        .and_then(|s| s.lower_bound.as_ref())
        .and_then(|lo| <[u8; 4]>::try_from(lo.as_ref()).ok())
        .is_none_or(|lo| i32::from_le_bytes(lo) < first_kept_day);
    day_ok && summary_admits(manifest, project_at, project_id.as_bytes())
}
