//! The Arrow Flight SQL endpoint. Deliberately thin: decode the request,
//! authenticate, call the query or ingest service, encode the answer.

pub mod auth;
mod sql_info;

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    Any, CommandGetSqlInfo, CommandStatementIngest, CommandStatementQuery, DoPutUpdateResult,
    ProstMessageExt, SqlInfo, TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, PutResult,
    Ticket, flight_descriptor::DescriptorType,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::ingest::{Ingestor, Mode, Target};
use crate::query::{QueryEngine, client_schema};
use crate::tenant::Principal;
use crate::tenant::tokens::TokenStore;

/// Shared state behind the Flight service.
#[derive(Debug)]
pub struct Services {
    /// Token → principal.
    pub tokens: TokenStore,
    /// Query sessions.
    pub query: QueryEngine,
    /// Ingest.
    pub ingest: Ingestor,
}

/// Flight SQL service over [`Services`].
#[derive(Clone)]
pub struct RaindropFlightService {
    services: Arc<Services>,
    sql_info: Arc<arrow_flight::sql::metadata::SqlInfoData>,
}

impl std::fmt::Debug for RaindropFlightService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaindropFlightService")
            .finish_non_exhaustive()
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl RaindropFlightService {
    /// Build the service.
    pub fn new(services: Arc<Services>) -> Self {
        Self {
            services,
            sql_info: Arc::new(sql_info::build()),
        }
    }

    fn principal<T>(&self, request: &Request<T>) -> Result<Principal> {
        let token = auth::token_from_metadata(request.metadata())?;
        self.services.tokens.authenticate(&token)
    }
}

/// Statement tickets carry the SQL only: `DoGet` re-authenticates and
/// re-plans as the caller, so a forged or replayed ticket grants nothing.
fn encode_ticket(sql: &str) -> Ticket {
    let ticket = TicketStatementQuery {
        statement_handle: sql.as_bytes().to_vec().into(),
    };
    Ticket::new(ticket.as_any().encode_to_vec())
}

fn decode_ticket(ticket: &TicketStatementQuery) -> Result<String> {
    String::from_utf8(ticket.statement_handle.to_vec())
        .map_err(|_| Error::InvalidArgument("malformed statement ticket".into()))
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
fn batches(
    stream: PeekableFlightDataStream,
) -> impl Stream<Item = Result<arrow::array::RecordBatch>> + Send {
    FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from)).map_err(|e| {
        match e {
            FlightError::Tonic(status) => {
                Error::InvalidArgument(format!("ingest stream failed: {}", status.message()))
            }
            other => Error::InvalidArgument(format!("invalid Arrow IPC stream: {other}")),
        }
    })
}

fn put_result(rows: u64) -> BoxStream<PutResult> {
    let result = DoPutUpdateResult {
        record_count: rows as i64,
    };
    Box::pin(futures::stream::iter([Ok(PutResult {
        app_metadata: result.encode_to_vec().into(),
    })]))
}

