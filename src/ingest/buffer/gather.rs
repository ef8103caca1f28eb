//! Gathering a project's small buffered batches into few, for queries
//! (see [`ProjectRows`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StringViewArray, StringViewBuilder,
};
use tokio::sync::OwnedSemaphorePermit;

use crate::batch::new_bytes;
use crate::ingest::budget::Budget;
use crate::schema::views::scan_schema;

/// How many batches of the same level are gathered into one.
pub(super) const GATHER_FAN: usize = 8;

/// Batches are gathered while the result holds at most this many rows:
/// twice DataFusion's default batch size, about what each operator above
/// handles at the same cost per row as larger batches.
pub(super) const GATHER_MAX_ROWS: usize = 2 * 8192;

pub(super) type ByProject = HashMap<String, ProjectRows>;

/// A batch of one project's buffered rows.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) batch: RecordBatch,
    /// How many times its rows were gathered.
    level: u32,
    /// The ingest budget a gathered copy holds (rows as they arrived are
    /// covered by their request's permit), returned when it is replaced
    /// or its generation is committed.
    _permit: Option<Arc<OwnedSemaphorePermit>>,
}

impl Held {
    pub(super) fn arrived(batch: RecordBatch) -> Self {
        Self {
            batch,
            level: 0,
            _permit: None,
        }
    }
}

/// One project's rows in a generation, gathered into few batches.
///
/// Requests are small (often 1k rows, split by project into far fewer),
/// and a query pays per batch: taking it, shaping it, every operator
/// above it. With 4,641 batches of the largest tenant buffered (463k rows
/// of 50 tenants), its queries took 2–4x as long as over the same rows in
/// files. So a query first gathers the batches that arrived since the
/// last one, like a binary counter in base [`GATHER_FAN`]: each row is
/// copied once per level, and a level holds fewer than [`GATHER_FAN`]
/// batches. The copying happens outside every lock the log task takes
/// (it answers every `DoPut`), and the result replaces what it was made
/// from. Gathering as rows arrived, in the log task, cost 15% of its rate
/// at 1k-row batches, for rows most of which no query reads before they
/// are flushed. A gathered copy (its numbers, and 16 bytes per string: it
/// shares the strings' bytes) is larger than the rows (1.5x in
/// `benches/buffer_memory.py`), and the flush still needs the rows as they
/// arrived, so it holds ingest budget (`--max-buffered-mib`); when there
/// is none left, queries read the batches as they are.
#[derive(Debug, Default, Clone)]
pub(super) struct ProjectRows {
    /// Batches in arrival order.
    pub(super) batches: Vec<Held>,
    /// `batches[..gathered]` are gathered; the rest arrived since.
    gathered: usize,
    /// Bumped by each replacement, so a query does not replace batches
    /// another query replaced since it read them.
    version: u64,
}

/// `project`'s rows in `by_project` (all projects for `None`), gathered
/// as far as `budget` has room, by project.
pub(super) fn gathered(
    by_project: &Mutex<ByProject>,
    project: Option<&str>,
    budget: Option<&Budget>,
) -> Vec<(String, Vec<RecordBatch>)> {
    /// One project's rows as read, then as gathered.
    struct Read {
        project: String,
        version: u64,
        /// How many batches were read (those the gathered ones replace).
        read: usize,
        batches: Vec<Held>,
    }
    let lock = || by_project.lock().expect("buffered rows lock");
    let reads: Vec<(Read, usize)> = {
        let map = lock();
        let read = |(p, r): (&String, &ProjectRows)| {
            let read = Read {
                project: p.clone(),
                version: r.version,
                read: r.batches.len(),
                batches: r.batches.clone(),
            };
            (read, r.gathered)
        };
        match project {
            Some(p) => map.get_key_value(p).map(read).into_iter().collect(),
            None => map.iter().map(read).collect(),
        }
    };
    let mut out = vec![];
    let mut done = vec![];
    for (mut read, from) in reads {
        if from < read.read {
            for batch in read.batches.split_off(from) {
                read.batches.push(batch);
                gather_last(&mut read.batches, budget);
            }
            let batches = read.batches.iter().map(|h| h.batch.clone()).collect();
            out.push((read.project.clone(), batches));
            done.push(read);
        } else {
            let batches = read.batches.into_iter().map(|h| h.batch).collect();
            out.push((read.project, batches));
        }
    }
    if !done.is_empty() {
        let mut map = lock();
        for read in done {
            let Some(rows) = map.get_mut(&read.project) else {
                continue;
            };
            if rows.version == read.version {
                let arrived = rows.batches.split_off(read.read);
                rows.batches = read.batches;
                rows.gathered = rows.batches.len();
                rows.batches.extend(arrived);
                rows.version += 1;
            }
        }
    }
    out
}

