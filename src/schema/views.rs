//! The types the table's columns are read in: strings as Arrow views
//! (`Utf8View`), as DataFusion's Parquet scan yields them. Buffered rows
//! are kept in the same types (`ingest::buffer`), so a query reads both
//! alike; `query::views` says why views, and casts results back.

use arrow::datatypes::{DataType, Field, Schema};

/// The type a scan produces for a table column of type `data_type`.
pub fn scan_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8 => DataType::Utf8View,
        other => other.clone(),
    }
}

/// `schema` with its top-level columns in their scan types.
pub fn scan_schema(schema: &Schema) -> Schema {
    map_fields(schema, scan_type)
}

/// `schema` with each top-level column's type mapped by `f`.
pub fn map_fields(schema: &Schema, f: fn(&DataType) -> DataType) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            let t = f(field.data_type());
            field.as_ref().clone().with_data_type(t)
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}
