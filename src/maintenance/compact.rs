//! Compaction: rewrite each partition's small data files as one file.
//!
//! Group commit keeps files as large as the concurrent load allows, but a
//! steady trickle of small `DoPut`s (or a backfill whose batches span every
//! day) still leaves many small files per `project_id`/`event_day`
//! partition, and every file costs queries a footer, a ZSTD context per
//! column and pruning work. Compaction streams a partition's small files
//! through iceberg's reader (field ids, schema evolution), merges them
//! (each is already in layout order, so a k-way merge keeps memory to a
//! batch per file, however many rows they hold), writes the result
//! through the ingest writer (same encodings and compression) and commits
//! a `replace` snapshot: same rows, fewer files.
//!
//! The snapshot is committed by [`crate::catalog::rewrite`] (hand-built, as iceberg
//! 0.10.1 has no replace action). An append that lands first makes the
//! swap fail; compaction then rebuilds the snapshot on the new metadata,
//! reusing the files it wrote. If another compaction (or an erasure)
//! replaced some of the same files first, the commit is dropped and its
//! files deleted: those rows were rewritten already. Nothing is lost or
//! duplicated either way: readers see the old files or the new ones,
//! never both.
//!
//! The replaced files stay on disk while older snapshots reference them
//! (time travel); [`super::expire_and_clean`] deletes them once those
//! snapshots expire.
//!
//! Background compaction runs every few seconds against partitions that
//! gain a file per flush, so it is *tiered*: merging a partition's small
//! files all together each time would rewrite its growing newest file
//! again and again (a 30 KB-per-flush tenant-day would rewrite each byte
//! ~180 times before reaching the target size). Files are grouped in size
//! tiers (4x apart); a merge takes the lowest tier that has gathered
//! `min_files` files, plus the smaller files below it, so each byte is
//! rewritten about once per tier: a hot tenant-day flushed every 10 s
//! reaches full-size files after about two rewrites. A partition then
//! holds at most `min_files - 1` files per tier between runs. (Merging
//! everything once a partition had many files bounded the count further,
//! but rewrote the newest data several times a minute: at 100k rows/s on
//! 2 cores, compaction then took more CPU than ingest.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::{FutureExt, StreamExt};
use iceberg::TableIdent;
use iceberg::spec::{DataFile, FormatVersion, ManifestContentType, Struct};
use iceberg::table::Table;

use crate::catalog::Warehouse;
use crate::catalog::read::{STREAM_BATCH_ROWS, stream_data_file, table_arrow_schema};
use crate::catalog::rewrite::{Manifests, Rewrite, Swap, commit_rewrite};
use crate::catalog::tiers::Tiers;
use crate::error::{Error, Result};
use crate::ingest::layout::merge_in_layout_order;
use crate::ingest::write::{all_or_nothing, delete_files, write_partition_stream};

/// Which partitions to compact.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Compact a partition once it has at least this many small files.
    pub min_files: usize,
    /// Files at least this large are left alone.
    pub small_file_bytes: u64,
    /// Input bytes (compressed Parquet) of one commit, and of one
    /// partition per run.
    pub max_commit_bytes: u64,
    /// Pick files by size tier (background) instead of merging all of a
    /// partition's small files (`raindrop compact`).
    pub tiered: bool,
    /// Input bytes of one run: partitions left over wait for the next run,
    /// so a run stays short and its commits do not pile up behind flushes.
    pub max_run_bytes: u64,
    /// Tiered: small files a partition may hold after a run, whatever
    /// their tiers (0: no bound). A flush adds one file per partition
    /// before the next run.
    pub max_small_files: usize,
}

