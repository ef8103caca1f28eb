//! The one Iceberg write path: every ingest (telemetry or tenant tables)
//! ends here, so file format, layout and commit rules are decided once.
//!
//! Batches are split by partition (`RecordBatchPartitionSplitter` computes
//! `identity(project_id)` / `day(event_timestamp)`), written as ZSTD Parquet
//! through iceberg's rolling data-file writer, then committed as a single
//! fast-append snapshot. Concurrent streams into one table share files and
//! a snapshot (group commit). A caller learns its row count only after the
//! catalog accepted the commit; files of a failed commit are deleted.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::array::{ArrayRef, AsArray, UInt32Array};
use arrow::row::{RowConverter, SortField};
use iceberg::arrow::{PartitionValueCalculator, arrow_struct_to_literal};
use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, TableIdent};

use tokio::sync::{mpsc, oneshot};

use crate::catalog::cache::TableCache;
use crate::error::{Error, Result};
use crate::schema;

/// What a committed append produced.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    /// Rows committed for this request.
    pub rows: u64,
    /// Data files added by the commit that carried this request (shared
    /// with the other requests of its group).
    pub files: Vec<String>,
    /// Snapshot created by that commit (`None` when nothing was written).
    pub snapshot_id: Option<i64>,
    /// True when this request id had been committed before: nothing new
    /// was written.
    pub deduplicated: bool,
}

/// Group-commit settings.
#[derive(Debug, Clone, Copy)]
pub struct CommitConfig {
    /// How long a commit may wait for more requests to share it. `0` (the
    /// default) commits as soon as the previous commit finishes: requests
    /// that arrive meanwhile form the next group, so grouping grows with
    /// load and an idle server adds no latency.
    pub max_delay: Duration,
    /// A group stops gathering once it holds this many bytes.
    pub target_bytes: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            max_delay: Duration::ZERO,
            target_bytes: schema::TARGET_FILE_SIZE,
        }
    }
}

/// Snapshot summary property listing the request ids a commit carried,
/// as `id=rows` pairs separated by `,`: committed atomically with the data,
/// so deduplication survives restarts.
pub const REQUEST_IDS_PROPERTY: &str = "raindrop.request-ids";
/// Committed request ids remembered per table for deduplication.
pub const DEDUP_WINDOW: usize = 100_000;
/// Snapshots scanned for request ids when a table's committer starts.
const DEDUP_HISTORY_SNAPSHOTS: usize = 1_000;

struct Pending {
    prepared: Prepared,
    rows: u64,
    bytes: usize,
    request_id: Option<String>,
    reply: oneshot::Sender<Result<AppendOutcome>>,
}

/// Remembered request ids: (rows, snapshot) per id, oldest evicted first.
#[derive(Default)]
struct Dedup {
    seen: HashMap<String, (u64, i64)>,
    order: VecDeque<String>,
}

impl Dedup {
    fn insert(&mut self, id: String, rows: u64, snapshot: i64) {
        if self.seen.insert(id.clone(), (rows, snapshot)).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > DEDUP_WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    /// Learn the ids recorded in a table's recent snapshots.
    fn load(&mut self, table: &Table) {
        let mut snapshots: Vec<_> = table.metadata().snapshots().collect();
        snapshots.sort_by_key(|s| s.timestamp_ms());
        let skip = snapshots.len().saturating_sub(DEDUP_HISTORY_SNAPSHOTS);
        for snap in snapshots.into_iter().skip(skip) {
            if let Some(ids) = snap
                .summary()
                .additional_properties
                .get(REQUEST_IDS_PROPERTY)
            {
                for pair in ids.split(',') {
                    if let Some((id, rows)) = pair.rsplit_once('=') {
                        self.insert(
                            id.to_string(),
                            rows.parse().unwrap_or(0),
                            snap.snapshot_id(),
                        );
                    }
                }
            }
        }
    }
}

/// Recent catalog-commit latencies (applying the append, the catalog's
/// compare-and-swap and its confirmation; not writing the files), for
/// benchmarks and diagnostics. Bounded: the newest `CAPACITY` are kept.
#[derive(Debug, Default)]
pub struct CommitTimes(Mutex<VecDeque<Duration>>);

impl CommitTimes {
    const CAPACITY: usize = 10_000;

