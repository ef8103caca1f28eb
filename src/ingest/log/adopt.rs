//! Adoption of logs on object storage whose node stopped: a container
//! that dies does not come back with the same disk or name, so any node
//! commits what its log holds. Every node looks for expired `wal/<node>`
//! leases every half TTL, takes one, commits the segments the table lacks
//! under the dead node's mark (the same exactly-once as a replay), then
//! deletes the log, the mark and the lease. Now and then it also deletes
//! objects written to a log after it was retired ([`orphans`]).

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use iceberg::transaction::{ApplyTransactionAction, Transaction};

use super::Log;
use crate::error::Result;
use crate::ingest::buffer::{Committed, Generation, held_property, mark_property};
use crate::ingest::wal::Wal;
use crate::ingest::wal::fence::Fence;
use crate::ingest::wal::object::{LEASE_PREFIX, ObjectWal, orphans};

/// Looks for logs to adopt between two sweeps for orphaned objects: every
/// 10 TTLs (5 minutes by default), one listing of `_raindrop/wal/`.
const SWEEP_EVERY: u32 = 20;

/// Look for logs to adopt every `every` (half the lease TTL), while the
/// log lives.
pub(super) async fn run(log: Weak<Log>, every: Duration) {
    for look in 1u32.. {
        tokio::time::sleep(every).await;
        let Some(log) = log.upgrade() else { return };
        if let Err(e) = log.adopt_expired().await {
            tracing::warn!(error = %e, "adopting the write-ahead logs of stopped nodes failed; retrying");
        }
        // Only objects older than two TTLs: margin beyond what the
        // listing-then-leases order already guarantees.
        if look % SWEEP_EVERY == 0
            && let Err(e) = log.sweep_orphans(every * 4).await
        {
            tracing::warn!(error = %e, "deleting orphaned write-ahead log objects failed; retrying later");
        }
    }
}

impl Log {
    /// Adopt every log on object storage whose lease expired; how many.
    pub async fn adopt_expired(&self) -> Result<usize> {
        let Wal::Object(own) = &*self.wal else {
            return Ok(0);
        };
        let mut adopted = 0;
        for name in own.fence().lease().expired(LEASE_PREFIX).await? {
            // Its own lease expires only if renewals fail; it stays its own.
            let Some(node) = name
                .strip_prefix(LEASE_PREFIX)
                .filter(|node| *node != own.node())
            else {
                continue;
            };
            let lease = own.fence().lease().other(&name, own.node().to_string());
            // Another node may have taken it since the listing.
            let Some(fence) = Fence::take(lease).await? else {
                continue;
            };
            let theirs = Wal::Object(ObjectWal::new(
                self.warehouse.store.clone(),
                &self.warehouse.warehouse,
                node,
                fence,
            ));
            // On failure the lease is dropped unrenewed: it expires again
            // and the next look (here or on another node) starts over. One
            // log that fails does not hold up the others.
            match self.replay_adopted(&theirs).await {
                Ok(()) => adopted += 1,
                Err(e) => {
                    tracing::warn!(node, error = %e, "adopting a stopped node's write-ahead log failed; retrying once its lease lapses")
                }
            }
        }
        Ok(adopted)
    }

    /// Delete objects of retired logs older than `grace`; how many.
    pub async fn sweep_orphans(&self, grace: Duration) -> Result<usize> {
        let Wal::Object(own) = &*self.wal else {
            return Ok(0);
        };
        let store = &self.warehouse.store;
        let before = SystemTime::now() - grace;
        let doomed = orphans(
            store,
            &self.warehouse.warehouse,
            own.fence().lease(),
            before,
        )
        .await?;
        let count = doomed.len();
        if count > 0 {
            store
                .delete_stream(futures::stream::iter(doomed).boxed())
                .await?;
            tracing::info!(
                objects = count,
                "deleted write-ahead log objects written after their log was adopted (never acknowledged)"
            );
        }
        Ok(count)
    }

    async fn replay_adopted(&self, wal: &Wal) -> Result<()> {
        let segments = wal.segments().await?;
        let table = self.warehouse.load_table(&self.ident).await?;
        let committed = Committed::of(&table, wal.node());
        let mut held = vec![];
        let mut pending = vec![];
        for g in super::recover(wal, &segments, &committed).await? {
            if g.held {
                held.push(Arc::new(g));
            } else {
                pending.push(g);
            }
        }
        let rows: u64 = held
            .iter()
            .map(|g| g.rows)
            .chain(pending.iter().map(|g| g.rows))
            .sum();
        // Held rows alone still need a commit, under a mark past the log's.
        if pending.is_empty() && !held.is_empty() {
            let last = segments.iter().copied().chain(committed.mark).max();
            pending.push(Generation::new(last.unwrap_or(0) + 1));
        }
        for generation in &pending {
            // The first commit writes the held rows too.
            self.commit_generation(wal, &held, generation, None).await?;
            held.clear();
            wal.delete_through(generation.seq).await?;
        }
        wal.delete_through(u64::MAX).await?;
        self.retire(wal).await?;
        tracing::info!(
            node = wal.node(),
            rows,
            segments = segments.len(),
            "adopted the write-ahead log of a stopped node"
        );
        Ok(())
    }

    /// Forget a log on object storage that holds nothing: its mark in
    /// the table, then its lease (which ends its existence).
    async fn retire(&self, wal: &Wal) -> Result<()> {
        let Wal::Object(w) = wal else { return Ok(()) };
        let keys = [mark_property(w.node()), held_property(w.node())];
        let table = self.warehouse.load_table(&self.ident).await?;
        let properties = table.metadata().properties();
        if keys.iter().any(|k| properties.contains_key(k)) {
            let tx = Transaction::new(&table);
            let committed = keys
                .into_iter()
                .fold(tx.update_table_properties(), |a, k| a.remove(k))
                .apply(tx)?
                .commit(self.warehouse.catalog.as_ref())
                .await?;
            self.warehouse.tables.insert(&committed);
        }
        w.fence().release().await
    }

    /// At shutdown, after the final flush: a log on object storage that
    /// holds nothing is retired at once rather than adopted a TTL later.
    pub async fn close(&self) -> Result<()> {
        if !matches!(*self.wal, Wal::Object(_)) || self.buffer.held().0 > 0 {
            return Ok(());
        }
        // Parts of a segment that never held an acknowledged row.
        self.wal.delete_through(u64::MAX).await?;
        self.retire(&self.wal).await
    }
}
