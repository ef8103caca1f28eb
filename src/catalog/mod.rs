//! Opening the Iceberg catalog and storage, and bootstrapping `raw_events`.
//!
//! The embedded default is a SQLite SQL catalog plus a local-filesystem
//! warehouse inside one data directory; both are readable by PyIceberg's
//! `SqlCatalog` with the same catalog name. The rest of the crate only sees
//! `Arc<dyn iceberg::Catalog>`.

pub mod cache;
pub mod db;
pub mod evolve;
pub mod files;
pub mod lease;
pub mod read;
pub mod replace;
pub mod rewrite;
mod summary;
pub mod tenant_view;
pub mod tiers;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{
    SQL_CATALOG_PROP_BIND_STYLE, SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE,
    SqlCatalogBuilder,
};

use crate::error::{Error, Result};
use crate::schema;
use crate::storage::signer::S3Signer;
use crate::storage::vend::S3Vendor;
use crate::storage::{self, AccessLog, S3Config, Store, TableStorageFactory, WarehouseLocation};
use cache::{MetadataPointer, TableCache};

/// Top-level namespace under which each project's own tables live:
/// `tenants.<project_id>.<schema>`; storage follows the same prefix.
pub const TENANTS_NAMESPACE: &str = "tenants";

/// Default data directory of the embedded setup.
pub const DEFAULT_DATA_DIR: &str = "./raindrop-data";
/// Default catalog name recorded in the SQL catalog.
pub const DEFAULT_CATALOG_NAME: &str = "raindrop";

/// Where tables and the catalog live (the `serve`, `compact` and `orphans`
/// flags that [`open`] takes).
#[derive(Debug, Clone, clap::Args)]
pub struct StorageConfig {
    /// Data directory for the embedded default (SQLite catalog, warehouse, tokens).
    #[clap(long, env = "RAINDROP_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// SQL catalog URI; default `sqlite://<data-dir>/catalog.db`. Postgres: `postgres://…`.
    #[clap(long, env = "RAINDROP_CATALOG_URI")]
    pub catalog_uri: Option<String>,
    /// Warehouse location: a directory (default `file://<data-dir>/warehouse`)
    /// or an S3-compatible bucket, `s3://bucket/prefix` (see the `--s3-*` flags).
    #[clap(long, env = "RAINDROP_WAREHOUSE")]
    pub warehouse: Option<String>,
    /// How to reach an `s3://` warehouse.
    #[clap(flatten)]
    pub s3: S3Config,
    /// Catalog name recorded in the SQL catalog (PyIceberg's `SqlCatalog(name)`).
    #[clap(long, env = "RAINDROP_CATALOG_NAME", default_value = DEFAULT_CATALOG_NAME)]
    pub catalog_name: String,
    /// Iceberg namespace (and SQL schema) of the `raw_events` table.
    #[clap(long, env = "RAINDROP_NAMESPACE", default_value = schema::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

impl StorageConfig {
    /// Embedded defaults rooted at `data_dir` (used by tests and the demo).
    pub fn in_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            catalog_uri: None,
            warehouse: None,
            s3: S3Config::default(),
            catalog_name: DEFAULT_CATALOG_NAME.into(),
            namespace: schema::DEFAULT_NAMESPACE.into(),
        }
    }
}

/// An open catalog plus the names Raindrop uses in it.
#[derive(Clone)]
pub struct Warehouse {
    /// The Iceberg catalog.
    pub catalog: Arc<dyn Catalog>,
    /// Namespace holding `raw_events` (also its SQL schema name).
    pub namespace: NamespaceIdent,
    /// Catalog URI (for messages and for other engines to connect).
    pub catalog_uri: String,
    /// Warehouse root location.
    pub warehouse: String,
    /// Name recorded in the SQL catalog.
    pub catalog_name: String,
    /// Loaded tables, reused while the catalog points at the same metadata.
    pub tables: Arc<TableCache>,
    /// Every object read through the catalog's storage (when recording).
    pub access_log: Arc<AccessLog>,
    /// The warehouse's storage backend (listing and deleting files).
    pub store: Store,
    /// Signs other engines' reads of an S3 warehouse (the REST catalog's
    /// remote signer); `None` on local disk or without static S3 keys.
    pub signer: Option<Arc<S3Signer>>,
    /// Vends tenant-scoped S3 read credentials through STS; `None` unless
    /// `--s3-vend-role-arn` is set.
    pub vendor: Option<Arc<S3Vendor>>,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse")
            .field("namespace", &self.namespace)
            .field("warehouse", &self.warehouse)
            .finish_non_exhaustive()
    }
}

