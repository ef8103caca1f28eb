//! SQL that writes: `CREATE TABLE … AS SELECT`, `CREATE TABLE (…)`,
//! `INSERT INTO`, `DROP TABLE` — only in the caller's own schemas, and
//! always through the same ingest path as `DoPut` (one writer, one set of
//! validation rules). `raw_events` is appended to by ingest only; its rows
//! are removed by `DELETE … WHERE` (erasure, [`super::erase`]), only ever
//! in one project's partitions, and its schema is evolved by an admin's
//! `ALTER TABLE` ([`super::alter`]).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Field;
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionState;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{DdlStatement, DmlStatement, Expr, LogicalPlan, WriteOp};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::scalar::ScalarValue;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{ObjectType, Statement};
use futures::{StreamExt, TryStreamExt};
use iceberg::TableIdent;

use super::{QueryEngine, alter, params};
use crate::catalog::evolve::evolve_schema;
use crate::error::{Error, Result};
use crate::ingest::{Ingestor, Mode, Target};
use crate::tenant::Principal;

/// Allow-list for update statements.
fn check_update_statement(statement: &DFStatement) -> Result<()> {
    let DFStatement::Statement(s) = statement else {
        return Err(Error::PermissionDenied(
            "only CREATE TABLE [AS SELECT], INSERT INTO, DROP TABLE, DELETE FROM raw_events and (admin) ALTER TABLE raw_events are allowed as updates"
                .into(),
        ));
    };
    match s.as_ref() {
        Statement::CreateTable(_) | Statement::Insert(_) | Statement::Delete(_) => Ok(()),
        s if alter::is_schema_change(s) => Ok(()),
        Statement::Drop {
            object_type: ObjectType::Table,
            ..
        } => Ok(()),
        Statement::CreateView { .. } => Err(Error::Unsupported(
            "CREATE VIEW is not supported yet; use CREATE TABLE … AS SELECT or a query".into(),
        )),
        Statement::Query(_) => Err(Error::InvalidArgument(
            "this is a query: run it with CommandStatementQuery (cursor.execute), not as an update"
                .into(),
        )),
        _ => Err(Error::PermissionDenied(
            "only CREATE TABLE [AS SELECT], INSERT INTO, DROP TABLE, DELETE FROM raw_events and (admin) ALTER TABLE raw_events are allowed as updates"
                .into(),
        )),
    }
}

/// The project a `DELETE` on `raw_events` erases from, and its condition.
/// A tenant erases in its own project only (naming another one is refused,
/// not silently ignored); an admin must name exactly one project.
fn delete_scope(principal: &Principal, input: &LogicalPlan) -> Result<(String, Expr)> {
    let LogicalPlan::Filter(filter) = input else {
        return Err(Error::InvalidArgument(
            "DELETE needs a WHERE clause naming the rows to erase (e.g. WHERE session_id = '…'); to remove a whole project, an operator runs `raindrop project delete`".into(),
        ));
    };
    // Coerced and folded as a query's filters are (`DATE '…'` becomes a
    // date literal, `now()` a timestamp), so `event_day` and `project_id`
    // conditions are recognised below and in the erasure's pruning.
    let schema = filter.input.schema().clone();
    let simplifier = ExprSimplifier::new(
        SimplifyContext::default()
            .with_schema(schema.clone())
            .with_query_execution_start_time(Some(chrono::Utc::now())),
    );
    let predicate = simplifier.simplify(simplifier.coerce(filter.predicate.clone(), &schema)?)?;
    let named: Vec<String> = split_conjunction(&predicate)
        .into_iter()
        .filter_map(project_equality)
        .collect();
    let project = if principal.is_admin() {
        match named.as_slice() {
            [one] => {
                crate::tenant::names::validate_project_id(one)?;
                one.clone()
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "an admin DELETE must name exactly one project: add AND project_id = '<project>' to the WHERE clause".into(),
                ));
            }
        }
    } else {
        let own = principal.project()?.to_string();
        if let Some(other) = named.iter().find(|p| **p != own) {
            return Err(Error::PermissionDenied(format!(
                "this token can only delete rows of project {own}, not {other}"
            )));
        }
        own
    };
    Ok((project, predicate))
}

