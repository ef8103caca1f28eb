//! The plan that reads acknowledged rows not yet committed to the table
//! (the ingest buffer, see `ingest::buffer`), so a query sees every row
//! acknowledged before it started. The rows are already the caller's
//! project only; they are shaped like the table scan's output (string
//! views, the virtual `event_day`) and filtered by every pushed-down
//! filter here, since some of those are `Exact` for the file scan.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result as DFResult;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::utils::conjunction;
use datafusion::physical_optimizer::pruning::PruningPredicate;
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
    let (batches, filters) = by_time(state, batches, schema, filters)?;
    let mut read: BTreeSet<usize> = match projection {
        Some(p) => p.iter().copied().collect(),
        None => (0..schema.fields().len()).collect(),
    };
    for f in &filters {
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
    let df_schema = DFSchema::try_from(narrow.as_ref().clone())?;
    let predicate = conjunction(filters)
        .map(|p| state.create_physical_expr(p, &df_schema))
        .transpose()?;
    let options = &state.config_options().execution;
    let partitions = coalesce(
        &batches,
        &narrow,
        options.target_partitions.max(1),
        options.batch_size.max(1),
    )?;
    let Some(predicate) = predicate else {
        return Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            narrow,
            projection,
        )?);
    };
    let input = MemorySourceConfig::try_new_exec(&partitions, narrow.clone(), None)?;
    Ok(Arc::new(
        FilterExecBuilder::new(predicate, input)
            .apply_projection(projection)?
            .build()?,
    ))
}

/// `batches` shaped to `schema` and spread over up to `partitions`
/// partitions, consecutive ones concatenated into batches of about
/// `batch_rows` rows. The buffer holds one batch per `DoPut` (often 1k
/// rows), and every operator above pays a fixed cost per batch: with 1M
/// rows buffered from 1k-row `DoPut`s, a tenant's queries took 3–6x as
/// long as over the same rows in files (`benches/stream.rs`).
fn coalesce(
    batches: &[&RecordBatch],
    schema: &SchemaRef,
    partitions: usize,
    batch_rows: usize,
) -> DFResult<Vec<Vec<RecordBatch>>> {
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let per_partition = total.div_ceil(partitions).max(1);
    let mut out: Vec<Vec<RecordBatch>> = vec![vec![]];
    let (mut pending, mut pending_rows, mut partition_rows) = (vec![], 0, 0);
    for b in batches {
        if partition_rows >= per_partition && out.len() < partitions {
            flush_pending(&mut pending, schema, out.last_mut().expect("one"))?;
            pending_rows = 0;
            partition_rows = 0;
            out.push(vec![]);
        }
        pending.push(shape(b, schema)?);
        pending_rows += b.num_rows();
        partition_rows += b.num_rows();
        if pending_rows >= batch_rows {
            flush_pending(&mut pending, schema, out.last_mut().expect("one"))?;
            pending_rows = 0;
        }
    }
    flush_pending(&mut pending, schema, out.last_mut().expect("one"))?;
    Ok(out)
}

/// Append `pending` to `partition` as one batch.
fn flush_pending(
    pending: &mut Vec<RecordBatch>,
    schema: &SchemaRef,
    partition: &mut Vec<RecordBatch>,
) -> DFResult<()> {
    match pending.len() {
        0 => {}
        1 => partition.append(pending),
        _ => {
            partition.push(arrow::compute::concat_batches(schema, pending.iter())?);
            pending.clear();
        }
    }
    Ok(())
}

/// The batches that may hold rows the `filters` on time accept, and the
/// filters still to evaluate over them (see [`in_time_range`] and
/// [`holds_for_every_row`]). Without a filter on time, all of both: the
/// batches' time ranges are not computed.
fn by_time<'a>(
    state: &dyn Session,
    batches: &'a [RecordBatch],
    schema: &SchemaRef,
    filters: &[Expr],
) -> DFResult<(Vec<&'a RecordBatch>, Vec<Expr>)> {
    if !filters.iter().any(on_time_only) {
        return Ok((batches.iter().collect(), filters.to_vec()));
    }
    let table = DFSchema::try_from(schema.as_ref().clone())?;
    let ranges = TimeRanges::new(batches, schema)?;
    let kept = in_time_range(state, &ranges, &table, filters)?;
    let mut needed = vec![];
    for f in filters {
        if !holds_for_every_row(state, &ranges, &kept, &table, f)? {
            needed.push(f.clone());
        }
    }
    let batches = batches
        .iter()
        .zip(&kept)
        .filter_map(|(b, &k)| k.then_some(b))
        .collect();
    Ok((batches, needed))
}

