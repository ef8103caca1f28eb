//! `.slt` files under `sql/`, run by the `sqllogictest` crate (as DataFusion
//! and iceberg-rust do) over Flight SQL against the loaded test server.
//!
//! What Raindrop adds to the standard format:
//! - errors read `<gRPC code>: <message>`, so `statement error` /
//!   `query error` regexes can pin the status code;
//! - values that change from run to run are normalised: dates become
//!   `today-N` (the fixture's data ends at today's UTC midnight), byte
//!   counts `bytes=<n>`;
//! - `EXPLAIN` answers with what pruning decided, one row per Iceberg scan
//!   (`table`, `manifests` considered/total, `files` planned, the columns
//!   read, the Iceberg `predicate`, the reader if not Parquet) and one per
//!   row filter left above it, not DataFusion's whole plan text, which
//!   changes with every upgrade.
//!
//! `RAINDROP_SLT_COMPLETE=1 cargo test --release --test e2e slt` rewrites
//! the expected results from the actual ones (review the diff).

use std::path::Path;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{NaiveDate, Utc};
use raindrop::client::RaindropClient;
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::common::*;

/// An error as the `.slt` files match it: `<gRPC code>: <message>`.
#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

/// One tenant's Flight SQL connection.
struct FlightDb(RaindropClient);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for FlightDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let batches = self
            .0
            .query(sql)
            .await
            .map_err(|s| SltError(format!("{:?}: {}", s.code(), s.message())))?;
        let explain = sql.trim_start().to_ascii_uppercase().starts_with("EXPLAIN");
        let (types, rows) = if explain {
            (vec![DefaultColumnType::Text], scans(&batches))
        } else {
            (column_types(&batches), render(&batches))
        };
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn column_types(batches: &[RecordBatch]) -> Vec<DefaultColumnType> {
    let Some(first) = batches.first() else {
        return vec![];
    };
    first
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_integer() => DefaultColumnType::Integer,
            t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => {
                DefaultColumnType::FloatingPoint
            }
            _ => DefaultColumnType::Text,
        })
        .collect()
}

fn render(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| match f.value(row).to_string() {
                        s if s.is_empty() => "(empty)".to_string(),
                        s => normalize(&s),
                    })
                    .collect(),
            );
        }
    }
    out
}

/// The Iceberg scans of an `EXPLAIN` answer, reduced to what pruning
/// decided.
fn scans(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    const KEEP: [&str; 4] = ["table=", "manifests=", "files=", "projection="];
    let mut out = vec![];
    for b in batches {
        let plans = b.column(b.num_columns() - 1).as_string::<i32>();
        for plan in plans.iter().flatten() {
            for line in plan.lines() {
                // Row filters DataFusion still applies above the scan.
                if let Some((_, filter)) = line.split_once("FilterExec: ") {
                    let expr = filter.split(", projection=").next().unwrap_or(filter);
                    out.push(vec![normalize(&format!("filter={expr}"))]);
                    continue;
                }
                let Some((_, scan)) = line.split_once("IcebergScanExec: ") else {
                    continue;
                };
                let (fields, predicate) = match scan.split_once(", predicate=") {
                    Some((fields, p)) => (fields, Some(p)),
                    None => (scan, None),
                };
                let mut summary: Vec<String> = fields
                    .split(", ")
                    .filter(|f| KEEP.iter().any(|k| f.starts_with(k)))
                    .map(str::to_string)
                    .collect();
                if let Some(p) = predicate {
                    // The reader, if shown, follows the predicate.
                    let (p, reader) = match p.split_once(", reader=") {
                        Some((p, r)) => (p, Some(r)),
                        None => (p, None),
                    };
                    summary.push(format!("predicate={p}"));
                    summary.extend(reader.map(|r| format!("reader={r}")));
                }
                out.push(vec![normalize(&summary.join(" "))]);
            }
        }
    }
    out
}

/// Replace run-dependent values: dates relative to today, byte counts.
fn normalize(line: &str) -> String {
    let today = Utc::now().date_naive();
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        let date = rest
            .get(..10)
            .filter(|d| d.as_bytes()[4] == b'-')
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        if let Some(d) = date {
            let n = (d - today).num_days();
            out.push_str(&match n {
                0 => "today".to_string(),
                n if n < 0 => format!("today{n}"),
                n => format!("today+{n}"),
            });
            i += 10;
        } else if let Some(micros) = epoch_micros(rest, i == 0 || !bytes[i - 1].is_ascii_digit()) {
            let t = chrono::DateTime::from_timestamp_micros(micros).unwrap();
            let n = (t.date_naive() - today).num_days();
            out.push_str(&format!("today{n:+} {}", t.format("%H:%M:%S")).replace("+0 ", " "));
            i += 16;
        } else if let Some(tail) = rest.strip_prefix("bytes=") {
            out.push_str("bytes=<n>");
            i += "bytes=".len() + tail.bytes().take_while(u8::is_ascii_digit).count();
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// A 16-digit number at the start of `s` that reads as microseconds since
/// the epoch in this century (how plans print timestamp literals).
fn epoch_micros(s: &str, at_word_start: bool) -> Option<i64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if !at_word_start || digits != 16 {
        return None;
    }
    let v: i64 = s[..16].parse().ok()?;
    (946_684_800_000_000..4_102_444_800_000_000)
        .contains(&v)
        .then_some(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files() {
    on_one_utc_day(|| async {
        let server = loaded_server().await;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "slt"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .slt files in {}", dir.display());
        let complete = std::env::var("RAINDROP_SLT_COMPLETE").is_ok_and(|v| v == "1");
        let (url, token) = (server.url(), server.tokens["acme"].clone());
        let mut failures = vec![];
        for f in &files {
            // A fresh connection per file, as tenant `acme`.
            let mut runner = sqllogictest::Runner::new(|| {
                let (url, token) = (url.clone(), token.clone());
                async move {
                    RaindropClient::connect(&url, &token)
                        .await
                        .map(FlightDb)
                        .map_err(|s| SltError(s.to_string()))
                }
            });
            let result = if complete {
                runner
                    .update_test_file(
                        f,
                        " ",
                        sqllogictest::default_validator,
                        sqllogictest::default_normalizer,
                        sqllogictest::default_column_validator,
                    )
                    .await
                    .map_err(|e| e.to_string())
            } else {
                runner.run_file_async(f).await.map_err(|e| e.to_string())
            };
            if let Err(e) = result {
                failures.push(format!("{}: {e}", f.display()));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    })
    .await;
}

#[test]
fn explain_keeps_only_what_pruning_decided() {
    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};
    let plan = "ProjectionExec: expr=[count(Int64(1))@0 as count(*)]\n  FilterExec: event_timestamp@0 >= 1, projection=[]\n    IcebergScanExec: table=wildedge.raw_events, manifests=5/7, files=143, bytes=123456, partitions=2, projection=[event_timestamp], predicate=[project_id = \"acme\"], reader=iceberg (delete files)";
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            std::sync::Arc::new(StringArray::from(vec!["physical_plan"])),
            std::sync::Arc::new(StringArray::from(vec![plan])),
        ],
    )
    .unwrap();
    assert_eq!(
        scans(&[batch]),
        vec![
            vec!["filter=event_timestamp@0 >= 1".to_string()],
            vec![
                "table=wildedge.raw_events manifests=5/7 files=143 projection=[event_timestamp] predicate=[project_id = \"acme\"] reader=iceberg (delete files)".to_string()
            ]
        ]
    );
    assert_eq!(
        normalize(&Utc::now().date_naive().format("%Y-%m-%d").to_string()),
        "today"
    );
}
