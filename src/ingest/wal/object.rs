//! The write-ahead log on the warehouse's object storage, for nodes whose
//! disk does not outlive them (containers): a `DoPut` is acknowledged once
//! the object holding it is written, one object per group of concurrent
//! requests, at `<warehouse>/_raindrop/wal/<node>/<segment>/<part>.wal`.
//!
//! Each process is a new node with a fresh id and holds the lease
//! `wal/<node>` in the catalog database while it runs (see [`Fence`]). A
//! node that dies stops renewing it; any node then adopts the log
//! (`ingest::log::adopt`): it takes the lease, commits what the table
//! lacks under the dead node's mark and deletes the log. Tenants never see
//! these objects: vended credentials and signed reads cover table files
//! only.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use arrow::ipc::CompressionType;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use super::fence::Fence;
use super::{Record, SEGMENT_SUFFIX, decode_all};
use crate::catalog::lease::Lease;
use crate::error::Result;
use crate::storage::Store;

/// Where logs live, under the warehouse root.
const ROOT: &str = "_raindrop/wal";
/// Prefix of the logs' lease names in the catalog database.
pub const LEASE_PREFIX: &str = "wal/";

/// The name of `node`'s log lease.
pub fn lease_name(node: &str) -> String {
    format!("{LEASE_PREFIX}{node}")
}

/// Objects of logs whose lease is gone, written before `before`: PUTs of a
/// paused node that landed after an adopter had listed and deleted its
/// log. None was acknowledged (the node's lease had lapsed), and no
/// adopter will ever look there again, so only this sweep deletes them.
///
/// The listing comes first: a node takes its lease before its first
/// write, so any object listed belongs to a node whose lease row existed
/// then, and a row missing afterwards was released (the log retired).
/// Read in the other order, a node starting in between would lose its
/// first parts.
pub async fn orphans(
    store: &Store,
    warehouse_root: &str,
    leases: &Lease,
    before: SystemTime,
) -> Result<Vec<String>> {
    let root = format!("{}/{ROOT}", warehouse_root.trim_end_matches('/'));
    let listed = store.list(&root).await?;
    let leased: HashSet<String> = leases
        .names(LEASE_PREFIX)
        .await?
        .into_iter()
        .filter_map(|name| name.strip_prefix(LEASE_PREFIX).map(str::to_string))
        .collect();
    let prefix = format!("{root}/");
    Ok(listed
        .into_iter()
        .filter(|o| o.modified < before)
        .filter(|o| {
            o.location
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(node, _)| !leased.contains(node))
        })
        .map(|o| o.location)
        .collect())
}

/// One node's log on object storage.
#[derive(Debug, Clone)]
pub struct ObjectWal {
    store: Store,
    /// `<warehouse>/_raindrop/wal/<node>`.
    dir: String,
    node: String,
    /// The lease on `wal/<node>` this process holds.
    fence: Arc<Fence>,
}

/// One object of a log: its segment, its part and where it is.
struct Part {
    seq: u64,
    part: u64,
    location: String,
}

impl ObjectWal {
    /// The log of `node` in the warehouse at `warehouse_root`, written or
    /// adopted while `fence` holds its lease.
    pub fn new(store: Store, warehouse_root: &str, node: &str, fence: Arc<Fence>) -> Self {
        Self {
            store,
            dir: format!("{}/{ROOT}/{node}", warehouse_root.trim_end_matches('/')),
            node: node.to_string(),
            fence,
        }
    }

    /// The node whose log this is.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// PUTs in flight at once: 4 on S3. In a local warehouse each write
    /// ends in a `syncfs` of the whole file system, and concurrent ones
    /// slowed a 50k-row stream by a third (`benches/README.md`).
    pub fn writes_in_flight(&self) -> usize {
        if self.on_s3() { 4 } else { 1 }
    }

    /// Whether the log is on S3 rather than in a local warehouse.
    fn on_s3(&self) -> bool {
        self.dir.starts_with("s3://")
    }

    /// How records are compressed. On S3 a PUT's time follows its size:
    /// ZSTD takes telemetry to about 60% of LZ4's bytes (uuid ids
    /// dominate) and lifted a 50k-row stream by a fifth against s3s-fs.
    /// In a local warehouse the same CPU cut a 1k-row stream by a third,
    /// so LZ4 there (`benches/README.md`).
    pub fn compression(&self) -> CompressionType {
        if self.on_s3() {
            CompressionType::ZSTD
        } else {
            CompressionType::LZ4_FRAME
        }
    }

