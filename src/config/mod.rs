//! Command-line and environment configuration: plain data. Every flag has a
//! `RAINDROP_*` environment variable; defaults run everything from one local
//! data directory. Each default is written once, here or (where the domain
//! owns it) in the module that uses it; `server.rs` turns these settings
//! into the domain's own types.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::catalog::DEFAULT_DATA_DIR;
pub use crate::catalog::StorageConfig;
use crate::ingest::log::WalPlace;
use crate::maintenance::compact;
use crate::tenant::Role;
use crate::tenant::tokens::{self, TokenSource};

/// Raindrop: ML telemetry in Apache Iceberg, served over Arrow Flight SQL.
#[derive(Debug, Parser)]
#[command(name = "raindrop", version, about)]
pub struct Cli {
    /// Subcommand to run.
    #[command(subcommand)]
    pub command: Command,
    /// Logging options.
    #[clap(flatten)]
    pub log: LogConfig,
}

/// Subcommands.
// Parsed once per process: the size difference between variants is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the Flight SQL server.
    Serve(ServeConfig),
    /// Manage access tokens (works while the server runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Generate realistic telemetry, ingest it over Flight and run the seed query.
    Demo(DemoConfig),
    /// Maintenance: find (and delete) data files no snapshot references.
    Orphans(OrphansConfig),
    /// Maintenance: rewrite each partition's small data files as one file.
    Compact(CompactConfig),
    /// Project lifecycle: retention, deletion (works while the server runs).
    #[command(subcommand)]
    Project(ProjectCommand),
}

/// `raindrop project …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ProjectCommand {
    /// Keep a project's events for this many days (whole UTC days of
    /// `event_day`); older partitions are dropped by maintenance, hourly.
    SetRetention {
        /// Project id.
        project: String,
        /// Days to keep (1-36500).
        #[clap(long, conflicts_with = "forever", required_unless_present = "forever")]
        days: Option<i64>,
        /// Keep the project's events forever (the default).
        #[clap(long)]
        forever: bool,
        /// Where the project's settings and tokens live.
        #[clap(flatten)]
        args: ProjectArgs,
    },
    /// List projects with settings: retention, deletion.
    List {
        /// Where the project settings live.
        #[clap(flatten)]
        args: ProjectArgs,
    },
    /// Apply every project's retention now (the server does it hourly).
    EnforceRetention {
        /// Where the table and the project settings live.
        #[clap(flatten)]
        args: ProjectArgs,
    },
    /// Delete a project: its events, its own tables, its tokens. Irreversible.
    Delete {
        /// Project id.
        project: String,
        /// Confirm: without it, nothing is deleted.
        #[clap(long)]
        yes: bool,
        /// Where the table, the project settings and tokens live.
        #[clap(flatten)]
        args: ProjectArgs,
    },
}

/// The storage and token options of `raindrop project`: those `serve` was
/// started with.
#[derive(Debug, Clone, Args)]
pub struct ProjectArgs {
    /// Storage options.
    #[clap(flatten)]
    pub storage: StorageConfig,
    /// Token file (default `<data-dir>/tokens.json`, or the catalog
    /// database when it is PostgreSQL).
    #[clap(long, env = "RAINDROP_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
}

impl ProjectArgs {
    /// Where tokens live, as `serve` with the same flags reads them.
    pub fn token_source(&self) -> TokenSource {
        let file = self
            .tokens_file
            .clone()
            .unwrap_or_else(|| self.storage.data_dir.join(tokens::FILE_NAME));
        token_source(&self.tokens_file, &self.storage, file)
    }
}

/// `raindrop compact`.
#[derive(Debug, Clone, Args)]
pub struct CompactConfig {
    /// Storage options.
    #[clap(flatten)]
    pub storage: StorageConfig,
    /// Compact a partition once it has at least this many small files.
    #[clap(long, default_value_t = compact::MIN_FILES)]
    pub min_files: usize,
}

/// `raindrop orphans`.
#[derive(Debug, Clone, Args)]
pub struct OrphansConfig {
    /// Storage options.
    #[clap(flatten)]
    pub storage: StorageConfig,
    /// Only files last modified at least this many minutes ago (protects
    /// commits in flight on any node).
    #[clap(long, default_value_t = 60)]
    pub min_age_mins: u64,
    /// Delete them (default: only list).
    #[clap(long)]
    pub delete: bool,
}

/// Logging.
#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log filter, e.g. `info` or `raindrop=debug` (RUST_LOG is honoured too).
    #[clap(
        long = "log",
        env = "RAINDROP_LOG",
        default_value = "info",
        global = true
    )]
    pub filter: String,
    /// Emit logs as JSON lines.
    #[clap(long = "log-json", env = "RAINDROP_LOG_JSON", global = true)]
    pub json: bool,
}

