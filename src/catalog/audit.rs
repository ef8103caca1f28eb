//! Local-filesystem storage wrapper: records every object read, and makes
//! every object written durable before the write returns.
//!
//! All table I/O goes through iceberg's `FileIO`; wrapping its storage is
//! the one place that sees every metadata file, manifest and data file.
//!
//! - **Reads** can be recorded. Recording is off by default (it costs a
//!   lock per read); the isolation tests switch it on to prove that a
//!   tenant's queries open no data file outside `project_id=<own>/`. Every
//!   read is also traced (`RAINDROP_LOG=raindrop::catalog::audit=trace`).
//! - **Writes** are fsynced with their directory entries. iceberg's local
//!   storage fsyncs streamed files (data files) but not whole-object writes
//!   (manifests, manifest lists, table metadata) nor any directory. Without
//!   this, a power loss after a commit could leave the catalog pointing at
//!   metadata that never reached the disk. A `DoPut` is acknowledged after
//!   the catalog commit, so everything it references is durable by then.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use iceberg::Result;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorage, OutputFile, Storage,
    StorageConfig, StorageFactory,
};
use serde::{Deserialize, Serialize};

/// Paths read through the wrapped storage, while recording is on.
#[derive(Debug, Default)]
pub struct AccessLog {
    enabled: AtomicBool,
    reads: Mutex<Vec<String>>,
}

impl AccessLog {
    /// Start recording (and forget earlier records).
    pub fn start(&self) {
        self.reads.lock().expect("access log").clear();
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Stop recording and return what was read since `start`.
    pub fn stop(&self) -> Vec<String> {
        self.enabled.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.reads.lock().expect("access log"))
    }

    fn record(&self, path: &str) {
        tracing::trace!(path, "storage read");
        if self.enabled.load(Ordering::Relaxed) {
            self.reads
                .lock()
                .expect("access log")
                .push(path.to_string());
        }
    }
}

/// Local-filesystem storage that reports reads to an [`AccessLog`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditedStorage {
    #[serde(skip)]
    log: Arc<AccessLog>,
    inner: LocalFsStorage,
}

#[async_trait]
#[typetag::serde]
impl Storage for AuditedStorage {
    async fn exists(&self, path: &str) -> Result<bool> {
        self.inner.exists(path).await
    }

    async fn metadata(&self, path: &str) -> Result<FileMetadata> {
        self.inner.metadata(path).await
    }

    async fn read(&self, path: &str) -> Result<Bytes> {
        self.log.record(path);
        self.inner.read(path).await
    }

    async fn reader(&self, path: &str) -> Result<Box<dyn FileRead>> {
        self.log.record(path);
        self.inner.reader(path).await
    }

    async fn write(&self, path: &str, bs: Bytes) -> Result<()> {
        let local = local_path(path);
        let new_dirs = missing_dirs(&local);
        self.inner.write(path, bs).await?;
        std::fs::File::open(&local)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error("sync", &local, e))?;
        sync_entries(&local, &new_dirs)
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let local = local_path(path);
        let new_dirs = missing_dirs(&local);
        Ok(Box::new(DurableWrite {
            inner: self.inner.writer(path).await?,
            path: local,
            new_dirs,
        }))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.inner.delete(path).await
    }

    async fn delete_prefix(&self, path: &str) -> Result<()> {
        self.inner.delete_prefix(path).await
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> Result<()> {
        self.inner.delete_stream(paths).await
    }

    fn new_input(&self, path: &str) -> Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// A file path from a `file://` location (as iceberg's local storage reads it).
fn local_path(location: &str) -> PathBuf {
    let rest = location
        .strip_prefix("file://")
        .or_else(|| location.strip_prefix("file:"))
        .unwrap_or(location);
    if rest.starts_with('/') {
        PathBuf::from(rest)
    } else {
        PathBuf::from(format!("/{rest}"))
    }
}

/// Ancestors of `path` that do not exist yet (the write will create them).
fn missing_dirs(path: &Path) -> Vec<PathBuf> {
    path.ancestors()
        .skip(1)
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect()
}

/// Make `path`'s directory entry durable, and those of the directories the
/// write created: fsync each directory that gained an entry.
fn sync_entries(path: &Path, new_dirs: &[PathBuf]) -> Result<()> {
    let mut dirs: Vec<&Path> = path.parent().into_iter().collect();
    dirs.extend(new_dirs.iter().filter_map(|d| d.parent()));
    dirs.dedup();
    for dir in dirs {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error("sync directory", dir, e))?;
    }
    Ok(())
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("failed to {what} {}: {e}", path.display()),
    )
}

/// A streamed write (data files) whose close also makes its directory
/// entries durable (the inner writer fsyncs the file itself).
struct DurableWrite {
    inner: Box<dyn FileWrite>,
    path: PathBuf,
    new_dirs: Vec<PathBuf>,
}

#[async_trait]
impl FileWrite for DurableWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        self.inner.write(bs).await
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await?;
        sync_entries(&self.path, &self.new_dirs)
    }
}

/// Builds [`AuditedStorage`] sharing one [`AccessLog`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditedStorageFactory {
    #[serde(skip)]
    log: Arc<AccessLog>,
}

impl AuditedStorageFactory {
    /// A factory whose storages report to `log`.
    pub fn new(log: Arc<AccessLog>) -> Self {
        Self { log }
    }
}

#[typetag::serde]
impl StorageFactory for AuditedStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(AuditedStorage {
            log: self.log.clone(),
            inner: LocalFsStorage::new(),
        }))
    }
}
