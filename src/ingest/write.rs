//! The Parquet data-file writer shared by ingest and compaction, so file
//! format, layout and naming are decided once: rows are split by the
//! table's partition spec, sorted by the layout keys ([`super::layout`]),
//! and written as ZSTD Parquet through iceberg's rolling data-file writer,
//! partitions encoded in parallel on blocking threads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::arrow::{PartitionValueCalculator, arrow_struct_to_literal};
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

use super::layout::{sort_by_partition_then_layout, sort_for_layout};
use super::validate::normalize_to_schema;
use crate::batch::batch_bytes;
use crate::error::{Error, Result};
use crate::schema;

/// Rows ready to be written: sorted by partition, then by the layout keys
/// ([`LAYOUT`]), and cut into one zero-copy slice per partition.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Partition spec and schema the slices were computed for.
    spec_id: i32,
    schema_id: i32,
    parts: Vec<(Option<PartitionKey>, RecordBatch)>,
}

impl Prepared {
    /// Bytes of Arrow data held.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|(_, b)| batch_bytes(b)).sum()
    }

    fn into_batches(self) -> Vec<RecordBatch> {
        self.parts.into_iter().map(|(_, b)| b).collect()
    }
}

/// Sort `batches` (in `table`'s current schema) for writing and split them
/// by the table's default partition spec.
pub fn prepare(table: &Table, batches: Vec<RecordBatch>) -> Result<Prepared> {
    let metadata = table.metadata();
    let iceberg_schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().clone();
    let mut prepared = Prepared {
        spec_id: spec.spec_id(),
        schema_id: iceberg_schema.schema_id(),
        parts: vec![],
    };
    if batches.is_empty() {
        return Ok(prepared);
    }
    // Rows buffered or read under an earlier schema (a column added or
    // widened since) take the current one: new columns null, wider types.
    let target: SchemaRef = Arc::new(iceberg::arrow::schema_to_arrow_schema(&iceberg_schema)?);
    let batches = batches
        .into_iter()
        .map(|b| {
            if b.schema_ref() == &target {
                Ok(b)
            } else {
                normalize_to_schema(&b, &target)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let batch = arrow::compute::concat_batches(&target, &batches)?;
    drop(batches);
    if spec.is_unpartitioned() {
        prepared.parts.push((None, sort_for_layout(batch)?));
        return Ok(prepared);
    }
    // One sort orders the rows by partition, then by the layout keys: each
    // partition becomes one contiguous (zero-copy) slice in layout order.
    let calculator = PartitionValueCalculator::try_new(&spec, &iceberg_schema)?;
    let partition_values = calculator.calculate(&batch)?;
    let (batch, partition_values) = sort_by_partition_then_layout(batch, partition_values)?;
    let partition_columns = partition_values.as_struct().columns().to_vec();
    let ranges = arrow::compute::partition(&partition_columns)?.ranges();
    for r in ranges {
        let value = partition_values.slice(r.start, 1);
        let Some(Some(Literal::Struct(data))) =
            arrow_struct_to_literal(&value, calculator.partition_type())?.pop()
        else {
            return Err(Error::Internal("partition value is not a struct".into()));
        };
        let key = PartitionKey::new(spec.as_ref().clone(), iceberg_schema.clone(), data);
        prepared
            .parts
            .push((Some(key), batch.slice(r.start, r.end - r.start)));
    }
    Ok(prepared)
}

/// Write batches as Parquet data files of `table`, one per partition (more
/// only past the target file size), each sorted by the layout keys.
pub async fn write_data_files(table: &Table, batches: Vec<RecordBatch>) -> Result<Vec<DataFile>> {
    // Sorting never yields: on a background thread, not the runtime
    // workers that answer requests.
    let for_prepare = table.clone();
    let prepared = crate::background::run("sorting rows to write", move || {
        prepare(&for_prepare, batches)
    })
    .await??;
    write_prepared(table, vec![prepared]).await
}

/// Write several prepared inputs together: slices of one partition share a
/// file (written one after another, each in layout order).
pub(super) async fn write_prepared(
    table: &Table,
    prepared: Vec<Prepared>,
) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let iceberg_schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec();
    // Prepared for an older spec or schema (the table evolved meanwhile):
    // split again under the current one.
    let (current, stale): (Vec<_>, Vec<_>) = prepared
        .into_iter()
        .partition(|p| p.spec_id == spec.spec_id() && p.schema_id == iceberg_schema.schema_id());
    let mut inputs = current;
    let stale: Vec<RecordBatch> = stale.into_iter().flat_map(Prepared::into_batches).collect();
    if !stale.is_empty() {
        inputs.push(prepare(table, stale)?);
    }
    let mut partitions: Vec<(Option<PartitionKey>, Vec<RecordBatch>, usize)> = vec![];
    let mut index: HashMap<Option<iceberg::spec::Struct>, usize> = HashMap::new();
    for (key, batch) in inputs.into_iter().flat_map(|p| p.parts) {
        let data = key.as_ref().map(|k| k.data().clone());
        let i = *index.entry(data).or_insert_with(|| {
            partitions.push((key, vec![], 0));
            partitions.len() - 1
        });
        partitions[i].2 += batch.num_rows();
        partitions[i].1.push(batch);
    }

    let builder = Arc::new(file_writer(table)?);
    // Encoding Parquet is CPU-bound: workers on all cores take partitions
    // from one queue, largest first, so none idles while another has work.
    partitions.sort_by_key(|(_, _, rows)| std::cmp::Reverse(*rows));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(partitions.len())
        .max(1);
    let queue = Arc::new(Mutex::new(VecDeque::from(partitions)));
    // Background threads, not runtime workers: encoding never yields, and
    // closing a file waits for its fsync; meanwhile the runtime keeps
    // serving requests first ([`crate::background`]).
    let runtime = tokio::runtime::Handle::current();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (queue, builder, runtime) = (queue.clone(), builder.clone(), runtime.clone());
            crate::background::run("writing data files", move || {
                runtime.block_on(async move {
                    let mut files = vec![];
                    loop {
                        let next = queue.lock().expect("work queue lock").pop_front();
                        let Some((key, slices, _)) = next else {
                            return (files, None);
                        };
                        let written = async {
                            let mut writer = builder.build(key).await?;
                            for slice in slices {
                                writer.write(slice).await?;
                            }
                            writer.close().await
                        }
                        .await;
                        match written {
                            Ok(f) => files.extend(f),
                            Err(e) => {
                                queue.lock().expect("work queue lock").clear();
                                return (files, Some(Error::from(e)));
                            }
                        }
                    }
                })
            })
        })
        .collect();
    let mut files = vec![];
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok((f, e)) => {
                files.extend(f);
                first_error = first_error.or(e);
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    all_or_nothing(table, files, first_error).await
}

/// `files` written by parallel writers, or, if one of them failed, its
/// error once the others' files are deleted: nothing half-written stays.
pub async fn all_or_nothing(
    table: &Table,
    files: Vec<DataFile>,
    first_error: Option<Error>,
) -> Result<Vec<DataFile>> {
    match first_error {
        None => Ok(files),
        Some(e) => {
            discard_files(table, &files).await;
            Err(e)
        }
    }
}

/// The one data-file writer configuration: ZSTD Parquet ([`schema::writer_properties`]),
/// rolled at [`schema::TARGET_FILE_SIZE`], named uniquely.
fn file_writer(table: &Table) -> Result<FileWriter> {
    let metadata = table.metadata();
    let parquet = ParquetWriterBuilder::new(
        schema::writer_properties(),
        metadata.current_schema().clone(),
    );
    let locations = DefaultLocationGenerator::new(metadata)?;
    // The generator's counter restarts per instance: a UUID v7 prefix keeps
    // names unique across writers, processes and nodes (clones share the
    // counter, so parallel workers never collide).
    let names = DefaultFileNameGenerator::new(
        uuid::Uuid::now_v7().to_string(),
        None,
        DataFileFormat::Parquet,
    );
    Ok(DataFileWriterBuilder::new(RollingFileWriterBuilder::new(
        parquet,
        schema::TARGET_FILE_SIZE,
        table.file_io().clone(),
        locations,
        names,
    )))
}

type FileWriter =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// Write one partition's rows, as they stream in, as data files of
/// `table` (in its current schema and spec), in the order they arrive:
/// compaction streams merged files through here. On error, the files
/// written so far are deleted.
pub async fn write_partition_stream(
    table: &Table,
    partition: iceberg::spec::Struct,
    mut rows: BoxStream<'static, Result<RecordBatch>>,
) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let key = (!metadata.default_partition_spec().is_unpartitioned()).then(|| {
        PartitionKey::new(
            metadata.default_partition_spec().as_ref().clone(),
            metadata.current_schema().clone(),
            partition,
        )
    });
    let mut writer = file_writer(table)?.build(key).await?;
    let written = async {
        while let Some(batch) = rows.next().await {
            writer.write(batch?).await?;
        }
        Ok::<_, Error>(())
    }
    .await;
    match written {
        Ok(()) => Ok(writer.close().await?),
        Err(e) => {
            // Close to learn which files exist, then remove them.
            if let Ok(files) = writer.close().await {
                discard_files(table, &files).await;
            }
            Err(e)
        }
    }
}

/// [`delete_files`] for data files this process wrote and will not commit.
pub async fn discard_files(table: &Table, files: &[DataFile]) {
    let paths: Vec<String> = files.iter().map(|f| f.file_path().to_string()).collect();
    delete_files(table, &paths).await;
}

/// Best-effort removal of files that were written but never committed.
pub async fn delete_files(table: &Table, paths: &[String]) {
    for p in paths {
        if let Err(e) = table.file_io().delete(p).await {
            tracing::warn!(path = %p, error = %e, "could not delete uncommitted file");
        }
    }
}