/// Input bytes (compressed Parquet) of one compaction commit. The merge
/// streams, so this bounds a commit's duration and its output (about one
/// target-size file), not its memory. At 64 MiB (with rows decoded and
/// sorted whole) merged files stayed under 64 MiB and a 1 GB tenant-day
/// kept 20–40 of them.
pub const MAX_COMMIT_BYTES: u64 = 512 * 1024 * 1024;
/// Files at least this large are done. Half the rolling writer's target
/// ([`crate::schema::TARGET_FILE_SIZE`]): the writer rolls when its
/// estimate (written bytes plus the open row group, uncompressed) passes
/// the target, so a rolled file is smaller than the target, but well over
/// half of it. A merge's outputs are then all done but the last, and each
/// merge leaves fewer small files than it took. With the threshold at the
/// target (then 128 MiB), rolled files (73–120 MiB on average per merge)
/// counted as small, and the same two were merged into two again and again:
/// a 30-minute soak rewrote 22.6 GB of input, against 12.4 GB before.
/// Two small files fit in one commit.
pub const SMALL_FILE_BYTES: u64 = crate::schema::TARGET_FILE_SIZE as u64 / 2;
const _: () = assert!(2 * SMALL_FILE_BYTES <= MAX_COMMIT_BYTES);

/// Small files a partition needs before `raindrop compact` rewrites it.
pub const MIN_FILES: usize = 2;
/// Files of one size tier that background compaction waits for before
/// merging them (so a partition holds at most 3 per tier between runs).
pub const BACKGROUND_MIN_FILES: usize = 4;
/// Default bound on small files per partition in background compaction:
/// a partition keeps at most 3 after a run, 4 once the next flush adds
/// one. It rewrites more than tiers alone (1.7x the input in the first 12
/// minutes of a soak at 100k rows/s on 2 cores), which the streaming
/// merge affords: there tenant-days held at most 4 files at 27 of 30
/// minutes, against 4–10 with tiers alone. (With the merge decoding and
/// sorting in memory, runs took 30 s and more, several flushes landed
/// between them, and the bound did worse than tiers after 20 minutes;
/// `benches/README.md`.)
pub const BACKGROUND_MAX_FILES: usize = 4;

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            min_files: MIN_FILES,
            small_file_bytes: SMALL_FILE_BYTES,
            max_commit_bytes: MAX_COMMIT_BYTES,
            tiered: false,
            max_run_bytes: u64::MAX,
            max_small_files: 0,
        }
    }
}

impl CompactOptions {
    /// What the server runs in the background: tiers of `min_files`, and
    /// at most `max_files - 1` small files left per partition, so one
    /// flush before the next run makes `max_files` (0: no bound).
    pub fn background(min_files: usize, max_files: usize) -> Self {
        Self {
            min_files,
            tiered: true,
            max_run_bytes: MAX_COMMIT_BYTES,
            max_small_files: max_files.saturating_sub(1),
            ..Self::default()
        }
    }
}

/// Tiers of background compaction: the smallest holds files under
/// 256 KiB, each above 4x larger; `min_count` is the run's `min_files`.
fn file_tiers(min_files: usize) -> Tiers {
    Tiers {
        base: 64 * 1024,
        fanout: 4,
        min_count: min_files,
    }
}

/// How many of a partition's small files (sizes ascending) to merge: all
/// of them once there are `min_files` (untiered); tiered, the files up to
/// the lowest tier holding `min_files` files, or more if that leaves over
/// `options.max_small_files`. 0: leave the partition alone.
fn files_to_merge(ascending: &[u64], options: &CompactOptions) -> usize {
    if !options.tiered {
        return if ascending.len() >= options.min_files.max(2) {
            ascending.len()
        } else {
            0
        };
    }
    let tiered = file_tiers(options.min_files).to_merge(ascending);
    tiered.max(to_bound_count(
        ascending,
        options.max_small_files,
        options.max_commit_bytes,
    ))
}

