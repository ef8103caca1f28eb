//! Wiring: open the catalog, build the services, serve Flight SQL on an
//! already-bound listener until a shutdown signal (so tests bind port 0).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::catalog;
use crate::config::{ServeConfig, TlsConfig};
use crate::error::{Error, Result};
use crate::flight::{RaindropFlightService, Services};
use crate::ingest::Ingestor;
use crate::ingest::writer::CommitConfig;
use crate::maintenance::compact::{CompactOptions, compact_table};
use crate::query::QueryEngine;
use crate::tenant::tokens::TokenStore;

const MIB: usize = 1024 * 1024;

/// Open storage and build the request services for `config`.
pub async fn build_services(config: &ServeConfig) -> Result<Arc<Services>> {
    let warehouse = catalog::open(&config.storage).await?;
    let tokens = TokenStore::open(config.tokens_file())?;
    if tokens.is_empty() {
        tracing::warn!(
            file = %tokens.path().display(),
            "no tokens configured: every call will be refused; create one with `raindrop token create`"
        );
    }
    // Report files left by commits that never happened (e.g. after a
    // crash) without slowing start-up; deleting them is explicit.
    let scan = warehouse.clone();
    tokio::spawn(async move {
        let Ok(table) = scan.raw_events().await else {
            return;
        };
        match crate::maintenance::find_orphan_files(&table, std::time::Duration::from_secs(3600))
            .await
        {
            Ok(r) if !r.orphans.is_empty() => tracing::warn!(
                orphans = r.orphans.len(),
                "raw_events has data files no snapshot references; remove them with `raindrop orphans --delete`"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "orphan scan skipped"),
        }
    });
    let services = Arc::new(Services {
        tokens,
        query: QueryEngine::new(
            warehouse.clone(),
            config.limits.query_partitions,
            config.limits.query_limits(),
        )?,
        ingest: Ingestor::new(
            warehouse,
            config.limits.max_ingest_mib * MIB,
            config.limits.max_buffered_mib * MIB,
            std::time::Duration::from_secs(2),
            CommitConfig {
                max_delay: std::time::Duration::from_millis(config.limits.commit_max_delay_ms),
                ..CommitConfig::default()
            },
        ),
        prepared: Default::default(),
        planned: Default::default(),
    });
    if config.limits.compact_interval_secs > 0 {
        tokio::spawn(compact_periodically(
            Arc::downgrade(&services),
            std::time::Duration::from_secs(config.limits.compact_interval_secs),
            CompactOptions {
                min_files: config.limits.compact_min_files,
                ..CompactOptions::default()
            },
            (config.limits.snapshot_retention_hours > 0).then(|| {
                std::time::Duration::from_secs(config.limits.snapshot_retention_hours * 3600)
            }),
        ));
    }
    Ok(services)
}

/// Compact `raw_events` every `every`, then expire snapshots older than
/// `retention` and delete the files nothing references any more, for as
/// long as the services live.
async fn compact_periodically(
    services: std::sync::Weak<Services>,
    every: std::time::Duration,
    options: CompactOptions,
    retention: Option<std::time::Duration>,
) {
    let current = |t: iceberg::table::Table| t.metadata().current_snapshot_id();
    // The snapshot the last compaction left: an idle table is not re-read.
    let mut compacted: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(services) = services.upgrade() else {
            return;
        };
        let warehouse = services.query.warehouse();
        let ident = warehouse.raw_events_ident();
        let now = warehouse.raw_events().await.ok().and_then(current);
        if now.is_none() || now != compacted {
            match compact_table(warehouse, &ident, &options).await {
                Ok(r) if r.files_removed > 0 => tracing::info!(
                    partitions = r.partitions,
                    files_removed = r.files_removed,
                    files_added = r.files_added,
                    rebuilds = r.rebuilds,
                    "raw_events compacted"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "raw_events compaction failed; will retry"),
            }
            compacted = warehouse.raw_events().await.ok().and_then(current);
        }
        // Snapshots age out even while the table is idle.
        let Some(retain) = retention else { continue };
        let hour = std::time::Duration::from_secs(3600);
        match crate::maintenance::expire_and_clean(warehouse, &ident, retain, 1, hour).await {
            Ok(r) if r.snapshots_expired > 0 => tracing::info!(
                snapshots_expired = r.snapshots_expired,
                files_deleted = r.files_deleted,
                "raw_events snapshots expired"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "raw_events snapshot expiry failed; will retry"),
        }
    }
}

fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::InvalidArgument(format!("reading TLS {what} {}: {e}", path.display())))
}

/// Server TLS settings, if a certificate is configured.
fn tls_config(tls: &TlsConfig) -> Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(read_pem("certificate", cert)?, read_pem("key", key)?);
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_pem("client CA", ca)?));
    }
    Ok(Some(config))
}

/// Serve Flight SQL on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    services: Arc<Services>,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let max_message = config.limits.max_message_mib * MIB;
    let service = FlightServiceServer::new(RaindropFlightService::new(services))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    // Small gRPC responses (FlightInfo, the last DoGet frame) otherwise wait
    // on Nagle + delayed ACK: ~40 ms each, per call.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            c.set_nodelay(true).ok();
        }
        conn
    });
    // Ingest streams are multi-megabyte messages: with h2's default 64 KiB
    // windows the client stalls for a WINDOW_UPDATE every 64 KiB.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 * MIB as u32))
        .initial_connection_window_size(Some(32 * MIB as u32))
        .max_frame_size(Some(MIB as u32));
    if let Some(tls) = tls_config(&config.tls)? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::InvalidArgument(format!("TLS configuration: {e}")))?;
    }
    builder
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Internal(format!("server failed: {e}")))
}

/// A server running in the background of this process (tests, the demo).
#[derive(Debug)]
pub struct ServerHandle {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// The services behind it.
    pub services: Arc<Services>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// Bind `config.addr` (use port 0 for any) and serve in a task.
    pub async fn start(config: ServeConfig) -> Result<Self> {
        let services = build_services(&config).await?;
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task_services = services.clone();
        let task = tokio::spawn(async move {
            run(listener, task_services, &config, async {
                rx.await.ok();
            })
            .await
        });
        Ok(Self {
            addr,
            services,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://host:port` for Flight clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving and wait for in-flight calls to finish.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::Internal(format!("server task: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
    }
}