#[tonic::async_trait]
impl FlightSqlService for RaindropFlightService {
    type FlightService = RaindropFlightService;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<BoxStream<HandshakeResponse>>, Status> {
        let token = match auth::token_from_metadata(request.metadata()) {
            Ok(t) => t,
            Err(e) => {
                // Some clients put the token in the handshake payload instead.
                let mut stream = request.into_inner();
                match stream.message().await? {
                    Some(m) if !m.payload.is_empty() => String::from_utf8(m.payload.to_vec())
                        .map_err(|_| {
                            Status::unauthenticated("handshake payload is not a UTF-8 token")
                        })?,
                    _ => return Err(e.into()),
                }
            }
        };
        let principal = self.services.tokens.authenticate(&token)?;
        tracing::debug!(token_id = %principal.token_id, "handshake");
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into_bytes().into(),
        };
        let mut resp: Response<BoxStream<HandshakeResponse>> =
            Response::new(Box::pin(futures::stream::iter([Ok(response)])));
        let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            Status::unauthenticated("token contains characters not allowed in a header")
        })?;
        resp.metadata_mut().insert("authorization", bearer);
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(&request)?;
        if query.transaction_id.is_some() {
            return Err(Error::Unsupported("transactions are not supported".into()).into());
        }
        let df = self.services.query.plan(&principal, &query.query).await?;
        let schema = client_schema(&df);
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(encode_ticket(&query.query)))
            .with_descriptor(request.into_inner())
            .with_total_records(-1)
            .with_ordered(true);
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.principal(&request)?;
        let sql = decode_ticket(&ticket)?;
        let df = self.services.query.plan(&principal, &sql).await?;
        let schema = client_schema(&df);
        let started = std::time::Instant::now();
        let batches = df
            .execute_stream()
            .await
            .map_err(|e| Status::from(Error::from(e)))?
            .map_err(|e| FlightError::Tonic(Box::new(Status::from(Error::from(e)))));
        tracing::debug!(token_id = %principal.token_id, planning_ms = started.elapsed().as_millis() as u64, "query started");
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                FlightError::Tonic(status) => *status,
                other => Status::internal(other.to_string()),
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_put_statement_ingest(
        &self,
        cmd: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request)?;
        if cmd.temporary {
            return Err(Error::InvalidArgument(
                "temporary tables are not supported; ingest into a regular table".into(),
            )
            .into());
        }
        if cmd.transaction_id.is_some() {
            return Err(Error::Unsupported(
                "transactions are not supported; each ingest commits atomically on its own".into(),
            )
            .into());
        }
        let mode = ingest_mode(&cmd)?;
        let target = self.services.ingest.resolve_target(
            cmd.catalog.as_deref(),
            cmd.schema.as_deref(),
            &cmd.table,
        )?;
        let outcome = self
            .services
            .ingest
            .ingest(&principal, &target, mode, batches(request.into_inner()))
            .await?;
        tracing::info!(token_id = %principal.token_id, ?target, rows = outcome.rows, files = outcome.files.len(), "ingested");
        Ok(outcome.rows as i64)
    }

    async fn do_put_fallback(
        &self,
        request: Request<PeekableFlightDataStream>,
        _message: Any,
    ) -> Result<Response<<Self as FlightService>::DoPutStream>, Status> {
        // Plain Flight DoPut with a PATH descriptor: ["raw_events"],
        // ["wildedge", "raw_events"] or ["<schema>", "<table>"].
        let principal = self.principal(&request)?;
        let mut request = request;
        let first = request.get_mut().peek().await.cloned();
        let descriptor = match first {
            Some(Ok(data)) => data.flight_descriptor,
            Some(Err(status)) => return Err(status),
            None => None,
        }
        .ok_or_else(|| {
            Status::invalid_argument("DoPut needs a flight descriptor on its first message")
        })?;
        if descriptor.r#type() != DescriptorType::Path {
            return Err(Status::invalid_argument(
                "unknown DoPut command: use a Flight SQL command or a PATH descriptor naming the table",
            ));
        }
        let target = match descriptor.path.as_slice() {
            [table] => self.services.ingest.resolve_target(None, None, table)?,
            [schema, table] => self
                .services
                .ingest
                .resolve_target(None, Some(schema), table)?,
            _ => {
                return Err(Status::invalid_argument(
                    "PATH descriptor must be [table] or [schema, table]",
                ));
            }
        };
        let mode = match target {
            Target::RawEvents => Mode::Append,
            Target::Tenant { .. } => Mode::CreateAppend,
        };
        let outcome = self
            .services
            .ingest
            .ingest(&principal, &target, mode, batches(request.into_inner()))
            .await?;
        tracing::info!(token_id = %principal.token_id, ?target, rows = outcome.rows, "ingested (path)");
        Ok(Response::new(put_result(outcome.rows)))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request)?;
        let info = FlightInfo::new()
            .try_with_schema(query.clone().into_builder(&self.sql_info).schema().as_ref())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(
                FlightEndpoint::new().with_ticket(Ticket::new(query.as_any().encode_to_vec())),
            )
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        let builder = query.into_builder(&self.sql_info);
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter([Ok(batch)]))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
