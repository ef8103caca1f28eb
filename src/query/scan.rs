//! `IcebergScanExec`: a parallel scan of planned Iceberg file tasks.
//!
//! `iceberg-datafusion`'s scan runs as one partition and plans files when it
//! executes. Here files are planned once, while the query is planned, so
//! `EXPLAIN` shows exactly which files a query will open, and the tasks are
//! spread over the session's target partitions and read concurrently with
//! iceberg's Arrow reader (which applies the predicate to row groups and rows).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Date32Array, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::compute::kernels::boolean::and;
use arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::catalog::Session;
use datafusion::common::config::TableParquetOptions;
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, ScalarValue, Statistics, project_schema};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    ExecutionPlanMetricsSet, MetricBuilder, MetricValue, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use iceberg::expr::Predicate;
use iceberg::scan::FileScanTask;
use iceberg::spec::{
    DataFileFormat, Literal, PartitionSpecRef, PrimitiveLiteral, PrimitiveType, Transform, Type,
};
use iceberg::table::Table;

use super::ScanCaches;
use super::functions::is_utc;
use super::manifests::overlapping;
use super::reader::{FileIoReaderFactory, FileLocation};
use super::views::scan_schema;
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
    /// Data manifests whose partition ranges overlap the predicate, and all
    /// data manifests of the snapshot (see [`super::manifests`]).
    pub manifests: (usize, usize),
}

/// What a scan needs besides the table: the provider's view of it and the
/// query's pushed-down parts.
pub struct ScanRequest<'a> {
    /// Name shown by `EXPLAIN`.
    pub label: String,
    /// The provider's schema (table columns, plus `event_day` for
    /// `raw_events`); `projection` indexes into it.
    pub full_schema: &'a SchemaRef,
    /// Output columns, as indexes into `full_schema`.
    pub projection: Option<&'a Vec<usize>>,
    /// Iceberg predicate: prunes manifests and files while planning.
    pub predicate: Option<Predicate>,
    /// Filter over table columns: prunes row groups and pages while reading.
    pub row_filter: Option<Expr>,
    /// Filters on `event_day` alone that the provider declared exact: each
    /// file has one `event_day` (its `day` partition value), so they are
    /// decided per file here and no row is filtered.
    pub day_filters: Vec<Expr>,
    /// Rows the query needs at most (only set when no filter remains above).
    pub limit: Option<usize>,
    /// Footer and manifest-list caches shared by every scan.
    pub caches: Arc<ScanCaches>,
}

/// How planned files are read.
#[derive(Debug)]
enum Reader {
    /// DataFusion's Parquet source over the table's `FileIO`: row-group and
    /// page pruning, footer cache, DataFusion's decoder.
    Parquet(Arc<dyn ExecutionPlan>),
    /// iceberg's Arrow reader, for what the Parquet source cannot do right
    /// (delete files, renamed columns, non-Parquet files); the reason is shown.
    Iceberg {
        read_columns: Vec<String>,
        reason: &'static str,
    },
}

