//! Request ids already committed to a table, so a client's retry is
//! answered with the original outcome instead of being written again,
//! across restarts and nodes (the ids are recorded in snapshot summaries).

use std::sync::Arc;

use iceberg::table::Table;

/// Snapshot summary property listing the request ids a commit carried,
/// as `id=rows` pairs separated by `,`: committed atomically with the data,
/// so deduplication survives restarts.
pub const REQUEST_IDS_PROPERTY: &str = "raindrop.request-ids";
/// Committed request ids remembered per table for deduplication.
pub const DEDUP_WINDOW: usize = 100_000;
/// Snapshots scanned for request ids when a table's committer starts.
const DEDUP_HISTORY_SNAPSHOTS: usize = 1_000;

/// Remembered request ids: (rows, snapshot) per committed id, the least
/// recently used forgotten first beyond [`DEDUP_WINDOW`]. Learned from the
/// table's snapshots before every group, so ids committed by another node,
/// or by a commit of ours whose answer was lost, are known too.
#[derive(Clone)]
pub(super) struct Dedup {
    ids: moka::sync::Cache<String, (u64, i64)>,
    /// Highest snapshot sequence number whose ids are learned.
    learned: Arc<std::sync::atomic::AtomicI64>,
}

impl Dedup {
    pub(super) fn new() -> Self {
        Self {
            ids: moka::sync::Cache::builder()
                .max_capacity(DEDUP_WINDOW as u64)
                // LRU admits every id: a frequency filter could drop a new one.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            learned: Arc::new(std::sync::atomic::AtomicI64::new(-1)),
        }
    }

    pub(super) fn insert(&self, id: String, rows: u64, snapshot: i64) {
        self.ids.insert(id, (rows, snapshot));
    }

    pub(super) fn get(&self, id: &str) -> Option<(u64, i64)> {
        self.ids.get(id)
    }

    /// Learn the ids recorded in the table's snapshots not learned yet (at
    /// most the newest [`DEDUP_HISTORY_SNAPSHOTS`] on the first call).
    pub(super) fn learn(&self, table: &Table) {
        use std::sync::atomic::Ordering;
        let after = self.learned.load(Ordering::Acquire);
        let mut snapshots: Vec<_> = table
            .metadata()
            .snapshots()
            .filter(|s| s.sequence_number() > after)
            .collect();
        snapshots.sort_by_key(|s| s.sequence_number());
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
        // Format v1 has no sequence numbers: always scan the history.
        if table.metadata().format_version() >= iceberg::spec::FormatVersion::V2 {
            self.learned
                .fetch_max(table.metadata().last_sequence_number(), Ordering::AcqRel);
        }
    }
}
