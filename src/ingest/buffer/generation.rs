//! The rows of one log segment (a generation), as the flush takes them
//! (by request, with ids) and as queries read them (by project).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use tokio::sync::OwnedSemaphorePermit;

use super::gather::{ByProject, Held};
use crate::batch::batch_bytes;
use crate::error::Result;
use crate::schema::col;

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
    /// [`super::gather::ProjectRows`]), sealed generations' too, hence the lock.
    pub(super) by_project: Arc<Mutex<ByProject>>,
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
