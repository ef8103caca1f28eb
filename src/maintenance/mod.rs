//! Table maintenance. For now: finding (and optionally deleting) orphan
//! data files — files a writer wrote but never committed, e.g. because the
//! process died between writing Parquet and the catalog commit. Readers
//! never see them (no snapshot references them); they only cost disk.

pub mod compact;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use iceberg::table::Table;

use crate::error::{Error, Result};

/// What an orphan scan found.
#[derive(Debug, Clone, Default)]
pub struct OrphanReport {
    /// Data files on disk that no snapshot references (and old enough).
    pub orphans: Vec<PathBuf>,
    /// Data files referenced by some snapshot.
    pub referenced: usize,
    /// Data files found on disk.
    pub on_disk: usize,
}

fn local_path(location: &str) -> PathBuf {
    PathBuf::from(location.strip_prefix("file://").unwrap_or(location))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// Data files under `table`'s `data/` directory that no snapshot references
/// and that were last modified at least `min_age` ago (so files of commits
/// still in flight — on this node or another — are never reported).
pub async fn find_orphan_files(table: &Table, min_age: Duration) -> Result<OrphanReport> {
    let location = table.metadata().location();
    if !location.starts_with("file:") && !location.starts_with('/') {
        return Err(Error::Unsupported(
            "orphan scans support local warehouses only".into(),
        ));
    }
    // Fast appends make every snapshot list all earlier manifests: read
    // each manifest once, not once per snapshot that lists it.
    let mut manifests = HashSet::new();
    let mut referenced = HashSet::new();
    for snapshot in table.metadata().snapshots() {
        let list = table.manifest_list_reader(snapshot).load().await?;
        for manifest_file in list.entries() {
            if !manifests.insert(manifest_file.manifest_path.clone()) {
                continue;
            }
            let manifest = manifest_file.load_manifest(table.file_io()).await?;
            for entry in manifest.entries() {
                referenced.insert(local_path(entry.file_path()));
            }
        }
    }
    let mut on_disk = vec![];
    walk(&local_path(location).join("data"), &mut on_disk)?;
    let now = SystemTime::now();
    let orphans = on_disk
        .iter()
        .filter(|p| !referenced.contains(*p))
        .filter(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() >= min_age)
                .unwrap_or(false)
        })
        .cloned()
        .collect();
    Ok(OrphanReport {
        orphans,
        referenced: referenced.len(),
        on_disk: on_disk.len(),
    })
}

/// Delete the files of a report; returns how many were removed.
pub fn delete_orphans(report: &OrphanReport) -> Result<usize> {
    let mut n = 0;
    for p in &report.orphans {
        std::fs::remove_file(p)?;
        n += 1;
    }
    Ok(n)
}