/// How many of `ascending` to merge so at most `keep` files remain (0 for
/// none): the fewest smallest files that do, plus each next file the
/// merged one has grown to at least half of. Merging only the fewest would
/// rewrite the same growing smallest file at every flush (in a simulation,
/// a 36 KB-per-flush tenant-day rewrote each byte ~60 times in 360
/// flushes); absorbing files of similar size spreads the sizes out as
/// tiers do (~23 rewrites for that tenant-day over 2,000 flushes, 4.5 and
/// 2.6 for 1.5 and 7 MB per flush).
fn to_bound_count(ascending: &[u64], keep: usize, max_bytes: u64) -> usize {
    if keep == 0 || ascending.len() <= keep {
        return 0;
    }
    let mut n = ascending.len() - keep + 1;
    let mut merged: u64 = ascending[..n].iter().sum();
    while let Some(&next) = ascending.get(n) {
        if merged.saturating_mul(2) < next || merged + next > max_bytes {
            break;
        }
        merged += next;
        n += 1;
    }
    n
}

/// One partition's files to merge in this run: its small files, smallest
/// first, as many as the policy asks for and one commit's input holds (a
/// partition with more small data than that is finished by later runs).
fn pick(files: Vec<DataFile>, options: &CompactOptions) -> Vec<DataFile> {
    let mut small: Vec<DataFile> = files
        .into_iter()
        .filter(|f| f.file_size_in_bytes() < options.small_file_bytes)
        .collect();
    small.sort_by_key(|f| f.file_size_in_bytes());
    let sizes: Vec<u64> = small.iter().map(|f| f.file_size_in_bytes()).collect();
    let n = within_one_commit(&sizes, files_to_merge(&sizes, options), options);
    small.truncate(n);
    small
}

/// How many of the first `n` of `sizes` one commit's input holds.
fn within_one_commit(sizes: &[u64], n: usize, options: &CompactOptions) -> usize {
    let mut total = 0;
    sizes[..n]
        .iter()
        .take_while(|&&size| {
            total += size;
            total <= options.max_commit_bytes
        })
        .count()
}

/// What a compaction run did.
#[derive(Debug, Clone, Default)]
pub struct CompactReport {
    /// Partitions rewritten.
    pub partitions: usize,
    /// Data files replaced.
    pub files_removed: usize,
    /// Data files written in their place.
    pub files_added: usize,
    /// Rows rewritten.
    pub rows: u64,
    /// Bytes of the replaced files.
    pub bytes_removed: u64,
    /// Bytes of the files written.
    pub bytes_added: u64,
    /// Replace snapshots committed.
    pub snapshots: Vec<i64>,
    /// Times a replace snapshot was rebuilt because another commit (an
    /// append) moved the table first.
    pub rebuilds: usize,
    /// Commits dropped because another compaction (or an erasure) replaced
    /// some of their input files first: those rows were rewritten anyway,
    /// and the files this run wrote for them are deleted.
    pub superseded: usize,
}

impl CompactReport {
    /// Add `other`'s counts (a later pass of the same compaction).
    pub fn absorb(&mut self, other: CompactReport) {
        self.partitions += other.partitions;
        self.files_removed += other.files_removed;
        self.files_added += other.files_added;
        self.rows += other.rows;
        self.bytes_removed += other.bytes_removed;
        self.bytes_added += other.bytes_added;
        self.snapshots.extend(other.snapshots);
        self.rebuilds += other.rebuilds;
        self.superseded += other.superseded;
    }
}

/// Live data files of the table's current snapshot, by partition.
async fn files_by_partition(
    table: &Table,
    manifests: &Manifests,
) -> Result<Vec<(Struct, Vec<DataFile>)>> {
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(vec![]);
    };
    let list = table.manifest_list_reader(snapshot).load().await?;
    manifests.retain(list.entries());
    let mut groups: HashMap<Struct, Vec<DataFile>> = HashMap::new();
    for manifest_file in list.entries() {
        let manifest = manifests.get(manifest_file, table.file_io()).await?;
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            if manifest_file.content != ManifestContentType::Data {
                return Err(Error::Unsupported(
                    "table has delete files; compaction would have to apply them first".into(),
                ));
            }
            groups
                .entry(entry.data_file().partition().clone())
                .or_default()
                .push(entry.data_file().clone());
        }
    }
    Ok(groups.into_iter().collect())
}

