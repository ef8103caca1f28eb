//! Query: a DataFusion session per request, holding only what the caller
//! may see.
//!
//! Each session has one catalog (named like the Iceberg catalog, `raindrop`
//! by default), with the telemetry schema
//! (`wildedge.raw_events`, tenant-scoped) and the caller's own schemas
//! (e.g. `warehouse.user_outcomes`). Nothing else is registered, so
//! `information_schema` and `SHOW TABLES` list exactly what the caller can
//! read, and names of other tenants resolve to nothing.

pub mod admission;
pub mod alter;
pub mod buffered;
pub mod erase;
pub mod functions;
pub mod limits;
pub mod manifests;
pub mod params;
pub mod policy;
pub mod predicate;
pub mod pruning;
pub mod reader;
pub mod scan;
pub mod table;
pub mod update;
pub mod views;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::catalog::information_schema::{INFORMATION_SCHEMA, InformationSchemaProvider};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::dataframe::DataFrame;
use datafusion::execution::registry::FunctionRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;

use crate::catalog::Warehouse;
use crate::error::{Error, Result};
use crate::schema;
use crate::tenant::Principal;
use crate::tenant::names::DEFAULT_TENANT_SCHEMA;
use admission::{Admission, AdmissionStats};
use limits::{LimitedStream, QueryLimits};
use manifests::ManifestLists;
use reader::FooterCache;
use table::{RaindropTable, TenantSchema};

use crate::ingest::buffer::Buffer;

/// Table type of the tables users create and `raw_events`.
pub const TABLE: &str = "TABLE";
/// Table type of `information_schema`'s read-only tables (the JDBC name for
/// catalog tables, so tools that list `TABLE`s leave them out).
pub const SYSTEM_TABLE: &str = "SYSTEM TABLE";

/// A table as listed by the metadata RPCs.
#[derive(Debug, Clone)]
pub struct TableEntry {
    /// SQL schema name.
    pub db_schema: String,
    /// Table name.
    pub name: String,
    /// [`TABLE`] or [`SYSTEM_TABLE`].
    pub table_type: &'static str,
    /// Arrow schema with client types, when requested; its field metadata
    /// is the Flight layer's to set.
    pub schema: Option<SchemaRef>,
}

/// Everything a principal can see, for the metadata RPCs.
#[derive(Debug, Clone)]
pub struct CatalogObjects {
    /// The one catalog's name.
    pub catalog: String,
    /// Its schemas.
    pub schemas: Vec<String>,
    /// Its tables.
    pub tables: Vec<TableEntry>,
}

/// Whether `sql` writes (CREATE TABLE, INSERT, DROP, CREATE VIEW, DELETE,
/// ALTER TABLE, COMMENT ON COLUMN) rather than reads. Unparsable SQL counts
/// as a query, whose planner then reports the syntax error.
pub fn is_update(sql: &str) -> bool {
    let Ok(statements) = DFParserBuilder::new(sql)
        .build()
        .and_then(|mut p| p.parse_statements())
    else {
        return false;
    };
    matches!(
        statements.front(),
        Some(DFStatement::Statement(s)) if matches!(
            s.as_ref(),
            Statement::CreateTable(_) | Statement::Insert(_) | Statement::Drop { .. } | Statement::CreateView { .. } | Statement::Delete(_)
        ) || alter::is_schema_change(s)
    )
}

/// Result schema of an update run through the query path (`rows_affected`).
pub fn update_result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "rows_affected",
        DataType::Int64,
        false,
    )]))
}

/// Memory for cached Parquet footers (data files are immutable, so entries
/// never go stale; the least recently used are evicted first).
const FOOTER_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Manifest lists kept (one per table snapshot a query read).
const MANIFEST_LIST_CACHE_ENTRIES: usize = 256;

/// Caches shared by every scan of the engine. Both hold immutable files'
/// contents keyed by location, so entries never go stale.
#[derive(Debug)]
pub struct ScanCaches {
    /// Parsed Parquet footers of data files.
    pub footers: Arc<FooterCache>,
    /// Data bytes, on object storage only (local reads have the OS page
    /// cache, which this would only duplicate).
    pub data: Option<Arc<reader::DataCache>>,
    /// Parsed manifest lists of snapshots.
    pub manifest_lists: ManifestLists,
}

/// Builds per-request sessions over the warehouse.
#[derive(Debug, Clone)]
pub struct QueryEngine {
    /// Configuration, functions and planners every session starts from
    /// (building them per request cost ~0.3 ms of each query).
    base: SessionState,
    warehouse: Warehouse,
    limits: QueryLimits,
    admission: Arc<Admission>,
    caches: Arc<ScanCaches>,
    /// Acknowledged `raw_events` rows not committed yet, when ingest is
    /// buffered.
    buffer: Option<Arc<Buffer>>,
}