/// Gather the last [`GATHER_FAN`] batches while they are of one level and
/// schema and small enough together, and `budget` has room for the copy.
/// Gathering saves time; it never fails a query (on an error, or with no
/// room, the batches stay as they are).
fn gather_last(batches: &mut Vec<Held>, budget: Option<&Budget>) {
    while batches.len() >= GATHER_FAN {
        let run = &batches[batches.len() - GATHER_FAN..];
        let (first, level) = (&run[0].batch, run[0].level);
        let rows: usize = run.iter().map(|h| h.batch.num_rows()).sum();
        // A schema changed mid-generation (the table evolved) is never
        // gathered with the old one.
        if rows > GATHER_MAX_ROWS
            || run
                .iter()
                .any(|h| h.level != level || h.batch.schema() != first.schema())
        {
            return;
        }
        let Ok(gathered) = as_views(run.iter().map(|h| &h.batch))
            .and_then(|run| arrow::compute::concat_batches(&run[0].schema(), &run))
        else {
            return;
        };
        let permit = match budget {
            None => None,
            Some(budget) => {
                let bytes = new_bytes(&gathered, run.iter().map(|h| &h.batch));
                let Some(permit) = budget.try_reserve(bytes) else {
                    return;
                };
                Some(Arc::new(permit))
            }
        };
        batches.truncate(batches.len() - GATHER_FAN);
        batches.push(Held {
            batch: gathered,
            level: level + 1,
            _permit: permit,
        });
    }
}

/// `batches` in the types queries read ([`scan_schema`]: strings as
/// views). The views point into the batches' own buffers, so a gathered
/// batch shares the bytes of the strings with the rows it was made from,
/// and queries no longer cast each buffered row on every read (14% of a
/// query step's CPU with 2M rows buffered, `benches/stream.rs`); a
/// column of few distinct values is [`deduplicated`] instead.
fn as_views<'a>(
    batches: impl Iterator<Item = &'a RecordBatch>,
) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    batches
        .map(|b| {
            let schema = Arc::new(scan_schema(&b.schema()));
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| match c.as_string_opt::<i32>() {
                    Some(strings) if few_distinct(strings) => {
                        Ok(Arc::new(deduplicated(strings)) as ArrayRef)
                    }
                    _ => arrow::compute::cast(c, f.data_type()),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            RecordBatch::try_new(schema, columns)
        })
        .collect()
}

/// Values looked at to judge a column's cardinality.
const SAMPLE: usize = 256;

/// Whether `strings` repeats few values (a model name, an event type),
/// judged on its first [`SAMPLE`]: those are worth storing once.
fn few_distinct(strings: &StringArray) -> bool {
    let sample = strings.len().min(SAMPLE);
    let distinct: HashSet<Option<&str>> = strings.iter().take(sample).collect();
    distinct.len() * 8 <= sample
}

/// `strings` as views with each distinct value stored once. Views of one
/// value then point at the same bytes, as a Parquet scan's do (it decodes
/// a dictionary page): grouping by such a column read its bytes from one
/// place, not from a copy per row. (Sharing the rows' bytes, the 30-day
/// histogram's group ids by model took 7.8 ms over the buffer's rows
/// against 4.0 ms over the same rows in files, and the query 1.27–2.10x
/// as long; deduplicated, 1.11–1.18x: `benches/README.md`.)
fn deduplicated(strings: &StringArray) -> StringViewArray {
    let mut out = StringViewBuilder::with_capacity(strings.len()).with_deduplicate_strings();
    for v in strings {
        out.append_option(v);
    }
    out.finish()
}
