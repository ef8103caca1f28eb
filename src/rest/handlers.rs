//! The catalog's read routes: config, namespaces and tables.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::RestCatalog;
use super::auth::reader;
use super::error::{RestError, json};
use super::scope::{Scope, Target};
use super::storage::table_access;

/// The spec's separator of namespace levels in a path or `parent=`.
pub(super) const LEVELS: char = '\u{1f}';

/// The read endpoints this catalog serves: clients that honour the list
/// (PyIceberg, DuckDB) refuse writes before sending them.
const ENDPOINTS: &[&str] = &[
    "GET /v1/{prefix}/namespaces",
    "GET /v1/{prefix}/namespaces/{namespace}",
    "HEAD /v1/{prefix}/namespaces/{namespace}",
    "GET /v1/{prefix}/namespaces/{namespace}/tables",
    "GET /v1/{prefix}/namespaces/{namespace}/tables/{table}",
    "HEAD /v1/{prefix}/namespaces/{namespace}/tables/{table}",
];

pub(super) fn levels(ns: &str) -> Vec<String> {
    ns.split(LEVELS).map(str::to_string).collect()
}

/// `GET /v1/config`.
pub async fn config(
    State(c): State<Arc<RestCatalog>>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    reader(&c, &headers)?;
    Ok(json(
        StatusCode::OK,
        &json!({"defaults": {}, "overrides": {}, "endpoints": ENDPOINTS}),
    ))
}

/// `GET /v1/namespaces[?parent=a%1Fb]`.
pub async fn list_namespaces(
    State(c): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, RestError> {
    let caller = reader(&c, &headers)?;
    let parent = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "parent")
        .map(|(_, v)| levels(&v));
    let scope = Scope::of(&c, &caller).await?;
    let namespaces = scope.namespaces(parent.as_deref()).await?;
    Ok(json(StatusCode::OK, &json!({ "namespaces": namespaces })))
}

/// The levels of namespace `ns` when the caller may read it, else 404.
async fn existing_namespace(
    c: &RestCatalog,
    headers: &HeaderMap,
    ns: &str,
) -> Result<Vec<String>, RestError> {
    let caller = reader(c, headers)?;
    let ns = levels(ns);
    if !Scope::of(c, &caller).await?.namespace_exists(&ns).await? {
        return Err(RestError::no_namespace(&ns));
    }
    Ok(ns)
}

/// `GET /v1/namespaces/{ns}`.
pub async fn load_namespace(
    State(c): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Result<Response, RestError> {
    let ns = existing_namespace(&c, &headers, &ns).await?;
    Ok(json(
        StatusCode::OK,
        &json!({"namespace": ns, "properties": {}}),
    ))
}

/// `HEAD /v1/namespaces/{ns}`: 204 or 404.
pub async fn namespace_exists(
    State(c): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Result<Response, RestError> {
    existing_namespace(&c, &headers, &ns).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/namespaces/{ns}/tables`.
pub async fn list_tables(
    State(c): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Result<Response, RestError> {
    let caller = reader(&c, &headers)?;
    let ns = levels(&ns);
    let tables = Scope::of(&c, &caller).await?.tables(&ns).await?;
    let identifiers: Vec<_> = tables
        .iter()
        .map(|t| json!({"namespace": ns, "name": t}))
        .collect();
    Ok(json(StatusCode::OK, &json!({ "identifiers": identifiers })))
}

/// `HEAD /v1/namespaces/{ns}/tables/{table}`: 204 or 404.
pub async fn table_exists(
    State(c): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path((ns, table)): Path<(String, String)>,
) -> Result<Response, RestError> {
    let caller = reader(&c, &headers)?;
    Scope::of(&c, &caller)
        .await?
        .table(&levels(&ns), &table)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/namespaces/{ns}/tables/{table}`: the `LoadTableResult`. A
/// tenant's `raw_events` is its derived view; every other table is served
/// as the catalog has it.
pub async fn load_table(
    State(c): State<Arc<RestCatalog>>,
    headers: HeaderMap,
    Path((ns, table)): Path<(String, String)>,
) -> Result<Response, RestError> {
    let caller = reader(&c, &headers)?;
    let ns = levels(&ns);
    let target = Scope::of(&c, &caller).await?.table(&ns, &table).await?;
    let (location, metadata) = match &target {
        Target::TenantRawEvents(project) => {
            let base = c.warehouse.raw_events().await?;
            let view = c.views.view(&base, project).await?;
            (
                view.metadata_location.clone(),
                serde_json::to_value(&view.metadata),
            )
        }
        Target::Table(ident) => {
            let table = c.warehouse.load_table(ident).await?;
            (
                table.metadata_location_result()?.to_string(),
                serde_json::to_value(table.metadata()),
            )
        }
    };
    let metadata = metadata.map_err(|e| crate::error::Error::Internal(e.to_string()))?;
    // PyIceberg and DuckDB ask for vended credentials by default.
    let vend = headers
        .get("x-iceberg-access-delegation")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|m| m.trim() == "vended-credentials"));
    let (config, credentials) = table_access(&c, &ns, &table, &target, &location, vend).await?;
    let mut body = json!({"metadata-location": location, "metadata": metadata, "config": config});
    if !credentials.is_empty() {
        body["storage-credentials"] = json!(credentials);
    }
    Ok(json(StatusCode::OK, &body))
}
