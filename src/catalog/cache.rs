//! Table metadata cache.
//!
//! Loading an Iceberg table reads its metadata JSON, and every scan then
//! reads the manifest list and manifests. All of those files are immutable
//! and named uniquely, so a `Table` can be reused for as long as the
//! catalog still points at the same metadata file. Each query asks the
//! catalog database for the current pointer (one indexed row read, no file
//! I/O); if it is unchanged the cached `Table` — and with it iceberg's
//! manifest cache — is reused, so a repeated query against an unchanged
//! table reads no metadata files. A new commit changes the pointer, so the
//! next query sees it: freshness is never traded for speed.

use std::sync::atomic::{AtomicU64, Ordering};

use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use sqlx::AnyPool;

use super::db;
use crate::error::{Result, database_error};

/// Reads the current metadata location straight from a SQL catalog's
/// `iceberg_tables` row (the layout shared with PyIceberg and Java's
/// JdbcCatalog).
#[derive(Debug)]
pub struct MetadataPointer {
    pool: AnyPool,
    catalog_name: String,
    uri: String,
}

impl MetadataPointer {
    /// Connect to the catalog database at `uri`.
    pub async fn connect(uri: &str, catalog_name: &str) -> Result<Self> {
        Ok(Self {
            pool: db::connect(uri, 4, "reading table pointers").await?,
            catalog_name: catalog_name.to_string(),
            uri: uri.to_string(),
        })
    }

    fn sql(&self, sql: &str) -> String {
        db::placeholders(&self.uri, sql)
    }

    /// Current metadata location of `ident`, if the table exists.
    pub async fn current(&self, ident: &TableIdent) -> Result<Option<String>> {
        let sql = self.sql(
            "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = ? AND table_namespace = ? AND table_name = ?",
        );
        let row: Option<(Option<String>,)> = sqlx::query_as(&sql)
            .bind(&self.catalog_name)
            .bind(ident.namespace().join("."))
            .bind(ident.name())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| database_error("reading catalog pointer", e))?;
        Ok(row.and_then(|(loc,)| loc))
    }
}

impl MetadataPointer {
    /// Compare-and-swap `ident`'s metadata location from `old` to `new`
    /// (the SQL catalog's own commit protocol). `true` when this call moved
    /// the pointer, confirmed by reading it back: SQLite can report an
    /// update whose transaction did not commit.
    pub async fn swap(&self, ident: &TableIdent, old: &str, new: &str) -> Result<bool> {
        let sql = self.sql(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?",
        );
        let done = sqlx::query(&sql)
            .bind(new)
            .bind(old)
            .bind(&self.catalog_name)
            .bind(ident.namespace().join("."))
            .bind(ident.name())
            .bind(old)
            .execute(&self.pool)
            .await
            .map_err(|e| database_error("updating catalog pointer", e))?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        Ok(self.current(ident).await?.as_deref() == Some(new))
    }

    /// Namespaces strictly below `parent` (dotted, e.g. `tenants.acme`) and
    /// the tables in them, in one query: `(namespace, Some(table))` per
    /// table and `(namespace, None)` per namespace with properties. The
    /// bounds select exactly the names starting with `parent.` (`/` sorts
    /// right after `.`), so other tenants' rows are never read.
    pub async fn children(&self, parent: &str) -> Result<Vec<(String, Option<String>)>> {
        let sql = self.sql(
            "SELECT table_namespace, table_name FROM iceberg_tables \
             WHERE catalog_name = ? AND table_namespace > ? AND table_namespace < ? \
             UNION ALL SELECT namespace, CAST(NULL AS TEXT) FROM iceberg_namespace_properties \
             WHERE catalog_name = ? AND namespace > ? AND namespace < ?",
        );
        let (lo, hi) = (format!("{parent}."), format!("{parent}/"));
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(&sql)
            .bind(&self.catalog_name)
            .bind(&lo)
            .bind(&hi)
            .bind(&self.catalog_name)
            .bind(&lo)
            .bind(&hi)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| database_error("listing catalog entries", e))?;
        Ok(rows)
    }
}

/// Bounded cache of loaded tables keyed by metadata location.
#[derive(Debug)]
pub struct TableCache {
    pointer: Option<MetadataPointer>,
    /// Table versions by metadata location: immutable, so never stale.
    entries: moka::sync::Cache<String, Table>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TableCache {
    /// A cache holding at most `capacity` table versions. Without a
    /// `pointer` (non-SQL catalogs) every load goes to the catalog.
    pub fn new(pointer: Option<MetadataPointer>, capacity: usize) -> Self {
        Self {
            pointer,
            // LRU: a new version (every commit makes one) is always kept.
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity.max(1) as u64)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The current version of `ident`: cached if the catalog still points
    /// at it, else loaded (and remembered).
    pub async fn load(&self, catalog: &dyn Catalog, ident: &TableIdent) -> Result<Table> {
        let Some(pointer) = &self.pointer else {
            return Ok(catalog.load_table(ident).await?);
        };
        let cached = pointer
            .current(ident)
            .await?
            .and_then(|location| self.entries.get(&location));
        if let Some(table) = cached {
            self.hits.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().cache("table", true);
            return Ok(table);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().cache("table", false);
        let table = catalog.load_table(ident).await?;
        self.insert(&table);
        Ok(table)
    }

    /// Whether the catalog currently points at `location`; `None` when that
    /// cannot be answered without loading the table (non-SQL catalogs).
    pub async fn points_at(&self, ident: &TableIdent, location: &str) -> Result<Option<bool>> {
        match &self.pointer {
            Some(p) => Ok(Some(p.current(ident).await?.as_deref() == Some(location))),
            None => Ok(None),
        }
    }

    /// Remember a table version (e.g. the result of our own commit).
    pub fn insert(&self, table: &Table) {
        if let Some(location) = table.metadata_location() {
            self.entries.insert(location.to_string(), table.clone());
        }
    }

    /// The SQL catalog reader, when the catalog is a SQL catalog.
    pub fn pointer(&self) -> Option<&MetadataPointer> {
        self.pointer.as_ref()
    }

    /// (hits, misses) since start: hits read no metadata files.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}
