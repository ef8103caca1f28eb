//! Executing a planned scan: each partition reads its files with
//! DataFusion's Parquet source (or iceberg's reader) and shapes the batches
//! into the scan's output schema.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Date32Type, SchemaRef, TimestampMicrosecondType};
use datafusion::common::Statistics;
use datafusion::common::stats::Precision;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::{MetricBuilder, MetricValue, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};

use super::{DAY_MICROS, IcebergScanExec, OutputColumn, Reader, to_df};
use crate::query::functions::is_utc;
use crate::schema::col;

impl DisplayAs for IcebergScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "IcebergScanExec: table={}, manifests={}/{}, files={}, bytes={}, partitions={}, projection=[{}]",
            self.label,
            self.plan.manifests.0,
            self.plan.manifests.1,
            self.plan.files.len(),
            self.plan.bytes,
            self.properties.output_partitioning().partition_count(),
            self.schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        if let Some(p) = &self.predicate {
            write!(f, ", predicate=[{p}]")?;
        }
        if let Reader::Iceberg { reason, .. } = &self.reader {
            write!(f, ", reader=iceberg ({reason})")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for IcebergScanExec {
    fn name(&self) -> &str {
        "IcebergScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let tasks = self.partitions.get(partition).cloned().unwrap_or_default();
        MetricBuilder::new(&self.metrics)
            .counter("files_scanned", partition)
            .add(tasks.len());
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let (label, planned_files, file_count) =
            (self.label.clone(), self.plan.files.len(), tasks.len());
        let (schema, output) = (self.schema.clone(), self.output.clone());
        let batches = match &self.reader {
            Reader::Parquet(exec) => {
                let read_columns: Vec<String> = exec
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                exec.execute(partition, context)?
                    .and_then(move |batch| {
                        futures::future::ready(adapt_batch(&batch, &schema, &output, &read_columns))
                    })
                    .boxed()
            }
            Reader::Iceberg { read_columns, .. } => {
                let bytes = MetricBuilder::new(&self.metrics).counter("bytes_scanned", partition);
                let read_columns = read_columns.clone();
                let reader = self
                    .table
                    .reader_builder()
                    .with_batch_size(context.session_config().batch_size())
                    .with_data_file_concurrency_limit(2)
                    .with_row_group_filtering_enabled(true)
                    .with_row_selection_enabled(true)
                    .build();
                let result = reader
                    .read(futures::stream::iter(tasks.into_iter().map(Ok)).boxed())
                    .map_err(to_df)?;
                let scan_metrics = result.metrics().clone();
                result
                    .stream()
                    .map_err(to_df)
                    .and_then(move |batch| {
                        futures::future::ready(adapt_batch(&batch, &schema, &output, &read_columns))
                    })
                    .chain(
                        futures::stream::once(async move {
                            bytes.add(scan_metrics.bytes_read() as usize);
                            Ok::<_, DataFusionError>(None)
                        })
                        .try_filter_map(|b: Option<RecordBatch>| futures::future::ready(Ok(b))),
                    )
                    .boxed()
            }
        };
        let inner = match &self.reader {
            Reader::Parquet(exec) => Some(exec.clone()),
            Reader::Iceberg { .. } => None,
        };
        let stream = batches.inspect_ok(move |b| rows.add(b.num_rows())).chain(
            futures::stream::once(async move {
                // Bytes this partition's Parquet readers fetched.
                let bytes_scanned: usize = inner
                    .and_then(|e| e.metrics())
                    .map(|m| {
                        m.iter()
                            .filter(|m| {
                                m.partition() == Some(partition)
                                    && m.value().name() == "bytes_scanned"
                            })
                            .map(|m| m.value().as_usize())
                            .sum()
                    })
                    .unwrap_or_default();
                tracing::debug!(
                    table = %label,
                    partition,
                    files_planned = planned_files,
                    files_scanned = file_count,
                    bytes_scanned,
                    "scan partition done"
                );
                Ok::<_, DataFusionError>(None)
            })
            .try_filter_map(|b: Option<RecordBatch>| futures::future::ready(Ok(b))),
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        let mut metrics = self.metrics.clone_inner();
        // The Parquet reader's own metrics (bytes scanned, row groups and
        // pages pruned) belong to this node: its plan is not a child.
        // Its baseline metrics (rows, batches, compute time) would count
        // this node's output twice and are left out.
        if let Reader::Parquet(exec) = &self.reader {
            let inner = exec.metrics().unwrap_or_default();
            for m in inner.iter() {
                if !matches!(
                    m.value(),
                    MetricValue::OutputRows(_)
                        | MetricValue::OutputBytes(_)
                        | MetricValue::OutputBatches(_)
                        | MetricValue::ElapsedCompute(_)
                ) {
                    metrics.push(m.clone());
                }
            }
        }
        Some(metrics)
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DFResult<Statistics> {
        let mut stats = self.statistics.clone();
        if let Some(i) = partition {
            let part = self
                .partitions
                .get(i)
                .map(Vec::as_slice)
                .unwrap_or_default();
            stats.num_rows = Precision::Inexact(
                part.iter().filter_map(|t| t.record_count).sum::<u64>() as usize,
            );
            stats.total_byte_size =
                Precision::Inexact(part.iter().map(|t| t.file_size_in_bytes).sum::<u64>() as usize);
        }
        Ok(stats)
    }
}

/// Shape a reader batch into the scan's output schema.
fn adapt_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
    output: &[OutputColumn],
    read_columns: &[String],
) -> DFResult<RecordBatch> {
    let column = |name: &str| -> DFResult<ArrayRef> {
        batch
            .column_by_name(name)
            .cloned()
            .or_else(|| {
                read_columns
                    .iter()
                    .position(|c| c == name)
                    .and_then(|i| batch.columns().get(i).cloned())
            })
            .ok_or_else(|| DataFusionError::Internal(format!("scan did not return column {name}")))
    };
    let mut columns = Vec::with_capacity(output.len());
    for (c, field) in output.iter().zip(schema.fields()) {
        let array = match c {
            OutputColumn::Table(name) => column(name)?,
            OutputColumn::EventDay => match batch.column_by_name(col::EVENT_DAY) {
                Some(day) => day.clone(),
                None => event_day(&column(col::EVENT_TIMESTAMP)?)?,
            },
        };
        let array = if array.data_type() == field.data_type() {
            array
        } else {
            cast(&array, field.data_type())?
        };
        columns.push(array);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// `event_day` from `event_timestamp`. The column is UTC microseconds, so the
/// day is a floor division; arrow's cast would convert every row through
/// chrono's time-zone arithmetic instead. Buffered rows take it too.
pub(crate) fn event_day(timestamps: &ArrayRef) -> DFResult<ArrayRef> {
    match timestamps.as_primitive_opt::<TimestampMicrosecondType>() {
        Some(micros) if micros.timezone().is_none_or(is_utc) => {
            Ok(Arc::new(micros.unary::<_, Date32Type>(|v| {
                v.div_euclid(DAY_MICROS) as i32
            })))
        }
        _ => Ok(cast(timestamps, &DataType::Date32)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMicrosecondArray;

    #[test]
    fn event_day_matches_arrow_cast() {
        let values: Vec<Option<i64>> = (-500..500)
            .map(|i| (i % 7 != 0).then_some(i * 3_600_000_001 + i % 3))
            .collect();
        for tz in [Some("+00:00"), Some("UTC"), None] {
            let mut array = TimestampMicrosecondArray::from(values.clone());
            if let Some(tz) = tz {
                array = array.with_timezone(tz);
            }
            let array: ArrayRef = Arc::new(array);
            let want = cast(&array, &DataType::Date32).unwrap();
            assert_eq!(
                event_day(&array).unwrap().to_data(),
                want.to_data(),
                "{tz:?}"
            );
        }
    }
}
