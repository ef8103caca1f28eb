//! The storage access log: which objects were read, and how many local
//! filesystem syncs ran.
//!
//! Recording is off by default (it costs a lock per read); the isolation
//! tests switch it on to prove that a tenant's queries open no data file
//! outside `project_id=<own>/`, on every backend. Every read is also
//! traced (`RAINDROP_LOG=raindrop::storage=trace`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Locations read through the table storage while recording is on, and
/// the number of filesystem syncs it ran.
#[derive(Debug, Default)]
pub struct AccessLog {
    enabled: AtomicBool,
    reads: Mutex<Vec<String>>,
    syncs: AtomicU64,
}

impl AccessLog {
    /// Start recording (and forget earlier records).
    pub fn start(&self) {
        self.reads.lock().expect("access log").clear();
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Stop recording and return what was read since `start`.
    pub fn stop(&self) -> Vec<String> {
        self.enabled.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.reads.lock().expect("access log"))
    }

    /// `syncfs` calls made so far by a local warehouse (each covers every
    /// file closed before it); always 0 on object storage.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub(super) fn add_syncs(&self, n: u64) {
        self.syncs.fetch_add(n, Ordering::Relaxed);
    }

    /// Record a read of `location` (from storage, or a cache of it).
    pub fn record(&self, location: &str) {
        tracing::trace!(location, "storage read");
        if self.enabled.load(Ordering::Relaxed) {
            self.reads
                .lock()
                .expect("access log")
                .push(location.to_string());
        }
    }
}
