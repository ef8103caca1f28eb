//! The write-ahead log: records of acknowledged `DoPut`s (request id and
//! rows as an Arrow IPC stream), grouped in numbered segments, one per
//! buffer generation. It lives on the node's disk ([`local`], the
//! default) or on the warehouse's object storage ([`object`]).
//!
//! A record is `[len u32][crc32 u32][payload]`; reading stops at the first
//! torn or corrupt record, which can only be a write that was never
//! acknowledged.

pub mod fence;
pub mod local;
pub mod object;

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use futures::future::BoxFuture;

use crate::error::{Error, Result};
use local::LocalWal;
use object::{ObjectSegment, ObjectWal};

/// Record format version, first byte of every payload.
const VERSION: u8 = 1;
const SEGMENT_SUFFIX: &str = ".wal";

/// One acknowledged request as logged.
#[derive(Debug, Clone)]
pub struct Record {
    /// The caller-scoped request id, if the client sent one.
    pub request_id: Option<String>,
    /// The validated, project-stamped rows.
    pub batches: Vec<RecordBatch>,
}

/// Encode a record: `[len u32][crc32 u32][payload]`, payload = version,
/// request id (u16 length + bytes), Arrow IPC stream, its buffers
/// compressed with `compression` if given (readers detect it).
pub fn encode(
    request_id: Option<&str>,
    batches: &[RecordBatch],
    compression: Option<CompressionType>,
) -> Result<Vec<u8>> {
    let id = request_id.unwrap_or("").as_bytes();
    let mut payload =
        Vec::with_capacity(64 + batches.iter().map(crate::batch::batch_bytes).sum::<usize>());
    payload.push(VERSION);
    payload.extend_from_slice(&(id.len() as u16).to_le_bytes());
    payload.extend_from_slice(id);
    if let Some(first) = batches.first() {
        let options = IpcWriteOptions::default().try_with_compression(compression)?;
        let mut writer =
            StreamWriter::try_new_with_options(&mut payload, first.schema_ref(), options)?;
        for b in batches {
            writer.write(b)?;
        }
        writer.finish()?;
    }
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn decode(payload: &[u8]) -> Result<Record> {
    let corrupt = || Error::Internal("write-ahead log record is malformed".into());
    let (&version, rest) = payload.split_first().ok_or_else(corrupt)?;
    if version != VERSION {
        return Err(Error::Internal(format!(
            "write-ahead log record has version {version}; this build reads {VERSION}"
        )));
    }
    let len = u16::from_le_bytes(rest.get(..2).ok_or_else(corrupt)?.try_into().unwrap()) as usize;
    let id = rest.get(2..2 + len).ok_or_else(corrupt)?;
    let ipc = &rest[2 + len..];
    let request_id = (!id.is_empty())
        .then(|| String::from_utf8(id.to_vec()).map_err(|_| corrupt()))
        .transpose()?;
    let batches = if ipc.is_empty() {
        vec![]
    } else {
        StreamReader::try_new(ipc, None)?.collect::<std::result::Result<Vec<_>, _>>()?
    };
    Ok(Record {
        request_id,
        batches,
    })
}

/// The records in `data` (a local segment or one object), up to the first
/// torn or corrupt one; `origin` names it in the warning.
pub fn decode_all(data: &[u8], origin: &str) -> Vec<Record> {
    let mut records = vec![];
    let mut at = 0;
    while let Some(header) = data.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        let Some(payload) = data.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match decode(payload) {
            Ok(record) => records.push(record),
            Err(e) => {
                tracing::warn!(log = origin, error = %e, "write-ahead log record cannot be decoded; ignoring the rest");
                break;
            }
        }
        at += 8 + len;
    }
    if at < data.len() {
        tracing::warn!(
            log = origin,
            ignored_bytes = data.len() - at,
            "write-ahead log ends in an incomplete record (a write that was never acknowledged); ignoring it"
        );
    }
    records
}

/// This node's log, on local disk or on object storage.
#[derive(Debug)]
pub enum Wal {
    /// A directory on the node's disk (shared with the blocking threads
    /// that do its I/O).
    Local(Arc<LocalWal>),
    /// Objects in the warehouse, under a lease.
    Object(ObjectWal),
}

impl Wal {
    /// The node id its flushes record their mark under.
    pub fn node(&self) -> &str {
        match self {
            Wal::Local(w) => w.node(),
            Wal::Object(w) => w.node(),
        }
    }

    /// Sequence numbers of the segments in the log, ascending.
    pub async fn segments(&self) -> Result<Vec<u64>> {
        match self {
            Wal::Local(w) => {
                let w = w.clone();
                blocking(move || w.segments()).await
            }
            Wal::Object(w) => w.segments().await,
        }
    }

    /// The records of segment `seq`.
    pub async fn read(&self, seq: u64) -> Result<Vec<Record>> {
        match self {
            Wal::Local(w) => {
                let w = w.clone();
                blocking(move || w.read(seq)).await
            }
            Wal::Object(w) => w.read(seq).await,
        }
    }

    /// Delete segments up to and including `seq`.
    pub async fn delete_through(&self, seq: u64) -> Result<()> {
        match self {
            Wal::Local(w) => {
                let w = w.clone();
                blocking(move || w.delete_through(seq)).await
            }
            Wal::Object(w) => w.delete_through(seq).await,
        }
    }

    /// Start segment `seq`.
    pub async fn create(&self, seq: u64) -> Result<Segment> {
        match self {
            Wal::Local(w) => {
                let w = w.clone();
                let segment = blocking(move || w.create(seq)).await?;
                Ok(Segment::Local(Arc::new(Mutex::new(segment))))
            }
            Wal::Object(w) => Ok(Segment::Object(w.create(seq))),
        }
    }

    /// How records are compressed: not on local disk, where the fsync
    /// costs the same for more bytes and compressing would take CPU from
    /// requests; on object storage as [`ObjectWal::compression`] says.
    pub fn compression(&self) -> Option<CompressionType> {
        match self {
            Wal::Local(_) => None,
            Wal::Object(w) => Some(w.compression()),
        }
    }

    /// How many group writes may be in flight: one on local disk (a
    /// write and an fsync of one file), several on S3 (each a PUT of its
    /// own object, mostly waiting on the network).
    pub fn writes_in_flight(&self) -> usize {
        match self {
            Wal::Local(_) => 1,
            Wal::Object(w) => w.writes_in_flight(),
        }
    }

    /// Whether a failed append leaves the log unusable until a restart: a
    /// local segment's tail is then unknown, and a log on object storage
    /// whose lease another node took belongs to that node now.
    pub fn append_failure_is_final(&self) -> bool {
        match self {
            Wal::Local(_) => true,
            Wal::Object(w) => w.fence().lost(),
        }
    }
}

/// The segment being appended to.
#[derive(Debug)]
pub enum Segment {
    /// A local file (one write at a time: the lock is never contended).
    Local(Arc<Mutex<local::Segment>>),
    /// A run of objects.
    Object(ObjectSegment),
}

impl Segment {
    /// Start appending `records`; the future resolves once they are
    /// durable. On object storage several may run at once, each its own
    /// object.
    pub fn write(&mut self, records: Vec<Vec<u8>>) -> BoxFuture<'static, Result<()>> {
        match self {
            Segment::Local(s) => {
                let s = s.clone();
                Box::pin(blocking(move || {
                    s.lock()
                        .map_err(|_| Error::Internal("an earlier log write failed".into()))?
                        .append(&records)
                }))
            }
            Segment::Object(s) => s.write(records),
        }
    }
}

/// Run blocking file I/O off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}
