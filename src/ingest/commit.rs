//! Group commit: one committer task per table gathers the prepared rows
//! of every concurrent stream into one set of files and one fast-append
//! snapshot, and answers each stream only after the catalog accepted that
//! commit. Files of a commit that certainly failed are deleted; when the
//! catalog database went away mid-commit, the outcome is looked up by the
//! snapshot's commit id, and if it cannot be, the files are left to orphan
//! cleanup. Request ids committed with a snapshot make client retries
//! idempotent, across restarts and across nodes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};
use tokio::sync::{mpsc, oneshot};

use super::dedup::{Dedup, REQUEST_IDS_PROPERTY};
use super::write::{Prepared, delete_files, prepare, write_prepared};
use crate::catalog::cache::TableCache;
use crate::catalog::rewrite::{self, MERGE_AFTER_APPENDS};
use crate::error::{Error, Result};

/// What a committed append produced.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    /// Rows committed for this request.
    pub rows: u64,
    /// Data files added by the commit that carried this request (shared
    /// with the other requests of its group).
    pub files: Vec<String>,
    /// Snapshot created by that commit (`None` when nothing was written).
    pub snapshot_id: Option<i64>,
    /// True when this request id had been committed before: nothing new
    /// was written.
    pub deduplicated: bool,
}

/// Group-commit settings.
#[derive(Debug, Clone, Copy)]
pub struct CommitConfig {
    /// How long a commit may wait for more requests to share it. `0` (the
    /// default) commits as soon as the previous commit finishes: requests
    /// that arrive meanwhile form the next group, so grouping grows with
    /// load and an idle server adds no latency.
    pub max_delay: Duration,
    /// A group stops gathering once it holds this many bytes.
    pub target_bytes: usize,
}

impl Default for CommitConfig {
    fn default() -> Self {
        Self {
            max_delay: Duration::ZERO,
            target_bytes: GROUP_TARGET_BYTES,
        }
    }
}

/// Arrow bytes a group gathers at most while `max_delay` runs: what one
/// commit holds in memory, apart from the size its files roll at.
pub const GROUP_TARGET_BYTES: usize = 128 * 1024 * 1024;

/// Snapshot summary property naming the commit that made the snapshot.
pub const COMMIT_ID_PROPERTY: &str = "raindrop.commit-id";

struct Pending {
    prepared: Prepared,
    rows: u64,
    bytes: usize,
    request_id: Option<String>,
    reply: oneshot::Sender<Result<AppendOutcome>>,
}

/// Recent catalog-commit latencies (applying the append, the catalog's
/// compare-and-swap and its confirmation; not writing the files), for
/// benchmarks and diagnostics. Bounded: the newest `CAPACITY` are kept.
#[derive(Debug, Default)]
pub struct CommitTimes(Mutex<VecDeque<Duration>>);

impl CommitTimes {
    const CAPACITY: usize = 10_000;

    fn record(&self, d: Duration) {
        let mut q = self.0.lock().expect("commit times lock");
        if q.len() == Self::CAPACITY {
            q.pop_front();
        }
        q.push_back(d);
    }

    /// The recorded latencies, oldest first.
    pub fn snapshot(&self) -> Vec<Duration> {
        self.0
            .lock()
            .expect("commit times lock")
            .iter()
            .copied()
            .collect()
    }
}

/// One committer task per table, fed through a channel.
struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
    dedup: Dedup,
}

