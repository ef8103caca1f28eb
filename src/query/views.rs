//! String columns are scanned as Arrow *views* (`Utf8View`), and results
//! leave as plain `Utf8`.
//!
//! Views let the Parquet decoder point into decompressed pages instead of
//! copying every string, and let filters, joins and aggregations move
//! 16-byte views instead of string bytes; short values (such as
//! `event_type`) compare inline. Clients, though, are promised the tables'
//! own types (BI drivers do not all read views), so the last step of every
//! plan casts views back, and catalog listings show the base types. The
//! scan types themselves are `schema::views`.

use arrow::datatypes::{DataType, Schema};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{Expr, cast, col};

use crate::error::Result;
use crate::schema::views::map_fields;

/// The type clients see for a column computed as `data_type`.
pub fn client_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    }
}

/// `schema` with its top-level columns in their client types.
pub fn client_schema(schema: &Schema) -> Schema {
    map_fields(schema, client_type)
}

/// `df` with every view-typed output column cast to its client type (no
/// extra step when there is none).
pub fn without_views(df: DataFrame) -> Result<DataFrame> {
    let schema = df.schema().clone();
    if schema
        .fields()
        .iter()
        .all(|f| client_type(f.data_type()) == *f.data_type())
    {
        return Ok(df);
    }
    let columns: Vec<Expr> = schema
        .iter()
        .map(|(qualifier, field)| {
            let column = col(datafusion::common::Column::new(
                qualifier.cloned(),
                field.name(),
            ));
            let base = client_type(field.data_type());
            if base == *field.data_type() {
                column
            } else {
                cast(column, base).alias_qualified(qualifier.cloned(), field.name())
            }
        })
        .collect();
    Ok(df.select(columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::views::scan_schema;
    use arrow::datatypes::Field;
    use datafusion::prelude::SessionContext;

    #[test]
    fn types_round_trip() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]);
        let scanned = scan_schema(&schema);
        assert_eq!(scanned.field(0).data_type(), &DataType::Utf8View);
        assert_eq!(scanned.field(1).data_type(), &DataType::Int64);
        assert_eq!(client_schema(&scanned), schema);
    }

    #[tokio::test]
    async fn results_leave_without_views() {
        let ctx = SessionContext::new();
        let df = ctx
            .sql("SELECT arrow_cast('a', 'Utf8View') AS s, 1 AS n")
            .await
            .unwrap();
        assert_eq!(df.schema().field(0).data_type(), &DataType::Utf8View);
        let df = without_views(df).unwrap();
        let batches = df.collect().await.unwrap();
        assert_eq!(batches[0].schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(batches[0].schema().field(0).name(), "s");
        assert_eq!(batches[0].schema().field(1).name(), "n");
    }
}
