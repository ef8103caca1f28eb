//! Query admission: a bounded number of queries run at once (globally and
//! per tenant); the rest wait in a bounded per-tenant queue instead of being
//! refused. A dashboard fires one query per panel at once, so refusing past
//! the limit breaks panels that would have run a moment later.
//!
//! When a slot frees it goes to the waiting tenant that runs the fewest
//! queries (the oldest waiter breaks ties), so one tenant flooding the
//! server delays another by at most one slot's turn, not by its whole
//! backlog. A waiter that gives up (client gone) leaves the queue at once;
//! a running query's slot is released when its result stream is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// Sizes of the admission gate (from the `--max-queries*` and
/// `--query-queue-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Queries running at once on this node, all tenants together.
    pub max_running: usize,
    /// Queries one tenant may run at once.
    pub max_running_per_tenant: usize,
    /// Queries one tenant may have waiting; past it, refused at once.
    pub max_queued_per_tenant: usize,
    /// Longest a query waits for a slot before it is refused.
    pub max_wait: Duration,
}

/// Counters of what admission decided, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Ran without waiting.
    pub immediate: u64,
    /// Ran after waiting in the queue.
    pub after_wait: u64,
    /// Refused: the tenant's queue was full.
    pub refused_queue_full: u64,
    /// Refused: waited `max_wait` without a slot.
    pub refused_wait_expired: u64,
    /// Left the queue because the client went away.
    pub cancelled: u64,
    /// Total time admitted queries spent waiting, in milliseconds.
    pub wait_ms: u64,
    /// Queries running now.
    pub running: u64,
    /// Queries waiting now.
    pub queued: u64,
}

/// The admission gate of one node.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    state: Mutex<State>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    immediate: AtomicU64,
    after_wait: AtomicU64,
    refused_queue_full: AtomicU64,
    refused_wait_expired: AtomicU64,
    cancelled: AtomicU64,
    wait_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    queued: usize,
    next_id: u64,
    tenants: HashMap<String, Tenant>,
}

#[derive(Debug, Default)]
struct Tenant {
    running: usize,
    queue: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    since: Instant,
    grant: oneshot::Sender<()>,
}

/// A running query's slot; dropping it hands the slot to the next waiter.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<Admission>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(&self.tenant);
    }
}

