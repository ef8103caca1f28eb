//! Background maintenance of `raw_events` inside `raindrop serve`:
//! periodic compaction, then snapshot expiry and deletion of the files no
//! retained snapshot references, and a report of orphan files at start.

use std::time::Duration;

use super::compact::{CompactOptions, compact_table};
use crate::catalog::Warehouse;

/// What runs in the background, and how often.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Compact every this often; `None`: no background maintenance.
    pub every: Option<Duration>,
    /// Which partitions to compact.
    pub compact: CompactOptions,
    /// Expire snapshots older than this (and delete what only they
    /// referenced); `None` keeps every snapshot.
    pub retention: Option<Duration>,
}

/// Background maintenance; stops when dropped (with the server).
#[derive(Debug)]
pub struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Start the jobs `schedule` asks for on `warehouse`. An aborted job leaves
/// at worst unreferenced files, which the next expiry removes.
pub fn start(warehouse: Warehouse, schedule: Schedule) -> Background {
    let mut tasks = vec![tokio::spawn(report_orphans(warehouse.clone()))];
    if let Some(every) = schedule.every {
        tasks.push(tokio::spawn(compact_periodically(
            warehouse, every, schedule,
        )));
    }
    Background(tasks)
}

/// Report files left by commits that never happened (e.g. after a crash)
/// without slowing start-up; deleting them is explicit.
async fn report_orphans(warehouse: Warehouse) {
    let Ok(table) = warehouse.raw_events().await else {
        return;
    };
    match super::find_orphan_files(&table, Duration::from_secs(3600)).await {
        Ok(r) if !r.orphans.is_empty() => tracing::warn!(
            orphans = r.orphans.len(),
            "raw_events has data files no snapshot references; remove them with `raindrop orphans --delete`"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "orphan scan skipped"),
    }
}

/// Compact `raw_events` every `every`, then expire snapshots older than the
/// retention and delete the files nothing references any more.
async fn compact_periodically(warehouse: Warehouse, every: Duration, schedule: Schedule) {
    let current = |t: iceberg::table::Table| t.metadata().current_snapshot_id();
    let ident = warehouse.raw_events_ident();
    // The snapshot the last compaction left: an idle table is not re-read.
    let mut compacted: Option<i64> = None;
    loop {
        tokio::time::sleep(every).await;
        let now = warehouse.raw_events().await.ok().and_then(current);
        if now.is_none() || now != compacted {
            match compact_table(&warehouse, &ident, &schedule.compact).await {
                Ok(r) if r.files_removed > 0 => tracing::info!(
                    partitions = r.partitions,
                    files_removed = r.files_removed,
                    files_added = r.files_added,
                    rebuilds = r.rebuilds,
                    "raw_events compacted"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "raw_events compaction failed; will retry"),
            }
            compacted = warehouse.raw_events().await.ok().and_then(current);
        }
        // Snapshots age out even while the table is idle.
        let Some(retain) = schedule.retention else {
            continue;
        };
        let hour = Duration::from_secs(3600);
        match super::expire_and_clean(&warehouse, &ident, retain, 1, hour).await {
            Ok(r) if r.snapshots_expired > 0 => tracing::info!(
                snapshots_expired = r.snapshots_expired,
                files_deleted = r.files_deleted,
                "raw_events snapshots expired"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "raw_events snapshot expiry failed; will retry"),
        }
    }
}
