//! The write-ahead log on the node's local disk: numbered segment files
//! of records (see [`super`] for the format), appended and fsync'd before
//! anyone is answered. A directory belongs to one process at a time (an
//! exclusive lock) and keeps its node id across restarts.
//!
//! Plain blocking file I/O: callers run it on blocking threads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{Record, SEGMENT_SUFFIX, decode_all};
use crate::error::{Error, Result};

/// File holding this log's node id (see [`LocalWal::open`]).
const NODE_FILE: &str = "node-id";

/// A log directory owned by one process (an exclusive lock on its node-id
/// file), with a stable node id: flush commits record, per node, the last
/// segment they made durable in the table.
#[derive(Debug)]
pub struct LocalWal {
    dir: PathBuf,
    node: String,
    /// Held for the process's life: the lock lives as long as the handle.
    _lock: File,
}

impl LocalWal {
    /// Open (creating) `dir`, failing if another process has it open.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let path = dir.join(NODE_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        if file.try_lock().is_err() {
            return Err(Error::Unavailable(format!(
                "write-ahead log {} is in use by another process; give each node its own --wal-dir",
                dir.display()
            )));
        }
        let mut node = String::new();
        file.read_to_string(&mut node)
            .map_err(|e| io_error("read", &path, e))?;
        let node = node.trim().to_string();
        let node = if node.is_empty() {
            let id = uuid::Uuid::new_v4().simple().to_string();
            file.write_all(id.as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|e| io_error("write", &path, e))?;
            sync_dir(dir)?;
            id
        } else {
            node
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            node,
            _lock: file,
        })
    }

    /// This log's node id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sequence numbers of the segments on disk, ascending.
    pub fn segments(&self) -> Result<Vec<u64>> {
        let mut seqs = vec![];
        for entry in std::fs::read_dir(&self.dir).map_err(|e| io_error("list", &self.dir, e))? {
            let entry = entry.map_err(|e| io_error("list", &self.dir, e))?;
            let name = entry.file_name();
            if let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
    }

    /// Create segment `seq` (durably: its directory entry is synced too).
    pub fn create(&self, seq: u64) -> Result<Segment> {
        let path = self.path(seq);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io_error("create", &path, e))?;
        sync_dir(&self.dir)?;
        Ok(Segment { file, path })
    }

    /// The records of segment `seq`, up to the first torn or corrupt one.
    pub fn read(&self, seq: u64) -> Result<Vec<Record>> {
        let path = self.path(seq);
        let data = std::fs::read(&path).map_err(|e| io_error("read", &path, e))?;
        Ok(decode_all(&data, &path.display().to_string()))
    }

    /// Delete segments up to and including `seq`.
    pub fn delete_through(&self, seq: u64) -> Result<()> {
        for s in self.segments()?.into_iter().filter(|s| *s <= seq) {
            let path = self.path(s);
            std::fs::remove_file(&path).map_err(|e| io_error("delete", &path, e))?;
        }
        Ok(())
    }
}

/// An open segment being appended to.
#[derive(Debug)]
pub struct Segment {
    file: File,
    path: PathBuf,
}

impl Segment {
    /// Append encoded records and make them durable before returning.
    pub fn append(&mut self, records: &[Vec<u8>]) -> Result<()> {
        for r in records {
            self.file
                .write_all(r)
                .map_err(|e| io_error("write", &self.path, e))?;
        }
        self.file
            .sync_data()
            .map_err(|e| io_error("sync", &self.path, e))
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", dir, e))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Unavailable(format!(
        "write-ahead log: cannot {what} {}: {e}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::super::encode;
    use super::*;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let wal = LocalWal::open(dir.path()).unwrap();
        let mut seg = wal.create(7).unwrap();
        seg.append(&[
            encode(Some("p:a"), &[batch(3)], None).unwrap(),
            encode(None, &[batch(2), batch(1)], None).unwrap(),
        ])
        .unwrap();
        // A third record cut short, as a crash mid-write leaves it.
        let torn = encode(Some("p:b"), &[batch(5)], None).unwrap();
        seg.append(&[torn[..torn.len() / 2].to_vec()]).unwrap();
        let records = wal.read(7).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].request_id.as_deref(), Some("p:a"));
        assert_eq!(records[0].batches[0].num_rows(), 3);
        assert_eq!(records[1].request_id, None);
        let rows: usize = records[1].batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 3);
        assert_eq!(wal.segments().unwrap(), vec![7]);
        wal.delete_through(7).unwrap();
        assert!(wal.segments().unwrap().is_empty());
    }

    #[test]
    fn a_flipped_bit_ends_the_segment_and_the_node_id_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let node = {
            let wal = LocalWal::open(dir.path()).unwrap();
            // A second opener is refused while the first holds the log.
            assert!(LocalWal::open(dir.path()).is_err());
            let mut seg = wal.create(1).unwrap();
            seg.append(&[encode(None, &[batch(4)], None).unwrap()])
                .unwrap();
            wal.node().to_string()
        };
        let path = dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 1));
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&path, data).unwrap();
        let wal = LocalWal::open(dir.path()).unwrap();
        assert_eq!(wal.node(), node);
        assert!(wal.read(1).unwrap().is_empty());
    }
}