/// `raindrop serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[clap(long, env = "RAINDROP_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Address of the HTTP endpoints (Prometheus `/metrics`, `/healthz`,
    /// `/readyz`); off unless set. Unauthenticated: keep it private.
    #[clap(long, env = "RAINDROP_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// On SIGTERM/Ctrl-C, how long in-flight calls (a `DoPut` being sent or
    /// committed, a query streaming) may run before the process exits
    /// anyway. New calls are refused and `/readyz` answers 503 meanwhile.
    #[clap(long, env = "RAINDROP_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Storage options.
    #[clap(flatten)]
    pub storage: StorageConfig,
    /// Token file (hashed tokens); default `<data-dir>/tokens.json`.
    #[clap(long, env = "RAINDROP_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Write-ahead log of acknowledged `raw_events` rows not yet committed;
    /// default `<data-dir>/wal`. On local disk that survives restarts, one
    /// per node (a second process opening it is refused).
    #[clap(long, env = "RAINDROP_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Where the write-ahead log lives: `local` (`--wal-dir`, fsync'd on
    /// this node's disk) or `warehouse` (objects next to the table, for
    /// nodes whose disk does not outlive them; a `DoPut` is acknowledged
    /// once its object is written, and another node adopts the log of a
    /// node that stops).
    #[clap(long, env = "RAINDROP_WAL_STORAGE", value_enum, default_value_t = WalStorage::Local)]
    pub wal_storage: WalStorage,
    /// Lease on a `warehouse` log in the catalog database, in seconds: a
    /// node that stops is adopted this long after its last renewal.
    #[clap(long, env = "RAINDROP_WAL_LEASE_SECS", default_value_t = 30)]
    pub wal_lease_secs: u64,
    /// Limits.
    #[clap(flatten)]
    pub limits: LimitsConfig,
    /// TLS.
    #[clap(flatten)]
    pub tls: TlsConfig,
}

/// Where the write-ahead log lives (`--wal-storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WalStorage {
    /// A directory on this node's disk (`--wal-dir`).
    Local,
    /// Objects in the warehouse's storage.
    Warehouse,
}

/// TLS for the Flight endpoint. Without a certificate the server speaks
/// plaintext gRPC (fine on loopback, not across a network).
#[derive(Debug, Clone, Default, Args)]
pub struct TlsConfig {
    /// PEM certificate chain; enables TLS (with --tls-key).
    #[clap(long, env = "RAINDROP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[clap(long, env = "RAINDROP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require clients to present a certificate it signed (mutual TLS).
    #[clap(long, env = "RAINDROP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServeConfig {
    /// Config for a server rooted at `data_dir` with default limits.
    pub fn in_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            addr: "127.0.0.1:0".parse().expect("valid address"),
            http_addr: None,
            shutdown_grace_secs: 30,
            storage: StorageConfig::in_dir(data_dir),
            tokens_file: None,
            wal_dir: None,
            wal_storage: WalStorage::Local,
            wal_lease_secs: 30,
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
        }
    }

    /// Effective write-ahead log directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.wal_dir
            .clone()
            .unwrap_or_else(|| self.storage.data_dir.join("wal"))
    }

    /// Where the write-ahead log lives.
    pub fn wal_place(&self) -> WalPlace {
        match self.wal_storage {
            WalStorage::Local => WalPlace::Local(self.wal_dir()),
            WalStorage::Warehouse => WalPlace::Warehouse {
                lease_ttl: std::time::Duration::from_secs(self.wal_lease_secs.max(1)),
            },
        }
    }

    /// Effective token file.
    pub fn tokens_file(&self) -> PathBuf {
        self.tokens_file
            .clone()
            .unwrap_or_else(|| self.storage.data_dir.join(tokens::FILE_NAME))
    }

    /// Where tokens live: see [`token_source`].
    pub fn token_source(&self) -> TokenSource {
        token_source(&self.tokens_file, &self.storage, self.tokens_file())
    }
}

/// Tokens live in the catalog database when it is PostgreSQL (several
/// nodes share it, so they must share tokens), unless a token file is
/// named explicitly; in the token file otherwise (the embedded default).
fn token_source(
    explicit_file: &Option<PathBuf>,
    storage: &StorageConfig,
    file: PathBuf,
) -> TokenSource {
    match (explicit_file, &storage.catalog_uri) {
        (None, Some(uri)) if uri.starts_with("postgres") => TokenSource::Catalog {
            uri: uri.clone(),
            catalog_name: storage.catalog_name.clone(),
        },
        _ => TokenSource::File(file),
    }
}

