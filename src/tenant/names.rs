//! Validation of every name a client can send that ends up in a catalog
//! entry or a storage path. Allow-lists only: lowercase ASCII letters,
//! digits, `_` (and `-` in project ids). Nothing else can reach a path, so
//! `..`, `/`, `%2F`, NUL and unicode look-alikes are rejected before use.

use crate::error::{Error, Result};

/// Longest accepted project id, schema or table name.
pub const MAX_NAME_LEN: usize = 64;

/// SQL schema of tenant tables named without one (ingest, `CREATE TABLE`),
/// and the default schema of query sessions.
pub const DEFAULT_TENANT_SCHEMA: &str = "public";

/// Schemas a tenant may not create tables in.
pub const RESERVED_SCHEMAS: &[&str] = &["information_schema", "pg_catalog", "system"];

/// Validate a project id: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn validate_project_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid project id {id:?}: use 1-{MAX_NAME_LEN} lowercase letters, digits, '_' or '-', starting with a letter or digit"
        )))
    }
}

/// Normalise and validate a schema or table name: ASCII is lowercased (as
/// unquoted SQL identifiers are), then `[a-z_][a-z0-9_]{0,63}` must match.
pub fn normalize_identifier(kind: &str, name: &str) -> Result<String> {
    let lowered = name.to_ascii_lowercase();
    let ok = !lowered.is_empty()
        && lowered.len() <= MAX_NAME_LEN
        && lowered
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && lowered
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(lowered)
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {kind} name {name:?}: use 1-{MAX_NAME_LEN} ASCII letters, digits or '_', starting with a letter or '_'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids() {
        for ok in ["acme", "a", "team-7", "p_1", "0abc"] {
            validate_project_id(ok).unwrap();
        }
        for bad in [
            "",
            "..",
            "a/b",
            "a%2Fb",
            "A",
            "-x",
            "a\0b",
            "ａcme",
            "a.b",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(validate_project_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn identifiers() {
        assert_eq!(
            normalize_identifier("table", "User_Outcomes").unwrap(),
            "user_outcomes"
        );
        for bad in [
            "", "1abc", "a-b", "../x", "a/b", "tbl\0", "naïve", "a.b", "a%2f",
        ] {
            assert!(
                normalize_identifier("table", bad).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
