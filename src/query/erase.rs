//! Erasure: `DELETE FROM wildedge.raw_events WHERE …`, for a user's right
//! to be forgotten. Copy-on-write: every data file of the project holding a
//! matching row is rewritten without those rows, and the swap is one
//! `overwrite` snapshot (files left empty are just removed). Row-level
//! delete files would be cheaper to write, but PyIceberg, Polars and Daft
//! refuse equality deletes, DuckDB applies them to the wrong rows, and
//! compaction would have to apply them (docs/design/17-lifecycle-research.md).
//!
//! Only the project's own files are ever read or rewritten: its partition is
//! part of the predicate that picks the candidate files, and of the filter
//! that picks the rows. The rows are invisible from the commit on; their
//! bytes leave storage when the snapshots before it expire.

use std::collections::HashSet;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::logical_expr::{Expr, cast, col, is_true, lit, not};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use iceberg::expr::Predicate;
use iceberg::spec::DataFile;
use iceberg::table::Table;

use super::predicate::implied_by_all;
use super::pruning::event_day_predicate;
use crate::catalog::Warehouse;
use crate::catalog::read::{read_data_files, stream_data_file, table_arrow_schema};
use crate::catalog::rewrite::{
    Manifests, Rewrite, Swap, commit_rewrite, live_data_files, summary_admits,
};
use crate::error::{Error, Result};
use crate::ingest::Ingestor;
use crate::ingest::write::{discard_files, write_data_files, write_partition_stream};
use crate::schema::col as column;
use crate::schema::evolve::retyped_columns;
use crate::schema::partition::only_spec;

/// Plans tried before giving up: compaction replaced a candidate file
/// meanwhile, so the erasure is planned again on the new files.
const PLANS: usize = 4;
/// Commits tried per plan: appends landing first move the table.
const COMMITS: usize = 16;

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    /// Rows deleted.
    pub rows: u64,
    /// Files read because their statistics admit a matching row.
    pub files_read: usize,
    /// Files replaced (rewritten without the rows, or removed when every
    /// row matched).
    pub files_replaced: usize,
    /// Bytes of the files read.
    pub bytes_read: u64,
    /// Bytes of the files written.
    pub bytes_written: u64,
    /// The `overwrite` (or `delete`) snapshot; `None` if nothing matched.
    pub snapshot_id: Option<i64>,
}

/// Delete the rows of `project_id` in `raw_events` matching `predicate`
/// (over the table's columns and `event_day`), as of every row
/// acknowledged before the call.
pub async fn erase(
    warehouse: &Warehouse,
    ingest: &Ingestor,
    project_id: &str,
    predicate: Expr,
) -> Result<Erasure> {
    // `event_day` conditions prune whole days, as in queries: rows see
    // the column computed from `event_timestamp`, which statistics cannot.
    let days = event_day_predicate(&predicate);
    let filter = col(column::PROJECT_ID)
        .eq(lit(project_id))
        .and(row_predicate(predicate)?);
    // Rows still in the write-ahead log are committed first, so the
    // erasure covers everything accepted before it.
    ingest.flush().await?;
    let ident = warehouse.raw_events_ident();
    let cache = Manifests::default();
    for _ in 0..PLANS {
        let table = warehouse
            .tables
            .load(warehouse.catalog.as_ref(), &ident)
            .await?;
        let candidates = candidate_files(&table, &filter, days.clone(), project_id, &cache).await?;
        let mut report = Erasure {
            files_read: candidates.len(),
            bytes_read: candidates.iter().map(|f| f.file_size_in_bytes()).sum(),
            ..Erasure::default()
        };
        let mut removed = vec![];
        let mut added = vec![];
        for file in candidates {
            match rewrite_without(&table, &file, &filter).await {
                Ok(Some((rows, written))) => {
                    report.rows += rows;
                    removed.push(file);
                    added.extend(written);
                }
                Ok(None) => {}
                Err(e) => {
                    discard_files(&table, &added).await;
                    return Err(e);
                }
            }
        }
        if removed.is_empty() {
            return Ok(report);
        }
        report.files_replaced = removed.len();
        report.bytes_written = added.iter().map(|f| f.file_size_in_bytes()).sum();
        let change = Rewrite {
            removed: &removed,
            added: &added,
            merge: false,
        };
        let mut base = table.clone();
        for _ in 0..COMMITS {
            match commit_rewrite(&warehouse.tables, &ident, &base, change, &cache).await {
                Ok(Swap::Committed(id)) => {
                    report.snapshot_id = Some(id);
                    return Ok(report);
                }
                Ok(Swap::Moved) => {
                    base = warehouse
                        .tables
                        .load(warehouse.catalog.as_ref(), &ident)
                        .await?;
                }
                Ok(Swap::Moot(_)) => break,
                Err(e) => {
                    discard_files(&table, &added).await;
                    return Err(e);
                }
            }
        }
        // Compaction replaced some of the files (or the table kept moving):
        // plan again on what is live now.
        discard_files(&table, &added).await;
    }
    Err(Error::Aborted(format!(
        "raw_events kept changing while erasing rows of project {project_id} ({PLANS} plans); nothing was deleted, retry"
    )))
}

