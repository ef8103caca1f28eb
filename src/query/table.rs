//! DataFusion views of Iceberg tables: the tenant-scoped `raw_events` and a
//! tenant's own tables, plus the schema provider that lists the latter.
//!
//! Tenant scoping happens here, below SQL: whatever the query says, the
//! `raw_events` scan carries `project_id = <caller>` in its Iceberg
//! predicate (so other tenants' files are pruned from the manifests before
//! any data is read), and every planned file is checked to belong to the
//! caller's partition before it may be opened.

use std::any::Any;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use iceberg::expr::Predicate;
use iceberg::scan::FileScanTask;
use iceberg::spec::Transform;
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableIdent};

use super::ScanCaches;
use super::predicate::implied_by_all;
use super::pruning::{event_day_predicate, only_event_day, references_event_day};
use super::scan::{IcebergScanExec, ScanRequest};
use crate::catalog::Warehouse;
use crate::schema::col;
use crate::schema::evolve::retyped_columns;
use crate::schema::partition::only_spec;
use crate::schema::views::scan_schema;
use crate::tenant::scope::{check_file_scope, scope_predicate};

/// A table provider over one Iceberg table snapshot.
#[derive(Debug)]
pub struct RaindropTable {
    table: Table,
    label: String,
    schema: SchemaRef,
    /// `Some(project)`: only this project's rows and files (tenant view of
    /// `raw_events`). `None`: the whole table (tenant tables, admin).
    scope: Option<String>,
    /// Expose the virtual `event_day` column.
    virtual_day: bool,
    /// The table is partitioned by `day(event_timestamp)` (and never was any
    /// other way): each data file holds one `event_day`, so filters on it
    /// alone are decided per file, exactly.
    exact_days: bool,
    /// Caches shared by every scan of the engine.
    caches: Arc<ScanCaches>,
    /// Acknowledged rows the table does not hold yet (in scope already).
    buffered: Vec<RecordBatch>,
}

impl RaindropTable {
    /// `raw_events` as seen by one project (`None` = admin, all projects),
    /// with that scope's `buffered` rows not committed yet.
    pub fn raw_events(
        table: Table,
        scope: Option<String>,
        caches: Arc<ScanCaches>,
        buffered: Vec<RecordBatch>,
    ) -> DFResult<Self> {
        let mut schema = table_arrow_schema(&table)?;
        let mut fields = schema.fields().to_vec();
        fields.push(Arc::new(Field::new(
            col::EVENT_DAY,
            DataType::Date32,
            false,
        )));
        schema = Schema::new(fields);
        let exact_days = every_file_has_day(&table);
        Ok(Self {
            label: table.identifier().to_string(),
            table,
            schema: Arc::new(schema),
            scope,
            virtual_day: true,
            exact_days,
            caches,
            buffered,
        })
    }

    /// A tenant's own table, shown under `label`.
    pub fn plain(table: Table, label: String, caches: Arc<ScanCaches>) -> DFResult<Self> {
        Ok(Self {
            schema: Arc::new(table_arrow_schema(&table)?),
            table,
            label,
            scope: None,
            virtual_day: false,
            exact_days: false,
            caches,
            buffered: vec![],
        })
    }
}

/// Arrow schema of the table's current schema (field ids included), with
/// strings as views (see [`super::views`]).
fn table_arrow_schema(table: &Table) -> DFResult<Schema> {
    let schema = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(scan_schema(&schema))
}

/// Whether the table's only partition spec has `day(event_timestamp)`, so
/// every data file carries its day (see [`only_spec`]).
fn every_file_has_day(table: &Table) -> bool {
    let Some(ts) = table
        .metadata()
        .current_schema()
        .field_by_name(col::EVENT_TIMESTAMP)
    else {
        return false;
    };
    only_spec(table).is_some_and(|spec| {
        spec.fields()
            .iter()
            .any(|f| f.source_id == ts.id && f.transform == Transform::Day)
    })
}

