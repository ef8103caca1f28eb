//! Background maintenance of `raw_events` inside `raindrop serve`:
//! periodic compaction, per-project retention (and finishing deleted
//! projects), then snapshot expiry and deletion of the files no retained
//! snapshot references, and a report of orphan files at start.
//!
//! With several nodes on one catalog, only the holder of the maintenance
//! [`Lease`] runs it; the others take over when the holder stops renewing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::compact::{CompactOptions, LongMerges, compact_table_with};
use super::expire::{Retention, expiring};
use crate::catalog::Warehouse;
use crate::catalog::lease::Lease;
use crate::catalog::rewrite::Manifests;
use crate::metrics::count_run;
use crate::tenant::projects::ProjectTable;

/// What runs in the background, and how often.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Compact every this often; `None`: no background maintenance.
    pub every: Option<Duration>,
    /// Which partitions to compact.
    pub compact: CompactOptions,
    /// Which snapshots to keep (what only expired ones referenced is
    /// deleted); `None` keeps every snapshot.
    pub retention: Option<Retention>,
    /// Notified after each flush of this node's buffered rows: compaction
    /// runs then, so a flush's new files are merged before the next one
    /// adds more (the bound on files per partition counts on it).
    pub flushed: Arc<tokio::sync::Notify>,
    /// Set while a compaction run is in progress: this node's timed
    /// flushes wait for it (`ingest::log`), so a run is not outpaced by
    /// two flushes.
    pub compacting: Arc<tokio::sync::watch::Sender<bool>>,
}

/// How often expiry looks for snapshots to expire. Checking costs no I/O
/// (the table metadata is cached); expiring soon after a snapshot falls out
/// of the retention keeps `metadata.json` and the files behind it flat.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// How often project retention is applied. Retention counts whole days;
/// hourly keeps an expired day at most an hour past its deadline, and runs
/// soon after a start.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Background maintenance; stops when dropped (with the server).
#[derive(Debug)]
pub struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    holding: Option<Arc<Holding>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Background {
    /// Stop the jobs and give the lease up, so another node takes over
    /// without waiting for it to expire.
    pub async fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(h) = &self.holding
            && h.until.lock().expect("lease state").take().is_some()
        {
            match h.lease.release().await {
                Ok(()) => tracing::info!(holder = h.lease.holder(), "maintenance lease released"),
                Err(e) => tracing::warn!(error = %e, "could not release the maintenance lease"),
            }
        }
    }
}

/// The maintenance lease and until when this node may act on it.
#[derive(Debug)]
struct Holding {
    lease: Lease,
    until: Mutex<Option<Instant>>,
}

impl Holding {
    fn held(&self) -> bool {
        self.until
            .lock()
            .expect("lease state")
            .is_some_and(|t| Instant::now() < t)
    }

    /// Renew (or take) the lease every third of its TTL. The node acts on
    /// it for two thirds of the TTL after a renewal, leaving a third of
    /// margin before another node may take it.
    async fn keep(self: Arc<Self>) {
        let ttl = self.lease.ttl();
        loop {
            let asked = Instant::now();
            let got = self.lease.try_acquire().await;
            let was = self.held();
            let now_held = matches!(got, Ok(true));
            *self.until.lock().expect("lease state") =
                now_held.then(|| self.lease.act_until(asked));
            crate::metrics::metrics()
                .maintenance_lease_held
                .set(i64::from(now_held));
            match got {
                Ok(true) if !was => {
                    tracing::info!(holder = self.lease.holder(), "maintenance lease acquired")
                }
                Ok(false) if was => {
                    tracing::warn!(holder = self.lease.holder(), "maintenance lease lost")
                }
                Err(e) => tracing::warn!(error = %e, "maintenance lease not renewed"),
                _ => {}
            }
            tokio::time::sleep(ttl / 3).await;
        }
    }
}

