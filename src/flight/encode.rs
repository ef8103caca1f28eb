//! Encoding answers: `FlightInfo`s, tickets that repeat a command, and
//! single-batch `DoGet` streams.

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::sql::ProstMessageExt;
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use futures::TryStreamExt;
use prost::Message;
use tonic::Status;

use super::BoxStream;
use crate::error::{Error, Result};
use crate::query::update_result_schema;

pub(super) fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Error::Internal(e.to_string()))?;
    Ok(bytes)
}

/// A `FlightInfo` whose one endpoint's ticket is `ticket`.
pub(super) fn flight_info(
    schema: &Schema,
    ticket: Ticket,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Error::Internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor)
        .with_total_records(-1)
        .with_ordered(true))
}

/// Ticket that repeats a metadata command, so `DoGet` can answer it.
pub(super) fn command_ticket(cmd: &impl ProstMessageExt) -> Ticket {
    Ticket::new(cmd.as_any().encode_to_vec())
}

/// Stream a single batch (metadata answers, update counts).
pub(super) fn one_batch(
    schema: SchemaRef,
    batch: RecordBatch,
) -> BoxStream<arrow_flight::FlightData> {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter([Ok(batch)]))
            .map_err(Status::from),
    )
}

pub(super) fn rows_affected(n: u64) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        update_result_schema(),
        vec![std::sync::Arc::new(Int64Array::from(vec![n as i64]))],
    )?)
}
