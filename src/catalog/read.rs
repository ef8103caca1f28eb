//! Reading a table's data files back, in its current schema: compaction
//! merges them, erasure rewrites them without some rows. Uses iceberg's
//! reader, so field ids and schema evolution are honoured.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::scan::FileScanTask;
use iceberg::spec::DataFile;
use iceberg::table::Table;

use crate::error::Result;

/// The Arrow schema rows read back have: the table's current one.
pub fn table_arrow_schema(table: &Table) -> Result<SchemaRef> {
    Ok(Arc::new(iceberg::arrow::schema_to_arrow_schema(
        table.metadata().current_schema(),
    )?))
}

fn scan_task(table: &Table, f: &DataFile) -> FileScanTask {
    let schema = table.metadata().current_schema().clone();
    let field_ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    FileScanTask {
        file_size_in_bytes: f.file_size_in_bytes(),
        start: 0,
        length: f.file_size_in_bytes(),
        record_count: Some(f.record_count()),
        data_file_path: f.file_path().to_string(),
        data_file_format: f.file_format(),
        schema,
        project_field_ids: field_ids,
        predicate: None,
        deletes: vec![],
        partition: Some(f.partition().clone()),
        partition_spec: Some(table.metadata().default_partition_spec().clone()),
        name_mapping: None,
        case_sensitive: true,
    }
}

/// All rows of `files`, in the table's current schema.
pub async fn read_data_files(table: &Table, files: &[DataFile]) -> Result<Vec<RecordBatch>> {
    let target = table_arrow_schema(table)?;
    let tasks: Vec<FileScanTask> = files.iter().map(|f| scan_task(table, f)).collect();
    let stream = table
        .reader_builder()
        .with_data_file_concurrency_limit(2)
        .build()
        .read(Box::pin(futures::stream::iter(tasks.into_iter().map(Ok))))?;
    // Decoding happens where the stream is polled: on a background thread,
    // so a large rewrite does not stall the runtime workers that answer
    // DoPuts and queries.
    let runtime = tokio::runtime::Handle::current();
    let batches: Vec<RecordBatch> = crate::background::run("reading data files back", move || {
        runtime.block_on(stream.stream().try_collect())
    })
    .await??;
    batches
        .into_iter()
        .map(|b| to_types_of(b, &target))
        .collect()
}

/// Rows per batch of [`stream_data_file`]: small enough that a merge of
/// many files holds little per file, large enough to amortise per-batch
/// work.
pub const STREAM_BATCH_ROWS: usize = 8192;

/// The rows of one data file in file order, [`STREAM_BATCH_ROWS`] at a
/// time, in the table's current schema: decoded as the stream is polled,
/// so a merge of many files holds about a batch (and a row group's
/// compressed pages) per file.
pub fn stream_data_file(
    table: &Table,
    file: &DataFile,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let target = table_arrow_schema(table)?;
    let task = scan_task(table, file);
    let stream = table
        .reader_builder()
        .with_data_file_concurrency_limit(1)
        .with_batch_size(STREAM_BATCH_ROWS)
        .build()
        .read(Box::pin(futures::stream::once(async { Ok(task) })))?;
    Ok(stream
        .stream()
        .map(move |batch| to_types_of(batch?, &target))
        .boxed())
}

/// The reader may hand identity-partition columns back run-end encoded (a
/// constant per file): bring every column to the table's type.
fn to_types_of(batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}
