//! `DoPut` for ingest: decoding the Arrow IPC stream (sizes checked before
//! decoding, panics of the decoder contained), ADBC ingest modes, request
//! ids, and the two ways to name a table (`CommandStatementIngest`, or a
//! plain Flight PATH descriptor).

use arrow_flight::PutResult;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{
    CommandStatementIngest, DoPutUpdateResult, TableExistsOption, TableNotExistOption,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::Request;

use super::{BoxStream, RaindropFlightService, ipc};
use crate::error::{Error, Result};
use crate::ingest::{Mode, Target};
use crate::tenant::Principal;

/// Ingest option carrying a client request id (idempotent retries).
pub const REQUEST_ID_OPTION: &str = "raindrop.request_id";
/// Header alternative, for clients that can only set call headers.
pub const REQUEST_ID_HEADER: &str = "x-raindrop-request-id";

/// The request id of an ingest call: explicit option/app_metadata first,
/// then the call header.
fn request_id<T>(request: &Request<T>, explicit: Option<&str>) -> Option<String> {
    explicit.map(str::to_string).or_else(|| {
        request
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
}

fn ingest_mode(cmd: &CommandStatementIngest) -> Result<Mode> {
    let Some(opts) = cmd.table_definition_options else {
        return Ok(Mode::CreateAppend);
    };
    let not_exist = TableNotExistOption::try_from(opts.if_not_exist)
        .unwrap_or(TableNotExistOption::Unspecified);
    let exists =
        TableExistsOption::try_from(opts.if_exists).unwrap_or(TableExistsOption::Unspecified);
    use TableExistsOption as E;
    use TableNotExistOption as N;
    match (not_exist, exists) {
        (N::Create, E::Fail) => Ok(Mode::Create),
        (N::Fail, E::Append) => Ok(Mode::Append),
        (N::Create, E::Replace) => Ok(Mode::Replace),
        (N::Create, E::Append) => Ok(Mode::CreateAppend),
        (n, e) => Err(Error::InvalidArgument(format!(
            "unsupported ingest options if_not_exist={} if_exists={}: use ADBC modes create, append, replace or create_append",
            n.as_str_name(),
            e.as_str_name()
        ))),
    }
}

/// Decode a DoPut body into record batches; IPC problems are the client's.
pub(super) fn batches_of(
    stream: PeekableFlightDataStream,
    max_decoded: usize,
) -> impl Stream<Item = Result<arrow::array::RecordBatch>> + Send {
    // A message with only the descriptor carries no IPC (arrow-rs sends
    // one to execute a prepared update with parameters bound before).
    let carrying = stream.try_filter(|data| {
        futures::future::ready(!(data.data_header.is_empty() && data.data_body.is_empty()))
    });
    let checked = carrying.map_err(FlightError::from).and_then(move |data| {
        let checked = ipc::check_declared_sizes(&data, max_decoded)
            .map(|()| data)
            .map_err(|e| FlightError::Tonic(Box::new(e.into_status())));
        futures::future::ready(checked)
    });
    let decoded = FlightRecordBatchStream::new_from_flight_data(checked);
    // arrow-ipc can panic on inconsistent buffers (e.g. a truncated body)
    // instead of returning an error: contain it to this request.
    futures::StreamExt::map(
        futures::StreamExt::catch_unwind(std::panic::AssertUnwindSafe(decoded)),
        |item| {
            match item {
            Ok(Ok(batch)) => Ok(batch),
            Ok(Err(FlightError::Tonic(status))) if status.code() == tonic::Code::ResourceExhausted => {
                Err(Error::ResourceExhausted(status.message().to_string()))
            }
            Ok(Err(FlightError::Tonic(status))) => Err(Error::InvalidArgument(format!(
                "ingest stream failed: {}",
                status.message()
            ))),
            Ok(Err(other)) => Err(Error::InvalidArgument(format!("invalid Arrow IPC stream: {other}"))),
            Err(_) => Err(Error::InvalidArgument(
                "malformed Arrow IPC data: a message body is truncated or inconsistent with its header".into(),
            )),
        }
        },
    )
}

fn put_result(rows: u64) -> BoxStream<PutResult> {
    let result = DoPutUpdateResult {
        record_count: rows as i64,
    };
    Box::pin(futures::stream::iter([Ok(PutResult {
        app_metadata: result.encode_to_vec().into(),
    })]))
}

impl RaindropFlightService {
    /// ADBC `adbc_ingest` (`CommandStatementIngest`): rows committed.
    pub(super) async fn ingest_command(
        &self,
        principal: &Principal,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<u64> {
        if cmd.temporary {
            return Err(Error::InvalidArgument(
                "temporary tables are not supported; ingest into a regular table".into(),
            ));
        }
        if cmd.transaction_id.is_some() {
            return Err(Error::Unsupported(
                "transactions are not supported; each ingest commits atomically on its own".into(),
            ));
        }
        let mode = ingest_mode(&cmd)?;
        let ingest = &self.services.ingest;
        let target =
            ingest.resolve_target(cmd.catalog.as_deref(), cmd.schema.as_deref(), &cmd.table)?;
        let explicit_id = cmd.options.get(REQUEST_ID_OPTION).cloned();
        self.ingest_stream(principal, &target, mode, explicit_id, request)
            .await
    }

    /// Ingest the request's batches into `target`: the tail both `DoPut`
    /// forms share. The request id is `explicit_id`, else the call header.
    async fn ingest_stream(
        &self,
        principal: &Principal,
        target: &Target,
        mode: Mode,
        explicit_id: Option<String>,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<u64> {
        let ingest = &self.services.ingest;
        let request_id = request_id(&request, explicit_id.as_deref());
        let batches = batches_of(request.into_inner(), ingest.max_stream_bytes());
        let outcome = ingest
            .ingest(principal, target, mode, request_id.as_deref(), batches)
            .await?;
        tracing::debug!(token_id = %principal.token_id, ?target, rows = outcome.rows, files = outcome.files.len(), "ingested");
        Ok(outcome.rows)
    }

    /// Plain Flight `DoPut` with a PATH descriptor: `[table]` or
    /// `[schema, table]`; appends, creating tenant tables on first use.
    pub(super) async fn ingest_path(
        &self,
        principal: &Principal,
        mut request: Request<PeekableFlightDataStream>,
    ) -> Result<BoxStream<PutResult>> {
        let first = request.get_mut().peek().await.cloned();
        let app_metadata_id = match &first {
            Some(Ok(data)) if !data.app_metadata.is_empty() => {
                Some(String::from_utf8_lossy(&data.app_metadata).into_owned())
            }
            _ => None,
        };
        let descriptor = match first {
            Some(Ok(data)) => data.flight_descriptor,
            Some(Err(status)) => {
                return Err(Error::InvalidArgument(format!(
                    "ingest stream failed: {}",
                    status.message()
                )));
            }
            None => None,
        }
        .ok_or_else(|| {
            Error::InvalidArgument("DoPut needs a flight descriptor on its first message".into())
        })?;
        if descriptor.r#type() != DescriptorType::Path {
            return Err(Error::InvalidArgument(
                "unknown DoPut command: use a Flight SQL command or a PATH descriptor naming the table"
                    .into(),
            ));
        }
        let ingest = &self.services.ingest;
        let target = match descriptor.path.as_slice() {
            [table] => ingest.resolve_target(None, None, table)?,
            [schema, table] => ingest.resolve_target(None, Some(schema), table)?,
            _ => {
                return Err(Error::InvalidArgument(
                    "PATH descriptor must be [table] or [schema, table]".into(),
                ));
            }
        };
        let mode = match target {
            Target::RawEvents => Mode::Append,
            Target::Tenant { .. } => Mode::CreateAppend,
        };
        let rows = self
            .ingest_stream(principal, &target, mode, app_metadata_id, request)
            .await?;
        Ok(put_result(rows))
    }
}
