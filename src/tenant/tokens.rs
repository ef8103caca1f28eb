//! Bearer tokens: a JSON file of salted SHA-256 hashes, edited by
//! `raindrop token …` and re-read by a running server whenever it changes,
//! so tokens can be created and revoked without a restart.
//!
//! A token is any secret string of at least [`MIN_TOKEN_LEN`] characters.
//! Its record is found by a short id (a hash prefix, so lookups do not scan
//! every salt), then the salted hash is compared in constant time.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Principal, Role, names};
use crate::error::{Error, Result};

/// Shortest accepted secret.
pub const MIN_TOKEN_LEN: usize = 16;

/// One stored token (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// Public id derived from the secret (safe to log and show).
    pub id: String,
    /// Project the token is bound to (`None` for project-less admin).
    pub project_id: Option<String>,
    /// Granted role.
    pub role: Role,
    /// Random salt, hex.
    pub salt: String,
    /// SHA-256(salt || secret), hex.
    pub hash: String,
    /// Free-text label.
    #[serde(default)]
    pub label: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

/// The id under which a secret's record is filed.
pub fn token_id(secret: &str) -> String {
    let digest = Sha256::digest(format!("raindrop-token-id:{secret}").as_bytes());
    hex::encode(&digest[..6])
}

fn salted_hash(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Generate a new random secret (256 bits, URL-safe).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("rd_{}", hex::encode(bytes))
}

fn read_file(path: &Path) -> Result<TokenFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            Error::InvalidArgument(format!("token file {} is not valid: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(e) => Err(e.into()),
    }
}

fn write_file(path: &Path, file: &TokenFile) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename, so a running server never reads a half-written file.
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let json = serde_json::to_vec_pretty(file).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(&tmp, json)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Add a token to the file at `path`; returns the record.
pub fn create_token(
    path: &Path,
    secret: &str,
    project_id: Option<&str>,
    role: Role,
    label: &str,
) -> Result<TokenRecord> {
    if secret.len() < MIN_TOKEN_LEN {
        return Err(Error::InvalidArgument(format!(
            "token must be at least {MIN_TOKEN_LEN} characters"
        )));
    }
    match (project_id, role) {
        (Some(p), _) => names::validate_project_id(p)?,
        (None, Role::Admin) => {}
        (None, _) => {
            return Err(Error::InvalidArgument(
                "--project is required for read, ingest and read_write tokens".into(),
            ));
        }
    }
    let mut file = read_file(path)?;
    let id = token_id(secret);
    if file.tokens.iter().any(|t| t.id == id) {
        return Err(Error::AlreadyExists(format!("token {id} exists already")));
    }
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let record = TokenRecord {
        id,
        project_id: project_id.map(str::to_owned),
        role,
        salt: hex::encode(salt),
        hash: hex::encode(salted_hash(&salt, secret)),
        label: label.to_owned(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
    file.tokens.push(record.clone());
    write_file(path, &file)?;
    Ok(record)
}

/// All token records in the file.
pub fn list_tokens(path: &Path) -> Result<Vec<TokenRecord>> {
    Ok(read_file(path)?.tokens)
}

/// Remove a token by id; errors if it is not there.
pub fn revoke_token(path: &Path, id: &str) -> Result<()> {
    let mut file = read_file(path)?;
    let before = file.tokens.len();
    file.tokens.retain(|t| t.id != id);
    if file.tokens.len() == before {
        return Err(Error::NotFound(format!("no token with id {id}")));
    }
    write_file(path, &file)
}

/// Authenticates secrets against the token file, reloading it when its
/// modification time changes.
#[derive(Debug)]
pub struct TokenStore {
    path: PathBuf,
    state: RwLock<(Option<FileStamp>, Vec<TokenRecord>)>,
}

/// Identity of one version of the token file. Edits replace the file
/// (write + rename), so the inode changes even when two edits land within
/// one mtime tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

impl TokenStore {
    /// Open the store (a missing file means no tokens yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let store = Self {
            path: path.into(),
            state: RwLock::new((None, vec![])),
        };
        store.reload_if_changed()?;
        Ok(store)
    }

    /// Path of the backing file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens currently loaded.
    pub fn len(&self) -> usize {
        self.state.read().expect("token lock").1.len()
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reload_if_changed(&self) -> Result<()> {
        let current = stamp(&self.path);
        if current.is_some() && self.state.read().expect("token lock").0 == current {
            return Ok(());
        }
        let tokens = read_file(&self.path)?.tokens;
        *self.state.write().expect("token lock") = (current, tokens);
        Ok(())
    }

    /// Map a secret to its principal.
    pub fn authenticate(&self, secret: &str) -> Result<Principal> {
        if let Err(e) = self.reload_if_changed() {
            // Keep serving with the last good set rather than locking everyone out.
            tracing::warn!(error = %e, "could not reload token file");
        }
        let id = token_id(secret);
        let state = self.state.read().expect("token lock");
        let record = state.1.iter().find(|t| t.id == id);
        let ok = record.is_some_and(|r| {
            let salt = hex::decode(&r.salt).unwrap_or_default();
            let want = hex::decode(&r.hash).unwrap_or_default();
            constant_time_eq(&salted_hash(&salt, secret), &want)
        });
        match record {
            Some(r) if ok => Ok(Principal {
                token_id: r.id.clone(),
                project_id: r.project_id.clone(),
                role: r.role,
            }),
            _ => Err(Error::Unauthenticated(
                "invalid token: it is unknown or was revoked".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let secret = generate_secret();
        let rec = create_token(&path, &secret, Some("acme"), Role::Read, "test").unwrap();
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(!raw.contains(&secret), "secret stored in clear");

        let store = TokenStore::open(&path).unwrap();
        let p = store.authenticate(&secret).unwrap();
        assert_eq!(p.project_id.as_deref(), Some("acme"));
        assert_eq!(p.role, Role::Read);
        assert!(store.authenticate("rd_wrong_secret_123456").is_err());
        assert!(create_token(&path, "short", Some("acme"), Role::Read, "").is_err());
        assert!(create_token(&path, &generate_secret(), Some("../x"), Role::Read, "").is_err());

        // The same store notices the revocation at once (new inode).
        revoke_token(&path, &rec.id).unwrap();
        assert!(store.authenticate(&secret).is_err());
    }
}
