//! Rows acknowledged (durable in the write-ahead log) but not yet in the
//! Iceberg table, kept in memory by project so Flight SQL queries read
//! them together with the table (read-your-writes on the node that took
//! them).
//!
//! Rows arrive in the *active* generation, whose rows are logged in one
//! segment. A flush *seals* it (the log moves to a new segment) and
//! commits its rows, except those of projects too small for a file of
//! their own yet: those stay, as the generation's *held* part, until a
//! later flush writes them (see [`Committed`]). A query takes the
//! buffered rows first and the table second, then drops every row the
//! table already holds (by the table's per-node mark and held projects):
//! rows are seen exactly once whichever way the race with a flush goes.

mod committed;
mod gather;
mod generation;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;
use iceberg::table::Table;

use crate::ingest::budget::Budget;
pub use committed::{Committed, committed_mark, held_property, mark_property};
use gather::{ByProject, gathered};
pub use generation::{Generation, Request};

#[derive(Debug)]
struct State {
    active: Generation,
    sealed: Vec<Arc<Generation>>,
}

/// The buffer of one node's log for `raw_events`.
#[derive(Debug)]
pub struct Buffer {
    node: String,
    state: Mutex<State>,
    /// Ingest budget the gathered copies take (`None`: unbounded).
    budget: Option<Budget>,
}

/// Buffered rows taken for one query, before the table is loaded.
#[derive(Debug, Default)]
pub struct Taken {
    node: String,
    /// (segment, project, rows) of each generation, the active one
    /// included: it may be sealed and committed before the query loads
    /// the table.
    parts: Vec<(u64, String, Vec<RecordBatch>)>,
}

impl Taken {
    /// The rows `table` does not hold yet.
    pub fn not_in(self, table: &Table) -> Vec<RecordBatch> {
        let committed = Committed::of(table, &self.node);
        self.parts
            .into_iter()
            .filter(|(seq, project, _)| !committed.holds(*seq, Some(project)))
            .flat_map(|(_, _, b)| b)
            .collect()
    }
}

impl Buffer {
    /// An empty buffer whose active generation is logged in segment `seq`.
    pub fn new(node: String, seq: u64) -> Self {
        Self {
            node,
            state: Mutex::new(State {
                active: Generation::new(seq),
                sealed: vec![],
            }),
            budget: None,
        }
    }