    fn record(&self, d: Duration) {
        let mut q = self.0.lock().expect("commit times lock");
        if q.len() == Self::CAPACITY {
            q.pop_front();
        }
        q.push_back(d);
    }

    /// The recorded latencies, oldest first.
    pub fn snapshot(&self) -> Vec<Duration> {
        self.0
            .lock()
            .expect("commit times lock")
            .iter()
            .copied()
            .collect()
    }
}

/// One committer task per table, fed through a channel.
struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
    dedup: Arc<Mutex<Dedup>>,
}

/// Writes and commits data files with group commit: one committer per
/// table gathers the batches of all concurrent streams into one set of
/// files and one snapshot, and answers each stream only after that commit.
pub struct TableWriter {
    catalog: Arc<dyn Catalog>,
    tables: Arc<TableCache>,
    config: CommitConfig,
    committers: tokio::sync::Mutex<HashMap<TableIdent, Committer>>,
    commit_times: Arc<CommitTimes>,
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWriter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TableWriter {
    /// A writer over `catalog`, loading tables through `tables` (so a
    /// commit's base is usually the cached result of the previous commit).
    pub fn new(catalog: Arc<dyn Catalog>, tables: Arc<TableCache>, config: CommitConfig) -> Self {
        Self {
            catalog,
            tables,
            config,
            committers: tokio::sync::Mutex::new(HashMap::new()),
            commit_times: Arc::default(),
        }
    }

    /// Latencies of recent catalog commits, across tables.
    pub fn commit_times(&self) -> &CommitTimes {
        &self.commit_times
    }

    async fn committer(
        &self,
        ident: &TableIdent,
    ) -> Result<(mpsc::UnboundedSender<Pending>, Arc<Mutex<Dedup>>)> {
        let mut committers = self.committers.lock().await;
        if let Some(c) = committers.get(ident).filter(|c| !c.queue.is_closed()) {
            return Ok((c.queue.clone(), c.dedup.clone()));
        }
        let table = self.tables.load(self.catalog.as_ref(), ident).await?;
        let mut dedup = Dedup::default();
        dedup.load(&table);
        let dedup = Arc::new(Mutex::new(dedup));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_committer(
            self.catalog.clone(),
            self.tables.clone(),
            ident.clone(),
            self.config,
            rx,
            dedup.clone(),
            self.commit_times.clone(),
        ));
        committers.insert(
            ident.clone(),
            Committer {
                queue: tx.clone(),
                dedup: dedup.clone(),
            },
        );
        Ok((tx, dedup))
    }

    /// Forget a table's committer (after the table was dropped).
    pub async fn forget(&self, ident: &TableIdent) {
        self.committers.lock().await.remove(ident);
    }

    /// Append `batches` (already in the table's Arrow schema) to the table.
    /// Returns once the commit that carries them succeeded; on error none
    /// of them is committed. A `request_id` seen before (in this table's
    /// recent history) returns the earlier outcome without writing.
    pub async fn append(
        &self,
        ident: &TableIdent,
        batches: Vec<RecordBatch>,
        request_id: Option<String>,
    ) -> Result<AppendOutcome> {
        let (queue, dedup) = self.committer(ident).await?;
        let seen = request_id
            .as_ref()
            .and_then(|id| dedup.lock().expect("dedup lock").seen.get(id).copied());
        if let Some((rows, snapshot)) = seen {
            return Ok(AppendOutcome {
                rows,
                files: vec![],
                snapshot_id: Some(snapshot),
                deduplicated: true,
            });
        }
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            return Ok(AppendOutcome::default());
        }
        // Sorting and splitting by partition happen here, in the caller's
        // task, so concurrent streams do it in parallel while the committer
        // encodes the previous group.
        let table = self.tables.load(self.catalog.as_ref(), ident).await?;
        let prepared = prepare(&table, batches)?;
        let bytes = prepared.bytes();
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending {
                prepared,
                rows,
                bytes,
                request_id,
                reply,
            })
            .map_err(|_| Error::Internal("committer stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("committer dropped the request".into()))?
    }
}