/// Execution plan that reads planned Iceberg file tasks in parallel.
#[derive(Debug)]
pub struct IcebergScanExec {
    table: Table,
    label: String,
    output: Vec<OutputColumn>,
    schema: SchemaRef,
    partitions: Vec<Vec<FileScanTask>>,
    predicate: Option<Predicate>,
    reader: Reader,
    plan: ScanPlan,
    statistics: Statistics,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl IcebergScanExec {
    /// Plan the files of `table` matching the request's predicate and build
    /// the scan. `file_filter` may refuse a planned task (tenant isolation).
    pub async fn try_new(
        table: Table,
        request: ScanRequest<'_>,
        state: &dyn Session,
        file_filter: impl Fn(&FileScanTask) -> DFResult<()>,
    ) -> DFResult<Self> {
        let schema = project_schema(request.full_schema, request.projection)?;
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
        if let Some(p) = &request.predicate {
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
        // iceberg 0.10.1's tasks carry partition values but not their spec;
        // with a single spec ever, the values can be read with certainty.
        let tasks: Vec<FileScanTask> = match only_spec(&table) {
            Some(spec) => tasks
                .into_iter()
                .map(|mut t| {
                    t.partition_spec.get_or_insert_with(|| spec.clone());
                    t
                })
                .collect(),
            None => tasks,
        };
        for t in &tasks {
            file_filter(t)?;
        }
        let tasks = keep_matching_days(tasks, &request.day_filters, state)?;
        let manifests = request
            .caches
            .manifest_lists
            .current(&table)
            .await
            .map_err(to_df)?
            .map_or((0, 0), |list| {
                overlapping(&list, &table, request.predicate.as_ref())
            });
        let plan = ScanPlan {
            files: tasks.iter().map(|t| t.data_file_path.clone()).collect(),
            bytes: tasks.iter().map(|t| t.file_size_in_bytes).sum(),
            records: tasks.iter().filter_map(|t| t.record_count).sum(),
            manifests,
        };
        tracing::debug!(
            table = %request.label,
            manifests_overlapping = plan.manifests.0,
            manifests_total = plan.manifests.1,
            files = plan.files.len(),
            bytes = plan.bytes,
            "scan planned"
        );
        let statistics = plan_statistics(&schema, &output, &tasks, &plan);
        let partitions = distribute(tasks, state.config().target_partitions().max(1));
        let reader = match iceberg_reader_needed(&table, &partitions) {
            Some(reason) => Reader::Iceberg {
                read_columns,
                reason,
            },
            None => Reader::Parquet(parquet_exec(
                &table,
                &request,
                state,
                &output,
                &read_columns,
                &partitions,
            )?),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(partitions.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Self {
            table,
            label: request.label,
            output,
            schema,
            partitions,
            predicate: request.predicate,
            reader,
            plan,
            statistics,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// Files and bytes this scan will read.
    pub fn scan_plan(&self) -> &ScanPlan {
        &self.plan
    }
}

/// Why the planned files must be read by iceberg's reader, if they must.
/// DataFusion's Parquet source matches columns by name and knows nothing of
/// delete files, so it would return deleted rows or null out renamed columns.
fn iceberg_reader_needed(table: &Table, partitions: &[Vec<FileScanTask>]) -> Option<&'static str> {
    let tasks = || partitions.iter().flatten();
    if tasks().any(|t| !t.deletes.is_empty()) {
        return Some("delete files");
    }
    if tasks().any(|t| t.data_file_format != DataFileFormat::Parquet) {
        return Some("non-Parquet data files");
    }
    let current = table.metadata().current_schema();
    let renamed = table.metadata().schemas_iter().any(|old| {
        old.as_struct().fields().iter().any(|f| {
            current
                .field_by_id(f.id)
                .is_some_and(|now| now.name != f.name)
        })
    });
    renamed.then_some("renamed columns")
}

/// DataFusion's Parquet source over the planned files, one file group per
/// partition, reading through the table's `FileIO`.
///
/// When every file has a day partition value, `event_day` is produced as a
/// partition column (a constant per file) and `event_timestamp` is read only
/// if the query itself selects it.
fn parquet_exec(
    table: &Table,
    request: &ScanRequest<'_>,
    state: &dyn Session,
    output: &[OutputColumn],
    read_columns: &[String],
    partitions: &[Vec<FileScanTask>],
) -> DFResult<Arc<dyn ExecutionPlan>> {
    let file_schema: SchemaRef = Arc::new(scan_schema(
        &iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
            .map_err(to_df)?,
    ));
    let wants_day = output.iter().any(|c| matches!(c, OutputColumn::EventDay));
    let day_partition = wants_day && partitions.iter().flatten().all(|t| task_day(t).is_some());
    let mut indices = vec![];
    for c in read_columns {
        let selected = output
            .iter()
            .any(|o| matches!(o, OutputColumn::Table(n) if n == c));
        if day_partition && c == col::EVENT_TIMESTAMP && !selected {
            continue;
        }
        indices.push(file_schema.index_of(c)?);
    }
    let mut table_schema = TableSchema::from_file_schema(file_schema.clone());
    if day_partition {
        indices.push(file_schema.fields().len());
        table_schema = table_schema.with_table_partition_cols(vec![Arc::new(Field::new(
            col::EVENT_DAY,
            DataType::Date32,
            false,
        ))]);
    }
    let options = TableParquetOptions {
        global: state.config_options().execution.parquet.clone(),
        ..Default::default()
    };
    let mut source = ParquetSource::new(table_schema)
        .with_table_parquet_options(options)
        .with_parquet_file_reader_factory(Arc::new(FileIoReaderFactory::new(
            table.file_io().clone(),
            request.caches.footers.clone(),
        )));
    if let Some(filter) = &request.row_filter {
        let df_schema = DFSchema::try_from(file_schema.as_ref().clone())?;
        match state.create_physical_expr(filter.clone(), &df_schema) {
            Ok(predicate) => source = source.with_predicate(predicate),
            // Pruning is an optimisation: without it the filter above still
            // applies, so a predicate the reader cannot take is dropped.
            Err(e) => tracing::debug!(error = %e, "row-group predicate not usable"),
        }
    }
    let groups = partitions
        .iter()
        .map(|tasks| {
            FileGroup::new(
                tasks
                    .iter()
                    .map(|t| {
                        let file = partitioned_file(t);
                        match task_day(t).filter(|_| day_partition) {
                            Some(day) => {
                                file.with_partition_values(vec![ScalarValue::Date32(Some(day))])
                            }
                            None => file,
                        }
                    })
                    .collect(),
            )
        })
        .collect();
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
        .with_projection_indices(Some(indices))?
        .with_file_groups(groups)
        .with_limit(request.limit)
        .with_batch_size(Some(state.config().batch_size()))
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

/// A planned task as DataFusion's file description, carrying its full
/// storage location for [`FileIoReaderFactory`].
fn partitioned_file(task: &FileScanTask) -> PartitionedFile {
    let path = task
        .data_file_path
        .strip_prefix("file://")
        .unwrap_or(&task.data_file_path);
    let mut file = PartitionedFile::new(path, task.file_size_in_bytes)
        .with_extensions(Arc::new(FileLocation(task.data_file_path.clone())));
    if task.start != 0 || task.length != task.file_size_in_bytes {
        file = file.with_range(task.start as i64, (task.start + task.length) as i64);
    }
    file
}

/// The table's partition spec, if it never had another one.
pub fn only_spec(table: &Table) -> Option<PartitionSpecRef> {
    let mut specs = table.metadata().partition_specs_iter();
    match (specs.next(), specs.next()) {
        (Some(spec), None) => Some(spec.clone()),
        _ => None,
    }
}

/// A planned file's partition value for `transform(column)`: `None` when
/// the spec has no such field (or is unknown), `Some(None)` for a null value.
pub fn partition_value<'a>(
    task: &'a FileScanTask,
    column: &str,
    transform: Transform,
) -> Option<Option<&'a PrimitiveLiteral>> {
    let (partition, spec) = (task.partition.as_ref()?, task.partition_spec.as_ref()?);
    let source = task.schema.field_by_name(column)?.id;
    let idx = spec
        .fields()
        .iter()
        .position(|f| f.source_id == source && f.transform == transform)?;
    Some(match partition.fields().get(idx)? {
        Some(Literal::Primitive(value)) => Some(value),
        _ => None,
    })
}

/// The `event_day` of every row of a planned file: its `day(event_timestamp)`
/// partition value.
pub fn task_day(task: &FileScanTask) -> Option<i32> {
    match partition_value(task, col::EVENT_TIMESTAMP, Transform::Day)? {
        Some(PrimitiveLiteral::Int(day)) => Some(*day),
        _ => None,
    }
}

/// Drop the files whose day fails one of the exact `event_day` filters.
/// The provider only declares such filters exact when the table's only
/// partition spec has `day(event_timestamp)`, so a file without a day value
/// is a broken table and fails the query rather than being guessed at.
fn keep_matching_days(
    tasks: Vec<FileScanTask>,
    filters: &[Expr],
    state: &dyn Session,
) -> DFResult<Vec<FileScanTask>> {
    if filters.is_empty() || tasks.is_empty() {
        return Ok(tasks);
    }
    let days = tasks
        .iter()
        .map(|t| {
            task_day(t).ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "data file {} has no event_day partition value",
                    t.data_file_path
                ))
            })
        })
        .collect::<DFResult<Vec<i32>>>()?;
    let schema = Arc::new(Schema::new(vec![Field::new(
        col::EVENT_DAY,
        DataType::Date32,
        false,
    )]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Date32Array::from(days))])?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let mut keep = BooleanArray::from(vec![true; tasks.len()]);
    for f in filters {
        let result = state
            .create_physical_expr(f.clone(), &df_schema)?
            .evaluate(&batch)?
            .into_array(batch.num_rows())?;
        keep = and(&keep, result.as_boolean())?;
    }
    Ok(tasks
        .into_iter()
        .zip(keep.iter())
        .filter_map(|(t, k)| (k == Some(true)).then_some(t))
        .collect())
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

