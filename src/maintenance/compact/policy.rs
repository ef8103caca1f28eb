//! Which of a partition's files compaction merges, and how many per run.
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
//! 2 cores, compaction then took more CPU than ingest.) On top of the
//! tiers, a bound on small files per partition merges across tiers once
//! a partition holds more ([`BACKGROUND_MAX_FILES`] says what it costs).

use iceberg::spec::DataFile;

use crate::catalog::tiers::Tiers;

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
    /// Partitions over `max_small_files` are never left over: past the
    /// budget they merge only what brings them back within it.
    pub max_run_bytes: u64,
    /// Tiered: small files a partition may hold after a run, whatever
    /// their tiers (0: no bound). A flush adds one file per partition
    /// before the next run.
    pub max_small_files: usize,
    /// Background: a partition's merge of more input than this is *long*
    /// and runs beside the next runs, one at a time (see
    /// `compact::LongMerges`); `u64::MAX`: every merge runs in the run.
    pub short_merge_bytes: u64,
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
/// Default bound on files per partition in background compaction: a
/// partition keeps at most 3 after a run (done files included, see
/// `small_to_keep`), 4 once the next flush adds one. It rewrites more
/// than tiers alone (1.8x the input in 12-minute soaks at 100k rows/s on
/// 2 cores, where tenant-days held 1–4 files against 4–9), which the
/// streaming merge affords; over 30 minutes, with long merges beside the
/// runs, they held at most 4 at every sample while they had at most one
/// done file (past two, a partition keeps them and 2 small files, see
/// `small_to_keep`). (With the merge decoding and
/// sorting in memory, runs took 30 s and more, several flushes landed
/// between them, and the bound did worse than tiers after 20 minutes;
/// `benches/README.md`.)
pub const BACKGROUND_MAX_FILES: usize = 4;

/// Background: input of the longest merge a run makes itself (a run
/// takes twice this of tier merges). A hot tenant-day's upper tiers merge
/// hundreds of MiB (13–16 s on 2 cores); in the run, they held every
/// other partition's merges back, several flushes landed meanwhile, and
/// tenant-days reached 5–8 files in a 30-minute soak. Commits of this
/// size took 1–2 s in the soak.
pub const SHORT_MERGE_BYTES: u64 = 64 * 1024 * 1024;

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            min_files: MIN_FILES,
            small_file_bytes: SMALL_FILE_BYTES,
            max_commit_bytes: MAX_COMMIT_BYTES,
            tiered: false,
            max_run_bytes: u64::MAX,
            max_small_files: 0,
            short_merge_bytes: u64::MAX,
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
            max_run_bytes: 2 * SHORT_MERGE_BYTES,
            max_small_files: max_files.saturating_sub(1),
            short_merge_bytes: SHORT_MERGE_BYTES,
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

/// One partition's files as a run sees them.
#[derive(Debug)]
pub(super) struct Partition {
    /// Files the run may merge.
    pub files: Vec<DataFile>,
    /// Files of the partition a long merge is rewriting: still in the
    /// table until it commits, so they count against the bound.
    pub busy: usize,
}

/// How many of a partition's small files (sizes ascending) to merge: all
/// of them once there are `min_files` (untiered); tiered, the files up to
/// the lowest tier holding `min_files` files, or more if that leaves over
/// `options.max_small_files` beside `done` done files and `busy` files a
/// long merge rewrites. 0: leave the partition alone.
fn files_to_merge(ascending: &[u64], done: usize, busy: usize, options: &CompactOptions) -> usize {
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
        small_to_keep(options.max_small_files, done, busy),
        options.max_commit_bytes,
    ))
}

/// Small files a partition may keep under a bound of `max_small` (0: no
/// bound) beside `done` done files and `busy` files a long merge
/// rewrites: all of them together stay within it, so a tenant-day with
/// one done file still holds at most `max_small + 1` files after the
/// next flush. (Counting small files alone, the 30-minute soak's largest
/// tenant-day held 4 small files and a done one.) Never fewer than 2
/// otherwise (so past two done files, the bound is theirs plus 2): with
/// one, every flush would rewrite the partition's one growing small file.
/// While a long merge runs (seconds: one flush, or two), one: its newest
/// files then merge at every run, which is cheap for that long, where
/// keeping two put the partition over the bound for the whole merge.
fn small_to_keep(max_small: usize, done: usize, busy: usize) -> usize {
    if max_small == 0 {
        return 0;
    }
    let least = if busy == 0 { max_small.min(2) } else { 1 };
    max_small.saturating_sub(done + busy).max(least)
}

/// `partition`'s small files (the others are done), sizes ascending.
pub(super) fn small_files<'a>(
    partition: &'a Partition,
    options: &CompactOptions,
) -> Vec<&'a DataFile> {
    let mut small: Vec<&DataFile> = partition
        .files
        .iter()
        .filter(|f| f.file_size_in_bytes() < options.small_file_bytes)
        .collect();
    small.sort_by_key(|f| f.file_size_in_bytes());
    small
}

