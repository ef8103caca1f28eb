//! Operability endpoints on `--http-addr` (off unless set): Prometheus
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (the catalog
//! database and the warehouse storage answer, and the server is not
//! draining for shutdown: route traffic here).
//!
//! The same listener serves the read-only Iceberg REST catalog under `/v1`
//! ([`crate::rest`]), where every route checks the caller's token.
//!
//! Plain HTTP: the operability endpoints need no token (the metrics carry
//! no tenant names or data); put a TLS proxy in front before exposing the
//! catalog beyond a private network.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::flight::Services;
use crate::metrics::metrics;
use crate::rest::{self, RestCatalog};

/// How long a readiness check waits for the catalog or storage.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve the endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let catalog = Arc::new(RestCatalog::new(
        services.tokens.clone(),
        services.query.warehouse().clone(),
    ));
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(services)
        .merge(rest::router(catalog));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(format!("HTTP endpoint failed: {e}")))
}

async fn scrape(State(services): State<Arc<Services>>) -> impl IntoResponse {
    let m = metrics();
    let admission = services.query.admission_stats();
    m.queries_running.set(admission.running as i64);
    m.queries_queued.set(admission.queued as i64);
    m.ingest_memory_bytes
        .set(services.ingest.memory_used() as i64);
    let (rows, age) = services.ingest.buffered_rows();
    m.ingest_buffered_rows.set(rows as i64);
    m.ingest_buffered_age_ms
        .set(age.map_or(0, |a| a.as_millis() as i64));
    let (held_rows, held_projects) = services.ingest.held_back_rows();
    m.ingest_held_rows.set(held_rows as i64);
    m.ingest_held_projects.set(held_projects as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}

/// 200 when the server is not shutting down and the catalog database and
/// the storage both answer, else 503 naming why.
async fn ready(State(services): State<Arc<Services>>) -> impl IntoResponse {
    if services.draining.load(std::sync::atomic::Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down, in-flight calls are draining\n".to_string(),
        );
    }
    let warehouse = services.query.warehouse();
    let catalog = async {
        warehouse
            .catalog
            .table_exists(&warehouse.raw_events_ident())
            .await
            .map(|_| ())
            .map_err(|e| format!("catalog: {e}"))
    };
    let storage = async {
        warehouse
            .store
            .probe(&warehouse.warehouse)
            .await
            .map_err(|e| format!("storage: {e}"))
    };
    let checks = async { tokio::join!(catalog, storage) };
    match tokio::time::timeout(READY_TIMEOUT, checks).await {
        Ok((Ok(()), Ok(()))) => (StatusCode::OK, "ready\n".to_string()),
        Ok((catalog, storage)) => {
            let failed: Vec<String> = [catalog, storage]
                .into_iter()
                .filter_map(|r| r.err())
                .collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", failed.join("; ")),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: catalog or storage did not answer within {} s\n",
                READY_TIMEOUT.as_secs()
            ),
        ),
    }
}
