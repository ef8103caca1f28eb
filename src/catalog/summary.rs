//! The summary of a rewrite snapshot (compaction, retention's partition
//! drop, erasure): which operation it is, and table totals kept exact.

use std::collections::HashMap;

use iceberg::spec::{DataFile, Operation, Summary};

/// Summary of a rewrite snapshot: what it swapped, and the table totals
/// carried over from `previous` and adjusted. Totals stay exact: some
/// engines (ClickHouse) answer `count(*)` from `total-records` alone.
pub(super) fn replace_summary(
    previous: &Summary,
    removed: &[DataFile],
    added: &[DataFile],
) -> Summary {
    let rows: u64 = added.iter().map(|f| f.record_count()).sum();
    let rows_removed: u64 = removed.iter().map(|f| f.record_count()).sum();
    let bytes_added: u64 = added.iter().map(|f| f.file_size_in_bytes()).sum();
    let bytes_removed: u64 = removed.iter().map(|f| f.file_size_in_bytes()).sum();
    let mut props = HashMap::from([
        ("added-data-files".to_string(), added.len().to_string()),
        ("deleted-data-files".to_string(), removed.len().to_string()),
        ("added-records".to_string(), rows.to_string()),
        ("deleted-records".to_string(), rows_removed.to_string()),
        ("added-files-size".to_string(), bytes_added.to_string()),
        ("removed-files-size".to_string(), bytes_removed.to_string()),
    ]);
    let total =
        |key: &str| -> Option<i128> { previous.additional_properties.get(key)?.parse().ok() };
    let carried = [
        ("total-records", rows as i128 - rows_removed as i128),
        (
            "total-data-files",
            added.len() as i128 - removed.len() as i128,
        ),
        (
            "total-files-size",
            bytes_added as i128 - bytes_removed as i128,
        ),
        ("total-delete-files", 0),
        ("total-position-deletes", 0),
        ("total-equality-deletes", 0),
    ];
    for (key, delta) in carried {
        if let Some(v) = total(key) {
            props.insert(key.to_string(), (v + delta).max(0).to_string());
        }
    }
    // Nothing added: whole partitions dropped. Fewer rows added than
    // removed: rows erased (copy-on-write). Either changes the data, which
    // incremental readers must not skip as they skip a `replace`.
    let operation = if added.is_empty() && !removed.is_empty() {
        Operation::Delete
    } else if rows < rows_removed {
        Operation::Overwrite
    } else {
        Operation::Replace
    };
    Summary {
        operation,
        additional_properties: props,
    }
}