async fn run_committer(
    catalog: Arc<dyn Catalog>,
    tables: Arc<TableCache>,
    ident: TableIdent,
    config: CommitConfig,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    dedup: Arc<Mutex<Dedup>>,
    commit_times: Arc<CommitTimes>,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.bytes;
        let mut group = vec![first];
        while let Ok(p) = rx.try_recv() {
            bytes += p.bytes;
            group.push(p);
        }
        if !config.max_delay.is_zero() {
            let deadline = tokio::time::Instant::now() + config.max_delay;
            while bytes < config.target_bytes {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        bytes += p.bytes;
                        group.push(p);
                    }
                    _ => break,
                }
            }
        }
        // A retry may sit in the same group as its original, or arrive while
        // the original was being committed by the previous group: commit
        // each id once.
        let mut ids = std::collections::HashSet::new();
        let (group, duplicates): (Vec<_>, Vec<_>) = {
            let done = dedup.lock().expect("dedup lock");
            group.into_iter().partition(|p| {
                p.request_id
                    .as_ref()
                    .is_none_or(|id| !done.seen.contains_key(id) && ids.insert(id.clone()))
            })
        };
        if group.is_empty() {
            for p in duplicates {
                answer_duplicate(p, &dedup, None);
            }
            continue;
        }
        let result = commit_group(catalog.as_ref(), &tables, &ident, &group, &commit_times).await;
        match result {
            Ok((snapshot_id, files)) => {
                let mut d = dedup.lock().expect("dedup lock");
                for p in &group {
                    if let Some(id) = &p.request_id {
                        d.insert(id.clone(), p.rows, snapshot_id);
                    }
                }
                drop(d);
                tracing::debug!(table = %ident, requests = group.len(), files = files.len(), snapshot_id, "group committed");
                for p in group {
                    let outcome = AppendOutcome {
                        rows: p.rows,
                        files: files.clone(),
                        snapshot_id: Some(snapshot_id),
                        deduplicated: false,
                    };
                    p.reply.send(Ok(outcome)).ok();
                }
                for p in duplicates {
                    answer_duplicate(p, &dedup, None);
                }
            }
            Err(e) => {
                tracing::warn!(table = %ident, error = %e, requests = group.len(), "group commit failed");
                for p in group {
                    p.reply.send(Err(e.for_waiter())).ok();
                }
                for p in duplicates {
                    answer_duplicate(p, &dedup, Some(&e));
                }
            }
        }
    }
}

/// Answer a request whose id another request carried: with the committed
/// outcome if there is one, else with the failure of the one that carried it.
fn answer_duplicate(p: Pending, dedup: &Mutex<Dedup>, failure: Option<&Error>) {
    let seen = p
        .request_id
        .as_ref()
        .and_then(|id| dedup.lock().expect("dedup lock").seen.get(id).copied());
    let answer = match (seen, failure) {
        (Some((rows, snapshot)), _) => Ok(AppendOutcome {
            rows,
            files: vec![],
            snapshot_id: Some(snapshot),
            deduplicated: true,
        }),
        (None, Some(e)) => Err(e.for_waiter()),
        (None, None) => Err(Error::Internal(
            "duplicate of a request that was not committed".into(),
        )),
    };
    p.reply.send(answer).ok();
}

