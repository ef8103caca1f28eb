//! Turn whatever Arrow a client sent into exactly the table's Arrow schema,
//! or explain precisely why not.
//!
//! Clients differ in what they send for the same data (pandas gives ns
//! timestamps, Polars `Utf8View`/`LargeUtf8`, JSON-born frames int64 for
//! everything), so compatible types are coerced; anything lossy or ambiguous
//! is rejected with the column name and the fix.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, MapArray, RecordBatch, StructArray, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use arrow::util::display::FormatOptions;

use crate::error::{Error, Result};
use crate::schema::col;
use crate::tenant::scope::{self, ProjectRule};

/// Find a column by exact name, then case-insensitively.
fn find_column<'a>(batch: &'a RecordBatch, name: &str) -> Option<(&'a FieldRef, &'a ArrayRef)> {
    let schema = batch.schema_ref();
    let idx = schema.index_of(name).ok().or_else(|| {
        schema
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(name))
    })?;
    Some((&schema.fields()[idx], batch.column(idx)))
}

fn strict() -> CastOptions<'static> {
    CastOptions {
        safe: false,
        format_options: FormatOptions::default(),
    }
}

fn is_stringish(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        || matches!(t, DataType::Dictionary(_, v) if is_stringish(v))
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

/// Cast one column to the target field's type, with the rules above.
fn coerce(name: &str, array: &ArrayRef, target: &Field) -> Result<ArrayRef> {
    let from = array.data_type();
    let to = target.data_type();
    if from == to {
        return Ok(array.clone());
    }
    let bad = |why: &str| {
        Error::InvalidArgument(format!("column '{name}': cannot use {from} as {to}: {why}"))
    };
    let allowed = match to {
        DataType::Utf8 => is_stringish(from) || from == &DataType::Null,
        DataType::Float64 | DataType::Float32 => is_numeric(from) || from == &DataType::Null,
        // Integers only: a float would be truncated silently.
        DataType::Int32 | DataType::Int64 => from.is_integer() || from == &DataType::Null,
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            matches!(from, DataType::Timestamp(_, _) | DataType::Null) || is_stringish(from)
        }
        DataType::Binary | DataType::LargeBinary => matches!(
            from,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::Null
        ),
        DataType::Boolean => matches!(from, DataType::Boolean | DataType::Null),
        DataType::Map(_, _) => return coerce_map(name, array, target),
        _ => from.equals_datatype(to) || from == &DataType::Null,
    };
    if !allowed {
        return Err(bad("send a compatible type"));
    }
    if let (DataType::Timestamp(_, None), DataType::Timestamp(u, Some(_))) = (from, to) {
        // Naive timestamps are taken as UTC: reinterpret, don't shift.
        let utc = cast_with_options(array, &DataType::Timestamp(*u, None), &strict())
            .map_err(|e| bad(&e.to_string()))?;
        return cast_with_options(&utc, to, &strict()).map_err(|e| bad(&e.to_string()));
    }
    cast_with_options(array, to, &strict()).map_err(|e| {
        bad(&format!(
            "{e} (values must fit the target type{})",
            if is_stringish(from) && matches!(to, DataType::Timestamp(..)) {
                "; timestamp strings must be RFC 3339, e.g. 2026-11-01T12:00:00Z"
            } else {
                ""
            }
        ))
    })
}

/// Rebuild a `Map<string, string>` with the target's field names and ids.
fn coerce_map(name: &str, array: &ArrayRef, target: &Field) -> Result<ArrayRef> {
    let DataType::Map(entries_field, sorted) = target.data_type() else {
        unreachable!("caller checked");
    };
    let DataType::Struct(kv_fields) = entries_field.data_type() else {
        return Err(Error::Internal("map entries are not a struct".into()));
    };
    let map = array.as_any().downcast_ref::<MapArray>().ok_or_else(|| {
        Error::InvalidArgument(format!(
            "column '{name}': expected a map<string, string>, got {}",
            array.data_type()
        ))
    })?;
    let keys = coerce(&format!("{name}.key"), map.keys(), &kv_fields[0])?;
    let values = coerce(&format!("{name}.value"), map.values(), &kv_fields[1])?;
    if keys.null_count() > 0 {
        return Err(Error::InvalidArgument(format!(
            "column '{name}': map keys must not be null"
        )));
    }
    let entries = StructArray::try_new(kv_fields.clone(), vec![keys, values], None)?;
    Ok(Arc::new(MapArray::try_new(
        entries_field.clone(),
        map.offsets().clone(),
        entries,
        map.nulls().cloned(),
        *sorted,
    )?))
}

