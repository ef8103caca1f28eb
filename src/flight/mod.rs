//! The Arrow Flight SQL endpoint. Deliberately thin: decode the request,
//! authenticate, call the query or ingest service, encode the answer.

pub mod auth;
pub mod ipc;
mod metadata;
pub mod planned;
pub mod prepared;
mod sql_info;
pub mod ticket;

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionBeginTransactionRequest, ActionBeginTransactionResult, ActionCancelQueryRequest,
    ActionCancelQueryResult, ActionClosePreparedStatementRequest,
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any,
    CommandGetCatalogs, CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys,
    CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandGetXdbcTypeInfo, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, DoPutUpdateResult, ProstMessageExt,
    SqlInfo, TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    Action, CancelFlightInfoResult, CancelStatus, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, IpcMessage, PutResult, SchemaAsIpc, Ticket,
    flight_descriptor::DescriptorType,
};
use futures::{Stream, TryStreamExt};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Error, Result};
use crate::ingest::{Ingestor, Mode, Target};
use crate::query::{QueryEngine, client_schema, is_update, params, update_result_schema};
use crate::tenant::Principal;
use crate::tenant::tokens::TokenStore;
use prepared::{PreparedStatements, Statement};
use ticket::StatementTicket;

/// Shared state behind the Flight service.
#[derive(Debug)]
pub struct Services {
    /// Token → principal.
    pub tokens: TokenStore,
    /// Query sessions.
    pub query: QueryEngine,
    /// Ingest.
    pub ingest: Ingestor,
    /// Open prepared statements.
    pub prepared: PreparedStatements,
    /// Queries planned by `GetFlightInfo`, awaiting their `DoGet`.
    pub planned: planned::PlannedQueries,
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

    /// Answer `GetFlightInfo` for `sql`: a query is planned (schema) and
    /// left for `DoGet`; an update runs now, so it has happened when the
    /// call returns (drivers may fetch the result lazily, or never).
    async fn plan_statement(
        &self,
        principal: &Principal,
        sql: &str,
        params: Option<RecordBatch>,
        query_ticket: Ticket,
    ) -> Result<(SchemaRef, Ticket)> {
        if is_update(sql) {
            let n = self.update(principal, sql, params).await?;
            return Ok((update_result_schema(), StatementTicket::Updated(n).encode()));
        }
        let mut df = self.services.query.plan(principal, sql).await?;
        if let Some(p) = &params {
            df = df.with_param_values(self::params_row(p, 0)?)?;
        }
        let schema = client_schema(&df);
        if params.is_none() {
            self.services.planned.put(&principal.token_id, sql, df);
        }
        Ok((schema, query_ticket))
    }

    /// `FlightInfo` for a metadata command: its schema, and a ticket that
    /// repeats the command so `DoGet` can answer it.
    fn command_info<C: ProstMessageExt>(
        &self,
        request: Request<FlightDescriptor>,
        schema: SchemaRef,
        cmd: &C,
    ) -> Result<Response<FlightInfo>, Status> {
        self.principal(&request)?;
        Ok(Response::new(flight_info(
            &schema,
            command_ticket(cmd),
            request.into_inner(),
        )?))
    }

    /// An authenticated, empty answer (key lookups: Iceberg has no keys).
    fn empty_answer<T>(
        &self,
        request: Request<T>,
        schema: SchemaRef,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        Ok(Response::new(one_batch(
            schema.clone(),
            RecordBatch::new_empty(schema),
        )))
    }

    /// Execute `sql` for `DoGet`: stream a query's rows, or run an update
    /// (once per parameter row) and return `rows_affected` — the latter only
    /// for clients that `DoGet` a prepared update directly.
    async fn execute(
        &self,
        principal: &Principal,
        sql: &str,
        params: Option<RecordBatch>,
    ) -> Result<<Self as FlightService>::DoGetStream> {
        if is_update(sql) {
            let n = self.update(principal, sql, params).await?;
            return Ok(one_batch(update_result_schema(), rows_affected(n)?));
        }
        // A plan kept by GetFlightInfo exists only for parameterless queries.
        let planned = params
            .is_none()
            .then(|| self.services.planned.take(&principal.token_id, sql))
            .flatten();
        let mut df = match planned {
            Some(df) => df,
            None => self.services.query.plan(principal, sql).await?,
        };
        if let Some(p) = &params {
            if p.num_rows() > 1 {
                return Err(Error::InvalidArgument(
                    "a query takes one row of parameters; bind a single row".into(),
                ));
            }
            df = df.with_param_values(params_row(p, 0)?)?;
        }
        let schema = client_schema(&df);
        let batches = self
            .services
            .query
            .execute(principal, df)
            .await?
            .map_err(|e| FlightError::Tonic(Box::new(Status::from(e))));
        tracing::debug!(token_id = %principal.token_id, "query started");
        Ok(Box::pin(
            FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(batches)
                .map_err(|e| match e {
                    FlightError::Tonic(status) => *status,
                    other => Status::internal(other.to_string()),
                }),
        ))
    }

