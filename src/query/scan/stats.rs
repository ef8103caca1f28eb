//! Statistics known from planning alone, so DataFusion can pick join sides
//! and skip work without reading a file.

use std::collections::HashMap;

use arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::{ScalarValue, Statistics};
use iceberg::scan::FileScanTask;
use iceberg::spec::{Literal, PrimitiveLiteral, PrimitiveType, Transform, Type};

use super::{DAY_MICROS, OutputColumn, ScanPlan};
use crate::schema::col;

/// Statistics known from planning alone: row and byte counts of the planned
/// files, and column bounds implied by their partition values (identity
/// partitions give a column's value, `day` partitions bound the timestamp).
/// All inexact: row-level filters may drop rows.
pub(super) fn plan_statistics(
    schema: &SchemaRef,
    output: &[OutputColumn],
    tasks: &[FileScanTask],
    plan: &ScanPlan,
) -> Statistics {
    let mut bounds: HashMap<String, (ScalarValue, ScalarValue)> = HashMap::new();
    let mut widen = |name: &str, lo: ScalarValue, hi: ScalarValue| {
        let entry = bounds
            .entry(name.to_string())
            .or_insert_with(|| (lo.clone(), hi.clone()));
        if lo < entry.0 {
            entry.0 = lo;
        }
        if hi > entry.1 {
            entry.1 = hi;
        }
    };
    let mut complete: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (Some(partition), Some(spec)) = (&task.partition, &task.partition_spec) else {
            continue;
        };
        for (field, value) in spec.fields().iter().zip(partition.fields()) {
            let Some(source) = task.schema.field_by_id(field.source_id) else {
                continue;
            };
            let value = match value {
                Some(Literal::Primitive(v)) => v,
                _ => continue,
            };
            let micros = matches!(
                *source.field_type,
                Type::Primitive(PrimitiveType::Timestamp | PrimitiveType::Timestamptz)
            );
            let (lo, hi) = match (field.transform, value) {
                (Transform::Identity, PrimitiveLiteral::String(s)) => (
                    ScalarValue::Utf8(Some(s.clone())),
                    ScalarValue::Utf8(Some(s.clone())),
                ),
                (Transform::Day, PrimitiveLiteral::Int(day)) if micros => {
                    if source.name == col::EVENT_TIMESTAMP {
                        let day = ScalarValue::Date32(Some(*day));
                        *complete.entry(col::EVENT_DAY.to_string()).or_default() += 1;
                        widen(col::EVENT_DAY, day.clone(), day);
                    }
                    let day = i64::from(*day);
                    (
                        ScalarValue::Int64(Some(day * DAY_MICROS)),
                        ScalarValue::Int64(Some((day + 1) * DAY_MICROS - 1)),
                    )
                }
                _ => continue,
            };
            *complete.entry(source.name.clone()).or_default() += 1;
            widen(&source.name, lo, hi);
        }
    }
    let mut stats = Statistics::new_unknown(schema);
    stats.num_rows = Precision::Inexact(plan.records as usize);
    stats.total_byte_size = Precision::Inexact(plan.bytes as usize);
    for ((c, field), column) in output
        .iter()
        .zip(schema.fields())
        .zip(stats.column_statistics.iter_mut())
    {
        let name = match c {
            OutputColumn::Table(n) => n.as_str(),
            OutputColumn::EventDay => col::EVENT_DAY,
        };
        // Only bound a column when every planned file contributed.
        let every_file = complete.get(name).copied().unwrap_or(0) == tasks.len();
        let Some((lo, hi)) = bounds.get(name).filter(|_| every_file && !tasks.is_empty()) else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (lo.cast_to(field.data_type()), hi.cast_to(field.data_type()))
        else {
            continue;
        };
        column.min_value = Precision::Inexact(lo);
        column.max_value = Precision::Inexact(hi);
    }
    stats
}
