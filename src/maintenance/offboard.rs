//! Deleting a project (offboarding a customer): every `raw_events`
//! partition of it, its own tables, its tokens.
//!
//! Order matters. The tombstone goes first, so that whatever of the project
//! turns up later (rows a node accepted just before the tokens were
//! revoked and flushes afterwards) is dropped by the next maintenance run.
//! Then the tokens, so nothing new arrives and nobody reads. Then the data:
//! `raw_events` partitions in one metadata-only `delete` snapshot (their
//! files leave storage when that snapshot's predecessors expire), and the
//! project's own tables dropped with their files at once.

use iceberg::{NamespaceIdent, TableIdent};

use super::retention::{DropReport, drop_partitions};
use crate::catalog::tenant_view::tenant_dir;
use crate::catalog::{TENANTS_NAMESPACE, Warehouse};
use crate::error::{Error, Result};
use crate::tenant::names::validate_project_id;
use crate::tenant::projects::ProjectTable;
use crate::tenant::token_source::{self, TokenSource};

/// What deleting a project removed.
#[derive(Debug, Clone, Default)]
pub struct OffboardReport {
    /// `raw_events` partitions dropped.
    pub raw_events: DropReport,
    /// The project's own tables dropped (`schema.table`), files deleted.
    pub tables: Vec<String>,
    /// Ids of the tokens revoked.
    pub tokens_revoked: Vec<String>,
}

/// Delete `project_id` (see the module docs). Running it again finishes
/// an interrupted deletion; a project Raindrop knows nothing of is an
/// error, so a typo does not pass silently.
pub async fn delete_project(
    warehouse: &Warehouse,
    projects: &ProjectTable,
    tokens: &TokenSource,
    project_id: &str,
) -> Result<OffboardReport> {
    validate_project_id(project_id)?;
    let token_ids = project_tokens(tokens, project_id).await?;
    let tables = warehouse.tenant_tables(project_id).await?;
    let found = !token_ids.is_empty() || !tables.is_empty();
    require_known(found, warehouse, projects, project_id).await?;

    projects.mark_deleted(project_id).await?;
    for id in &token_ids {
        token_source::revoke(tokens, id).await?;
    }
    let raw_events = drop_partitions(warehouse, project_id, i32::MAX).await?;
    // The project's view of raw_events served by the REST catalog: it
    // lists the files just dropped.
    let location = warehouse
        .raw_events()
        .await?
        .metadata()
        .location()
        .to_string();
    warehouse
        .store
        .delete_prefix(&format!("{}/", tenant_dir(&location, project_id)))
        .await?;
    let mut dropped = vec![];
    for (schema, names) in tables {
        let namespace = warehouse.tenant_namespace(project_id, &schema);
        for name in names {
            let ident = TableIdent::new(namespace.clone(), name.clone());
            let location = warehouse
                .catalog
                .load_table(&ident)
                .await?
                .metadata()
                .location()
                .trim_end_matches('/')
                .to_string();
            warehouse.catalog.drop_table(&ident).await?;
            // Exactly the table's directory: `t/`, never a sibling `t2`.
            warehouse
                .store
                .delete_prefix(&format!("{location}/"))
                .await?;
            dropped.push(format!("{schema}.{name}"));
        }
        warehouse.catalog.drop_namespace(&namespace).await?;
    }
    let parent =
        NamespaceIdent::from_strs([TENANTS_NAMESPACE, project_id]).expect("non-empty namespace");
    if warehouse.catalog.namespace_exists(&parent).await? {
        warehouse.catalog.drop_namespace(&parent).await?;
    }
    Ok(OffboardReport {
        raw_events,
        tables: dropped,
        tokens_revoked: token_ids,
    })
}

/// Refuse a project Raindrop knows nothing of (no token, table, settings
/// or events): an operator's typo must not pass silently.
pub async fn require_project(
    warehouse: &Warehouse,
    projects: &ProjectTable,
    tokens: &TokenSource,
    project_id: &str,
) -> Result<()> {
    validate_project_id(project_id)?;
    let found = !project_tokens(tokens, project_id).await?.is_empty()
        || !warehouse.tenant_tables(project_id).await?.is_empty();
    require_known(found, warehouse, projects, project_id).await
}

/// Ids of `project_id`'s tokens.
async fn project_tokens(tokens: &TokenSource, project_id: &str) -> Result<Vec<String>> {
    Ok(token_source::list(tokens)
        .await?
        .into_iter()
        .filter(|t| t.project_id.as_deref() == Some(project_id))
        .map(|t| t.id)
        .collect())
}

/// [`require_project`] once tokens and tables were looked at (`found`):
/// settings and events are checked only if those named nothing.
async fn require_known(
    found: bool,
    warehouse: &Warehouse,
    projects: &ProjectTable,
    project_id: &str,
) -> Result<()> {
    if found
        || projects.get(project_id).await?.is_some()
        || has_events(warehouse, project_id).await?
    {
        Ok(())
    } else {
        Err(Error::NotFound(format!(
            "project {project_id} not found: no token, table, setting or event names it"
        )))
    }
}

/// Whether `raw_events` holds live rows of `project_id`.
async fn has_events(warehouse: &Warehouse, project_id: &str) -> Result<bool> {
    use futures::TryStreamExt;
    use iceberg::expr::Reference;
    use iceberg::spec::Datum;
    let table = warehouse.raw_events().await?;
    if table.metadata().current_snapshot().is_none() {
        return Ok(false);
    }
    let scan = table
        .scan()
        .with_filter(
            Reference::new(crate::schema::col::PROJECT_ID).equal_to(Datum::string(project_id)),
        )
        .build()?;
    Ok(scan.plan_files().await?.try_next().await?.is_some())
}