/// An absolute, normalised data directory: every location written into
/// table metadata derives from it, and every reader must open those.
fn absolute(path: &Path) -> Result<PathBuf> {
    match WarehouseLocation::parse(&path.to_string_lossy())? {
        WarehouseLocation::Local(dir) => Ok(dir),
        WarehouseLocation::S3 { .. } => Err(Error::InvalidArgument(format!(
            "--data-dir {} must be a local directory (an S3 warehouse goes in --warehouse)",
            path.display()
        ))),
    }
}

/// The normalised form of a local table `location`, when it is spelled
/// otherwise. Older builds of Raindrop wrote the data dir as given, e.g.
/// `file:///home/u/./raindrop-data/warehouse/...` for the default relative
/// dir, and Polars' Iceberg reader refuses such paths. Object-store
/// locations are left alone: their keys are literal.
fn repaired_location(location: &str) -> Option<String> {
    if !location.starts_with("file:") {
        return None;
    }
    let normalised = WarehouseLocation::parse(location).ok()?.uri();
    (normalised != location).then_some(normalised)
}

/// Put a SQLite catalog file in WAL mode (a persistent property of the
/// file; sqlx connections wait up to 5 s on a busy database), so one
/// writer and many readers (this server, PyIceberg, a second node) coexist.
async fn prepare_sqlite(db: &Path) -> Result<()> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    use sqlx::{ConnectOptions, Connection};
    let opts = SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10));
    let conn = opts
        .connect()
        .await
        .map_err(|e| Error::Internal(format!("opening SQLite catalog {}: {e}", db.display())))?;
    conn.close().await.ok();
    Ok(())
}

/// Whether a catalog open failed because another process created the
/// catalog tables at the same moment.
fn is_create_race(e: &iceberg::Error) -> bool {
    let m = e.to_string();
    m.contains("already exists") || m.contains("duplicate key")
}

/// A connection string without its password, for messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &uri[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..]),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

/// Open the catalog described by `cfg` and make sure `raw_events` exists.
pub async fn open(cfg: &StorageConfig) -> Result<Warehouse> {
    let data_dir = absolute(&cfg.data_dir)?;
    std::fs::create_dir_all(&data_dir)?;
    let (uri, bind_style) = match &cfg.catalog_uri {
        Some(uri) if uri.starts_with("postgres") => (uri.clone(), "DollarNumeric"),
        Some(uri) => (uri.clone(), "QMark"),
        None => {
            let db = data_dir.join("catalog.db");
            prepare_sqlite(&db).await?;
            (format!("sqlite://{}?mode=rwc", db.display()), "QMark")
        }
    };
    let location = match &cfg.warehouse {
        Some(w) => WarehouseLocation::parse(w)?,
        None => WarehouseLocation::Local(data_dir.join("warehouse")),
    };
    let warehouse = location.uri();
    let access_log = Arc::new(AccessLog::default());
    let store = storage::connect(&location, &cfg.s3, access_log.clone()).await?;
    let (signer, vendor) = match &location {
        WarehouseLocation::S3 { bucket, .. } => (
            S3Signer::new(&cfg.s3, bucket)?.map(Arc::new),
            S3Vendor::new(&cfg.s3, bucket)?.map(Arc::new),
        ),
        WarehouseLocation::Local(_) => (None, None),
    };
    let props = HashMap::from([
        (SQL_CATALOG_PROP_URI.to_string(), uri.clone()),
        (SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse.clone()),
        (
            SQL_CATALOG_PROP_BIND_STYLE.to_string(),
            bind_style.to_string(),
        ),
    ]);
    let factory = Arc::new(TableStorageFactory::new(store.clone(), access_log.clone()));
    // Opening creates the catalog tables if missing. On PostgreSQL,
    // `CREATE TABLE IF NOT EXISTS` is not atomic: nodes starting together
    // can collide on it; the loser's retry finds the tables.
    let mut attempt = 0;
    let catalog = loop {
        let opened = SqlCatalogBuilder::default()
            .with_storage_factory(factory.clone())
            .load(cfg.catalog_name.clone(), props.clone())
            .await;
        match opened {
            Ok(catalog) => break catalog,
            Err(e) if attempt < 3 && is_create_race(&e) => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "cannot open the catalog at {} (--catalog-uri): {e}",
                    redact(&uri)
                )));
            }
        }
    };
    let pointer = MetadataPointer::connect(&uri, &cfg.catalog_name).await?;
    let wh = Warehouse {
        tables: Arc::new(TableCache::new(Some(pointer), 256)),
        access_log,
        store,
        signer,
        vendor,
        catalog: Arc::new(catalog),
        namespace: NamespaceIdent::new(cfg.namespace.clone()),
        catalog_uri: uri,
        warehouse,
        catalog_name: cfg.catalog_name.clone(),
    };
    wh.ensure_raw_events().await?;
    Ok(wh)
}

