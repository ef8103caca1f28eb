//! Planning a scan: the files a query opens (Iceberg predicate, tenant
//! check, exact `event_day` filters), their spread over partitions, and
//! which reader reads them.

use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, Date32Array, RecordBatch};
use arrow::compute::kernels::boolean::and;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::config::TableParquetOptions;
use datafusion::common::{DFSchema, ScalarValue, project_schema};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{
    FileGroup, FileGroupPartitioner, FileScanConfigBuilder, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{ExecutionPlan, Partitioning, PlanProperties};
use futures::TryStreamExt;
use iceberg::scan::FileScanTask;
use iceberg::spec::DataFileFormat;
use iceberg::table::Table;

use super::stats::plan_statistics;
use super::{IcebergScanExec, OutputColumn, Reader, ScanPlan, ScanRequest, to_df};
use crate::query::manifests::overlapping;
use crate::query::reader::{FileIoReaderFactory, FileLocation};
use crate::schema::col;
use crate::schema::partition::{only_spec, task_day};
use crate::schema::views::scan_schema;

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
        // The Parquet reader may split large files across more partitions
        // than the planned groups ([`split_large_files`]).
        let outputs = match &reader {
            Reader::Parquet(exec) => exec.properties().output_partitioning().partition_count(),
            Reader::Iceberg { .. } => partitions.len(),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(outputs),
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
            request.caches.data.clone(),
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
    let groups = split_large_files(groups, state.config().target_partitions());
    let config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
        .with_projection_indices(Some(indices))?
        .with_file_groups(groups)
        .with_limit(request.limit)
        .with_batch_size(Some(state.config().batch_size()))
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

/// Below this many bytes a scan is not worth splitting inside files.
const SPLIT_MIN_BYTES: u64 = 16 * 1024 * 1024;

/// Split files into byte ranges (the reader takes the row groups whose
/// midpoints fall in each) when one file holds well over a partition's
/// share of the scan. Compaction leaves a tenant-day as one or two large
/// files, and each file read whole keeps one core busy while the others
/// idle. DataFusion does this for scans it plans itself
/// (`repartition_file_scans`); this scan is planned here. Only for the
/// Parquet reader: iceberg's reads whole files.
fn split_large_files(groups: Vec<FileGroup>, target_partitions: usize) -> Vec<FileGroup> {
    let sizes = groups
        .iter()
        .flat_map(|g| g.iter())
        .map(|f| f.effective_size());
    let (total, largest) = sizes.fold((0u64, 0u64), |(t, l), s| (t + s, l.max(s)));
    let n = target_partitions as u64;
    if n < 2 || total < SPLIT_MIN_BYTES || 2 * largest * n <= 3 * total {
        return groups;
    }
    FileGroupPartitioner::new()
        .with_target_partitions(target_partitions)
        .with_repartition_file_min_size(SPLIT_MIN_BYTES as usize)
        .repartition_file_groups(&groups)
        .unwrap_or(groups)
}

/// A planned task as DataFusion's file description, carrying its full
/// storage location for [`FileIoReaderFactory`].
fn partitioned_file(task: &FileScanTask) -> PartitionedFile {
    let path = crate::storage::object_key(&task.data_file_path);
    let mut file = PartitionedFile::new(path.into_owned(), task.file_size_in_bytes)
        .with_extensions(Arc::new(FileLocation(task.data_file_path.clone())));
    if task.start != 0 || task.length != task.file_size_in_bytes {
        file = file.with_range(task.start as i64, (task.start + task.length) as i64);
    }
    file
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

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    fn files(sizes: &[u64]) -> Vec<FileGroup> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| FileGroup::new(vec![PartitionedFile::new(format!("f{i}"), s)]))
            .collect()
    }

    fn ranges(groups: &[FileGroup]) -> Vec<Vec<(String, u64)>> {
        groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| (f.object_meta.location.to_string(), f.effective_size()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_file_larger_than_its_share_is_read_by_every_core() {
        // One compacted 128 MiB tenant-day: two halves.
        let split = split_large_files(files(&[128 * MB]), 2);
        assert_eq!(
            ranges(&split),
            vec![vec![("f0".into(), 64 * MB)], vec![("f0".into(), 64 * MB)]]
        );
        // A large file beside small ones: every byte read once, evenly.
        let split = split_large_files(files(&[100 * MB, 10 * MB, 10 * MB]), 2);
        let per_group: Vec<u64> = ranges(&split)
            .iter()
            .map(|g| g.iter().map(|(_, s)| s).sum())
            .collect();
        assert_eq!(per_group, vec![60 * MB, 60 * MB]);
    }

    #[test]
    fn balanced_or_small_scans_keep_whole_files() {
        for sizes in [
            &[40 * MB, 40 * MB][..],
            &[8 * MB][..],
            &[50 * MB, 30 * MB, 20 * MB][..],
        ] {
            let groups = files(sizes);
            assert_eq!(
                ranges(&split_large_files(groups.clone(), 2)),
                ranges(&groups),
                "{sizes:?}"
            );
        }
        assert_eq!(ranges(&split_large_files(files(&[128 * MB]), 1)).len(), 1);
    }
}
