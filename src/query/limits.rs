//! Per-query and per-tenant limits, so one tenant's heavy query cannot
//! exhaust the server for everyone: a memory pool per query (DataFusion
//! spills or fails with `ResourcesExhausted`), a wall-clock timeout and a
//! cap on result size. How many run at once is `admission`'s job.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use futures::Stream;

use super::admission::{AdmissionConfig, Slot};
use crate::error::{Error, Result};

/// Query limits (set from the `--query-*` flags and their defaults).
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Memory one query may use for joins, aggregations and sorts.
    pub memory_bytes: usize,
    /// Wall-clock time from execution start to the last batch.
    pub timeout: Duration,
    /// Bytes of results one query may return.
    pub max_result_bytes: usize,
    /// How many queries run at once, and how long the rest wait.
    pub admission: AdmissionConfig,
    /// Memory for data bytes read from object storage (0: no cache).
    pub data_cache_bytes: u64,
}

/// A result stream that enforces the timeout and result size, and holds
/// the tenant's slot until it ends or is dropped. (A client that stops
/// reading stops the stream being polled, so it keeps its slot, without
/// using CPU, until it reads on or goes away.)
pub struct LimitedStream {
    inner: SendableRecordBatchStream,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    bytes: usize,
    max_bytes: usize,
    rows: usize,
    started: std::time::Instant,
    done: bool,
    slot: Option<Slot>,
}

impl LimitedStream {
    /// Wrap `inner` with `limits`, holding `slot`; `started` is when its
    /// execution began (physical planning included), for the log.
    pub fn new(
        inner: SendableRecordBatchStream,
        limits: &QueryLimits,
        slot: Slot,
        started: std::time::Instant,
    ) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limits.timeout)),
            timeout: limits.timeout,
            bytes: 0,
            max_bytes: limits.max_result_bytes,
            rows: 0,
            started,
            done: false,
            slot: Some(slot),
        }
    }
}

impl LimitedStream {
    /// The query is over: its slot goes to the next waiter now, not when
    /// the transport gets round to dropping the stream.
    fn finish(&mut self, ok: bool) {
        self.done = true;
        self.slot = None;
        crate::metrics::metrics().query(ok, self.started.elapsed());
    }
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the last batch.
            crate::metrics::metrics()
                .queries
                .get_or_create(&crate::metrics::Outcome {
                    outcome: "cancelled",
                })
                .inc();
        }
    }
}

impl Stream for LimitedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.finish(false);
            return Poll::Ready(Some(Err(Error::Timeout(format!(
                "query exceeded the {} s time limit; narrow the time range or aggregate more",
                self.timeout.as_secs()
            )))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.bytes += crate::batch::batch_bytes(&batch);
                self.rows += batch.num_rows();
                if self.bytes > self.max_bytes {
                    self.finish(false);
                    return Poll::Ready(Some(Err(Error::ResourceExhausted(format!(
                        "result exceeds {} MiB; add a LIMIT or aggregate",
                        self.max_bytes / (1024 * 1024)
                    )))));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(false);
                Poll::Ready(Some(Err(Error::from(e))))
            }
            Poll::Ready(None) => {
                self.finish(true);
                tracing::debug!(
                    rows = self.rows,
                    bytes = self.bytes,
                    execute_ms = self.started.elapsed().as_secs_f64() * 1e3,
                    "query finished"
                );
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
