//! `IcebergScanExec`: a parallel scan of planned Iceberg file tasks.
//!
//! `iceberg-datafusion`'s scan runs as one partition and plans files when it
//! executes. Here files are planned once, while the query is planned, so
//! `EXPLAIN` shows exactly which files a query will open (and how many
//! manifests it considered). The files are spread over the session's target
//! partitions and read with DataFusion's Parquet source over the table's
//! `FileIO` (row-group and page pruning, cached footers), or with iceberg's
//! Arrow reader where only it reads them right (delete files, renamed
//! columns, non-Parquet files).
//!
//! - [`plan`]: planning (files, pruning by day, choice of reader);
//! - [`stats`]: statistics known from planning alone;
//! - [`exec`]: `ExecutionPlan`: reading the planned files in parallel.

mod exec;
mod plan;
mod stats;

pub(crate) use exec::event_day;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::Statistics;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{ExecutionPlan, PlanProperties};
use iceberg::expr::Predicate;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;

use super::ScanCaches;

/// A column of the scan's output.
#[derive(Debug, Clone)]
pub enum OutputColumn {
    /// A table column, read by name.
    Table(String),
    /// `event_day`: the UTC date of `event_timestamp`.
    EventDay,
}

/// What the planner decided, shown by `EXPLAIN` and used by tests.
#[derive(Debug, Clone, Default)]
pub struct ScanPlan {
    /// Data files that will be opened.
    pub files: Vec<String>,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Their total row count (before row-level filtering).
    pub records: u64,
    /// Data manifests whose partition ranges overlap the predicate, and all
    /// data manifests of the snapshot (see [`super::manifests`]).
    pub manifests: (usize, usize),
}

/// What a scan needs besides the table: the provider's view of it and the
/// query's pushed-down parts.
pub struct ScanRequest<'a> {
    /// Name shown by `EXPLAIN`.
    pub label: String,
    /// The provider's schema (table columns, plus `event_day` for
    /// `raw_events`); `projection` indexes into it.
    pub full_schema: &'a SchemaRef,
    /// Output columns, as indexes into `full_schema`.
    pub projection: Option<&'a Vec<usize>>,
    /// Iceberg predicate: prunes manifests and files while planning.
    pub predicate: Option<Predicate>,
    /// Filter over table columns: prunes row groups and pages while reading.
    pub row_filter: Option<Expr>,
    /// Filters on `event_day` alone that the provider declared exact: each
    /// file has one `event_day` (its `day` partition value), so they are
    /// decided per file here and no row is filtered.
    pub day_filters: Vec<Expr>,
    /// Rows the query needs at most (only set when no filter remains above).
    pub limit: Option<usize>,
    /// Footer and manifest-list caches shared by every scan.
    pub caches: Arc<ScanCaches>,
}

/// How planned files are read.
#[derive(Debug)]
enum Reader {
    /// DataFusion's Parquet source over the table's `FileIO`: row-group and
    /// page pruning, footer cache, DataFusion's decoder.
    Parquet(Arc<dyn ExecutionPlan>),
    /// iceberg's Arrow reader, for what the Parquet source cannot do right
    /// (delete files, renamed columns, non-Parquet files); the reason is shown.
    Iceberg {
        read_columns: Vec<String>,
        reason: &'static str,
    },
}

/// Execution plan that reads planned Iceberg file tasks in parallel.
#[derive(Debug)]
pub struct IcebergScanExec {
    table: Table,
    label: String,
    output: Vec<OutputColumn>,
    schema: SchemaRef,
    partitions: Vec<Vec<FileScanTask>>,
    predicate: Option<Predicate>,
    reader: Reader,
    plan: ScanPlan,
    statistics: Statistics,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl IcebergScanExec {
    /// Files and bytes this scan will read.
    pub fn scan_plan(&self) -> &ScanPlan {
        &self.plan
    }
}

fn to_df(e: iceberg::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Microseconds in a day: `event_day` is the floor of a UTC timestamp.
const DAY_MICROS: i64 = 86_400_000_000;