/// `x` of a conjunct `project_id = 'x'` (either side).
fn project_equality(e: &Expr) -> Option<String> {
    let Expr::BinaryExpr(b) = e else {
        return None;
    };
    if b.op != datafusion::logical_expr::Operator::Eq {
        return None;
    }
    let is_project =
        |e: &Expr| matches!(e, Expr::Column(c) if c.name == crate::schema::col::PROJECT_ID);
    let text = |e: &Expr| match e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    };
    if is_project(&b.left) {
        text(&b.right)
    } else if is_project(&b.right) {
        text(&b.left)
    } else {
        None
    }
}

fn target_of(ingest: &Ingestor, name: &TableReference) -> Result<Target> {
    let target = ingest.resolve_target(name.catalog(), name.schema(), name.table())?;
    match target {
        Target::RawEvents => Err(Error::PermissionDenied(
            "raw_events cannot be modified with SQL; append telemetry with DoPut / adbc_ingest"
                .into(),
        )),
        t => Ok(t),
    }
}

/// Run `df` and feed its rows (led by an empty batch carrying the schema,
/// so a zero-row result still creates its table) into `target`.
async fn write_query(
    ingest: &Ingestor,
    principal: &Principal,
    target: &Target,
    mode: Mode,
    df: DataFrame,
) -> Result<u64> {
    let df = super::views::without_views(df)?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let stream = df.execute_stream().await?;
    let batches = futures::stream::once(async move { Ok(RecordBatch::new_empty(schema)) })
        .chain(stream.map_err(Error::from));
    Ok(ingest
        .ingest(principal, target, mode, None, batches)
        .await?
        .rows)
}

/// A checked update statement (one per request, moved once: its size
/// does not matter).
#[allow(clippy::large_enum_variant)]
enum Update {
    /// Planned by DataFusion.
    Plan(SessionState, LogicalPlan),
    /// `ALTER TABLE` / `COMMENT ON COLUMN`, which DataFusion does not plan.
    SchemaChange(Box<Statement>),
}

impl QueryEngine {
    /// Check and plan an update statement for `principal`, without running it.
    async fn plan_update(&self, principal: &Principal, sql: &str) -> Result<Update> {
        if !(principal.role.can_read() && principal.role.can_write()) {
            return Err(Error::PermissionDenied(format!(
                "SQL updates need a read_write token; this token's role is '{}'",
                principal.role
            )));
        }
        let sql = params::number_placeholders(sql)?;
        let ctx = self.session(principal).await?;
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(&sql, &dialect)?;
        check_update_statement(&statement)?;
        if let DFStatement::Statement(s) = &statement
            && alter::is_schema_change(s)
        {
            return Ok(Update::SchemaChange(s.clone()));
        }
        let plan = state.statement_to_plan(statement).await?;
        Ok(Update::Plan(state, plan))
    }