/// Defaults of [`LimitsConfig`], each written once.
pub mod limits;

/// Request limits.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Largest decoded size of one ingest stream, in MiB; larger streams are
    /// rejected with `ResourceExhausted` before anything is committed.
    #[clap(long, env = "RAINDROP_MAX_INGEST_MIB", default_value_t = limits::MAX_INGEST_MIB)]
    pub max_ingest_mib: usize,
    /// Ingest data held in memory across all streams at once, in MiB; when
    /// full, new data waits up to 2 s, then gets `ResourceExhausted`.
    #[clap(long, env = "RAINDROP_MAX_BUFFERED_MIB", default_value_t = limits::MAX_BUFFERED_MIB)]
    pub max_buffered_mib: usize,
    /// Largest gRPC message accepted, in MiB (one Arrow batch must fit).
    #[clap(long, env = "RAINDROP_MAX_MESSAGE_MIB", default_value_t = limits::MAX_MESSAGE_MIB)]
    pub max_message_mib: usize,
    /// Longest time a commit waits for concurrent ingest streams to join it,
    /// in ms. 0 commits as soon as the previous commit is done (requests
    /// arriving meanwhile share the next one). Larger values make fewer,
    /// larger files at the cost of ingest latency.
    #[clap(long, env = "RAINDROP_COMMIT_MAX_DELAY_MS", default_value_t = limits::COMMIT_MAX_DELAY_MS)]
    pub commit_max_delay_ms: u64,
    /// `raw_events` ingest is acknowledged once durable in the write-ahead
    /// log, and what is buffered is committed to the table this often, in
    /// ms: other engines see rows this much later (Flight SQL queries on
    /// this node at once). 0 = no log: each `DoPut` commits before it is
    /// answered (one snapshot and set of files per request group).
    #[clap(long, env = "RAINDROP_FLUSH_INTERVAL_MS", default_value_t = limits::FLUSH_INTERVAL_MS)]
    pub flush_interval_ms: u64,
    /// Commit buffered rows sooner once this many MiB are buffered.
    #[clap(long, env = "RAINDROP_FLUSH_MIB", default_value_t = limits::FLUSH_MIB)]
    pub flush_mib: usize,
    /// A flush holds back a project's rows while it has less than this
    /// many MiB buffered (and they are younger than `--flush-hold-ms`), so
    /// small tenants do not get a tiny file per flush. 0 = never hold.
    #[clap(long, env = "RAINDROP_FLUSH_HOLD_MIB", default_value_t = limits::FLUSH_HOLD_MIB)]
    pub flush_hold_mib: usize,
    /// The longest a held-back project's rows wait, in ms: other engines
    /// see a small tenant's rows up to this much later.
    #[clap(long, env = "RAINDROP_FLUSH_HOLD_MS", default_value_t = limits::FLUSH_HOLD_MS)]
    pub flush_hold_ms: u64,
    /// How often the server compacts `raw_events` (merges each
    /// partition's small files of similar size), in seconds, besides right
    /// after each flush of this node; 0 disables it. With
    /// several nodes on one catalog, one at a time does it (the holder of
    /// the maintenance lease).
    #[clap(long, env = "RAINDROP_COMPACT_INTERVAL_SECS", default_value_t = limits::COMPACT_INTERVAL_SECS)]
    pub compact_interval_secs: u64,
    /// Lifetime of the maintenance lease in the catalog database, in
    /// seconds: when its holder dies, another node takes over after this.
    #[clap(long, env = "RAINDROP_MAINTENANCE_LEASE_SECS", default_value_t = limits::MAINTENANCE_LEASE_SECS)]
    pub maintenance_lease_secs: u64,
    /// Background compaction merges a partition's small files of one size
    /// tier (4x apart) once the tier has this many.
    #[clap(long, env = "RAINDROP_COMPACT_MIN_FILES", default_value_t = compact::BACKGROUND_MIN_FILES)]
    pub compact_min_files: usize,
    /// Background compaction also merges across tiers so that a
    /// partition's small files stay at most this many: what it leaves,
    /// plus the file each flush adds before the next run. 0 = tiers alone
    /// (less rewriting, more files).
    #[clap(long, env = "RAINDROP_COMPACT_MAX_FILES", default_value_t = compact::BACKGROUND_MAX_FILES)]
    pub compact_max_files: usize,
    /// With background compaction: snapshots of `raw_events` older than
    /// this many hours are expired (checked every minute), with the
    /// manifests and manifest lists only they referenced; data and metadata
    /// files no remaining snapshot references (replaced by compaction, or
    /// left by failed commits) are deleted once an hour old. 0 = no age
    /// limit. Retries are
    /// deduplicated across restarts only within the retained snapshots.
    #[clap(long, env = "RAINDROP_SNAPSHOT_RETENTION_HOURS", default_value_t = limits::SNAPSHOT_RETENTION_HOURS)]
    pub snapshot_retention_hours: u64,
    /// With background compaction: at most this many snapshots of
    /// `raw_events` are kept (the newest), whatever their age; 0 = no
    /// limit, and at least 100 are kept. Every snapshot adds to the `metadata.json` each commit
    /// rewrites, so this bounds commit cost under a high commit rate.
    #[clap(long, env = "RAINDROP_SNAPSHOT_RETENTION_COUNT", default_value_t = limits::SNAPSHOT_RETENTION_COUNT)]
    pub snapshot_retention_count: usize,
    /// Memory one query may use (joins, aggregations, sorts), in MiB.
    #[clap(long, env = "RAINDROP_QUERY_MEMORY_MIB", default_value_t = limits::QUERY_MEMORY_MIB)]
    pub query_memory_mib: usize,
    /// Query time limit, in seconds.
    #[clap(long, env = "RAINDROP_QUERY_TIMEOUT_SECS", default_value_t = limits::QUERY_TIMEOUT_SECS)]
    pub query_timeout_secs: u64,
    /// Largest result one query may return, in MiB.
    #[clap(long, env = "RAINDROP_MAX_RESULT_MIB", default_value_t = limits::MAX_RESULT_MIB)]
    pub max_result_mib: usize,
    /// Queries running at once on this node, all projects together; more
    /// wait in their project's queue. 0 = two per core. Each may use
    /// `--query-memory-mib`, so this times that bounds query memory.
    #[clap(long, env = "RAINDROP_MAX_QUERIES", default_value_t = limits::MAX_QUERIES)]
    pub max_queries: usize,
    /// Queries one project may run at once; more wait in its queue. 0 =
    /// half of `--max-queries`, so one project never holds every slot.
    #[clap(long, env = "RAINDROP_MAX_QUERIES_PER_TENANT", default_value_t = limits::MAX_QUERIES_PER_TENANT)]
    pub max_queries_per_tenant: usize,
    /// Queries one project may have waiting for a slot; past it, new ones
    /// are refused with `ResourceExhausted`. 0 = refuse instead of waiting.
    #[clap(long, env = "RAINDROP_QUERY_QUEUE_PER_TENANT", default_value_t = limits::QUERY_QUEUE_PER_TENANT)]
    pub query_queue_per_tenant: usize,
    /// Longest a query waits for a slot before it is refused with
    /// `ResourceExhausted`, in seconds.
    #[clap(long, env = "RAINDROP_QUERY_QUEUE_WAIT_SECS", default_value_t = limits::QUERY_QUEUE_WAIT_SECS)]
    pub query_queue_wait_secs: u64,
    /// Memory for data read from an S3 warehouse, in MiB: small files are
    /// kept whole, larger ones by the ranges read, so hot queries make no
    /// requests. 0 disables it. Unused on local warehouses (the OS page
    /// cache does this there).
    #[clap(long, env = "RAINDROP_DATA_CACHE_MIB", default_value_t = limits::DATA_CACHE_MIB)]
    pub data_cache_mib: u64,
    /// Query parallelism (DataFusion target partitions); 0 = number of cores.
    #[clap(long, env = "RAINDROP_QUERY_PARTITIONS", default_value_t = limits::QUERY_PARTITIONS)]
    pub query_partitions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_ingest_mib: limits::MAX_INGEST_MIB,
            max_buffered_mib: limits::MAX_BUFFERED_MIB,
            max_message_mib: limits::MAX_MESSAGE_MIB,
            commit_max_delay_ms: limits::COMMIT_MAX_DELAY_MS,
            flush_interval_ms: limits::FLUSH_INTERVAL_MS,
            flush_mib: limits::FLUSH_MIB,
            flush_hold_mib: limits::FLUSH_HOLD_MIB,
            flush_hold_ms: limits::FLUSH_HOLD_MS,
            compact_interval_secs: limits::COMPACT_INTERVAL_SECS,
            compact_min_files: compact::BACKGROUND_MIN_FILES,
            compact_max_files: compact::BACKGROUND_MAX_FILES,
            snapshot_retention_hours: limits::SNAPSHOT_RETENTION_HOURS,
            snapshot_retention_count: limits::SNAPSHOT_RETENTION_COUNT,
            maintenance_lease_secs: limits::MAINTENANCE_LEASE_SECS,
            data_cache_mib: limits::DATA_CACHE_MIB,
            query_memory_mib: limits::QUERY_MEMORY_MIB,
            query_timeout_secs: limits::QUERY_TIMEOUT_SECS,
            max_result_mib: limits::MAX_RESULT_MIB,
            max_queries: limits::MAX_QUERIES,
            max_queries_per_tenant: limits::MAX_QUERIES_PER_TENANT,
            query_queue_per_tenant: limits::QUERY_QUEUE_PER_TENANT,
            query_queue_wait_secs: limits::QUERY_QUEUE_WAIT_SECS,
            query_partitions: limits::QUERY_PARTITIONS,
        }
    }
}

