//! Queries planned by `GetFlightInfo`, kept briefly for the `DoGet` that
//! normally follows, so a statement is planned once rather than twice (the
//! session setup, catalog listing and SQL planning are most of a small
//! query's server time).
//!
//! Entries are keyed by token id and SQL, so only the token that planned a
//! query can pick it up (a ticket replayed with another token plans anew,
//! as that token). An entry is taken at most once, expires after
//! [`TTL`], and the cache holds at most [`CAPACITY`] entries. A `DoGet`
//! that finds nothing (expired, evicted, another node, a reused ticket)
//! simply plans again, so correctness never depends on the cache. Results
//! reflect the table as of `GetFlightInfo`, the moment the client was told
//! the schema.

use std::time::{Duration, Instant};

use datafusion::dataframe::DataFrame;

/// How long a planned query waits for its `DoGet`.
pub const TTL: Duration = Duration::from_secs(30);
/// Planned queries held at once, across tokens.
pub const CAPACITY: u64 = 1024;

/// See the module docs.
pub struct PlannedQueries {
    entries: moka::sync::Cache<(String, String), (Instant, DataFrame)>,
}

impl Default for PlannedQueries {
    fn default() -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
        }
    }
}

impl std::fmt::Debug for PlannedQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedQueries")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl PlannedQueries {
    /// Keep `df`, planned for `token_id` from `sql`.
    pub fn put(&self, token_id: &str, sql: &str, df: DataFrame) {
        self.entries.insert(
            (token_id.to_string(), sql.to_string()),
            (Instant::now(), df),
        );
    }

    /// Take the plan of `sql` made for `token_id`, if it is still fresh.
    pub fn take(&self, token_id: &str, sql: &str) -> Option<DataFrame> {
        // `remove` is atomic (one taker) but may return an expired entry.
        let (at, df) = self
            .entries
            .remove(&(token_id.to_string(), sql.to_string()))?;
        (at.elapsed() < TTL).then_some(df)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn taken_once_and_only_by_the_planning_token() {
        let ctx = SessionContext::new();
        let cache = PlannedQueries::default();
        cache.put("tok-a", "SELECT 1", ctx.sql("SELECT 1").await.unwrap());
        assert!(cache.take("tok-b", "SELECT 1").is_none());
        assert!(cache.take("tok-a", "SELECT 2").is_none());
        assert!(cache.take("tok-a", "SELECT 1").is_some());
        assert!(cache.take("tok-a", "SELECT 1").is_none());
    }
}