/// Which of the batches (by their `ranges`) may hold rows satisfying the
/// `filters` on `event_timestamp` and `event_day` (over `schema`, the
/// table's columns). The buffer holds the last seconds' rows, mostly
/// today's: a dashboard asking for earlier days would otherwise shape and
/// filter every one of them, where the file scan skips whole `event_day`
/// partitions. Only those columns have statistics, so only their filters
/// are used; all filters are applied to the rows kept.
fn in_time_range(
    state: &dyn Session,
    ranges: &TimeRanges,
    schema: &DFSchema,
    filters: &[Expr],
) -> DFResult<Vec<bool>> {
    let on_time = filters.iter().filter(|f| on_time_only(f));
    let Some(predicate) = conjunction(on_time.cloned()) else {
        return Ok(vec![true; ranges.num_containers()]);
    };
    let predicate = state.create_physical_expr(predicate, schema)?;
    let pruning = PruningPredicate::try_new(predicate, Arc::clone(schema.inner()))?;
    if pruning.always_true() {
        return Ok(vec![true; ranges.num_containers()]);
    }
    pruning.prune(ranges)
}

/// `filter` reads only `event_timestamp` and `event_day`.
fn on_time_only(filter: &Expr) -> bool {
    filter
        .column_refs()
        .iter()
        .all(|c| c.name() == col::EVENT_TIMESTAMP || c.name() == col::EVENT_DAY)
}

/// `filter` is on `event_timestamp` / `event_day` only and true for every
/// row of the batches `kept`, as their time `ranges` prove: its negation
/// holds for none of them. The buffer holds the latest rows, so a
/// dashboard's time range usually covers all of them, and evaluating it
/// row by row (and deriving `event_day` for it) was 15% of a query's CPU
/// over buffered rows. Anything not proven (other columns, a negation the
/// statistics cannot judge, a null timestamp) is evaluated as before.
fn holds_for_every_row(
    state: &dyn Session,
    ranges: &TimeRanges,
    kept: &[bool],
    schema: &DFSchema,
    filter: &Expr,
) -> DFResult<bool> {
    let Some(negated) = negation(filter).filter(|_| on_time_only(filter)) else {
        return Ok(false);
    };
    let negated = state.create_physical_expr(negated, schema)?;
    let pruning = PruningPredicate::try_new(negated, Arc::clone(schema.inner()))?;
    if pruning.always_true() {
        return Ok(false);
    }
    let may_fail = pruning.prune(ranges)?;
    Ok(kept
        .iter()
        .zip(may_fail)
        .zip(&ranges.complete)
        .all(|((&kept, may_fail), &complete)| !kept || (complete && !may_fail)))
}

/// `NOT e` for comparisons and their conjunctions, disjunctions and
/// ranges (what pruning statistics can judge); `None` otherwise.
fn negation(e: &Expr) -> Option<Expr> {
    use datafusion::logical_expr::{Between, BinaryExpr, Operator};
    match e {
        Expr::BinaryExpr(b) => {
            let (left, right) = (&b.left, &b.right);
            match b.op {
                Operator::And => Some(negation(left)?.or(negation(right)?)),
                Operator::Or => Some(negation(left)?.and(negation(right)?)),
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq => Some(Expr::BinaryExpr(BinaryExpr::new(
                    left.clone(),
                    b.op.negate()?,
                    right.clone(),
                ))),
                _ => None,
            }
        }
        // As comparisons: statistics cannot judge `NOT BETWEEN`.
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            let (e, low, high) = ((**expr).clone(), (**low).clone(), (**high).clone());
            Some(if *negated {
                e.clone().gt_eq(low).and(e.lt_eq(high))
            } else {
                e.clone().lt(low).or(e.gt(high))
            })
        }
        _ => None,
    }
}

/// Each batch's smallest and largest `event_timestamp`, and the
/// `event_day`s they fall on, as pruning statistics (one container per
/// batch). Other columns have none: a predicate on them keeps every batch.
struct TimeRanges {
    timestamps: [ArrayRef; 2],
    days: [ArrayRef; 2],
    /// Per batch: every row has a timestamp (the bounds then cover every
    /// row, not only those with one).
    complete: Vec<bool>,
}

