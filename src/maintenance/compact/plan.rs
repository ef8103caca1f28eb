//! Which partitions a background compaction run merges, and the long
//! merge it hands to the lane beside it (`compact::LongMerges`): the run's
//! input budget, partitions over the bound first, and what a long merge
//! may take while its files stay in the table. Which files of one
//! partition to merge is [`super::policy`]'s.

use std::collections::HashSet;

use iceberg::spec::DataFile;

use super::policy::{CompactOptions, Partition, back_to_bound, over_bound, pick, small_files};

/// Which of a long `pick` (smallest first) of `partition` the long merge
/// takes, and what the partition keeps for the runs beside it. Its files
/// stay in the table until the merge commits, so it takes at most as many
/// as the bound leaves beside the done files (its largest: the smaller
/// ones are cheap for the runs to merge, with the flushes that land
/// meanwhile). Taking the whole pick, the soak's largest tenant-day held
/// its 4 files being merged and the flush that landed during the 15–18 s
/// merge: 5 files.
fn split_long(
    mut picked: Vec<DataFile>,
    partition: Partition,
    options: &CompactOptions,
) -> (Vec<DataFile>, Partition) {
    if options.max_small_files > 0 {
        let done = partition.files.len() - small_files(&partition, options).len();
        let most = options
            .max_small_files
            .saturating_sub(done + partition.busy)
            .max(2);
        picked.drain(..picked.len().saturating_sub(most));
    }
    let taken: HashSet<&str> = picked.iter().map(|f| f.file_path()).collect();
    let files = partition
        .files
        .into_iter()
        .filter(|f| !taken.contains(f.file_path()))
        .collect();
    let busy = partition.busy + picked.len();
    (picked, Partition { files, busy })
}

/// A run's merges: each partition's pick, those over the bound first,
/// then most files first (they gain the most); and at most one long merge
/// (over `options.short_merge_bytes`) when `lane_free`, of as many files
/// as the partition's bound allows (see [`split_long`]): the rest of it
/// merges in the run. A partition whose pick is long otherwise merges
/// what a short merge holds, its smallest files, so it keeps its bound
/// while a long merge runs elsewhere. Picks are taken while they fit in
/// `options.max_run_bytes`; past it, a partition over the bound still
/// merges, but only the fewest smallest
/// files that bring it back within the bound (no tier merge, no
/// absorbing): when many tenant-days' tiers fill at once, that keeps a
/// run short without leaving any partition over the bound. (Taking whole
/// picks for every partition over the bound, a run merged 512 MB over 97
/// partitions in 15.4 s, and a tenant-day reached 5 files meanwhile.)
pub(super) fn plan_run(
    partitions: Vec<Partition>,
    options: &CompactOptions,
    lane_free: bool,
) -> RunPlan {
    let mut picks: Vec<(bool, Vec<DataFile>, Partition)> = partitions
        .into_iter()
        .map(|p| (over_bound(&p, options), pick(&p, options), p))
        .filter(|(_, picked, _)| picked.len() >= 2)
        .collect();
    picks.sort_by_key(|(over, picked, _)| {
        (std::cmp::Reverse(*over), std::cmp::Reverse(picked.len()))
    });
    let short = CompactOptions {
        max_commit_bytes: options.max_commit_bytes.min(options.short_merge_bytes),
        ..*options
    };
    let mut plan = RunPlan::default();
    let mut budget = options.max_run_bytes;
    for (mut over, picked, mut partition) in picks {
        let picked = if input_bytes(&picked) <= options.short_merge_bytes {
            picked
        } else if lane_free && plan.long.is_none() {
            let (long, rest) = split_long(picked, partition, options);
            plan.long = Some(long);
            partition = rest;
            over = over_bound(&partition, options);
            pick(&partition, &short)
        } else {
            pick(&partition, &short)
        };
        let picked = if input_bytes(&picked) <= budget {
            picked
        } else if over {
            back_to_bound(&partition, &short)
        } else {
            continue;
        };
        if picked.len() >= 2 {
            budget = budget.saturating_sub(input_bytes(&picked));
            plan.over_bound += usize::from(over);
            plan.short.push(picked);
        }
    }
    plan
}

