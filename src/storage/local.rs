//! Local-filesystem warehouse: every object written is durable before
//! anything can reference it.
//!
//! Streamed writes (data files) are not synced one by one: closing one
//! records it as unsynced. A whole-object write (manifest, manifest list,
//! table metadata: what references data files) then makes itself and every
//! recorded file durable with one `syncfs(2)` per filesystem, instead of two
//! fsyncs (file and directory) per data file. A commit writes its manifest
//! after its data files, and the catalog pointer only after its metadata,
//! so everything a commit references is on disk before the commit is; a
//! `DoPut` is acknowledged after the commit. (`syncfs` also writes back
//! other dirty data on that filesystem: keep the data dir on a disk busy
//! writers do not share.)

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use iceberg::Result;
use iceberg::io::{FileMetadata, FileRead, FileWrite, LocalFsStorage, Storage};

use super::{AccessLog, Backend, ObjectInfo};

/// The local backend: iceberg's local storage for reads and deletes, our
/// own writers for the durability above.
#[derive(Debug, Default)]
pub struct LocalStore {
    log: Arc<AccessLog>,
    unsynced: Arc<Unsynced>,
    inner: LocalFsStorage,
}

impl LocalStore {
    /// A local backend counting its syncs in `log`.
    pub fn new(log: Arc<AccessLog>) -> Self {
        Self {
            log,
            ..Self::default()
        }
    }
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
impl Backend for LocalStore {
    async fn exists(&self, location: &str) -> Result<bool> {
        self.inner.exists(location).await
    }

    async fn metadata(&self, location: &str) -> Result<FileMetadata> {
        self.inner.metadata(location).await
    }

    async fn read(&self, location: &str) -> Result<Bytes> {
        self.inner.read(location).await
    }

    async fn reader(&self, location: &str) -> Result<Box<dyn FileRead>> {
        self.inner.reader(location).await
    }

    async fn write(&self, location: &str, bs: Bytes) -> Result<()> {
        self.inner.write(location, bs).await?;
        let synced = self.unsynced.sync_all(&local_path(location))?;
        self.log.add_syncs(synced);
        Ok(())
    }

    async fn writer(&self, location: &str) -> Result<Box<dyn FileWrite>> {
        let local = local_path(location);
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

    async fn delete(&self, location: &str) -> Result<()> {
        self.inner.delete(location).await
    }

    async fn delete_prefix(&self, location: &str) -> Result<()> {
        self.inner.delete_prefix(location).await
    }

    async fn delete_stream(&self, locations: BoxStream<'static, String>) -> Result<()> {
        self.inner.delete_stream(locations).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = local_path(prefix);
        tokio::task::spawn_blocking(move || {
            let mut out = vec![];
            walk(&root, &mut out).map_err(|e| io_error("list", &root, e))?;
            Ok(out)
        })
        .await
        .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()))?
    }

    async fn probe(&self, location: &str) -> Result<()> {
        let dir = local_path(location);
        tokio::fs::metadata(&dir)
            .await
            .map(|_| ())
            .map_err(|e| io_error("stat", &dir, e))
    }
}

/// Every file under `dir`, as `file://` locations (a missing directory is
/// empty: a table with no data yet).
fn walk(dir: &Path, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        // A file deleted while the directory is read (a commit deleting an
        // old `metadata.json`) is gone, as if listed a moment later: not
        // an error. Expiry's sweep failed on it in a 30-minute soak.
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            walk(&entry.path(), out)?;
        } else {
            out.push(ObjectInfo {
                location: format!("file://{}", entry.path().display()),
                size: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(storage: &LocalStore) -> Vec<PathBuf> {
        let map = storage.unsynced.0.lock().unwrap();
        map.values().cloned().collect()
    }

    #[tokio::test]
    async fn streamed_files_wait_for_the_next_whole_object_write() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStore::default();
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
