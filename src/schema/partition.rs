//! Partition values of planned files: which tenant and day a data file
//! holds, read from its manifest entry rather than its path.

use iceberg::scan::FileScanTask;
use iceberg::spec::{Literal, PartitionSpecRef, PrimitiveLiteral, Transform};
use iceberg::table::Table;

use super::col;

/// The table's partition spec, if it never had another one.
pub fn only_spec(table: &Table) -> Option<PartitionSpecRef> {
    let mut specs = table.metadata().partition_specs_iter();
    match (specs.next(), specs.next()) {
        (Some(spec), None) => Some(spec.clone()),
        _ => None,
    }
}

/// A planned file's partition value for `transform(column)`: `None` when
/// the spec has no such field (or is unknown), `Some(None)` for a null value.
pub fn partition_value<'a>(
    task: &'a FileScanTask,
    column: &str,
    transform: Transform,
) -> Option<Option<&'a PrimitiveLiteral>> {
    let (partition, spec) = (task.partition.as_ref()?, task.partition_spec.as_ref()?);
    let source = task.schema.field_by_name(column)?.id;
    let idx = spec
        .fields()
        .iter()
        .position(|f| f.source_id == source && f.transform == transform)?;
    Some(match partition.fields().get(idx)? {
        Some(Literal::Primitive(value)) => Some(value),
        _ => None,
    })
}

/// The `event_day` of every row of a planned file: its `day(event_timestamp)`
/// partition value.
pub fn task_day(task: &FileScanTask) -> Option<i32> {
    match partition_value(task, col::EVENT_TIMESTAMP, Transform::Day)? {
        Some(PrimitiveLiteral::Int(day)) => Some(*day),
        _ => None,
    }
}
