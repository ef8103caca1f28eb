//! The commit of a write-ahead log flush ([`super::log`]): the rows of
//! many requests as one snapshot, with the node's mark set in the same
//! commit, through the same file writer and commit path as group commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{
    Catalog, ErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent,
};

use super::buffer::{Committed, Request, committed_mark, held_property, mark_property};
use super::commit::{Commit, TableWriter, commit_group, merge_if_due};
use super::wal::fence::Fence;
use super::write::prepare;
use crate::catalog::cache::TableCache;
use crate::error::Result;

/// A flush of the write-ahead log: its requests (id and rows, in the
/// table's Arrow schema) and the segment they are, recorded in the same
/// commit with the projects whose rows it holds back.
#[derive(Debug)]
pub struct Flush {
    /// Each request's id and the rows written now.
    pub requests: Vec<Request>,
    /// The log segment the rows come from.
    pub mark: Mark,
    /// Projects held back, each with its first segment held.
    pub held: BTreeMap<String, u64>,
}

/// A log segment as the table records it: `raindrop.wal.<node>` = `seq`
/// once its rows are committed.
#[derive(Debug, Clone)]
pub struct Mark {
    /// The node whose log it is.
    pub node: String,
    /// The segment.
    pub seq: u64,
    /// The lease on the log, for logs on object storage: no commit once
    /// this process may no longer act on it.
    pub fence: Option<Arc<Fence>>,
}

impl TableWriter {
    /// Commit a flush of the log as one snapshot, directly (one flusher
    /// per log, or, for an adopted log, the `MarkGuard` between it and
    /// a paused owner; other commits to the table race through the
    /// catalog's compare-and-swap). Requests whose ids
    /// the table already holds (a retry another node committed first) are
    /// left out. Returns the snapshot.
    pub async fn commit_flush(&self, ident: &TableIdent, flush: Flush) -> Result<i64> {
        let guard = MarkGuard {
            inner: self.catalog.as_ref(),
            tables: &self.tables,
            mark: &flush.mark,
        };
        let mut table_properties =
            vec![(mark_property(&flush.mark.node), flush.mark.seq.to_string())];
        let dedup = self.dedup(ident).await?;
        let table = self.tables.load(self.catalog.as_ref(), ident).await?;
        dedup.learn(&table);
        // Only tables that hold (or held) rows back carry the property.
        let had_held = !Committed::of(&table, &flush.mark.node).held.is_empty();
        if had_held || !flush.held.is_empty() {
            table_properties.push((
                held_property(&flush.mark.node),
                Committed::encode_held(&flush.held),
            ));
        }
        let mut ids = vec![];
        let mut batches = vec![];
        for request in flush.requests {
            let rows = request.parts.into_iter().map(|(_, b)| b);
            match request.id {
                Some(id) if dedup.get(&id).is_some() => {
                    tracing::debug!(request_id = %id, "left out of the flush: another node committed it");
                }
                Some(id) => {
                    ids.push((id, request.rows));
                    batches.extend(rows);
                }
                None => batches.extend(rows),
            }
        }
        // Ids whose rows are all held back still make a snapshot: their
        // record lives in snapshot summaries.
        if batches.is_empty() && ids.is_empty() {
            // Only the mark: the log's segment may then be deleted.
            let tx = Transaction::new(&table);
            let set = table_properties
                .into_iter()
                .fold(tx.update_table_properties(), |a, (k, v)| a.set(k, v));
            let committed = set.apply(tx)?.commit(&guard).await?;
            self.tables.insert(&committed);
            return Ok(committed
                .metadata()
                .current_snapshot_id()
                .unwrap_or_default());
        }
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let bytes: usize = batches.iter().map(crate::batch::batch_bytes).sum();
        let table_for_prepare = table.clone();
        // Sorting a whole flush takes a while: on a background thread, so
        // requests keep their CPU.
        let prepared = crate::background::run("sorting a flush", move || {
            prepare(&table_for_prepare, batches)
        })
        .await??;
        let result = commit_group(
            &guard,
            &self.tables,
            &table,
            ident,
            Commit {
                prepared: vec![prepared],
                ids: ids.clone(),
                table_properties,
            },
            &self.commit_times,
        )
        .await;
        let m = crate::metrics::metrics();
        m.commits
            .get_or_create(&crate::metrics::outcome(result.is_ok()))
            .inc();
        let (snapshot_id, _) = result?;
        m.ingest_rows.inc_by(rows);
        m.ingest_bytes.inc_by(bytes as u64);
        for (id, rows) in ids {
            dedup.insert(id, rows, snapshot_id);
        }
        merge_if_due(self.catalog.as_ref(), &self.tables, ident).await;
        Ok(snapshot_id)
    }
}

/// The catalog as a flush of `node`'s segment `seq` sees it: every commit
/// attempt (iceberg retries after a lost race) first checks that the
/// table's mark is still below `seq` and that this process still holds the
/// log's lease. Two nodes can flush one log only when one adopted the
/// other's (a node that stopped renewing its lease but still runs); the
/// check, with the snapshot requirement every append carries, lets exactly
/// one of them commit each segment.
#[derive(Debug)]
struct MarkGuard<'a> {
    inner: &'a dyn Catalog,
    /// Reads the mark from the cached table while the catalog points at
    /// it: one pointer read per attempt, not a metadata file.
    tables: &'a TableCache,
    mark: &'a Mark,
}

#[async_trait]
impl Catalog for MarkGuard<'_> {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        self.inner.load_table(table).await
    }
    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        let refuse = |message: String| iceberg::Error::new(ErrorKind::PreconditionFailed, message);
        if let Some(fence) = &self.mark.fence {
            fence.check().map_err(|e| refuse(e.to_string()))?;
        }
        let current = self
            .tables
            .load(self.inner, commit.identifier())
            .await
            .map_err(|e| refuse(e.to_string()))?;
        if committed_mark(&current, &self.mark.node).is_some_and(|m| m >= self.mark.seq) {
            return Err(refuse(format!(
                "segment {} of node {} is committed already",
                self.mark.seq, self.mark.node
            )));
        }
        self.inner.update_table(commit).await
    }
}
