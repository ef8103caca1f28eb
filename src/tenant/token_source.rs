//! Where tokens live ([`TokenSource`]: the token file, or the catalog
//! database for several nodes) and the `raindrop token` operations on
//! either.

use std::path::PathBuf;

use rand::RngCore;

use super::Role;
use super::token_table::TokenTable;
use super::tokens::{
    TokenRecord, create_token, list_tokens, new_record, revoke_token, validate_new,
};
use crate::error::{Error, Result};

/// Where token records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A JSON file (the embedded default), with its key file beside it.
    File(PathBuf),
    /// The catalog database (several nodes on one PostgreSQL catalog).
    Catalog {
        /// Catalog database URI.
        uri: String,
        /// Catalog name the records are filed under.
        catalog_name: String,
    },
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(path) => write!(f, "{}", path.display()),
            TokenSource::Catalog { catalog_name, .. } => {
                write!(
                    f,
                    "catalog database (raindrop_tokens, catalog {catalog_name})"
                )
            }
        }
    }
}

/// Add a token to `source`; returns the record.
pub async fn create(
    source: &TokenSource,
    secret: &str,
    project_id: Option<&str>,
    role: Role,
    label: &str,
) -> Result<TokenRecord> {
    match source {
        TokenSource::File(path) => create_token(path, secret, project_id, role, label),
        TokenSource::Catalog { uri, catalog_name } => {
            validate_new(secret, project_id, role)?;
            let table = TokenTable::open(uri, catalog_name).await?;
            let mut fresh = [0u8; 32];
            rand::rng().fill_bytes(&mut fresh);
            let key = table.ensure_key(&fresh).await?;
            let existing = table.records().await?;
            let record = new_record(&existing, &key, secret, project_id, role, label)?;
            table.insert(&record).await?;
            Ok(record)
        }
    }
}

/// Every token record in `source`.
pub async fn list(source: &TokenSource) -> Result<Vec<TokenRecord>> {
    match source {
        TokenSource::File(path) => list_tokens(path),
        TokenSource::Catalog { uri, catalog_name } => {
            TokenTable::open(uri, catalog_name).await?.records().await
        }
    }
}

/// Remove a token from `source` by id; errors if it is not there.
pub async fn revoke(source: &TokenSource, id: &str) -> Result<()> {
    match source {
        TokenSource::File(path) => revoke_token(path, id),
        TokenSource::Catalog { uri, catalog_name } => {
            match TokenTable::open(uri, catalog_name)
                .await?
                .delete(id)
                .await?
            {
                true => Ok(()),
                false => Err(Error::NotFound(format!("no token with id {id}"))),
            }
        }
    }
}
