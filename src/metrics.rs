//! Process-wide Prometheus metrics, served on `--http-addr` at `/metrics`.
//!
//! One registry for the process, so any layer can count without threading
//! a handle through every constructor. Labels are small fixed sets
//! (outcome, job, operation): never a project, token or table name, so the
//! number of series stays bounded however many tenants there are.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// How a request or job ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok` or `error`; for queries also `rejected` (refused before
    /// running: bad SQL, policy, no slot) and `cancelled` (the client left).
    pub outcome: &'static str,
}

/// A background job and how it ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobOutcome {
    /// `compaction`, `expiry`, `manifest-merge` or `flush`.
    pub job: &'static str,
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// A storage operation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageOp {
    /// `read`, `open` (a ranged reader), `write`, `create` (a streamed
    /// writer), `delete`, `list`, `stat`.
    pub op: &'static str,
}

/// A cache lookup's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheResult {
    /// `table` (table metadata), `footer` (Parquet footers) or `data`
    /// (data bytes from object storage).
    pub cache: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// Every metric Raindrop exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Rows committed by ingest.
    pub ingest_rows: Counter,
    /// Arrow bytes committed by ingest.
    pub ingest_bytes: Counter,
    /// `DoPut` ingest streams by outcome.
    pub ingest_requests: Family<Outcome, Counter>,
    /// Time of `DoPut` ingest streams on the server, first message read
    /// to answer: against the client's own timing, what the network and
    /// the client add.
    pub ingest_request_seconds: Histogram,
    /// Time of one write-ahead log write (a write and an fsync, or a PUT)
    /// of a group of concurrent `DoPut`s: against the requests' time, how
    /// much of an acknowledgement is the storage's.
    pub wal_write_seconds: Histogram,
    /// Table commits (ingest, updates, compaction) by outcome.
    pub commits: Family<Outcome, Counter>,
    /// Time of successful commits, files written to pointer swapped.
    pub commit_seconds: Histogram,
    /// Queries by outcome.
    pub queries: Family<Outcome, Counter>,
    /// Time of queries, planning to last batch.
    pub query_seconds: Histogram,
    /// Queries running now.
    pub queries_running: Gauge,
    /// Queries waiting for a slot now.
    pub queries_queued: Gauge,
    /// Background maintenance runs.
    pub maintenance_runs: Family<JobOutcome, Counter>,
    /// Bytes of data files compaction replaced (its input): against the
    /// bytes ingest wrote, how often compaction rewrites each byte.
    pub compaction_bytes: Counter,
    /// Whether this node holds the maintenance lease (0 or 1).
    pub maintenance_lease_held: Gauge,
    /// Cache lookups.
    pub cache_lookups: Family<CacheResult, Counter>,
    /// Rows acknowledged but not yet committed to the table (held in the
    /// write-ahead log and the ingest buffer; set when scraped, like the
    /// next two).
    pub ingest_buffered_rows: Gauge,
    /// Age of the oldest such row, in milliseconds: how far behind the
    /// table external Iceberg readers are.
    pub ingest_buffered_age_ms: Gauge,
    /// Of the buffered rows, those a flush held back because their
    /// project had too few for a sizeable file (`--flush-hold-mib`), and
    /// how many projects they belong to: they reach the table within
    /// `--flush-hold-ms`.
    pub ingest_held_rows: Gauge,
    /// Projects those held rows belong to.
    pub ingest_held_projects: Gauge,
    /// Ingest data held against `--max-buffered-mib` (set when scraped):
    /// near the limit, `DoPut`s wait and then get `ResourceExhausted`.
    pub ingest_memory_bytes: Gauge,
    /// Storage requests (object store or local files) by operation.
    pub storage_requests: Family<StorageOp, Counter>,
    /// Failed storage requests by operation.
    pub storage_errors: Family<StorageOp, Counter>,
    /// REST catalog signing requests: `ok` (signed) or `rejected`
    /// (refused: not the caller's to read, or not a read).
    pub rest_sign_requests: Family<Outcome, Counter>,
    /// STS `AssumeRole` calls for vended credentials (cached reuses are
    /// not calls): `ok` or `error`.
    pub sts_calls: Family<Outcome, Counter>,
}