/// The partition holds more small files than the bound lets it keep.
pub(super) fn over_bound(partition: &Partition, options: &CompactOptions) -> bool {
    let small = small_files(partition, options).len();
    let done = partition.files.len() - small;
    let keep = small_to_keep(options.max_small_files, done, partition.busy);
    options.tiered && keep > 0 && small > keep
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
pub(super) fn pick(partition: &Partition, options: &CompactOptions) -> Vec<DataFile> {
    smallest(partition, options, |sizes, done| {
        files_to_merge(sizes, done, partition.busy, options)
    })
}

/// The fewest of a partition's smallest files whose merge leaves it
/// within the bound (within one commit's input).
pub(super) fn back_to_bound(partition: &Partition, options: &CompactOptions) -> Vec<DataFile> {
    smallest(partition, options, |sizes, done| {
        let keep = small_to_keep(options.max_small_files, done, partition.busy);
        (sizes.len() + 1).saturating_sub(keep.max(1))
    })
}

/// A partition's small files, smallest first: as many as `count` asks
/// for (given their sizes, ascending, and how many files are done) and
/// one commit's input holds.
fn smallest(
    partition: &Partition,
    options: &CompactOptions,
    count: impl FnOnce(&[u64], usize) -> usize,
) -> Vec<DataFile> {
    let small = small_files(partition, options);
    let sizes: Vec<u64> = small.iter().map(|f| f.file_size_in_bytes()).collect();
    let n = count(&sizes, partition.files.len() - small.len()).min(sizes.len());
    let n = within_one_commit(&sizes, n, options);
    small.into_iter().take(n).cloned().collect()
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
        assert_eq!(files_to_merge(&[KB, 2 * KB, 30 * MB], 0, 0, &all), 3);
        assert_eq!(files_to_merge(&[KB], 0, 0, &all), 0);
    }

    #[test]
    fn tiered_waits_for_a_tier_to_fill() {
        let tiered = options(4, true, 0);
        assert_eq!(
            files_to_merge(&[30 * KB, 30 * KB, 30 * KB, 2 * MB], 0, 0, &tiered),
            0
        );
        assert_eq!(files_to_merge(&[30 * KB; 4], 0, 0, &tiered), 4);
    }

    #[test]
    fn a_bound_on_files_merges_across_tiers() {
        let bounded = options(4, true, 4);
        // Four files in four tiers: no tier is full, but 3 may stay.
        let spread = [30 * KB, 300 * KB, 2 * MB, 8 * MB];
        assert_eq!(files_to_merge(&spread, 0, 0, &options(4, true, 0)), 0);
        assert_eq!(files_to_merge(&spread, 0, 0, &bounded), 2);
        // The merged file (330 KB) is not half of the next (2 MB): stop.
        // Two files of similar size absorb the next one too.
        assert_eq!(
            files_to_merge(&[500 * KB, 600 * KB, 2 * MB, 8 * MB], 0, 0, &bounded),
            3
        );
        // Up to the bound, nothing.
        assert_eq!(files_to_merge(&spread[1..], 0, 0, &bounded), 0);
        // Beside a done file, 2 small files may stay (3 files, 4 after
        // the next flush); beside more, still 2.
        assert_eq!(files_to_merge(&spread[1..], 1, 0, &bounded), 2);
        assert_eq!(files_to_merge(&spread[2..], 1, 0, &bounded), 0);
        assert_eq!(files_to_merge(&spread[2..], 3, 0, &bounded), 0);
        // A full tier still merges as before.
        assert_eq!(files_to_merge(&[30 * KB; 4], 0, 0, &bounded), 4);
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
        // partition never holds more than the bound of small files, nor of
        // files while at most one is done, and the bytes rewritten stay a
        // small multiple of those flushed.
        for flush in [36 * KB, 300 * KB, 1500 * KB, 7 * MB] {
            let bounded = options(4, true, 4);
            let (mut files, mut rewritten) = (Vec::<u64>::new(), 0u64);
            let (mut most_small, mut most_files) = (0, 0);
            for _ in 0..500 {
                files.push(flush);
                files.sort();
                let small = files.iter().take_while(|&&b| b < SMALL_FILE_BYTES).count();
                let done = files.len() - small;
                most_small = most_small.max(small);
                if done <= 1 {
                    most_files = most_files.max(files.len());
                }
                let n = files_to_merge(&files[..small], done, 0, &bounded);
                if n >= 2 {
                    let merged: u64 = files.drain(..n).sum();
                    rewritten += merged;
                    files.push(merged);
                }
            }
            assert!(most_small <= 4, "{flush}: {most_small} small files");
            assert!(most_files <= 4, "{flush}: {most_files} files");
            let amplification = rewritten as f64 / (500 * flush) as f64;
            assert!(
                amplification < 20.0,
                "{flush}: rewritten {amplification:.1}x"
            );
        }
    }
}