/// Most rows one ingest batch may carry. A batch's row count is a number in
/// its IPC header: a batch of only null-typed columns (or none) costs a few
/// bytes on the wire whatever it claims, and normalising it allocates per
/// row (the stamped `project_id`, `ingested_at`, null columns), so the
/// count is bounded before anything is allocated. 4 Mi rows of real
/// telemetry is far beyond the 512 MiB stream limit anyway.
pub const MAX_BATCH_ROWS: usize = 4 * 1024 * 1024;

fn check_rows(batch: &RecordBatch) -> Result<usize> {
    let rows = batch.num_rows();
    if batch.num_columns() == 0 && rows > 0 {
        return Err(Error::InvalidArgument(
            "batch has rows but no columns".into(),
        ));
    }
    if rows > MAX_BATCH_ROWS {
        return Err(Error::InvalidArgument(format!(
            "batch has {rows} rows; send at most {MAX_BATCH_ROWS} rows per batch"
        )));
    }
    Ok(rows)
}

fn first_null(array: &ArrayRef) -> Option<usize> {
    (0..array.len()).find(|&i| array.is_null(i))
}

/// Normalise a client batch to the `raw_events` Arrow schema.
///
/// `ingested_at` is always set by the server to `now_micros`.
pub fn normalize_raw_events(
    batch: &RecordBatch,
    target: &SchemaRef,
    project: ProjectRule<'_>,
    now_micros: i64,
) -> Result<RecordBatch> {
    let rows = check_rows(batch)?;
    for f in batch.schema_ref().fields() {
        let known = target
            .fields()
            .iter()
            .any(|t| t.name().eq_ignore_ascii_case(f.name()));
        if !known {
            return Err(Error::InvalidArgument(format!(
                "unknown column '{}': raw_events has {}; put extra fields into the 'attributes' map",
                f.name(),
                target
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let name = field.name().as_str();
        let column: ArrayRef = if name == col::INGESTED_AT {
            let ts = arrow::array::TimestampMicrosecondArray::from(vec![now_micros; rows])
                .with_timezone("+00:00");
            Arc::new(ts)
        } else if name == col::PROJECT_ID {
            project_column(batch, field, project)?
        } else {
            match find_column(batch, name) {
                Some((_, array)) => coerce(name, array, field)?,
                None if field.is_nullable() => new_null_array(field.data_type(), rows),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "missing required column '{name}' ({})",
                        field.data_type()
                    )));
                }
            }
        };
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(Error::InvalidArgument(format!(
                "column '{name}' is required but has {} null value(s) (first at row {})",
                column.null_count(),
                first_null(&column).unwrap_or_default()
            )));
        }
        columns.push(column);
    }
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

fn project_column(batch: &RecordBatch, field: &Field, rule: ProjectRule<'_>) -> Result<ArrayRef> {
    let given = find_column(batch, col::PROJECT_ID)
        .map(|(_, a)| coerce(col::PROJECT_ID, a, field))
        .transpose()?;
    scope::stamp_project(rule, given, batch.num_rows())
}

