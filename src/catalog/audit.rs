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
//! - **Writes** are made durable before anything can reference them.
//!   Streamed writes (data files) are not synced one by one: closing one
//!   records it as unsynced. A whole-object write (manifest, manifest list,
//!   table metadata: what references data files) then makes itself and
//!   every recorded file durable with one `syncfs(2)` per filesystem,
//!   instead of two fsyncs (file and directory) per data file. A commit
//!   writes its manifest after its data files, and the catalog pointer only
//!   after its metadata, so everything a commit references is on disk
//!   before the commit is; a `DoPut` is acknowledged after the commit.
//!   (`syncfs` also writes back other dirty data on that filesystem: keep
//!   the data dir on a disk busy writers do not share.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Paths read through the wrapped storage, while recording is on, and the
/// number of filesystem syncs it ran.
#[derive(Debug, Default)]
pub struct AccessLog {
    enabled: AtomicBool,
    reads: Mutex<Vec<String>>,
    syncs: AtomicU64,
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

    /// `syncfs` calls made so far (each covers every file closed before it).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
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
    #[serde(skip)]
    unsynced: Arc<Unsynced>,
    inner: LocalFsStorage,
}

/// Files closed but not yet synced, by filesystem (device id): one path on
/// each device is enough for `syncfs`.
#[derive(Debug, Default)]
struct Unsynced(Mutex<std::collections::HashMap<u64, PathBuf>>);

impl Unsynced {
    fn record(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path)
            .map_err(|e| io_error("stat", path, e))?
            .dev();
        self.0
            .lock()
            .expect("unsynced lock")
            .insert(dev, path.to_path_buf());
        Ok(())
    }

    /// Make `written` and every recorded file durable: one `syncfs` per
    /// filesystem. A file recorded meanwhile is covered by whichever sync
    /// starts after its close, and a writer referencing it runs one.
    fn sync_all(&self, written: &Path) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let mut targets = std::mem::take(&mut *self.0.lock().expect("unsynced lock"));
        let dev = std::fs::metadata(written)
            .map_err(|e| io_error("stat", written, e))?
            .dev();
        targets.insert(dev, written.to_path_buf());
        let mut synced = 0;
        for path in targets.values() {
            // A recorded file may have been deleted since (uncommitted
            // files are); its directory is on the same filesystem.
            let target = if path.exists() {
                path.as_path()
            } else {
                match path.ancestors().skip(1).find(|d| d.exists()) {
                    Some(d) => d,
                    None => continue,
                }
            };
            syncfs(target)?;
            synced += 1;
        }
        Ok(synced)
    }
}

/// `syncfs(2)` on the filesystem holding `path`: writes back its dirty
/// data and metadata (directory entries included) and flushes the device.
fn syncfs(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).map_err(|e| io_error("open", path, e))?;
    // SAFETY: `file` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io_error("syncfs", path, std::io::Error::last_os_error()));
    }
    Ok(())
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
        self.inner.write(path, bs).await?;
        let synced = self.unsynced.sync_all(&local_path(path))?;
        self.log.syncs.fetch_add(synced, Ordering::Relaxed);
        Ok(())
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        let local = local_path(path);
        if let Some(dir) = local.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_error("create directory", dir, e))?;
        }
        let file = std::fs::File::create(&local).map_err(|e| io_error("create", &local, e))?;
        Ok(Box::new(DeferredWrite {
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            path: local,
            unsynced: self.unsynced.clone(),
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

fn io_error(what: &str, path: &Path, e: std::io::Error) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("failed to {what} {}: {e}", path.display()),
    )
}

/// A streamed write (data files): closing it flushes to the OS and records
/// the file as unsynced; the next whole-object write makes it durable.
struct DeferredWrite {
    file: Option<std::io::BufWriter<std::fs::File>>,
    path: PathBuf,
    unsynced: Arc<Unsynced>,
}

#[async_trait]
impl FileWrite for DeferredWrite {
    async fn write(&mut self, bs: Bytes) -> Result<()> {
        use std::io::Write;
        let file = self.file.as_mut().ok_or_else(|| closed(&self.path))?;
        file.write_all(&bs)
            .map_err(|e| io_error("write", &self.path, e))
    }

    async fn close(&mut self) -> Result<()> {
        let file = self.file.take().ok_or_else(|| closed(&self.path))?;
        file.into_inner()
            .map_err(|e| io_error("write", &self.path, e.into_error()))?;
        self.unsynced.record(&self.path)
    }
}

fn closed(path: &Path) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::DataInvalid,
        format!("{} is already closed", path.display()),
    )
}

/// Builds [`AuditedStorage`] sharing one [`AccessLog`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditedStorageFactory {
    #[serde(skip)]
    log: Arc<AccessLog>,
    #[serde(skip)]
    unsynced: Arc<Unsynced>,
}

impl AuditedStorageFactory {
    /// A factory whose storages report to `log`.
    pub fn new(log: Arc<AccessLog>) -> Self {
        Self {
            log,
            unsynced: Arc::default(),
        }
    }
}

#[typetag::serde]
impl StorageFactory for AuditedStorageFactory {
    fn build(&self, _config: &StorageConfig) -> Result<Arc<dyn Storage>> {
        Ok(Arc::new(AuditedStorage {
            log: self.log.clone(),
            unsynced: self.unsynced.clone(),
            inner: LocalFsStorage::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(storage: &AuditedStorage) -> Vec<PathBuf> {
        let map = storage.unsynced.0.lock().unwrap();
        map.values().cloned().collect()
    }

    #[tokio::test]
    async fn streamed_files_wait_for_the_next_whole_object_write() {
        let dir = tempfile::tempdir().unwrap();
        let storage = AuditedStorage::default();
        let data = dir.path().join("data/day=1/a.parquet");
        let location = format!("file://{}", data.display());
        let mut w = storage.writer(&location).await.unwrap();
        w.write(Bytes::from_static(b"rows")).await.unwrap();
        assert!(pending(&storage).is_empty(), "recorded only once closed");
        w.close().await.unwrap();
        assert_eq!(std::fs::read(&data).unwrap(), b"rows");
        assert_eq!(pending(&storage), vec![data.clone()]);
        assert!(w.write(Bytes::from_static(b"more")).await.is_err());

        // The manifest (or metadata) that references it syncs both.
        let manifest = dir.path().join("metadata/m.avro");
        std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
        let manifest = format!("file://{}", manifest.display());
        let write_manifest = || storage.write(&manifest, Bytes::from_static(b"refs"));
        assert_eq!(storage.log.syncs(), 0, "closing a data file does not sync");
        write_manifest().await.unwrap();
        assert!(pending(&storage).is_empty());
        // Both files are on one filesystem: one syncfs covers them.
        assert_eq!(storage.log.syncs(), 1);

        // A recorded file deleted before the sync (an uncommitted file)
        // does not fail the next write.
        let mut w = storage.writer(&location).await.unwrap();
        w.close().await.unwrap();
        std::fs::remove_file(&data).unwrap();
        write_manifest().await.unwrap();
        assert!(pending(&storage).is_empty());
        assert_eq!(storage.log.syncs(), 2);
    }
}
