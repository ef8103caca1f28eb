//! Checks on incoming Arrow IPC messages before arrow decodes them.
//!
//! A compressed IPC buffer starts with its uncompressed length, and
//! arrow-ipc allocates that many bytes before decompressing. A few bytes on
//! the wire can declare a terabyte, and a failed allocation aborts the
//! whole process (it cannot be caught like a panic). So every `DoPut`
//! message's declared sizes are summed and refused above the caller's
//! limit before decoding. Found by the `ingest_batch` fuzz target.

use arrow::ipc::{MessageHeader, root_as_message};
use arrow_flight::FlightData;

use crate::error::{Error, Result};

/// Refuse `data` if its compressed buffers declare more than `max_bytes`
/// uncompressed. Messages arrow cannot parse are left to arrow's own error.
pub fn check_declared_sizes(data: &FlightData, max_bytes: usize) -> Result<()> {
    let Ok(message) = root_as_message(&data.data_header) else {
        return Ok(());
    };
    let batch = match message.header_type() {
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => {
            message.header_as_dictionary_batch().and_then(|d| d.data())
        }
        _ => None,
    };
    let Some(batch) = batch.filter(|b| b.compression().is_some()) else {
        return Ok(());
    };
    let body = &data.data_body;
    let mut declared: u64 = 0;
    for buffer in batch.buffers().into_iter().flatten() {
        let start = usize::try_from(buffer.offset()).unwrap_or(usize::MAX);
        let Some(prefix) = start.checked_add(8).and_then(|end| body.get(start..end)) else {
            continue;
        };
        let n = i64::from_le_bytes(prefix.try_into().expect("8 bytes"));
        // -1 marks a buffer stored uncompressed.
        declared = declared.saturating_add(u64::try_from(n).unwrap_or(0));
    }
    if declared > max_bytes as u64 {
        return Err(Error::ResourceExhausted(format!(
            "an Arrow IPC message declares {declared} bytes once decompressed, more than the {} MiB allowed; send smaller batches",
            max_bytes / (1024 * 1024)
        )));
    }
    Ok(())
}
