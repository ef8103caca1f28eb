//! What SQL a caller may run. An allow-list on the parsed statement (only
//! queries, `EXPLAIN` of queries and `SHOW`), then a check of the logical
//! plan, so nothing that parses as a query can smuggle in DDL, DML or
//! settings changes (e.g. `SELECT … INTO`).

use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;

use crate::error::{Error, Result};

/// Reject statements that are not read-only queries.
pub fn check_statement(statement: &DFStatement) -> Result<()> {
    let denied = |what: &str| {
        Err(Error::PermissionDenied(format!(
            "{what} is not allowed: Raindrop accepts read-only queries over Flight SQL; \
             write data with Flight DoPut / ADBC adbc_ingest"
        )))
    };
    match statement {
        DFStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_)
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ExplainTable { .. } => Ok(()),
            Statement::Explain {
                statement,
                analyze: _,
                ..
            } => check_statement(&DFStatement::Statement(statement.clone())),
            Statement::Set(_) => denied("changing settings"),
            Statement::Copy { .. } => denied("COPY"),
            Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_) => {
                denied("modifying tables with SQL")
            }
            Statement::CreateTable(_)
            | Statement::CreateView { .. }
            | Statement::CreateSchema { .. }
            | Statement::CreateFunction(_)
            | Statement::Drop { .. }
            | Statement::Truncate { .. }
            | Statement::AlterTable { .. } => denied("DDL"),
            _ => denied("this statement"),
        },
        DFStatement::Explain(e) => check_statement(&e.statement),
        DFStatement::CreateExternalTable(_) => denied("CREATE EXTERNAL TABLE"),
        DFStatement::CopyTo(_) => denied("COPY"),
        DFStatement::Reset(_) => denied("changing settings"),
    }
}

/// Second line of defence on the planned query.
pub fn check_plan(plan: &LogicalPlan) -> Result<()> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| Error::PermissionDenied(format!("{e}: only read-only queries are allowed")))
}