/// `raindrop token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (only its salted hash is stored).
    Create {
        /// Project the token belongs to (omit for `admin`).
        #[clap(long)]
        project: Option<String>,
        /// Role: read, ingest, read_write or admin.
        #[clap(long, default_value = "read_write")]
        role: Role,
        /// Use this secret instead of a generated one (at least 16 characters).
        #[clap(long, env = "RAINDROP_NEW_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Free-text label shown by `token list`.
        #[clap(long, default_value = "")]
        label: String,
        /// Token file options.
        #[clap(flatten)]
        file: TokenFileArgs,
    },
    /// List tokens (ids, projects, roles; never secrets).
    List {
        /// Token file options.
        #[clap(flatten)]
        file: TokenFileArgs,
    },
    /// Revoke a token by id; a running server stops accepting it at once.
    Revoke {
        /// Token id as shown by `token list`.
        id: String,
        /// Token file options.
        #[clap(flatten)]
        file: TokenFileArgs,
    },
}

/// Which tokens a `token` subcommand edits: the same as `serve` with the
/// same flags would read.
#[derive(Debug, Clone, Args)]
pub struct TokenFileArgs {
    /// Data directory (token file defaults to `<data-dir>/tokens.json`).
    #[clap(long, env = "RAINDROP_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Token file path.
    #[clap(long, env = "RAINDROP_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Catalog database; a `postgres://…` catalog keeps the tokens.
    #[clap(long, env = "RAINDROP_CATALOG_URI")]
    pub catalog_uri: Option<String>,
    /// Catalog name the tokens are filed under.
    #[clap(long, env = "RAINDROP_CATALOG_NAME", default_value = crate::catalog::DEFAULT_CATALOG_NAME)]
    pub catalog_name: String,
}