    /// Run an update once, or once per parameter row; total rows affected.
    async fn update(
        &self,
        principal: &Principal,
        sql: &str,
        params: Option<RecordBatch>,
    ) -> Result<u64> {
        let s = &self.services;
        let Some(p) = params else {
            return s
                .query
                .execute_update(&s.ingest, principal, sql, None)
                .await;
        };
        let mut total = 0;
        for row in 0..p.num_rows() {
            total += s
                .query
                .execute_update(&s.ingest, principal, sql, Some(params_row(&p, row)?))
                .await?;
        }
        Ok(total)
    }
}

fn params_row(batch: &RecordBatch, row: usize) -> Result<datafusion::common::ParamValues> {
    params::row_params(batch, row)
}

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

/// Largest parameter set accepted for a prepared statement.
const MAX_PARAM_BYTES: usize = 64 * 1024 * 1024;
/// Most parameter rows (executions) one bind may carry.
const MAX_PARAM_ROWS: usize = 65_536;

fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Error::Internal(e.to_string()))?;
    Ok(bytes)
}

/// A `FlightInfo` whose one endpoint's ticket is `ticket`.
fn flight_info(
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
fn command_ticket(cmd: &impl ProstMessageExt) -> Ticket {
    Ticket::new(cmd.as_any().encode_to_vec())
}

/// Stream a single batch (metadata answers, update counts).
fn one_batch(schema: SchemaRef, batch: RecordBatch) -> BoxStream<arrow_flight::FlightData> {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::iter([Ok(batch)]))
            .map_err(Status::from),
    )
}

fn rows_affected(n: u64) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        update_result_schema(),
        vec![std::sync::Arc::new(Int64Array::from(vec![n as i64]))],
    )?)
}

/// Read a parameter stream into one batch (`None` if it carried no rows).
async fn read_params(stream: PeekableFlightDataStream) -> Result<Option<RecordBatch>> {
    let mut batches = vec![];
    let (mut bytes, mut rows) = (0, 0);
    let mut s = std::pin::pin!(batches_of(stream, MAX_PARAM_BYTES));
    while let Some(b) = futures::StreamExt::next(&mut s).await {
        let b = b?;
        bytes += crate::ingest::batch_bytes(&b);
        if bytes > MAX_PARAM_BYTES {
            return Err(Error::ResourceExhausted(
                "parameter set larger than 64 MiB".into(),
            ));
        }
        rows += b.num_rows();
        // Null-typed columns cost no bytes whatever row count they claim,
        // and an update runs once per row: bound the rows too.
        if rows > MAX_PARAM_ROWS {
            return Err(Error::InvalidArgument(format!(
                "bind at most {MAX_PARAM_ROWS} parameter rows per execution"
            )));
        }
        if b.num_rows() > 0 {
            batches.push(b);
        }
    }
    match batches.first() {
        None => Ok(None),
        Some(first) => Ok(Some(arrow::compute::concat_batches(
            &first.schema(),
            &batches,
        )?)),
    }
}