impl Warehouse {
    /// Identifier of the telemetry table.
    pub fn raw_events_ident(&self) -> TableIdent {
        TableIdent::new(self.namespace.clone(), schema::RAW_EVENTS.to_string())
    }

    /// Load the telemetry table's current version (cached, see [`cache`]).
    pub async fn raw_events(&self) -> Result<Table> {
        self.load_table(&self.raw_events_ident()).await
    }

    /// Load any table's current version through the metadata cache.
    pub async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        self.tables.load(self.catalog.as_ref(), ident).await
    }

    /// Create namespace and `raw_events` if missing; safe when several
    /// processes start at once.
    pub async fn ensure_raw_events(&self) -> Result<Table> {
        self.ensure_namespace(&self.namespace).await?;
        let ident = self.raw_events_ident();
        if self.catalog.table_exists(&ident).await? {
            let table = self.load_table(&ident).await?;
            if repaired_location(table.metadata().location()).is_some() {
                // The data dir was spelled this way when the tenants'
                // tables were made too. They go first: a crash part-way
                // leaves `raw_events` unrepaired, so the next start
                // walks them again.
                self.repair_tenant_locations().await?;
            }
            return self.upgrade_table(&ident, true).await;
        }
        let creation = TableCreation::builder()
            .name(schema::RAW_EVENTS.to_string())
            .schema(schema::raw_events_schema())
            .partition_spec(schema::raw_events_partition_spec())
            .properties(schema::raw_events_properties())
            .build();
        match self.catalog.create_table(&self.namespace, creation).await {
            Ok(t) => {
                tracing::info!(table = %ident, location = t.metadata().location(), "created raw_events");
                Ok(t)
            }
            Err(e) if e.kind() == ErrorKind::TableAlreadyExists => self.raw_events().await,
            Err(e) => Err(e.into()),
        }
    }

    /// Bring a table made by an older Raindrop up to date: the metadata
    /// properties it lacks (see [`schema::metadata_properties`], only for
    /// `raw_events`) and a normalised location (see [`repaired_location`]),
    /// so files and metadata written from now on open in every reader.
    /// Another node doing the same at once is harmless.
    async fn upgrade_table(&self, ident: &TableIdent, add_properties: bool) -> Result<Table> {
        use iceberg::transaction::{ApplyTransactionAction, Transaction};
        let table = self.load_table(ident).await?;
        let missing: Vec<(String, String)> = schema::metadata_properties()
            .into_iter()
            .filter(|(k, _)| add_properties && !table.metadata().properties().contains_key(k))
            .collect();
        let location = repaired_location(table.metadata().location());
        if missing.is_empty() && location.is_none() {
            return Ok(table);
        }
        let mut tx = Transaction::new(&table);
        if !missing.is_empty() {
            let mut action = tx.update_table_properties();
            for (k, v) in missing {
                action = action.set(k, v);
            }
            tx = action.apply(tx)?;
        }
        if let Some(location) = &location {
            tx = tx
                .update_location()
                .set_location(location.clone())
                .apply(tx)?;
        }
        let table = tx.commit(self.catalog.as_ref()).await?;
        match location {
            Some(location) => tracing::info!(
                table = %ident, %location,
                "normalised the table location: files written from now on open in every reader"
            ),
            None => tracing::info!(table = %ident, "set metadata-cleanup properties"),
        }
        Ok(table)
    }

    /// Normalise the location of every tenant table (see
    /// [`Self::upgrade_table`]).
    async fn repair_tenant_locations(&self) -> Result<()> {
        for ident in self.all_tenant_tables().await? {
            self.upgrade_table(&ident, false).await?;
        }
        Ok(())
    }

    /// Every project's own tables (maintenance: expiry, repairs).
    pub async fn all_tenant_tables(&self) -> Result<Vec<TableIdent>> {
        let root = NamespaceIdent::from_strs([TENANTS_NAMESPACE]).expect("non-empty namespace");
        if !self.catalog.namespace_exists(&root).await? {
            return Ok(vec![]);
        }
        let mut out = vec![];
        // A SQL catalog lists every namespace below `tenants`, not only
        // its children.
        for ns in self.catalog.list_namespaces(Some(&root)).await? {
            out.extend(self.catalog.list_tables(&ns).await?);
        }
        Ok(out)
    }

    /// Create a namespace unless it exists (tolerating a concurrent creator).
    pub async fn ensure_namespace(&self, ns: &NamespaceIdent) -> Result<()> {
        if self.catalog.namespace_exists(ns).await? {
            return Ok(());
        }
        match self.catalog.create_namespace(ns, HashMap::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NamespaceAlreadyExists => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Iceberg namespace of a project's schema. Inputs must be validated
    /// names (see [`crate::tenant::names`]); the project comes from the token.
    pub fn tenant_namespace(&self, project_id: &str, schema: &str) -> NamespaceIdent {
        NamespaceIdent::from_strs([TENANTS_NAMESPACE, project_id, schema])
            .expect("non-empty namespace")
    }

    /// A project's own schemas (SQL schema names) and the tables in each,
    /// sorted. A SQL catalog answers in one indexed query; other catalogs
    /// through the catalog API.
    pub async fn tenant_tables(&self, project_id: &str) -> Result<BTreeMap<String, Vec<String>>> {
        let parent = NamespaceIdent::from_strs([TENANTS_NAMESPACE, project_id])
            .expect("non-empty namespace");
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // Keep exact `tenants.<project>.<schema>` entries only.
        let schema_of = |ns: &[String]| -> Option<String> {
            (ns.len() == 3 && ns[0] == TENANTS_NAMESPACE && ns[1] == project_id)
                .then(|| ns[2].clone())
        };
        if let Some(pointer) = self.tables.pointer() {
            for (ns, table) in pointer.children(&parent.join(".")).await? {
                let parts: Vec<String> = ns.split('.').map(str::to_string).collect();
                if let Some(schema) = schema_of(&parts) {
                    let tables = out.entry(schema).or_default();
                    tables.extend(table);
                }
            }
        } else if self.catalog.namespace_exists(&parent).await? {
            for ns in self.catalog.list_namespaces(Some(&parent)).await? {
                if let Some(schema) = schema_of(ns.as_ref()) {
                    let tables = self.catalog.list_tables(&ns).await?;
                    out.entry(schema)
                        .or_default()
                        .extend(tables.into_iter().map(|t| t.name().to_string()));
                }
            }
        }
        for tables in out.values_mut() {
            tables.sort();
            tables.dedup();
        }
        Ok(out)
    }

    /// Create `tenants.<project>.<schema>` (and its parents) if missing.
    pub async fn ensure_tenant_namespace(
        &self,
        project_id: &str,
        schema: &str,
    ) -> Result<NamespaceIdent> {
        for ns in [
            NamespaceIdent::from_strs([TENANTS_NAMESPACE]).expect("non-empty"),
            NamespaceIdent::from_strs([TENANTS_NAMESPACE, project_id]).expect("non-empty"),
            self.tenant_namespace(project_id, schema),
        ] {
            self.ensure_namespace(&ns).await?;
        }
        Ok(self.tenant_namespace(project_id, schema))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn catalog_uris_lose_their_password_in_messages() {
        assert_eq!(
            super::redact("postgres://app:s3cret@db:5432/raindrop"),
            "postgres://app:***@db:5432/raindrop"
        );
        assert_eq!(
            super::redact("postgres://app@db/raindrop"),
            "postgres://app@db/raindrop"
        );
        assert_eq!(
            super::redact("sqlite:///x/catalog.db"),
            "sqlite:///x/catalog.db"
        );
    }

    #[test]
    fn only_misspelled_local_locations_are_repaired() {
        use super::repaired_location;
        assert_eq!(
            repaired_location("file:///home/u/./data/warehouse/wildedge/raw_events").as_deref(),
            Some("file:///home/u/data/warehouse/wildedge/raw_events")
        );
        assert_eq!(
            repaired_location("file:///w/x/../wildedge/raw_events").as_deref(),
            Some("file:///w/wildedge/raw_events")
        );
        assert_eq!(repaired_location("file:///w/wildedge/raw_events"), None);
        assert_eq!(repaired_location("s3://bkt/./w/raw_events"), None);
    }
}
