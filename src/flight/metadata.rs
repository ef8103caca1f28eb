//! Flight SQL metadata answers (`GetCatalogs`, `GetDbSchemas`, `GetTables`,
//! `GetTableTypes`, `GetXdbcTypeInfo`, key lookups), built from the
//! caller's own session so they list exactly what the caller can query.
//! Result schemas are the ones the Flight SQL spec declares, and each
//! `FlightInfo` carries the same schema as the batches `DoGet` streams.

use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::sql::metadata::{XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTableTypes, CommandGetTables, Nullable,
    Searchable, XdbcDataType, XdbcDatetimeSubcode,
};

use super::columns::{self, Origin};
use crate::error::{Error, Result};
use crate::query::{self, QueryEngine};
use crate::tenant::Principal;

/// Table types Raindrop reports: the ones `GetTables` uses, no others
/// (users cannot create views).
pub const TABLE_TYPES: &[&str] = &[query::SYSTEM_TABLE, query::TABLE];

fn arrow_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("building metadata: {e}"))
}

/// `GetCatalogs`.
pub async fn catalogs(
    engine: &QueryEngine,
    principal: &Principal,
    cmd: CommandGetCatalogs,
) -> Result<RecordBatch> {
    let objects = engine.catalog_objects(principal, false).await?;
    let mut b = cmd.into_builder();
    b.append(&objects.catalog);
    b.build().map_err(arrow_err)
}

/// `GetDbSchemas` (catalog and LIKE filters applied by the builder).
pub async fn db_schemas(
    engine: &QueryEngine,
    principal: &Principal,
    cmd: CommandGetDbSchemas,
) -> Result<RecordBatch> {
    let objects = engine.catalog_objects(principal, false).await?;
    let mut b = cmd.into_builder();
    for s in &objects.schemas {
        b.append(&objects.catalog, s);
    }
    b.build().map_err(arrow_err)
}

/// `GetTables`, with table schemas when `include_schema` is set.
pub async fn tables(
    engine: &QueryEngine,
    principal: &Principal,
    cmd: CommandGetTables,
) -> Result<RecordBatch> {
    let objects = engine
        .catalog_objects(principal, cmd.include_schema)
        .await?;
    let mut b = cmd.into_builder();
    let events_schema = engine.warehouse().namespace.to_url_string();
    for t in &objects.tables {
        let origin = Origin {
            catalog: &objects.catalog,
            db_schema: &t.db_schema,
            table: &t.name,
        };
        // raw_events takes ingest, not SQL writes; system tables neither.
        let read_only = t.table_type != query::TABLE
            || (t.db_schema == events_schema && t.name == crate::schema::RAW_EVENTS);
        let schema = match &t.schema {
            Some(s) => columns::table_schema(s, origin, read_only),
            None => Schema::empty(),
        };
        b.append(
            &objects.catalog,
            &t.db_schema,
            &t.name,
            t.table_type,
            &schema,
        )
        .map_err(arrow_err)?;
    }
    b.build().map_err(arrow_err)
}

/// `GetTableTypes`.
pub fn table_types(cmd: CommandGetTableTypes) -> Result<RecordBatch> {
    let mut b = cmd.into_builder();
    for t in TABLE_TYPES {
        b.append(t);
    }
    b.build().map_err(arrow_err)
}

fn xdbc(
    name: &str,
    data_type: XdbcDataType,
    column_size: Option<i32>,
    quoted: bool,
) -> XdbcTypeInfo {
    // ODBC's SQL_CODE_DATE is 1, which arrow-flight names `XdbcSubcodeYear`.
    let datetime_subcode = match data_type {
        XdbcDataType::XdbcDate => Some(XdbcDatetimeSubcode::XdbcSubcodeYear),
        XdbcDataType::XdbcTimestamp => Some(XdbcDatetimeSubcode::XdbcSubcodeTimestamp),
        _ => None,
    };
    let sql_data_type = if datetime_subcode.is_some() {
        XdbcDataType::XdbcDatetime
    } else {
        data_type
    };
    XdbcTypeInfo {
        type_name: name.to_string(),
        data_type,
        column_size,
        literal_prefix: quoted.then(|| "'".to_string()),
        literal_suffix: quoted.then(|| "'".to_string()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: quoted,
        searchable: Searchable::Full,
        unsigned_attribute: (!quoted).then_some(false),
        fixed_prec_scale: false,
        auto_increment: (!quoted).then_some(false),
        local_type_name: Some(name.to_string()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type,
        datetime_subcode,
        num_prec_radix: (!quoted).then_some(10),
        interval_precision: None,
    }
}

/// The SQL types Raindrop's tables use, for `GetXdbcTypeInfo`.
pub fn xdbc_type_info() -> &'static XdbcTypeInfoData {
    static DATA: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
        let mut b = XdbcTypeInfoDataBuilder::new();
        b.append(xdbc(
            "VARCHAR",
            XdbcDataType::XdbcVarchar,
            Some(i32::MAX),
            true,
        ));
        b.append(xdbc("BIGINT", XdbcDataType::XdbcBigint, Some(19), false));
        b.append(xdbc("INTEGER", XdbcDataType::XdbcInteger, Some(10), false));
        b.append(xdbc("DOUBLE", XdbcDataType::XdbcDouble, Some(15), false));
        b.append(xdbc("FLOAT", XdbcDataType::XdbcFloat, Some(7), false));
        b.append(xdbc("BOOLEAN", XdbcDataType::XdbcBit, Some(1), false));
        b.append(xdbc("DATE", XdbcDataType::XdbcDate, Some(10), true));
        b.append(xdbc(
            "TIMESTAMP",
            XdbcDataType::XdbcTimestamp,
            Some(32),
            true,
        ));
        b.append(xdbc(
            "TIMESTAMP WITH TIME ZONE",
            XdbcDataType::XdbcTimestamp,
            Some(32),
            true,
        ));
        b.append(xdbc(
            "VARBINARY",
            XdbcDataType::XdbcVarbinary,
            Some(i32::MAX),
            true,
        ));
        b.build().expect("static type info is valid")
    });
    &DATA
}

/// Schema of `GetPrimaryKeys` results.
pub fn primary_keys_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("catalog_name", DataType::Utf8, true),
            Field::new("db_schema_name", DataType::Utf8, true),
            Field::new("table_name", DataType::Utf8, false),
            Field::new("column_name", DataType::Utf8, false),
            Field::new("key_name", DataType::Utf8, true),
            Field::new("key_sequence", DataType::Int32, false),
        ]))
    });
    SCHEMA.clone()
}

/// Schema of `GetExportedKeys` / `GetImportedKeys` / `GetCrossReference`.
pub fn foreign_keys_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("pk_catalog_name", DataType::Utf8, true),
            Field::new("pk_db_schema_name", DataType::Utf8, true),
            Field::new("pk_table_name", DataType::Utf8, false),
            Field::new("pk_column_name", DataType::Utf8, false),
            Field::new("fk_catalog_name", DataType::Utf8, true),
            Field::new("fk_db_schema_name", DataType::Utf8, true),
            Field::new("fk_table_name", DataType::Utf8, false),
            Field::new("fk_column_name", DataType::Utf8, false),
            Field::new("key_sequence", DataType::Int32, false),
            Field::new("fk_key_name", DataType::Utf8, true),
            Field::new("pk_key_name", DataType::Utf8, true),
            Field::new("update_rule", DataType::UInt8, false),
            Field::new("delete_rule", DataType::UInt8, false),
        ]))
    });
    SCHEMA.clone()
}