impl TokenFileArgs {
    /// Effective token file.
    pub fn path(&self) -> PathBuf {
        self.tokens_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(tokens::FILE_NAME))
    }

    /// Where the tokens live.
    pub fn source(&self) -> TokenSource {
        let mut storage = StorageConfig::in_dir(&self.data_dir);
        storage.catalog_uri = self.catalog_uri.clone();
        storage.catalog_name = self.catalog_name.clone();
        token_source(&self.tokens_file, &storage, self.path())
    }
}

/// `raindrop demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoConfig {
    /// Directory for the demo's embedded server; reset on each demo run
    /// (only if the demo created it).
    #[clap(long, env = "RAINDROP_DEMO_DIR", default_value = "./raindrop-demo")]
    pub data_dir: PathBuf,
    /// Number of tenants (projects); sizes are skewed.
    #[clap(long, env = "RAINDROP_DEMO_PROJECTS", default_value_t = 5)]
    pub projects: usize,
    /// Days of history, ending now.
    #[clap(long, env = "RAINDROP_DEMO_DAYS", default_value_t = 30)]
    pub days: u32,
    /// Total events across all projects.
    #[clap(long, env = "RAINDROP_DEMO_EVENTS", default_value_t = 1_000_000)]
    pub events: usize,
    /// Events per DoPut batch.
    #[clap(long, env = "RAINDROP_DEMO_BATCH", default_value_t = 50_000)]
    pub batch_rows: usize,
    /// Random seed, so runs are reproducible.
    #[clap(long, env = "RAINDROP_DEMO_SEED", default_value_t = 42)]
    pub seed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_flags() {
        let cli = Cli::try_parse_from(["raindrop", "serve"]).expect("serve parses without flags");
        let Command::Serve(serve) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(
            format!("{:?}", serve.limits),
            format!("{:?}", LimitsConfig::default())
        );
        let fixture = ServeConfig::in_dir(DEFAULT_DATA_DIR);
        assert_eq!(
            format!("{:?}", serve.storage),
            format!("{:?}", fixture.storage)
        );
    }
}
