//! Query: a DataFusion session per request, holding only what the caller
//! may see.
//!
//! Each session has one catalog (named like the Iceberg catalog, `raindrop`
//! by default), with the telemetry schema
//! (`wildedge.raw_events`, tenant-scoped) and the caller's own schemas
//! (e.g. `warehouse.user_outcomes`). Nothing else is registered, so
//! `information_schema` and `SHOW TABLES` list exactly what the caller can
//! read, and names of other tenants resolve to nothing.

pub mod policy;
pub mod pruning;
pub mod scan;
pub mod table;

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::catalog::Warehouse;
use crate::error::{Error, Result};
use crate::ingest::DEFAULT_TENANT_SCHEMA;
use crate::schema;
use crate::tenant::Principal;
use table::{RaindropTable, TenantSchema};

/// Builds per-request sessions over the warehouse.
#[derive(Debug, Clone)]
pub struct QueryEngine {
    warehouse: Warehouse,
    target_partitions: usize,
    runtime: Arc<RuntimeEnv>,
}

impl QueryEngine {
    /// New engine; `target_partitions == 0` means one per core.
    pub fn new(warehouse: Warehouse, target_partitions: usize) -> Self {
        let target_partitions = if target_partitions == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            target_partitions
        };
        Self {
            warehouse,
            target_partitions,
            runtime: Arc::new(RuntimeEnv::default()),
        }
    }

    /// A session exposing what `principal` may read.
    pub async fn session(&self, principal: &Principal) -> Result<SessionContext> {
        principal.require_read()?;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(&self.warehouse.catalog_name, DEFAULT_TENANT_SCHEMA)
            .with_target_partitions(self.target_partitions);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime.clone())
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);

        let catalog = MemoryCatalogProvider::new();
        let events = MemorySchemaProvider::new();
        let scope = if principal.is_admin() {
            None
        } else {
            Some(principal.project()?.to_string())
        };
        let raw_events = RaindropTable::raw_events(self.warehouse.raw_events().await?, scope)?;
        events.register_table(schema::RAW_EVENTS.to_string(), Arc::new(raw_events))?;
        let events_schema = self.warehouse.namespace.to_url_string();
        catalog.register_schema(&events_schema, Arc::new(events))?;

        if let Some(project) = principal.project_id.as_deref() {
            for sql_schema in self.warehouse.tenant_schemas(project).await? {
                if sql_schema == events_schema {
                    continue;
                }
                let ns = self.warehouse.tenant_namespace(project, &sql_schema);
                let provider =
                    TenantSchema::load(self.warehouse.catalog.clone(), ns, sql_schema.clone())
                        .await?;
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

    /// Parse, check and plan `sql` for `principal`. The returned frame has
    /// not run yet; its schema is what `GetFlightInfo` reports.
    pub async fn plan(&self, principal: &Principal, sql: &str) -> Result<DataFrame> {
        let ctx = self.session(principal).await?;
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        policy::check_statement(&statement)?;
        // Name unknown tables precisely (DataFusion's planner only says "plan error").
        for reference in state.resolve_table_references(&statement)? {
            if !ctx.table_exist(reference.clone()).unwrap_or(false) {
                return Err(Error::NotFound(format!(
                    "table '{reference}' not found; list your tables with SHOW TABLES"
                )));
            }
        }
        let plan = state.statement_to_plan(statement).await?;
        policy::check_plan(&plan)?;
        Ok(ctx.execute_logical_plan(plan).await?)
    }
}

/// The schema clients are told about: the plan's schema with Iceberg
/// field-id metadata removed from top-level fields.
pub fn client_schema(df: &DataFrame) -> SchemaRef {
    let arrow: &Schema = df.schema().as_arrow();
    let fields: Vec<_> = arrow
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_metadata(Default::default()))
        .collect();
    Arc::new(Schema::new(fields))
}
