//! Ingest paths: ADBC-style CommandStatementIngest modes for tenant tables,
//! type coercion into raw_events, and plain DoPut with a PATH descriptor.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, LargeStringArray, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightDescriptor, sql::DoPutUpdateResult};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use raindrop::client::IngestMode;
use tonic::Code;

use crate::common::*;

fn labels(ids: &[i64]) -> RecordBatch {
    RecordBatch::try_from_iter(vec![
        (
            "Session_ID",
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("s{i}")).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        ("label", Arc::new(Int64Array::from(ids.to_vec()))),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_table_modes() {
    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    let t = "labels";
    assert_eq!(
        acme.ingest(Some("ml"), t, IngestMode::Create, vec![labels(&[1, 2])])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        acme.ingest(Some("ml"), t, IngestMode::Create, vec![labels(&[3])])
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        acme.ingest(Some("ml"), t, IngestMode::Append, vec![labels(&[3])])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        acme.ingest(Some("ml"), t, IngestMode::CreateAppend, vec![labels(&[4])])
            .await
            .unwrap(),
        1
    );
    assert_eq!(count(&mut acme, "SELECT count(*) FROM ml.labels").await, 4);
    assert_eq!(
        count(&mut acme, "SELECT sum(label) FROM ml.labels").await,
        10
    );
    assert_eq!(
        acme.ingest(Some("ml"), t, IngestMode::Replace, vec![labels(&[7])])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        count(
            &mut acme,
            "SELECT sum(label) FROM ml.labels WHERE session_id = 's7'"
        )
        .await,
        7
    );
    assert_eq!(count(&mut acme, "SELECT count(*) FROM ml.labels").await, 1);

    // Same name in another tenant is a different table.
    assert_eq!(
        globex
            .ingest(Some("ml"), t, IngestMode::Append, vec![labels(&[1])])
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        globex
            .ingest(Some("ml"), t, IngestMode::Create, vec![labels(&[5, 6])])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        count(&mut globex, "SELECT sum(label) FROM ml.labels").await,
        11
    );
    assert_eq!(
        count(&mut acme, "SELECT sum(label) FROM ml.labels").await,
        7
    );

    // Default schema is `public`.
    assert_eq!(
        acme.ingest(None, "notes", IngestMode::Create, vec![labels(&[1])])
            .await
            .unwrap(),
        1
    );
    assert_eq!(count(&mut acme, "SELECT count(*) FROM notes").await, 1);
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM public.notes").await,
        1
    );

    // Wrong columns on append name the column.
    let wrong = RecordBatch::try_from_iter(vec![(
        "colour",
        Arc::new(StringArray::from(vec!["red"])) as ArrayRef,
    )])
    .unwrap();
    let err = acme
        .ingest(Some("ml"), t, IngestMode::Append, vec![wrong])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("colour"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_events_coercion_and_plain_doput() {
    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    // LargeUtf8 ids, ns timestamps without zone, Int64 tokens: all coerced.
    let batch = RecordBatch::try_from_iter(vec![
        (
            "event_id",
            Arc::new(LargeStringArray::from(vec!["a1", "a2"])) as ArrayRef,
        ),
        (
            "event_type",
            Arc::new(LargeStringArray::from(vec!["inference", "inference"])),
        ),
        (
            "event_timestamp",
            Arc::new(TimestampNanosecondArray::from(vec![
                1_780_000_000_123_456_789,
                1_780_000_100_000_000_000,
            ])),
        ),
        (
            "input_tokens",
            Arc::new(Int64Array::from(vec![Some(12), None])),
        ),
        (
            "project_id",
            Arc::new(StringArray::from(vec!["acme", "acme"])),
        ),
    ])
    .unwrap();
    assert_eq!(acme.ingest_events(vec![batch]).await.unwrap(), 2);
    let rows = acme
        .query("SELECT event_id, CAST(event_timestamp AS BIGINT) AS ts, input_tokens, ingested_at IS NOT NULL AS stamped FROM wildedge.raw_events ORDER BY event_id")
        .await
        .unwrap();
    arrow::util::pretty::print_batches(&rows).unwrap();
    let ts = strings(&rows, "ts");
    assert_eq!(ts, vec!["1780000000123456", "1780000100000000"]);
    assert_eq!(strings(&rows, "stamped"), vec!["true", "true"]);

    // Plain Flight DoPut with a PATH descriptor.
    let batch = RecordBatch::try_from_iter(vec![
        (
            "event_id",
            Arc::new(StringArray::from(vec!["p1"])) as ArrayRef,
        ),
        ("event_type", Arc::new(StringArray::from(vec!["error"]))),
        (
            "event_timestamp",
            Arc::new(
                TimestampNanosecondArray::from(vec![1_780_000_000_000_000_000])
                    .with_timezone("UTC"),
            ),
        ),
    ])
    .unwrap();
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![
            "wildedge".into(),
            "raw_events".into(),
        ])))
        .build(futures::stream::iter([Ok(batch)]))
        .map(|r| r.unwrap());
    let results: Vec<_> = acme
        .inner_mut()
        .do_put(data)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let result = DoPutUpdateResult::decode(&*results[0].app_metadata).unwrap();
    assert_eq!(result.record_count, 1);
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await,
        3
    );

    // Admin ingest must carry project ids; they are validated.
    let mut admin = server.client("admin").await;
    let batch = RecordBatch::try_from_iter(vec![
        (
            "project_id",
            Arc::new(StringArray::from(vec!["globex"])) as ArrayRef,
        ),
        ("event_id", Arc::new(StringArray::from(vec!["g1"]))),
        ("event_type", Arc::new(StringArray::from(vec!["inference"]))),
        (
            "event_timestamp",
            Arc::new(TimestampNanosecondArray::from(vec![
                1_780_000_000_000_000_000,
            ])),
        ),
    ])
    .unwrap();
    assert_eq!(admin.ingest_events(vec![batch.clone()]).await.unwrap(), 1);
    let bad = RecordBatch::try_new(
        batch.schema(),
        vec![
            Arc::new(StringArray::from(vec!["../evil"])),
            batch.column(1).clone(),
            batch.column(2).clone(),
            batch.column(3).clone(),
        ],
    )
    .unwrap();
    assert_eq!(
        admin.ingest_events(vec![bad]).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut globex = server.client("globex").await;
    assert_eq!(
        count(&mut globex, "SELECT count(*) FROM wildedge.raw_events").await,
        1
    );
}

fn wide_batch(n: usize, tag: &str) -> RecordBatch {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i:024}")).collect();
    RecordBatch::try_from_iter(vec![
        ("event_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        (
            "event_type",
            Arc::new(StringArray::from(vec!["inference"; n])),
        ),
        (
            "event_timestamp",
            Arc::new(TimestampNanosecondArray::from(
                vec![1_780_000_000_000_000_000; n],
            )),
        ),
        (
            "session_id",
            Arc::new(StringArray::from(vec![
                "a-fairly-long-session-identifier-0000000000";
                n
            ])),
        ),
        (
            "model_name",
            Arc::new(StringArray::from(vec!["a-fairly-long-model-name"; n])),
        ),
    ])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_accepted_and_oversize_streams_refused() {
    // A server with a 40 MiB stream limit.
    let (server, _dir) = custom_server(|c| c.limits.max_ingest_mib = 40).await;
    let mut c = raindrop::client::RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();

    // ~25 MB in one IPC message: its columns share one buffer, which must
    // not be counted once per column (5x) against the limit.
    let n = 200_000;
    assert_eq!(
        c.ingest_events(vec![wide_batch(n, "one")]).await.unwrap(),
        n as i64
    );

    // Three such batches in one stream exceed 40 MiB: refused, nothing committed.
    let err = c
        .ingest_events(vec![
            wide_batch(n, "a"),
            wide_batch(n, "b"),
            wide_batch(n, "c"),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("MiB"));
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM wildedge.raw_events").await,
        n as i64
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_ingest_buffers_push_back_then_recover() {
    let (server, _dir) = custom_server(|c| c.limits.max_buffered_mib = 30).await;
    let mut c = raindrop::client::RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    // ~25 MB per batch: the second cannot fit in a 30 MiB budget.
    let err = c
        .ingest_events(vec![wide_batch(200_000, "x"), wide_batch(200_000, "y")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("retry"), "{}", err.message());
    // Nothing committed, and the buffer was released.
    assert_eq!(
        c.ingest_events(vec![wide_batch(200_000, "z")])
            .await
            .unwrap(),
        200_000
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM wildedge.raw_events").await,
        200_000
    );
    server.stop().await.unwrap();
}
