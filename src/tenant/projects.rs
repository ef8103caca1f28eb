//! Per-project lifecycle settings in the catalog database, where every node
//! sharing the catalog reads them: how many days of a project's events to
//! keep, and whether the project was deleted (offboarded).
//!
//! A deleted project keeps its row as a tombstone: rows it sent just before
//! its tokens were revoked may still be flushed by a node, and maintenance
//! drops any partition of a tombstoned project it finds.

use super::names::validate_project_id;
use crate::catalog::db::CatalogDb;
use crate::error::{Error, Result, database_error};

/// Longest retention accepted: 100 years, far beyond any contract, small
/// enough that day arithmetic never overflows.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// One project's lifecycle settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectPolicy {
    /// The project.
    pub project_id: String,
    /// Keep events whose `event_day` is at most this many days before
    /// today (UTC); `None`: keep forever.
    pub retention_days: Option<u32>,
    /// When the project was deleted (ms since the epoch); `None`: live.
    pub deleted_at_ms: Option<i64>,
}

impl ProjectPolicy {
    /// The first `event_day` (days since the epoch) kept on `today`, or
    /// `None` when every day is kept. A deleted project keeps none.
    pub fn first_kept_day(&self, today: i32) -> Option<i32> {
        if self.deleted_at_ms.is_some() {
            return Some(i32::MAX);
        }
        self.retention_days.map(|d| today - d as i32)
    }
}

/// Validate a retention period given by an operator.
pub fn validate_retention_days(days: i64) -> Result<u32> {
    if days < 1 || days > i64::from(MAX_RETENTION_DAYS) {
        return Err(Error::InvalidArgument(format!(
            "retention must be between 1 and {MAX_RETENTION_DAYS} days (got {days}); to keep data forever, clear the retention instead"
        )));
    }
    Ok(days as u32)
}

/// The project table of one catalog in its database.
#[derive(Debug)]
pub struct ProjectTable {
    db: CatalogDb,
}

type Row = (String, Option<i64>, Option<i64>);

impl ProjectTable {
    /// Connect to the catalog database at `uri` and create the table if
    /// missing.
    pub async fn open(uri: &str, catalog_name: &str) -> Result<Self> {
        let db = CatalogDb::open(
            uri,
            catalog_name,
            2,
            "project settings",
            &["CREATE TABLE IF NOT EXISTS raindrop_projects (\
               catalog_name VARCHAR(255) NOT NULL, project_id VARCHAR(64) NOT NULL, \
               retention_days BIGINT NULL, deleted_at_ms BIGINT NULL, \
               PRIMARY KEY (catalog_name, project_id))"],
        )
        .await?;
        Ok(Self { db })
    }

    /// Every project with settings, by id.
    pub async fn list(&self) -> Result<Vec<ProjectPolicy>> {
        let sql = self.db.sql(
            "SELECT project_id, retention_days, deleted_at_ms FROM raindrop_projects \
             WHERE catalog_name = ? ORDER BY project_id",
        );
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(&self.db.catalog_name)
            .fetch_all(&self.db.pool)
            .await
            .map_err(|e| database_error("reading project settings", e))?;
        Ok(rows.into_iter().map(policy).collect())
    }

    /// One project's settings, if it has any.
    pub async fn get(&self, project_id: &str) -> Result<Option<ProjectPolicy>> {
        let sql = self.db.sql(
            "SELECT project_id, retention_days, deleted_at_ms FROM raindrop_projects \
             WHERE catalog_name = ? AND project_id = ?",
        );
        let row: Option<Row> = sqlx::query_as(&sql)
            .bind(&self.db.catalog_name)
            .bind(project_id)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(|e| database_error("reading project settings", e))?;
        Ok(row.map(policy))
    }

    /// Set (or with `None` clear) a project's retention. A deleted project
    /// is refused: its data is going, whatever the retention says.
    pub async fn set_retention(&self, project_id: &str, days: Option<u32>) -> Result<()> {
        validate_project_id(project_id)?;
        if let Some(p) = self.get(project_id).await?
            && p.deleted_at_ms.is_some()
        {
            return Err(Error::InvalidArgument(format!(
                "project {project_id} was deleted; its retention cannot change"
            )));
        }
        let sql = self.db.sql(
            "INSERT INTO raindrop_projects (catalog_name, project_id, retention_days) \
             VALUES (?, ?, ?) ON CONFLICT (catalog_name, project_id) \
             DO UPDATE SET retention_days = excluded.retention_days",
        );
        sqlx::query(&sql)
            .bind(&self.db.catalog_name)
            .bind(project_id)
            .bind(days.map(i64::from))
            .execute(&self.db.pool)
            .await
            .map_err(|e| database_error("storing a project's retention", e))?;
        Ok(())
    }

    /// Record that a project was deleted (idempotent: the first time is
    /// kept).
    pub async fn mark_deleted(&self, project_id: &str) -> Result<()> {
        validate_project_id(project_id)?;
        let sql = self.db.sql(
            "INSERT INTO raindrop_projects (catalog_name, project_id, deleted_at_ms) \
             VALUES (?, ?, ?) ON CONFLICT (catalog_name, project_id) \
             DO UPDATE SET deleted_at_ms = COALESCE(raindrop_projects.deleted_at_ms, excluded.deleted_at_ms)",
        );
        sqlx::query(&sql)
            .bind(&self.db.catalog_name)
            .bind(project_id)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(&self.db.pool)
            .await
            .map_err(|e| database_error("marking a project deleted", e))?;
        Ok(())
    }
}

fn policy((project_id, retention_days, deleted_at_ms): Row) -> ProjectPolicy {
    ProjectPolicy {
        project_id,
        retention_days: retention_days.and_then(|d| u32::try_from(d).ok()),
        deleted_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_whole_days_and_deletion_keeps_none() {
        let mut p = ProjectPolicy {
            project_id: "acme".into(),
            retention_days: None,
            deleted_at_ms: None,
        };
        assert_eq!(p.first_kept_day(20_000), None);
        p.retention_days = Some(90);
        assert_eq!(p.first_kept_day(20_000), Some(19_910));
        p.deleted_at_ms = Some(1);
        assert_eq!(p.first_kept_day(20_000), Some(i32::MAX));
        assert!(validate_retention_days(0).is_err());
        assert!(validate_retention_days(-3).is_err());
        assert!(validate_retention_days(36_501).is_err());
        assert_eq!(validate_retention_days(90).unwrap(), 90);
    }
}
