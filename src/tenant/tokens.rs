//! Bearer tokens: a JSON file of salted SHA-256 hashes, edited by
//! `raindrop token …` and re-read by a running server whenever it changes,
//! so tokens can be created and revoked without a restart.
//!
//! A token is any secret string of at least [`MIN_TOKEN_LEN`] characters.
//! Its record is found by a short id, then the salted hash is compared in
//! constant time. The id is an HMAC of the secret under a server key kept
//! in its own file beside the token file ([`key_path`]): a leaked token
//! file alone gives no shortcut for guessing user-chosen secrets, since
//! every guess must also beat the per-token salt. Records written before
//! the key existed carry an unkeyed id and still authenticate; re-create
//! them to drop it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::access;
pub use super::token_source::{TokenSource, create, list, revoke};
use super::token_table::TokenTable;
use super::{Principal, Role, names};
use crate::error::{Error, Result};

/// Name of the token file inside a data directory.
pub const FILE_NAME: &str = "tokens.json";

/// Shortest accepted secret.
pub const MIN_TOKEN_LEN: usize = 16;

/// One stored token (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// Public id: a keyed hash of the secret (safe to log and show).
    pub id: String,
    /// Whether `id` is keyed ([`key_path`]); `false` for records written
    /// before the key existed, whose id is an unkeyed SHA-256 prefix.
    #[serde(default)]
    pub keyed_id: bool,
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

/// The server key file beside the token file `path` (`tokens.key`).
pub fn key_path(path: &Path) -> PathBuf {
    path.with_extension("key")
}

