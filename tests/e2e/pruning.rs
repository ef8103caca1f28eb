//! `event_day` and `event_timestamp` predicates prune whole days of files
//! before any data is read: asserted on files planned and files scanned.

use arrow::array::AsArray;
use arrow::datatypes::TimestampMicrosecondType;
use chrono::{Duration, NaiveDate, Utc};

use crate::common::*;

fn files_on_disk(server: &TestServer, project: &str, day: NaiveDate) -> usize {
    parquet_files(
        &server
            .raw_events_data()
            .join(format!("project_id={project}/event_day={day}")),
    )
    .len()
}

fn events_on(data: &raindrop::demo::generate::ProjectData, day: NaiveDate) -> i64 {
    let start = day
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    let end = start + 86_400_000_000;
    data.events
        .iter()
        .map(|b| {
            let ts = b
                .column_by_name("event_timestamp")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            ts.values()
                .iter()
                .filter(|t| **t >= start && **t < end)
                .count() as i64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn day_and_time_predicates_prune_files() {
    on_one_utc_day(|| async {
        let server = loaded_server().await;
        let data = dataset().await;
        let mut acme = server.client("acme").await;
        let today = Utc::now().date_naive();
        let day = today - Duration::days(5);
        let one_day = files_on_disk(&server, ACME, day);
        let all = parquet_files(&server.raw_events_data().join("project_id=acme")).len();
        assert!(
            one_day > 0 && one_day * 10 < all,
            "fixture: {one_day} files that day of {all}"
        );

        let next = day + Duration::days(1);
        let prev = day - Duration::days(1);
        let cases = [
            (format!("event_day = DATE '{day}'"), one_day),
            (
                "event_day = current_date - interval '5 days'".to_string(),
                one_day,
            ),
            (
                format!("event_day >= DATE '{day}' AND event_day < DATE '{next}'"),
                one_day,
            ),
            (
                format!("event_day BETWEEN DATE '{prev}' AND DATE '{day}'"),
                one_day + files_on_disk(&server, ACME, prev),
            ),
            (
                format!("event_day IN (DATE '{prev}', DATE '{next}')"),
                files_on_disk(&server, ACME, prev) + files_on_disk(&server, ACME, next),
            ),
            (
                format!(
                    "event_timestamp >= TIMESTAMP '{day}T00:00:00Z' AND event_timestamp < TIMESTAMP '{next}T00:00:00Z'"
                ),
                one_day,
            ),
            (
                format!(
                    "event_timestamp >= '{day}T00:00:00Z' AND event_timestamp < '{next}T00:00:00Z'"
                ),
                one_day,
            ),
            (
                format!("project_id = 'acme' AND event_day = DATE '{day}'"),
                one_day,
            ),
        ];
        for (predicate, want) in &cases {
            let sql = format!("SELECT count(*) FROM wildedge.raw_events WHERE {predicate}");
            assert_eq!(
                planned_files(&mut acme, &sql).await,
                vec![*want],
                "{predicate}"
            );
        }
        // Results stay exact while pruning.
        let n = count(
            &mut acme,
            &format!("SELECT count(*) FROM wildedge.raw_events WHERE event_day = DATE '{day}'"),
        )
        .await;
        assert_eq!(n, events_on(&data.acme, day));
        let n = count(
            &mut acme,
            &format!("SELECT count(*) FROM wildedge.raw_events WHERE event_timestamp >= TIMESTAMP '{day}T12:00:00Z' AND event_day = DATE '{day}'"),
        )
        .await;
        assert!(n > 0 && n < events_on(&data.acme, day));

        // At the storage layer: the one-day query opened exactly that day's files.
        let log = server.access_log();
        log.start();
        count(
            &mut acme,
            &format!("SELECT count(*) FROM wildedge.raw_events WHERE event_day = DATE '{day}'"),
        )
        .await;
        let opened: std::collections::BTreeSet<_> = log
            .stop()
            .into_iter()
            .filter(|p| p.ends_with(".parquet"))
            .collect();
        let day_dir = format!("/project_id=acme/event_day={day}/");
        assert!(opened.iter().all(|p| p.contains(&day_dir)), "{opened:?}");
        assert_eq!(opened.len(), one_day);

        // Files actually opened (EXPLAIN ANALYZE metrics) match the plan.
        let analyzed = acme
            .query(&format!("EXPLAIN ANALYZE SELECT count(*) FROM wildedge.raw_events WHERE event_day = DATE '{day}'"))
            .await
            .unwrap();
        let text = strings(&analyzed, "plan").join("\n");
        assert!(text.contains(&format!("files_scanned={one_day}")), "{text}");
        // The Parquet reader's own metrics are reported on the scan, once.
        for metric in [
            "bytes_scanned=",
            "row_groups_pruned_statistics=",
            "metadata_load_time=",
        ] {
            assert_eq!(text.matches(metric).count(), 1, "{metric} in {text}");
        }
        assert_eq!(
            text.matches("output_rows=").count(),
            text.lines().filter(|l| l.contains("metrics=")).count(),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_laid_out_by_project_and_day() {
    let server = loaded_server().await;
    let root = server.raw_events_data();
    let files = parquet_files(&root);
    assert!(!files.is_empty());
    let mut projects = std::collections::BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let parts: Vec<_> = rel
            .iter()
            .map(|p| p.to_string_lossy().to_string())
            .collect();
        assert_eq!(parts.len(), 3, "{rel:?}");
        let project = parts[0]
            .strip_prefix("project_id=")
            .unwrap_or_else(|| panic!("{rel:?}"));
        let day = parts[1]
            .strip_prefix("event_day=")
            .unwrap_or_else(|| panic!("{rel:?}"));
        NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap_or_else(|_| panic!("{rel:?}"));
        projects.insert(project.to_string());
        // ZSTD-compressed, with statistics.
        let reader =
            parquet::file::reader::SerializedFileReader::new(std::fs::File::open(f).unwrap())
                .unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&reader);
        let col = meta.row_group(0).column(0);
        assert!(
            matches!(col.compression(), parquet::basic::Compression::ZSTD(_)),
            "{rel:?}"
        );
        assert!(col.statistics().is_some());
    }
    assert_eq!(
        projects.into_iter().collect::<Vec<_>>(),
        vec![ACME.to_string(), GLOBEX.to_string()]
    );
}

/// Rows `<id>-<n>` whose `duration_ms` is `value`, in one commit (one file).
fn durations(id: &str, value: f64) -> arrow::array::RecordBatch {
    use std::sync::Arc;
    let batch = id_batch(id, 50);
    let mut columns = batch.columns().to_vec();
    let mut fields: Vec<_> = batch.schema().fields().iter().cloned().collect();
    columns.push(Arc::new(arrow::array::Float64Array::from(vec![value; 50])));
    fields.push(Arc::new(arrow::datatypes::Field::new(
        "duration_ms",
        arrow::datatypes::DataType::Float64,
        true,
    )));
    arrow::array::RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
        .unwrap()
}

/// File statistics skip files only for what they can decide: a filter on a
/// cast of a column must not be read as a filter on the column (`CAST(5.5
/// AS INT) = 5`, yet no file holding only 5.5 has `duration_ms = 5`), and
/// under `NOT` nothing may be dropped from an `AND`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_pruning_never_drops_matching_rows() {
    let (server, _dir) = custom_server(|_| {}).await;
    let mut acme = raindrop::client::RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    acme.ingest_events(vec![durations("a", 5.5)]).await.unwrap();
    acme.ingest_events(vec![durations("b", 7.0)]).await.unwrap();

    let cast = "SELECT count(*) FROM wildedge.raw_events WHERE CAST(duration_ms AS INT) = 5";
    assert_eq!(count(&mut acme, cast).await, 50);
    let rounded = "SELECT count(*) FROM wildedge.raw_events WHERE round(duration_ms) = 6";
    assert_eq!(count(&mut acme, rounded).await, 50);
    // Half of an AND is a weaker filter, but under NOT a stronger one.
    let negated = "SELECT count(*) FROM wildedge.raw_events \
                   WHERE NOT (duration_ms > 6 AND round(duration_ms) = 9)";
    assert_eq!(count(&mut acme, negated).await, 100);
    // What statistics can decide still skips files.
    let plain = "SELECT count(*) FROM wildedge.raw_events WHERE duration_ms = 7";
    assert_eq!(count(&mut acme, plain).await, 50);
    assert_eq!(planned_files(&mut acme, plain).await, vec![1]);
    let either =
        "SELECT count(*) FROM wildedge.raw_events WHERE duration_ms < 6 OR duration_ms > 8";
    assert_eq!(count(&mut acme, either).await, 50);
    assert_eq!(planned_files(&mut acme, either).await, vec![1]);
}
