//! S3-compatible object storage (AWS S3, MinIO, Garage, R2, s3s-fs…)
//! through opendal's S3 service.
//!
//! One `Operator` per process, built once: it signs with the configured
//! or discovered credentials and reuses HTTP connections. Requests that
//! fail temporarily (5xx, `SlowDown`, timeouts) are retried with jittered
//! backoff by opendal's retry layer; what still fails is marked retryable
//! so clients get `UNAVAILABLE`, not `INTERNAL`.
//!
//! Durability: a whole-object PUT, or the CompleteMultipartUpload of a
//! streamed file, is durable when it returns 200; a commit references only
//! objects whose write returned, so acknowledged rows are on the store.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use iceberg::io::{FileMetadata, FileRead, FileWrite};
use opendal::Operator;
use opendal::layers::{RetryLayer, TimeoutLayer};

use super::{Backend, ObjectInfo};
use crate::error::{Error, Result};

/// Multipart part size: Parquet files above it upload in parts, several
/// at once, instead of being buffered whole.
const PART_SIZE: usize = 8 << 20;
/// Parts of one file in flight at once.
const PART_CONCURRENCY: usize = 4;

/// How to reach an S3-compatible store (flags, or the standard `AWS_*`
/// variables). Credentials not given here come from opendal's default
/// chain: profile files, web identity, ECS and EC2 instance metadata
/// (disable the last with `AWS_EC2_METADATA_DISABLED=true`).
#[derive(Clone, Default, clap::Args)]
pub struct S3Config {
    /// Endpoint of an S3-compatible store, e.g. `http://127.0.0.1:9000`; default AWS.
    #[clap(long = "s3-endpoint", env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// Region of the bucket (falls back to `AWS_DEFAULT_REGION`).
    #[clap(long = "s3-region", env = "AWS_REGION")]
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` (most self-hosted stores)
    /// instead of `bucket.endpoint` (AWS).
    #[clap(long = "s3-path-style", env = "RAINDROP_S3_PATH_STYLE")]
    pub path_style: bool,
    /// Access key id.
    #[clap(
        long = "s3-access-key-id",
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[clap(
        long = "s3-secret-access-key",
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    #[clap(
        long = "s3-session-token",
        env = "AWS_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub session_token: Option<String>,
    /// IAM role the REST catalog assumes (AWS STS) to vend tenant-scoped,
    /// 15-minute read credentials to engines that cannot sign remotely
    /// (DuckDB, Daft); off when unset. The S3 keys above must be allowed
    /// to assume it.
    #[clap(long = "s3-vend-role-arn", env = "RAINDROP_S3_VEND_ROLE_ARN")]
    pub vend_role_arn: Option<String>,
    /// STS endpoint for vended credentials; default the region's AWS one.
    #[clap(long = "s3-sts-endpoint", env = "AWS_ENDPOINT_URL_STS")]
    pub sts_endpoint: Option<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("vend_role_arn", &self.vend_role_arn)
            .field("sts_endpoint", &self.sts_endpoint)
            .finish_non_exhaustive()
    }
}

/// reqwest is built without a TLS provider of its own: use the ring
/// provider that tonic and sqlx already link (once per process; later
/// calls are no-ops).
pub(crate) fn use_ring_for_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl S3Config {
    /// The bucket's region: `--s3-region`, `AWS_REGION` or `AWS_DEFAULT_REGION`.
    pub fn region(&self) -> Result<String> {
        self.region
            .clone()
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument(
                    "S3 warehouse: no region; set --s3-region or AWS_REGION".into(),
                )
            })
    }

    /// The endpoint requests go to: the configured one, else AWS's regional.
    pub fn endpoint_or_aws(&self, region: &str) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"))
    }
}

/// The S3 backend of one warehouse bucket.
#[derive(Debug)]
pub struct S3Store {
    op: Operator,
    bucket: String,
    endpoint: String,
}

impl S3Store {
    /// Build the client for `bucket` and check that the store answers at
    /// `prefix` (a one-key listing), so a wrong endpoint, bucket or
    /// credential fails at start with the setting to fix.
    pub async fn connect(cfg: &S3Config, bucket: &str, prefix: &str) -> Result<Self> {
        use_ring_for_tls();
        let region = cfg.region()?;
        let mut builder = opendal::services::S3::default()
            .bucket(bucket)
            .region(&region)
            .root("/");
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint(endpoint);
        }
        if !cfg.path_style {
            builder = builder.enable_virtual_host_style();
        }
        if let Some(key) = &cfg.access_key_id {
            builder = builder.access_key_id(key);
        }
        if let Some(secret) = &cfg.secret_access_key {
            builder = builder.secret_access_key(secret);
        }
        if let Some(token) = &cfg.session_token {
            builder = builder.session_token(token);
        }
        let op = Operator::new(builder)
            .map_err(|e| Error::InvalidArgument(format!("S3 warehouse settings: {e}")))?
            .layer(
                RetryLayer::new()
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(4),
            )
            .layer(TimeoutLayer::new().with_io_timeout(Duration::from_secs(30)))
            .finish();
        let store = Self {
            op,
            bucket: bucket.to_string(),
            endpoint: cfg.endpoint_or_aws(&region),
        };
        store.check(prefix).await?;
        Ok(store)
    }

    async fn check(&self, prefix: &str) -> Result<()> {
        use opendal::ErrorKind as K;
        let Err(e) = self.op.list_with(&dir_of(prefix)).limit(1).await else {
            return Ok(());
        };
        let b = &self.bucket;
        let fix = match e.kind() {
            _ if e.to_string().contains("NoSuchBucket") => {
                format!("bucket {b} does not exist at {}", self.endpoint)
            }
            K::PermissionDenied => format!(
                "credentials rejected for bucket {b}: check --s3-access-key-id / AWS_ACCESS_KEY_ID and the secret"
            ),
            K::NotFound => format!("bucket {b} does not exist at {}", self.endpoint),
            K::ConfigInvalid => "invalid S3 settings".to_string(),
            _ => format!(
                "cannot reach the S3 endpoint {} (--s3-endpoint / AWS_ENDPOINT_URL)",
                self.endpoint
            ),
        };
        Err(Error::InvalidArgument(format!(
            "S3 warehouse s3://{b}/{}: {fix}: {e}",
            prefix.trim_matches('/')
        )))
    }

    /// The object key of an `s3://bucket/key` location in this bucket.
    fn key<'a>(&self, location: &'a str) -> iceberg::Result<&'a str> {
        let rest = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
            .and_then(|r| r.strip_prefix(self.bucket.as_str()))
            .and_then(|r| r.strip_prefix('/'));
        rest.ok_or_else(|| {
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!(
                    "{location} is not in the warehouse bucket s3://{}",
                    self.bucket
                ),
            )
        })
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, key.trim_start_matches('/'))
    }
}