/// Write the group's rows as one set of files and commit one snapshot.
async fn commit_group(
    catalog: &dyn Catalog,
    tables: &TableCache,
    ident: &TableIdent,
    group: &[Pending],
    commit_times: &CommitTimes,
) -> Result<(i64, Vec<String>)> {
    let table = tables.load(catalog, ident).await?;
    let prepared = group.iter().map(|p| p.prepared.clone()).collect();
    let data_files = write_prepared(&table, prepared).await?;
    let paths: Vec<String> = data_files
        .iter()
        .map(|f| f.file_path().to_string())
        .collect();
    let ids: Vec<String> = group
        .iter()
        .filter_map(|p| p.request_id.as_ref().map(|id| format!("{id}={}", p.rows)))
        .collect();
    let tx = Transaction::new(&table);
    // Names are unique (UUID v7 prefix), so skip the duplicate check
    // that would re-read every manifest on every commit.
    let mut action = tx
        .fast_append()
        .with_check_duplicate(false)
        .add_data_files(data_files);
    if !ids.is_empty() {
        action = action.set_snapshot_properties(HashMap::from([(
            REQUEST_IDS_PROPERTY.to_string(),
            ids.join(","),
        )]));
    }
    let started = std::time::Instant::now();
    let committed = async {
        let tx = action.apply(tx)?;
        tx.commit(catalog).await
    }
    .await;
    let committed = match committed {
        Ok(t) => t,
        Err(e) => {
            delete_files(&table, &paths).await;
            return Err(e.into());
        }
    };
    let snapshot_id = committed
        .metadata()
        .current_snapshot_id()
        .unwrap_or_default();
    // Confirm before acknowledging: the SQL catalog can report success for
    // a compare-and-swap whose database COMMIT failed (e.g. SQLITE_BUSY).
    // Usually the pointer still names our metadata (one row read); if
    // another writer moved on since, look for our snapshot in its history.
    // Snapshots are never removed here, so absence means not committed.
    let location = committed.metadata_location().unwrap_or_default();
    let confirmed = match tables.points_at(ident, location).await? {
        Some(true) => true,
        _ => catalog
            .load_table(ident)
            .await?
            .metadata()
            .snapshot_by_id(snapshot_id)
            .is_some(),
    };
    if confirmed {
        commit_times.record(started.elapsed());
        tables.insert(&committed);
    } else {
        delete_files(&table, &paths).await;
        return Err(Error::Aborted(format!(
            "commit of snapshot {snapshot_id} to {ident} was not confirmed by the catalog; nothing was written, retry"
        )));
    }
    Ok((snapshot_id, paths))
}

/// Rows ready to be written: sorted by partition, then by the layout keys
/// ([`LAYOUT`]), and cut into one zero-copy slice per partition.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Partition spec and schema the slices were computed for.
    spec_id: i32,
    schema_id: i32,
    parts: Vec<(Option<PartitionKey>, RecordBatch)>,
}

impl Prepared {
    /// Bytes of Arrow data held.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|(_, b)| super::batch_bytes(b)).sum()
    }

    fn into_batches(self) -> Vec<RecordBatch> {
        self.parts.into_iter().map(|(_, b)| b).collect()
    }
}

/// Sort `batches` (in `table`'s current schema) for writing and split them
/// by the table's default partition spec.
pub fn prepare(table: &Table, batches: Vec<RecordBatch>) -> Result<Prepared> {
    let metadata = table.metadata();
    let iceberg_schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().clone();
    let mut prepared = Prepared {
        spec_id: spec.spec_id(),
        schema_id: iceberg_schema.schema_id(),
        parts: vec![],
    };
    let Some(first) = batches.first() else {
        return Ok(prepared);
    };
    let batch = arrow::compute::concat_batches(&first.schema(), &batches)?;
    drop(batches);
    if spec.is_unpartitioned() {
        prepared.parts.push((None, sort_for_layout(batch)?));
        return Ok(prepared);
    }
    // One sort orders the rows by partition, then by the layout keys: each
    // partition becomes one contiguous (zero-copy) slice in layout order.
    let calculator = PartitionValueCalculator::try_new(&spec, &iceberg_schema)?;
    let partition_values = calculator.calculate(&batch)?;
    let (batch, partition_values) = sort_by_partition_then_layout(batch, partition_values)?;
    let partition_columns = partition_values.as_struct().columns().to_vec();
    let ranges = arrow::compute::partition(&partition_columns)?.ranges();
    for r in ranges {
        let value = partition_values.slice(r.start, 1);
        let Some(Some(Literal::Struct(data))) =
            arrow_struct_to_literal(&value, calculator.partition_type())?.pop()
        else {
            return Err(Error::Internal("partition value is not a struct".into()));
        };
        let key = PartitionKey::new(spec.as_ref().clone(), iceberg_schema.clone(), data);
        prepared
            .parts
            .push((Some(key), batch.slice(r.start, r.end - r.start)));
    }
    Ok(prepared)
}

/// Write batches as Parquet data files of `table`, one per partition (more
/// only past the target file size), each sorted by the layout keys.
pub async fn write_data_files(table: &Table, batches: Vec<RecordBatch>) -> Result<Vec<DataFile>> {
    let prepared = prepare(table, batches)?;
    write_prepared(table, vec![prepared]).await
}