/// Start the jobs `schedule` asks for on `warehouse`; with a `lease`, they
/// run only while this node holds it. An aborted job leaves at worst
/// unreferenced files, which the next expiry removes.
pub fn start(warehouse: Warehouse, schedule: Schedule, lease: Option<Lease>) -> Background {
    let mut tasks = vec![tokio::spawn(report_orphans(warehouse.clone()))];
    let holding = lease.map(|lease| {
        Arc::new(Holding {
            lease,
            until: Mutex::new(None),
        })
    });
    if let Some(h) = &holding {
        tasks.push(tokio::spawn(h.clone().keep()));
    }
    if let Some(every) = schedule.every {
        // A task of its own: a slow or stuck retention run (it opens the
        // catalog database anew) must not hold up compaction and expiry.
        tasks.push(tokio::spawn(retain_periodically(
            warehouse.clone(),
            schedule.retention,
            holding.clone(),
        )));
        tasks.push(tokio::spawn(compact_periodically(
            warehouse,
            every,
            schedule,
            holding.clone(),
        )));
    }
    Background { tasks, holding }
}

/// Report files left by commits that never happened (e.g. after a crash)
/// without slowing start-up; deleting them is explicit.
async fn report_orphans(warehouse: Warehouse) {
    let Ok(table) = warehouse.raw_events().await else {
        return;
    };
    match super::find_orphan_files(&warehouse.store, &table, Duration::from_secs(3600)).await {
        Ok(r) if !r.orphans.is_empty() => tracing::warn!(
            orphans = r.orphans.len(),
            "raw_events has data files no snapshot references; remove them with `raindrop orphans --delete`"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "orphan scan skipped"),
    }
}

/// Apply project retention soon after start and then every
/// [`RETENTION_EVERY`] (retried every minute after a failure), and expire
/// old snapshots of tenant tables with it.
async fn retain_periodically(
    warehouse: Warehouse,
    retention: Option<Retention>,
    holding: Option<Arc<Holding>>,
) {
    let mut last: Option<Instant> = None;
    loop {
        // Checking the clock costs nothing; the first run comes soon after start.
        tokio::time::sleep(Duration::from_secs(1)).await;
        if holding.as_ref().is_some_and(|h| !h.held())
            || last.is_some_and(|t| t.elapsed() < RETENTION_EVERY)
        {
            continue;
        }
        let enforced = enforce_retention(&warehouse).await;
        count_run("retention", enforced.is_ok());
        match enforced {
            Ok(()) => last = Some(Instant::now()),
            Err(e) => {
                tracing::warn!(error = %e, "project retention failed; will retry");
                tokio::time::sleep(EXPIRE_EVERY).await;
            }
        }
        // Tenant tables change rarely (replaced, appended to): their old
        // snapshots, and the files only those reference, go hourly.
        if let Some(retention) = retention {
            expire_tenant_tables(&warehouse, &retention).await;
        }
    }
}

/// Whether `raw_events` changed since the last successful compaction, so
/// an idle table is not re-read every interval.
#[derive(Debug, Default)]
struct SinceCompaction {
    /// The snapshot the last successful run started from. Not the one it
    /// left: an append landing while it planned would then count as
    /// compacted and, the table idle, never be (CI saw 90 files stay for
    /// 30 days); and a failed run must be retried.
    started_from: Option<i64>,
}

impl SinceCompaction {
    fn changed(&self, now: Option<i64>) -> bool {
        now.is_none() || now != self.started_from
    }

    fn ran(&mut self, started_from: Option<i64>, ok: bool) {
        if ok {
            self.started_from = started_from;
        }
    }
}