    /// The lease this process holds on the log.
    pub fn fence(&self) -> &Arc<Fence> {
        &self.fence
    }

    async fn parts(&self, under: &str) -> Result<Vec<Part>> {
        let listed = self.store.list(under).await?;
        let prefix = format!("{}/", self.dir);
        let mut parts: Vec<Part> = listed
            .into_iter()
            .filter_map(|o| {
                let name = o.location.strip_prefix(&prefix)?;
                let (seq, part) = name.strip_suffix(SEGMENT_SUFFIX)?.split_once('/')?;
                Some(Part {
                    seq: seq.parse().ok()?,
                    part: part.parse().ok()?,
                    location: o.location.clone(),
                })
            })
            .collect();
        parts.sort_unstable_by_key(|p| (p.seq, p.part));
        Ok(parts)
    }

    /// Sequence numbers of the segments in the log, ascending.
    pub async fn segments(&self) -> Result<Vec<u64>> {
        let mut seqs: Vec<u64> = self.parts(&self.dir).await?.iter().map(|p| p.seq).collect();
        seqs.dedup();
        Ok(seqs)
    }

    fn segment_dir(&self, seq: u64) -> String {
        format!("{}/{seq:020}", self.dir)
    }

    /// The records of segment `seq`, in the order they were written. A
    /// segment is hundreds of small objects: they are fetched 16 at a time
    /// (one by one, adopting three logs of 150k rows took over a minute on
    /// a loaded test machine).
    pub async fn read(&self, seq: u64) -> Result<Vec<Record>> {
        let parts = self.parts(&self.segment_dir(seq)).await?;
        let fetched: Vec<(String, Bytes)> = futures::stream::iter(parts)
            .map(|part| async move {
                let data = self.store.read(&part.location).await?;
                Ok::<_, crate::error::Error>((part.location, data))
            })
            .buffered(16)
            .try_collect()
            .await?;
        Ok(fetched
            .iter()
            .flat_map(|(location, data)| decode_all(data, location))
            .collect())
    }

    /// Delete segments up to and including `seq`.
    pub async fn delete_through(&self, seq: u64) -> Result<()> {
        let doomed: Vec<String> = self
            .parts(&self.dir)
            .await?
            .into_iter()
            .filter(|p| p.seq <= seq)
            .map(|p| p.location)
            .collect();
        if !doomed.is_empty() {
            self.store
                .delete_stream(futures::stream::iter(doomed).boxed())
                .await?;
        }
        Ok(())
    }

    /// Start segment `seq` (nothing is written until its first append).
    pub fn create(&self, seq: u64) -> ObjectSegment {
        ObjectSegment {
            wal: self.clone(),
            seq,
            next_part: 0,
        }
    }
}

/// A segment being written: one object per append.
#[derive(Debug)]
pub struct ObjectSegment {
    wal: ObjectWal,
    seq: u64,
    next_part: u64,
}

