//! Leases in the catalog database: which node runs background
//! maintenance (compaction, snapshot expiry, file cleanup) when several
//! share one catalog, and which node owns each write-ahead log kept on
//! object storage (`wal/<node>`, see `ingest::wal::object`).
//!
//! One row per lease in `raindrop_leases`: its holder and when it expires.
//! Taking it is one upsert that succeeds only if the row is free, expired
//! or already ours, so at most one node holds it at a time; the holder
//! renews it well before it expires, and a node that dies simply stops
//! renewing, so another takes over one TTL later. Expiry uses each node's
//! clock: keep clocks in sync (NTP) to well under the TTL.
//!
//! Maintenance correctness never depends on its lease: every maintenance
//! commit is a compare-and-swap of the catalog pointer. The lease keeps
//! nodes from duplicating the work (and the object-store requests it costs).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::db::CatalogDb;
use crate::error::{Result, database_error};

/// One named lease on one catalog, as one holder sees it.
#[derive(Debug)]
pub struct Lease {
    db: Arc<CatalogDb>,
    name: String,
    holder: String,
    ttl: Duration,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Lease {
    /// Open lease `name` of catalog `catalog_name` in the database at
    /// `uri`, as `holder` (unique per process), creating the table if
    /// missing.
    pub async fn open(
        uri: &str,
        catalog_name: &str,
        name: &str,
        holder: String,
        ttl: Duration,
    ) -> Result<Self> {
        let db = CatalogDb::open(
            uri,
            catalog_name,
            1,
            "leases",
            &["CREATE TABLE IF NOT EXISTS raindrop_leases (\
               catalog_name VARCHAR(255) NOT NULL, lease_name VARCHAR(255) NOT NULL, \
               holder VARCHAR(255) NOT NULL, expires_at BIGINT NOT NULL, \
               PRIMARY KEY (catalog_name, lease_name))"],
        )
        .await?;
        Ok(Self {
            db: Arc::new(db),
            name: name.to_string(),
            holder,
            ttl,
        })
    }

    /// Lease `name` of the same catalog and database, held as `holder`,
    /// with the same TTL.
    pub fn other(&self, name: &str, holder: String) -> Self {
        Self {
            db: self.db.clone(),
            name: name.to_string(),
            holder,
            ttl: self.ttl,
        }
    }

    /// This lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names of this catalog's leases that start with `prefix` and have
    /// expired (their holder stopped renewing them).
    pub async fn expired(&self, prefix: &str) -> Result<Vec<String>> {
        self.expired_at(prefix, now_ms()).await
    }

    /// Names of all this catalog's leases that start with `prefix`,
    /// expired or not.
    pub async fn names(&self, prefix: &str) -> Result<Vec<String>> {
        self.expired_at(prefix, i64::MAX).await
    }

    async fn expired_at(&self, prefix: &str, now: i64) -> Result<Vec<String>> {
        let sql = self.db.sql(
            "SELECT lease_name FROM raindrop_leases WHERE catalog_name = ? \
             AND lease_name LIKE ? AND expires_at < ? ORDER BY lease_name",
        );
        // `_` and `%` in `prefix` would match more in LIKE: filtered below.
        let like = format!("{prefix}%");
        let rows: Vec<(String,)> = sqlx::query_as(&sql)
            .bind(&self.db.catalog_name)
            .bind(like)
            .bind(now)
            .fetch_all(&self.db.pool)
            .await
            .map_err(|e| database_error("listing expired leases", e))?;
        Ok(rows
            .into_iter()
            .map(|(name,)| name)
            .filter(|name| name.starts_with(prefix))
            .collect())
    }

    /// This process's holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Until when the holder may act on a take or renewal asked at
    /// `asked`: two thirds of the TTL, so it stops a third of a TTL before
    /// another node may take the lease over.
    pub fn act_until(&self, asked: Instant) -> Instant {
        asked + self.ttl * 2 / 3
    }

    /// How long a lease lasts without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Take or renew the lease; `true` if this process holds it for the
    /// next TTL.
    pub async fn try_acquire(&self) -> Result<bool> {
        self.acquire_at(now_ms()).await
    }

    /// [`Self::try_acquire`] as if the clock read `now` (ms).
    async fn acquire_at(&self, now: i64) -> Result<bool> {
        let sql = self.db.sql(
            "INSERT INTO raindrop_leases (catalog_name, lease_name, holder, expires_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (catalog_name, lease_name) DO UPDATE \
             SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE raindrop_leases.holder = excluded.holder OR raindrop_leases.expires_at < ?",
        );
        let done = sqlx::query(&sql)
            .bind(&self.db.catalog_name)
            .bind(&self.name)
            .bind(&self.holder)
            .bind(now + self.ttl.as_millis() as i64)
            .bind(now)
            .execute(&self.db.pool)
            .await
            .map_err(|e| database_error(&format!("renewing lease {}", self.name), e))?;
        Ok(done.rows_affected() == 1)
    }

    /// Extend a lease this holder has, expired or not, as long as no one
    /// took it over; unlike [`Self::try_acquire`] it never recreates a
    /// released lease (an adopter releases a log's lease once the log is
    /// gone, and its old holder must not get it back).
    pub async fn renew(&self) -> Result<bool> {
        let sql = self.db.sql(
            "UPDATE raindrop_leases SET expires_at = ? \
             WHERE catalog_name = ? AND lease_name = ? AND holder = ?",
        );
        let done = sqlx::query(&sql)
            .bind(now_ms() + self.ttl.as_millis() as i64)
            .bind(&self.db.catalog_name)
            .bind(&self.name)
            .bind(&self.holder)
            .execute(&self.db.pool)
            .await
            .map_err(|e| database_error(&format!("renewing lease {}", self.name), e))?;
        Ok(done.rows_affected() == 1)
    }

    /// Give the lease up (on shutdown), so another node takes over at once.
    pub async fn release(&self) -> Result<()> {
        let sql = self.db.sql(
            "DELETE FROM raindrop_leases WHERE catalog_name = ? AND lease_name = ? AND holder = ?",
        );
        sqlx::query(&sql)
            .bind(&self.db.catalog_name)
            .bind(&self.name)
            .bind(&self.holder)
            .execute(&self.db.pool)
            .await
            .map_err(|e| database_error(&format!("releasing lease {}", self.name), e))?;
        Ok(())
    }

    /// The current holder and whether its lease is still valid.
    pub async fn current(&self) -> Result<Option<(String, bool)>> {
        self.current_at(now_ms()).await
    }

    async fn current_at(&self, now: i64) -> Result<Option<(String, bool)>> {
        let sql = self
            .db
            .sql("SELECT holder, expires_at FROM raindrop_leases WHERE catalog_name = ? AND lease_name = ?");
        let row: Option<(String, i64)> = sqlx::query_as(&sql)
            .bind(&self.db.catalog_name)
            .bind(&self.name)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(|e| database_error(&format!("reading lease {}", self.name), e))?;
        Ok(row.map(|(holder, expires)| (holder, expires >= now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("sqlite://{}/c.db?mode=rwc", dir.path().display());
        let ttl = Duration::from_secs(30);
        let open = async |catalog: &str, holder: &str| {
            Lease::open(&uri, catalog, "maintenance", holder.into(), ttl).await
        };
        let a = open("cat", "a").await.unwrap();
        let b = open("cat", "b").await.unwrap();
        // Another catalog's lease of the same name is independent.
        let other = open("other", "b").await.unwrap();
        let t0 = now_ms();
        let later = |secs: i64| t0 + secs * 1000;
        assert!(a.acquire_at(t0).await.unwrap());
        assert!(!b.acquire_at(later(1)).await.unwrap(), "held by a");
        assert!(other.acquire_at(later(1)).await.unwrap());
        assert!(
            a.acquire_at(later(10)).await.unwrap(),
            "renewal by the holder"
        );
        assert_eq!(
            b.current_at(later(39)).await.unwrap(),
            Some(("a".into(), true)),
            "the renewal extended it to 10 s + TTL"
        );
        assert!(!b.acquire_at(later(39)).await.unwrap());

        // a stops renewing (dies): b takes over once the TTL has passed.
        assert_eq!(
            b.current_at(later(41)).await.unwrap(),
            Some(("a".into(), false))
        );
        assert!(b.acquire_at(later(41)).await.unwrap());
        assert!(!a.acquire_at(later(42)).await.unwrap(), "a lost it");

        // Released on shutdown: free at once.
        b.release().await.unwrap();
        assert_eq!(a.current().await.unwrap(), None);
        assert!(a.try_acquire().await.unwrap());
        // Releasing a lease one does not hold changes nothing.
        b.release().await.unwrap();
        assert_eq!(b.current().await.unwrap(), Some(("a".into(), true)));
    }

    #[tokio::test]
    async fn renewal_never_revives_a_released_lease_and_expired_ones_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("sqlite://{}/c.db?mode=rwc", dir.path().display());
        let ttl = Duration::from_secs(30);
        let a = Lease::open(&uri, "cat", "wal/a", "a".into(), ttl)
            .await
            .unwrap();
        let b = a.other("wal/b", "b".into());
        let other = a.other("maintenance", "m".into());
        let t0 = now_ms();
        for lease in [&a, &b, &other] {
            assert!(lease.acquire_at(t0).await.unwrap());
        }
        assert!(a.expired_at("wal/", t0 + 1000).await.unwrap().is_empty());
        assert_eq!(a.names("wal/").await.unwrap(), ["wal/a", "wal/b"]);
        // After the TTL both logs' leases are listed, the other one is not.
        assert_eq!(
            a.expired_at("wal/", t0 + 31_000).await.unwrap(),
            ["wal/a", "wal/b"]
        );
        // An adopter takes b's log over: b can no longer renew it.
        let adopter = b.other("wal/b", "a".into());
        assert!(adopter.acquire_at(t0 + 31_000).await.unwrap());
        assert!(!b.renew().await.unwrap());
        // Once the adopter releases it (the log is gone), b's renewal must
        // not bring it back.
        adopter.release().await.unwrap();
        assert!(!b.renew().await.unwrap());
        assert_eq!(b.current().await.unwrap(), None);
        assert_eq!(a.names("wal/").await.unwrap(), ["wal/a"]);
        // The holder itself renews, even after expiry while nobody took it.
        assert!(a.renew().await.unwrap());
        assert_eq!(a.current().await.unwrap(), Some(("a".into(), true)));
    }
}
