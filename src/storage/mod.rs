//! Where table files live: a local directory ([`local`]) or an
//! S3-compatible bucket ([`s3`]).
//!
//! All table I/O goes through iceberg's `FileIO`, whose storage is
//! [`TableStorage`]: the one place that sees every metadata file, manifest
//! and data file, on either backend. It records reads in the [`AccessLog`]
//! and dispatches to the warehouse's backend. Maintenance lists and
//! deletes files through [`Store`], the same backend.

pub mod audit;
pub mod local;
pub mod s3;
pub mod signer;
pub mod vend;

use std::borrow::Cow;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use audit::AccessLog;
pub use s3::S3Config;

/// One object found by [`Store::list`].
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Full location, as table metadata references it (`file://…`, `s3://…`).
    pub location: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification (upload completion on S3).
    pub modified: SystemTime,
}

/// What a warehouse backend does: iceberg's storage operations, plus a
/// listing for orphan cleanup.
#[async_trait]
pub trait Backend: Debug + Send + Sync {
    /// Whether the object exists.
    async fn exists(&self, location: &str) -> iceberg::Result<bool>;
    /// Size of the object.
    async fn metadata(&self, location: &str) -> iceberg::Result<FileMetadata>;
    /// The whole object.
    async fn read(&self, location: &str) -> iceberg::Result<Bytes>;
    /// Range reads of the object.
    async fn reader(&self, location: &str) -> iceberg::Result<Box<dyn FileRead>>;
    /// A whole-object write (metadata, manifests): durable when it returns,
    /// together with every streamed file closed before it.
    async fn write(&self, location: &str, bs: Bytes) -> iceberg::Result<()>;
    /// A streamed write (data files).
    async fn writer(&self, location: &str) -> iceberg::Result<Box<dyn FileWrite>>;
    /// Delete one object (absent is fine).
    async fn delete(&self, location: &str) -> iceberg::Result<()>;
    /// Delete everything under a location.
    async fn delete_prefix(&self, location: &str) -> iceberg::Result<()>;
    /// Delete many objects.
    async fn delete_stream(&self, locations: BoxStream<'static, String>) -> iceberg::Result<()>;
    /// Every object under a location, recursively.
    async fn list(&self, prefix: &str) -> iceberg::Result<Vec<ObjectInfo>>;
    /// A cheap request that succeeds when the store answers at `location`
    /// (readiness checks).
    async fn probe(&self, location: &str) -> iceberg::Result<()>;
}

/// The warehouse's backend, shared by the catalog's `FileIO` and by
/// maintenance.
pub type Store = Arc<dyn Backend>;

/// Where the warehouse is, parsed from `--warehouse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarehouseLocation {
    /// A local directory (`file:///abs/dir` or `/abs/dir`).
    Local(PathBuf),
    /// `s3://bucket/prefix`.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
    },
}

impl WarehouseLocation {
    /// Parse a warehouse location; relative local paths are made absolute.
    pub fn parse(location: &str) -> Result<Self> {
        let location = location.trim_end_matches('/');
        if let Some(rest) = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "warehouse {location}: no bucket; expected s3://bucket/prefix"
                )));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = location
            .strip_prefix("file://")
            .or_else(|| location.strip_prefix("file:"))
            .unwrap_or(location);
        if path.contains("://") {
            return Err(Error::Unsupported(format!(
                "warehouse {location}: supported are local directories (file://…) and S3-compatible buckets (s3://bucket/prefix)"
            )));
        }
        let path = PathBuf::from(path);
        let path = if path.is_absolute() {
            path
        } else {
            std::env::current_dir()?.join(path)
        };
        Ok(Self::Local(normalize(&path)))
    }

    /// The location as written into table metadata.
    pub fn uri(&self) -> String {
        match self {
            Self::Local(dir) => format!("file://{}", dir.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Self::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// `a/./b/../c` → `a/c`, without touching the filesystem: locations in
/// table metadata must be plain absolute paths that every reader opens.
fn normalize(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Open the backend of a warehouse (for S3: connect and check access).
pub async fn connect(
    location: &WarehouseLocation,
    s3: &S3Config,
    log: Arc<AccessLog>,
) -> Result<Store> {
    Ok(match location {
        WarehouseLocation::Local(dir) => {
            std::fs::create_dir_all(dir)?;
            Arc::new(local::LocalStore::new(log))
        }
        WarehouseLocation::S3 { bucket, prefix } => {
            Arc::new(s3::S3Store::connect(s3, bucket, prefix).await?)
        }
    })
}

/// A location's path inside its store (`file:///a/b` → `/a/b`,
/// `s3://bucket/a/b` → `a/b`): what two spellings of one object share.
/// Local paths are normalised (`/a/./b` → `/a/b`): tables made by an older
/// Raindrop reference files under such a spelling, and maintenance must
/// not mistake them for orphans once the table's location is normalised.
pub fn object_key(location: &str) -> Cow<'_, str> {
    let path = if let Some(rest) = location.strip_prefix("file://") {
        rest
    } else if let Some(rest) = location.strip_prefix("file:") {
        rest
    } else if let Some((_, rest)) = location.split_once("://") {
        // Object-store keys are literal: `a/./b` is its own key there.
        return Cow::Borrowed(rest.split_once('/').map_or("", |(_, key)| key));
    } else {
        location
    };
    if path.contains("/.") || path.contains("//") {
        Cow::Owned(
            normalize(std::path::Path::new(path))
                .to_string_lossy()
                .into_owned(),
        )
    } else {
        Cow::Borrowed(path)
    }
}

/// `result`, counted in the storage metrics under `op`.
fn counted<T>(op: &'static str, result: iceberg::Result<T>) -> iceberg::Result<T> {
    crate::metrics::metrics().storage(op, &result);
    result
}

/// iceberg's view of the warehouse: every read recorded, every operation
/// sent to the backend.
///
/// `typetag` requires storages to be serialisable; Raindrop never ships a
/// `FileIO` to another process, so the backend is not serialised. A
/// deserialised copy has none and fails each call with a clear error.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableStorage {
    #[serde(skip)]
    log: Arc<AccessLog>,
    #[serde(skip)]
    backend: Option<Store>,
}

impl TableStorage {
    fn backend(&self) -> iceberg::Result<&Store> {
        self.backend.as_ref().ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::FeatureUnsupported,
                "a deserialised Raindrop storage has no backend",
            )
        })
    }
}

