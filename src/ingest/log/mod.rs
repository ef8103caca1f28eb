//! Buffered ingest for `raw_events`: a `DoPut` is acknowledged once its
//! rows are durable in the write-ahead log ([`super::wal`]: fsync'd on
//! local disk, or a completed PUT) and held in the [`Buffer`]; a flusher
//! commits what is buffered as one set of well-sized files and one
//! snapshot every interval (or sooner when the buffer is large), so file
//! size and commit rate no longer follow the client's batch size. Small
//! projects' rows wait for a later flush ([`plan`]).
//!
//! One log task ([`task`]) appends in order: it groups concurrent
//! requests into one write (a write and an fsync, or a PUT), adds their
//! rows to the buffer, and seals the buffer's active generation when the
//! flusher asks, switching segments in the same step, so a segment holds
//! exactly one generation's rows. A flush commit records in the table
//! what it holds of this node's log ([`Committed`]: the mark and the
//! projects held back); a segment is deleted once nothing in it is
//! needed. On start, the rows the table lacks are replayed and flushed
//! first: nothing acknowledged is lost, nothing is committed twice.
//!
//! A log on object storage belongs to one process: a restarted or
//! replaced node starts a new log, and the old one is adopted ([`adopt`]).

mod adopt;
mod plan;
mod task;

pub use plan::HoldPolicy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use iceberg::TableIdent;
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot, watch};

use super::budget::Budget;
use super::buffer::{Buffer, Committed, Generation};
use super::commit::{AppendOutcome, TableWriter};
use super::flush::{Flush, Mark};
use super::wal::fence::Fence;
use super::wal::local::LocalWal;
use super::wal::object::{ObjectWal, lease_name};
use super::wal::{self, Wal, blocking};
use crate::catalog::Warehouse;
use crate::catalog::lease::Lease;
use crate::error::{Error, Result};

/// Where the write-ahead log lives.
#[derive(Debug, Clone)]
pub enum WalPlace {
    /// A directory on this node's disk, one per node, kept across restarts.
    Local(PathBuf),
    /// The warehouse's object storage: a new log per process, held under
    /// a lease of this TTL in the catalog database and adopted by another
    /// node once it expires.
    Warehouse {
        /// How long the lease lasts without renewal.
        lease_ttl: Duration,
    },
}

/// Buffered-ingest settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Where the write-ahead log lives.
    pub place: WalPlace,
    /// Commit buffered rows at least this often.
    pub flush_interval: Duration,
    /// Commit sooner once this many bytes are buffered.
    pub flush_bytes: usize,
    /// When small projects' rows wait for a later flush (`None`: never).
    pub hold: Option<HoldPolicy>,
    /// Notified after each flush that committed rows (background
    /// compaction waits on it).
    pub flushed: Arc<Notify>,
    /// `true` while background compaction runs on this node. A timed
    /// flush waits for the run to end, at most one more interval (see
    /// [`after_compaction`]).
    pub compacting: watch::Receiver<bool>,
}

struct Append {
    record: Vec<u8>,
    batches: Vec<RecordBatch>,
    rows: u64,
    request_id: Option<String>,
    permit: Option<OwnedSemaphorePermit>,
    /// `Some(rows)` when the id was seen before (nothing written).
    reply: oneshot::Sender<Result<Option<u64>>>,
}

enum Op {
    Append(Append),
    /// Seal the active generation; `true`: even if it is empty.
    Seal(oneshot::Sender<Option<Arc<Generation>>>, bool),
}

