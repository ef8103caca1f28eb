//! Schema evolution of `raw_events`: an admin adds, widens and documents
//! columns over Flight SQL in one metadata-only commit; tenants cannot;
//! unsafe changes are refused and change nothing. Old files read the new
//! column as null and the widened one as the wider type, clients sending
//! the old schema keep working, and filters on a widened column still find
//! the rows of files written before it was widened (planning, erasure,
//! compaction).

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array};
use iceberg::spec::{PrimitiveType, Type};
use raindrop::client::RaindropClient;
use raindrop::maintenance::compact::{CompactOptions, compact_table};

use crate::common::*;

const ALTER: &str = "ALTER TABLE wildedge.raw_events \
     ADD COLUMN gpu_temp DOUBLE COMMENT 'GPU temperature, °C', \
     ALTER COLUMN input_tokens TYPE BIGINT";

/// `n` events `<id>-<i>` in the original schema, `input_tokens` 100 + i.
fn old_rows(id: &str, n: usize) -> arrow::array::RecordBatch {
    let tokens: ArrayRef = Arc::new(Int32Array::from_iter_values(100..100 + n as i32));
    with_columns(id_batch(id, n), vec![("input_tokens", tokens)])
}

/// `n` events in the evolved schema: a GPU temperature, and token counts
/// only a 64-bit column holds.
fn new_rows(id: &str, n: usize) -> arrow::array::RecordBatch {
    let tokens: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..n as i64).map(|i| 5_000_000_000 + i),
    ));
    let temp: ArrayRef = Arc::new(Float64Array::from_iter_values(
        (0..n).map(|i| 60.0 + i as f64),
    ));
    with_columns(
        id_batch(id, n),
        vec![("input_tokens", tokens), ("gpu_temp", temp)],
    )
}

