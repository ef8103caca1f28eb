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

mod gather;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use iceberg::table::Table;
use tokio::sync::OwnedSemaphorePermit;

use crate::batch::batch_bytes;
use crate::error::Result;
use crate::ingest::budget::Budget;
use crate::schema::col;
use gather::{ByProject, Held, gathered};

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

/// One request's rows in a generation.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its id, recorded with the commit of its segment: a flush leaves out
    /// requests another node committed meanwhile (a client's retry sent
    /// there). `None` for rows held back from a committed segment.
    pub id: Option<String>,
    /// Rows it brought (those the id's retries are answered with).
    pub rows: u64,
    /// Its rows in slices of one project each (`None`: no project column).
    pub parts: Vec<(Option<String>, RecordBatch)>,
}

/// Rows of one log segment.
#[derive(Debug)]
pub struct Generation {
    /// The segment holding these rows.
    pub seq: u64,
    /// The segment is committed: these are the rows a flush held back
    /// (small projects), anonymous, written by a later flush.
    pub held: bool,
    /// Each request's rows, in log order.
    requests: Vec<Request>,
    /// The same rows by project, for queries. Queries gather them (see
    /// [`ProjectRows`]), sealed generations' too, hence the lock.
    by_project: Arc<Mutex<ByProject>>,
    /// Request ids carried, with their row counts.
    pub ids: HashMap<String, u64>,
    /// Rows held.
    pub rows: u64,
    /// Arrow bytes held.
    pub bytes: usize,
    /// When the first row arrived.
    pub since: Option<Instant>,
    /// The ingest-memory budget these rows hold until they are committed
    /// (split when only a held part stays).
    permits: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Generation {
    /// An empty generation whose rows are logged in segment `seq`.
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            held: false,
            requests: vec![],
            by_project: Arc::default(),
            ids: HashMap::new(),
            rows: 0,
            bytes: 0,
            since: None,
            permits: Mutex::default(),
        }
    }

    /// Each request's id and rows, in log order.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    /// Arrow bytes buffered per project.
    pub fn project_bytes(&self) -> HashMap<Option<&str>, usize> {
        let mut out: HashMap<Option<&str>, usize> = HashMap::new();
        for (project, batch) in self.requests.iter().flat_map(|r| &r.parts) {
            *out.entry(project.as_deref()).or_default() += batch_bytes(batch);
        }
        out
    }

    /// The rows of the projects `keep` says, as the held part of this
    /// generation once its segment is committed (`None` if none are
    /// kept). It takes their share of the ingest budget; the rest returns
    /// when this generation is dropped.
    pub fn held_part(&self, keep: impl Fn(&str) -> bool) -> Option<Generation> {
        let mut held = Generation::new(self.seq);
        held.held = true;
        held.since = self.since;
        for request in &self.requests {
            let parts: Vec<_> = request
                .parts
                .iter()
                .filter(|(p, _)| p.as_deref().is_some_and(&keep))
                .cloned()
                .collect();
            if parts.is_empty() {
                continue;
            }
            let rows = parts.iter().map(|(_, b)| b.num_rows() as u64).sum();
            held.rows += rows;
            held.bytes += parts.iter().map(|(_, b)| batch_bytes(b)).sum::<usize>();
            held.requests.push(Request {
                id: None,
                rows,
                parts,
            });
        }
        if held.rows == 0 {
            return None;
        }
        {
            let from = self.by_project.lock().expect("buffered rows lock");
            let mut to = held.by_project.lock().expect("buffered rows lock");
            to.extend(
                from.iter()
                    .filter(|(p, _)| keep(p))
                    .map(|(p, r)| (p.clone(), r.clone())),
            );
        }
        let mut permits = self.permits.lock().expect("permits lock");
        if let Some(all) = permits.as_mut() {
            let kib = held.bytes.div_ceil(1024).min(all.num_permits());
            *held.permits.get_mut().expect("permits lock") = all.split(kib);
        }
        Some(held)
    }

    /// Add rows (one request's) to this generation.
    pub fn add(
        &mut self,
        batches: Vec<RecordBatch>,
        request_id: Option<String>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<()> {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let bytes: usize = batches.iter().map(batch_bytes).sum();
        // The flush and queries share one copy of the rows, sorted by
        // project: a collector's batch of many tenants held once as it
        // arrived and once split up held twice the bytes its budget
        // permit counts.
        let parts = batches
            .into_iter()
            .map(split_by_project)
            .collect::<Result<Vec<_>>>()?;
        let mut kept = vec![];
        {
            let mut by_project = self.by_project.lock().expect("buffered rows lock");
            for (project, part) in parts.into_iter().flatten() {
                kept.push((project.clone(), part.clone()));
                if let Some(project) = project {
                    by_project
                        .entry(project)
                        .or_default()
                        .batches
                        .push(Held::arrived(part));
                }
            }
        }
        if let Some(id) = &request_id {
            self.ids.insert(id.clone(), rows);
        }
        self.requests.push(Request {
            id: request_id,
            rows,
            parts: kept,
        });
        self.bytes += bytes;
        self.rows += rows;
        self.since.get_or_insert_with(Instant::now);
        if let Some(permit) = permit {
            let mut permits = self.permits.lock().expect("permits lock");
            match permits.as_mut() {
                Some(p) => p.merge(permit),
                None => *permits = Some(permit),
            }
        }
        Ok(())
    }
}

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

    /// Forget sealed generation `seq` (its rows are in the table).
    pub fn remove(&self, seq: u64) {
        self.state().sealed.retain(|g| g.seq != seq);
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

    /// Rows held in all generations, and the age of the oldest.
    pub fn held(&self) -> (u64, Option<std::time::Duration>) {
        let s = self.state();
        let gens = || s.sealed.iter().map(|g| g.as_ref()).chain([&s.active]);
        let rows = gens().map(|g| g.rows).sum();
        let oldest = gens().filter_map(|g| g.since).min();
        (rows, oldest.map(|t| t.elapsed()))
    }
}

/// Split a `raw_events` batch by `project_id` into slices of one copy
/// sorted by project (the common single-project batch is not copied). A
/// batch without the column (none reaches here: ingest stamps it) is kept
/// whole, for the flush only.
fn split_by_project(batch: RecordBatch) -> Result<Vec<(Option<String>, RecordBatch)>> {
    let Some(column) = batch.column_by_name(col::PROJECT_ID).cloned() else {
        return Ok(vec![(None, batch)]);
    };
    let ids = column.as_string::<i32>();
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let first = ids.value(0);
    if ids.iter().all(|v| v == Some(first)) {
        return Ok(vec![(Some(first.to_string()), batch)]);
    }
    let order = arrow::compute::sort_to_indices(&column, None, None)?;
    let sorted = arrow::compute::take_record_batch(&batch, &order)?;
    let column = sorted
        .column_by_name(col::PROJECT_ID)
        .expect("project_id")
        .clone();
    let ranges = arrow::compute::partition(std::slice::from_ref(&column))?.ranges();
    let ids = column.as_string::<i32>();
    Ok(ranges
        .into_iter()
        .map(|r| {
            (
                Some(ids.value(r.start).to_string()),
                sorted.slice(r.start, r.end - r.start),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::gather::{GATHER_FAN, GATHER_MAX_ROWS};
    use super::*;
    use crate::batch::allocations;

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
        buffer.remove(3);
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
        buffer.remove(1);
        assert_eq!(budget.used_bytes(), 0);
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