    /// Gathered copies take their bytes of `budget`.
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("ingest buffer lock")
    }

    /// Run `f` on the active generation (the log does, in log order).
    pub fn with_active<T>(&self, f: impl FnOnce(&mut Generation) -> T) -> T {
        f(&mut self.state().active)
    }

    /// Add a generation recovered from the log, sealed (to flush first).
    pub fn push_sealed(&self, generation: Generation) {
        self.state().sealed.push(Arc::new(generation));
    }

    /// Seal the active generation (if it holds rows, or `empty` says so:
    /// a commit of held rows alone needs a segment for its mark) and start
    /// a new one logged in segment `next`.
    pub fn seal(&self, next: u64, empty: bool) -> Option<Arc<Generation>> {
        let mut s = self.state();
        if s.active.rows == 0 && !empty {
            return None;
        }
        let sealed = Arc::new(std::mem::replace(&mut s.active, Generation::new(next)));
        s.sealed.push(sealed.clone());
        Some(sealed)
    }

    /// The sealed generations, oldest first.
    pub fn sealed(&self) -> Vec<Arc<Generation>> {
        self.state().sealed.clone()
    }

    /// After a commit: each sealed generation becomes what `keep` gives
    /// (its held part, or nothing), in one step for queries.
    pub fn replace(&self, keep: impl Fn(&Generation) -> Option<Option<Generation>>) {
        let mut s = self.state();
        let sealed = std::mem::take(&mut s.sealed);
        s.sealed = sealed
            .into_iter()
            .filter_map(|g| match keep(&g) {
                None => Some(g),
                Some(part) => part.map(Arc::new),
            })
            .collect();
    }

    /// Whether held rows are buffered, and since when the oldest.
    pub fn held_since(&self) -> Option<Instant> {
        let s = self.state();
        s.sealed
            .iter()
            .filter(|g| g.held)
            .filter_map(|g| g.since)
            .min()
    }

    /// Rows of a request id still buffered, if it is.
    pub fn pending_id(&self, id: &str) -> Option<u64> {
        let s = self.state();
        s.active
            .ids
            .get(id)
            .or_else(|| s.sealed.iter().find_map(|g| g.ids.get(id)))
            .copied()
    }

    /// Take `project`'s buffered rows (all projects for `None`): every
    /// row acknowledged before this call, gathered (outside this buffer's
    /// lock, which the log task takes for every request).
    pub fn take(&self, project: Option<&str>) -> Taken {
        let generations: Vec<(u64, Arc<Mutex<ByProject>>)> = {
            let s = self.state();
            s.sealed
                .iter()
                .map(|g| (g.seq, g.by_project.clone()))
                .chain([(s.active.seq, s.active.by_project.clone())])
                .collect()
        };
        let mut parts: Vec<_> = generations
            .into_iter()
            .flat_map(|(seq, rows)| {
                gathered(&rows, project, self.budget.as_ref())
                    .into_iter()
                    .map(move |(p, b)| (seq, p, b))
            })
            .collect();
        parts.retain(|(_, _, b)| !b.is_empty());
        Taken {
            node: self.node.clone(),
            parts,
        }
    }

    /// Rows a flush held back (committed segments' held parts), and how
    /// many projects they belong to.
    pub fn held_back(&self) -> (u64, usize) {
        let s = self.state();
        let held = || s.sealed.iter().filter(|g| g.held);
        let rows = held().map(|g| g.rows).sum();
        let projects: std::collections::HashSet<Option<&str>> = held()
            .flat_map(|g| g.requests().iter().flat_map(|r| &r.parts))
            .map(|(p, _)| p.as_deref())
            .collect();
        (rows, projects.len())
    }

    /// Rows held in all generations, and the age of the oldest.
    pub fn held(&self) -> (u64, Option<std::time::Duration>) {
        let s = self.state();
        let gens = || s.sealed.iter().map(|g| g.as_ref()).chain([&s.active]);
        let rows = gens().map(|g| g.rows).sum();
        let oldest = gens().filter_map(|g| g.since).min();
        (rows, oldest.map(|t| t.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, StringArray, StringViewArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::gather::{GATHER_FAN, GATHER_MAX_ROWS};
    use super::*;
    use crate::batch::{allocations, batch_bytes};
    use crate::schema::col;

    fn batch(projects: &[&str]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(col::PROJECT_ID, DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let n = Int64Array::from_iter_values(0..projects.len() as i64);
        RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(projects.to_vec())), Arc::new(n)],
        )
        .unwrap()
    }

    #[test]
    fn rows_are_kept_by_project_and_sealing_starts_a_new_generation() {
        let buffer = Buffer::new("node".into(), 3);
        buffer
            .with_active(|g| g.add(vec![batch(&["b", "a", "b"])], Some("a:1".into()), None))
            .unwrap();
        buffer
            .with_active(|g| g.add(vec![batch(&["a"])], None, None))
            .unwrap();
        let rows = |p: Option<&str>| -> usize {
            buffer
                .take(p)
                .parts
                .iter()
                .flat_map(|(_, _, b)| b)
                .map(|b| b.num_rows())
                .sum()
        };
        assert_eq!(
            (rows(Some("a")), rows(Some("b")), rows(Some("c"))),
            (2, 2, 0)
        );
        assert_eq!(rows(None), 4);
        assert_eq!(buffer.pending_id("a:1"), Some(3));
        let sealed = buffer.seal(4, false).expect("rows to seal");
        assert_eq!(
            (sealed.seq, sealed.rows, sealed.requests().len()),
            (3, 4, 2)
        );
        assert!(buffer.seal(5, false).is_none(), "nothing new to seal");
        // Sealed rows stay readable and their ids known until removed.
        assert_eq!(rows(Some("a")), 2);
        buffer.replace(|g| (g.seq == 3).then_some(None));
        assert_eq!(rows(None), 0);
        assert_eq!(buffer.pending_id("a:1"), None);
    }

    /// Bytes of the distinct buffers `batches` hold (shared ones once).
    fn held_bytes<'a>(batches: impl Iterator<Item = &'a RecordBatch>) -> usize {
        let mut out = HashMap::new();
        batches.for_each(|b| out.extend(allocations(b)));
        out.values().sum()
    }

    #[test]
    fn a_batch_of_many_projects_is_held_once() {
        let projects: Vec<String> = (0..4_000).map(|i| format!("tenant-{}", i % 50)).collect();
        let projects: Vec<&str> = projects.iter().map(String::as_str).collect();
        let arrived = batch(&projects);
        let counted = batch_bytes(&arrived);
        let mut g = Generation::new(1);
        g.add(vec![arrived], None, None).unwrap();
        assert_eq!(g.bytes, counted);
        let requests = g.requests();
        let by_project = g.by_project.lock().unwrap();
        assert_eq!(by_project.len(), 50);
        let queried = by_project
            .values()
            .flat_map(|r| r.batches.iter().map(|h| &h.batch));
        let held = held_bytes(
            requests
                .iter()
                .flat_map(|r| r.parts.iter().map(|(_, b)| b))
                .chain(queried),
        );
        // One sorted copy (buffers round up to 64 bytes), not two.
        assert!(
            held < counted + counted / 4,
            "held {held} for {counted} counted"
        );
        let rows: usize = requests[0].parts.iter().map(|(_, b)| b.num_rows()).sum();
        assert_eq!(rows, 4_000, "the flush gets every row");
    }

    #[test]
    fn gathered_copies_hold_ingest_budget_and_are_skipped_without_room() {
        let with_rows = |budget: &Budget| {
            let buffer = Buffer::new("node".into(), 1).with_budget(budget.clone());
            for _ in 0..64 {
                let b = batch(&["a"; 100]);
                buffer.with_active(|g| g.add(vec![b], None, None)).unwrap();
            }
            buffer
        };
        let taken = |buffer: &Buffer| -> Vec<RecordBatch> {
            let parts = buffer.take(Some("a")).parts;
            parts.into_iter().flat_map(|(_, _, b)| b).collect()
        };
        let wait = std::time::Duration::ZERO;
        let budget = Budget::new(1 << 30, wait);
        let buffer = with_rows(&budget);
        let arrived = taken(&with_rows(&Budget::new(1024, wait)));
        assert_eq!(arrived.len(), 64, "no room: read as they arrived");
        assert_eq!(budget.used_bytes(), 0);
        let gathered = taken(&buffer);
        assert_eq!(gathered.len(), 1);
        assert_eq!(gathered[0].num_rows(), 6_400);
        // The budget covers the copy the query made (its numbers and
        // string views, beside the rows the flush keeps) and no more,
        // rounded up to KiB per gathered batch.
        let requests = buffer.with_active(|g| g.requests().to_vec());
        let rows = || requests.iter().flat_map(|r| r.parts.iter().map(|(_, b)| b));
        let copy = held_bytes(rows().chain(&gathered)) - held_bytes(rows());
        assert!(copy >= 6_400 * (16 + 8), "{copy} bytes");
        let held = budget.used_bytes();
        assert!(
            held >= copy && held <= copy + 9 * 1024,
            "held {held} bytes for {copy}"
        );
        // Committed and forgotten: the budget is whole again.
        buffer.seal(2, false).expect("rows to seal");
        buffer.replace(|g| (g.seq == 1).then_some(None));
        assert_eq!(budget.used_bytes(), 0);
    }

    #[test]
    fn a_gathered_copy_stores_a_repeated_string_once() {
        // A model name longer than a view's 12 inline bytes, repeated, and
        // an id unique to each row, in 64 requests of 100 rows.
        let models = ["fraud-detector-v2-large", "churn-model-2026-11"];
        let schema = Arc::new(Schema::new(vec![
            Field::new(col::PROJECT_ID, DataType::Utf8, false),
            Field::new("model", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
        ]));
        let buffer = Buffer::new("node".into(), 1);
        let (mut sent_models, mut sent_ids) = (vec![], vec![]);
        for request in 0..64 {
            let model: Vec<&str> = (0..100).map(|i| models[(i / 7) % 2]).collect();
            let id: Vec<String> = (0..100)
                .map(|i| format!("{request:04}-{i:04}-5f0c1a8e-9d7b-4c2a-8e31"))
                .collect();
            sent_models.extend(model.iter().map(|m| m.to_string()));
            sent_ids.extend(id.clone());
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec!["a"; 100])),
                    Arc::new(StringArray::from(model)),
                    Arc::new(StringArray::from(id)),
                ],
            )
            .unwrap();
            buffer.with_active(|g| g.add(vec![b], None, None)).unwrap();
        }
        let parts = buffer.take(Some("a")).parts;
        let gathered: Vec<RecordBatch> = parts.into_iter().flat_map(|(_, _, b)| b).collect();
        assert_eq!(gathered.len(), 1);
        let column = |name: &str| {
            gathered[0]
                .column_by_name(name)
                .unwrap()
                .as_string_view()
                .clone()
        };
        let strings = |c: &StringViewArray| -> Vec<String> {
            c.iter().map(|v| v.unwrap().to_string()).collect()
        };
        let data_bytes =
            |c: &StringViewArray| -> usize { c.data_buffers().iter().map(|b| b.len()).sum() };
        let (model, id) = (column("model"), column("id"));
        let id_bytes: usize = sent_ids.iter().map(String::len).sum();
        assert_eq!((strings(&model), strings(&id)), (sent_models, sent_ids));
        // Each name's bytes once, as a Parquet scan of a dictionary page
        // gives them, not 6,400 copies.
        let names: usize = models.iter().map(|m| m.len()).sum();
        assert!(
            data_bytes(&model) <= 64 * names,
            "{} bytes",
            data_bytes(&model)
        );
        // Unique ids are not looked up: their views share the rows' bytes.
        assert!(data_bytes(&id) >= id_bytes, "{} bytes", data_bytes(&id));
    }

    #[test]
    fn small_batches_are_gathered_in_order_and_schemas_kept_apart() {
        let numbered = |i: i64| {
            let b = batch(&["a"]);
            RecordBatch::try_new(
                b.schema(),
                vec![b.column(0).clone(), Arc::new(Int64Array::from(vec![i]))],
            )
            .unwrap()
        };
        let numbers = |batches: &[RecordBatch]| -> Vec<i64> {
            batches
                .iter()
                .flat_map(|b| {
                    let n = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
                    n.values().to_vec()
                })
                .collect()
        };
        let buffer = Buffer::new("node".into(), 1);
        let add = |b: RecordBatch| buffer.with_active(|g| g.add(vec![b], None, None)).unwrap();
        let taken = || -> Vec<RecordBatch> {
            let parts = buffer.take(Some("a")).parts;
            parts.into_iter().flat_map(|(_, _, b)| b).collect()
        };
        // 1,000 one-row requests, read by a query after 300, then sealed,
        // then read after all: every row once, in arrival order, in few
        // batches (fewer than GATHER_FAN per level and generation).
        (0..300).for_each(|i| add(numbered(i)));
        assert_eq!(numbers(&taken()), (0..300).collect::<Vec<i64>>());
        (300..600).for_each(|i| add(numbered(i)));
        buffer.seal(2, false).expect("rows to seal");
        (600..1_000).for_each(|i| add(numbered(i)));
        let batches = taken();
        assert_eq!(numbers(&batches), (0..1_000).collect::<Vec<i64>>());
        assert!(batches.len() < 8 * GATHER_FAN, "{} batches", batches.len());
        // Gathered strings are views (as queries read them); the one-row
        // batches not gathered yet are as they arrived.
        for b in &batches {
            let expected = if b.num_rows() > 1 {
                DataType::Utf8View
            } else {
                DataType::Utf8
            };
            assert_eq!(b.schema().field(0).data_type(), &expected);
        }
        assert_eq!(taken().len(), batches.len(), "nothing new");
        // Large batches are left as they are.
        let big = batch(&vec!["b"; GATHER_MAX_ROWS / 4]);
        (0..GATHER_FAN).for_each(|_| add(big.clone()));
        let parts = buffer.take(Some("b")).parts;
        assert_eq!(parts[0].2.len(), GATHER_FAN);
        // A batch in another schema is not gathered with the others.
        let other = Schema::new(vec![Field::new(col::PROJECT_ID, DataType::Utf8, false)]);
        let other = RecordBatch::try_new(
            Arc::new(other),
            vec![Arc::new(StringArray::from(vec!["c"]))],
        )
        .unwrap();
        add(other);
        (0..GATHER_FAN - 1).for_each(|_| add(batch(&["c"])));
        let count = || buffer.take(Some("c")).parts[0].2.len();
        assert_eq!(count(), GATHER_FAN, "not across schemas");
        add(batch(&["c"]));
        assert_eq!(count(), 2, "the new schema's rows are");
    }
}
