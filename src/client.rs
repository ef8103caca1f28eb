//! A small Flight SQL client for Raindrop, used by the demo, tests and
//! benchmarks. Any Flight SQL client works the same way; this one only
//! saves the boilerplate.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use futures::TryStreamExt;
use tonic::transport::{Channel, Endpoint};

/// Errors as gRPC statuses, so callers can check codes.
pub type ClientResult<T> = std::result::Result<T, tonic::Status>;

fn status(e: FlightError) -> tonic::Status {
    match e {
        FlightError::Tonic(s) => *s,
        FlightError::ExternalError(inner) => match inner.downcast::<FlightError>() {
            Ok(fe) => status(*fe),
            Err(other) => tonic::Status::unknown(other.to_string()),
        },
        other => tonic::Status::unknown(other.to_string()),
    }
}

/// ADBC-style ingest modes.
#[derive(Debug, Clone, Copy)]
pub enum IngestMode {
    /// Fail if the table exists.
    Create,
    /// Fail if the table does not exist.
    Append,
    /// Drop and recreate.
    Replace,
    /// Create if missing, else append.
    CreateAppend,
}

impl IngestMode {
    fn options(self) -> TableDefinitionOptions {
        let (n, e) = match self {
            IngestMode::Create => (TableNotExistOption::Create, TableExistsOption::Fail),
            IngestMode::Append => (TableNotExistOption::Fail, TableExistsOption::Append),
            IngestMode::Replace => (TableNotExistOption::Create, TableExistsOption::Replace),
            IngestMode::CreateAppend => (TableNotExistOption::Create, TableExistsOption::Append),
        };
        TableDefinitionOptions {
            if_not_exist: n as i32,
            if_exists: e as i32,
        }
    }
}

/// A connected client carrying a bearer token.
#[derive(Debug, Clone)]
pub struct RaindropClient {
    inner: FlightSqlServiceClient<Channel>,
    token: String,
}

