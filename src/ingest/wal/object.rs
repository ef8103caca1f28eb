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

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use super::fence::Fence;
use super::{Record, SEGMENT_SUFFIX, decode_all};
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

    /// The records of segment `seq`, in the order they were written.
    pub async fn read(&self, seq: u64) -> Result<Vec<Record>> {
        let mut records = vec![];
        for part in self.parts(&self.segment_dir(seq)).await? {
            let data = self.store.read(&part.location).await?;
            records.extend(decode_all(&data, &part.location));
        }
        Ok(records)
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
    /// Write `records` as the segment's next object. `Ok` only if the
    /// object is written and the lease still holds, so no other node can
    /// have listed the log yet: what is acknowledged is what an adopter
    /// replays.
    pub async fn append(&mut self, records: Vec<Vec<u8>>) -> Result<()> {
        self.wal.fence.check()?;
        // A failed write may still have landed: never reuse its name.
        let part = self.next_part;
        self.next_part += 1;
        let location = format!(
            "{}/{part:010}{SEGMENT_SUFFIX}",
            self.wal.segment_dir(self.seq)
        );
        let body = Bytes::from(records.concat());
        self.wal.store.write(&location, body).await?;
        self.wal.fence.check()
    }
}
