//! Prepared-statement handles: opaque random ids mapped to the SQL, its
//! bound parameters and the token that created them. Bounded per token and
//! expired when idle, so clients that never close them cannot leak memory;
//! a handle used with any other token behaves as if it did not exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use moka::notification::RemovalCause;
use rand::RngCore;

use crate::error::{Error, Result};

/// Open handles allowed per token.
pub const MAX_PER_TOKEN: usize = 256;
/// Idle time after which a handle is dropped.
pub const IDLE_TTL: Duration = Duration::from_secs(15 * 60);

/// What a handle refers to.
#[derive(Debug, Clone)]
pub struct Statement {
    /// SQL with `$n` placeholders.
    pub sql: String,
    /// Whether it writes (executed as an update).
    pub is_update: bool,
    /// Parameters bound with `DoPut`, if any.
    pub params: Option<RecordBatch>,
}

#[derive(Debug, Clone)]
struct Entry {
    owner: String,
    statement: Statement,
}

/// Open handles per token, kept in step with the cache by its removal
/// listener (close, idle expiry).
type OpenCounts = Arc<Mutex<HashMap<String, usize>>>;

/// All open handles of this server.
#[derive(Debug)]
pub struct PreparedStatements {
    entries: moka::sync::Cache<Bytes, Entry>,
    open: OpenCounts,
}

impl Default for PreparedStatements {
    fn default() -> Self {
        let open = OpenCounts::default();
        let counts = open.clone();
        let entries = moka::sync::Cache::builder()
            .time_to_idle(IDLE_TTL)
            .eviction_listener(move |_, entry: Entry, cause| {
                // A bind replaces the entry: the handle stays open.
                if cause != RemovalCause::Replaced {
                    let mut open = counts.lock().expect("prepared counts lock");
                    if let Some(n) = open.get_mut(&entry.owner) {
                        *n -= 1;
                        if *n == 0 {
                            open.remove(&entry.owner);
                        }
                    }
                }
            })
            .build();
        Self { entries, open }
    }
}

fn not_found() -> Error {
    Error::NotFound(
        "unknown or expired prepared statement handle; prepare the statement again".into(),
    )
}

impl PreparedStatements {
    /// Take one of `owner`'s handle slots, if it has one left.
    fn reserve(&self, owner: &str) -> bool {
        let mut open = self.open.lock().expect("prepared counts lock");
        let n = open.entry(owner.to_string()).or_default();
        if *n >= MAX_PER_TOKEN {
            return false;
        }
        *n += 1;
        true
    }

    /// Register a statement for `owner` (a token id) and return its handle.
    pub fn create(&self, owner: &str, statement: Statement) -> Result<Bytes> {
        if !self.reserve(owner) {
            // Idle handles may await their eviction: run it, then recount.
            self.entries.run_pending_tasks();
            if !self.reserve(owner) {
                return Err(Error::ResourceExhausted(format!(
                    "too many open prepared statements ({MAX_PER_TOKEN}) for this token; close some first"
                )));
            }
        }
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let handle = Bytes::from(hex::encode(id));
        self.entries.insert(
            handle.clone(),
            Entry {
                owner: owner.to_string(),
                statement,
            },
        );
        Ok(handle)
    }

    /// The statement behind `handle`, if `owner` created it.
    pub fn get(&self, owner: &str, handle: &[u8]) -> Result<Statement> {
        match self.entries.get(handle) {
            Some(e) if e.owner == owner => Ok(e.statement),
            _ => Err(not_found()),
        }
    }

    /// Bind parameters (replacing earlier ones).
    pub fn bind(&self, owner: &str, handle: &[u8], params: Option<RecordBatch>) -> Result<()> {
        use moka::ops::compute::{CompResult, Op};
        // One atomic read-modify-write: a concurrent close cannot be undone.
        let result = self
            .entries
            .entry(Bytes::copy_from_slice(handle))
            .and_compute_with(|current| match current.map(|e| e.into_value()) {
                Some(mut e) if e.owner == owner => {
                    e.statement.params = params;
                    Op::Put(e)
                }
                _ => Op::Nop,
            });
        match result {
            CompResult::ReplacedWith(_) => Ok(()),
            _ => Err(not_found()),
        }
    }

    /// Close a handle.
    pub fn close(&self, owner: &str, handle: &[u8]) -> Result<()> {
        match self.entries.get(handle) {
            Some(e) if e.owner == owner => {
                self.entries.invalidate(handle);
                Ok(())
            }
            _ => Err(not_found()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt() -> Statement {
        Statement {
            sql: "SELECT 1".into(),
            is_update: false,
            params: None,
        }
    }

    #[test]
    fn handles_are_bound_to_their_owner_and_bounded() {
        let p = PreparedStatements::default();
        let h = p.create("alice", stmt()).unwrap();
        assert!(p.get("alice", &h).is_ok());
        assert!(matches!(p.get("mallory", &h), Err(Error::NotFound(_))));
        assert!(p.close("mallory", &h).is_err());
        p.close("alice", &h).unwrap();
        assert!(p.get("alice", &h).is_err());
        for _ in 0..MAX_PER_TOKEN {
            p.create("bob", stmt()).unwrap();
        }
        assert!(matches!(
            p.create("bob", stmt()),
            Err(Error::ResourceExhausted(_))
        ));
        assert!(p.create("carol", stmt()).is_ok());
    }
}