/// A key prefix as opendal lists it: `a/b/`, or empty for the bucket root.
fn dir_of(key: &str) -> String {
    match key.trim_matches('/') {
        "" => String::new(),
        key => format!("{key}/"),
    }
}

/// An opendal error as iceberg's, marked retryable unless the request
/// itself is wrong (credentials, missing object or bucket, settings): an
/// unreachable store, 5xx and throttling all pass with time, so the client
/// should retry rather than give up.
fn s3_error(what: &str, location: &str, e: opendal::Error) -> iceberg::Error {
    use opendal::ErrorKind as K;
    let retryable = e.is_temporary() || matches!(e.kind(), K::Unexpected | K::RateLimited);
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("S3 {what} {location}: {e}"),
    )
    .with_retryable(retryable)
}

#[async_trait]
impl Backend for S3Store {
    async fn exists(&self, location: &str) -> iceberg::Result<bool> {
        let key = self.key(location)?;
        self.op
            .exists(key)
            .await
            .map_err(|e| s3_error("stat", location, e))
    }

    async fn metadata(&self, location: &str) -> iceberg::Result<FileMetadata> {
        let key = self.key(location)?;
        let meta = self
            .op
            .stat(key)
            .await
            .map_err(|e| s3_error("stat", location, e))?;
        Ok(FileMetadata {
            size: meta.content_length(),
        })
    }

    async fn read(&self, location: &str) -> iceberg::Result<Bytes> {
        let key = self.key(location)?;
        let buf = self
            .op
            .read(key)
            .await
            .map_err(|e| s3_error("read", location, e))?;
        Ok(buf.to_bytes())
    }

    async fn reader(&self, location: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let key = self.key(location)?;
        let reader = self
            .op
            .reader(key)
            .await
            .map_err(|e| s3_error("open", location, e))?;
        Ok(Box::new(S3Read {
            reader,
            location: location.to_string(),
        }))
    }

    async fn write(&self, location: &str, bs: Bytes) -> iceberg::Result<()> {
        let key = self.key(location)?;
        self.op
            .write(key, bs)
            .await
            .map_err(|e| s3_error("write", location, e))?;
        Ok(())
    }

