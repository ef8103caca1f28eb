//! Wiring: open the catalog, build the services, serve Flight SQL on an
//! already-bound listener until a shutdown signal (so tests bind port 0).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::catalog;
use crate::catalog::lease::Lease;
use crate::config::{LimitsConfig, ServeConfig, TlsConfig, limits as defaults};
use crate::error::{Error, Result};
use crate::flight::{RaindropFlightService, Services};
use crate::ingest::Ingestor;
use crate::ingest::commit::CommitConfig;
use crate::ingest::log::{HoldPolicy, LogConfig};
use crate::maintenance::Retention;
use crate::maintenance::compact::CompactOptions;
use crate::maintenance::expire::MIN_RETAINED_SNAPSHOTS;
use crate::maintenance::schedule::{self, Schedule};
use crate::query::QueryEngine;
use crate::query::admission::AdmissionConfig;
use crate::query::limits::QueryLimits;
use crate::tenant::tokens::TokenStore;

const MIB: usize = 1024 * 1024;

/// How long new ingest data waits for room in a full ingest buffer before
/// the stream gets `ResourceExhausted`.
const INGEST_BUFFER_WAIT: Duration = Duration::from_secs(2);

/// Open storage and build the request services for `config`, with the
/// background maintenance it asks for.
pub async fn build_services(config: &ServeConfig) -> Result<Arc<Services>> {
    let warehouse = catalog::open(&config.storage).await?;
    let tokens = TokenStore::open_source(config.token_source()).await?;
    if tokens.is_empty() {
        tracing::warn!(
            source = %tokens.source(),
            "no tokens configured: every call will be refused; create one with `raindrop token create`"
        );
    }
    let limits = &config.limits;
    let lease = match limits.compact_interval_secs {
        0 => None,
        _ => Some(
            Lease::open(
                &warehouse.catalog_uri,
                &warehouse.catalog_name,
                "maintenance",
                node_id(),
                Duration::from_secs(limits.maintenance_lease_secs.max(1)),
            )
            .await?,
        ),
    };
    let flushed = Arc::new(tokio::sync::Notify::new());
    let (compacting, compaction_runs) = tokio::sync::watch::channel(false);
    let maintenance = schedule::start(
        warehouse.clone(),
        Schedule {
            every: (limits.compact_interval_secs > 0)
                .then(|| Duration::from_secs(limits.compact_interval_secs)),
            compact: CompactOptions::background(limits.compact_min_files, limits.compact_max_files),
            retention: retention(limits),
            flushed: flushed.clone(),
            compacting: Arc::new(compacting),
        },
        lease,
    );
    let query_limits = QueryLimits {
        memory_bytes: limits.query_memory_mib * MIB,
        timeout: Duration::from_secs(limits.query_timeout_secs),
        max_result_bytes: limits.max_result_mib * MIB,
        admission: admission_config(limits),
        data_cache_bytes: limits.data_cache_mib * MIB as u64,
    };
    let mut ingest = Ingestor::new(
        warehouse.clone(),
        limits.max_ingest_mib * MIB,
        limits.max_buffered_mib * MIB,
        INGEST_BUFFER_WAIT,
        CommitConfig {
            max_delay: Duration::from_millis(limits.commit_max_delay_ms),
            ..CommitConfig::default()
        },
    );
    if limits.flush_interval_ms > 0 {
        ingest
            .start_log(LogConfig {
                place: config.wal_place(),
                flush_interval: Duration::from_millis(limits.flush_interval_ms),
                // Below the ingest budget, so a full buffer flushes before
                // it refuses new rows.
                flush_bytes: (limits.flush_mib * MIB).min(limits.max_buffered_mib * MIB / 2),
                hold: (limits.flush_hold_mib > 0 && limits.flush_hold_ms > 0).then(|| HoldPolicy {
                    min_bytes: limits.flush_hold_mib * MIB,
                    max_age: Duration::from_millis(limits.flush_hold_ms),
                    // Held rows leave room for a flush's worth of new ones.
                    max_bytes: (limits.flush_mib * MIB).min(limits.max_buffered_mib * MIB / 2) / 2,
                }),
                flushed,
                compacting: compaction_runs,
            })
            .await?;
    }
    Ok(Arc::new(Services {
        tokens: Arc::new(tokens),
        query: QueryEngine::new(warehouse, limits.query_partitions, query_limits)?
            .with_buffer(ingest.buffer()),
        ingest,
        prepared: Default::default(),
        planned: Default::default(),
        maintenance,
        draining: Default::default(),
    }))
}

/// This process's name as a lease holder: host, pid and a random suffix
/// (a restarted process with a reused pid is still another holder).
fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}/{}/{suffix}", std::process::id())
}

