//! What a caller sees in the catalog. A tenant sees a flat list: the
//! namespace of `raw_events` (holding only that table, as its own view)
//! and one namespace per SQL schema of its own tables
//! (`tenants.<project>.<schema>` appears as `<schema>`), so
//! `cat.wildedge.raw_events` joins `cat.analytics.user_outcomes` in any
//! engine. Names are only ever compared with what the caller owns, never
//! turned into paths. An admin sees the real catalog.

use std::collections::BTreeMap;

use iceberg::{NamespaceIdent, TableIdent};

use super::RestCatalog;
use super::error::RestError;
use crate::error::Error;
use crate::schema::RAW_EVENTS;
use crate::tenant::Principal;

/// A table a caller may load.
pub enum Target {
    /// The caller's view of the shared `raw_events`.
    TenantRawEvents(String),
    /// A table loaded as it is in the catalog.
    Table(TableIdent),
}

/// The caller's catalog.
pub enum Scope<'a> {
    /// A tenant: its project and its own schemas' tables.
    Tenant {
        project: String,
        raw: Vec<String>,
        schemas: BTreeMap<String, Vec<String>>,
    },
    /// An admin: the catalog as it is.
    Admin(&'a RestCatalog),
}

impl<'a> Scope<'a> {
    pub async fn of(catalog: &'a RestCatalog, caller: &Principal) -> Result<Self, RestError> {
        if caller.is_admin() {
            return Ok(Scope::Admin(catalog));
        }
        let project = caller.project()?.to_string();
        let raw: Vec<String> = catalog.warehouse.namespace.as_ref().clone();
        let mut schemas = catalog.warehouse.tenant_tables(&project).await?;
        // The raw_events namespace wins over a tenant schema of that name.
        if raw.len() == 1 {
            schemas.remove(&raw[0]);
        }
        Ok(Scope::Tenant {
            project,
            raw,
            schemas,
        })
    }

    /// Namespaces directly under `parent` (top level when `None`).
    pub async fn namespaces(
        &self,
        parent: Option<&[String]>,
    ) -> Result<Vec<Vec<String>>, RestError> {
        match self {
            Scope::Tenant { raw, schemas, .. } => match parent {
                None => {
                    let mut out = vec![raw.clone()];
                    out.extend(schemas.keys().map(|s| vec![s.clone()]));
                    Ok(out)
                }
                Some(p) if self.sees(p) => Ok(vec![]),
                Some(p) => Err(RestError::no_namespace(p)),
            },
            Scope::Admin(catalog) => {
                let parent = match parent {
                    Some(p) => {
                        let ns = ident(p)?;
                        if !catalog.warehouse.catalog.namespace_exists(&ns).await? {
                            return Err(RestError::no_namespace(p));
                        }
                        Some(ns)
                    }
                    None => None,
                };
                let depth = parent.as_ref().map_or(0, |p| p.len()) + 1;
                // A SQL catalog lists every descendant, not only children.
                let mut out: Vec<Vec<String>> = catalog
                    .warehouse
                    .catalog
                    .list_namespaces(parent.as_ref())
                    .await?
                    .into_iter()
                    .map(|ns| ns.as_ref().clone())
                    .filter(|ns| ns.len() == depth)
                    .collect();
                out.sort();
                out.dedup();
                Ok(out)
            }
        }
    }

    /// Whether the caller sees namespace `ns`.
    pub fn sees(&self, ns: &[String]) -> bool {
        match self {
            Scope::Tenant { raw, schemas, .. } => {
                ns == raw.as_slice() || (ns.len() == 1 && schemas.contains_key(&ns[0]))
            }
            Scope::Admin(_) => true,
        }
    }

    /// Whether namespace `ns` exists for the caller.
    pub async fn namespace_exists(&self, ns: &[String]) -> Result<bool, RestError> {
        match self {
            Scope::Admin(catalog) => Ok(catalog
                .warehouse
                .catalog
                .namespace_exists(&ident(ns)?)
                .await?),
            Scope::Tenant { .. } => Ok(self.sees(ns)),
        }
    }

    /// The tables of namespace `ns`, sorted.
    pub async fn tables(&self, ns: &[String]) -> Result<Vec<String>, RestError> {
        if !self.namespace_exists(ns).await? {
            return Err(RestError::no_namespace(ns));
        }
        match self {
            Scope::Tenant { raw, schemas, .. } => {
                if ns == raw.as_slice() {
                    Ok(vec![RAW_EVENTS.to_string()])
                } else {
                    Ok(schemas.get(&ns[0]).cloned().unwrap_or_default())
                }
            }
            Scope::Admin(catalog) => {
                let mut names: Vec<String> = catalog
                    .warehouse
                    .catalog
                    .list_tables(&ident(ns)?)
                    .await?
                    .into_iter()
                    .map(|t| t.name().to_string())
                    .collect();
                names.sort();
                Ok(names)
            }
        }
    }

    /// What `ns.table` loads for the caller: 404 unless it may see it.
    pub async fn table(&self, ns: &[String], table: &str) -> Result<Target, RestError> {
        match self {
            Scope::Tenant { project, raw, .. } => {
                if !self.tables(ns).await?.iter().any(|t| t == table) {
                    return Err(RestError::no_table(ns, table));
                }
                if ns == raw.as_slice() {
                    return Ok(Target::TenantRawEvents(project.clone()));
                }
                let ns = NamespaceIdent::from_strs([
                    crate::catalog::TENANTS_NAMESPACE,
                    project,
                    &ns[0],
                ])?;
                Ok(Target::Table(TableIdent::new(ns, table.to_string())))
            }
            // One lookup, not a listing of the namespace.
            Scope::Admin(catalog) => {
                let ident = TableIdent::new(ident(ns)?, table.to_string());
                let catalog = &catalog.warehouse.catalog;
                if !catalog.namespace_exists(ident.namespace()).await? {
                    return Err(RestError::no_namespace(ns));
                }
                if !catalog.table_exists(&ident).await? {
                    return Err(RestError::no_table(ns, table));
                }
                Ok(Target::Table(ident))
            }
        }
    }
}

fn ident(ns: &[String]) -> Result<NamespaceIdent, RestError> {
    NamespaceIdent::from_vec(ns.to_vec())
        .map_err(|_| Error::InvalidArgument("empty namespace".into()).into())
}
