//! The log task: the one writer of a node's write-ahead log. It groups
//! concurrent requests into one write (a write and an fsync, or a PUT),
//! answers each once its write is durable, in log order, adds the rows to
//! the buffer, and seals the active generation when the flusher asks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{mpsc, oneshot};

use super::{Append, Log, Op};
use crate::error::{Error, Result};
use crate::ingest::buffer::Generation;
use crate::ingest::wal::Segment;
use crate::metrics::metrics;

/// A request id whose write is in flight: its rows, and the answers
/// owed to repeats of it that arrived meanwhile (a client that timed out
/// and retried), given once the write's outcome is known.
struct InFlight {
    rows: u64,
    repeats: Vec<oneshot::Sender<Result<Option<u64>>>>,
}

/// A group's write in flight, with the requests it answers.
type Write = std::pin::Pin<Box<dyn Future<Output = (Vec<Append>, Result<()>)> + Send>>;

/// The log task: groups concurrent requests into one write each and
/// answers them in log order once their write is durable. On local disk
/// one write is in flight at a time (the next group gathers meanwhile);
/// on object storage several PUTs are, as each takes a round trip.
pub(super) async fn run_log(
    log: std::sync::Weak<Log>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    segment: Segment,
    mut seq: u64,
) {
    let Some(max_in_flight) = log.upgrade().map(|l| l.wal.writes_in_flight()) else {
        return;
    };
    let mut segment = Some(segment);
    let mut failed: Option<String> = None;
    let mut in_flight: FuturesOrdered<Write> = FuturesOrdered::new();
    // Request ids of the writes in flight (not yet in the buffer).
    let mut ids_in_flight: HashMap<String, InFlight> = HashMap::new();
    loop {
        let op = tokio::select! {
            biased;
            Some((group, written)) = in_flight.next(), if !in_flight.is_empty() => {
                let Some(log) = log.upgrade() else { return };
                log.complete(group, written, &mut ids_in_flight, &mut failed);
                if log.buffer.with_active(|g| g.bytes) >= log.flush_bytes {
                    log.flush_now.notify_one();
                }
                continue;
            }
            op = rx.recv(), if in_flight.len() < max_in_flight => match op {
                Some(op) => op,
                None => return,
            },
        };
        let Some(log) = log.upgrade() else { return };
        let mut group = vec![];
        let mut seal = None;
        match op {
            Op::Append(a) => group.push(a),
            Op::Seal(reply, empty) => seal = Some((reply, empty)),
        }
        while seal.is_none() {
            match rx.try_recv() {
                Ok(Op::Append(a)) => group.push(a),
                Ok(Op::Seal(reply, empty)) => seal = Some((reply, empty)),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            if let Some(reason) = &failed {
                for a in group {
                    a.reply.send(Err(Error::Unavailable(reason.clone()))).ok();
                }
            } else if let Some(write) = log.dispatch(group, &mut segment, &mut ids_in_flight).await
            {
                in_flight.push_back(write);
            }
        }
        if let Some((reply, empty)) = seal {
            // A segment holds whole generations: what is in flight lands
            // in the generation being sealed.
            while let Some((group, written)) = in_flight.next().await {
                log.complete(group, written, &mut ids_in_flight, &mut failed);
            }
            reply
                .send(log.seal(&mut segment, &mut seq, empty).await)
                .ok();
        }
        if log.buffer.with_active(|g| g.bytes) >= log.flush_bytes {
            log.flush_now.notify_one();
        }
    }
}

impl Log {
    /// Start the write of a group: leave out ids committed, buffered, in
    /// flight or repeated in this group (the table's ids are fetched once,
    /// and only if needed), then write the rest as one log write.
    async fn dispatch(
        &self,
        group: Vec<Append>,
        segment: &mut Option<Segment>,
        ids_in_flight: &mut HashMap<String, InFlight>,
    ) -> Option<Write> {
        let mut committed = None;
        let mut keep = vec![];
        for a in group {
            let Some(id) = &a.request_id else {
                keep.push(a);
                continue;
            };
            if committed.is_none() {
                committed = Some(self.writer.dedup(&self.ident).await);
            }
            let committed = match committed.as_ref().expect("just looked up") {
                Ok(dedup) => dedup,
                Err(e) => {
                    a.reply.send(Err(e.for_waiter())).ok();
                    continue;
                }
            };
            // A repeat of a request still being written is answered with
            // its outcome, which is not known yet.
            if let Some(first) = ids_in_flight.get_mut(id) {
                first.repeats.push(a.reply);
                continue;
            }
            // Buffer first, then the table: a flush adds ids to the
            // table's before it takes them out of the buffer.
            let seen = self
                .buffer
                .pending_id(id)
                .or_else(|| committed.get(id).map(|(rows, _)| rows));
            match seen {
                Some(rows) => {
                    a.reply.send(Ok(Some(rows))).ok();
                }
                None => {
                    let first = InFlight {
                        rows: a.rows,
                        repeats: vec![],
                    };
                    ids_in_flight.insert(id.clone(), first);
                    keep.push(a);
                }
            }
        }
        if keep.is_empty() {
            return None;
        }
        let records: Vec<Vec<u8>> = keep
            .iter_mut()
            .map(|a| std::mem::take(&mut a.record))
            .collect();
        let write = match segment.as_mut() {
            Some(seg) => seg.write(records),
            None => Box::pin(async { Err(Error::Internal("no open log segment".into())) }),
        };
        Some(Box::pin(async move {
            let started = Instant::now();
            let written = write.await;
            metrics()
                .wal_write_seconds
                .observe(started.elapsed().as_secs_f64());
            (keep, written)
        }))
    }

    /// A group's write finished: buffer and answer its requests (and the
    /// repeats of their ids), or fail them (and everything after, if the
    /// log cannot go on).
    fn complete(
        &self,
        group: Vec<Append>,
        written: Result<()>,
        ids_in_flight: &mut HashMap<String, InFlight>,
        failed: &mut Option<String>,
    ) {
        type Outcome = (
            Option<String>,
            oneshot::Sender<Result<Option<u64>>>,
            Result<()>,
        );
        let outcomes: Vec<Outcome> = match written {
            Ok(()) => self.buffer.with_active(|g| {
                group
                    .into_iter()
                    .map(|a| {
                        let added = g.add(a.batches, a.request_id.clone(), a.permit).map(|_| ());
                        (a.request_id, a.reply, added)
                    })
                    .collect()
            }),
            Err(e) => {
                // A local segment's tail is unknown now, or another node
                // adopted this log: refuse everything until a restart
                // replays (or starts) a log that is certainly whole.
                if failed.is_none() && self.wal.append_failure_is_final() {
                    tracing::error!(error = %e, "write-ahead log write failed; refusing ingest until restart");
                    *failed = Some(format!(
                        "the write-ahead log cannot be written ({e}); the server must be restarted"
                    ));
                }
                group
                    .into_iter()
                    .map(|a| (a.request_id, a.reply, Err(e.for_waiter())))
                    .collect()
            }
        };
        for (id, reply, outcome) in outcomes {
            if let Some(first) = id.and_then(|id| ids_in_flight.remove(&id)) {
                for repeat in first.repeats {
                    let answer = match &outcome {
                        Ok(()) => Ok(Some(first.rows)),
                        Err(e) => Err(e.for_waiter()),
                    };
                    repeat.send(answer).ok();
                }
            }
            reply.send(outcome.map(|()| None)).ok();
        }
    }

    /// Seal the active generation (if it holds rows, or `empty` says so)
    /// and move the log to a new segment.
    async fn seal(
        &self,
        segment: &mut Option<Segment>,
        seq: &mut u64,
        empty: bool,
    ) -> Option<Arc<Generation>> {
        if self.buffer.with_active(|g| g.rows) == 0 && !empty {
            return None;
        }
        let next = *seq + 1;
        match self.wal.create(next).await {
            Ok(s) => {
                *segment = Some(s);
                *seq = next;
                self.buffer.seal(next, empty)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a new write-ahead log segment; flushing later");
                None
            }
        }
    }
}