impl ObjectSegment {
    /// Start writing `records` as the segment's next object. The future
    /// is `Ok` only if the object is written and the lease still holds,
    /// so no other node can have listed the log yet: what is acknowledged
    /// is what an adopter replays.
    pub fn write(&mut self, records: Vec<Vec<u8>>) -> BoxFuture<'static, Result<()>> {
        // A failed write may still have landed: never reuse its name.
        let part = self.next_part;
        self.next_part += 1;
        let location = format!(
            "{}/{part:010}{SEGMENT_SUFFIX}",
            self.wal.segment_dir(self.seq)
        );
        let (store, fence) = (self.wal.store.clone(), self.wal.fence.clone());
        Box::pin(async move {
            fence.check()?;
            store
                .write(&location, Bytes::from(records.concat()))
                .await?;
            fence.check()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use arrow::array::{Int64Array, RecordBatch};

    use super::super::encode;
    use super::*;
    use crate::catalog::lease::Lease;
    use crate::catalog::{StorageConfig, open};

    fn record(id: &str) -> Vec<u8> {
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(Int64Array::from(vec![1, 2])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        encode(
            Some(id),
            &[batch],
            Some(arrow::ipc::CompressionType::LZ4_FRAME),
        )
        .unwrap()
    }

    fn ids(records: &[Record]) -> Vec<&str> {
        records
            .iter()
            .map(|r| r.request_id.as_deref().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn parts_read_back_in_order_and_nothing_is_acknowledged_without_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = open(&StorageConfig::in_dir(dir.path())).await.unwrap();
        let lease = Lease::open(
            &warehouse.catalog_uri,
            &warehouse.catalog_name,
            &lease_name("n1"),
            "n1".into(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let fence = Fence::take(lease).await.unwrap().expect("a free lease");
        let wal = ObjectWal::new(warehouse.store.clone(), &warehouse.warehouse, "n1", fence);
        let mut one = wal.create(1);
        one.write(vec![record("a")]).await.unwrap();
        one.write(vec![record("b"), record("c")]).await.unwrap();
        let mut two = wal.create(2);
        for k in 0..11 {
            two.write(vec![record(&format!("d{k}"))]).await.unwrap();
        }
        // A torn object (never acknowledged): its records are ignored.
        let torn = record("torn");
        warehouse
            .store
            .write(
                &format!("{}/{:010}{SEGMENT_SUFFIX}", wal.segment_dir(2), 11),
                Bytes::from(torn[..torn.len() - 3].to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(wal.segments().await.unwrap(), vec![1, 2]);
        let first = wal.read(1).await.unwrap();
        assert_eq!(ids(&first), ["a", "b", "c"]);
        assert_eq!(first[2].batches[0].num_rows(), 2, "compressed rows decode");
        let want: Vec<String> = (0..11).map(|k| format!("d{k}")).collect();
        assert_eq!(ids(&wal.read(2).await.unwrap()), want, "part order");
        // One object per append, all under the log's own prefix, outside
        // every table's directory.
        let listed = warehouse.store.list(&warehouse.warehouse).await.unwrap();
        let logged: Vec<_> = listed
            .iter()
            .filter(|o| o.location.ends_with(SEGMENT_SUFFIX))
            .collect();
        assert_eq!(logged.len(), 2 + 11 + 1);
        let root = format!("{}/_raindrop/wal/n1/", warehouse.warehouse);
        assert!(logged.iter().all(|o| o.location.starts_with(&root)));
        wal.delete_through(1).await.unwrap();
        assert_eq!(wal.segments().await.unwrap(), vec![2]);
        // Given up (or taken over): appends are refused, before and after
        // the write, and nothing more is written.
        wal.fence().release().await.unwrap();
        let err = two.write(vec![record("late")]).await.unwrap_err();
        assert!(err.to_string().contains("lease wal/n1"), "{err}");
        assert_eq!(ids(&wal.read(2).await.unwrap()), want);
        wal.delete_through(u64::MAX).await.unwrap();
        assert!(wal.segments().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn only_objects_of_logs_without_a_lease_are_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let warehouse = open(&StorageConfig::in_dir(dir.path())).await.unwrap();
        let ttl = Duration::from_secs(30);
        let log = async |node: &str| {
            let (uri, catalog) = (&warehouse.catalog_uri, &warehouse.catalog_name);
            let name = lease_name(node);
            let lease = Lease::open(uri, catalog, &name, node.into(), ttl).await;
            let fence = Fence::take(lease.unwrap()).await.unwrap();
            let wal = ObjectWal::new(
                warehouse.store.clone(),
                &warehouse.warehouse,
                node,
                fence.expect("a free lease"),
            );
            wal.create(1).write(vec![record(node)]).await.unwrap();
            wal
        };
        // A running node, a node whose log waits to be adopted (its lease
        // lapsed, the row stays) and a retired one with a late PUT.
        let running = log("n1").await;
        let stopped = log("n2").await;
        let retired = log("n3").await;
        let late = format!("{}/{:010}{SEGMENT_SUFFIX}", retired.segment_dir(1), 7);
        retired.delete_through(u64::MAX).await.unwrap();
        retired.fence().release().await.unwrap();
        warehouse
            .store
            .write(&late, Bytes::from(record("late")))
            .await
            .unwrap();
        let leases = running.fence().lease();
        let store = &warehouse.store;
        let soon = SystemTime::now() + Duration::from_secs(1);
        let found = orphans(store, &warehouse.warehouse, leases, soon).await;
        assert_eq!(found.unwrap(), [late]);
        // Younger than the grace: kept for now.
        let before = SystemTime::now() - Duration::from_secs(3600);
        let found = orphans(store, &warehouse.warehouse, leases, before).await;
        assert!(found.unwrap().is_empty());
        // The others' parts are all still there.
        for wal in [&running, &stopped] {
            assert_eq!(wal.segments().await.unwrap(), [1], "{}", wal.node());
        }
    }
}
