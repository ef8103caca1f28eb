//! Helpers shared by the benchmarks: each bench is its own crate, so not
//! every helper is used by every one.
#![allow(dead_code)]

pub mod queries;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Field;

/// An integer from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of integers from the environment, or `default`.
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:` resident now, `VmHWM:`
/// its peak); `pid` may be `self`. 0 when unreadable.
pub fn proc_status_kib(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `p` quantile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The client batches, with `project_id` added and `attributes` dropped
/// (so every peer ingests identical, simply-typed columns).
pub fn with_project(project: &str, batch: &RecordBatch) -> RecordBatch {
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| batch.schema().field(i).name() != "attributes")
        .collect();
    let b = batch.project(&keep).unwrap();
    let mut fields: Vec<Arc<Field>> = vec![Arc::new(Field::new(
        "project_id",
        arrow::datatypes::DataType::Utf8,
        false,
    ))];
    fields.extend(b.schema().fields().iter().cloned());
    let mut cols =
        vec![Arc::new(arrow::array::StringArray::from(vec![project; b.num_rows()])) as _];
    cols.extend(b.columns().iter().cloned());
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols).unwrap()
}

/// Bytes of every file under `dir`, recursively.
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                tree_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

/// Files under `dir`, recursively.
pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { count_files(&p) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A project's events in time order, cut into batches of `batch_rows`,
/// each with the timestamp of its last event (when it would be sent).
pub fn live_order(
    project: &str,
    batches: &[RecordBatch],
    batch_rows: usize,
) -> Vec<(i64, String, RecordBatch)> {
    let all = arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap();
    let ts = all.column_by_name("event_timestamp").unwrap().clone();
    let order = arrow::compute::sort_to_indices(&ts, None, None).unwrap();
    let sorted = arrow::compute::take_record_batch(&all, &order).unwrap();
    (0..sorted.num_rows())
        .step_by(batch_rows)
        .map(|start| {
            let b = sorted.slice(start, batch_rows.min(sorted.num_rows() - start));
            let last = b
                .column_by_name("event_timestamp")
                .unwrap()
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(b.num_rows() - 1);
            (last, project.to_string(), b)
        })
        .collect()
}

/// Write back all dirty pages (`sync(1)`), so each measurement starts with
/// the same disk state whatever ran before it.
pub fn settle_disk() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("sync not run: {e}");
    }
}

/// The Python with the benchmark peers installed (`RAINDROP_PYTHON`, else
/// the venv `scripts/test.sh` makes).
pub fn python() -> String {
    std::env::var("RAINDROP_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/raindrop/venv/bin/python",
            std::env::var("HOME").unwrap_or_default()
        )
    })
}

/// Run a peer script from `benches/peers` and parse the JSON it prints;
/// `None` (with the reason on stderr) when it cannot run.
pub fn run_peer(script: &str, args: &[&Path]) -> Option<serde_json::Value> {
    let python = python();
    let out = std::process::Command::new(&python)
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("benches/peers")
                .join(script),
        )
        .args(args)
        .output();
    match out {
        Ok(out) if out.status.success() => serde_json::from_slice(&out.stdout).ok(),
        Ok(out) => {
            eprintln!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
            None
        }
        Err(e) => {
            eprintln!("{script} not run ({python}): {e}");
            None
        }
    }
}

/// Write `batches` to an Arrow IPC file (what the Python peers read).
pub fn write_ipc<'a>(path: &Path, batches: impl IntoIterator<Item = &'a RecordBatch>) {
    let mut batches = batches.into_iter().peekable();
    let schema = batches.peek().expect("at least one batch").schema();
    let mut ipc =
        arrow::ipc::writer::FileWriter::try_new(std::fs::File::create(path).unwrap(), &schema)
            .unwrap();
    for b in batches {
        ipc.write(b).unwrap();
    }
    ipc.finish().unwrap();
}

/// The data files of `table`'s current snapshot.
pub async fn live_files(table: &iceberg::table::Table) -> Vec<iceberg::scan::FileScanTask> {
    use futures::TryStreamExt;
    table
        .scan()
        .build()
        .unwrap()
        .plan_files()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}