impl Admission {
    /// A gate with `config`'s sizes (each at least 1 running).
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        Arc::new(Self {
            config: AdmissionConfig {
                max_running: config.max_running.max(1),
                max_running_per_tenant: config.max_running_per_tenant.max(1),
                ..config
            },
            state: Mutex::default(),
            counters: Counters::default(),
        })
    }

    /// The sizes in force.
    pub fn config(&self) -> AdmissionConfig {
        self.config
    }

    /// Take a slot for `tenant`, waiting in its queue if the limits are
    /// reached. Fails with `ResourceExhausted` if the queue is full or the
    /// wait expires. Dropping the future leaves the queue.
    pub async fn admit(self: &Arc<Self>, tenant: &str) -> Result<Slot> {
        let (id, grant) = {
            let mut state = self.lock();
            let State {
                running,
                queued,
                next_id,
                tenants,
            } = &mut *state;
            let t = tenants.entry(tenant.to_string()).or_default();
            if t.queue.is_empty()
                && t.running < self.config.max_running_per_tenant
                && *running < self.config.max_running
            {
                t.running += 1;
                *running += 1;
                self.counters.immediate.fetch_add(1, Ordering::Relaxed);
                return Ok(self.slot(tenant));
            }
            if t.queue.len() >= self.config.max_queued_per_tenant {
                self.counters
                    .refused_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                let message = format!(
                    "the query queue is full: this project runs {} queries and has {} waiting \
                     (--query-queue-per-tenant); the server runs {} at once (--max-queries), \
                     {} per project (--max-queries-per-tenant); retry when some finish",
                    t.running,
                    t.queue.len(),
                    self.config.max_running,
                    self.config.max_running_per_tenant
                );
                forget_if_idle(tenants, tenant);
                return Err(Error::ResourceExhausted(message));
            }
            let (tx, rx) = oneshot::channel();
            *next_id += 1;
            t.queue.push_back(Waiter {
                id: *next_id,
                since: Instant::now(),
                grant: tx,
            });
            *queued += 1;
            tracing::debug!(
                tenant,
                tenant_queue = t.queue.len(),
                running = *running,
                "query queued for a slot"
            );
            (*next_id, rx)
        };
        let since = Instant::now();
        let mut waiting = Waiting {
            gate: self.clone(),
            tenant: tenant.to_string(),
            id,
            grant: Some(grant),
        };
        let granted =
            tokio::time::timeout(self.config.max_wait, waiting.grant.as_mut().expect("grant"))
                .await;
        let slot = match granted {
            Ok(Ok(())) => {
                waiting.grant = None;
                Some(self.slot(tenant))
            }
            // Timed out; a grant may still have raced in.
            _ => waiting.leave(),
        };
        match slot {
            Some(slot) => {
                let waited = since.elapsed();
                self.counters.after_wait.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .wait_ms
                    .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
                tracing::debug!(
                    tenant,
                    wait_ms = waited.as_secs_f64() * 1e3,
                    "query admitted after waiting"
                );
                Ok(slot)
            }
            None => {
                self.counters
                    .refused_wait_expired
                    .fetch_add(1, Ordering::Relaxed);
                Err(Error::ResourceExhausted(format!(
                    "no query slot freed within {} s (--query-queue-wait-secs); the server is busy \
                     with this project's or others' queries, retry later",
                    self.config.max_wait.as_secs_f64()
                )))
            }
        }
    }

    /// What admission decided so far, and the queue now.
    pub fn stats(&self) -> AdmissionStats {
        let (running, queued) = {
            let state = self.lock();
            (state.running as u64, state.queued as u64)
        };
        let c = &self.counters;
        AdmissionStats {
            immediate: c.immediate.load(Ordering::Relaxed),
            after_wait: c.after_wait.load(Ordering::Relaxed),
            refused_queue_full: c.refused_queue_full.load(Ordering::Relaxed),
            refused_wait_expired: c.refused_wait_expired.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            wait_ms: c.wait_ms.load(Ordering::Relaxed),
            running,
            queued,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements, so a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(self: &Arc<Self>, tenant: &str) -> Slot {
        Slot {
            gate: self.clone(),
            tenant: tenant.to_string(),
        }
    }

    fn release(&self, tenant: &str) {
        let mut state = self.lock();
        state.running -= 1;
        if let Some(t) = state.tenants.get_mut(tenant) {
            t.running -= 1;
        }
        self.dispatch(&mut state);
        forget_if_idle(&mut state.tenants, tenant);
    }

    /// Hand free slots to waiters: each to the tenant with waiting work
    /// that runs the fewest queries, the oldest waiter first among equals.
    fn dispatch(&self, state: &mut State) {
        while state.running < self.config.max_running {
            let next = state
                .tenants
                .iter()
                .filter(|(_, t)| t.running < self.config.max_running_per_tenant)
                .filter_map(|(name, t)| t.queue.front().map(|w| (t.running, w.since, name)))
                .min()
                .map(|(_, _, name)| name.clone());
            let Some(name) = next else { return };
            let t = state.tenants.get_mut(&name).expect("tenant");
            let waiter = t.queue.pop_front().expect("waiter");
            state.queued -= 1;
            // A waiter always leaves the queue (under this lock) before it
            // drops its receiver, so this send only fails if it panicked.
            if waiter.grant.send(()).is_ok() {
                t.running += 1;
                state.running += 1;
            }
        }
    }
}

/// Drop `tenant`'s entry if it neither runs nor waits: the map holds only
/// tenants with work.
fn forget_if_idle(tenants: &mut HashMap<String, Tenant>, tenant: &str) {
    if tenants
        .get(tenant)
        .is_some_and(|t| t.running == 0 && t.queue.is_empty())
    {
        tenants.remove(tenant);
    }
}

/// A place in a tenant's queue; leaves it when dropped before being granted.
struct Waiting {
    gate: Arc<Admission>,
    tenant: String,
    id: u64,
    grant: Option<oneshot::Receiver<()>>,
}

impl Waiting {
    /// Leave the queue. Returns the slot if it was granted meanwhile.
    fn leave(&mut self) -> Option<Slot> {
        let mut grant = self.grant.take()?;
        {
            let mut state = self.gate.lock();
            if let Some(t) = state.tenants.get_mut(&self.tenant)
                && let Some(at) = t.queue.iter().position(|w| w.id == self.id)
            {
                t.queue.remove(at);
                state.queued -= 1;
                forget_if_idle(&mut state.tenants, &self.tenant);
                return None;
            }
        }
        // Not queued any more, so the grant was sent under the lock.
        grant.try_recv().ok().map(|()| self.gate.slot(&self.tenant))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.grant.is_some() {
            self.gate.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            // A slot granted at the last moment is released here.
            drop(self.leave());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(running: usize, per_tenant: usize, queued: usize, wait_ms: u64) -> Arc<Admission> {
        Admission::new(AdmissionConfig {
            max_running: running,
            max_running_per_tenant: per_tenant,
            max_queued_per_tenant: queued,
            max_wait: Duration::from_millis(wait_ms),
        })
    }

    /// Spawn an admission for `tenant` that reports its slot on `done`.
    fn waiter(
        gate: &Arc<Admission>,
        tenant: &'static str,
        done: &tokio::sync::mpsc::UnboundedSender<(&'static str, Slot)>,
    ) -> tokio::task::JoinHandle<()> {
        let (gate, done) = (gate.clone(), done.clone());
        tokio::spawn(async move {
            let slot = gate.admit(tenant).await.unwrap();
            done.send((tenant, slot)).unwrap();
        })
    }

    async fn settle(gate: &Admission, queued: u64) {
        while gate.stats().queued != queued {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn freed_slot_goes_to_the_tenant_running_fewest() {
        let gate = gate(2, 2, 100, 60_000);
        let a1 = gate.admit("a").await.unwrap();
        let _a2 = gate.admit("a").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Five of a's queries wait first, then one of b's.
        for _ in 0..5 {
            waiter(&gate, "a", &tx);
        }
        settle(&gate, 5).await;
        waiter(&gate, "b", &tx);
        settle(&gate, 6).await;

        drop(a1);
        let (who, b_slot) = rx.recv().await.unwrap();
        assert_eq!(who, "b", "b waited least but runs nothing: it goes first");
        assert_eq!(gate.stats().queued, 5);
        // Then a's waiters, oldest first, one per freed slot.
        drop(b_slot);
        let (who, _a3) = rx.recv().await.unwrap();
        assert_eq!(who, "a");
        assert_eq!(gate.stats().queued, 4);
        assert_eq!(gate.stats().running, 2);
    }

    #[tokio::test]
    async fn per_tenant_limit_leaves_room_for_others() {
        let gate = gate(3, 2, 100, 60_000);
        let _a = [
            gate.admit("a").await.unwrap(),
            gate.admit("a").await.unwrap(),
        ];
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        waiter(&gate, "a", &tx);
        settle(&gate, 1).await;
        // a is at its own limit; b runs at once in the remaining slot.
        let _b = gate.admit("b").await.unwrap();
        assert_eq!(gate.stats().immediate, 3);
    }

    #[tokio::test]
    async fn full_queue_and_expired_wait_are_refused_by_name() {
        let patient = gate(1, 1, 1, 60_000);
        let _held = patient.admit("a").await.unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        waiter(&patient, "a", &tx);
        settle(&patient, 1).await;
        let full = patient.admit("a").await.unwrap_err().to_string();
        assert!(full.contains("--query-queue-per-tenant"), "{full}");
        assert_eq!(patient.stats().refused_queue_full, 1);

        let hasty = gate(1, 1, 1, 50);
        let _held = hasty.admit("a").await.unwrap();
        let expired = hasty.admit("b").await.unwrap_err().to_string();
        assert!(expired.contains("--query-queue-wait-secs"), "{expired}");
        let stats = hasty.stats();
        assert_eq!(stats.refused_wait_expired, 1);
        assert_eq!(stats.queued, 0, "the expired waiter left the queue");
        assert!(
            !hasty.lock().tenants.contains_key("b"),
            "b has no work left"
        );
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue_and_slots_are_not_leaked() {
        let gate = gate(1, 1, 10, 60_000);
        let held = gate.admit("a").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let gone = waiter(&gate, "a", &tx);
        settle(&gate, 1).await;
        waiter(&gate, "b", &tx);
        settle(&gate, 2).await;
        gone.abort();
        settle(&gate, 1).await;
        assert_eq!(gate.stats().cancelled, 1);

        drop(held);
        let (who, slot) = rx.recv().await.unwrap();
        assert_eq!(who, "b");
        drop(slot);
        let stats = gate.stats();
        assert_eq!((stats.running, stats.queued), (0, 0));
        assert!(gate.lock().tenants.is_empty(), "idle tenants are forgotten");
    }
}
