//! Committing a schema change (see [`crate::schema::evolve`]): a new
//! current schema, and nothing else, in one compare-and-swap of the
//! catalog pointer. iceberg 0.10.1's `update_schema` only adds columns;
//! promotions and docs need the schema built by hand, so all three take
//! this one path.

use iceberg::TableIdent;
use iceberg::spec::Schema;

use super::Warehouse;
use super::rewrite::swap_in;
use crate::error::{Error, Result};
use crate::schema::evolve::{Change, apply};

/// Ingest commits move the pointer all the time: a lost race is retried
/// on the new version, this many times.
const ATTEMPTS: usize = 20;

/// What a schema change did.
#[derive(Debug)]
pub struct Evolved {
    /// The table's current schema afterwards.
    pub schema: Schema,
    /// Whether a new schema was committed (`false`: nothing to change).
    pub changed: bool,
}

/// Apply `changes` to `ident`'s current schema in one commit. The rules
/// are checked against the version the commit replaces, so a change that
/// raced with another one is checked again.
pub async fn evolve_schema(
    warehouse: &Warehouse,
    ident: &TableIdent,
    changes: &[Change],
) -> Result<Evolved> {
    for _ in 0..ATTEMPTS {
        let base = warehouse.load_table(ident).await?;
        let metadata = base.metadata();
        let Some(schema) = apply(
            metadata.current_schema(),
            metadata.last_column_id(),
            changes,
        )?
        else {
            return Ok(Evolved {
                schema: metadata.current_schema().as_ref().clone(),
                changed: false,
            });
        };
        let builder = metadata
            .clone()
            .into_builder(Some(base.metadata_location_result()?.to_string()))
            .add_current_schema(schema)?;
        if swap_in(&warehouse.tables, ident, &base, builder).await? {
            let table = warehouse.load_table(ident).await?;
            return Ok(Evolved {
                schema: table.metadata().current_schema().as_ref().clone(),
                changed: true,
            });
        }
    }
    Err(Error::Aborted(format!(
        "{ident} kept changing while its schema was being changed ({ATTEMPTS} attempts); nothing was changed, retry"
    )))
}