fn seconds_buckets() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Finer buckets for ingest's acknowledgement path, whose targets are a
/// few milliseconds apart (a p50 of 10 ms, a p99 of 100 ms).
fn ack_buckets() -> Histogram {
    // 0.25 ms … ~32 s, each 1.5x the last.
    Histogram::new(exponential_buckets(0.000_25, 1.5, 30))
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("raindrop"),
            ingest_rows: Counter::default(),
            ingest_bytes: Counter::default(),
            ingest_requests: Family::default(),
            ingest_request_seconds: ack_buckets(),
            wal_write_seconds: ack_buckets(),
            commits: Family::default(),
            commit_seconds: seconds_buckets(),
            queries: Family::default(),
            query_seconds: seconds_buckets(),
            queries_running: Gauge::default(),
            queries_queued: Gauge::default(),
            maintenance_runs: Family::default(),
            compaction_bytes: Counter::default(),
            maintenance_lease_held: Gauge::default(),
            ingest_buffered_rows: Gauge::default(),
            ingest_buffered_age_ms: Gauge::default(),
            ingest_held_rows: Gauge::default(),
            ingest_held_projects: Gauge::default(),
            ingest_memory_bytes: Gauge::default(),
            cache_lookups: Family::default(),
            storage_requests: Family::default(),
            storage_errors: Family::default(),
            rest_sign_requests: Family::default(),
            sts_calls: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "ingest_rows",
            "Rows committed by ingest",
            m.ingest_rows.clone(),
        );
        r.register_with_unit(
            "ingest",
            "Arrow bytes committed by ingest",
            Unit::Bytes,
            m.ingest_bytes.clone(),
        );
        r.register(
            "ingest_requests",
            "DoPut ingest streams by outcome",
            m.ingest_requests.clone(),
        );
        r.register_with_unit(
            "ingest_request_duration",
            "Time of DoPut ingest streams on the server, first message to answer",
            Unit::Seconds,
            m.ingest_request_seconds.clone(),
        );
        r.register_with_unit(
            "wal_write_duration",
            "Time of write-ahead log writes (a write and an fsync, or a PUT), one per group of DoPuts",
            Unit::Seconds,
            m.wal_write_seconds.clone(),
        );
        r.register("commits", "Table commits by outcome", m.commits.clone());
        r.register_with_unit(
            "commit_duration",
            "Time of successful commits",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register(
            "ingest_buffered_rows",
            "Rows acknowledged but not yet committed to the table",
            m.ingest_buffered_rows.clone(),
        );
        r.register(
            "ingest_buffered_age_ms",
            "Age of the oldest acknowledged row not yet committed, in ms",
            m.ingest_buffered_age_ms.clone(),
        );
        r.register(
            "ingest_held_rows",
            "Buffered rows a flush held back until their project makes a sizeable file",
            m.ingest_held_rows.clone(),
        );
        r.register(
            "ingest_held_projects",
            "Projects whose rows a flush held back",
            m.ingest_held_projects.clone(),
        );
        r.register_with_unit(
            "ingest_memory",
            "Ingest data held against --max-buffered-mib: streams being read, \
             acknowledged rows until committed, and the copies queries gathered of them",
            Unit::Bytes,
            m.ingest_memory_bytes.clone(),
        );
        r.register("queries", "Queries by outcome", m.queries.clone());
        r.register_with_unit(
            "query_duration",
            "Time of queries, planning to last batch",
            Unit::Seconds,
            m.query_seconds.clone(),
        );
        r.register(
            "queries_running",
            "Queries running",
            m.queries_running.clone(),
        );
        r.register(
            "queries_queued",
            "Queries waiting for a slot",
            m.queries_queued.clone(),
        );
        r.register(
            "maintenance_runs",
            "Background maintenance runs by job and outcome",
            m.maintenance_runs.clone(),
        );
        r.register_with_unit(
            "compaction_rewritten",
            "Bytes of data files compaction replaced",
            Unit::Bytes,
            m.compaction_bytes.clone(),
        );
        r.register(
            "maintenance_lease_held",
            "1 while this node holds the maintenance lease",
            m.maintenance_lease_held.clone(),
        );
        r.register(
            "cache_lookups",
            "Cache lookups by cache and result",
            m.cache_lookups.clone(),
        );
        r.register(
            "storage_requests",
            "Storage requests by operation",
            m.storage_requests.clone(),
        );
        r.register(
            "storage_errors",
            "Failed storage requests by operation",
            m.storage_errors.clone(),
        );
        r.register(
            "rest_sign_requests",
            "REST catalog S3 signing requests: ok (signed) or rejected",
            m.rest_sign_requests.clone(),
        );
        r.register(
            "sts_calls",
            "STS AssumeRole calls for vended credentials by outcome",
            m.sts_calls.clone(),
        );
        m
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Count a storage request and, if it failed, an error.
    pub fn storage<T, E>(&self, op: &'static str, result: &Result<T, E>) {
        let label = StorageOp { op };
        self.storage_requests.get_or_create(&label).inc();
        if result.is_err() {
            self.storage_errors.get_or_create(&label).inc();
        }
    }

    /// Count a cache lookup.
    pub fn cache(&self, cache: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&CacheResult { cache, result })
            .inc();
    }

    /// Count a finished `DoPut` ingest stream.
    pub fn ingest_request(&self, ok: bool, took: Duration) {
        self.ingest_requests.get_or_create(&outcome(ok)).inc();
        self.ingest_request_seconds.observe(took.as_secs_f64());
    }

    /// Count a finished query.
    pub fn query(&self, ok: bool, took: Duration) {
        self.queries.get_or_create(&outcome(ok)).inc();
        self.query_seconds.observe(took.as_secs_f64());
    }
}

/// The `outcome` label for a success flag.
pub fn outcome(ok: bool) -> Outcome {
    Outcome {
        outcome: if ok { "ok" } else { "error" },
    }
}

/// Count one run of a background `job` (`maintenance_runs_total`).
pub fn count_run(job: &'static str, ok: bool) {
    metrics()
        .maintenance_runs
        .get_or_create(&JobOutcome {
            job,
            outcome: outcome(ok).outcome,
        })
        .inc();
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