impl TimeRanges {
    fn new(batches: &[RecordBatch], schema: &SchemaRef) -> DFResult<Self> {
        let micros = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        let (mut min, mut max, mut complete) = (vec![], vec![], vec![]);
        for b in batches {
            // A batch without the column (none, after validation) is unknown:
            // null bounds keep it.
            let (lo, hi) = match b.column_by_name(col::EVENT_TIMESTAMP) {
                Some(c) => {
                    let c = arrow::compute::cast(c, &micros)?;
                    let c = c.as_primitive::<TimestampMicrosecondType>();
                    complete.push(c.null_count() == 0);
                    (arrow::compute::min(c), arrow::compute::max(c))
                }
                None => {
                    complete.push(false);
                    (None, None)
                }
            };
            min.push(lo);
            max.push(hi);
        }
        // In the types the predicate was planned against.
        let field_type = |name: &str, default: &DataType| {
            schema
                .field_with_name(name)
                .map(|f| f.data_type().clone())
                .unwrap_or_else(|_| default.clone())
        };
        let ts_type = field_type(col::EVENT_TIMESTAMP, &micros);
        let day_type = field_type(col::EVENT_DAY, &DataType::Date32);
        let as_array = |v: Vec<Option<i64>>| -> DFResult<[ArrayRef; 2]> {
            let a: ArrayRef = Arc::new(TimestampMicrosecondArray::from(v).with_timezone("+00:00"));
            Ok([
                arrow::compute::cast(&a, &ts_type)?,
                arrow::compute::cast(&a, &day_type)?,
            ])
        };
        let [ts_min, day_min] = as_array(min)?;
        let [ts_max, day_max] = as_array(max)?;
        Ok(Self {
            timestamps: [ts_min, ts_max],
            days: [day_min, day_max],
            complete,
        })
    }

    fn bound(&self, column: &Column, i: usize) -> Option<ArrayRef> {
        match column.name() {
            col::EVENT_TIMESTAMP => Some(self.timestamps[i].clone()),
            col::EVENT_DAY => Some(self.days[i].clone()),
            _ => None,
        }
    }
}

