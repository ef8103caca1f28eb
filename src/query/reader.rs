//! Reading planned data files with DataFusion's own Parquet reader, through
//! iceberg's `FileIO`.
//!
//! DataFusion's `ParquetSource` prunes row groups and pages with the query's
//! predicate and decodes faster than iceberg's Arrow reader, but it reads
//! through an `object_store`. This factory hands it readers backed by the
//! table's `FileIO` instead, so every byte still goes through the one
//! storage layer Raindrop configures and audits (`storage`), with the
//! same credentials and paths the catalog uses.
//!
//! Data files are immutable and uniquely named, so their footers (with page
//! indexes) are cached by location: a repeated query decodes no footer.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{ParquetFileMetrics, ParquetFileReaderFactory};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use iceberg::io::{FileIO, FileRead, InputFile};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::{ParquetError, Result as ParquetResult};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use crate::storage::AccessLog;

/// Bytes fetched from the end of a file on a footer miss: most footers
/// (with page indexes) of Raindrop's files fit, so one read suffices.
const FOOTER_PREFETCH: usize = 64 * 1024;

/// Ranges closer than this are fetched with one read.
const COALESCE_GAP: u64 = 1024 * 1024;

/// The full storage location of a planned file, carried in
/// [`PartitionedFile::extensions`] (the object path DataFusion keeps has
/// lost the scheme).
#[derive(Debug, Clone)]
pub struct FileLocation(pub String);

/// Parsed Parquet footers by file location, weighed by their in-memory
/// size. Data files are immutable, so entries never go stale.
pub type FooterCache = moka::sync::Cache<String, Arc<ParquetMetaData>>;

/// A footer cache holding at most `bytes` of parsed footers.
pub fn footer_cache(bytes: u64) -> FooterCache {
    moka::sync::Cache::builder()
        .max_capacity(bytes)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .weigher(|_, footer: &Arc<ParquetMetaData>| {
            u32::try_from(footer.memory_size()).unwrap_or(u32::MAX)
        })
        .build()
}

/// Data bytes of immutable files kept in memory, for object storage, where
/// every read is a request with a first-byte latency: whole files up to
/// [`WHOLE_FILE_MAX`] (one GET serves every later range of that file), and
/// the exact ranges read from larger ones. Weighed by bytes.
///
/// A read served from here is still recorded in the storage access log:
/// the log answers "which files did this query touch", cached or not.
#[derive(Debug)]
pub struct DataCache {
    bytes: moka::sync::Cache<String, Bytes>,
    log: Arc<AccessLog>,
}

/// Files up to this size are fetched and cached whole on their first read.
pub const WHOLE_FILE_MAX: u64 = 16 * 1024 * 1024;

impl DataCache {
    /// A data cache holding at most `bytes`, recording reads in `log`.
    pub fn new(bytes: u64, log: Arc<AccessLog>) -> Self {
        Self {
            bytes: moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|key: &String, value: &Bytes| {
                    u32::try_from(key.len() + value.len()).unwrap_or(u32::MAX)
                })
                .build(),
            log,
        }
    }

    fn get(&self, location: &str, key: &str) -> Option<Bytes> {
        let hit = self.bytes.get(key);
        crate::metrics::metrics().cache("data", hit.is_some());
        if hit.is_some() {
            self.log.record(location);
        }
        hit
    }
}

/// Builds Parquet readers over a table's `FileIO`.
#[derive(Debug)]
pub struct FileIoReaderFactory {
    file_io: FileIO,
    footers: Arc<FooterCache>,
    data: Option<Arc<DataCache>>,
}

impl FileIoReaderFactory {
    /// Readers over `file_io`, sharing `footers` and, on object storage,
    /// the `data` cache.
    pub fn new(file_io: FileIO, footers: Arc<FooterCache>, data: Option<Arc<DataCache>>) -> Self {
        Self {
            file_io,
            footers,
            data,
        }
    }
}