/// Compact `ident`: every partition with at least `min_files` small files
/// is rewritten as one file (per target file size), in commits of bounded
/// size.
pub async fn compact_table(
    warehouse: &Warehouse,
    ident: &TableIdent,
    options: &CompactOptions,
) -> Result<CompactReport> {
    compact_table_with(warehouse, ident, options, &Manifests::default()).await
}

/// [`compact_table`] reading manifests through `manifests`, which a
/// periodic job keeps between runs: manifests never change, and a run
/// every few seconds would otherwise re-read every tenant's.
pub async fn compact_table_with(
    warehouse: &Warehouse,
    ident: &TableIdent,
    options: &CompactOptions,
    manifests: &Manifests,
) -> Result<CompactReport> {
    let table = warehouse.catalog.load_table(ident).await?;
    if table.metadata().format_version() != FormatVersion::V2 {
        return Err(Error::Unsupported(format!(
            "compaction supports format-version 2 tables; {ident} is {}",
            table.metadata().format_version()
        )));
    }
    if table.metadata().partition_specs_iter().count() != 1 {
        return Err(Error::Unsupported(format!(
            "{ident} has several partition specs; compaction supports one"
        )));
    }
    let mut candidates: Vec<Vec<DataFile>> = files_by_partition(&table, manifests)
        .await?
        .into_iter()
        .map(|(_, files)| pick(files, options))
        .filter(|files| files.len() >= 2)
        .collect();
    // Most files first: they gain the most. A run takes what fits.
    candidates.sort_by_key(|files| std::cmp::Reverse(files.len()));
    let mut budget = options.max_run_bytes;
    candidates.retain(|files| {
        let bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
        let fits = bytes <= budget;
        budget = budget.saturating_sub(bytes);
        fits
    });

    // Whole partitions per commit, within one commit's input each.
    let mut commits: Vec<(Vec<DataFile>, usize, u64)> = vec![];
    for files in candidates {
        let bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
        match commits.last_mut() {
            Some((pending, parts, pending_bytes))
                if *pending_bytes + bytes <= options.max_commit_bytes =>
            {
                pending.extend(files);
                *parts += 1;
                *pending_bytes += bytes;
            }
            _ => commits.push((files, 1, bytes)),
        }
    }
    let mut report = CompactReport::default();
    for (files, parts, _) in commits {
        rewrite(warehouse, ident, &files, parts, manifests, &mut report).await?;
    }
    Ok(report)
}

/// Rebuilds of one replace snapshot (after concurrent appends) before
/// giving up.
const MAX_REBUILDS: usize = 5;

/// Why an attempt to commit a replace snapshot did not land.
enum Attempt {
    /// Another commit moved the table first: rebuild and retry.
    Moved,
    /// Some of the input files were replaced meanwhile: drop this commit.
    Superseded(usize),
    /// Give up.
    Failed(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Failed(e)
    }
}

impl From<iceberg::Error> for Attempt {
    fn from(e: iceberg::Error) -> Self {
        Attempt::Failed(e.into())
    }
}

