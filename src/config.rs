//! Command-line and environment configuration. Every flag has a
//! `RAINDROP_*` environment variable; defaults run everything from one local
//! data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::tenant::Role;

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
}

/// `raindrop compact`.
#[derive(Debug, Clone, Args)]
pub struct CompactConfig {
    /// Storage options.
    #[clap(flatten)]
    pub storage: StorageConfig,
    /// Compact a partition once it has at least this many small files.
    #[clap(long, default_value_t = 2)]
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

/// Where tables and the catalog live.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Data directory for the embedded default (SQLite catalog, warehouse, tokens).
    #[clap(long, env = "RAINDROP_DATA_DIR", default_value = "./raindrop-data")]
    pub data_dir: PathBuf,
    /// SQL catalog URI; default `sqlite://<data-dir>/catalog.db`. Postgres: `postgres://…`.
    #[clap(long, env = "RAINDROP_CATALOG_URI")]
    pub catalog_uri: Option<String>,
    /// Warehouse location; default `file://<data-dir>/warehouse`.
    #[clap(long, env = "RAINDROP_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// Catalog name recorded in the SQL catalog (PyIceberg's `SqlCatalog(name)`).
    #[clap(long, env = "RAINDROP_CATALOG_NAME", default_value = "raindrop")]
    pub catalog_name: String,
    /// Iceberg namespace (and SQL schema) of the `raw_events` table.
    #[clap(long, env = "RAINDROP_NAMESPACE", default_value = crate::schema::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

impl StorageConfig {
    /// Embedded defaults rooted at `data_dir` (used by tests and the demo).
    pub fn in_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            catalog_uri: None,
            warehouse: None,
            catalog_name: "raindrop".into(),
            namespace: crate::schema::DEFAULT_NAMESPACE.into(),
        }
    }

    /// Token file used unless `--tokens-file` says otherwise.
    pub fn default_tokens_file(&self) -> PathBuf {
        self.data_dir.join("tokens.json")
    }
}

/// `raindrop serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[clap(long, env = "RAINDROP_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Storage options.
    #[clap(flatten)]
    pub storage: StorageConfig,
    /// Token file (hashed tokens); default `<data-dir>/tokens.json`.
    #[clap(long, env = "RAINDROP_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Limits.
    #[clap(flatten)]
    pub limits: LimitsConfig,
    /// TLS.
    #[clap(flatten)]
    pub tls: TlsConfig,
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
            storage: StorageConfig::in_dir(data_dir),
            tokens_file: None,
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
        }
    }

    /// Effective token file.
    pub fn tokens_file(&self) -> PathBuf {
        self.tokens_file
            .clone()
            .unwrap_or_else(|| self.storage.default_tokens_file())
    }
}

/// Request limits.
#[derive(Debug, Clone, Args)]
pub struct LimitsConfig {
    /// Largest decoded size of one ingest stream, in MiB; larger streams are
    /// rejected with `ResourceExhausted` before anything is committed.
    #[clap(long, env = "RAINDROP_MAX_INGEST_MIB", default_value_t = 512)]
    pub max_ingest_mib: usize,
    /// Ingest data held in memory across all streams at once, in MiB; when
    /// full, new data waits up to 2 s, then gets `ResourceExhausted`.
    #[clap(long, env = "RAINDROP_MAX_BUFFERED_MIB", default_value_t = 2048)]
    pub max_buffered_mib: usize,
    /// Largest gRPC message accepted, in MiB (one Arrow batch must fit).
    #[clap(long, env = "RAINDROP_MAX_MESSAGE_MIB", default_value_t = 64)]
    pub max_message_mib: usize,
    /// Longest time a commit waits for concurrent ingest streams to join it,
    /// in ms. 0 commits as soon as the previous commit is done (requests
    /// arriving meanwhile share the next one). Larger values make fewer,
    /// larger files at the cost of ingest latency.
    #[clap(long, env = "RAINDROP_COMMIT_MAX_DELAY_MS", default_value_t = 0)]
    pub commit_max_delay_ms: u64,
    /// How often the server compacts `raw_events` (rewrites each
    /// partition's small files as one), in seconds; 0 disables it. With
    /// several nodes on one catalog, enable it on one.
    #[clap(long, env = "RAINDROP_COMPACT_INTERVAL_SECS", default_value_t = 300)]
    pub compact_interval_secs: u64,
    /// Background compaction rewrites a partition once it has this many
    /// small files.
    #[clap(long, env = "RAINDROP_COMPACT_MIN_FILES", default_value_t = 4)]
    pub compact_min_files: usize,
    /// With background compaction: snapshots of `raw_events` older than
    /// this many hours are expired, and data files no remaining snapshot
    /// references (replaced by compaction, or left by failed commits) are
    /// deleted once an hour old. 0 keeps every snapshot. Retries are
    /// deduplicated across restarts only within the retained snapshots.
    #[clap(long, env = "RAINDROP_SNAPSHOT_RETENTION_HOURS", default_value_t = 24)]
    pub snapshot_retention_hours: u64,
    /// Memory one query may use (joins, aggregations, sorts), in MiB.
    #[clap(long, env = "RAINDROP_QUERY_MEMORY_MIB", default_value_t = 1024)]
    pub query_memory_mib: usize,
    /// Query time limit, in seconds.
    #[clap(long, env = "RAINDROP_QUERY_TIMEOUT_SECS", default_value_t = 300)]
    pub query_timeout_secs: u64,
    /// Largest result one query may return, in MiB.
    #[clap(long, env = "RAINDROP_MAX_RESULT_MIB", default_value_t = 1024)]
    pub max_result_mib: usize,
    /// Queries one project may run at once.
    #[clap(long, env = "RAINDROP_MAX_QUERIES_PER_TENANT", default_value_t = 8)]
    pub max_queries_per_tenant: usize,
    /// Query parallelism (DataFusion target partitions); 0 = number of cores.
    #[clap(long, env = "RAINDROP_QUERY_PARTITIONS", default_value_t = 0)]
    pub query_partitions: usize,
}

impl LimitsConfig {
    /// The query limits these settings describe.
    pub fn query_limits(&self) -> crate::query::limits::QueryLimits {
        crate::query::limits::QueryLimits {
            memory_bytes: self.query_memory_mib * 1024 * 1024,
            timeout: std::time::Duration::from_secs(self.query_timeout_secs),
            max_result_bytes: self.max_result_mib * 1024 * 1024,
            max_concurrent_per_tenant: self.max_queries_per_tenant,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_ingest_mib: 512,
            max_buffered_mib: 2048,
            max_message_mib: 64,
            commit_max_delay_ms: 0,
            compact_interval_secs: 300,
            compact_min_files: 4,
            snapshot_retention_hours: 24,
            query_memory_mib: 1024,
            query_timeout_secs: 300,
            max_result_mib: 1024,
            max_queries_per_tenant: 8,
            query_partitions: 0,
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

/// Which token file a `token` subcommand edits.
#[derive(Debug, Clone, Args)]
pub struct TokenFileArgs {
    /// Data directory (token file defaults to `<data-dir>/tokens.json`).
    #[clap(long, env = "RAINDROP_DATA_DIR", default_value = "./raindrop-data")]
    pub data_dir: PathBuf,
    /// Token file path.
    #[clap(long, env = "RAINDROP_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
}

impl TokenFileArgs {
    /// Effective token file.
    pub fn path(&self) -> PathBuf {
        self.tokens_file
            .clone()
            .unwrap_or_else(|| Path::new(&self.data_dir).join("tokens.json"))
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