/// Admission sizes from the flags, with 0 meaning "derive from the cores".
/// Snapshot retention from the flags; `None` when both limits are off.
fn retention(limits: &LimitsConfig) -> Option<Retention> {
    let hours = limits.snapshot_retention_hours;
    let count = limits.snapshot_retention_count;
    (hours > 0 || count > 0).then(|| Retention {
        max_age: (hours > 0).then(|| Duration::from_secs(hours * 3600)),
        max_snapshots: (count > 0).then_some(count.max(MIN_RETAINED_SNAPSHOTS)),
        min_file_age: Duration::from_secs(3600),
    })
}

fn admission_config(limits: &LimitsConfig) -> AdmissionConfig {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let max_running = match limits.max_queries {
        0 => defaults::QUERIES_PER_CORE * cores,
        n => n,
    };
    AdmissionConfig {
        max_running,
        max_running_per_tenant: match limits.max_queries_per_tenant {
            0 => (max_running / 2).max(1),
            n => n,
        },
        max_queued_per_tenant: limits.query_queue_per_tenant,
        max_wait: Duration::from_secs(limits.query_queue_wait_secs),
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

/// Serve Flight SQL on `listener`, and the HTTP endpoints on `http` if
/// given, until `shutdown` resolves. Then new calls are refused (and
/// `/readyz` says so) while in-flight ones (a `DoPut` being sent or
/// committed, a query streaming) finish, for up to
/// `config.shutdown_grace_secs`. A call still running then is cut off
/// without an answer (a `DoPut` cut off while committing may have landed:
/// clients retry with its request id).
///
/// `shutdown` is boxed so this function is not generic: callers (the binary,
/// tests) would otherwise each compile the whole server stack again.
pub async fn run(
    listener: TcpListener,
    http: Option<TcpListener>,
    services: Arc<Services>,
    config: &ServeConfig,
    shutdown: BoxFuture<'static, ()>,
) -> Result<()> {
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = http.map(|listener| {
        tokio::spawn(crate::http::serve(listener, services.clone(), async {
            http_stopped.await.ok();
        }))
    });
    let draining = tokio::sync::Notify::new();
    let flagged = services.clone();
    let shutdown = async {
        shutdown.await;
        flagged.draining.store(true, Ordering::Release);
        draining.notify_one();
        tracing::info!("draining in-flight calls");
    };
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let deadline = async {
        draining.notified().await;
        tokio::time::sleep(grace).await;
    };
    let flushed = services.clone();
    let served = tokio::select! {
        served = serve_flight(listener, services, config, shutdown) => served,
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs(), "calls still running after the shutdown grace period; exiting without them");
            Ok(())
        }
    };
    // Not needed for durability (the log is replayed on start), but other
    // engines then see every acknowledged row without waiting for it.
    if let Err(e) = flushed.ingest.close().await {
        tracing::warn!(error = %e, "final flush failed; the write-ahead log keeps the rows for the next start (or, on object storage, for the node that adopts it)");
    }
    drop(flushed);
    http_stop.send(()).ok();
    if let Some(task) = http_task {
        task.await
            .map_err(|e| Error::Internal(format!("HTTP task: {e}")))??;
    }
    served
}

async fn serve_flight(
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
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Ingest streams are multi-megabyte messages: with h2's default 64 KiB
    // windows the client stalls for a WINDOW_UPDATE every 64 KiB.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(8 * MIB as u32))
        .initial_connection_window_size(Some(32 * MIB as u32))
        .max_frame_size(Some(MIB as u32))
        // Every log line of a request names its RPC and, once known, its
        // token id (recorded by authentication).
        .trace_fn(|req| {
            let path = req.uri().path();
            let rpc = path.rsplit('/').next().unwrap_or(path);
            tracing::warn_span!("rpc", rpc = %rpc, token_id = tracing::field::Empty)
        });
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
    /// Address of the HTTP endpoints, if `http_addr` was set.
    pub http_addr: Option<SocketAddr>,
    /// The services behind it.
    pub services: Arc<Services>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

/// Serve in a task until `stop` fires. A plain function, not inline in the
/// async `start`: the server's future is then compiled with the library,
/// not in every crate that awaits `start` (the e2e tests).
fn spawn_run(
    listener: TcpListener,
    http: Option<TcpListener>,
    services: Arc<Services>,
    config: ServeConfig,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let shutdown = async {
            stop.await.ok();
        };
        run(listener, http, services, &config, Box::pin(shutdown)).await
    })
}

impl ServerHandle {
    /// Bind `config.addr` (use port 0 for any) and serve in a task.
    pub async fn start(config: ServeConfig) -> Result<Self> {
        let services = build_services(&config).await?;
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let http = match config.http_addr {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = spawn_run(listener, http, services.clone(), config, rx);
        Ok(Self {
            addr,
            http_addr,
            services,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://host:port` for Flight clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop serving, wait for in-flight calls to finish, and give up the
    /// maintenance lease.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        let served = match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::Internal(format!("server task: {e}")))?,
            None => Ok(()),
        };
        self.services.maintenance.stop().await;
        served
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
    }
}
