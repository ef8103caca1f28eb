//! Ingest: validate and normalise client batches, stamp the caller's
//! project, and append them through the single [`commit::TableWriter`].
//!
//! Two targets exist: the shared telemetry table `raw_events` (rows always
//! carry the caller's `project_id`) and tenant-private tables, which live in
//! the Iceberg namespace `tenants.<project>.<schema>` derived from the token,
//! so no name a client sends can reach another tenant's tables.

pub mod budget;
pub mod buffer;
pub mod commit;
pub mod dedup;
pub mod flush;
pub mod layout;
pub mod log;
pub mod validate;
pub mod wal;
pub mod write;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt};
use iceberg::{ErrorKind, TableCreation, TableIdent};

use crate::catalog::Warehouse;
use crate::catalog::replace::{commit_replacement, staged_replacement};
use crate::error::{Error, Result};
use crate::schema;
use crate::tenant::{Principal, names};
use budget::{Budget, Reservation};
use buffer::Buffer;
use commit::{AppendOutcome, CommitConfig, TableWriter};
use log::{Log, LogConfig};

/// Where an ingest stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The shared telemetry table.
    RawEvents,
    /// A tenant-private table `schema.table` of the caller's project.
    Tenant {
        /// SQL schema name (validated, lowercase).
        schema: String,
        /// Table name (validated, lowercase).
        table: String,
    },
}

/// ADBC / Flight SQL ingest modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create the table; fail if it exists.
    Create,
    /// Append; fail if the table does not exist.
    Append,
    /// Drop and recreate the table, then write.
    Replace,
    /// Create if missing, then append.
    CreateAppend,
}

/// Ingest service shared by every write path.
#[derive(Debug)]
pub struct Ingestor {
    warehouse: Warehouse,
    writer: Arc<TableWriter>,
    /// Buffered ingest of `raw_events` (write-ahead log and flusher);
    /// `None`: every `DoPut` commits before it is answered.
    log: Option<Arc<Log>>,
    /// `raw_events`' schema as last loaded (see [`Self::raw_events_schema`]).
    raw_schema: RwLock<Option<SchemaRef>>,
    max_stream_bytes: usize,
    budget: Budget,
}

impl Ingestor {
    /// New ingestor over `warehouse`, refusing streams above
    /// `max_stream_bytes` and holding at most `max_buffered_bytes` of
    /// ingest data at once (waiting up to `wait` for room).
    pub fn new(
        warehouse: Warehouse,
        max_stream_bytes: usize,
        max_buffered_bytes: usize,
        wait: Duration,
        commit: CommitConfig,
    ) -> Self {
        let writer = Arc::new(TableWriter::new(
            warehouse.catalog.clone(),
            warehouse.tables.clone(),
            commit,
        ));
        Self {
            warehouse,
            writer,
            log: None,
            raw_schema: RwLock::new(None),
            max_stream_bytes,
            budget: Budget::new(max_buffered_bytes, wait),
        }
    }

    /// Acknowledge `raw_events` rows once they are in the write-ahead log
    /// and commit them in the background ([`log`]); replays what the log
    /// holds that the table does not.
    pub async fn start_log(&mut self, config: LogConfig) -> Result<()> {
        let log = Log::open(
            config,
            self.warehouse.clone(),
            self.writer.clone(),
            self.budget.clone(),
        );
        self.log = Some(log.await?);
        Ok(())
    }

    /// Rows acknowledged and not yet committed, for queries (`None` when
    /// ingest is not buffered).
    pub fn buffer(&self) -> Option<Arc<Buffer>> {
        self.log.as_ref().map(|l| l.buffer().clone())
    }

    /// Commit every acknowledged row now (no-op when not buffered).
    pub async fn flush(&self) -> Result<()> {
        match &self.log {
            Some(log) => log.flush().await,
            None => Ok(()),
        }
    }

    /// At shutdown: commit every acknowledged row, then retire a log kept
    /// on object storage that holds nothing (else another node adopts it
    /// once its lease expires).
    pub async fn close(&self) -> Result<()> {
        match &self.log {
            Some(log) => {
                log.flush().await?;
                log.close().await
            }
            None => Ok(()),
        }
    }

    /// Rows acknowledged and not yet committed, and the age of the oldest.
    pub fn buffered_rows(&self) -> (u64, Option<Duration>) {
        self.log
            .as_ref()
            .map_or((0, None), |log| log.buffer().held())
    }