/// Writes and commits data files with group commit: one committer per
/// table gathers the batches of all concurrent streams into one set of
/// files and one snapshot, and answers each stream only after that commit.
pub struct TableWriter {
    pub(super) catalog: Arc<dyn Catalog>,
    pub(super) tables: Arc<TableCache>,
    config: CommitConfig,
    committers: tokio::sync::Mutex<HashMap<TableIdent, Committer>>,
    pub(super) commit_times: Arc<CommitTimes>,
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWriter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TableWriter {
    /// A writer over `catalog`, loading tables through `tables` (so a
    /// commit's base is usually the cached result of the previous commit).
    pub fn new(catalog: Arc<dyn Catalog>, tables: Arc<TableCache>, config: CommitConfig) -> Self {
        Self {
            catalog,
            tables,
            config,
            committers: tokio::sync::Mutex::new(HashMap::new()),
            commit_times: Arc::default(),
        }
    }

    /// Latencies of recent catalog commits, across tables.
    pub fn commit_times(&self) -> &CommitTimes {
        &self.commit_times
    }

    /// The request ids committed to `ident` that this node knows.
    pub(super) async fn dedup(&self, ident: &TableIdent) -> Result<Dedup> {
        Ok(self.committer(ident).await?.1)
    }

    async fn committer(
        &self,
        ident: &TableIdent,
    ) -> Result<(mpsc::UnboundedSender<Pending>, Dedup)> {
        let mut committers = self.committers.lock().await;
        if let Some(c) = committers.get(ident).filter(|c| !c.queue.is_closed()) {
            return Ok((c.queue.clone(), c.dedup.clone()));
        }
        let table = self.tables.load(self.catalog.as_ref(), ident).await?;
        let dedup = Dedup::new();
        dedup.learn(&table);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_committer(
            self.catalog.clone(),
            self.tables.clone(),
            ident.clone(),
            self.config,
            rx,
            dedup.clone(),
            self.commit_times.clone(),
        ));
        committers.insert(
            ident.clone(),
            Committer {
                queue: tx.clone(),
                dedup: dedup.clone(),
            },
        );
        Ok((tx, dedup))
    }

    /// Forget a table's committer (after the table was dropped).
    pub async fn forget(&self, ident: &TableIdent) {
        self.committers.lock().await.remove(ident);
    }

    /// Append `batches` (already in the table's Arrow schema) to the table.
    /// Returns once the commit that carries them succeeded; on error none
    /// of them is committed. A `request_id` seen before (in this table's
    /// recent history) returns the earlier outcome without writing.
    pub async fn append(
        &self,
        ident: &TableIdent,
        batches: Vec<RecordBatch>,
        request_id: Option<String>,
    ) -> Result<AppendOutcome> {
        let (queue, dedup) = self.committer(ident).await?;
        let seen = request_id.as_ref().and_then(|id| dedup.get(id));
        if let Some((rows, snapshot)) = seen {
            return Ok(AppendOutcome {
                rows,
                files: vec![],
                snapshot_id: Some(snapshot),
                deduplicated: true,
            });
        }
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            return Ok(AppendOutcome::default());
        }
        // Sorting and splitting by partition happen here, in the caller's
        // task, so concurrent streams do it in parallel while the committer
        // encodes the previous group.
        let table = self.tables.load(self.catalog.as_ref(), ident).await?;
        let prepared = prepare(&table, batches)?;
        let bytes = prepared.bytes();
        let (reply, answer) = oneshot::channel();
        queue
            .send(Pending {
                prepared,
                rows,
                bytes,
                request_id,
                reply,
            })
            .map_err(|_| Error::Internal("committer stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("committer dropped the request".into()))?
    }
}

async fn run_committer(
    catalog: Arc<dyn Catalog>,
    tables: Arc<TableCache>,
    ident: TableIdent,
    config: CommitConfig,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    dedup: Dedup,
    commit_times: Arc<CommitTimes>,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.bytes;
        let mut group = vec![first];
        while let Ok(p) = rx.try_recv() {
            bytes += p.bytes;
            group.push(p);
        }
        if !config.max_delay.is_zero() {
            let deadline = tokio::time::Instant::now() + config.max_delay;
            while bytes < config.target_bytes {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => {
                        bytes += p.bytes;
                        group.push(p);
                    }
                    _ => break,
                }
            }
        }
        // The group's base: the current table, whose snapshots also tell
        // which ids were committed meanwhile (by another node, or by our own
        // commit whose answer the catalog database never sent).
        let table = match tables.load(catalog.as_ref(), &ident).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(table = %ident, error = %e, requests = group.len(), "cannot load the table to commit");
                for p in group {
                    p.reply.send(Err(e.for_waiter())).ok();
                }
                continue;
            }
        };
        dedup.learn(&table);
        // A retry may sit in the same group as its original, or arrive while
        // the original was being committed by the previous group: commit
        // each id once.
        let mut ids = std::collections::HashSet::new();
        let (group, duplicates): (Vec<_>, Vec<_>) = {
            group.into_iter().partition(|p| {
                p.request_id
                    .as_ref()
                    .is_none_or(|id| dedup.get(id).is_none() && ids.insert(id.clone()))
            })
        };
        if group.is_empty() {
            for p in duplicates {
                answer_duplicate(p, &dedup, None);
            }
            continue;
        }
        let prepared = group.iter().map(|p| p.prepared.clone()).collect();
        let ids = group
            .iter()
            .filter_map(|p| p.request_id.as_ref().map(|id| (id.clone(), p.rows)))
            .collect();
        let result = commit_group(
            catalog.as_ref(),
            &tables,
            &table,
            &ident,
            Commit {
                prepared,
                ids,
                table_properties: vec![],
            },
            &commit_times,
        )
        .await;
        let m = crate::metrics::metrics();
        m.commits
            .get_or_create(&crate::metrics::outcome(result.is_ok()))
            .inc();
        if result.is_ok() {
            m.ingest_rows.inc_by(group.iter().map(|p| p.rows).sum());
            m.ingest_bytes
                .inc_by(group.iter().map(|p| p.bytes as u64).sum());
        }
        match result {
            Ok((snapshot_id, files)) => {
                for p in &group {
                    if let Some(id) = &p.request_id {
                        dedup.insert(id.clone(), p.rows, snapshot_id);
                    }
                }
                tracing::debug!(table = %ident, requests = group.len(), files = files.len(), snapshot_id, "group committed");
                for p in group {
                    let outcome = AppendOutcome {
                        rows: p.rows,
                        files: files.clone(),
                        snapshot_id: Some(snapshot_id),
                        deduplicated: false,
                    };
                    p.reply.send(Ok(outcome)).ok();
                }
                for p in duplicates {
                    answer_duplicate(p, &dedup, None);
                }
                merge_if_due(catalog.as_ref(), &tables, &ident).await;
            }
            Err(e) => {
                tracing::warn!(table = %ident, error = %e, requests = group.len(), "group commit failed");
                for p in group {
                    p.reply.send(Err(e.for_waiter())).ok();
                }
                for p in duplicates {
                    answer_duplicate(p, &dedup, Some(&e));
                }
            }
        }
    }
}

