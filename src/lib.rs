//! # Raindrop
//!
//! ML-telemetry ingestion and query engine: an Arrow Flight SQL server that
//! embeds DataFusion over one Apache Iceberg table, `raw_events`,
//! partitioned by `identity(project_id)` and `day(event_timestamp)`.
//!
//! # Layout
//! - [`config`]: CLI / environment configuration.
//! - [`error`]: the crate error and its mapping to gRPC statuses.
//! - [`schema`]: the `raw_events` schema, partition spec and file format.
//! - [`catalog`]: opening the Iceberg catalog and storage; table bootstrap.
//! - [`tenant`]: tokens → principals, name validation.
//! - [`query`]: per-request DataFusion sessions, SQL policy, the
//!   tenant-scoped table provider, `event_day` pruning, the parallel scan.
//! - [`ingest`]: batch validation/normalisation and the Iceberg writer.
//! - [`flight`]: the Flight SQL service (thin protocol layer) and auth.
//! - [`maintenance`]: orphan-file scans (and, later, compaction/expiry).
//! - [`server`]: wiring and the serve loop.
//! - [`client`]: a small Flight SQL client (demo, tests, benches).
//! - [`demo`]: realistic telemetry generator and the end-to-end demo.

#![warn(missing_docs)]

pub mod catalog;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod flight;
pub mod ingest;
pub mod maintenance;
pub mod query;
pub mod schema;
pub mod server;
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