impl RaindropClient {
    /// Connect to `url` (e.g. `http://127.0.0.1:50051`) with `token`.
    pub async fn connect(url: &str, token: &str) -> ClientResult<Self> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            // Query results arrive as multi-megabyte messages: h2's default
            // 64 KiB windows would stall the server every 64 KiB.
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20);
        Self::connect_endpoint(endpoint, token).await
    }

    /// Connect through a configured endpoint (e.g. with TLS settings).
    pub async fn connect_endpoint(endpoint: Endpoint, token: &str) -> ClientResult<Self> {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e}: {e:?}")))?;
        let mut inner = FlightSqlServiceClient::new(channel);
        inner.set_token(token.to_string());
        Ok(Self {
            inner,
            token: token.to_string(),
        })
    }

    /// Wrap `message` in a request carrying this client's bearer token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        if let Ok(v) = format!("Bearer {}", self.token).parse() {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    /// `GetFlightInfo` for any Flight SQL command.
    pub async fn flight_info<M: arrow_flight::sql::ProstMessageExt>(
        &mut self,
        cmd: M,
    ) -> ClientResult<arrow_flight::FlightInfo> {
        use prost::Message;
        let descriptor = arrow_flight::FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
        let req = self.request(descriptor);
        Ok(self
            .inner
            .inner_mut()
            .get_flight_info(req)
            .await?
            .into_inner())
    }

    /// Run a Flight action; returns the result bodies.
    pub async fn action(
        &mut self,
        action: arrow_flight::Action,
    ) -> ClientResult<Vec<bytes::Bytes>> {
        let req = self.request(action);
        let results: Vec<arrow_flight::Result> = self
            .inner
            .inner_mut()
            .do_action(req)
            .await?
            .into_inner()
            .try_collect()
            .await?;
        Ok(results.into_iter().map(|r| r.body).collect())
    }

    /// The underlying arrow-flight client.
    pub fn inner_mut(&mut self) -> &mut FlightSqlServiceClient<Channel> {
        &mut self.inner
    }

    /// Run `sql` and collect all result batches, with the announced schema.
    pub async fn query_with_schema(
        &mut self,
        sql: &str,
    ) -> ClientResult<(SchemaRef, Vec<RecordBatch>)> {
        let info = self
            .inner
            .execute(sql.to_string(), None)
            .await
            .map_err(status)?;
        let schema = std::sync::Arc::new(
            info.clone()
                .try_decode_schema()
                .map_err(|e| tonic::Status::internal(e.to_string()))?,
        );
        let mut out = vec![];
        for endpoint in info.endpoint {
            let ticket = endpoint
                .ticket
                .ok_or_else(|| tonic::Status::internal("endpoint without ticket"))?;
            out.extend(self.fetch(ticket).await?);
        }
        Ok((schema, out))
    }

    /// `DoGet` one ticket and collect its batches.
    pub async fn fetch(&mut self, ticket: arrow_flight::Ticket) -> ClientResult<Vec<RecordBatch>> {
        let stream = self.inner.do_get(ticket).await.map_err(status)?;
        stream.try_collect().await.map_err(status)
    }

    /// Run `sql` and collect all result batches.
    pub async fn query(&mut self, sql: &str) -> ClientResult<Vec<RecordBatch>> {
        Ok(self.query_with_schema(sql).await?.1)
    }

    /// Ingest `batches` into `schema.table` (schema `None` = default);
    /// returns the committed row count.
    pub async fn ingest(
        &mut self,
        schema: Option<&str>,
        table: &str,
        mode: IngestMode,
        batches: Vec<RecordBatch>,
    ) -> ClientResult<i64> {
        self.ingest_with_id(schema, table, mode, None, batches)
            .await
    }

    /// Like [`Self::ingest`], with an optional request id that makes a
    /// retry after a timeout unable to duplicate rows.
    pub async fn ingest_with_id(
        &mut self,
        schema: Option<&str>,
        table: &str,
        mode: IngestMode,
        request_id: Option<&str>,
        batches: Vec<RecordBatch>,
    ) -> ClientResult<i64> {
        let cmd = ingest_command(schema, table, mode, request_id);
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        self.inner.execute_ingest(cmd, stream).await.map_err(status)
    }

    /// Append to `raw_events` the batches `stream` yields, as one `DoPut`
    /// that stays open until the stream ends (a collector forwarding rows
    /// as they come); idempotent by `request_id`.
    pub async fn ingest_events_stream(
        &mut self,
        request_id: &str,
        stream: impl futures::Stream<Item = RecordBatch> + Send + 'static,
    ) -> ClientResult<i64> {
        let table = crate::schema::RAW_EVENTS;
        let cmd = ingest_command(None, table, IngestMode::Append, Some(request_id));
        use futures::StreamExt;
        self.inner
            .execute_ingest(cmd, stream.map(Ok))
            .await
            .map_err(status)
    }

    /// Append telemetry rows to `raw_events` idempotently: retrying with the
    /// same `request_id` after a timeout cannot duplicate rows.
    pub async fn ingest_events_once(
        &mut self,
        request_id: &str,
        batches: Vec<RecordBatch>,
    ) -> ClientResult<i64> {
        let table = crate::schema::RAW_EVENTS;
        self.ingest_with_id(None, table, IngestMode::Append, Some(request_id), batches)
            .await
    }

    /// Append telemetry rows to `raw_events`.
    pub async fn ingest_events(&mut self, batches: Vec<RecordBatch>) -> ClientResult<i64> {
        self.ingest(None, crate::schema::RAW_EVENTS, IngestMode::Append, batches)
            .await
    }
}

/// The `DoPut` command appending to (or creating) `schema.table`.
fn ingest_command(
    schema: Option<&str>,
    table: &str,
    mode: IngestMode,
    request_id: Option<&str>,
) -> CommandStatementIngest {
    let options = request_id
        .map(|id| (crate::flight::REQUEST_ID_OPTION.to_string(), id.to_string()))
        .into_iter()
        .collect();
    CommandStatementIngest {
        table_definition_options: Some(mode.options()),
        table: table.to_string(),
        schema: schema.map(str::to_string),
        catalog: None,
        temporary: false,
        transaction_id: None,
        options,
    }
}
