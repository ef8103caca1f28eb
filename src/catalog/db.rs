//! Raindrop's own tables in the catalog database (leases, tokens), next to
//! the Iceberg catalog's: one connection helper, one way to create a table
//! that several starting nodes may race on, one placeholder style.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::error::{Result, database_error};

/// A small pool on the catalog database at `uri` (`what` names its use in
/// errors).
pub async fn connect(uri: &str, max_connections: u32, what: &str) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .connect(uri)
        .await
        .map_err(|e| database_error(&format!("connecting to the catalog database for {what}"), e))
}

/// Run `CREATE TABLE IF NOT EXISTS …`. On PostgreSQL it is not atomic:
/// nodes starting together can collide on it, and the loser's retry finds
/// the table.
pub async fn create_table(pool: &AnyPool, ddl: &str) -> Result<()> {
    let mut attempt = 0;
    loop {
        match sqlx::query(ddl).execute(pool).await {
            Ok(_) => return Ok(()),
            Err(_) if attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(database_error("creating a catalog table", e)),
        }
    }
}

/// A pool on the catalog database for one of Raindrop's own tables, which
/// are keyed by catalog name and written with `?` placeholders.
#[derive(Debug)]
pub struct CatalogDb {
    /// The connections.
    pub pool: AnyPool,
    /// Catalog name the rows are filed under.
    pub catalog_name: String,
    uri: String,
}

impl CatalogDb {
    /// Connect to the database at `uri` (`what` names the use in errors)
    /// and run each `CREATE TABLE IF NOT EXISTS` of `ddl`.
    pub async fn open(
        uri: &str,
        catalog_name: &str,
        max_connections: u32,
        what: &str,
        ddl: &[&str],
    ) -> Result<Self> {
        let pool = connect(uri, max_connections, what).await?;
        for statement in ddl {
            create_table(&pool, statement).await?;
        }
        Ok(Self {
            pool,
            catalog_name: catalog_name.to_string(),
            uri: uri.to_string(),
        })
    }

    /// `sql` with this database's placeholders (see [`placeholders`]).
    pub fn sql(&self, sql: &str) -> String {
        placeholders(&self.uri, sql)
    }
}

/// `sql` written with `?` placeholders, as the database at `uri` wants
/// them (`$1, $2, …` for PostgreSQL through sqlx's `Any` driver).
pub fn placeholders(uri: &str, sql: &str) -> String {
    if !uri.starts_with("postgres") {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn postgres_gets_numbered_placeholders() {
        let sql = "UPDATE t SET a = ? WHERE b = ? AND c = ?";
        assert_eq!(
            super::placeholders("postgres://h/db", sql),
            "UPDATE t SET a = $1 WHERE b = $2 AND c = $3"
        );
        assert_eq!(super::placeholders("sqlite:///x.db", sql), sql);
    }
}
