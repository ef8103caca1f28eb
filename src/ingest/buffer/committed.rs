//! What the Iceberg table holds of each node's write-ahead log, as two
//! table properties set in the same commit as the rows: the mark (the
//! last segment committed) and the projects whose rows are still held
//! back. Replay, adoption, queries and segment deletion all read them
//! through [`Committed`].

use std::collections::BTreeMap;

use iceberg::table::Table;

/// Table property prefix: `raindrop.wal.<node>` = the last log segment of
/// that node whose rows the table holds. Set in the same commit as the
/// rows, so it survives snapshot expiry and tells replay what to skip.
pub const MARK_PROPERTY_PREFIX: &str = "raindrop.wal.";

/// Name of `node`'s mark property.
pub fn mark_property(node: &str) -> String {
    format!("{MARK_PROPERTY_PREFIX}{node}")
}

/// The last segment of `node` that `table` holds, if any.
pub fn committed_mark(table: &Table, node: &str) -> Option<u64> {
    table
        .metadata()
        .properties()
        .get(&mark_property(node))
        .and_then(|v| v.parse().ok())
}

/// Table property prefix: `raindrop.wal-held.<node>` = the projects
/// whose rows that node still holds back from segments its mark covers,
/// each with the first such segment (`project=segment,...`). Set in the
/// same commit as the mark.
pub const HELD_PROPERTY_PREFIX: &str = "raindrop.wal-held.";

/// Name of `node`'s held-projects property.
pub fn held_property(node: &str) -> String {
    format!("{HELD_PROPERTY_PREFIX}{node}")
}

/// What a table holds of one node's log: every row of the segments
/// through `mark`, except the rows of the `held` projects from their
/// segment on, which the node still buffers (a small project's rows wait
/// for a file of a sensible size). A held project's rows are written all
/// at once, so one segment per project says it all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The last segment committed.
    pub mark: Option<u64>,
    /// Project → its first segment whose rows are held back.
    pub held: BTreeMap<String, u64>,
}

impl Committed {
    /// What `table` holds of `node`'s log.
    pub fn of(table: &Table, node: &str) -> Self {
        let properties = table.metadata().properties();
        let held = properties
            .get(&held_property(node))
            .map(|v| Self::decode_held(v))
            .unwrap_or_default();
        Self {
            mark: committed_mark(table, node),
            held,
        }
    }

    /// Whether the table holds `project`'s rows of segment `seq` (rows
    /// without a project go with their segment).
    pub fn holds(&self, seq: u64, project: Option<&str>) -> bool {
        let held_back = project
            .and_then(|p| self.held.get(p))
            .is_some_and(|&from| seq >= from);
        self.mark.is_some_and(|m| seq <= m) && !held_back
    }

    /// The last segment the log no longer needs (all its rows committed).
    pub fn done_through(&self) -> Option<u64> {
        let mark = self.mark?;
        match self.held.values().min() {
            Some(&0) => None,
            Some(&first) => Some(mark.min(first - 1)),
            None => Some(mark),
        }
    }

    /// The held projects as the table property's value.
    pub fn encode_held(held: &BTreeMap<String, u64>) -> String {
        held.iter()
            .map(|(p, s)| format!("{p}={s}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The property value back as held projects.
    pub fn decode_held(value: &str) -> BTreeMap<String, u64> {
        value
            .split(',')
            .filter_map(|pair| {
                let (p, s) = pair.rsplit_once('=')?;
                Some((p.to_string(), s.parse().ok()?))
            })
            .collect()
    }
}