/// The write-ahead log, buffer and flusher of `raw_events` on this node.
pub struct Log {
    ops: mpsc::UnboundedSender<Op>,
    buffer: Arc<Buffer>,
    wal: Arc<Wal>,
    writer: Arc<TableWriter>,
    warehouse: Warehouse,
    ident: TableIdent,
    flush_now: Arc<Notify>,
    flush_bytes: usize,
    hold: Option<HoldPolicy>,
    flushed: Arc<Notify>,
    /// One flush at a time (the timer's, or an explicit one).
    flushing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("wal", &self.wal)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Open the log, recover what it holds that the table does not, and
    /// start the log and flusher tasks. Queries' gathered copies of the
    /// buffered rows take their bytes of `budget`.
    pub async fn open(
        config: LogConfig,
        warehouse: Warehouse,
        writer: Arc<TableWriter>,
        budget: Budget,
    ) -> Result<Arc<Self>> {
        let wal = Arc::new(open_wal(&config.place, &warehouse).await?);
        let ident = warehouse.raw_events_ident();
        let table = warehouse.load_table(&ident).await?;
        let committed = Committed::of(&table, wal.node());
        let segments = wal.segments().await?;
        let recovered = recover(&wal, &segments, &committed).await?;
        // A new segment numbered at or below the mark would read as
        // committed on the next start.
        let next = segments
            .iter()
            .copied()
            .chain(committed.mark)
            .max()
            .unwrap_or(0)
            + 1;
        if let Some(done) = committed.done_through() {
            wal.delete_through(done).await?;
        }
        let segment = wal.create(next).await?;
        let buffer = Arc::new(Buffer::new(wal.node().to_string(), next).with_budget(budget));
        let replayed_rows: u64 = recovered.iter().map(|g| g.rows).sum();
        for g in recovered {
            buffer.push_sealed(g);
        }
        if replayed_rows > 0 {
            tracing::info!(
                rows = replayed_rows,
                segments = buffer.sealed().len(),
                "replaying acknowledged rows from the write-ahead log"
            );
        }
        let (ops, rx) = mpsc::unbounded_channel();
        let log = Arc::new(Self {
            ops,
            buffer,
            wal,
            writer,
            warehouse,
            ident,
            flush_now: Arc::new(Notify::new()),
            flush_bytes: config.flush_bytes,
            hold: config.hold,
            flushed: config.flushed,
            flushing: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(task::run_log(Arc::downgrade(&log), rx, segment, next));
        tokio::spawn(run_flusher(
            Arc::downgrade(&log),
            config.flush_interval,
            config.compacting,
        ));
        if let WalPlace::Warehouse { lease_ttl } = config.place {
            tokio::spawn(adopt::run(Arc::downgrade(&log), lease_ttl / 2));
        }
        Ok(log)
    }

    /// The rows acknowledged and not yet committed.
    pub fn buffer(&self) -> &Arc<Buffer> {
        &self.buffer
    }

    /// Log `batches` (validated `raw_events` rows) durably and buffer them.
    /// A request id already committed or buffered writes nothing.
    pub async fn append(
        &self,
        batches: Vec<RecordBatch>,
        request_id: Option<String>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<AppendOutcome> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if rows == 0 {
            return Ok(AppendOutcome::default());
        }
        // Encoding here, in the caller's task, lets concurrent requests
        // encode in parallel; the log task only writes bytes.
        let record = wal::encode(request_id.as_deref(), &batches, self.wal.compression())?;
        let (reply, answer) = oneshot::channel();
        self.ops
            .send(Op::Append(Append {
                record,
                batches,
                rows,
                request_id,
                permit,
                reply,
            }))
            .map_err(|_| Error::Unavailable("the write-ahead log stopped".into()))?;
        let seen = answer
            .await
            .map_err(|_| Error::Unavailable("the write-ahead log stopped".into()))??;
        Ok(AppendOutcome {
            rows: seen.unwrap_or(rows),
            files: vec![],
            snapshot_id: None,
            deduplicated: seen.is_some(),
        })
    }

    /// Commit everything acknowledged so far, held rows too, e.g. before
    /// shutdown or so that other engines see it now.
    pub async fn flush(&self) -> Result<()> {
        self.flush_with(None).await
    }

    /// Seal what is buffered and commit every sealed segment, holding
    /// small projects' rows back as `hold` says.
    async fn flush_with(&self, hold: Option<&HoldPolicy>) -> Result<()> {
        let _one = self.flushing.lock().await;
        // Held rows that are due need a commit (and a segment for its
        // mark) even when nothing new arrived.
        let due = self
            .buffer
            .held_since()
            .is_some_and(|t| hold.is_none_or(|h| t.elapsed() >= h.max_age));
        let (reply, sealed) = oneshot::channel();
        self.ops
            .send(Op::Seal(reply, due))
            .map_err(|_| Error::Unavailable("the write-ahead log stopped".into()))?;
        sealed
            .await
            .map_err(|_| Error::Unavailable("the write-ahead log stopped".into()))?;
        let pending: Vec<_> = self
            .buffer
            .sealed()
            .into_iter()
            .filter(|g| !g.held)
            .collect();
        for generation in &pending {
            self.flush_generation(generation, hold).await?;
        }
        if !pending.is_empty() {
            self.flushed.notify_one();
        }
        Ok(())
    }

    async fn flush_generation(
        &self,
        generation: &Generation,
        hold: Option<&HoldPolicy>,
    ) -> Result<()> {
        let seq = generation.seq;
        let held: Vec<_> = self
            .buffer
            .sealed()
            .into_iter()
            .filter(|g| g.held && g.seq < seq)
            .collect();
        let committed = match self
            .commit_generation(&self.wal, &held, generation, hold)
            .await
        {
            Ok(committed) => committed,
            Err(e) if matches!(&*self.wal, Wal::Object(w) if w.fence().lost()) => {
                // The node that took the lease listed every acknowledged
                // part of the log before it started: the rows are its now.
                tracing::error!(error = %e, rows = generation.rows, "this node's write-ahead log was adopted by another node; dropping its buffered rows");
                self.buffer.replace(|g| (g.seq <= seq).then_some(None));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // What the table holds leaves memory; held rows stay.
        self.buffer
            .replace(|g| (g.seq <= seq).then(|| g.held_part(|p| !committed.holds(g.seq, Some(p)))));
        if let Some(done) = committed.done_through()
            && let Err(e) = self.wal.delete_through(done).await
        {
            // Harmless: the mark says it is committed; the next start skips it.
            tracing::warn!(error = %e, "cannot delete a flushed write-ahead log segment");
        }
        Ok(())
    }

    /// Commit `generation` of `wal` (this node's or an adopted one) with
    /// its mark, and the rows of `held` (earlier segments' held parts) now
    /// due, unless the table holds it already. Returns what the table
    /// then holds of the log.
    async fn commit_generation(
        &self,
        wal: &Wal,
        held: &[Arc<Generation>],
        generation: &Generation,
        hold: Option<&HoldPolicy>,
    ) -> Result<Committed> {
        let started = std::time::Instant::now();
        let node = wal.node().to_string();
        let committed = async || -> Result<Option<Committed>> {
            let table = self.warehouse.load_table(&self.ident).await?;
            let c = Committed::of(&table, &node);
            Ok(c.mark.is_some_and(|m| m >= generation.seq).then_some(c))
        };
        // An earlier attempt whose answer was lost may have landed.
        if let Some(c) = committed().await? {
            return Ok(c);
        }
        let plan = plan::plan(held, generation, hold, std::time::Instant::now());
        let result_held = plan.held.clone();
        let flush = Flush {
            requests: plan.requests,
            held: plan.held,
            mark: Mark {
                node: node.clone(),
                seq: generation.seq,
                fence: match wal {
                    Wal::Object(w) => Some(w.fence().clone()),
                    Wal::Local(_) => None,
                },
            },
        };
        let result = self.writer.commit_flush(&self.ident, flush).await;
        crate::metrics::count_run("flush", result.is_ok());
        match result {
            Ok(snapshot_id) => {
                tracing::debug!(
                    rows = generation.rows,
                    segment = generation.seq,
                    held_projects = result_held.len(),
                    snapshot_id,
                    ms = started.elapsed().as_millis() as u64,
                    "buffered rows committed"
                );
                Ok(Committed {
                    mark: Some(generation.seq),
                    held: result_held,
                })
            }
            // Another node may have committed it: one that adopted this
            // log, or this node's own log being adopted twice.
            Err(e) => match committed().await {
                Ok(Some(c)) => {
                    tracing::info!(node, segment = generation.seq, error = %e, "segment committed by another node");
                    Ok(c)
                }
                _ => Err(e),
            },
        }
    }
}

/// The rows of `wal`'s `segments` that the table lacks, by what it holds
/// (`committed`): whole segments past its mark, and the held projects'
/// rows of segments it covers (as held parts, to be written with the
/// first commit).
async fn recover(wal: &Wal, segments: &[u64], committed: &Committed) -> Result<Vec<Generation>> {
    let mut recovered = vec![];
    for &seq in segments {
        if committed.done_through().is_some_and(|d| seq <= d) {
            continue;
        }
        let mut generation = Generation::new(seq);
        for r in wal.read(seq).await? {
            generation.add(r.batches, r.request_id, None)?;
        }
        let generation = if committed.mark.is_some_and(|m| seq <= m) {
            generation.held_part(|p| !committed.holds(seq, Some(p)))
        } else {
            Some(generation)
        };
        recovered.extend(generation.filter(|g| g.rows > 0));
    }
    Ok(recovered)
}

/// The flusher: every interval, or when the buffer is large. Recovered
/// rows are committed at once, all of them.
async fn run_flusher(
    log: std::sync::Weak<Log>,
    interval: Duration,
    mut compacting: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut recovering = log.upgrade().is_some_and(|l| !l.buffer.sealed().is_empty());
    loop {
        let Some(l) = log.upgrade() else { return };
        // A sealed segment left by a failed flush is retried at once.
        let pending = l.buffer.sealed().iter().any(|g| !g.held);
        if !recovering && !pending {
            let wake = l.flush_now.clone();
            drop(l);
            let notified = wake.notified();
            let timed = tokio::select! {
                _ = tokio::time::sleep(interval) => true,
                _ = notified => false,
            };
            if timed {
                // A full buffer still flushes at once.
                tokio::select! {
                    _ = after_compaction(&mut compacting, interval) => {}
                    _ = wake.notified() => {}
                }
            }
        } else {
            drop(l);
        }
        let Some(l) = log.upgrade() else { return };
        let hold = if recovering { None } else { l.hold };
        match l.flush_with(hold.as_ref()).await {
            Ok(()) => {
                backoff = Duration::from_millis(250);
                recovering = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "flush of buffered rows failed; they stay buffered and durable");
                drop(l);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Wait while background compaction runs on this node, at most `most`.
/// A run merges the partitions as it found them; a flush landing during
/// it adds a file to each partition it touches, and a second one before
/// the next run starts would put them past the bound on files per
/// partition. Waiting, each run finds at most one new file per partition
/// while runs take less than two flush intervals. (In a 30-minute S3
/// soak, 39 of 119 runs took longer than the 10 s interval, and
/// tenant-days reached 5–6 small files.)
/// Without compaction on this node (the sender gone), no wait.
async fn after_compaction(compacting: &mut watch::Receiver<bool>, most: Duration) {
    let _ = tokio::time::timeout(most, compacting.wait_for(|running| !running)).await;
}

/// Open this node's log where `place` says.
async fn open_wal(place: &WalPlace, warehouse: &Warehouse) -> Result<Wal> {
    match place {
        WalPlace::Local(dir) => {
            let dir = dir.clone();
            Ok(Wal::Local(Arc::new(
                blocking(move || LocalWal::open(&dir)).await?,
            )))
        }
        WalPlace::Warehouse { lease_ttl } => {
            let node = uuid::Uuid::new_v4().simple().to_string();
            let lease = Lease::open(
                &warehouse.catalog_uri,
                &warehouse.catalog_name,
                &lease_name(&node),
                node.clone(),
                *lease_ttl,
            )
            .await?;
            let fence = Fence::take(lease).await?.ok_or_else(|| {
                Error::Internal(format!("the lease of new log {node} is held already"))
            })?;
            Ok(Wal::Object(ObjectWal::new(
                warehouse.store.clone(),
                &warehouse.warehouse,
                &node,
                fence,
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::sync::watch;

    use super::after_compaction;

    #[tokio::test]
    async fn a_timed_flush_waits_for_a_compaction_run_but_not_past_the_limit() {
        let (runs, mut compacting) = watch::channel(true);
        let waiting = tokio::spawn(async move {
            after_compaction(&mut compacting, Duration::from_secs(60)).await;
            compacting
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "did not wait for the run");
        runs.send_replace(false);
        let mut compacting = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("still waiting after the run ended")
            .unwrap();
        // A run longer than the limit: the flush goes ahead.
        runs.send_replace(true);
        let started = Instant::now();
        after_compaction(&mut compacting, Duration::from_millis(200)).await;
        assert!(started.elapsed() >= Duration::from_millis(200));
        // No compaction on this node: no wait.
        drop(runs);
        tokio::time::timeout(
            Duration::from_secs(10),
            after_compaction(&mut compacting, Duration::from_secs(60)),
        )
        .await
        .expect("waited for a compaction that cannot run");
    }
}
