//! Storage wrapper that can record every object read.
//!
//! All table I/O goes through iceberg's `FileIO`; wrapping its storage is
//! the one place that sees every metadata file, manifest and data file a
//! query opens. Recording is off by default (it costs a lock per read);
//! the isolation tests switch it on to prove that a tenant's queries open
//! no data file outside `project_id=<own>/`. Every read is also traced at
//! `trace` level (`RAINDROP_LOG=raindrop::catalog::audit=trace`).

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
        self.inner.write(path, bs).await
    }

    async fn writer(&self, path: &str) -> Result<Box<dyn FileWrite>> {
        self.inner.writer(path).await
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
