//! `.slt` files under `sql/` (sqllogictest format), run over Flight SQL
//! against the loaded test server, so SQL behaviour and the plans that
//! prove pruning are pinned in plain text.
//!
//! Supported records: `statement ok`, `statement error <substring of
//! "<gRPC code>: <message>">`, and
//! `query <types> [rowsort]` with expected rows after `----`. Cells are
//! separated by a space; multi-line cells (plans) contribute one line
//! each. Values that change from run to run are normalised: dates become
//! `today-N` (the fixture's data ends at today's UTC midnight), `bytes=<n>`.
//!
//! `RAINDROP_SLT_COMPLETE=1 cargo test --test e2e slt` rewrites the
//! expected results from the actual ones (review the diff).

use std::path::Path;

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::{NaiveDate, Utc};
use raindrop::client::RaindropClient;

use crate::common::*;

enum Expect {
    Ok,
    Error(String),
    Rows { sort: bool, rows: Vec<String> },
}

struct Record {
    /// Comment lines before the record (kept when completing).
    comments: Vec<String>,
    header: String,
    sql: String,
    expect: Expect,
}

fn parse(text: &str) -> Vec<Record> {
    let mut records = vec![];
    let mut comments = vec![];
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let header = line.trim_end();
        if header.starts_with('#') {
            comments.push(header.to_string());
            continue;
        }
        if header.is_empty() {
            // Keep paragraph breaks between comment blocks.
            if comments.last().is_some_and(|c: &String| !c.is_empty()) {
                comments.push(String::new());
            }
            continue;
        }
        let mut sql = vec![];
        while let Some(l) = lines.peek() {
            if l.trim().is_empty() || l.trim() == "----" {
                break;
            }
            sql.push(lines.next().unwrap().to_string());
        }
        let mut words = header.split_whitespace();
        let expect = match (words.next(), words.next()) {
            (Some("statement"), Some("ok")) => Expect::Ok,
            (Some("statement"), Some("error")) => Expect::Error(
                header
                    .splitn(3, ' ')
                    .nth(2)
                    .unwrap_or("")
                    .trim()
                    .to_string(),
            ),
            (Some("query"), _) => {
                let mut rows = vec![];
                if lines.peek().is_some_and(|l| l.trim() == "----") {
                    lines.next();
                    while let Some(l) = lines.peek() {
                        if l.trim().is_empty() {
                            break;
                        }
                        rows.push(lines.next().unwrap().trim_end().to_string());
                    }
                }
                Expect::Rows {
                    sort: header.split_whitespace().any(|w| w == "rowsort"),
                    rows,
                }
            }
            _ => panic!("unsupported slt record: {header}"),
        };
        records.push(Record {
            comments: std::mem::take(&mut comments),
            header: header.to_string(),
            sql: sql.join("\n"),
            expect,
        });
    }
    records
}

fn render(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in batches {
        let formatters: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..b.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| match f.value(row).to_string() {
                    s if s.is_empty() => "(empty)".to_string(),
                    s => s,
                })
                .collect();
            for line in cells.join(" ").lines() {
                out.push(normalize(line.trim_end()));
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

async fn run_file(client: &mut RaindropClient, path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let complete = std::env::var("RAINDROP_SLT_COMPLETE").is_ok_and(|v| v == "1");
    let mut failures = vec![];
    let mut rewritten = String::new();
    for r in parse(&text) {
        let result = client.query(&r.sql).await;
        let mut actual_rows = None;
        match (&r.expect, &result) {
            (Expect::Ok, Ok(_)) => {}
            // Matched against "<gRPC code>: <message>".
            (Expect::Error(want), Err(e))
                if format!("{:?}: {}", e.code(), e.message()).contains(want.as_str()) => {}
            (Expect::Rows { sort, rows }, Ok(batches)) => {
                let mut got = render(batches);
                if *sort {
                    got.sort();
                }
                let mut want = rows.clone();
                if *sort {
                    want.sort();
                }
                if got != want {
                    failures.push(format!(
                        "{}: {}\n--- expected\n{}\n--- actual\n{}",
                        path.display(),
                        r.sql,
                        want.join("\n"),
                        got.join("\n")
                    ));
                }
                actual_rows = Some(got);
            }
            (_, Ok(_)) => failures.push(format!(
                "{}: {} succeeded, expected an error",
                path.display(),
                r.sql
            )),
            (_, Err(e)) => failures.push(format!("{}: {} failed: {e:?}", path.display(), r.sql)),
        }
        for c in &r.comments {
            rewritten.push_str(c);
            rewritten.push('\n');
        }
        rewritten.push_str(&format!("{}\n{}\n", r.header, r.sql));
        if let Expect::Rows { rows, .. } = &r.expect {
            rewritten.push_str("----\n");
            for row in actual_rows.as_ref().unwrap_or(rows) {
                rewritten.push_str(row);
                rewritten.push('\n');
            }
        }
        rewritten.push('\n');
    }
    if complete {
        std::fs::write(path, rewritten.trim_end_matches('\n').to_string() + "\n").unwrap();
        return vec![];
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files() {
    let server = loaded_server().await;
    let mut acme = server.client("acme").await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let mut failures = vec![];
    for f in &files {
        failures.extend(run_file(&mut acme, f).await);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