/// CloseSession's result (`arrow.flight.protocol.CloseSessionResult`), not
/// generated by arrow-flight 58.
#[derive(Clone, PartialEq, prost::Message)]
struct CloseSessionResult {
    #[prost(int32, tag = "1")]
    status: i32,
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
fn batches_of(
    stream: PeekableFlightDataStream,
    max_decoded: usize,
) -> impl Stream<Item = Result<arrow::array::RecordBatch>> + Send {
    let checked = stream.map_err(FlightError::from).and_then(move |data| {
        let checked = ipc::check_declared_sizes(&data, max_decoded)
            .map(|()| data)
            .map_err(|e| FlightError::Tonic(Box::new(Status::from(e))));
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
        let ticket = StatementTicket::Query(query.query.clone()).encode();
        let (schema, ticket) = self
            .plan_statement(&principal, &query.query, None, ticket)
            .await?;
        let info = flight_info(&schema, ticket, request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.principal(&request)?;
        match StatementTicket::decode(&ticket)? {
            StatementTicket::Query(sql) => {
                Ok(Response::new(self.execute(&principal, &sql, None).await?))
            }
            StatementTicket::Updated(n) => Ok(Response::new(one_batch(
                update_result_schema(),
                rows_affected(n)?,
            ))),
        }
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request)?;
        if cmd.transaction_id.is_some() {
            return Err(Error::Unsupported("transactions are not supported".into()).into());
        }
        Ok(self.update(&principal, &cmd.query, None).await? as i64)
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let principal = self.principal(&request)?;
        if query.transaction_id.is_some() {
            return Err(Error::Unsupported("transactions are not supported".into()).into());
        }
        let sql = params::number_placeholders(&query.query)?;
        let update = is_update(&sql);
        let (dataset, parameters) = if update {
            (update_result_schema(), Schema::empty())
        } else {
            let df = self.services.query.plan(&principal, &sql).await?;
            let mut ids: Vec<(usize, String, Option<arrow::datatypes::DataType>)> = df
                .logical_plan()
                .get_parameter_types()
                .map_err(Error::from)?
                .into_iter()
                .map(|(id, t)| {
                    (
                        id.trim_start_matches('$').parse().unwrap_or(usize::MAX),
                        id,
                        t,
                    )
                })
                .collect();
            ids.sort();
            let fields: Vec<_> = ids
                .into_iter()
                .map(|(_, id, t)| {
                    arrow::datatypes::Field::new(
                        id,
                        t.unwrap_or(arrow::datatypes::DataType::Null),
                        true,
                    )
                })
                .collect();
            (client_schema(&df), Schema::new(fields))
        };
        let handle = self.services.prepared.create(
            &principal.token_id,
            Statement {
                sql,
                is_update: update,
                params: None,
            },
        )?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema: schema_bytes(&dataset)?,
            parameter_schema: schema_bytes(&parameters)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let principal = self.principal(&request)?;
        let handle = cmd.prepared_statement_handle;
        self.services.prepared.get(&principal.token_id, &handle)?;
        let params = read_params(request.into_inner()).await?;
        self.services
            .prepared
            .bind(&principal.token_id, &handle, params)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let principal = self.principal(&request)?;
        let stmt = self
            .services
            .prepared
            .get(&principal.token_id, &cmd.prepared_statement_handle)?;
        let (schema, ticket) = self
            .plan_statement(&principal, &stmt.sql, stmt.params, command_ticket(&cmd))
            .await?;
        let info = flight_info(&schema, ticket, request.into_inner())?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.principal(&request)?;
        let stmt = self
            .services
            .prepared
            .get(&principal.token_id, &cmd.prepared_statement_handle)?;
        Ok(Response::new(
            self.execute(&principal, &stmt.sql, stmt.params).await?,
        ))
    }

    async fn do_put_prepared_statement_update(
        &self,
        cmd: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let principal = self.principal(&request)?;
        let stmt = self
            .services
            .prepared
            .get(&principal.token_id, &cmd.prepared_statement_handle)?;
        if !stmt.is_update {
            return Err(Error::InvalidArgument(
                "this prepared statement is a query; execute it with GetFlightInfo/DoGet".into(),
            )
            .into());
        }
        let params = read_params(request.into_inner()).await?.or(stmt.params);
        Ok(self.update(&principal, &stmt.sql, params).await? as i64)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        let principal = self.principal(&request)?;
        Ok(self
            .services
            .prepared
            .close(&principal.token_id, &query.prepared_statement_handle)?)
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        request: Request<Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        self.principal(&request)?;
        Err(Error::Unsupported(
            "transactions are not supported: every ingest and update commits atomically on its own"
                .into(),
        )
        .into())
    }

    async fn do_action_cancel_query(
        &self,
        _query: ActionCancelQueryRequest,
        request: Request<Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        self.principal(&request)?;
        // Results are streamed: a client cancels by dropping the DoGet stream.
        Ok(ActionCancelQueryResult {
            // CancelResult::NotCancellable (its enum module is not exported).
            result: 3,
        })
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        self.principal(&request)?;
        let body = match request.get_ref().r#type.as_str() {
            // Nothing runs between calls (results stream from DoGet, which
            // the client cancels by dropping it), so there is nothing to cancel.
            "CancelFlightInfo" => {
                CancelFlightInfoResult::new(CancelStatus::NotCancellable).encode_to_vec()
            }
            // Sessions hold no server state beyond prepared statements,
            // which expire on their own.
            "CloseSession" => CloseSessionResult { status: 1 }.encode_to_vec(),
            other => {
                return Err(Status::unimplemented(format!(
                    "unknown action '{other}'; see ListActions for the supported ones"
                )));
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(result)]))))
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<arrow_flight::ActionType, Status>>> {
        Some(vec![
            Ok(arrow_flight::ActionType {
                r#type: "CancelFlightInfo".into(),
                description: "Answers NOT_CANCELLABLE: cancel by dropping the DoGet stream".into(),
            }),
            Ok(arrow_flight::ActionType {
                r#type: "CloseSession".into(),
                description: "Ends the client session (no server state to release)".into(),
            }),
        ])
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(request, query.into_builder().schema(), &query)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.principal(&request)?;
        let schema = query.into_builder().schema();
        let batch = metadata::catalogs(&self.services.query, &principal, query).await?;
        Ok(Response::new(one_batch(schema, batch)))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(request, query.clone().into_builder().schema(), &query)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.principal(&request)?;
        let schema = query.clone().into_builder().schema();
        let batch = metadata::db_schemas(&self.services.query, &principal, query).await?;
        Ok(Response::new(one_batch(schema, batch)))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(request, query.clone().into_builder().schema(), &query)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let principal = self.principal(&request)?;
        let schema = query.clone().into_builder().schema();
        let batch = metadata::tables(&self.services.query, &principal, query).await?;
        Ok(Response::new(one_batch(schema, batch)))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(request, query.into_builder().schema(), &query)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        let schema = query.into_builder().schema();
        Ok(Response::new(one_batch(
            schema,
            metadata::table_types(query)?,
        )))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(
            request,
            query.into_builder(metadata::xdbc_type_info()).schema(),
            &query,
        )
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.principal(&request)?;
        let builder = query.into_builder(metadata::xdbc_type_info());
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(one_batch(schema, batch)))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(request, metadata::primary_keys_schema(), &query)
    }

    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        // Iceberg tables have no primary keys.
        self.empty_answer(request, metadata::primary_keys_schema())
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(request, metadata::foreign_keys_schema(), &query)
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.empty_answer(request, metadata::foreign_keys_schema())
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(request, metadata::foreign_keys_schema(), &query)
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.empty_answer(request, metadata::foreign_keys_schema())
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(request, metadata::foreign_keys_schema(), &query)
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.empty_answer(request, metadata::foreign_keys_schema())
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
            .ingest(
                &principal,
                &target,
                mode,
                request_id(
                    &request,
                    cmd.options.get(REQUEST_ID_OPTION).map(String::as_str),
                )
                .as_deref(),
                batches_of(
                    request.into_inner(),
                    self.services.ingest.max_stream_bytes(),
                ),
            )
            .await?;
        tracing::debug!(token_id = %principal.token_id, ?target, rows = outcome.rows, files = outcome.files.len(), "ingested");
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
        let app_metadata_id = match &first {
            Some(Ok(data)) if !data.app_metadata.is_empty() => {
                Some(String::from_utf8_lossy(&data.app_metadata).into_owned())
            }
            _ => None,
        };
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
            .ingest(
                &principal,
                &target,
                mode,
                request_id(&request, app_metadata_id.as_deref()).as_deref(),
                batches_of(
                    request.into_inner(),
                    self.services.ingest.max_stream_bytes(),
                ),
            )
            .await?;
        tracing::debug!(token_id = %principal.token_id, ?target, rows = outcome.rows, "ingested (path)");
        Ok(Response::new(put_result(outcome.rows)))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.command_info(
            request,
            query.clone().into_builder(&self.sql_info).schema(),
            &query,
        )
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
        Ok(Response::new(one_batch(schema, batch)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