    /// Of the buffered rows, those a flush held back until their project
    /// makes a sizeable file, and how many projects they belong to.
    pub fn held_back_rows(&self) -> (u64, usize) {
        self.log
            .as_ref()
            .map_or((0, 0), |log| log.buffer().held_back())
    }

    /// Bytes of ingest data held against `--max-buffered-mib` now.
    pub fn memory_used(&self) -> usize {
        self.budget.used_bytes()
    }

    /// Largest ingest stream accepted, in bytes of decoded Arrow data.
    pub fn max_stream_bytes(&self) -> usize {
        self.max_stream_bytes
    }

    /// Latencies of recent catalog commits (see [`commit::CommitTimes`]).
    pub fn commit_times(&self) -> &commit::CommitTimes {
        self.writer.commit_times()
    }

    /// Map client-supplied names (ADBC `catalog_name`, `db_schema_name`,
    /// `table`) to a target, validating every part.
    pub fn resolve_target(
        &self,
        catalog: Option<&str>,
        schema: Option<&str>,
        table: &str,
    ) -> Result<Target> {
        if let Some(c) = catalog.filter(|c| !c.is_empty() && *c != self.warehouse.catalog_name) {
            return Err(Error::NotFound(format!(
                "catalog '{c}' does not exist; use '{}' or leave it empty",
                self.warehouse.catalog_name
            )));
        }
        let table = names::normalize_identifier("table", table)?;
        let events_schema = self.warehouse.namespace.to_url_string();
        let schema = schema
            .filter(|s| !s.is_empty())
            .map(|s| names::normalize_identifier("schema", s))
            .transpose()?;
        match schema.as_deref() {
            None if table == schema::RAW_EVENTS => Ok(Target::RawEvents),
            Some(s) if s == events_schema => {
                if table == schema::RAW_EVENTS {
                    Ok(Target::RawEvents)
                } else {
                    Err(Error::PermissionDenied(format!(
                        "schema '{s}' holds only raw_events; put your own tables in another schema (e.g. db_schema_name='warehouse')"
                    )))
                }
            }
            Some(s) if names::RESERVED_SCHEMAS.contains(&s) => {
                Err(Error::PermissionDenied(format!("schema '{s}' is reserved")))
            }
            s => Ok(Target::Tenant {
                schema: s.unwrap_or(names::DEFAULT_TENANT_SCHEMA).to_string(),
                table,
            }),
        }
    }

    /// Consume `batches` and commit them to `target` in one snapshot.
    /// Returns only after the commit. The whole stream is validated before
    /// anything is written, so bad input changes nothing.
    pub async fn ingest<S>(
        &self,
        principal: &Principal,
        target: &Target,
        mode: Mode,
        request_id: Option<&str>,
        batches: S,
    ) -> Result<AppendOutcome>
    where
        S: Stream<Item = Result<RecordBatch>> + Send,
    {
        principal.require_write()?;
        // Ids are scoped to the caller, so tenants cannot collide or probe.
        let request_id = request_id
            .map(|id| {
                validate_request_id(id)
                    .map(|id| format!("{}:{id}", principal.project_id.as_deref().unwrap_or("*")))
            })
            .transpose()?;
        match target {
            Target::RawEvents => {
                self.ingest_raw_events(principal, mode, request_id, batches)
                    .await
            }
            Target::Tenant { schema, table } => {
                let project = principal.project()?.to_string();
                self.ingest_tenant_table(&project, schema, table, mode, request_id, batches)
                    .await
            }
        }
    }

    /// `raw_events`' Arrow schema as this node last loaded it, or as the
    /// catalog has it now (`reload`, after a batch the known one refused).
    async fn raw_events_schema(&self, reload: bool) -> Result<SchemaRef> {
        if !reload && let Some(known) = self.raw_schema.read().expect("not poisoned").clone() {
            return Ok(known);
        }
        let table = self.warehouse.raw_events().await?;
        let schema: SchemaRef = Arc::new(iceberg::arrow::schema_to_arrow_schema(
            table.metadata().current_schema(),
        )?);
        *self.raw_schema.write().expect("not poisoned") = Some(schema.clone());
        Ok(schema)
    }

