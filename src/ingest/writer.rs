//! The one Iceberg write path: every ingest (telemetry or tenant tables)
//! ends here, so file format, layout and commit rules are decided once.
//!
//! Batches are split by partition (`RecordBatchPartitionSplitter` computes
//! `identity(project_id)` / `day(event_timestamp)`), written as ZSTD Parquet
//! through iceberg's rolling data-file writer, then committed as a single
//! fast-append snapshot. The caller learns the row count only after the
//! catalog accepted the commit; files of a failed write are deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, TableIdent};

use crate::error::Result;
use crate::schema;

/// What a committed append produced.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    /// Rows committed.
    pub rows: u64,
    /// Data files added.
    pub files: Vec<String>,
    /// Snapshot created by the commit (`None` when there was nothing to write).
    pub snapshot_id: Option<i64>,
}

/// Writes and commits data files; serialises commits per table within this
/// process (the catalog's compare-and-swap handles other processes).
pub struct TableWriter {
    catalog: Arc<dyn Catalog>,
    commit_locks: Mutex<HashMap<TableIdent, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWriter").finish_non_exhaustive()
    }
}

impl TableWriter {
    /// A writer over `catalog`.
    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self {
            catalog,
            commit_locks: Mutex::new(HashMap::new()),
        }
    }

    fn commit_lock(&self, ident: &TableIdent) -> Arc<tokio::sync::Mutex<()>> {
        self.commit_locks
            .lock()
            .expect("commit lock map")
            .entry(ident.clone())
            .or_default()
            .clone()
    }

    /// Append `batches` (already in the table's Arrow schema) to the table
    /// as one snapshot. Either all rows are committed or none are.
    pub async fn append(
        &self,
        ident: &TableIdent,
        batches: Vec<RecordBatch>,
    ) -> Result<AppendOutcome> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            return Ok(AppendOutcome::default());
        }
        let table = self.catalog.load_table(ident).await?;
        let data_files = write_data_files(&table, batches).await?;
        let paths: Vec<String> = data_files
            .iter()
            .map(|f| f.file_path().to_string())
            .collect();
        match self.commit(ident, &table, data_files).await {
            Ok(snapshot_id) => {
                tracing::debug!(table = %ident, rows, files = paths.len(), snapshot_id, "committed");
                Ok(AppendOutcome {
                    rows,
                    files: paths,
                    snapshot_id: Some(snapshot_id),
                })
            }
            Err(e) => {
                delete_files(&table, &paths).await;
                Err(e)
            }
        }
    }

    async fn commit(&self, ident: &TableIdent, table: &Table, files: Vec<DataFile>) -> Result<i64> {
        let lock = self.commit_lock(ident);
        let _guard = lock.lock().await;
        // Reload under the lock so an earlier commit in this process is the
        // base, instead of a guaranteed conflict and retry.
        let fresh = self
            .catalog
            .load_table(ident)
            .await
            .unwrap_or_else(|_| table.clone());
        let tx = Transaction::new(&fresh);
        // Names are unique (UUID v7 prefix), so skip the duplicate check
        // that would re-read every manifest on every commit.
        let action = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(files);
        let tx = action.apply(tx)?;
        let committed = tx.commit(self.catalog.as_ref()).await?;
        Ok(committed
            .metadata()
            .current_snapshot_id()
            .unwrap_or_default())
    }
}

/// Write batches as Parquet data files of `table`, split by its partition spec.
pub async fn write_data_files(table: &Table, batches: Vec<RecordBatch>) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let iceberg_schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().clone();
    let parquet = ParquetWriterBuilder::new(schema::writer_properties(), iceberg_schema.clone());
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        schema::TARGET_FILE_SIZE,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata)?,
        // The generator's counter restarts per instance: a UUID v7 prefix
        // keeps names unique across writers, processes and nodes.
        DefaultFileNameGenerator::new(
            uuid::Uuid::now_v7().to_string(),
            None,
            DataFileFormat::Parquet,
        ),
    );
    let builder = DataFileWriterBuilder::new(rolling);
    // Concatenate so each partition gets one write (one file per partition
    // per stream; the rolling writer only splits above the target size).
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches)?;
    drop(batches);

    let result = if spec.is_unpartitioned() {
        let mut writer = builder.build(None).await?;
        writer.write(batch).await?;
        writer.close().await
    } else {
        let splitter =
            RecordBatchPartitionSplitter::try_new_with_computed_values(iceberg_schema, spec)?;
        let mut writer = FanoutWriter::new(builder);
        let mut result = Ok(());
        for (key, part) in splitter.split(&batch)? {
            if let Err(e) = writer.write(key, part).await {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => writer.close().await,
            Err(e) => Err(e),
        }
    };
    Ok(result?)
}

/// Best-effort removal of files that were written but never committed.
pub async fn delete_files(table: &Table, paths: &[String]) {
    for p in paths {
        if let Err(e) = table.file_io().delete(p).await {
            tracing::warn!(path = %p, error = %e, "could not delete uncommitted file");
        }
    }
}
