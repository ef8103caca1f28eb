//! Which storage and catalog the suite runs on.
//!
//! By default each test server uses the embedded setup (SQLite catalog,
//! local warehouse) in its temp dir. `scripts/test.sh` runs the suite a
//! second time with `RAINDROP_TEST_BACKEND=s3pg`, against a real S3 server
//! (s3s-fs) and a real PostgreSQL that `scripts/services.sh` started:
//!
//! - `RAINDROP_TEST_S3_ENDPOINT`, `RAINDROP_TEST_S3_BUCKET`: the store;
//!   credentials and region come from the standard `AWS_*` variables.
//! - `RAINDROP_TEST_S3_ROOT`: the directory s3s-fs keeps objects in, one
//!   file per object, so storage-level checks read what the store holds.
//! - `RAINDROP_TEST_PG_URI`: the PostgreSQL server (its `raindrop`
//!   database), and `RAINDROP_TEST_PSQL` its `psql`.
//!
//! Every server then gets its own bucket prefix and catalog database,
//! named after its temp dir, so tests sharing one store and one PostgreSQL
//! never see each other's tables, and a restarted server finds its own.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use raindrop::config::StorageConfig;
use raindrop::storage::S3Config;

/// The S3 + PostgreSQL backend, when configured.
#[derive(Debug)]
pub struct S3Pg {
    pub endpoint: String,
    pub bucket: String,
    pub root: PathBuf,
    pub pg_uri: String,
    pub psql: String,
}

/// The configured S3 + PostgreSQL backend, if the environment names one.
pub fn s3pg() -> Option<&'static S3Pg> {
    static BACKEND: OnceLock<Option<S3Pg>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            if std::env::var("RAINDROP_TEST_BACKEND").ok()? != "s3pg" {
                return None;
            }
            let var = |k: &str| {
                std::env::var(k)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| {
                        panic!("{k} unset: run the S3 suite through scripts/test.sh")
                    })
            };
            Some(S3Pg {
                endpoint: var("RAINDROP_TEST_S3_ENDPOINT"),
                bucket: var("RAINDROP_TEST_S3_BUCKET"),
                root: var("RAINDROP_TEST_S3_ROOT").into(),
                pg_uri: var("RAINDROP_TEST_PG_URI"),
                psql: var("RAINDROP_TEST_PSQL"),
            })
        })
        .as_ref()
}

/// A server's own name in the shared bucket and database: its temp dir's
/// name, made a valid identifier.
fn server_id(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy();
    let id: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("t{}", id.to_ascii_lowercase())
}

/// The URI of database `name` on the suite's PostgreSQL, created if
/// missing. (Concurrent `CREATE DATABASE`s can collide on the template
/// database: retried.)
fn database(b: &S3Pg, name: &str) -> String {
    let (server, _) = b.pg_uri.rsplit_once('/').expect("postgres://…/db");
    for attempt in 0.. {
        let out = std::process::Command::new(&b.psql)
            .arg(&b.pg_uri)
            .args(["-qc", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("run psql");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("already exists") {
            break;
        }
        assert!(attempt < 20, "CREATE DATABASE {name}: {stderr}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    format!("{server}/{name}")
}

/// Point `cfg` (rooted at `dir`) at the suite's backend.
pub fn use_backend(cfg: &mut StorageConfig, dir: &Path) {
    let Some(b) = s3pg() else {
        return;
    };
    let id = server_id(dir);
    cfg.warehouse = Some(format!("s3://{}/{id}", b.bucket));
    cfg.catalog_uri = Some(database(b, &id));
    cfg.s3 = S3Config {
        endpoint: Some(b.endpoint.clone()),
        region: std::env::var("AWS_REGION").ok(),
        path_style: true,
        access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
        secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
        ..S3Config::default()
    };
}

/// The same for a `raindrop` command line (credentials and region come
/// from the inherited `AWS_*` environment).
pub fn backend_args(dir: &Path) -> Vec<String> {
    let Some(b) = s3pg() else {
        return vec![];
    };
    let id = server_id(dir);
    vec![
        "--warehouse".into(),
        format!("s3://{}/{id}", b.bucket),
        "--catalog-uri".into(),
        database(b, &id),
        "--s3-endpoint".into(),
        b.endpoint.clone(),
        "--s3-path-style".into(),
    ]
}

/// Where a server rooted at `dir` on the suite's backend reads tokens.
pub fn token_source(dir: &Path) -> raindrop::tenant::tokens::TokenSource {
    let mut cfg = raindrop::config::ServeConfig::in_dir(dir);
    use_backend(&mut cfg.storage, dir);
    cfg.token_source()
}

/// The catalog flags of `raindrop token …` for a server rooted at `dir`.
pub fn token_args(dir: &Path) -> Vec<String> {
    match s3pg() {
        Some(b) => vec!["--catalog-uri".into(), database(b, &server_id(dir))],
        None => vec![],
    }
}

/// A storage config for `dir` on the suite's backend.
pub fn storage_config(dir: &Path) -> StorageConfig {
    let mut cfg = StorageConfig::in_dir(dir);
    use_backend(&mut cfg, dir);
    cfg
}

/// Where the objects of the warehouse rooted at `dir` are, as local
/// files: the warehouse itself, or the S3 server's copy of the bucket
/// prefix. Storage-level checks (which files exist, where) read here.
pub fn warehouse_files(dir: &Path) -> PathBuf {
    match s3pg() {
        Some(b) => b.root.join(&b.bucket).join(server_id(dir)),
        None => dir.join("warehouse"),
    }
}