#[async_trait]
#[typetag::serde]
impl Storage for TableStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        counted("stat", self.backend()?.exists(path).await)
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        counted("stat", self.backend()?.metadata(path).await)
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        self.log.record(path);
        counted("read", self.backend()?.read(path).await)
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        self.log.record(path);
        counted("open", self.backend()?.reader(path).await)
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        counted("write", self.backend()?.write(path, bs).await)
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        counted("create", self.backend()?.writer(path).await)
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        counted("delete", self.backend()?.delete(path).await)
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        counted("delete", self.backend()?.delete_prefix(path).await)
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        counted("delete", self.backend()?.delete_stream(paths).await)
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Builds [`TableStorage`] over one backend and one [`AccessLog`]: every
/// table's `FileIO` shares them (the catalog's `s3.*` properties are not
/// read; the backend was configured from Raindrop's flags).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableStorageFactory {
    #[serde(skip)]
    log: Arc<AccessLog>,
    #[serde(skip)]
    backend: Option<Store>,
}

impl TableStorageFactory {
    /// A factory whose storages use `backend` and report to `log`.
    pub fn new(backend: Store, log: Arc<AccessLog>) -> Self {
        Self {
            log,
            backend: Some(backend),
        }
    }
}

#[typetag::serde]
impl StorageFactory for TableStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(TableStorage {
            log: self.log.clone(),
            backend: self.backend.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warehouse_locations_parse() {
        assert_eq!(
            WarehouseLocation::parse("s3://bkt/a/b/").unwrap(),
            WarehouseLocation::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        let root = WarehouseLocation::parse("s3://bkt").unwrap();
        assert_eq!(root.uri(), "s3://bkt");
        assert_eq!(
            WarehouseLocation::parse("file:///x/./y/../z").unwrap(),
            WarehouseLocation::Local("/x/z".into())
        );
        let rel = WarehouseLocation::parse("./here/wh").unwrap();
        let WarehouseLocation::Local(dir) = &rel else {
            panic!("{rel:?}")
        };
        assert!(dir.is_absolute() && !dir.to_string_lossy().contains("/./"));
        assert!(WarehouseLocation::parse("s3:///x").is_err());
        let err = WarehouseLocation::parse("gs://b/x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3://bucket/prefix"), "{err}");
    }

    #[test]
    fn object_keys_ignore_the_spelling() {
        assert_eq!(object_key("file:///a/b.parquet"), "/a/b.parquet");
        assert_eq!(object_key("file:/a/b.parquet"), "/a/b.parquet");
        assert_eq!(object_key("/a/b.parquet"), "/a/b.parquet");
        assert_eq!(object_key("s3://bkt/a/b.parquet"), "a/b.parquet");
        assert_eq!(object_key("s3a://bkt/a/b.parquet"), "a/b.parquet");
        assert_eq!(object_key("file:///a/./w/../b.parquet"), "/a/b.parquet");
        assert_eq!(object_key("file:///a//b/.hidden"), "/a/b/.hidden");
        assert_eq!(object_key("s3://bkt/a/./b.parquet"), "a/./b.parquet");
    }
}