impl PruningStatistics for TimeRanges {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, 0)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bound(column, 1)
    }

    fn num_containers(&self) -> usize {
        self.timestamps[0].len()
    }

    fn null_counts(&self, _column: &Column) -> Option<ArrayRef> {
        None
    }

    fn row_counts(&self, _column: &Column) -> Option<ArrayRef> {
        None
    }

    fn contained(
        &self,
        _column: &Column,
        _values: &std::collections::HashSet<ScalarValue>,
    ) -> Option<BooleanArray> {
        None
    }
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
                Some(c) if f.name() == col::EVENT_DAY => super::scan::event_day(c)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::{SessionContext, col as column, lit};

    const DAY: i64 = 86_400_000_000;

    /// Two rows, at `micros` and one millisecond later.
    fn rows_at(micros: i64) -> RecordBatch {
        let ts =
            TimestampMicrosecondArray::from(vec![micros, micros + 1_000]).with_timezone("+00:00");
        let schema = Schema::new(vec![Field::new(
            col::EVENT_TIMESTAMP,
            ts.data_type().clone(),
            false,
        )]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ts)]).unwrap()
    }

    #[test]
    fn batches_outside_the_queried_days_are_skipped() {
        let batches = [
            rows_at(10 * DAY + 5),
            rows_at(11 * DAY + 5),
            rows_at(11 * DAY + 5_000),
        ];
        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new(col::EVENT_TIMESTAMP, ts_type, false),
            Field::new(col::EVENT_DAY, DataType::Date32, false),
            Field::new(col::EVENT_TYPE, DataType::Utf8View, false),
        ]));
        let schema = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let state = SessionContext::new().state();
        let ranges = TimeRanges::new(&batches, schema.inner()).unwrap();
        let kept_all = |filters: &[Expr]| -> Vec<usize> {
            let kept = in_time_range(&state, &ranges, &schema, filters).unwrap();
            (0..batches.len()).filter(|&i| kept[i]).collect()
        };
        let kept = |e: Expr| kept_all(&[e]);
        let day = |d: i32| lit(ScalarValue::Date32(Some(d)));
        let at = |micros: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(micros),
                Some("+00:00".into()),
            ))
        };
        assert_eq!(kept(column(col::EVENT_DAY).eq(day(11))), vec![1, 2]);
        assert_eq!(kept(column(col::EVENT_DAY).eq(day(10))), vec![0]);
        assert_eq!(
            kept(column(col::EVENT_DAY).gt(day(11))),
            Vec::<usize>::new()
        );
        assert_eq!(
            kept(column(col::EVENT_TIMESTAMP).gt_eq(at(11 * DAY + 2_000))),
            vec![2]
        );
        // Filters on other columns (no statistics; a Utf8 literal against a
        // view column) prune nothing, and do not stop the time filters.
        assert_eq!(kept(column(col::EVENT_TYPE).eq(lit("a"))), vec![0, 1, 2]);
        assert_eq!(
            kept_all(&[
                column(col::EVENT_TYPE).lt_eq(lit("a")),
                column(col::EVENT_DAY).eq(day(10))
            ]),
            vec![0]
        );
    }

    #[test]
    fn time_filters_every_kept_row_meets_are_proven_and_others_are_not() {
        let mut batches = vec![rows_at(10 * DAY + 5), rows_at(11 * DAY + 5)];
        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new(col::EVENT_TIMESTAMP, ts_type.clone(), true),
            Field::new(col::EVENT_DAY, DataType::Date32, true),
            Field::new(col::EVENT_TYPE, DataType::Utf8View, true),
        ]));
        let table = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let state = SessionContext::new().state();
        let day = |d: i32| lit(ScalarValue::Date32(Some(d)));
        let at = |micros: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(micros),
                Some("+00:00".into()),
            ))
        };
        let proven = |batches: &[RecordBatch], kept: &[bool], f: Expr| {
            let ranges = TimeRanges::new(batches, &schema).unwrap();
            holds_for_every_row(&state, &ranges, kept, &table, &f).unwrap()
        };
        let both = [true, true];
        let day_col = || column(col::EVENT_DAY);
        assert!(proven(&batches, &both, day_col().gt_eq(day(10))));
        assert!(proven(&batches, &both, day_col().between(day(9), day(11))));
        assert!(proven(
            &batches,
            &both,
            day_col()
                .gt(day(9))
                .and(column(col::EVENT_TIMESTAMP).lt(at(12 * DAY)))
        ));
        // Day 10's batch fails it; once pruned away, the rest all meet it.
        assert!(!proven(&batches, &both, day_col().gt_eq(day(11))));
        assert!(proven(&batches, &[false, true], day_col().gt_eq(day(11))));
        // The second row of each batch is 1 ms after the first.
        let from = at(11 * DAY + 500);
        assert!(!proven(
            &batches,
            &[false, true],
            column(col::EVENT_TIMESTAMP).gt_eq(from)
        ));
        // Other columns, and predicates the bounds cannot judge.
        assert!(!proven(
            &batches,
            &both,
            column(col::EVENT_TYPE).eq(lit("a"))
        ));
        assert!(!proven(&batches, &both, day_col().is_not_null()));
        // A batch with a null timestamp: its bounds do not cover that row.
        let nulls =
            TimestampMicrosecondArray::from(vec![Some(11 * DAY), None]).with_timezone("+00:00");
        let nulls_schema = Schema::new(vec![Field::new(col::EVENT_TIMESTAMP, ts_type, true)]);
        batches.push(RecordBatch::try_new(Arc::new(nulls_schema), vec![Arc::new(nulls)]).unwrap());
        assert!(!proven(&batches, &[true; 3], day_col().gt_eq(day(10))));
    }

    #[test]
    fn small_batches_are_concatenated_per_partition_in_order() {
        let batches: Vec<RecordBatch> = (0..10).map(|i| rows_at(i * 1_000_000)).collect();
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let schema = batches[0].schema();
        let out = coalesce(&refs, &schema, 2, 5).unwrap();
        // 20 rows over 2 partitions; 2-row batches gathered to 6 rows
        // (the first count at or past 5), the rest of a partition after.
        let sizes: Vec<Vec<usize>> = out
            .iter()
            .map(|p| p.iter().map(|b| b.num_rows()).collect())
            .collect();
        assert_eq!(sizes, vec![vec![6, 4], vec![6, 4]]);
        let stamps = |bs: Vec<&RecordBatch>| -> Vec<i64> {
            bs.iter()
                .flat_map(|b| {
                    let ts = b.column(0).as_primitive::<TimestampMicrosecondType>();
                    ts.values().to_vec()
                })
                .collect()
        };
        assert_eq!(
            stamps(out.iter().flatten().collect()),
            stamps(refs.clone()),
            "every row once, in buffer order"
        );
        // Fewer rows than partitions: no empty partition beyond the first.
        assert_eq!(coalesce(&refs[..1], &schema, 4, 5).unwrap().len(), 1);
        assert_eq!(coalesce(&[], &schema, 4, 5).unwrap(), vec![vec![]]);
    }
}
