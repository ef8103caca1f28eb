//! Reading a table's data files back whole, in its current schema:
//! compaction merges them, erasure rewrites them without some rows. Uses
//! iceberg's reader, so field ids and schema evolution are honoured.

use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use iceberg::scan::FileScanTask;
use iceberg::spec::DataFile;
use iceberg::table::Table;

use crate::error::Result;

/// All rows of `files`, in the table's current schema.
pub async fn read_data_files(table: &Table, files: &[DataFile]) -> Result<Vec<RecordBatch>> {
    let schema = table.metadata().current_schema().clone();
    let spec = table.metadata().default_partition_spec().clone();
    let field_ids: Vec<i32> = schema.as_struct().fields().iter().map(|f| f.id).collect();
    let tasks: Vec<FileScanTask> = files
        .iter()
        .map(|f| FileScanTask {
            file_size_in_bytes: f.file_size_in_bytes(),
            start: 0,
            length: f.file_size_in_bytes(),
            record_count: Some(f.record_count()),
            data_file_path: f.file_path().to_string(),
            data_file_format: f.file_format(),
            schema: schema.clone(),
            project_field_ids: field_ids.clone(),
            predicate: None,
            deletes: vec![],
            partition: Some(f.partition().clone()),
            partition_spec: Some(spec.clone()),
            name_mapping: None,
            case_sensitive: true,
        })
        .collect();
    let target = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema)?);
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
    // The reader may hand identity-partition columns back run-end encoded
    // (a constant per file): bring every column to the table's type.
    batches
        .into_iter()
        .map(|b| {
            let columns = b
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
        })
        .collect()
}