const DAY_MICROS: i64 = 86_400_000_000;

/// Statistics known from planning alone: row and byte counts of the planned
/// files, and column bounds implied by their partition values (identity
/// partitions give a column's value, `day` partitions bound the timestamp).
/// All inexact: row-level filters may drop rows.
fn plan_statistics(
    schema: &SchemaRef,
    output: &[OutputColumn],
    tasks: &[FileScanTask],
    plan: &ScanPlan,
) -> Statistics {
    let mut bounds: HashMap<String, (ScalarValue, ScalarValue)> = HashMap::new();
    let mut widen = |name: &str, lo: ScalarValue, hi: ScalarValue| {
        let entry = bounds
            .entry(name.to_string())
            .or_insert_with(|| (lo.clone(), hi.clone()));
        if lo < entry.0 {
            entry.0 = lo;
        }
        if hi > entry.1 {
            entry.1 = hi;
        }
    };
    let mut complete: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (Some(partition), Some(spec)) = (&task.partition, &task.partition_spec) else {
            continue;
        };
        for (field, value) in spec.fields().iter().zip(partition.fields()) {
            let Some(source) = task.schema.field_by_id(field.source_id) else {
                continue;
            };
            let value = match value {
                Some(Literal::Primitive(v)) => v,
                _ => continue,
            };
            let micros = matches!(
                *source.field_type,
                Type::Primitive(PrimitiveType::Timestamp | PrimitiveType::Timestamptz)
            );
            let (lo, hi) = match (field.transform, value) {
                (Transform::Identity, PrimitiveLiteral::String(s)) => (
                    ScalarValue::Utf8(Some(s.clone())),
                    ScalarValue::Utf8(Some(s.clone())),
                ),
                (Transform::Day, PrimitiveLiteral::Int(day)) if micros => {
                    if source.name == col::EVENT_TIMESTAMP {
                        let day = ScalarValue::Date32(Some(*day));
                        *complete.entry(col::EVENT_DAY.to_string()).or_default() += 1;
                        widen(col::EVENT_DAY, day.clone(), day);
                    }
                    let day = i64::from(*day);
                    (
                        ScalarValue::Int64(Some(day * DAY_MICROS)),
                        ScalarValue::Int64(Some((day + 1) * DAY_MICROS - 1)),
                    )
                }
                _ => continue,
            };
            *complete.entry(source.name.clone()).or_default() += 1;
            widen(&source.name, lo, hi);
        }
    }
    let mut stats = Statistics::new_unknown(schema);
    stats.num_rows = Precision::Inexact(plan.records as usize);
    stats.total_byte_size = Precision::Inexact(plan.bytes as usize);
    for ((c, field), column) in output
        .iter()
        .zip(schema.fields())
        .zip(stats.column_statistics.iter_mut())
    {
        let name = match c {
            OutputColumn::Table(n) => n.as_str(),
            OutputColumn::EventDay => col::EVENT_DAY,
        };
        // Only bound a column when every planned file contributed.
        let every_file = complete.get(name).copied().unwrap_or(0) == tasks.len();
        let Some((lo, hi)) = bounds.get(name).filter(|_| every_file && !tasks.is_empty()) else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (lo.cast_to(field.data_type()), hi.cast_to(field.data_type()))
        else {
            continue;
        };
        column.min_value = Precision::Inexact(lo);
        column.max_value = Precision::Inexact(hi);
    }
    stats
}

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
/// chrono's time-zone arithmetic instead.
fn event_day(timestamps: &ArrayRef) -> DFResult<ArrayRef> {
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