/// The key of lookup ids, if the token file has one yet.
fn read_key(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(key_path(path)) {
        Ok(text) => hex::decode(text.trim()).map(Some).map_err(|e| {
            Error::InvalidArgument(format!(
                "{} is not a hex key: {e}",
                key_path(path).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The key of lookup ids, created (256 random bits, mode 0600) if missing.
fn ensure_key(path: &Path) -> Result<Vec<u8>> {
    if let Some(key) = read_key(path)? {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let tmp = write_private_tmp(&key_path(path), hex::encode(key).as_bytes())?;
    // Link, not rename: a key another process created meanwhile is kept.
    let linked = std::fs::hard_link(&tmp, key_path(path));
    std::fs::remove_file(&tmp).ok();
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    read_key(path)?.ok_or_else(|| Error::Internal("token key vanished".into()))
}

/// The id under which a secret's record is filed: HMAC-SHA256 under the
/// server key, first 6 bytes.
fn keyed_id(key: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(secret.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..6])
}

/// The unkeyed id of records written before the server key existed.
fn legacy_id(secret: &str) -> String {
    let digest = Sha256::digest(format!("raindrop-token-id:{secret}").as_bytes());
    hex::encode(&digest[..6])
}

/// The id of `secret`'s record in the token file at `path`, if it has one
/// (e.g. to revoke a token whose secret is at hand).
pub fn find_id(path: &Path, secret: &str) -> Result<Option<String>> {
    let key = read_key(path)?;
    let tokens = read_file(path)?.tokens;
    Ok(lookup(&tokens, key.as_deref(), secret).map(|r| r.id.clone()))
}

/// The record of `secret`: found by its id (keyed, or legacy for old
/// records), then confirmed by its salted hash in constant time.
fn lookup<'a>(
    tokens: &'a [TokenRecord],
    key: Option<&[u8]>,
    secret: &str,
) -> Option<&'a TokenRecord> {
    // Each id is hashed only if some record uses that kind (every call
    // authenticates; files without legacy records skip the second hash).
    let keyed = key.map(|k| keyed_id(k, secret));
    let legacy = tokens
        .iter()
        .any(|r| !r.keyed_id)
        .then(|| legacy_id(secret));
    let record = tokens.iter().find(|r| match r.keyed_id {
        true => keyed.as_deref() == Some(r.id.as_str()),
        false => legacy.as_deref() == Some(r.id.as_str()),
    })?;
    let salt = hex::decode(&record.salt).unwrap_or_default();
    let want = hex::decode(&record.hash).unwrap_or_default();
    bool::from(salted_hash(&salt, secret).ct_eq(want.as_slice())).then_some(record)
}

fn salted_hash(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(secret.as_bytes());
    h.finalize().into()
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
    let json = serde_json::to_vec_pretty(file).map_err(|e| Error::Internal(e.to_string()))?;
    let tmp = write_private_tmp(path, &json)?;
    // Rename, so a running server never reads a half-written file.
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Write `bytes` to a temporary file beside `path`, readable by the owner
/// only, and return its path.
fn write_private_tmp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tmp)
}

/// Add a token to the file at `path`; returns the record.
pub fn create_token(
    path: &Path,
    secret: &str,
    project_id: Option<&str>,
    role: Role,
    label: &str,
) -> Result<TokenRecord> {
    validate_new(secret, project_id, role)?;
    let mut file = read_file(path)?;
    let key = ensure_key(path)?;
    let record = new_record(&file.tokens, &key, secret, project_id, role, label)?;
    file.tokens.push(record.clone());
    write_file(path, &file)?;
    Ok(record)
}

/// Refuse short secrets, bad project ids, and project-less non-admins.
pub(super) fn validate_new(secret: &str, project_id: Option<&str>, role: Role) -> Result<()> {
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
    Ok(())
}

/// The record of a new token, unless `existing` has one with this secret.
pub(super) fn new_record(
    existing: &[TokenRecord],
    key: &[u8],
    secret: &str,
    project_id: Option<&str>,
    role: Role,
    label: &str,
) -> Result<TokenRecord> {
    if lookup(existing, Some(key), secret).is_some() {
        return Err(Error::AlreadyExists(
            "a token with this secret exists already".into(),
        ));
    }
    let id = keyed_id(key, secret);
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let record = TokenRecord {
        id,
        keyed_id: true,
        project_id: project_id.map(str::to_owned),
        role,
        salt: hex::encode(salt),
        hash: hex::encode(salted_hash(&salt, secret)),
        label: label.to_owned(),
        created_at: chrono::Utc::now().to_rfc3339(),
    };
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

/// How often a server re-reads tokens kept in the catalog database: a
/// token created or revoked on any node takes effect everywhere within it.
pub const CATALOG_REFRESH: Duration = Duration::from_secs(2);

/// Authenticates secrets against the token file, reloading it when its
/// modification time changes, or against the catalog database's records,
/// re-read every [`CATALOG_REFRESH`].
#[derive(Debug)]
pub struct TokenStore {
    source: TokenSource,
    state: Arc<RwLock<Loaded>>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TokenStore {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

/// One version of the token file and the key of its ids.
#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<FileStamp>,
    key: Option<Vec<u8>>,
    tokens: Vec<TokenRecord>,
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
    /// Open a token file (a missing file means no tokens yet).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let store = Self {
            source: TokenSource::File(path.into()),
            state: Arc::default(),
            refresher: None,
        };
        store.reload_if_changed()?;
        Ok(store)
    }

    /// Open the tokens of `source`; for the catalog database, keep
    /// re-reading them in the background.
    pub async fn open_source(source: TokenSource) -> Result<Self> {
        let (uri, catalog_name) = match &source {
            TokenSource::File(path) => return Self::open(path.clone()),
            TokenSource::Catalog { uri, catalog_name } => (uri, catalog_name),
        };
        let table = TokenTable::open(uri, catalog_name).await?;
        let state = Arc::new(RwLock::new(load_table(&table).await?));
        let shared = state.clone();
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(CATALOG_REFRESH).await;
                match load_table(&table).await {
                    Ok(loaded) => *shared.write().expect("token lock") = loaded,
                    // Keep serving with the last good set rather than
                    // locking everyone out while the database is away.
                    Err(e) => tracing::warn!(error = %e, "could not re-read tokens"),
                }
            }
        });
        Ok(Self {
            source,
            state,
            refresher: Some(refresher),
        })
    }

    /// Where the tokens are read from.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// Number of tokens currently loaded.
    pub fn len(&self) -> usize {
        self.state.read().expect("token lock").tokens.len()
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn reload_if_changed(&self) -> Result<()> {
        let TokenSource::File(path) = &self.source else {
            return Ok(());
        };
        let current = stamp(path);
        if current.is_some() && self.state.read().expect("token lock").stamp == current {
            return Ok(());
        }
        // The key is written before the first keyed record, so a file
        // version that has keyed records finds its key.
        let key = read_key(path)?;
        let tokens = read_file(path)?.tokens;
        let legacy = tokens.iter().filter(|t| !t.keyed_id).count();
        if legacy > 0 {
            tracing::warn!(
                legacy,
                file = %path.display(),
                "tokens created before keyed ids have an id derived from the secret alone; re-create them"
            );
        }
        *self.state.write().expect("token lock") = Loaded {
            stamp: current,
            key,
            tokens,
        };
        Ok(())
    }

    /// Map a secret, or an access token issued by [`Self::issue_access`],
    /// to its principal.
    pub fn authenticate(&self, secret: &str) -> Result<Principal> {
        if let Err(e) = self.reload_if_changed() {
            // Keep serving with the last good set rather than locking everyone out.
            tracing::warn!(error = %e, "could not reload token file");
        }
        let state = self.state.read().expect("token lock");
        let record = match secret.strip_prefix(access::PREFIX) {
            Some(access) => access::record(state.key.as_deref(), &state.tokens, access)?,
            None => lookup(&state.tokens, state.key.as_deref(), secret),
        };
        match record {
            Some(r) => Ok(Principal {
                token_id: r.id.clone(),
                project_id: r.project_id.clone(),
                role: r.role,
            }),
            _ => Err(Error::Unauthenticated(
                "invalid token: it is unknown or was revoked".into(),
            )),
        }
    }

    /// A short-lived access token standing for `secret`'s token: what the
    /// REST catalog's OAuth endpoint hands out, so the long-lived secret
    /// crosses the wire once and not on every call. It names the token id
    /// and an expiry under an HMAC of the token key; revoking the token
    /// revokes it at once. Without a key (a token file from before keyed
    /// ids) the secret itself is returned.
    pub fn issue_access(&self, secret: &str, ttl: Duration) -> Result<(String, Principal)> {
        let principal = self.authenticate(secret)?;
        if secret.starts_with(access::PREFIX) {
            return Ok((secret.to_string(), principal));
        }
        let state = self.state.read().expect("token lock");
        let Some(key) = state.key.as_deref() else {
            return Ok((secret.to_string(), principal));
        };
        Ok((access::issue(key, &principal.token_id, ttl), principal))
    }
}

/// The records and key in the catalog database, as one loaded version.
async fn load_table(table: &TokenTable) -> Result<Loaded> {
    Ok(Loaded {
        stamp: None,
        key: table.key().await?,
        tokens: table.records().await?,
    })
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

    #[test]
    fn ids_are_keyed_and_legacy_records_still_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let secret = "my-own-secret-0123456789";
        let rec = create_token(&path, secret, Some("acme"), Role::Read, "").unwrap();
        // Not derivable from the secret without the key file.
        assert!(rec.keyed_id);
        assert_ne!(rec.id, legacy_id(secret));
        let other = tempfile::tempdir().unwrap();
        let elsewhere = create_token(&other.path().join(FILE_NAME), secret, None, Role::Admin, "");
        assert_ne!(elsewhere.unwrap().id, rec.id, "each key gives other ids");
        assert!(matches!(
            create_token(&path, secret, Some("acme"), Role::Read, ""),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(find_id(&path, secret).unwrap(), Some(rec.id.clone()));

        // A record written before keyed ids (no `keyed_id` field).
        let old_secret = "an-old-token-secret-42";
        let salt = [7u8; 16];
        let mut file = read_file(&path).unwrap();
        let mut legacy: serde_json::Value = serde_json::to_value(TokenRecord {
            id: legacy_id(old_secret),
            keyed_id: false,
            project_id: Some("globex".into()),
            role: Role::ReadWrite,
            salt: hex::encode(salt),
            hash: hex::encode(salted_hash(&salt, old_secret)),
            label: String::new(),
            created_at: String::new(),
        })
        .unwrap();
        legacy.as_object_mut().unwrap().remove("keyed_id");
        file.tokens.push(serde_json::from_value(legacy).unwrap());
        write_file(&path, &file).unwrap();
        let store = TokenStore::open(&path).unwrap();
        assert_eq!(
            store
                .authenticate(old_secret)
                .unwrap()
                .project_id
                .as_deref(),
            Some("globex")
        );
        assert_eq!(
            store.authenticate(secret).unwrap().project_id.as_deref(),
            Some("acme")
        );
        // Without the key, keyed records match nothing.
        std::fs::remove_file(key_path(&path)).unwrap();
        write_file(&path, &read_file(&path).unwrap()).unwrap();
        assert!(store.authenticate(secret).is_err());
    }
}
