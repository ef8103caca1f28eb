//! Token records in the catalog database, for several nodes sharing one
//! PostgreSQL catalog: every node reads the same records, and a token
//! created or revoked on any machine reaches all of them.
//!
//! The records are those of the token file ([`super::tokens`]): salted
//! hashes, never secrets, with ids keyed by a server key stored beside them
//! (`raindrop_token_keys`), so a dump of the table alone gives no shortcut
//! for guessing secrets.

use super::tokens::TokenRecord;
use crate::catalog::db::CatalogDb;
use crate::error::{Error, Result, database_error};

/// The token tables of one catalog in its database.
#[derive(Debug)]
pub struct TokenTable {
    db: CatalogDb,
}

impl TokenTable {
    /// Connect to the catalog database at `uri` and create the token
    /// tables if missing.
    pub async fn open(uri: &str, catalog_name: &str) -> Result<Self> {
        let db = CatalogDb::open(
            uri,
            catalog_name,
            2,
            "tokens",
            &[
                "CREATE TABLE IF NOT EXISTS raindrop_tokens (\
                 catalog_name VARCHAR(255) NOT NULL, id VARCHAR(64) NOT NULL, record TEXT NOT NULL, \
                 PRIMARY KEY (catalog_name, id))",
                "CREATE TABLE IF NOT EXISTS raindrop_token_keys (\
                 catalog_name VARCHAR(255) NOT NULL, key_hex VARCHAR(128) NOT NULL, \
                 PRIMARY KEY (catalog_name))",
            ],
        )
        .await?;
        Ok(Self { db })
    }

    /// The key of lookup ids, if one was created yet.
    pub async fn key(&self) -> Result<Option<Vec<u8>>> {
        let sql = self
            .db
            .sql("SELECT key_hex FROM raindrop_token_keys WHERE catalog_name = ?");
        let row: Option<(String,)> = sqlx::query_as(&sql)
            .bind(&self.db.catalog_name)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(|e| database_error("reading the token key", e))?;
        row.map(|(k,)| {
            hex::decode(k.trim())
                .map_err(|e| Error::InvalidArgument(format!("token key is not hex: {e}")))
        })
        .transpose()
    }

    /// The key of lookup ids, created from `fresh` if there is none yet
    /// (a key another node created first wins).
    pub async fn ensure_key(&self, fresh: &[u8]) -> Result<Vec<u8>> {
        let sql = self.db.sql(
            "INSERT INTO raindrop_token_keys (catalog_name, key_hex) VALUES (?, ?) \
             ON CONFLICT (catalog_name) DO NOTHING",
        );
        sqlx::query(&sql)
            .bind(&self.db.catalog_name)
            .bind(hex::encode(fresh))
            .execute(&self.db.pool)
            .await
            .map_err(|e| database_error("storing the token key", e))?;
        self.key()
            .await?
            .ok_or_else(|| Error::Internal("token key vanished".into()))
    }

    /// Every token record.
    pub async fn records(&self) -> Result<Vec<TokenRecord>> {
        let sql = self
            .db
            .sql("SELECT record FROM raindrop_tokens WHERE catalog_name = ? ORDER BY id");
        let rows: Vec<(String,)> = sqlx::query_as(&sql)
            .bind(&self.db.catalog_name)
            .fetch_all(&self.db.pool)
            .await
            .map_err(|e| database_error("reading tokens", e))?;
        rows.into_iter()
            .map(|(json,)| {
                serde_json::from_str(&json)
                    .map_err(|e| Error::InvalidArgument(format!("stored token record: {e}")))
            })
            .collect()
    }

    /// Add a record.
    pub async fn insert(&self, record: &TokenRecord) -> Result<()> {
        let json = serde_json::to_string(record).map_err(|e| Error::Internal(e.to_string()))?;
        let sql = self
            .db
            .sql("INSERT INTO raindrop_tokens (catalog_name, id, record) VALUES (?, ?, ?)");
        sqlx::query(&sql)
            .bind(&self.db.catalog_name)
            .bind(&record.id)
            .bind(json)
            .execute(&self.db.pool)
            .await
            .map_err(|e| database_error("storing a token", e))?;
        Ok(())
    }

    /// Remove a record by id; `false` if there was none.
    pub async fn delete(&self, id: &str) -> Result<bool> {
        let sql = self
            .db
            .sql("DELETE FROM raindrop_tokens WHERE catalog_name = ? AND id = ?");
        let done = sqlx::query(&sql)
            .bind(&self.db.catalog_name)
            .bind(id)
            .execute(&self.db.pool)
            .await
            .map_err(|e| database_error("revoking a token", e))?;
        Ok(done.rows_affected() > 0)
    }
}