/// Write several prepared inputs together: slices of one partition share a
/// file (written one after another, each in layout order).
async fn write_prepared(table: &Table, prepared: Vec<Prepared>) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let iceberg_schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec();
    // Prepared for an older spec or schema (the table evolved meanwhile):
    // split again under the current one.
    let (current, stale): (Vec<_>, Vec<_>) = prepared
        .into_iter()
        .partition(|p| p.spec_id == spec.spec_id() && p.schema_id == iceberg_schema.schema_id());
    let mut inputs = current;
    let stale: Vec<RecordBatch> = stale.into_iter().flat_map(Prepared::into_batches).collect();
    if !stale.is_empty() {
        let schema: arrow::datatypes::SchemaRef =
            Arc::new(iceberg::arrow::schema_to_arrow_schema(&iceberg_schema)?);
        let rebound = stale
            .iter()
            .map(|b| crate::ingest::validate::normalize_to_schema(b, &schema))
            .collect::<Result<Vec<_>>>()?;
        inputs.push(prepare(table, rebound)?);
    }
    let mut partitions: Vec<(Option<PartitionKey>, Vec<RecordBatch>, usize)> = vec![];
    let mut index: HashMap<Option<iceberg::spec::Struct>, usize> = HashMap::new();
    for (key, batch) in inputs.into_iter().flat_map(|p| p.parts) {
        let data = key.as_ref().map(|k| k.data().clone());
        let i = *index.entry(data).or_insert_with(|| {
            partitions.push((key, vec![], 0));
            partitions.len() - 1
        });
        partitions[i].2 += batch.num_rows();
        partitions[i].1.push(batch);
    }

    let parquet = ParquetWriterBuilder::new(schema::writer_properties(), iceberg_schema);
    let locations = DefaultLocationGenerator::new(metadata)?;
    // The generator's counter restarts per instance: a UUID v7 prefix keeps
    // names unique across writers, processes and nodes (clones share the
    // counter, so parallel workers never collide).
    let names = DefaultFileNameGenerator::new(
        uuid::Uuid::now_v7().to_string(),
        None,
        DataFileFormat::Parquet,
    );
    let builder = Arc::new(DataFileWriterBuilder::new(RollingFileWriterBuilder::new(
        parquet,
        schema::TARGET_FILE_SIZE,
        table.file_io().clone(),
        locations,
        names,
    )));
    // Encoding Parquet is CPU-bound: workers on all cores take partitions
    // from one queue, largest first, so none idles while another has work.
    partitions.sort_by_key(|(_, _, rows)| std::cmp::Reverse(*rows));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(partitions.len())
        .max(1);
    let queue = Arc::new(Mutex::new(VecDeque::from(partitions)));
    // Blocking threads, not runtime workers: encoding never yields, and
    // closing a file waits for its fsync; meanwhile the runtime keeps
    // serving streams on the cores this leaves idle.
    let runtime = tokio::runtime::Handle::current();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (queue, builder, runtime) = (queue.clone(), builder.clone(), runtime.clone());
            tokio::task::spawn_blocking(move || {
                runtime.block_on(async move {
                    let mut files = vec![];
                    loop {
                        let next = queue.lock().expect("work queue lock").pop_front();
                        let Some((key, slices, _)) = next else {
                            return (files, None);
                        };
                        let written = async {
                            let mut writer = builder.build(key).await?;
                            for slice in slices {
                                writer.write(slice).await?;
                            }
                            writer.close().await
                        }
                        .await;
                        match written {
                            Ok(f) => files.extend(f),
                            Err(e) => {
                                queue.lock().expect("work queue lock").clear();
                                return (files, Some(Error::from(e)));
                            }
                        }
                    }
                })
            })
        })
        .collect();
    let mut files = vec![];
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok((f, e)) => {
                files.extend(f);
                first_error = first_error.or(e);
            }
            Err(e) => {
                first_error = first_error.or(Some(Error::Internal(format!("writer task: {e}"))))
            }
        }
    }
    if let Some(e) = first_error {
        let paths: Vec<String> = files.iter().map(|f| f.file_path().to_string()).collect();
        delete_files(table, &paths).await;
        return Err(e);
    }
    Ok(files)
}