    async fn writer(&self, location: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let key = self.key(location)?;
        let writer = self
            .op
            .writer_with(key)
            .chunk(PART_SIZE)
            .concurrent(PART_CONCURRENCY)
            .await
            .map_err(|e| s3_error("create", location, e))?;
        Ok(Box::new(S3Write {
            writer,
            op: self.op.clone(),
            key: key.to_string(),
            written: 0,
            location: location.to_string(),
        }))
    }

    async fn delete(&self, location: &str) -> iceberg::Result<()> {
        let key = self.key(location)?;
        self.op
            .delete(key)
            .await
            .map_err(|e| s3_error("delete", location, e))
    }

    async fn delete_prefix(&self, location: &str) -> iceberg::Result<()> {
        let key = format!("{}/", self.key(location)?.trim_end_matches('/'));
        self.op
            .delete_with(&key)
            .recursive(true)
            .await
            .map_err(|e| s3_error("delete", location, e))
    }

    async fn delete_stream(&self, locations: BoxStream<'static, String>) -> iceberg::Result<()> {
        let keys: Vec<String> = locations
            .map(|l| self.key(&l).map(str::to_string))
            .try_collect()
            .await?;
        self.op
            .delete_iter(keys)
            .await
            .map_err(|e| s3_error("delete", "(batch)", e))
    }

    async fn probe(&self, location: &str) -> iceberg::Result<()> {
        self.op
            .list_with(&dir_of(self.key(location).unwrap_or_default()))
            .limit(1)
            .await
            .map(|_| ())
            .map_err(|e| s3_error("list", location, e))
    }

    async fn list(&self, prefix: &str) -> iceberg::Result<Vec<ObjectInfo>> {
        let dir = format!("{}/", self.key(prefix)?.trim_end_matches('/'));
        let mut lister = self
            .op
            .lister_with(&dir)
            .recursive(true)
            .await
            .map_err(|e| s3_error("list", prefix, e))?;
        let mut out = vec![];
        while let Some(entry) = lister
            .try_next()
            .await
            .map_err(|e| s3_error("list", prefix, e))?
        {
            let meta = entry.metadata();
            if !meta.is_file() {
                continue;
            }
            out.push(ObjectInfo {
                location: self.location(entry.path()),
                size: meta.content_length(),
                modified: meta
                    .last_modified()
                    .map(SystemTime::from)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        Ok(out)
    }
}

/// Range reads of one object (each a ranged GET).
struct S3Read {
    reader: opendal::Reader,
    location: String,
}

#[async_trait]
impl FileRead for S3Read {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        let buf = self
            .reader
            .read(range)
            .await
            .map_err(|e| s3_error("read", &self.location, e))?;
        Ok(buf.to_bytes())
    }
}

/// How many times (the first at once, then 500 ms apart) a failed
/// multipart completion checks whether an earlier attempt completed the
/// object after all: up to 19.5 s, as s3s-fs assembling 24 MB on a busy
/// 2-core machine outlasted the 5 s this first was.
const COMPLETION_CHECKS: usize = 40;

/// A streamed upload: one PUT if it stays under [`PART_SIZE`], else a
/// multipart upload completed on close. Nothing is visible before close.
struct S3Write {
    writer: opendal::Writer,
    op: Operator,
    key: String,
    /// Bytes handed to the writer: what the object holds once complete.
    written: u64,
    location: String,
}

#[async_trait]
impl FileWrite for S3Write {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        let len = bs.len() as u64;
        self.writer
            .write(bs)
            .await
            .map_err(|e| s3_error("write", &self.location, e))?;
        self.written += len;
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        let Err(e) = self.writer.close().await else {
            return Ok(());
        };
        // A completion retried after its answer was lost finds the upload
        // gone (`NoSuchUpload`; s3s-fs answers `AccessDenied`), though the
        // first attempt completed it, or still is: s3s-fs forgets the
        // upload before it assembles the parts, so the object may appear
        // a moment after the retry failed. It then holds every byte
        // written. (Seen three times in the S3 suite, on a 24 MB upload.)
        // A single PUT (under one part) has no upload to lose: its error
        // is final at once.
        use opendal::ErrorKind as K;
        let multipart = self.written >= PART_SIZE as u64;
        if multipart && matches!(e.kind(), K::PermissionDenied | K::NotFound) {
            for check in 0..COMPLETION_CHECKS {
                if check > 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                if let Ok(meta) = self.op.stat(&self.key).await
                    && meta.content_length() == self.written
                {
                    tracing::warn!(location = %self.location, error = %e, "a multipart upload's retried completion failed, but the object is complete");
                    return Ok(());
                }
            }
        }
        Err(s3_error("write", &self.location, e))
    }
}
