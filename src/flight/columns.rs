//! Flight SQL column metadata: the `ARROW:FLIGHT:SQL:*` field metadata keys
//! on every schema Raindrop returns (result sets, prepared statements,
//! `GetTables` column schemas). Clients that reflect tables or result sets
//! (`adbc_get_objects`, sqlalchemy-adbc, JDBC tools) read the SQL type name,
//! precision and scale from here; without them they see untyped columns.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{DFSchema, TableReference};

const CATALOG_NAME: &str = "ARROW:FLIGHT:SQL:CATALOG_NAME";
const DB_SCHEMA_NAME: &str = "ARROW:FLIGHT:SQL:DB_SCHEMA_NAME";
const TABLE_NAME: &str = "ARROW:FLIGHT:SQL:TABLE_NAME";
const TYPE_NAME: &str = "ARROW:FLIGHT:SQL:TYPE_NAME";
const PRECISION: &str = "ARROW:FLIGHT:SQL:PRECISION";
const SCALE: &str = "ARROW:FLIGHT:SQL:SCALE";
const IS_AUTO_INCREMENT: &str = "ARROW:FLIGHT:SQL:IS_AUTO_INCREMENT";
const IS_CASE_SENSITIVE: &str = "ARROW:FLIGHT:SQL:IS_CASE_SENSITIVE";
const IS_READ_ONLY: &str = "ARROW:FLIGHT:SQL:IS_READ_ONLY";
const IS_SEARCHABLE: &str = "ARROW:FLIGHT:SQL:IS_SEARCHABLE";

/// The table a column belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// SQL catalog.
    pub catalog: &'a str,
    /// SQL schema.
    pub db_schema: &'a str,
    /// Table.
    pub table: &'a str,
}

/// SQL name, precision and scale of an Arrow type, in the names
/// `GetXdbcTypeInfo` lists (what DataFusion's SQL accepts in `CAST`).
pub fn sql_type(t: &DataType) -> (String, Option<u32>, Option<u32>) {
    let fraction = |unit: &TimeUnit| match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        TimeUnit::Microsecond => 6,
        TimeUnit::Nanosecond => 9,
    };
    let named = |name: &str, precision: Option<u32>| (name.to_string(), precision, None);
    match t {
        DataType::Boolean => named("BOOLEAN", Some(1)),
        DataType::Int8 => named("TINYINT", Some(3)),
        DataType::Int16 => named("SMALLINT", Some(5)),
        DataType::Int32 => named("INTEGER", Some(10)),
        DataType::Int64 => named("BIGINT", Some(19)),
        DataType::UInt8 => named("TINYINT UNSIGNED", Some(3)),
        DataType::UInt16 => named("SMALLINT UNSIGNED", Some(5)),
        DataType::UInt32 => named("INTEGER UNSIGNED", Some(10)),
        DataType::UInt64 => named("BIGINT UNSIGNED", Some(20)),
        DataType::Float16 | DataType::Float32 => named("FLOAT", Some(7)),
        DataType::Float64 => named("DOUBLE", Some(15)),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => (
            "DECIMAL".into(),
            Some(u32::from(*p)),
            Some((*s).max(0) as u32),
        ),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => named("VARCHAR", None),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => named("VARBINARY", None),
        DataType::FixedSizeBinary(n) => named("BINARY", Some((*n).max(0) as u32)),
        DataType::Date32 | DataType::Date64 => named("DATE", Some(10)),
        DataType::Time32(unit) | DataType::Time64(unit) => {
            ("TIME".into(), Some(8), Some(fraction(unit)))
        }
        // Precision is the width of the text form, as JDBC reports it.
        DataType::Timestamp(unit, tz) => {
            let digits = fraction(unit);
            let width = 19 + if digits > 0 { digits + 1 } else { 0 };
            let name = match tz {
                Some(_) => "TIMESTAMP WITH TIME ZONE",
                None => "TIMESTAMP",
            };
            (name.into(), Some(width), Some(digits))
        }
        DataType::Interval(_) | DataType::Duration(_) => named("INTERVAL", None),
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(..) => named("ARRAY", None),
        DataType::Struct(_) => named("STRUCT", None),
        DataType::Map(..) => named("MAP", None),
        DataType::Dictionary(_, value) => sql_type(value),
        DataType::RunEndEncoded(_, values) => sql_type(values.data_type()),
        DataType::Null => named("NULL", None),
        DataType::Union(..) => named("UNION", None),
    }
}

/// `field` with Flight SQL column metadata in place of any it had (Iceberg
/// field ids and other storage details are not the client's business).
pub fn describe(field: &Field, origin: Option<Origin<'_>>, read_only: bool) -> Field {
    let (name, precision, scale) = sql_type(field.data_type());
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let mut m = HashMap::from([
        (TYPE_NAME.to_string(), name),
        (IS_AUTO_INCREMENT.to_string(), flag(false)),
        (
            IS_CASE_SENSITIVE.to_string(),
            flag(matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )),
        ),
        (IS_READ_ONLY.to_string(), flag(read_only)),
        (IS_SEARCHABLE.to_string(), flag(true)),
    ]);
    if let Some(p) = precision {
        m.insert(PRECISION.into(), p.to_string());
    }
    if let Some(s) = scale {
        m.insert(SCALE.into(), s.to_string());
    }
    if let Some(o) = origin {
        m.insert(CATALOG_NAME.into(), o.catalog.into());
        m.insert(DB_SCHEMA_NAME.into(), o.db_schema.into());
        m.insert(TABLE_NAME.into(), o.table.into());
    }
    field.clone().with_metadata(m)
}

/// A table's columns as `GetTables` reports them.
pub fn table_schema(schema: &Schema, origin: Origin<'_>, read_only: bool) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| describe(f, Some(origin), read_only))
            .collect::<Vec<_>>(),
    )
}

/// A result set's columns: each column that is a table's column (qualified
/// by schema and table) names its origin. A bare qualifier may be an alias,
/// so it names none. Results are read only.
pub fn result_schema(schema: &DFSchema, catalog: &str) -> SchemaRef {
    let fields: Vec<Field> = schema
        .iter()
        .map(|(qualifier, field)| {
            let origin = match qualifier {
                Some(TableReference::Full {
                    catalog,
                    schema,
                    table,
                }) => Some(Origin {
                    catalog,
                    db_schema: schema,
                    table,
                }),
                Some(TableReference::Partial { schema, table }) => Some(Origin {
                    catalog,
                    db_schema: schema,
                    table,
                }),
                _ => None,
            };
            describe(field, origin, true)
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Prepared-statement parameters: a type name where the type is known.
pub fn parameter_schema(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Null => f.as_ref().clone(),
                _ => describe(f, None, true),
            })
            .collect::<Vec<_>>(),
    )
}