/// Answers that must hold for acme's rows of `old_rows("old", 10)`,
/// `new_rows("new", 10)` and `old_rows("old2", 10)`, however they are
/// stored: in files of either schema, buffered, or compacted together.
async fn check_answers(acme: &mut RaindropClient, rows: i64) {
    let old = rows - 10;
    assert_eq!(
        count(acme, "SELECT count(*) FROM wildedge.raw_events").await,
        rows
    );
    assert_eq!(
        count(
            acme,
            "SELECT count(*) FROM wildedge.raw_events WHERE gpu_temp IS NULL"
        )
        .await,
        old,
        "rows written before the column existed read it as null"
    );
    assert_eq!(
        count(
            acme,
            "SELECT count(*) FROM wildedge.raw_events WHERE gpu_temp > 64.5"
        )
        .await,
        5
    );
    // A range on the widened column must not skip files whose statistics
    // were written as 32-bit integers.
    assert_eq!(
        count(
            acme,
            "SELECT count(*) FROM wildedge.raw_events WHERE input_tokens > 104"
        )
        .await,
        old / 2 + 10
    );
    assert_eq!(
        count(
            acme,
            "SELECT count(*) FROM wildedge.raw_events WHERE input_tokens BETWEEN 100 AND 104"
        )
        .await,
        old / 2
    );
    let batches = acme
        .query(
            "SELECT sum(input_tokens) AS s, arrow_typeof(input_tokens) AS t, \
             arrow_typeof(gpu_temp) AS g FROM wildedge.raw_events GROUP BY 2, 3",
        )
        .await
        .unwrap();
    let want_sum =
        (old / 10) * (100..110).sum::<i64>() + (0..10).map(|i| 5_000_000_000 + i).sum::<i64>();
    assert_eq!(scalar_i64(&batches), want_sum);
    assert_eq!(strings(&batches, "t"), vec!["Int64"]);
    assert_eq!(strings(&batches, "g"), vec!["Float64"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_evolves_raw_events_and_old_and_new_rows_read_alike() {
    let server = TestServer::start().await;
    let w = server.warehouse();
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    let mut admin = server.client("admin").await;
    acme.ingest_events(vec![old_rows("old", 10)]).await.unwrap();
    globex.ingest_events(vec![id_batch("g", 5)]).await.unwrap();
    let before = w.raw_events().await.unwrap();
    let last_id = before.metadata().last_column_id();
    let files_before = scan_tasks(&before).await.len();

    // Refused with the right status and a message saying why; nothing
    // changes. (Status codes as tonic describes them.)
    const DENIED: &str = "does not have permission";
    const INVALID: &str = "invalid argument";
    let cases: [(bool, &str, &str, &str); 10] = [
        (false, ALTER, DENIED, "only an admin token"),
        (
            false,
            "ALTER TABLE warehouse.user_outcomes ADD COLUMN x INT",
            "not implemented",
            "wildedge.raw_events only",
        ),
        (
            true,
            "ALTER TABLE wildedge.raw_events ALTER COLUMN confidence TYPE REAL",
            INVALID,
            "narrows",
        ),
        (
            true,
            "ALTER TABLE wildedge.raw_events ALTER COLUMN input_tokens TYPE VARCHAR",
            INVALID,
            "keep the old type",
        ),
        (
            true,
            "ALTER TABLE wildedge.raw_events DROP COLUMN model_name",
            INVALID,
            "never dropped",
        ),
        (
            true,
            "ALTER TABLE wildedge.raw_events ADD COLUMN x BIGINT NOT NULL",
            INVALID,
            "cannot be NOT NULL",
        ),
        (
            true,
            "ALTER TABLE wildedge.raw_events ADD COLUMN event_day DATE",
            INVALID,
            "virtual day column",
        ),
        (
            true,
            "ALTER TABLE wildedge.raw_events ADD COLUMN model_name VARCHAR",
            "already exists",
            "column 'model_name' already exists",
        ),
        (
            true,
            "ALTER TABLE wildedge.raw_events ALTER COLUMN nope TYPE BIGINT",
            "not found",
            "column 'nope' does not exist",
        ),
        // All or nothing: the valid first change is not applied either.
        (
            true,
            "ALTER TABLE wildedge.raw_events ADD COLUMN ok INT, ALTER COLUMN confidence TYPE INT",
            INVALID,
            "cannot change column 'confidence'",
        ),
    ];
    for (by_admin, sql, code, why) in cases {
        let client = if by_admin { &mut admin } else { &mut acme };
        let err = update(client, sql).await.unwrap_err();
        let status = err.split(", message:").next().unwrap().to_lowercase();
        assert!(status.contains(code) && err.contains(why), "{sql}: {err}");
    }
    let unchanged = w.raw_events().await.unwrap();
    assert_eq!(unchanged.metadata_location(), before.metadata_location());

    assert_eq!(update(&mut admin, ALTER).await.unwrap(), 0);
    update(
        &mut admin,
        "COMMENT ON COLUMN wildedge.raw_events.session_id IS 'one run of the app'",
    )
    .await
    .unwrap();
    let evolved = w.raw_events().await.unwrap();
    // Asked again: nothing to change, no commit.
    update(
        &mut admin,
        "ALTER TABLE wildedge.raw_events ADD COLUMN IF NOT EXISTS gpu_temp DOUBLE",
    )
    .await
    .unwrap();
    assert_eq!(
        w.raw_events().await.unwrap().metadata_location(),
        evolved.metadata_location()
    );
    let schema = evolved.metadata().current_schema();
    let gpu = schema.field_by_name("gpu_temp").unwrap();
    assert_eq!(gpu.id, last_id + 1, "a fresh field id");
    assert!(!gpu.required);
    assert_eq!(gpu.doc.as_deref(), Some("GPU temperature, °C"));
    let tokens = schema.field_by_name("input_tokens").unwrap();
    assert_eq!(tokens.id, 14, "a widened column keeps its id");
    assert_eq!(*tokens.field_type, Type::Primitive(PrimitiveType::Long));
    assert_eq!(
        schema.field_by_name("session_id").unwrap().doc.as_deref(),
        Some("one run of the app")
    );
    for old in before.metadata().current_schema().as_struct().fields() {
        assert_eq!(schema.field_by_name(&old.name).unwrap().id, old.id);
    }
    // Metadata only: the same data files, none rewritten.
    assert_eq!(scan_tasks(&evolved).await.len(), files_before);
    assert_eq!(
        evolved.metadata().current_snapshot_id(),
        before.metadata().current_snapshot_id()
    );

    // New clients send the new column; old ones keep working.
    acme.ingest_events(vec![new_rows("new", 10)]).await.unwrap();
    acme.ingest_events(vec![old_rows("old2", 10)])
        .await
        .unwrap();
    let unknown = with_columns(
        id_batch("bad", 1),
        vec![(
            "cpu_temp",
            Arc::new(Float64Array::from(vec![1.0])) as ArrayRef,
        )],
    );
    let err = acme.ingest_events(vec![unknown]).await.unwrap_err();
    assert!(
        err.to_string().contains("unknown column 'cpu_temp'"),
        "{err}"
    );
    check_answers(&mut acme, 30).await;

    // Erasure by a range on the widened column reaches the old file too.
    let erased = update(
        &mut acme,
        "DELETE FROM wildedge.raw_events WHERE input_tokens >= 108 AND input_tokens < 1000",
    )
    .await
    .unwrap();
    assert_eq!(erased, 4);
    acme.ingest_events(vec![old_rows("old3", 10).slice(8, 2)])
        .await
        .unwrap();
    acme.ingest_events(vec![old_rows("old4", 10).slice(8, 2)])
        .await
        .unwrap();
    check_answers(&mut acme, 30).await;

    // Compaction merges files of both schemas into the current one.
    compact_table(w, &w.raw_events_ident(), &CompactOptions::default())
        .await
        .unwrap();
    let compacted = w.raw_events().await.unwrap();
    let acme_files = scan_tasks(&compacted)
        .await
        .into_iter()
        .filter(|t| t.data_file_path.contains("project_id=acme"))
        .count();
    assert_eq!(acme_files, 1, "one file for acme's one day");
    check_answers(&mut acme, 30).await;

    // The other tenant's rows: untouched, the new column null.
    assert_eq!(
        count(
            &mut globex,
            "SELECT count(*) FROM wildedge.raw_events WHERE gpu_temp IS NULL AND input_tokens IS NULL"
        )
        .await,
        5
    );
}

/// Rows acknowledged into the write-ahead log before the change are read
/// (buffered, in the old schema) next to rows after it, and one flush
/// commits both in the new schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_rows_of_both_schemas_read_and_flush_together() {
    let (server, _dir) = custom_server(|c| c.limits.flush_interval_ms = 3_600_000).await;
    let w = server.services.query.warehouse().clone();
    let mut acme = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    let mut admin = RaindropClient::connect(&server.url(), ADMIN_TOKEN)
        .await
        .unwrap();
    acme.ingest_events(vec![old_rows("old", 10)]).await.unwrap();
    update(&mut admin, ALTER).await.unwrap();
    acme.ingest_events(vec![new_rows("new", 10)]).await.unwrap();
    acme.ingest_events(vec![old_rows("old2", 10)])
        .await
        .unwrap();
    assert!(
        w.raw_events()
            .await
            .unwrap()
            .metadata()
            .current_snapshot()
            .is_none(),
        "nothing committed yet"
    );
    check_answers(&mut acme, 30).await;
    server.services.ingest.flush().await.unwrap();
    let table = w.raw_events().await.unwrap();
    assert_eq!(scan_tasks(&table).await.len(), 1, "one file, one commit");
    check_answers(&mut acme, 30).await;
    server.stop().await.unwrap();
}