/// What [`plan_run`] chose.
#[derive(Debug, Default)]
pub(super) struct RunPlan {
    /// Partitions the run merges itself, those over the bound first, then
    /// most files first, within the run's input budget (see [`plan_run`]).
    pub short: Vec<Vec<DataFile>>,
    /// How many of `short` are over the bound.
    pub over_bound: usize,
    /// A partition's long merge, to run beside the next runs.
    pub long: Option<Vec<DataFile>>,
}

/// Bytes of `files`: a merge's input.
pub(super) fn input_bytes(files: &[DataFile]) -> u64 {
    files.iter().map(|f| f.file_size_in_bytes()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maintenance::compact::policy::{SHORT_MERGE_BYTES, SMALL_FILE_BYTES};

    const KB: u64 = 1024;
    const MB: u64 = 1024 * 1024;

    /// A partition's files of these sizes, named `<partition>-<i>`.
    fn files(partition: &str, sizes: &[u64]) -> Vec<DataFile> {
        use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat};
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                DataFileBuilder::default()
                    .content(DataContentType::Data)
                    .file_format(DataFileFormat::Parquet)
                    .file_path(format!("{partition}-{i}"))
                    .file_size_in_bytes(size)
                    .record_count(1)
                    .build()
                    .unwrap()
            })
            .collect()
    }

    /// Partitions of these files, none of them busy.
    fn idle(partitions: Vec<Vec<DataFile>>) -> Vec<Partition> {
        partitions
            .into_iter()
            .map(|files| Partition { files, busy: 0 })
            .collect()
    }

    #[test]
    fn a_run_hands_one_long_merge_to_the_lane_and_keeps_the_bound_elsewhere() {
        let options = CompactOptions::background(4, 4);
        let paths = |files: &[DataFile]| -> Vec<String> {
            let mut p: Vec<String> = files.iter().map(|f| f.file_path().to_string()).collect();
            p.sort();
            p
        };
        // A hot tenant-day whose 30 MB tier is full (a 122 MB merge), a
        // second one like it, and a small tenant-day over the bound.
        let hot = || files("hot", &[30 * MB, 30 * MB, 30 * MB, 30 * MB, MB, MB]);
        let warm = || files("warm", &[30 * MB, 30 * MB, 30 * MB, 30 * MB, MB]);
        let small = || files("small", &[KB, KB, KB, KB, KB]);
        let plan = plan_run(idle(vec![hot(), warm(), small()]), &options, true);
        let names = |n: &[&str]| -> Vec<String> { n.iter().map(|s| s.to_string()).collect() };
        // Most files first; of its 6 files, the 3 largest that the bound
        // leaves room for while they stay in the table.
        let long = plan.long.expect("a long merge");
        assert_eq!(paths(&long), names(&["hot-1", "hot-2", "hot-3"]));
        // Its other files merge in the run (30 + 1 + 1 MB); the other long
        // pick merges its smallest files within a short merge instead
        // (1 + 30 + 30 MB); the small tenant-day merges all.
        let short: Vec<Vec<String>> = plan.short.iter().map(|f| paths(f)).collect();
        assert_eq!(
            short,
            vec![
                names(&["hot-0", "hot-4", "hot-5"]),
                names(&["warm-0", "warm-1", "warm-4"]),
                paths(&small())
            ]
        );
        assert_eq!(plan.over_bound, 3, "all over the bound: not deferred");
        // With the lane busy, no long merge: the hot one merges short too.
        let plan = plan_run(idle(vec![hot(), warm(), small()]), &options, false);
        assert!(plan.long.is_none());
        assert_eq!(plan.short.len(), 3);
        assert!(
            plan.short
                .iter()
                .all(|f| input_bytes(f) <= SHORT_MERGE_BYTES)
        );
        // `raindrop compact` (no short bound) merges everything in the run.
        let plan = plan_run(idle(vec![hot(), warm()]), &CompactOptions::default(), true);
        assert!(plan.long.is_none());
        assert_eq!(
            plan.short.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![6, 5]
        );
        assert_eq!(plan.over_bound, 0, "no bound");
    }

    #[test]
    fn while_a_long_merge_runs_its_partition_merges_the_flushes_beside_it() {
        // A tenant-day whose 40 MB tier is full; a run starts a long merge
        // of it, then flushes of 2 MB land, a run after each, until the
        // merge commits. The partition's files (in the table: busy or not)
        // stay at the bound + 1 after each run (the merge's files, at most
        // the bound, and one more), one more after a flush until the run.
        let options = CompactOptions::background(4, 4);
        let bound = options.max_small_files;
        let start = files("hot", &[40 * MB, 40 * MB, 40 * MB, 40 * MB, 2 * MB]);
        let plan = plan_run(idle(vec![start]), &options, true);
        let long = plan.long.expect("a long merge");
        assert_eq!(long.len(), bound, "as many as the bound leaves room for");
        assert!(long.iter().all(|f| f.file_size_in_bytes() == 40 * MB));
        let mut merged: Vec<u64> = plan.short.iter().map(|m| input_bytes(m)).collect();
        assert_eq!(merged, vec![42 * MB], "the rest merges in the run");
        for flush in 0..3 {
            merged.push(2 * MB);
            assert_eq!(long.len() + merged.len(), bound + 2);
            let partition = Partition {
                files: files(&format!("hot{flush}"), &merged),
                busy: long.len(),
            };
            let plan = plan_run(vec![partition], &options, false);
            assert!(plan.long.is_none());
            for m in plan.short {
                let sizes: Vec<u64> = m.iter().map(|f| f.file_size_in_bytes()).collect();
                for size in &sizes {
                    let at = merged.iter().position(|b| b == size).unwrap();
                    merged.remove(at);
                }
                merged.push(sizes.iter().sum());
            }
            assert_eq!(
                long.len() + merged.len(),
                bound + 1,
                "after flush {flush}: {} busy and {merged:?}",
                long.len()
            );
        }
        // Without counting the busy files, nothing would merge until the
        // flushes alone reached the bound.
        let partition = Partition {
            files: files("hot", &[42 * MB, 2 * MB]),
            busy: 0,
        };
        assert!(plan_run(vec![partition], &options, false).short.is_empty());
        // Beside a done file, the long merge takes 2 (and at least 2).
        let mut done = files("d", &[40 * MB, 40 * MB, 40 * MB, 40 * MB, 2 * MB]);
        done.extend(files("d-done", &[SMALL_FILE_BYTES]));
        let plan = plan_run(idle(vec![done.clone()]), &options, true);
        assert_eq!(plan.long.map(|l| l.len()), Some(2));
        done.extend(files("d-done2", &[SMALL_FILE_BYTES]));
        let plan = plan_run(idle(vec![done]), &options, true);
        assert_eq!(plan.long.map(|l| l.len()), Some(2));
    }

    #[test]
    fn past_the_run_budget_a_partition_over_the_bound_merges_only_back_to_it() {
        // 5 small files kept; three tenant-days over the bound whose 15 MB
        // tier is full (60 MB picks: two fit in the 128 MiB budget), and
        // one within the bound whose smallest tier is full.
        let options = CompactOptions::background(4, 6);
        let over = |p: &str| files(p, &[15 * MB, 15 * MB, 15 * MB, 15 * MB, KB, KB, KB]);
        let within = files("within", &[KB, KB, KB, KB]);
        let plan = plan_run(
            idle(vec![over("a"), over("b"), over("c"), within]),
            &options,
            false,
        );
        let sizes: Vec<Vec<u64>> = plan
            .short
            .iter()
            .map(|m| m.iter().map(|f| f.file_size_in_bytes()).collect())
            .collect();
        assert_eq!(
            sizes,
            vec![
                vec![KB, KB, KB, 15 * MB, 15 * MB, 15 * MB, 15 * MB],
                vec![KB, KB, KB, 15 * MB, 15 * MB, 15 * MB, 15 * MB],
                // 7 small files, 5 kept: its 3 smallest become one.
                vec![KB, KB, KB],
                // Still within what the budget has left.
                vec![KB, KB, KB, KB],
            ]
        );
        assert_eq!(plan.over_bound, 3);
        // Beside a done file, 4 small files are kept: 4 smallest merge.
        let mut done = over("d");
        done.extend(files("d-done", &[SMALL_FILE_BYTES]));
        let plan = plan_run(idle(vec![over("a"), over("b"), done]), &options, false);
        assert_eq!(plan.short[2].len(), 4);
    }
}
