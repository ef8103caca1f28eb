//! Arrow record-batch helpers shared by ingest, query and the Flight layer.

use arrow::array::{Array, RecordBatch};

/// Bytes a batch's data occupies. Batches decoded from one IPC message
/// share its buffer, so `get_array_memory_size` would count that buffer
/// once per column; count the sliced data instead.
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}
