//! The commit of a write-ahead log flush ([`super::log`]): the rows of
//! many requests as one snapshot, with the node's mark set in the same
//! commit, through the same file writer and commit path as group commit.

use arrow::array::RecordBatch;
use iceberg::TableIdent;
use iceberg::transaction::{ApplyTransactionAction, Transaction};

use super::commit::{Commit, TableWriter, commit_group, merge_if_due};
use super::write::prepare;
use crate::error::Result;

/// A flush of the write-ahead log: its requests (id and rows, in the
/// table's Arrow schema) and the table properties to set in the same
/// commit (the node's mark).
#[derive(Debug)]
pub struct Flush {
    /// Each request's id and rows.
    pub requests: Vec<(Option<String>, Vec<RecordBatch>)>,
    /// Table properties set atomically with the rows.
    pub table_properties: Vec<(String, String)>,
}

impl TableWriter {
    /// Commit a flush of the log as one snapshot, directly (the log's
    /// flusher is the only writer of its rows; other commits to the table
    /// race through the catalog's compare-and-swap). Requests whose ids
    /// the table already holds (a retry another node committed first) are
    /// left out. Returns the snapshot.
    pub async fn commit_flush(&self, ident: &TableIdent, flush: Flush) -> Result<i64> {
        let dedup = self.dedup(ident).await?;
        let table = self.tables.load(self.catalog.as_ref(), ident).await?;
        dedup.learn(&table);
        let mut ids = vec![];
        let mut batches = vec![];
        for (id, rows) in flush.requests {
            match id {
                Some(id) if dedup.get(&id).is_some() => {
                    tracing::debug!(request_id = %id, "left out of the flush: another node committed it");
                }
                Some(id) => {
                    ids.push((id, rows.iter().map(|b| b.num_rows() as u64).sum()));
                    batches.extend(rows);
                }
                None => batches.extend(rows),
            }
        }
        if batches.is_empty() {
            // Only the mark: the log's segment may then be deleted.
            let tx = Transaction::new(&table);
            let set = flush
                .table_properties
                .into_iter()
                .fold(tx.update_table_properties(), |a, (k, v)| a.set(k, v));
            let committed = set.apply(tx)?.commit(self.catalog.as_ref()).await?;
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
            self.catalog.as_ref(),
            &self.tables,
            &table,
            ident,
            Commit {
                prepared: vec![prepared],
                ids: ids.clone(),
                table_properties: flush.table_properties,
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