impl ParquetFileReaderFactory for FileIoReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DFResult<Box<dyn AsyncFileReader + Send>> {
        let location = file
            .extensions
            .as_ref()
            .and_then(|e| e.downcast_ref::<FileLocation>())
            .map(|l| l.0.clone())
            .ok_or_else(|| {
                DataFusionError::Internal("planned file without its storage location".into())
            })?;
        let input = self
            .file_io
            .new_input(&location)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Box::new(FileIoReader {
            metrics: ParquetFileMetrics::new(partition_index, &location, metrics),
            size: file.object_meta.size,
            location,
            input,
            reader: None,
            footers: self.footers.clone(),
            data: self.data.clone(),
        }))
    }
}

/// One data file, opened on first read.
struct FileIoReader {
    location: String,
    size: u64,
    input: InputFile,
    reader: Option<Box<dyn FileRead>>,
    footers: Arc<FooterCache>,
    data: Option<Arc<DataCache>>,
    metrics: ParquetFileMetrics,
}

fn external(e: iceberg::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl FileIoReader {
    async fn read(&mut self, range: Range<u64>) -> ParquetResult<Bytes> {
        let Some(cache) = self.data.clone() else {
            return self.read_through(range).await;
        };
        let (key, fetch) = if self.size <= WHOLE_FILE_MAX {
            (self.location.clone(), 0..self.size)
        } else {
            let key = format!("{}#{}-{}", self.location, range.start, range.end);
            (key, range.clone())
        };
        let bytes = match cache.get(&self.location, &key) {
            Some(bytes) => bytes,
            None => {
                let bytes = self.read_through(fetch.clone()).await?;
                cache.bytes.insert(key, bytes.clone());
                bytes
            }
        };
        let start = (range.start - fetch.start) as usize;
        Ok(bytes.slice(start..start + (range.end - range.start) as usize))
    }

    /// Read from storage, bypassing the data cache.
    async fn read_through(&mut self, range: Range<u64>) -> ParquetResult<Bytes> {
        if self.reader.is_none() {
            self.reader = Some(self.input.reader().await.map_err(external)?);
        }
        let reader = self.reader.as_ref().expect("opened above");
        self.metrics
            .bytes_scanned
            .add((range.end - range.start) as usize);
        reader.read(range).await.map_err(external)
    }
}

/// Merge sorted-by-start `ranges` whose gaps are at most [`COALESCE_GAP`].
fn coalesce(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut sorted: Vec<Range<u64>> = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end.saturating_add(COALESCE_GAP) => {
                last.end = last.end.max(r.end);
            }
            _ => merged.push(r),
        }
    }
    merged
}

impl AsyncFileReader for FileIoReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        self.read(range).boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        async move {
            // Column chunks of one row group sit side by side: one read each
            // for runs of nearby chunks instead of one per column.
            let merged = coalesce(&ranges);
            let mut fetched = Vec::with_capacity(merged.len());
            for r in &merged {
                fetched.push(self.read(r.clone()).await?);
            }
            Ok(ranges
                .iter()
                .map(|r| {
                    let i = merged.partition_point(|m| m.start <= r.start) - 1;
                    let offset = merged[i].start;
                    fetched[i].slice((r.start - offset) as usize..(r.end - offset) as usize)
                })
                .collect())
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        async move {
            let cached = self.footers.get(&self.location);
            crate::metrics::metrics().cache("footer", cached.is_some());
            if let Some(cached) = cached {
                return Ok(cached);
            }
            // Page indexes are always loaded so a cached footer serves any
            // later query, whatever it prunes on.
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .with_prefetch_hint(Some(FOOTER_PREFETCH))
                .load_and_finish(&mut *self, size)
                .await?;
            let metadata = Arc::new(metadata);
            self.footers.insert(self.location.clone(), metadata.clone());
            Ok(metadata)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn coalesce_merges_nearby_ranges_only() {
        let far = 10 * 1024 * 1024;
        let merged = coalesce(&[0..10, far..far + 5, 20..30, 12..15]);
        assert_eq!(merged, vec![0..30, far..far + 5]);
    }
}
