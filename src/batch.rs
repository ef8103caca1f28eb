//! Arrow record-batch helpers shared by ingest, query and the Flight layer.

use std::collections::HashMap;

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

/// The memory regions `batch` holds (start address, capacity): buffers a
/// copy shares with its source appear in both.
pub fn allocations(batch: &RecordBatch) -> HashMap<usize, usize> {
    fn walk(data: &arrow::array::ArrayData, out: &mut HashMap<usize, usize>) {
        for b in data
            .buffers()
            .iter()
            .chain(data.nulls().map(|n| n.buffer()))
        {
            out.insert(b.data_ptr().as_ptr() as usize, b.capacity());
        }
        data.child_data().iter().for_each(|c| walk(c, out));
    }
    let mut out = HashMap::new();
    for c in batch.columns() {
        walk(&c.to_data(), &mut out);
    }
    out
}

/// Bytes `batch` holds that none of `sources` does.
pub fn new_bytes<'a>(batch: &RecordBatch, sources: impl Iterator<Item = &'a RecordBatch>) -> usize {
    let mut own = allocations(batch);
    for source in sources {
        for start in allocations(source).keys() {
            own.remove(start);
        }
    }
    own.values().sum()
}
