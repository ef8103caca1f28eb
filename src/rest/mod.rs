//! The Apache Iceberg REST catalog, read-only and scoped by the caller's
//! token, served on `--http-addr` beside the operability endpoints. It is
//! how a tenant's own engines (DuckDB, PyIceberg, Daft, Spark, Trino …)
//! read its telemetry without an export: a tenant token sees
//! `<namespace>.raw_events` as a table of its own rows only (derived
//! metadata, [`crate::catalog::tenant_view`]) and its own tables under
//! their SQL schema names; an admin token sees the real catalog.
//!
//! Routes follow the REST spec (`open-api/rest-catalog-open-api.yaml` in
//! apache/iceberg) with no `prefix`. Every route but the token endpoint
//! needs `Authorization: Bearer <token or access token>`. Writes get 403.
//! On an S3 warehouse, clients read files through the remote signer
//! ([`storage`]), which signs only what the caller's table may read.

mod auth;
mod error;
mod handlers;
mod scope;
mod storage;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::catalog::Warehouse;
use crate::catalog::tenant_view::TenantViews;
use crate::tenant::tokens::TokenStore;
use error::RestError;

/// What the REST catalog serves from.
pub struct RestCatalog {
    tokens: Arc<TokenStore>,
    warehouse: Warehouse,
    views: TenantViews,
}

impl RestCatalog {
    /// A catalog over `warehouse`, authenticating with `tokens`.
    pub fn new(tokens: Arc<TokenStore>, warehouse: Warehouse) -> Self {
        Self {
            tokens,
            warehouse,
            views: TenantViews::default(),
        }
    }
}

/// The catalog's routes, under `/v1`.
pub fn router(catalog: Arc<RestCatalog>) -> Router {
    let read_only = || async { RestError::read_only() };
    let v1 = Router::new()
        .route("/config", get(handlers::config))
        .route("/oauth/tokens", post(auth::issue))
        .route(
            "/namespaces",
            get(handlers::list_namespaces).post(read_only),
        )
        .route(
            "/namespaces/{ns}",
            get(handlers::load_namespace)
                .head(handlers::namespace_exists)
                .delete(read_only),
        )
        .route("/namespaces/{ns}/properties", post(read_only))
        .route(
            "/namespaces/{ns}/tables",
            get(handlers::list_tables).post(read_only),
        )
        .route(
            "/namespaces/{ns}/tables/{table}",
            get(handlers::load_table)
                .head(handlers::table_exists)
                .post(read_only)
                .delete(read_only),
        )
        .route("/namespaces/{ns}/tables/{table}/sign", post(storage::sign))
        .route("/namespaces/{ns}/register", post(read_only))
        .route("/tables/rename", post(read_only))
        .route("/transactions/commit", post(read_only))
        .fallback(|| async {
            RestError::new(
                StatusCode::NOT_FOUND,
                "NotFoundException",
                "no such endpoint in Raindrop's REST catalog (read-only Iceberg REST API v1, no prefix)",
            )
        })
        .method_not_allowed_fallback(|| async {
            RestError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowedException",
                "method not allowed on this endpoint of Raindrop's read-only REST catalog",
            )
        })
        .with_state(catalog);
    Router::new().nest("/v1", v1)
}