/// Normalise a batch for a tenant's own table: match columns by name, coerce
/// compatible types, fill missing nullable columns with nulls.
pub fn normalize_to_schema(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    for f in batch.schema_ref().fields() {
        if target.field_with_name(f.name()).is_err() {
            return Err(Error::InvalidArgument(format!(
                "unknown column '{}': the table has {}",
                f.name(),
                target
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let rows = check_rows(batch)?;
    let columns = target
        .fields()
        .iter()
        .map(|field| {
            let name = field.name();
            let col = match batch.column_by_name(name) {
                Some(a) => {
                    let a = coerce(name, a, field)?;
                    if !field.is_nullable() && a.null_count() > 0 {
                        return Err(Error::InvalidArgument(format!(
                            "column '{name}' is required but has null values"
                        )));
                    }
                    a
                }
                None if field.is_nullable() => new_null_array(field.data_type(), rows),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "missing required column '{name}'"
                    )));
                }
            };
            Ok(col)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

/// Arrow schema for a new tenant table from the first batch a client sends:
/// string-like columns become `Utf8`, unsupported types are refused.
pub fn table_schema_from_client(schema: &Schema) -> Result<Schema> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            crate::tenant::names::normalize_identifier("column", f.name())?;
            let t = match f.data_type() {
                t if is_stringish(t) => DataType::Utf8,
                // Iceberg `binary` reads back as LargeBinary.
                DataType::Binary | DataType::BinaryView => DataType::LargeBinary,
                // Iceberg v2 stores µs; coarser units widen losslessly.
                DataType::Timestamp(_, Some(_)) => {
                    DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
                }
                DataType::Timestamp(_, None) => DataType::Timestamp(TimeUnit::Microsecond, None),
                DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => {
                    DataType::Int32
                }
                DataType::UInt32 => DataType::Int64,
                DataType::Float16 => DataType::Float32,
                DataType::Null => DataType::Utf8,
                t => t.clone(),
            };
            Ok(Field::new(f.name().to_ascii_lowercase(), t, true))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::raw_events_arrow_schema;
    use arrow::array::{
        Float32Array, Int64Array, LargeStringArray, StringArray, TimestampNanosecondArray,
    };

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    fn minimal(extra: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let mut cols: Vec<(&str, ArrayRef)> = vec![
            (
                "event_id",
                Arc::new(LargeStringArray::from(vec!["e1", "e2"])),
            ),
            (
                "event_type",
                Arc::new(StringArray::from(vec!["inference", "error"])),
            ),
            (
                "event_timestamp",
                Arc::new(TimestampNanosecondArray::from(vec![
                    1_700_000_000_000_000_123,
                    1_700_000_001_000_000_000,
                ])),
            ),
        ];
        cols.extend(extra);
        batch(cols)
    }

    #[test]
    fn coerces_and_stamps() {
        let b = minimal(vec![
            ("confidence", Arc::new(Float32Array::from(vec![0.5, 0.25]))),
            (
                "input_tokens",
                Arc::new(Int64Array::from(vec![Some(3), None])),
            ),
        ]);
        let out = normalize_raw_events(
            &b,
            &raw_events_arrow_schema(),
            ProjectRule::Stamp("acme"),
            7,
        )
        .unwrap();
        assert_eq!(out.schema(), raw_events_arrow_schema());
        let p = out
            .column_by_name("project_id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(p.value(1), "acme");
        let ts = out.column_by_name("event_timestamp").unwrap();
        let ts = ts
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_700_000_000_000_000);
    }

    #[test]
    fn rejects_other_project_and_bad_input() {
        let other = minimal(vec![(
            "project_id",
            Arc::new(StringArray::from(vec!["acme", "evil"])),
        )]);
        let err = normalize_raw_events(
            &other,
            &raw_events_arrow_schema(),
            ProjectRule::Stamp("acme"),
            0,
        )
        .unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)), "{err}");

        let missing = batch(vec![("event_id", Arc::new(StringArray::from(vec!["e1"])))]);
        let err = normalize_raw_events(
            &missing,
            &raw_events_arrow_schema(),
            ProjectRule::Stamp("acme"),
            0,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("missing required column 'event_type'"),
            "{err}"
        );

        let bad_type = minimal(vec![(
            "confidence",
            Arc::new(StringArray::from(vec!["high", "low"])),
        )]);
        let err = normalize_raw_events(
            &bad_type,
            &raw_events_arrow_schema(),
            ProjectRule::Stamp("acme"),
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("column 'confidence'"), "{err}");

        let unknown = minimal(vec![(
            "colour",
            Arc::new(StringArray::from(vec!["a", "b"])),
        )]);
        let err = normalize_raw_events(
            &unknown,
            &raw_events_arrow_schema(),
            ProjectRule::Stamp("acme"),
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown column 'colour'"), "{err}");

        let nulls = batch(vec![
            (
                "event_id",
                Arc::new(StringArray::from(vec![Some("e1"), None])) as ArrayRef,
            ),
            ("event_type", Arc::new(StringArray::from(vec!["a", "b"]))),
            (
                "event_timestamp",
                Arc::new(TimestampNanosecondArray::from(vec![1, 2])),
            ),
        ]);
        let err = normalize_raw_events(
            &nulls,
            &raw_events_arrow_schema(),
            ProjectRule::Stamp("acme"),
            0,
        )
        .unwrap_err();
        assert!(err.to_string().contains("'event_id' is required"), "{err}");
    }
}