    /// Evolve `raw_events`' schema (admin only: every project shares it).
    async fn change_schema(
        &self,
        ingest: &Ingestor,
        principal: &Principal,
        statement: &Statement,
    ) -> Result<u64> {
        let (name, changes) = alter::schema_changes(statement)?;
        let (catalog, schema, table) = match name.as_slice() {
            [t] => (None, None, t),
            [s, t] => (None, Some(s.as_str()), t),
            [c, s, t] => (Some(c.as_str()), Some(s.as_str()), t),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "'{}' is not a table name",
                    name.join(".")
                )));
            }
        };
        if ingest.resolve_target(catalog, schema, table)? != Target::RawEvents {
            return Err(Error::Unsupported(
                "ALTER TABLE changes the schema of wildedge.raw_events only; change your own tables with CREATE OR REPLACE TABLE … AS SELECT".into(),
            ));
        }
        if !principal.is_admin() {
            return Err(Error::PermissionDenied(
                "only an admin token can change the schema of raw_events: every project shares it"
                    .into(),
            ));
        }
        let ident = self.warehouse.raw_events_ident();
        let evolved = evolve_schema(&self.warehouse, &ident, &changes).await?;
        tracing::info!(
            table = %ident, changed = evolved.changed, schema_id = evolved.schema.schema_id(),
            changes = ?changes, "schema changed"
        );
        Ok(0)
    }

    /// The parameters of update `sql` (`INSERT … VALUES (?, ?)` takes the
    /// target columns' types), for its prepared-statement schema.
    pub async fn update_parameters(&self, principal: &Principal, sql: &str) -> Result<Vec<Field>> {
        match self.plan_update(principal, sql).await? {
            Update::Plan(_, plan) => params::parameter_fields(&plan),
            Update::SchemaChange(_) => Ok(vec![]),
        }
    }

    /// Execute an update statement for `principal` (with row `row` of a
    /// parameter batch, if any); returns affected rows.
    pub async fn execute_update(
        &self,
        ingest: &Ingestor,
        principal: &Principal,
        sql: &str,
        params: Option<(&RecordBatch, usize)>,
    ) -> Result<u64> {
        let (state, mut plan) = match self.plan_update(principal, sql).await? {
            Update::Plan(state, plan) => (state, plan),
            Update::SchemaChange(s) => return self.change_schema(ingest, principal, &s).await,
        };
        // An update's SELECT is a query like any other: it takes a slot.
        let _slot = self.admit(principal).await?;
        if let Some((batch, row)) = params {
            let values = params::bind(&plan, batch, row)?;
            plan = plan.with_param_values(values)?;
        }
        match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(c)) => {
                let target = target_of(ingest, &c.name)?;
                if c.temporary {
                    return Err(Error::InvalidArgument(
                        "temporary tables are not supported".into(),
                    ));
                }
                let mode = if c.or_replace {
                    Mode::Replace
                } else if c.if_not_exists {
                    if self.tenant_table_exists(principal, &target).await? {
                        return Ok(0);
                    }
                    Mode::Create
                } else {
                    Mode::Create
                };
                let df = DataFrame::new(state.clone(), c.input.as_ref().clone());
                write_query(ingest, principal, &target, mode, df).await
            }
            LogicalPlan::Dml(DmlStatement {
                table_name,
                op,
                input,
                ..
            }) => match op {
                WriteOp::Delete => {
                    let target = ingest.resolve_target(
                        table_name.catalog(),
                        table_name.schema(),
                        table_name.table(),
                    )?;
                    if !matches!(target, Target::RawEvents) {
                        return Err(Error::Unsupported(
                            "DELETE erases rows of wildedge.raw_events; replace your own tables with CREATE OR REPLACE TABLE … AS SELECT".into(),
                        ));
                    }
                    let (project, predicate) = delete_scope(principal, &input)?;
                    let done =
                        super::erase::erase(&self.warehouse, ingest, &project, predicate).await?;
                    tracing::info!(
                        project = %project, rows = done.rows, files_read = done.files_read, bytes_read = done.bytes_read,
                        files_replaced = done.files_replaced, bytes_written = done.bytes_written,
                        snapshot = ?done.snapshot_id, "rows erased from raw_events"
                    );
                    Ok(done.rows)
                }
                WriteOp::Insert(InsertOp::Append) => {
                    let target = target_of(ingest, &table_name)?;
                    let df = DataFrame::new(state.clone(), input.as_ref().clone());
                    write_query(ingest, principal, &target, Mode::Append, df).await
                }
                other => Err(Error::Unsupported(format!(
                    "{other} is not supported; Raindrop tables are append-only (use CREATE OR REPLACE TABLE … AS SELECT)"
                ))),
            },
            LogicalPlan::Ddl(DdlStatement::DropTable(d)) => {
                let target = target_of(ingest, &d.name)?;
                let ident = self.tenant_ident(principal, &target)?;
                if self.warehouse.catalog.table_exists(&ident).await? {
                    // With its files: a dropped table is not in the catalog,
                    // so no expiry would ever find them.
                    self.warehouse.catalog.purge_table(&ident).await?;
                    Ok(0)
                } else if d.if_exists {
                    Ok(0)
                } else {
                    Err(Error::NotFound(format!("table '{}' not found", d.name)))
                }
            }
            _ => Err(Error::PermissionDenied(
                "this statement is not allowed as an update".into(),
            )),
        }
    }

    fn tenant_ident(&self, principal: &Principal, target: &Target) -> Result<TableIdent> {
        match target {
            Target::Tenant { schema, table } => Ok(TableIdent::new(
                self.warehouse
                    .tenant_namespace(principal.project()?, schema),
                table.clone(),
            )),
            Target::RawEvents => Err(Error::PermissionDenied(
                "raw_events cannot be modified with SQL".into(),
            )),
        }
    }

    async fn tenant_table_exists(&self, principal: &Principal, target: &Target) -> Result<bool> {
        let ident = self.tenant_ident(principal, target)?;
        Ok(self.warehouse.catalog.table_exists(&ident).await?)
    }
}