/// Compact `raw_events` every `every` and after each flush; expire snapshots (and delete the
/// files nothing references any more) every [`EXPIRE_EVERY`] or `every`,
/// whichever is shorter.
async fn compact_periodically(
    warehouse: Warehouse,
    every: Duration,
    schedule: Schedule,
    holding: Option<Arc<Holding>>,
) {
    let current = |t: iceberg::table::Table| t.metadata().current_snapshot_id();
    let ident = warehouse.raw_events_ident();
    let mut since = SinceCompaction::default();
    let tick = every.min(EXPIRE_EVERY);
    let mut next_compaction = Instant::now() + every;
    let mut last_sweep: Option<Instant> = None;
    let manifests = Arc::new(Manifests::default());
    let long = LongMerges::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = schedule.flushed.notified() => next_compaction = Instant::now(),
        }
        if holding.as_ref().is_some_and(|h| !h.held()) {
            continue;
        }
        let now = warehouse.raw_events().await.ok().and_then(current);
        if Instant::now() >= next_compaction && since.changed(now) {
            next_compaction = Instant::now() + every;
            let started = Instant::now();
            schedule.compacting.send_replace(true);
            let compacted_now = compact_table_with(
                &warehouse,
                &ident,
                &schedule.compact,
                &manifests,
                Some(&long),
            )
            .await;
            schedule.compacting.send_replace(false);
            count_run("compaction", compacted_now.is_ok());
            since.ran(now, compacted_now.is_ok());
            match compacted_now {
                Ok(r) if r.files_removed > 0 => tracing::info!(
                    partitions = r.partitions,
                    files_removed = r.files_removed,
                    files_added = r.files_added,
                    bytes_removed = r.bytes_removed,
                    over_bound = r.over_bound,
                    rebuilds = r.rebuilds,
                    superseded = r.superseded,
                    ms = started.elapsed().as_millis() as u64,
                    "raw_events compacted"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "raw_events compaction failed; will retry"),
            }
        }
        // Snapshots age out even while the table is idle.
        let Some(retention) = schedule.retention else {
            continue;
        };
        let due = warehouse
            .raw_events()
            .await
            .is_ok_and(|t| !expiring(&t, &retention).is_empty());
        if !due {
            continue;
        }
        // Listing data/ (for files of failed commits) is the costly part on
        // a big table: at most hourly.
        let sweep = last_sweep.is_none_or(|t: Instant| t.elapsed() >= retention.min_file_age);
        let expired = super::expire_and_clean(&warehouse, &ident, &retention, sweep).await;
        if sweep && expired.is_ok() {
            last_sweep = Some(Instant::now());
        }
        count_run("expiry", expired.is_ok());
        match expired {
            Ok(r) if r.snapshots_expired > 0 => tracing::info!(
                snapshots_expired = r.snapshots_expired,
                files_deleted = r.files_deleted,
                manifests_deleted = r.manifests_deleted,
                metadata_files_deleted = r.metadata_files_deleted,
                view_files_deleted = r.view_files_deleted,
                "raw_events snapshots expired"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "raw_events snapshot expiry failed; will retry"),
        }
    }
}

/// Expire every tenant table's old snapshots (a failure is logged; the
/// next run retries).
async fn expire_tenant_tables(warehouse: &Warehouse, retention: &Retention) {
    let tables = match warehouse.all_tenant_tables().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "listing tenant tables for expiry failed");
            return;
        }
    };
    for ident in tables {
        let expired = super::expire_and_clean(warehouse, &ident, retention, false).await;
        count_run("tenant_expiry", expired.is_ok());
        match expired {
            Ok(r) if r.snapshots_expired > 0 => tracing::info!(
                table = %ident, snapshots_expired = r.snapshots_expired,
                files_deleted = r.files_deleted, "tenant table snapshots expired"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(table = %ident, error = %e, "tenant table expiry failed"),
        }
    }
}

/// Apply every project's retention (see [`super::retention`]).
async fn enforce_retention(warehouse: &Warehouse) -> crate::error::Result<()> {
    let projects = ProjectTable::open(&warehouse.catalog_uri, &warehouse.catalog_name).await?;
    super::retention::enforce(warehouse, &projects).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SinceCompaction;

    #[test]
    fn an_idle_table_is_compacted_again_only_after_a_change_or_a_failure() {
        let mut since = SinceCompaction::default();
        assert!(since.changed(Some(1)), "a first run is due");
        since.ran(Some(1), true);
        assert!(!since.changed(Some(1)), "nothing changed since");
        // A run started from 2 while an append made 3: 3 is still due.
        since.ran(Some(2), true);
        assert!(since.changed(Some(3)));
        // A failed run is retried on the same, idle, table.
        since.ran(Some(3), false);
        assert!(since.changed(Some(3)));
        // An unreadable table is always worth a try.
        assert!(since.changed(None));
    }
}