/// After a commit (whose requests are answered already): merge the
/// table's manifests once [`MERGE_AFTER_APPENDS`] appends have each added
/// one, so queries open a bounded number of manifests. Requests arriving
/// meanwhile wait and form the next group. A merge that keeps losing to
/// other nodes' commits is retried after the next commit.
pub(super) async fn merge_if_due(catalog: &dyn Catalog, tables: &TableCache, ident: &TableIdent) {
    let Ok(table) = tables.load(catalog, ident).await else {
        return;
    };
    if rewrite::appends_since_merge(&table) < MERGE_AFTER_APPENDS {
        return;
    }
    let started = std::time::Instant::now();
    let merged = rewrite::merge_manifests(catalog, tables, ident, 3).await;
    crate::metrics::count_run("manifest-merge", matches!(merged, Ok(Some(_))));
    match merged {
        Ok(Some(snapshot_id)) => {
            tracing::debug!(table = %ident, snapshot_id, ms = started.elapsed().as_millis() as u64, "manifests merged")
        }
        Ok(None) => {
            tracing::debug!(table = %ident, "manifest merge lost to concurrent commits; retrying after the next commit")
        }
        // E.g. a table another engine gave delete files: nothing to fix here.
        Err(e @ Error::Unsupported(_)) => {
            tracing::debug!(table = %ident, error = %e, "manifests not merged")
        }
        Err(e) => {
            tracing::warn!(table = %ident, error = %e, "manifest merge failed; retrying after the next commit")
        }
    }
}

/// Answer a request whose id another request carried: with the committed
/// outcome if there is one, else with the failure of the one that carried it.
fn answer_duplicate(p: Pending, dedup: &Dedup, failure: Option<&Error>) {
    let seen = p.request_id.as_ref().and_then(|id| dedup.get(id));
    let answer = match (seen, failure) {
        (Some((rows, snapshot)), _) => Ok(AppendOutcome {
            rows,
            files: vec![],
            snapshot_id: Some(snapshot),
            deduplicated: true,
        }),
        (None, Some(e)) => Err(e.for_waiter()),
        (None, None) => Err(Error::Internal(
            "duplicate of a request that was not committed".into(),
        )),
    };
    p.reply.send(answer).ok();
}

/// What one commit carries.
pub(super) struct Commit {
    pub(super) prepared: Vec<Prepared>,
    /// Request ids and their rows, recorded in the snapshot summary.
    pub(super) ids: Vec<(String, u64)>,
    /// Table properties set in the same commit.
    pub(super) table_properties: Vec<(String, String)>,
}

