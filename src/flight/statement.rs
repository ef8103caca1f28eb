//! Statements and prepared statements: plan a query for `GetFlightInfo`,
//! stream it for `DoGet`, run updates (once per parameter row), and create
//! and bind prepared statements.

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::Ticket;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{ActionCreatePreparedStatementResult, CommandPreparedStatementUpdate};
use datafusion::dataframe::DataFrame;
use futures::TryStreamExt;
use tonic::Status;

use super::encode::{one_batch, rows_affected, schema_bytes};
use super::prepared::Statement;
use super::put::batches_of;
use super::ticket::StatementTicket;
use super::{RaindropFlightService, columns};
use crate::batch::batch_bytes;
use crate::error::{Error, Result};
use crate::query::{is_update, params, update_result_schema};
use crate::tenant::Principal;

/// Largest parameter set accepted for a prepared statement.
const MAX_PARAM_BYTES: usize = 64 * 1024 * 1024;
/// Most parameter rows (executions) one bind may carry.
const MAX_PARAM_ROWS: usize = 65_536;

impl RaindropFlightService {
    /// A planned query's result schema, with Flight SQL column metadata.
    fn result_schema(&self, df: &DataFrame) -> SchemaRef {
        columns::result_schema(df.schema(), &self.services.query.warehouse().catalog_name)
    }

    /// Answer `GetFlightInfo` for `sql`: a query is planned (schema) and
    /// left for `DoGet`; an update runs now, so it has happened when the
    /// call returns (drivers may fetch the result lazily, or never).
    pub(super) async fn plan_statement(
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
            let values = params::bind(df.logical_plan(), p, 0)?;
            df = df.with_param_values(values)?;
        }
        let schema = self.result_schema(&df);
        if params.is_none() {
            self.services.planned.put(&principal.token_id, sql, df);
        }
        Ok((schema, query_ticket))
    }

    /// Execute `sql` for `DoGet`: stream a query's rows, or run an update
    /// (once per parameter row) and return `rows_affected` — the latter only
    /// for clients that `DoGet` a prepared update directly.
    pub(super) async fn execute(
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
            let values = params::bind(df.logical_plan(), p, 0)?;
            df = df.with_param_values(values)?;
        }
        let schema = self.result_schema(&df);
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
                    other => Status::from(Error::Internal(other.to_string())),
                }),
        ))
    }

    /// Run an update once, or once per parameter row; total rows affected.
    pub(super) async fn update(
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
                .execute_update(&s.ingest, principal, sql, Some((&p, row)))
                .await?;
        }
        Ok(total)
    }

    /// Create a prepared statement: plan it once to learn its result and
    /// parameter schemas (`$n` order), and register a handle.
    pub(super) async fn prepare(
        &self,
        principal: &Principal,
        query: &str,
    ) -> Result<ActionCreatePreparedStatementResult> {
        let sql = params::number_placeholders(query)?;
        let update = is_update(&sql);
        let (dataset, parameters) = if update {
            // An update that cannot be planned yet (its table is created
            // first) fails when executed, as before: no parameter types.
            let fields = match self.services.query.update_parameters(principal, &sql).await {
                Ok(fields) => fields,
                Err(e) => {
                    tracing::debug!(error = %e, "prepared update not planned");
                    vec![]
                }
            };
            (update_result_schema(), Schema::new(fields))
        } else {
            let df = self.services.query.plan(principal, &sql).await?;
            let fields = params::parameter_fields(df.logical_plan())?;
            (self.result_schema(&df), Schema::new(fields))
        };
        let parameters = columns::parameter_schema(&parameters);
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

    /// Bind the parameters a `DoPut` carries to a prepared statement.
    pub(super) async fn bind(
        &self,
        principal: &Principal,
        handle: &[u8],
        stream: PeekableFlightDataStream,
    ) -> Result<()> {
        self.services.prepared.get(&principal.token_id, handle)?;
        let params = read_params(stream).await?;
        self.services
            .prepared
            .bind(&principal.token_id, handle, params)
    }

    /// Execute a prepared update with the parameters of `stream` (or those
    /// bound before); total rows affected.
    pub(super) async fn execute_prepared_update(
        &self,
        principal: &Principal,
        cmd: &CommandPreparedStatementUpdate,
        stream: PeekableFlightDataStream,
    ) -> Result<u64> {
        let stmt = self
            .services
            .prepared
            .get(&principal.token_id, &cmd.prepared_statement_handle)?;
        if !stmt.is_update {
            return Err(Error::InvalidArgument(
                "this prepared statement is a query; execute it with GetFlightInfo/DoGet".into(),
            ));
        }
        let params = read_params(stream).await?.or(stmt.params);
        self.update(principal, &stmt.sql, params).await
    }
}

/// Read a parameter stream into one batch (`None` if it carried no rows).
async fn read_params(stream: PeekableFlightDataStream) -> Result<Option<RecordBatch>> {
    let mut batches = vec![];
    let (mut bytes, mut rows) = (0, 0);
    let mut s = std::pin::pin!(batches_of(stream, MAX_PARAM_BYTES));
    while let Some(b) = futures::StreamExt::next(&mut s).await {
        let b = b?;
        bytes += batch_bytes(&b);
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