/// The state sessions are cloned from: DataFusion's own `DATAFUSION_*`
/// variables tune the engine (read once, at start; e.g.
/// `DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS`), Raindrop's settings
/// below always win, and Raindrop's functions are registered.
fn base_state(warehouse: &Warehouse, target_partitions: usize) -> Result<SessionState> {
    let mut config = SessionConfig::from_env()?;
    if std::env::var_os("DATAFUSION_EXECUTION_PARQUET_BLOOM_FILTER_ON_READ").is_none() {
        // Raindrop (like PyIceberg and Spark by default) writes no bloom
        // filters; probing every file for one costs time on each scan.
        config.options_mut().execution.parquet.bloom_filter_on_read = false;
    }
    let config = config
        .with_information_schema(true)
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(&warehouse.catalog_name, DEFAULT_TENANT_SCHEMA)
        .with_target_partitions(target_partitions);
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    state.register_udf(Arc::new(functions::UtcDateTrunc::udf()))?;
    Ok(state)
}

impl QueryEngine {
    /// New engine; `target_partitions == 0` means one per core.
    pub fn new(
        warehouse: Warehouse,
        target_partitions: usize,
        limits: QueryLimits,
    ) -> Result<Self> {
        let target_partitions = if target_partitions == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            target_partitions
        };
        let on_object_storage = !warehouse.warehouse.starts_with("file:");
        let access_log = warehouse.access_log.clone();
        Ok(Self {
            base: base_state(&warehouse, target_partitions)?,
            warehouse,
            limits,
            admission: Admission::new(limits.admission),
            caches: Arc::new(ScanCaches {
                footers: Arc::new(reader::footer_cache(FOOTER_CACHE_BYTES)),
                data: (on_object_storage && limits.data_cache_bytes > 0)
                    .then(|| Arc::new(reader::DataCache::new(limits.data_cache_bytes, access_log))),
                manifest_lists: ManifestLists::new(MANIFEST_LIST_CACHE_ENTRIES),
            }),
            buffer: None,
        })
    }

    /// Read `buffer`'s rows with the table (read-your-writes).
    pub fn with_buffer(mut self, buffer: Option<Arc<Buffer>>) -> Self {
        self.buffer = buffer;
        self
    }

    /// Run a planned query as `principal`, within the query limits: waits
    /// for a query slot (admins share one queue), then enforces the timeout
    /// and result size on the stream, which holds the slot.
    pub async fn execute(&self, principal: &Principal, df: DataFrame) -> Result<LimitedStream> {
        let slot = self
            .admit(principal)
            .await
            .inspect_err(|_| count_rejected())?;
        let started = std::time::Instant::now();
        let stream = df.execute_stream().await?;
        Ok(LimitedStream::new(stream, &self.limits, slot, started))
    }

    /// Wait for a query slot for `principal`'s project (admins share one
    /// queue, `*`).
    async fn admit(&self, principal: &Principal) -> Result<admission::Slot> {
        let tenant = principal.project_id.as_deref().unwrap_or("*");
        self.admission.admit(tenant).await
    }

    /// What admission decided so far, and its queue now.
    pub fn admission_stats(&self) -> AdmissionStats {
        self.admission.stats()
    }

    /// The warehouse this engine reads.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// A session exposing what `principal` may read.
    pub async fn session(&self, principal: &Principal) -> Result<SessionContext> {
        principal.require_read()?;
        // A memory pool per request: one query's joins and aggregations
        // spill or fail on their own budget, not everyone's. The catalog
        // list must be the request's own: the base state's list would be
        // shared by every session cloned from it.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_bytes, 1.0)
            .build_arc()?;
        let state = SessionStateBuilder::new_from_existing(self.base.clone())
            .with_runtime_env(runtime)
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .build();
        let ctx = SessionContext::new_with_state(state);

        let catalog = MemoryCatalogProvider::new();
        let events = MemorySchemaProvider::new();
        let scope = if principal.is_admin() {
            None
        } else {
            Some(principal.project()?.to_string())
        };
        // Buffered rows first, the table second: `not_in` then drops what
        // a flush committed in between (see `ingest::buffer`).
        let taken = self.buffer.as_ref().map(|b| b.take(scope.as_deref()));
        let table = self.warehouse.raw_events().await?;
        let buffered = taken.map(|t| t.not_in(&table)).unwrap_or_default();
        let raw_events = RaindropTable::raw_events(table, scope, self.caches.clone(), buffered)?;
        events.register_table(schema::RAW_EVENTS.to_string(), Arc::new(raw_events))?;
        let events_schema = self.warehouse.namespace.to_url_string();
        catalog.register_schema(&events_schema, Arc::new(events))?;

        if let Some(project) = principal.project_id.as_deref() {
            for (sql_schema, tables) in self.warehouse.tenant_tables(project).await? {
                if sql_schema == events_schema {
                    continue;
                }
                let ns = self.warehouse.tenant_namespace(project, &sql_schema);
                let provider = TenantSchema::new(
                    self.warehouse.clone(),
                    ns,
                    sql_schema.clone(),
                    tables,
                    self.caches.clone(),
                );
                catalog.register_schema(&sql_schema, Arc::new(provider))?;
            }
        }
        if catalog.schema(DEFAULT_TENANT_SCHEMA).is_none() {
            catalog
                .register_schema(DEFAULT_TENANT_SCHEMA, Arc::new(MemorySchemaProvider::new()))?;
        }
        ctx.register_catalog(&self.warehouse.catalog_name, Arc::new(catalog));
        Ok(ctx)
    }

    /// Catalog, schemas and tables visible to `principal` (with Arrow
    /// schemas if `with_schemas`), in a stable order.
    pub async fn catalog_objects(
        &self,
        principal: &Principal,
        with_schemas: bool,
    ) -> Result<CatalogObjects> {
        let ctx = self.session(principal).await?;
        let name = self.warehouse.catalog_name.clone();
        let catalog = ctx
            .catalog(&name)
            .ok_or_else(|| Error::Internal("session catalog missing".into()))?;
        // information_schema is served by DataFusion outside the catalog.
        let info_schema: Arc<dyn SchemaProvider> = Arc::new(InformationSchemaProvider::new(
            ctx.state().catalog_list().clone(),
        ));
        let mut schemas = catalog.schema_names();
        schemas.push(INFORMATION_SCHEMA.to_string());
        schemas.sort();
        let mut tables = vec![];
        for s in &schemas {
            let provider = match s.as_str() {
                INFORMATION_SCHEMA => Some(info_schema.clone()),
                _ => catalog.schema(s),
            };
            let Some(provider) = provider else { continue };
            let mut names = provider.table_names();
            names.sort();
            for t in names {
                let table_type = if s == INFORMATION_SCHEMA {
                    SYSTEM_TABLE
                } else {
                    TABLE
                };
                let schema = match with_schemas {
                    true => provider
                        .table(&t)
                        .await?
                        .map(|p| Arc::new(views::client_schema(&p.schema()))),
                    false => None,
                };
                tables.push(TableEntry {
                    db_schema: s.clone(),
                    name: t,
                    table_type,
                    schema,
                });
            }
        }
        Ok(CatalogObjects {
            catalog: name,
            schemas,
            tables,
        })
    }

    /// Parse, check and plan `sql` for `principal`. The returned frame has
    /// not run yet; its schema is what `GetFlightInfo` reports.
    pub async fn plan(&self, principal: &Principal, sql: &str) -> Result<DataFrame> {
        let planned = self.plan_checked(principal, sql).await;
        if planned.is_err() {
            count_rejected();
        }
        planned
    }

    async fn plan_checked(&self, principal: &Principal, sql: &str) -> Result<DataFrame> {
        let started = std::time::Instant::now();
        let sql = params::number_placeholders(sql)?;
        let ctx = self.session(principal).await?;
        let session_ms = started.elapsed().as_secs_f64() * 1e3;
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(&sql, &dialect)?;
        policy::check_statement(&statement)?;
        // Name unknown tables precisely (DataFusion's planner only says "plan error").
        for reference in state.resolve_table_references(&statement)? {
            let table_function = reference.schema().is_none()
                && state.table_functions().contains_key(reference.table());
            if !table_function && !ctx.table_exist(reference.clone()).unwrap_or(false) {
                return Err(Error::NotFound(format!(
                    "table '{reference}' not found; list your tables with SHOW TABLES"
                )));
            }
        }
        let plan = state.statement_to_plan(statement).await?;
        policy::check_plan(&plan)?;
        let df = views::without_views(ctx.execute_logical_plan(plan).await?)?;
        tracing::debug!(
            session_ms,
            plan_ms = started.elapsed().as_secs_f64() * 1e3,
            "query planned"
        );
        Ok(df)
    }
}

/// Count a query refused before it ran (bad SQL, policy, no slot).
fn count_rejected() {
    crate::metrics::metrics()
        .queries
        .get_or_create(&crate::metrics::Outcome {
            outcome: "rejected",
        })
        .inc();
}