/// Rewrite `files` (whole partitions) and commit the replacement.
async fn rewrite(
    warehouse: &Warehouse,
    ident: &TableIdent,
    files: &[DataFile],
    partitions: usize,
    manifests: &Manifests,
    report: &mut CompactReport,
) -> Result<()> {
    let table = warehouse.catalog.load_table(ident).await?;
    let added = merge_partitions(&table, files).await?;
    let added_paths: Vec<String> = added.iter().map(|f| f.file_path().to_string()).collect();
    let rows_in: u64 = files.iter().map(|f| f.record_count()).sum();
    let rows_out: u64 = added.iter().map(|f| f.record_count()).sum();
    if rows_in != rows_out {
        delete_files(&table, &added_paths).await;
        return Err(Error::Internal(format!(
            "compaction of {ident} read {rows_in} rows but wrote {rows_out}; nothing committed"
        )));
    }
    // An append that lands first moves the table: rebuild the snapshot on
    // the new metadata (reusing the files written), with backoff.
    let first = Mutex::new(Some(table.clone()));
    let attempt = || async {
        let reuse = first.lock().expect("first attempt lock").take();
        let base = match reuse {
            Some(t) => t,
            None => warehouse.catalog.load_table(ident).await?,
        };
        // Merging as well: the manifests are being rewritten anyway.
        let change = Rewrite {
            removed: files,
            added: &added,
            merge: true,
        };
        match commit_rewrite(&warehouse.tables, ident, &base, change, manifests).await? {
            Swap::Committed(id) => Ok(id),
            Swap::Moved => Err(Attempt::Moved),
            Swap::Moot(n) => Err(Attempt::Superseded(n)),
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(40))
        .with_max_times(MAX_REBUILDS);
    let committed = attempt
        .retry(backoff)
        .when(|e| matches!(e, Attempt::Moved))
        .notify(|_, _| {
            tracing::debug!(table = %ident, "table moved while compacting; rebuilding");
            report.rebuilds += 1;
        })
        .await;
    let snapshot_id = match committed {
        Ok(id) => id,
        Err(failure) => {
            delete_files(&table, &added_paths).await;
            return match failure {
                Attempt::Superseded(n) => {
                    tracing::info!(
                        table = %ident, replaced = n, files = files.len(),
                        "another compaction replaced some of these files first; dropped this commit"
                    );
                    report.superseded += 1;
                    Ok(())
                }
                Attempt::Moved => Err(Error::Aborted(format!(
                    "{ident} kept changing while compacting ({MAX_REBUILDS} rebuilds); nothing committed"
                ))),
                Attempt::Failed(e) => Err(e),
            };
        }
    };
    let bytes_added: u64 = added.iter().map(|f| f.file_size_in_bytes()).sum();
    let bytes_removed: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
    tracing::info!(
        table = %ident, partitions, files_removed = files.len(), files_added = added.len(),
        rows = rows_in, bytes_removed, bytes_added, snapshot_id, "compacted"
    );
    report.partitions += partitions;
    report.files_removed += files.len();
    report.files_added += added.len();
    report.rows += rows_in;
    report.bytes_removed += bytes_removed;
    crate::metrics::metrics()
        .compaction_bytes
        .inc_by(bytes_removed);
    report.bytes_added += bytes_added;
    report.snapshots.push(snapshot_id);
    Ok(())
}

/// Merge each partition's `files` into new files in layout order, several
/// partitions at once (one per core). Each input is already in layout
/// order, so a partition is a streaming merge: memory holds a batch and a
/// row group's compressed pages per input file, whatever the rows add up
/// to. On error, nothing written is kept.
async fn merge_partitions(table: &Table, files: &[DataFile]) -> Result<Vec<DataFile>> {
    let mut partitions: HashMap<Struct, Vec<DataFile>> = HashMap::new();
    for f in files {
        partitions
            .entry(f.partition().clone())
            .or_default()
            .push(f.clone());
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Handle::current();
    let merges: Vec<futures::future::BoxFuture<'static, Result<Vec<DataFile>>>> = partitions
        .into_iter()
        .map(|(partition, files)| {
            let (table, runtime) = (table.clone(), runtime.clone());
            async move {
                let schema = table_arrow_schema(&table)?;
                let inputs = files
                    .iter()
                    .map(|f| stream_data_file(&table, f))
                    .collect::<Result<Vec<_>>>()?;
                // Decoding, merging and encoding never yield: on a
                // background thread, not the runtime workers that answer
                // requests.
                crate::background::run("merging data files", move || {
                    runtime.block_on(async {
                        let merged = merge_in_layout_order(schema, inputs, STREAM_BATCH_ROWS)?;
                        write_partition_stream(&table, partition, merged).await
                    })
                })
                .await?
            }
            .boxed()
        })
        .collect();
    let results: Vec<Result<Vec<DataFile>>> = futures::stream::iter(merges)
        .buffer_unordered(workers)
        .collect()
        .await;
    let mut added = vec![];
    let mut first_error = None;
    for result in results {
        match result {
            Ok(files) => added.extend(files),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    all_or_nothing(table, added, first_error).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const KB: u64 = 1024;
    const MB: u64 = 1024 * 1024;

    fn options(min_files: usize, tiered: bool, max_files: usize) -> CompactOptions {
        CompactOptions {
            min_files,
            tiered,
            max_small_files: max_files.saturating_sub(1),
            ..CompactOptions::default()
        }
    }

    #[test]
    fn untiered_merges_every_small_file_once_there_are_enough() {
        let all = options(2, false, 0);
        assert_eq!(files_to_merge(&[KB, 2 * KB, 30 * MB], &all), 3);
        assert_eq!(files_to_merge(&[KB], &all), 0);
    }

    #[test]
    fn tiered_waits_for_a_tier_to_fill() {
        let tiered = options(4, true, 0);
        assert_eq!(
            files_to_merge(&[30 * KB, 30 * KB, 30 * KB, 2 * MB], &tiered),
            0
        );
        assert_eq!(files_to_merge(&[30 * KB; 4], &tiered), 4);
    }

    #[test]
    fn a_bound_on_files_merges_across_tiers() {
        let bounded = options(4, true, 4);
        // Four files in four tiers: no tier is full, but 3 may stay.
        let spread = [30 * KB, 300 * KB, 2 * MB, 8 * MB];
        assert_eq!(files_to_merge(&spread, &options(4, true, 0)), 0);
        assert_eq!(files_to_merge(&spread, &bounded), 2);
        // The merged file (330 KB) is not half of the next (2 MB): stop.
        // Two files of similar size absorb the next one too.
        assert_eq!(
            files_to_merge(&[500 * KB, 600 * KB, 2 * MB, 8 * MB], &bounded),
            3
        );
        // Up to the bound, nothing.
        assert_eq!(files_to_merge(&spread[1..], &bounded), 0);
        // A full tier still merges as before.
        assert_eq!(files_to_merge(&[30 * KB; 4], &bounded), 4);
        // Never more than one commit's input.
        let big = [20 * MB, 25 * MB, 30 * MB, 31 * MB];
        assert_eq!(to_bound_count(&big, 3, 64 * MB), 2);
    }

    #[test]
    fn a_commit_takes_the_smallest_files_its_input_holds() {
        let options = CompactOptions {
            max_commit_bytes: 64 * MB,
            ..CompactOptions::default()
        };
        assert_eq!(within_one_commit(&[30 * MB; 4], 4, &options), 2);
        assert_eq!(within_one_commit(&[MB; 4], 3, &options), 3);
    }

    #[test]
    fn bounded_merging_keeps_every_partition_at_the_bound_after_each_flush() {
        // Flushes of one size into a partition, a run after each one: the
        // partition never holds more than the bound of small files, and the
        // bytes rewritten stay a small multiple of those flushed.
        for flush in [36 * KB, 300 * KB, 1500 * KB, 7 * MB] {
            let bounded = options(4, true, 4);
            let (mut files, mut rewritten, mut most) = (Vec::<u64>::new(), 0u64, 0);
            for _ in 0..500 {
                files.push(flush);
                files.sort();
                let small = files.iter().take_while(|&&b| b < SMALL_FILE_BYTES).count();
                most = most.max(small);
                let n = files_to_merge(&files[..small], &bounded);
                if n >= 2 {
                    let merged: u64 = files.drain(..n).sum();
                    rewritten += merged;
                    files.push(merged);
                }
            }
            assert!(most <= 4, "{flush}: {most} small files");
            let amplification = rewritten as f64 / (500 * flush) as f64;
            assert!(
                amplification < 20.0,
                "{flush}: rewritten {amplification:.1}x"
            );
        }
    }
}
