//! The server-wide bound on ingest data held in memory
//! (`--max-buffered-mib`): streams being read, acknowledged rows until
//! their flush commits, and the copies queries gather of them. Bursts
//! queue briefly and then get `ResourceExhausted` instead of exhausting
//! memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Permits of one KiB each; a permit returns its KiB when dropped.
#[derive(Debug, Clone)]
pub struct Budget {
    kib: Arc<Semaphore>,
    total_kib: usize,
    /// How long a stream waits for room before it is refused.
    wait: Duration,
}

impl Budget {
    /// A budget of `bytes` (at least 1 KiB), where a stream waits up to
    /// `wait` for room.
    pub fn new(bytes: usize, wait: Duration) -> Self {
        let total_kib = (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Self {
            kib: Arc::new(Semaphore::new(total_kib)),
            total_kib,
            wait,
        }
    }

    /// Room for `bytes`, waiting up to the budget's wait. A batch larger
    /// than the whole budget waits for all of it.
    pub async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit> {
        let kib = bytes.div_ceil(1024).clamp(1, self.total_kib) as u32;
        let acquire = self.kib.clone().acquire_many_owned(kib);
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::ResourceExhausted(format!(
                "ingest buffers are full ({} MiB, --max-buffered-mib, held by streams and rows awaiting their flush); retry in a few seconds",
                self.total_kib / 1024
            ))),
        }
    }

    /// Room for `bytes` now, if there is.
    pub fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).ok()?;
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Bytes reserved now.
    pub fn used_bytes(&self) -> usize {
        (self.total_kib - self.kib.available_permits()) * 1024
    }
}

/// Ingest budget held by one stream.
#[derive(Debug, Default)]
pub struct Reservation(Option<OwnedSemaphorePermit>);

impl Reservation {
    /// The permits held, as one.
    pub fn into_permit(self) -> Option<OwnedSemaphorePermit> {
        self.0
    }

    /// Hold `permit` too.
    pub fn add(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(p) => p.merge(permit),
            None => self.0 = Some(permit),
        }
    }
}