/// A key rows are sorted by inside each file.
#[derive(Debug, Clone, Copy)]
pub enum LayoutKey {
    /// A column's values.
    Column(&'static str),
    /// A microsecond timestamp column truncated to the hour.
    Hour(&'static str),
}

/// How rows are ordered inside each file, when the table has the columns
/// (measured on the demo data, `docs/ingest.md`):
/// - `model_name` first: one model's rows sit together (dictionary/RLE);
/// - then the hour: page min/max statistics still prune time ranges inside
///   a day's file at about hour granularity;
/// - then `session_id`: a session's events (same device, platform, model
///   version, neighbouring ids) sit together, ~10% smaller files than
///   plain time order;
/// - then `event_timestamp`.
pub const LAYOUT: &[LayoutKey] = &[
    LayoutKey::Column("model_name"),
    LayoutKey::Hour(schema::col::EVENT_TIMESTAMP),
    LayoutKey::Column("session_id"),
    LayoutKey::Column(schema::col::EVENT_TIMESTAMP),
];

fn layout_keys(batch: &RecordBatch) -> Vec<ArrayRef> {
    LAYOUT
        .iter()
        .filter_map(|key| match key {
            LayoutKey::Column(c) => batch.column_by_name(c).cloned(),
            LayoutKey::Hour(c) => batch.column_by_name(c).and_then(hours),
        })
        .collect()
}

/// Hours since the epoch of a microsecond timestamp column.
fn hours(column: &ArrayRef) -> Option<ArrayRef> {
    use arrow::datatypes::{Int64Type, TimeUnit, TimestampMicrosecondType};
    const HOUR_US: i64 = 3_600_000_000;
    match column.data_type() {
        arrow::datatypes::DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let ts = column.as_primitive::<TimestampMicrosecondType>();
            let hours: arrow::array::PrimitiveArray<Int64Type> =
                arrow::compute::kernels::arity::unary(ts, |t| t.div_euclid(HOUR_US));
            Some(Arc::new(hours))
        }
        _ => None,
    }
}

/// The order of rows sorted by `keys` (ascending, nulls first); `None`
/// without keys. Usually one integer sort of packed ranks
/// ([`packed_order`]); otherwise rows are compared in arrow's row format
/// (one memcmp per pair, whatever the number and types of keys).
fn sort_rows(keys: &[ArrayRef]) -> Result<Option<UInt32Array>> {
    if keys.is_empty() {
        return Ok(None);
    }
    match packed_order(keys) {
        Some(order) => Ok(Some(order)),
        None => row_format_order(keys).map(Some),
    }
}

fn row_format_order(keys: &[ArrayRef]) -> Result<UInt32Array> {
    let converter = RowConverter::new(
        keys.iter()
            .map(|k| SortField::new(k.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(keys)?;
    let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
    order.sort_unstable_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    Ok(UInt32Array::from(order))
}

/// Each row's rank under one sort key, and the largest rank: nulls 0, then
/// values in ascending order (strings by bytes, like the row format).
/// `None` for types without a fast path.
fn key_ranks(key: &ArrayRef) -> Option<(Vec<u64>, u64)> {
    use arrow::datatypes::{DataType, Int32Type, Int64Type};
    fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> (Vec<u64>, u64) {
        // Ids by first appearance (runs of one value skip the hash), then
        // ids -> ranks once the distinct values are sorted.
        // foldhash: SipHash made hashing session ids ~5% of ingest CPU.
        let mut ids: HashMap<&str, u32, foldhash::fast::RandomState> = HashMap::default();
        let mut row_ids: Vec<u32> = vec![];
        let mut last: Option<(&str, u32)> = None;
        for v in values {
            let id = match v {
                None => u32::MAX,
                Some(v) => match last {
                    Some((l, id)) if l == v => id,
                    _ => {
                        let next = ids.len() as u32;
                        let id = *ids.entry(v).or_insert(next);
                        last = Some((v, id));
                        id
                    }
                },
            };
            row_ids.push(id);
        }
        let mut distinct: Vec<(&str, u32)> = ids.into_iter().collect();
        distinct.sort_unstable();
        let mut rank_of = vec![0u64; distinct.len()];
        for (rank, (_, id)) in distinct.iter().enumerate() {
            rank_of[*id as usize] = rank as u64 + 1;
        }
        let ranks = row_ids
            .into_iter()
            .map(|id| {
                if id == u32::MAX {
                    0
                } else {
                    rank_of[id as usize]
                }
            })
            .collect();
        (ranks, distinct.len() as u64)
    }
    fn ints(values: impl Iterator<Item = Option<i64>> + Clone) -> (Vec<u64>, u64) {
        let min = values.clone().flatten().min().unwrap_or(0);
        let ranks: Vec<u64> = values
            .map(|v| v.map_or(0, |v| (v.abs_diff(min)).saturating_add(1)))
            .collect();
        let max = ranks.iter().copied().max().unwrap_or(0);
        (ranks, max)
    }
    Some(match key.data_type() {
        DataType::Utf8 => strings(key.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(key.as_string::<i64>().iter()),
        DataType::Utf8View => strings(key.as_string_view().iter()),
        DataType::Int32 | DataType::Date32 => {
            let a = arrow::compute::cast(key, &DataType::Int32).ok()?;
            ints(
                a.as_primitive::<Int32Type>()
                    .iter()
                    .map(|v| v.map(i64::from)),
            )
        }
        DataType::Int64 | DataType::Timestamp(_, _) => {
            let a = arrow::compute::cast(key, &DataType::Int64).ok()?;
            let a = a.as_primitive::<Int64Type>().clone();
            ints(a.iter())
        }
        _ => return None,
    })
}

/// Bits needed to hold `max`.
fn bits_for(max: u64) -> u32 {
    u64::BITS - max.leading_zeros()
}

/// The sort order as one integer sort: every key becomes a dense rank
/// ([`key_ranks`]), and the ranks plus the row index are packed into one
/// `u128` per row, most significant key first. Compared with the row format
/// this avoids a memcmp of variable-length rows per comparison (it was
/// ~13% of the ingest path's CPU). `None` when a key has another type or
/// the ranks do not fit in 128 bits.
fn packed_order(keys: &[ArrayRef]) -> Option<UInt32Array> {
    let n = keys[0].len();
    let index_bits = bits_for(n.saturating_sub(1) as u64);
    let mut columns = Vec::with_capacity(keys.len());
    let mut total = index_bits;
    for key in keys {
        let (ranks, max) = key_ranks(key)?;
        let bits = bits_for(max);
        total += bits;
        columns.push((ranks, bits));
    }
    if total > 128 || n > u32::MAX as usize {
        return None;
    }
    let mut packed: Vec<u128> = (0..n)
        .map(|i| {
            let mut v = 0u128;
            for (ranks, bits) in &columns {
                v = (v << bits) | u128::from(ranks[i]);
            }
            (v << index_bits) | i as u128
        })
        .collect();
    packed.sort_unstable();
    let mask = (1u128 << index_bits) - 1;
    Some(UInt32Array::from_iter_values(
        packed.into_iter().map(|v| (v & mask) as u32),
    ))
}

fn sort_for_layout(batch: RecordBatch) -> Result<RecordBatch> {
    match sort_rows(&layout_keys(&batch))? {
        Some(order) => Ok(arrow::compute::take_record_batch(&batch, &order)?),
        None => Ok(batch),
    }
}

fn sort_by_partition_then_layout(
    batch: RecordBatch,
    partition_values: ArrayRef,
) -> Result<(RecordBatch, ArrayRef)> {
    let mut keys = partition_values.as_struct().columns().to_vec();
    keys.extend(layout_keys(&batch));
    let order = sort_rows(&keys)?.expect("partition keys are present");
    Ok((
        arrow::compute::take_record_batch(&batch, &order)?,
        arrow::compute::take(&partition_values, &order, None)?,
    ))
}

/// Best-effort removal of files that were written but never committed.
pub async fn delete_files(table: &Table, paths: &[String]) {
    for p in paths {
        if let Err(e) = table.file_io().delete(p).await {
            tracing::warn!(path = %p, error = %e, "could not delete uncommitted file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, LargeStringArray, StringArray, TimestampMicrosecondArray};

    /// The keys of `order`'s rows, in arrow's row format: equal sequences
    /// mean both orders sort the keys the same (ties may differ).
    fn sorted_keys(keys: &[ArrayRef], order: &UInt32Array) -> Vec<Vec<u8>> {
        let converter = RowConverter::new(
            keys.iter()
                .map(|k| SortField::new(k.data_type().clone()))
                .collect(),
        )
        .unwrap();
        let rows = converter.convert_columns(keys).unwrap();
        order
            .values()
            .iter()
            .map(|&i| rows.row(i as usize).as_ref().to_vec())
            .collect()
    }

    #[test]
    fn files_are_laid_out_by_model_hour_session_time() {
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let hour = 3_600_000_000i64;
        // (model, session, timestamp): sessions cross hours and models.
        let rows = [
            ("b", "s1", 2 * hour + 5),
            ("a", "s2", hour + 7),
            ("a", "s1", hour + 9),
            ("a", "s3", 5),
            ("b", "s0", 2 * hour + 1),
            ("a", "s1", 3),
            ("a", "s2", 4),
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("model_name", DataType::Utf8, true),
            Field::new("session_id", DataType::Utf8, true),
            Field::new(
                schema::col::EVENT_TIMESTAMP,
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                        .with_timezone("+00:00"),
                ),
            ],
        )
        .unwrap();
        let sorted = sort_for_layout(batch).unwrap();
        let model = sorted.column(0).as_string::<i32>();
        let session = sorted.column(1).as_string::<i32>();
        let ts = sorted
            .column(2)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let got: Vec<(&str, &str, i64)> = (0..sorted.num_rows())
            .map(|i| (model.value(i), session.value(i), ts.value(i)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "s1", 3),
                ("a", "s2", 4),
                ("a", "s3", 5),
                ("a", "s1", hour + 9),
                ("a", "s2", hour + 7),
                ("b", "s0", 2 * hour + 1),
                ("b", "s1", 2 * hour + 5),
            ]
        );
    }

    #[test]
    fn packed_order_sorts_like_the_row_format() {
        // Deterministic pseudo-random keys: strings with nulls and runs,
        // days, zoned timestamps spanning negative and positive values.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = 5000;
        let words = ["", "a", "ab", "b", "recommender", "fraud-detector", "Ä"];
        let project: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| ["acme", "globex", "initech"][(i / 700) % 3]),
        ));
        let day: ArrayRef = Arc::new(Int32Array::from_iter_values(
            (0..n).map(|_| 20_000 + (next() % 30) as i32 - 15),
        ));
        let model: ArrayRef = Arc::new(StringArray::from_iter((0..n).map(|_| {
            let r = next();
            (r % 11 != 0).then(|| words[(r % words.len() as u64) as usize])
        })));
        let large: ArrayRef = Arc::new(LargeStringArray::from_iter_values(
            (0..n).map(|_| words[(next() % 3) as usize]),
        ));
        let ts: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from_iter((0..n).map(|_| {
                let r = next();
                (r % 13 != 0).then_some((r % 2_000_000_000_000) as i64 - 1_000_000_000_000)
            }))
            .with_timezone("+00:00"),
        );
        for keys in [
            vec![project.clone(), day.clone(), model.clone(), ts.clone()],
            vec![model.clone(), ts.clone()],
            vec![large.clone(), day.clone()],
            vec![ts.clone()],
        ] {
            let packed = packed_order(&keys).expect("these types have a fast path");
            let reference = row_format_order(&keys).unwrap();
            assert_eq!(sorted_keys(&keys, &packed), sorted_keys(&keys, &reference));
            let mut seen: Vec<u32> = packed.values().to_vec();
            seen.sort_unstable();
            assert_eq!(seen, (0..n as u32).collect::<Vec<_>>(), "a permutation");
        }
        // Types without a fast path fall back to the row format.
        let floats: ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![1.0, 0.5]));
        assert!(packed_order(std::slice::from_ref(&floats)).is_none());
        assert_eq!(sort_rows(&[floats]).unwrap().unwrap().values(), &[1, 0]);
    }
}