/// The predicate as rows of a data file see it: columns unqualified, and
/// the virtual `event_day` computed from `event_timestamp` (UTC).
fn row_predicate(predicate: Expr) -> Result<Expr> {
    let mut subquery = false;
    let rewritten = predicate
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.name == column::EVENT_DAY => {
                    Transformed::yes(cast(col(column::EVENT_TIMESTAMP), DataType::Date32))
                }
                Expr::Column(c) => Transformed::yes(Expr::Column(c.name.as_str().into())),
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                    subquery = true;
                    Transformed::no(e)
                }
                other => Transformed::no(other),
            })
        })?
        .data;
    if subquery {
        return Err(Error::Unsupported(
            "DELETE takes a condition on raw_events' own columns (e.g. session_id = '…' or device_id IN ('…', '…')); subqueries are not supported".into(),
        ));
    }
    Ok(rewritten)
}

/// The project's live files whose partition and column statistics admit a
/// matching row.
async fn candidate_files(
    table: &Table,
    filter: &Expr,
    days: Option<Predicate>,
    project_id: &str,
    cache: &Manifests,
) -> Result<Vec<DataFile>> {
    if table.metadata().current_snapshot().is_none() {
        return Ok(vec![]);
    }
    let mut scan = table.scan();
    let implied = implied_by_all(
        std::slice::from_ref(filter),
        &retyped_columns(table.metadata()),
    );
    let pruning = match (implied, days) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    };
    if let Some(p) = pruning {
        scan = scan.with_filter(p);
    }
    let paths: HashSet<String> = scan
        .build()?
        .plan_files()
        .await?
        .map_ok(|t| t.data_file_path)
        .try_collect()
        .await?;
    // The planned paths are the project's already; the summaries only
    // spare reading other tenants' manifests (project_id is the first
    // partition field).
    live_data_files(
        table,
        cache,
        |m| summary_admits(m, 0, project_id.as_bytes()),
        |f| paths.contains(f.file_path()),
    )
    .await
}

/// `file` rewritten without the rows matching `filter`: the rows deleted
/// and the files written (none when every row matched); `None` when no
/// row matched (the file stays).
///
/// The file is streamed twice, a batch at a time: once to count the
/// matching rows, once to write the others in their order (the file's
/// layout order). Holding it decoded whole could take gigabytes for a
/// target-size (512 MiB) file. A table whose partition spec evolved (by
/// another engine) is rewritten in memory, so the rows are split under
/// the current spec.
async fn rewrite_without(
    table: &Table,
    file: &DataFile,
    filter: &Expr,
) -> Result<Option<(u64, Vec<DataFile>)>> {
    if only_spec(table).is_none() {
        return rewrite_without_in_memory(table, file, filter).await;
    }
    // Decoding, filtering and encoding never yield: on a background
    // thread, not the runtime workers that answer requests.
    let (table, file, filter) = (table.clone(), file.clone(), filter.clone());
    let runtime = tokio::runtime::Handle::current();
    crate::background::run("erasing rows", move || {
        runtime.block_on(stream_without(&table, &file, &filter))
    })
    .await?
}

async fn stream_without(
    table: &Table,
    file: &DataFile,
    filter: &Expr,
) -> Result<Option<(u64, Vec<DataFile>)>> {
    let schema = table_arrow_schema(table)?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let keep =
        SessionContext::new().create_physical_expr(not(is_true(filter.clone())), &df_schema)?;
    let kept = move |batch: RecordBatch| -> Result<RecordBatch> {
        let mask = keep.evaluate(&batch)?.into_array(batch.num_rows())?;
        Ok(arrow::compute::filter_record_batch(
            &batch,
            mask.as_boolean(),
        )?)
    };
    let (mut total, mut left) = (0u64, 0u64);
    let mut rows = stream_data_file(table, file)?;
    while let Some(batch) = rows.try_next().await? {
        total += batch.num_rows() as u64;
        left += kept(batch)?.num_rows() as u64;
    }
    if total == left {
        return Ok(None);
    }
    let written = if left == 0 {
        vec![]
    } else {
        let rows = stream_data_file(table, file)?
            .and_then(move |batch| futures::future::ready(kept(batch)))
            .boxed();
        let written = write_partition_stream(table, file.partition().clone(), rows).await?;
        let rows_out: u64 = written.iter().map(|f| f.record_count()).sum();
        if rows_out != left {
            discard_files(table, &written).await;
            return Err(Error::Internal(format!(
                "erasure rewrote {} with {rows_out} rows, {left} expected; nothing committed",
                file.file_path()
            )));
        }
        written
    };
    Ok(Some((total - left, written)))
}

/// [`rewrite_without`] holding the file decoded, for tables whose rows are
/// re-split under the current partition spec.
async fn rewrite_without_in_memory(
    table: &Table,
    file: &DataFile,
    filter: &Expr,
) -> Result<Option<(u64, Vec<DataFile>)>> {
    let batches = read_data_files(table, std::slice::from_ref(file)).await?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if total == 0 {
        return Ok(None);
    }
    let ctx = SessionContext::new();
    let kept = ctx
        .read_batches(batches)?
        .filter(not(is_true(filter.clone())))?
        .collect()
        .await?;
    let left: usize = kept.iter().map(|b| b.num_rows()).sum();
    let deleted = (total - left) as u64;
    if deleted == 0 {
        return Ok(None);
    }
    let written = if left == 0 {
        vec![]
    } else {
        write_data_files(table, kept).await?
    };
    Ok(Some((deleted, written)))
}
