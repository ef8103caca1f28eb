//! Who is calling and what they may touch.
//!
//! A request carries a token; [`tokens::TokenStore`] turns it into a
//! [`Principal`]. Everything downstream (query sessions, ingest) receives the
//! principal, never the raw token, and derives every table location from it:
//! a tenant cannot name another tenant's data because no name it can send
//! maps there.

pub mod access;
pub mod credentials;
pub mod names;
pub mod projects;
pub mod scope;
pub mod token_source;
pub mod token_table;
pub mod tokens;

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Query own project's telemetry and tables.
    Read,
    /// Write own project's telemetry and tables; no queries.
    Ingest,
    /// `read` + `ingest`.
    ReadWrite,
    /// All projects; maintenance.
    Admin,
}

impl Role {
    /// May run queries.
    pub fn can_read(self) -> bool {
        matches!(self, Role::Read | Role::ReadWrite | Role::Admin)
    }
    /// May ingest.
    pub fn can_write(self) -> bool {
        matches!(self, Role::Ingest | Role::ReadWrite | Role::Admin)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "ingest" | "write" => Ok(Role::Ingest),
            "read_write" | "read-write" | "readwrite" => Ok(Role::ReadWrite),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{other}': expected read, ingest, read_write or admin"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Ingest => "ingest",
            Role::ReadWrite => "read_write",
            Role::Admin => "admin",
        })
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Id of the token used (safe to log; not the secret).
    pub token_id: String,
    /// The caller's project; `None` only for admin tokens without a project.
    pub project_id: Option<String>,
    /// What the caller may do.
    pub role: Role,
}

impl Principal {
    /// The project whose data a tenant-scoped operation touches.
    pub fn project(&self) -> Result<&str> {
        self.project_id.as_deref().ok_or_else(|| {
            Error::InvalidArgument(
                "this admin token has no project; tenant tables need a project token".into(),
            )
        })
    }

    /// Admins see every project's telemetry.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Fails with `PermissionDenied` unless the role may query.
    pub fn require_read(&self) -> Result<()> {
        if self.role.can_read() {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "token role '{}' cannot run queries; use a read or read_write token",
                self.role
            )))
        }
    }

    /// Fails with `PermissionDenied` unless the role may ingest.
    pub fn require_write(&self) -> Result<()> {
        if self.role.can_write() {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "token role '{}' cannot write; use an ingest or read_write token",
                self.role
            )))
        }
    }
}
