//! The plan that reads acknowledged rows not yet committed to the table
//! (the ingest buffer, see `ingest::buffer`), so a query sees every row
//! acknowledged before it started. The rows are already the caller's
//! project only; they are shaped like the table scan's output (string
//! views, the virtual `event_day`) and filtered by every pushed-down
//! filter here, since some of those are `Exact` for the file scan.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::utils::conjunction;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExecBuilder;

use crate::schema::col;

/// A plan over `batches` (rows of `raw_events` in any earlier or current
/// schema) with `schema`'s columns, filtered by `filters`, projected.
///
/// Only the columns the query reads (projection and filters) are shaped,
/// since shaping copies (string views, `event_day`) and every query pays
/// it; the rows are spread over the session's target partitions so the
/// filter and aggregation run on every core, as the file scan does.
pub fn plan(
    state: &dyn Session,
    batches: &[RecordBatch],
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let mut read: BTreeSet<usize> = match projection {
        Some(p) => p.iter().copied().collect(),
        None => (0..schema.fields().len()).collect(),
    };
    for f in filters {
        for c in f.column_refs() {
            read.insert(schema.index_of(c.name())?);
        }
    }
    let read: Vec<usize> = read.into_iter().collect();
    let narrow = Arc::new(schema.project(&read)?);
    // The caller's projection, as positions among the columns read.
    let projection = projection.map(|p| {
        p.iter()
            .map(|i| read.binary_search(i).expect("projected columns are read"))
            .collect::<Vec<_>>()
    });
    let n = state.config_options().execution.target_partitions.max(1);
    let mut partitions: Vec<Vec<RecordBatch>> = vec![vec![]; n.min(batches.len().max(1))];
    let count = partitions.len();
    for (i, b) in batches.iter().enumerate() {
        partitions[i % count].push(shape(b, &narrow)?);
    }
    let Some(predicate) = conjunction(filters.iter().cloned()) else {
        return Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            narrow,
            projection,
        )?);
    };
    let input = MemorySourceConfig::try_new_exec(&partitions, narrow.clone(), None)?;
    let df_schema = DFSchema::try_from(narrow.as_ref().clone())?;
    let predicate = state.create_physical_expr(predicate, &df_schema)?;
    Ok(Arc::new(
        FilterExecBuilder::new(predicate, input)
            .apply_projection(projection)?
            .build()?,
    ))
}

/// `batch` with exactly `schema`'s columns: types cast (strings to views),
/// `event_day` derived from `event_timestamp`, columns the batch predates
/// as nulls.
fn shape(batch: &RecordBatch, schema: &SchemaRef) -> DFResult<RecordBatch> {
    let rows = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> DFResult<ArrayRef> {
            let source = if f.name() == col::EVENT_DAY {
                batch.column_by_name(col::EVENT_TIMESTAMP)
            } else {
                batch.column_by_name(f.name())
            };
            Ok(match source {
                Some(c) if c.data_type() == f.data_type() => c.clone(),
                Some(c) => arrow::compute::cast(c, f.data_type())?,
                None => new_null_array(f.data_type(), rows),
            })
        })
        .collect::<DFResult<Vec<_>>>()?;
    // `count(*)` reads no column: the row count must be given.
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}