#[async_trait]
impl TableProvider for RaindropTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DFResult<Vec<TableProviderFilterPushDown>> {
        // Filters on `event_day` alone are decided per file from partition
        // values (see `scan::keep_matching_days`), so no row needs checking.
        // Everything else prunes files, row groups and pages, but DataFusion
        // keeps evaluating it: pruning is an optimisation, never the source
        // of truth.
        Ok(filters
            .iter()
            .map(|f| {
                if self.exact_days && only_event_day(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let mandatory: Option<Predicate> = self.scope.as_ref().map(|p| scope_predicate(p));
        let mut optional = vec![];
        let mut plain_filters = vec![];
        let mut day_filters = vec![];
        for f in filters {
            if self.exact_days && only_event_day(f) {
                day_filters.push(f.clone());
            }
            if self.virtual_day && references_event_day(f) {
                optional.extend(event_day_predicate(f));
            } else {
                plain_filters.push(f.clone());
            }
        }
        optional.extend(implied_by_all(
            &plain_filters,
            &retyped_columns(self.table.metadata()),
        ));
        // Row groups and pages are pruned by the same filters. The scope is
        // not repeated there: it is enforced per file (`check_file_scope`),
        // and every row of an identity-partitioned file has its value.
        let row_filter = conjunction(plain_filters);
        let full = mandatory
            .clone()
            .into_iter()
            .chain(optional.iter().cloned())
            .reduce(Predicate::and);
        let scope = self.scope.clone();
        let file_filter = move |t: &FileScanTask| match &scope {
            Some(p) => check_file_scope(t, p).map_err(|e| e.into_datafusion()),
            None => Ok(()),
        };
        let request = |predicate| ScanRequest {
            label: self.label.clone(),
            full_schema: &self.schema,
            projection,
            predicate,
            row_filter: row_filter.clone(),
            day_filters: day_filters.clone(),
            limit,
            caches: self.caches.clone(),
        };
        let exec =
            match IcebergScanExec::try_new(self.table.clone(), request(full), state, &file_filter)
                .await
            {
                Ok(exec) => exec,
                Err(e) if !optional.is_empty() => {
                    // A pushed-down filter Iceberg cannot bind (e.g. a type it
                    // does not support) must not fail the query: scan with the
                    // mandatory scope only and let DataFusion filter.
                    tracing::debug!(error = %e, "predicate pushdown failed; scanning without it");
                    IcebergScanExec::try_new(
                        self.table.clone(),
                        request(mandatory),
                        state,
                        &file_filter,
                    )
                    .await?
                }
                Err(e) => return Err(e),
            };
        if self.buffered.is_empty() {
            return Ok(Arc::new(exec));
        }
        let buffered =
            super::buffered::plan(state, &self.buffered, &self.schema, projection, filters)?;
        UnionExec::try_new(vec![Arc::new(exec), buffered])
    }
}

/// A tenant's SQL schema: `tenants.<project>.<schema>` in the catalog.
/// Table names are listed when the session is created; tables are loaded
/// only when a query names them.
#[derive(Debug)]
pub struct TenantSchema {
    warehouse: Warehouse,
    namespace: NamespaceIdent,
    sql_schema: String,
    tables: Vec<String>,
    caches: Arc<ScanCaches>,
}

impl TenantSchema {
    /// The schema `namespace` holding `tables` (listed by the caller).
    pub fn new(
        warehouse: Warehouse,
        namespace: NamespaceIdent,
        sql_schema: String,
        tables: Vec<String>,
        caches: Arc<ScanCaches>,
    ) -> Self {
        Self {
            warehouse,
            namespace,
            sql_schema,
            tables,
            caches,
        }
    }
}

#[async_trait]
impl SchemaProvider for TenantSchema {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn table_names(&self) -> Vec<String> {
        self.tables.clone()
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if !self.table_exist(name) {
            return Ok(None);
        }
        let ident = TableIdent::new(self.namespace.clone(), name.to_string());
        let table = self
            .warehouse
            .load_table(&ident)
            .await
            .map_err(|e| e.into_datafusion())?;
        let label = format!("{}.{}", self.sql_schema, name);
        Ok(Some(Arc::new(RaindropTable::plain(
            table,
            label,
            self.caches.clone(),
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.tables.iter().any(|t| t == name)
    }
}
