//! `IcebergScanExec`: a parallel scan of planned Iceberg file tasks.
//!
//! `iceberg-datafusion`'s scan runs as one partition and plans files when it
//! executes. Here files are planned once, while the query is planned, so
//! `EXPLAIN` shows exactly which files a query will open, and the tasks are
//! spread over the session's target partitions and read concurrently with
//! iceberg's Arrow reader (which applies the predicate to row groups and rows).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::stats::Precision;
use datafusion::common::{Statistics, project_schema};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use iceberg::expr::Predicate;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;

use crate::schema::col;

/// A column of the scan's output.
#[derive(Debug, Clone)]
pub enum OutputColumn {
    /// A table column, read by name.
    Table(String),
    /// `event_day`: the UTC date of `event_timestamp`.
    EventDay,
}

/// What the planner decided, shown by `EXPLAIN` and used by tests.
#[derive(Debug, Clone, Default)]
pub struct ScanPlan {
    /// Data files that will be opened.
    pub files: Vec<String>,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Their total row count (before row-level filtering).
    pub records: u64,
}

/// Execution plan that reads planned Iceberg file tasks in parallel.
#[derive(Debug)]
pub struct IcebergScanExec {
    table: Table,
    label: String,
    output: Vec<OutputColumn>,
    schema: SchemaRef,
    read_columns: Vec<String>,
    partitions: Vec<Vec<FileScanTask>>,
    predicate: Option<Predicate>,
    plan: ScanPlan,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl IcebergScanExec {
    /// Plan the files of `table` matching `predicate` and build the scan.
    ///
    /// `full_schema` is the provider's schema (table columns, plus
    /// `event_day` for `raw_events`); `projection` indexes into it.
    /// `file_filter` may drop planned tasks (tenant isolation check).
    #[allow(clippy::too_many_arguments)]
    pub async fn try_new(
        table: Table,
        label: String,
        full_schema: &SchemaRef,
        projection: Option<&Vec<usize>>,
        predicate: Option<Predicate>,
        target_partitions: usize,
        file_filter: impl Fn(&FileScanTask) -> DFResult<()>,
    ) -> DFResult<Self> {
        let schema = project_schema(full_schema, projection)?;
        let output: Vec<OutputColumn> = schema
            .fields()
            .iter()
            .map(|f| {
                if f.name() == col::EVENT_DAY && table_field(&table, col::EVENT_DAY).is_none() {
                    OutputColumn::EventDay
                } else {
                    OutputColumn::Table(f.name().clone())
                }
            })
            .collect();
        let mut read_columns: Vec<String> = vec![];
        for c in &output {
            let name = match c {
                OutputColumn::Table(n) => n.as_str(),
                OutputColumn::EventDay => col::EVENT_TIMESTAMP,
            };
            if !read_columns.iter().any(|r| r == name) {
                read_columns.push(name.to_string());
            }
        }
        if read_columns.is_empty() {
            // COUNT(*)-style scans still need row counts: read the narrowest
            // thing we know exists.
            let first = table.metadata().current_schema().as_struct().fields()[0]
                .name
                .clone();
            read_columns.push(first);
        }

        let mut builder = table.scan().select(read_columns.iter().cloned());
        if let Some(p) = &predicate {
            builder = builder.with_filter(p.clone());
        }
        let tasks: Vec<FileScanTask> = builder
            .build()
            .map_err(to_df)?
            .plan_files()
            .await
            .map_err(to_df)?
            .try_collect()
            .await
            .map_err(to_df)?;
        for t in &tasks {
            file_filter(t)?;
        }
        let plan = ScanPlan {
            files: tasks.iter().map(|t| t.data_file_path.clone()).collect(),
            bytes: tasks.iter().map(|t| t.file_size_in_bytes).sum(),
            records: tasks.iter().filter_map(|t| t.record_count).sum(),
        };
        let partitions = distribute(tasks, target_partitions.max(1));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            table,
            label,
            output,
            schema,
            read_columns,
            partitions,
            predicate,
            plan,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// Files and bytes this scan will read.
    pub fn scan_plan(&self) -> &ScanPlan {
        &self.plan
    }
}

fn table_field(table: &Table, name: &str) -> Option<iceberg::spec::NestedFieldRef> {
    table
        .metadata()
        .current_schema()
        .field_by_name(name)
        .cloned()
}

fn to_df(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Spread tasks over at most `n` partitions, largest first onto the
/// currently lightest partition, so partitions finish at similar times.
fn distribute(mut tasks: Vec<FileScanTask>, n: usize) -> Vec<Vec<FileScanTask>> {
    let n = n.min(tasks.len()).max(1);
    tasks.sort_by_key(|t| std::cmp::Reverse(t.length.max(t.file_size_in_bytes)));
    let mut parts: Vec<(u64, Vec<FileScanTask>)> = (0..n).map(|_| (0, vec![])).collect();
    for t in tasks {
        let lightest = parts.iter_mut().min_by_key(|(w, _)| *w).expect("n >= 1");
        lightest.0 += t.file_size_in_bytes.max(1);
        lightest.1.push(t);
    }
    parts.into_iter().map(|(_, t)| t).collect()
}

impl DisplayAs for IcebergScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "IcebergScanExec: table={}, files={}, bytes={}, partitions={}, projection=[{}]",
            self.label,
            self.plan.files.len(),
            self.plan.bytes,
            self.partitions.len(),
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
        let files = MetricBuilder::new(&self.metrics).counter("files_scanned", partition);
        let bytes = MetricBuilder::new(&self.metrics).counter("bytes_scanned", partition);
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        files.add(tasks.len());
        let (label, planned_files, file_count) =
            (self.label.clone(), self.plan.files.len(), tasks.len());
        let batch_size = context.session_config().batch_size();
        let reader = self
            .table
            .reader_builder()
            .with_batch_size(batch_size)
            .with_data_file_concurrency_limit(2)
            .with_row_group_filtering_enabled(true)
            .with_row_selection_enabled(true)
            .build();
        let result = reader
            .read(futures::stream::iter(tasks.into_iter().map(Ok)).boxed())
            .map_err(to_df)?;
        let scan_metrics = result.metrics().clone();
        let schema = self.schema.clone();
        let output = self.output.clone();
        let read_columns = self.read_columns.clone();
        let stream = result
            .stream()
            .map_err(to_df)
            .and_then(move |batch| {
                let out = adapt_batch(&batch, &schema, &output, &read_columns);
                if let Ok(b) = &out {
                    rows.add(b.num_rows());
                }
                futures::future::ready(out)
            })
            .map_ok(Some)
            // After the last file, report what the reader fetched.
            .chain(futures::stream::once(async move {
                bytes.add(scan_metrics.bytes_read() as usize);
                tracing::debug!(
                    table = %label,
                    partition,
                    files_planned = planned_files,
                    files_scanned = file_count,
                    bytes_read = scan_metrics.bytes_read(),
                    "scan partition done"
                );
                Ok(None)
            }))
            .try_filter_map(|b| futures::future::ready(Ok(b)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn partition_statistics(&self, partition: Option<usize>) -> DFResult<Statistics> {
        let records = match partition {
            None => self.plan.records,
            Some(i) => self
                .partitions
                .get(i)
                .map(|p| p.iter().filter_map(|t| t.record_count).sum())
                .unwrap_or(0),
        };
        let mut stats = Statistics::new_unknown(&self.schema);
        // Row-level filters may drop rows: an upper bound, not exact.
        stats.num_rows = Precision::Inexact(records as usize);
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
            OutputColumn::EventDay => cast(&column(col::EVENT_TIMESTAMP)?, &DataType::Date32)?,
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
