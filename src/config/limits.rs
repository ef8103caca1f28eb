//! Defaults of [`super::LimitsConfig`], each written once.

/// Default of `--max-ingest-mib`.
pub const MAX_INGEST_MIB: usize = 512;
/// Default of `--max-buffered-mib`.
pub const MAX_BUFFERED_MIB: usize = 2048;
/// Default of `--max-message-mib`.
pub const MAX_MESSAGE_MIB: usize = 64;
/// Default of `--commit-max-delay-ms`.
pub const COMMIT_MAX_DELAY_MS: u64 = 0;
/// Default of `--flush-interval-ms`. Every flush adds a file to each
/// tenant-day it touches, which compaction then rewrites: at 2 s, a
/// 100k rows/s stream on 2 cores made compaction fall behind
/// (`benches/stream.rs` soak). Flight SQL queries see buffered rows at
/// once; only other engines wait for the flush.
pub const FLUSH_INTERVAL_MS: u64 = 10_000;
/// Default of `--flush-mib`.
pub const FLUSH_MIB: usize = 256;
/// Default of `--flush-hold-mib`: a project with less than this
/// buffered (Arrow bytes; about a fifth as Parquet) waits for more.
pub const FLUSH_HOLD_MIB: usize = 8;
/// Default of `--flush-hold-ms`: six flush intervals, so a quiet
/// tenant-day gains a file a minute instead of one per flush.
pub const FLUSH_HOLD_MS: u64 = 60_000;
/// Default of `--compact-interval-secs`.
/// Tiered runs are short, and a hot tenant-day gains a file per flush:
/// frequent runs keep its small files few (`benches/stream.rs` soak).
pub const COMPACT_INTERVAL_SECS: u64 = 10;
/// Default of `--snapshot-retention-hours`.
pub const SNAPSHOT_RETENTION_HOURS: u64 = 24;
/// Default of `--snapshot-retention-count`.
/// Every retained snapshot keeps its manifest list and the manifests it
/// names on storage: ~75 KB per snapshot at 1k-row commits from 50
/// tenants (`benches/stream.rs`), ~2 MB with 1,000 tenants and one
/// unbuffered commit per 1k-row `DoPut` (`benches/metadata_growth.py`).
pub const SNAPSHOT_RETENTION_COUNT: usize = 200;
/// Default of `--data-cache-mib`.
pub const DATA_CACHE_MIB: u64 = 512;
/// Default of `--maintenance-lease-secs`.
pub const MAINTENANCE_LEASE_SECS: u64 = 30;
/// Default of `--query-memory-mib`.
pub const QUERY_MEMORY_MIB: usize = 1024;
/// Default of `--query-timeout-secs`.
pub const QUERY_TIMEOUT_SECS: u64 = 300;
/// Default of `--max-result-mib`.
pub const MAX_RESULT_MIB: usize = 1024;
/// Default of `--max-queries`: 0 = two per core.
pub const MAX_QUERIES: usize = 0;
/// Queries running at once per core, when `--max-queries` is 0. One per
/// core gave the lowest tail latency for dashboards in
/// `benches/dashboard.rs`; two keep a long query from stalling everyone
/// else's for its whole run, at 9% more p99 (benches/README.md).
pub const QUERIES_PER_CORE: usize = 2;
/// Default of `--max-queries-per-tenant`: 0 = half of `--max-queries`.
pub const MAX_QUERIES_PER_TENANT: usize = 0;
/// Default of `--query-queue-per-tenant`.
pub const QUERY_QUEUE_PER_TENANT: usize = 256;
/// Default of `--query-queue-wait-secs`.
pub const QUERY_QUEUE_WAIT_SECS: u64 = 60;
/// Default of `--query-partitions`.
pub const QUERY_PARTITIONS: usize = 0;
