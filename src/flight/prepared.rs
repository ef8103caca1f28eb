//! Prepared-statement handles: opaque random ids mapped to the SQL, its
//! bound parameters and the token that created them. Bounded per token and
//! expired when idle, so clients that never close them cannot leak memory;
//! a handle used with any other token behaves as if it did not exist.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
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

#[derive(Debug)]
struct Entry {
    owner: String,
    statement: Statement,
    last_used: Instant,
}

/// All open handles of this server.
#[derive(Debug, Default)]
pub struct PreparedStatements {
    entries: Mutex<HashMap<Bytes, Entry>>,
}

fn not_found() -> Error {
    Error::NotFound(
        "unknown or expired prepared statement handle; prepare the statement again".into(),
    )
}

impl PreparedStatements {
    /// Register a statement for `owner` (a token id) and return its handle.
    pub fn create(&self, owner: &str, statement: Statement) -> Result<Bytes> {
        let mut entries = self.entries.lock().expect("prepared lock");
        let now = Instant::now();
        entries.retain(|_, e| now.duration_since(e.last_used) < IDLE_TTL);
        if entries.values().filter(|e| e.owner == owner).count() >= MAX_PER_TOKEN {
            return Err(Error::ResourceExhausted(format!(
                "too many open prepared statements ({MAX_PER_TOKEN}) for this token; close some first"
            )));
        }
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let handle = Bytes::from(hex::encode(id));
        entries.insert(
            handle.clone(),
            Entry {
                owner: owner.to_string(),
                statement,
                last_used: now,
            },
        );
        Ok(handle)
    }

    /// The statement behind `handle`, if `owner` created it.
    pub fn get(&self, owner: &str, handle: &[u8]) -> Result<Statement> {
        let mut entries = self.entries.lock().expect("prepared lock");
        match entries.get_mut(handle) {
            Some(e) if e.owner == owner && e.last_used.elapsed() < IDLE_TTL => {
                e.last_used = Instant::now();
                Ok(e.statement.clone())
            }
            _ => Err(not_found()),
        }
    }

    /// Bind parameters (replacing earlier ones).
    pub fn bind(&self, owner: &str, handle: &[u8], params: Option<RecordBatch>) -> Result<()> {
        let mut entries = self.entries.lock().expect("prepared lock");
        match entries.get_mut(handle) {
            Some(e) if e.owner == owner => {
                e.statement.params = params;
                e.last_used = Instant::now();
                Ok(())
            }
            _ => Err(not_found()),
        }
    }

    /// Close a handle.
    pub fn close(&self, owner: &str, handle: &[u8]) -> Result<()> {
        let mut entries = self.entries.lock().expect("prepared lock");
        match entries.get(handle) {
            Some(e) if e.owner == owner => {
                entries.remove(handle);
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
