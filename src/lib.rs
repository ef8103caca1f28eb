//! # Raindrop
//!
//! ML-telemetry ingestion and query engine: an Arrow Flight SQL server that
//! embeds DataFusion over one Apache Iceberg table, `raw_events`,
//! partitioned by `identity(project_id)` and `day(event_timestamp)`.
//!
//! # Layout
//!
//! Dependencies point down this list (checked by `scripts/check_layers.py`
//! in CI): protocol → domain → catalog → schema/batch/error.
//!
//! - [`server`]: wiring (settings → domain types), serving on a bound
//!   listener; [`config`]: the CLI and environment flags, plain data.
//! - [`demo`]: the telemetry generator and `raindrop demo`; [`client`]: a
//!   small Flight SQL client (demo, tests, benches).
//! - [`flight`]: the Flight SQL protocol layer. `service` (one short
//!   delegate per RPC), `statement` (queries, updates, prepared
//!   statements), `put` (DoPut decoding, ingest), `metadata` (catalogs,
//!   schemas, tables), `encode`, `auth`, `ticket`, `planned`/`prepared`
//!   (statement caches), `ipc` (size checks), `sql_info`.
//! - [`rest`]: the read-only Iceberg REST catalog on `--http-addr`, scoped
//!   by token: a tenant's `raw_events` is metadata derived for it
//!   (`catalog::tenant_view`); on S3 its files are read through the
//!   remote signer or vended keys, limited to the tenant's prefixes.
//! - [`maintenance`]: `compact` (choose and rewrite small files),
//!   `replace` (the hand-built replace commit), `schedule` (background
//!   jobs of `serve`), snapshot expiry and orphan files (`mod`).
//! - [`query`]: per-request sessions (`mod`), SQL `policy`, `table`
//!   providers, `pruning` (`event_day` → Iceberg ranges), `scan`
//!   (`plan` / `stats` / `exec` of the parallel Iceberg scan), `reader`
//!   (Parquet over `FileIO`, footer cache), `manifests`, `limits`,
//!   `params`, `update` (DDL/DML through ingest), `views`, `functions`.
//! - [`ingest`]: targets and modes (`mod`), `validate` (coercion),
//!   `commit` (group commit, dedup), `write` (the Parquet data-file writer
//!   shared with compaction), `layout` (row order inside files).
//! - [`tenant`]: roles and `Principal` (`mod`), `tokens`, allow-listed
//!   `names`, and `scope`: every tenancy rule (scan predicate, per-file
//!   check, project stamp on writes).
//! - [`catalog`]: opening the SQL catalog (`mod`), the table metadata
//!   `cache` and catalog pointer, `tenant_view` (per-tenant metadata),
//!   `tiers` (what to merge, by size: data files and manifests).
//! - [`storage`]: where files live: `local` (one `syncfs` per commit) or
//!   `s3` (opendal), behind iceberg's storage trait (`mod`); `signer` and
//!   `vend` (other engines' scoped S3 reads), and `audit`
//!   (the read log the isolation tests check).
//! - [`schema`]: the `raw_events` schema, partition spec and Parquet
//!   settings; `partition` values of planned files.
//! - [`batch`]: Arrow batch helpers; [`background`]: the lower-priority
//!   threads that sort, decode and encode for flushes and compaction;
//!   [`error`]: the crate error and its one mapping to gRPC statuses.
//!
//! # Request paths
//!
//! ```text
//! query:  flight::service → flight::statement → query::QueryEngine::plan
//!         (session, policy, table → tenant::scope) → scan::plan → DoGet:
//!         query::limits::LimitedStream over scan::exec
//! ingest: flight::service → flight::put (decode) → ingest::Ingestor
//!         (validate + tenant::scope stamp) → ingest::commit (group) →
//!         ingest::write (Parquet) → catalog (fast-append) → storage
//! ```

#![warn(missing_docs)]

pub mod background;
pub mod batch;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod flight;
pub mod http;
pub mod ingest;
pub mod maintenance;
pub mod metrics;
pub mod query;
pub mod rest;
pub mod schema;
pub mod server;
pub mod storage;
pub mod tenant;

pub use error::{Error, Result};

/// Keep library errors free of backtraces unless the operator asked for
/// them with `RUST_LIB_BACKTRACE`. iceberg builds (and drops) `Error`s in
/// hot loops, e.g. per manifest while planning a scan; with
/// `RUST_BACKTRACE=1` each one captures a backtrace, which costs
/// milliseconds per query. Panics still print theirs.
///
/// Call first thing in `main`, before any thread exists.
pub fn disable_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet (documented precondition), so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}
