//! A lease this process holds in the catalog database, and until when it
//! may act on it: the fence that keeps a node that stopped renewing (a
//! network partition, a pause) from acknowledging rows once another node
//! may have adopted its log.
//!
//! The lease is renewed every third of its TTL. A renewal asked at `t`
//! lets the holder act until `t + 2/3 TTL`; another node can take the
//! lease only after `t + TTL`, so the holder stops a third of a TTL before
//! anyone else may start (clocks kept in sync to well under that).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::catalog::lease::Lease;
use crate::error::{Error, Result};

/// A held lease, renewed in the background while this value lives.
#[derive(Debug)]
pub struct Fence {
    lease: Lease,
    until: Mutex<Option<Instant>>,
    /// Another holder took the lease: this process may never act on it again.
    lost: AtomicBool,
    released: AtomicBool,
}

impl Fence {
    /// Take `lease`; `None` while another holder has it.
    pub async fn take(lease: Lease) -> Result<Option<Arc<Self>>> {
        let asked = Instant::now();
        if !lease.try_acquire().await? {
            return Ok(None);
        }
        let until = lease.act_until(asked);
        let fence = Arc::new(Self {
            lease,
            until: Mutex::new(Some(until)),
            lost: AtomicBool::new(false),
            released: AtomicBool::new(false),
        });
        tokio::spawn(renew(Arc::downgrade(&fence)));
        Ok(Some(fence))
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// `Ok` while this process may act on the lease.
    pub fn check(&self) -> Result<()> {
        if self.lost() {
            return Err(Error::Unavailable(format!(
                "lease {} was taken over by another node (this node stopped renewing it in time); restart this node",
                self.lease.name()
            )));
        }
        let until = *self.until.lock().expect("fence state");
        match until {
            Some(until) if Instant::now() < until => Ok(()),
            _ => Err(Error::Unavailable(format!(
                "lease {} could not be renewed in the catalog database; retry",
                self.lease.name()
            ))),
        }
    }

    /// Whether another holder took the lease.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Stop renewing and give the lease up.
    pub async fn release(&self) -> Result<()> {
        self.released.store(true, Ordering::Release);
        *self.until.lock().expect("fence state") = None;
        self.lease.release().await
    }
}

async fn renew(fence: Weak<Fence>) {
    loop {
        let Some(ttl) = fence.upgrade().map(|f| f.lease.ttl()) else {
            return;
        };
        tokio::time::sleep(ttl / 3).await;
        let Some(f) = fence.upgrade() else { return };
        if f.released.load(Ordering::Acquire) || f.lost() {
            return;
        }
        let asked = Instant::now();
        match f.lease.renew().await {
            Ok(true) => {
                if !f.released.load(Ordering::Acquire) {
                    *f.until.lock().expect("fence state") = Some(f.lease.act_until(asked));
                }
            }
            Ok(false) => {
                tracing::error!(lease = f.lease.name(), "lease taken over by another node");
                f.lost.store(true, Ordering::Release);
                *f.until.lock().expect("fence state") = None;
                return;
            }
            Err(e) => {
                tracing::warn!(lease = f.lease.name(), error = %e, "lease not renewed; retrying")
            }
        }
    }
}