    /// Read, bound and normalise a stream. The returned reservation holds
    /// the stream's share of the server-wide ingest buffer until dropped
    /// (after the commit).
    async fn collect<S, F, T>(&self, batches: S, mut normalize: F) -> Result<(Vec<T>, Reservation)>
    where
        S: Stream<Item = Result<RecordBatch>> + Send,
        F: FnMut(&RecordBatch) -> Result<T>,
    {
        let mut batches = std::pin::pin!(batches);
        let mut out = vec![];
        let mut bytes = 0usize;
        let mut reservation = Reservation::default();
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            let size = crate::batch::batch_bytes(&batch);
            bytes += size;
            if bytes > self.max_stream_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "ingest stream exceeds {} MiB; split it into several DoPut calls",
                    self.max_stream_bytes / (1024 * 1024)
                )));
            }
            reservation.add(self.budget.reserve(size).await?);
            if batch.num_rows() > 0 {
                out.push(normalize(&batch)?);
            }
        }
        Ok((out, reservation))
    }

    async fn ingest_raw_events<S>(
        &self,
        principal: &Principal,
        mode: Mode,
        request_id: Option<String>,
        batches: S,
    ) -> Result<AppendOutcome>
    where
        S: Stream<Item = Result<RecordBatch>> + Send,
    {
        match mode {
            Mode::Append | Mode::CreateAppend => {}
            Mode::Create => {
                return Err(Error::AlreadyExists(
                    "raw_events always exists; ingest with mode 'append'".into(),
                ));
            }
            Mode::Replace => {
                return Err(Error::PermissionDenied(
                    "raw_events cannot be replaced; ingest with mode 'append'".into(),
                ));
            }
        }
        let rule = principal.project_rule()?;
        let known = self.raw_events_schema(false).await?;
        let now = chrono::Utc::now().timestamp_micros();
        // A batch this node's view of the schema refuses is kept as sent:
        // another node may have just added the column it carries.
        let (checked, reservation) = self
            .collect(batches, |b| {
                match validate::normalize_raw_events(b, &known, rule, now) {
                    Ok(n) => Ok(Ok(n)),
                    Err(e @ Error::InvalidArgument(_)) => Ok(Err((b.clone(), e))),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let batches = if checked.iter().all(|c| c.is_ok()) {
            checked.into_iter().flatten().collect()
        } else {
            let fresh = self.raw_events_schema(true).await?;
            let mut out = Vec::with_capacity(checked.len());
            for c in checked {
                out.push(match c {
                    Err((_, e)) if fresh == known => return Err(e),
                    Err((raw, _)) => validate::normalize_raw_events(&raw, &fresh, rule, now)?,
                    Ok(n) => validate::normalize_to_schema(&n, &fresh)?,
                });
            }
            out
        };
        if let Some(log) = &self.log {
            // The rows keep their share of the ingest budget until flushed.
            return log
                .append(batches, request_id, reservation.into_permit())
                .await;
        }
        self.writer
            .append(&self.warehouse.raw_events_ident(), batches, request_id)
            .await
    }

    async fn ingest_tenant_table<S>(
        &self,
        project: &str,
        schema_name: &str,
        table: &str,
        mode: Mode,
        request_id: Option<String>,
        batches: S,
    ) -> Result<AppendOutcome>
    where
        S: Stream<Item = Result<RecordBatch>> + Send,
    {
        let mut batches = Box::pin(batches);
        // The first batch decides the schema of a table created here.
        let first = match batches.next().await {
            Some(b) => lowercase_names(&b?)?,
            None => return Ok(AppendOutcome::default()),
        };
        let ns = self.warehouse.tenant_namespace(project, schema_name);
        let ident = TableIdent::new(ns.clone(), table.to_string());
        let exists = self.warehouse.catalog.table_exists(&ident).await?;
        let display = format!("{schema_name}.{table}");
        match (mode, exists) {
            (Mode::Create, true) => {
                return Err(Error::AlreadyExists(format!(
                    "table {display} exists; use mode 'append', 'replace' or 'create_append'"
                )));
            }
            (Mode::Append, false) => {
                return Err(Error::NotFound(format!(
                    "table {display} does not exist; use mode 'create' or 'create_append'"
                )));
            }
            _ => {}
        }
        let new_schema = if !exists || mode == Mode::Replace {
            let arrow_schema = validate::table_schema_from_client(first.schema_ref())?;
            Some(
                iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow_schema)
                    .map_err(|e| Error::InvalidArgument(format!("unsupported column type: {e}")))?,
            )
        } else {
            None
        };
        let target: SchemaRef = Arc::new(match &new_schema {
            Some(s) => iceberg::arrow::schema_to_arrow_schema(s)?,
            None => {
                let t = self.warehouse.load_table(&ident).await?;
                iceberg::arrow::schema_to_arrow_schema(t.metadata().current_schema())?
            }
        });
        // Validate the whole stream before touching the catalog, so a bad
        // stream leaves tables exactly as they were.
        let all = futures::stream::once(async { Ok(first) }).chain(batches);
        let (mut normalized, _reservation) = self
            .collect(all, |b| {
                validate::normalize_to_schema(&lowercase_names(b)?, &target)
            })
            .await?;
        if let Some(schema) = new_schema {
            if exists {
                return self
                    .replace_table(&ident, &display, schema, normalized)
                    .await;
            }
            self.warehouse
                .ensure_tenant_namespace(project, schema_name)
                .await?;
            self.create_tenant_table(&ns, table, schema).await?;
            // The catalog may renumber field ids: bind batches to the table.
            let created = self.warehouse.catalog.load_table(&ident).await?;
            let schema: SchemaRef = Arc::new(iceberg::arrow::schema_to_arrow_schema(
                created.metadata().current_schema(),
            )?);
            normalized = normalized
                .into_iter()
                .map(|b| validate::normalize_to_schema(&b, &schema))
                .collect::<Result<_>>()?;
        }
        self.writer.append(&ident, normalized, request_id).await
    }

    /// Replace an existing tenant table's schema and rows in one commit
    /// (see [`crate::catalog::replace`]); the old rows stay readable until
    /// that commit, and leave storage when its snapshots expire.
    async fn replace_table(
        &self,
        ident: &TableIdent,
        display: &str,
        schema: iceberg::spec::Schema,
        batches: Vec<RecordBatch>,
    ) -> Result<AppendOutcome> {
        let base = self.warehouse.load_table(ident).await?;
        let staged = staged_replacement(&base, &schema)?;
        let target: SchemaRef = Arc::new(iceberg::arrow::schema_to_arrow_schema(
            staged.metadata().current_schema(),
        )?);
        let batches = batches
            .into_iter()
            .map(|b| validate::normalize_to_schema(&b, &target))
            .collect::<Result<Vec<_>>>()?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let files = if rows == 0 {
            vec![]
        } else {
            write::write_data_files(&staged, batches).await?
        };
        let paths: Vec<String> = files.iter().map(|f| f.file_path().to_string()).collect();
        let committed =
            commit_replacement(&self.warehouse.tables, ident, &base, &staged, &files).await;
        // The committer of this table holds its old schema: start afresh.
        self.writer.forget(ident).await;
        match committed {
            // Committed: a failure to re-read the table must not turn into
            // an error now.
            Ok(true) => Ok(AppendOutcome {
                rows,
                files: paths,
                snapshot_id: self
                    .warehouse
                    .load_table(ident)
                    .await
                    .ok()
                    .and_then(|t| t.metadata().current_snapshot_id()),
                deduplicated: false,
            }),
            Ok(false) => {
                write::delete_files(&staged, &paths).await;
                Err(Error::Aborted(format!(
                    "table {display} changed while it was being replaced; nothing was changed, retry"
                )))
            }
            Err(e) => {
                write::delete_files(&staged, &paths).await;
                Err(e)
            }
        }
    }

    async fn create_tenant_table(
        &self,
        ns: &iceberg::NamespaceIdent,
        table: &str,
        schema: iceberg::spec::Schema,
    ) -> Result<()> {
        let creation = TableCreation::builder()
            .name(table.to_string())
            .schema(schema)
            .properties(
                schema::metadata_properties()
                    .into_iter()
                    .chain([(
                        "write.parquet.compression-codec".to_string(),
                        "zstd".to_string(),
                    )])
                    .collect::<HashMap<_, _>>(),
            )
            .build();
        match self.warehouse.catalog.create_table(ns, creation).await {
            Ok(_) => Ok(()),
            // Two concurrent creators: the loser appends to the winner's table.
            Err(e) if e.kind() == ErrorKind::TableAlreadyExists => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Request ids: what a client may use to make retries idempotent.
fn validate_request_id(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(id)
    } else {
        Err(Error::InvalidArgument(
            "request id must be 1-128 characters of A-Z a-z 0-9 - _ . :".into(),
        ))
    }
}

/// Column names of tenant tables are stored lowercase, like unquoted SQL.
fn lowercase_names(batch: &RecordBatch) -> Result<RecordBatch> {
    if batch
        .schema_ref()
        .fields()
        .iter()
        .all(|f| !f.name().bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Ok(batch.clone());
    }
    let fields: Vec<_> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_name(f.name().to_ascii_lowercase()))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        batch.columns().to_vec(),
    )?)
}