/// Write the rows as one set of files and commit one snapshot.
pub(super) async fn commit_group(
    catalog: &dyn Catalog,
    tables: &TableCache,
    table: &Table,
    ident: &TableIdent,
    commit: Commit,
    commit_times: &CommitTimes,
) -> Result<(i64, Vec<String>)> {
    let data_files = write_prepared(table, commit.prepared).await?;
    let paths: Vec<String> = data_files
        .iter()
        .map(|f| f.file_path().to_string())
        .collect();
    let ids: Vec<String> = commit
        .ids
        .iter()
        .map(|(id, rows)| format!("{id}={rows}"))
        .collect();
    let mut tx = Transaction::new(table);
    if !commit.table_properties.is_empty() {
        let set = commit
            .table_properties
            .into_iter()
            .fold(tx.update_table_properties(), |a, (k, v)| a.set(k, v));
        tx = set.apply(tx)?;
    }
    // Names the snapshot, so a commit whose answer was lost can be found.
    let commit_id = uuid::Uuid::now_v7().to_string();
    let mut properties = HashMap::from([(COMMIT_ID_PROPERTY.to_string(), commit_id.clone())]);
    if !ids.is_empty() {
        properties.insert(REQUEST_IDS_PROPERTY.to_string(), ids.join(","));
    }
    // Names are unique (UUID v7 prefix), so skip the duplicate check
    // that would re-read every manifest on every commit.
    let action = tx
        .fast_append()
        .with_check_duplicate(false)
        .add_data_files(data_files)
        .set_snapshot_properties(properties);
    let started = std::time::Instant::now();
    let committed = async {
        let tx = action.apply(tx)?;
        tx.commit(catalog).await
    }
    .await;
    let (committed, snapshot_id) = match committed {
        Ok(t) => {
            let id = t.metadata().current_snapshot_id().unwrap_or_default();
            (t, id)
        }
        Err(e) => {
            // A lost race is a definite "not committed". Any other failure
            // (the catalog database went away mid-commit) may have landed:
            // look before deleting files a committed snapshot would need.
            let landed = if e.kind() == iceberg::ErrorKind::CatalogCommitConflicts {
                Ok(None)
            } else {
                find_commit(catalog, ident, table, &commit_id).await
            };
            match landed {
                Ok(Some(found)) => found,
                Ok(None) => {
                    delete_files(table, &paths).await;
                    return Err(e.into());
                }
                Err(check) => {
                    tracing::warn!(table = %ident, error = %e, check = %check, "commit outcome unknown; its files are left to orphan cleanup");
                    return Err(e.into());
                }
            }
        }
    };
    // Confirm before acknowledging: the SQL catalog can report success for
    // a compare-and-swap whose database COMMIT failed (e.g. SQLITE_BUSY).
    // Usually the pointer still names our metadata (one row read); if
    // another writer moved on since, look for our snapshot in its history.
    // Expiry keeps the newest 100 snapshots at least, so absence means
    // not committed.
    let location = committed.metadata_location().unwrap_or_default();
    let confirmed = match tables.points_at(ident, location).await? {
        Some(true) => true,
        _ => find_commit(catalog, ident, table, &commit_id)
            .await?
            .is_some(),
    };
    if confirmed {
        commit_times.record(started.elapsed());
        crate::metrics::metrics()
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        tables.insert(&committed);
        crate::catalog::files::delete_retired(table, &committed);
    } else {
        delete_files(table, &paths).await;
        return Err(Error::Aborted(format!(
            "commit of snapshot {snapshot_id} to {ident} was not confirmed by the catalog; nothing was written, retry"
        )));
    }
    Ok((snapshot_id, paths))
}

/// The current table and the snapshot that `commit_id` names, if a failed
/// commit landed after all (its snapshot would be newer than `base`); `Err`
/// when the catalog cannot be read to tell.
async fn find_commit(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    base: &Table,
    commit_id: &str,
) -> Result<Option<(Table, i64)>> {
    let current = catalog.load_table(ident).await?;
    let after = base.metadata().last_sequence_number();
    let landed = current
        .metadata()
        .snapshots()
        .find(|s| {
            s.sequence_number() > after
                && s.summary()
                    .additional_properties
                    .get(COMMIT_ID_PROPERTY)
                    .is_some_and(|id| id == commit_id)
        })
        .map(|s| s.snapshot_id());
    Ok(landed.map(|id| (current, id)))
}
