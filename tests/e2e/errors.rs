//! Bad credentials, roles, schemas and SQL get the right status and leave
//! the table exactly as it was.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use raindrop::client::RaindropClient;
use tonic::Code;

use crate::common::*;

fn events(ids: &[&str], project: Option<&str>) -> RecordBatch {
    let n = ids.len();
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        ("event_id", Arc::new(StringArray::from(ids.to_vec()))),
        (
            "event_type",
            Arc::new(StringArray::from(vec!["inference"; n])),
        ),
        (
            "event_timestamp",
            Arc::new(
                TimestampMicrosecondArray::from(vec![1_780_000_000_000_000i64; n])
                    .with_timezone("UTC"),
            ),
        ),
        ("confidence", Arc::new(Float64Array::from(vec![0.5; n]))),
    ];
    if let Some(p) = project {
        cols.push(("project_id", Arc::new(StringArray::from(vec![p; n]))));
    }
    RecordBatch::try_from_iter(cols).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_roles() {
    let server = TestServer::start().await;
    // No token / wrong token.
    let mut anon = RaindropClient::connect(&server.url(), "").await.unwrap();
    anon.inner_mut().clear_token();
    let err = anon.query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut wrong = RaindropClient::connect(&server.url(), "not-a-real-token-at-all")
        .await
        .unwrap();
    assert_eq!(
        wrong.query("SELECT 1").await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        wrong
            .ingest_events(vec![events(&["a"], None)])
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    // Error messages never echo the secret.
    let err = wrong.query("SELECT 1").await.unwrap_err();
    assert!(!err.message().contains("not-a-real-token"), "{err:?}");

    // Roles.
    let mut reader = server.client("acme_read").await;
    assert_eq!(
        reader
            .ingest_events(vec![events(&["a"], None)])
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let mut ingester = server.client("acme_ingest").await;
    assert_eq!(
        ingester
            .ingest_events(vec![events(&["a"], None)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ingester.query("SELECT 1").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        count(&mut reader, "SELECT count(*) FROM wildedge.raw_events").await,
        1
    );

    // Basic-auth handshake (what JDBC/ADBC send) yields a working bearer token.
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut basic = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    basic
        .handshake("acme", &server.tokens["acme_read"])
        .await
        .unwrap();
    assert_eq!(basic.token(), Some(&server.tokens["acme_read"]));
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut bad = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
    assert!(
        bad.handshake("acme", "wrong-password-123456")
            .await
            .is_err()
    );

    // A revoked token stops working without a restart: at once with a
    // token file, within the refresh interval from the catalog database.
    use raindrop::tenant::tokens::{self, TokenSource};
    let source = &server.token_source;
    let id = tokens::list(source)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.label == "acme_read")
        .expect("the token is stored")
        .id;
    tokens::revoke(source, &id).await.unwrap();
    let deadline = match source {
        TokenSource::File(_) => std::time::Duration::ZERO,
        TokenSource::Catalog { .. } => tokens::CATALOG_REFRESH * 3,
    };
    let started = std::time::Instant::now();
    loop {
        match reader.query("SELECT 1").await {
            Err(e) => {
                assert_eq!(e.code(), Code::Unauthenticated);
                break;
            }
            Ok(_) => assert!(
                started.elapsed() <= deadline,
                "revoked token still accepted after {:?}",
                started.elapsed()
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    assert_eq!(
        acme.ingest_events(vec![events(&["e1", "e2"], None)])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        globex
            .ingest_events(vec![events(&["g1"], None)])
            .await
            .unwrap(),
        1
    );
    let files_before = parquet_files(&server.raw_events_data()).len();

    let missing = RecordBatch::try_from_iter(vec![(
        "event_id",
        Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
    )])
    .unwrap();
    let err = acme.ingest_events(vec![missing]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("event_type"), "{}", err.message());

    let bad_type = RecordBatch::try_from_iter(vec![
        (
            "event_id",
            Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
        ),
        ("event_type", Arc::new(StringArray::from(vec!["inference"]))),
        (
            "event_timestamp",
            Arc::new(StringArray::from(vec!["yesterday-ish"])),
        ),
    ])
    .unwrap();
    let err = acme.ingest_events(vec![bad_type]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("event_timestamp"),
        "{}",
        err.message()
    );

    // A good batch followed by a bad one (same schema): the whole stream is refused.
    let err = acme
        .ingest_events(vec![
            events(&["ok1", "ok2"], Some("acme")),
            events(&["bad"], Some("globex")),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("project"), "{}", err.message());

    // Wrong mode for raw_events, bad names, temp tables.
    let err = acme
        .ingest(
            None,
            "raw_events",
            raindrop::client::IngestMode::Replace,
            vec![events(&["r"], None)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = acme
        .ingest(
            Some("../../etc"),
            "passwd",
            raindrop::client::IngestMode::CreateAppend,
            vec![events(&["r"], None)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = acme
        .ingest(
            Some("wildedge"),
            "other",
            raindrop::client::IngestMode::CreateAppend,
            vec![events(&["r"], None)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // SQL errors.
    let err = acme.query("SELEC nonsense").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = acme.query("SELECT * FROM no_such_table").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no_such_table"));

    // Nothing changed: same rows, same files.
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await,
        2
    );
    assert_eq!(
        count(&mut globex, "SELECT count(*) FROM wildedge.raw_events").await,
        1
    );
    assert_eq!(parquet_files(&server.raw_events_data()).len(), files_before);
}

/// A batch's row count is only a number in its IPC header: null-typed
/// columns need no buffers, so a few bytes can claim 2^40 rows. Found by
/// the `ingest_batch` fuzz target: normalising such a batch allocated per
/// claimed row and aborted the process. It must be refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_claimed_row_count_is_refused() {
    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    let claimed = 1usize << 40;
    let batch = RecordBatch::try_from_iter(vec![(
        "model_name",
        Arc::new(arrow::array::NullArray::new(claimed)) as ArrayRef,
    )])
    .unwrap();
    let err = acme.ingest_events(vec![batch]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("rows per batch"),
        "{}",
        err.message()
    );
    // The server is up and the table unchanged.
    let mut again = server.client("acme").await;
    assert_eq!(
        count(&mut again, "SELECT count(*) FROM wildedge.raw_events").await,
        0
    );
}

/// A compressed Arrow IPC buffer starts with its uncompressed length, and
/// arrow-ipc allocates that much before decompressing: a few bytes could
/// declare a terabyte and abort the server (found by the `ingest_batch`
/// fuzz target). The declared sizes are checked before decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_body_declaring_a_terabyte_is_refused() {
    use arrow::ipc::CompressionType;
    use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
    use arrow_flight::sql::{CommandStatementIngest, ProstMessageExt};
    use arrow_flight::{FlightData, FlightDescriptor, SchemaAsIpc};
    use prost::Message;

    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    let batch = events(&["a", "b"], None);
    let options = IpcWriteOptions::default()
        .try_with_compression(Some(CompressionType::LZ4_FRAME))
        .unwrap();
    let cmd = CommandStatementIngest {
        table: "raw_events".into(),
        ..Default::default()
    };
    let mut schema: FlightData = SchemaAsIpc::new(&batch.schema(), &options).into();
    schema.flight_descriptor = Some(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()));
    let (_, encoded) = IpcDataGenerator::default()
        .encode(
            &batch,
            &mut DictionaryTracker::new(false),
            &options,
            &mut Default::default(),
        )
        .unwrap();
    let mut data: FlightData = encoded.into();
    let mut body = data.data_body.to_vec();
    body[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    data.data_body = body.into();

    let sent = acme
        .inner_mut()
        .do_put(futures::stream::iter(vec![schema, data]))
        .await;
    let err = match sent {
        Err(e) => e.to_string(),
        Ok(mut results) => {
            let mut err = String::new();
            while let Some(r) = futures::StreamExt::next(&mut results).await {
                if let Err(s) = r {
                    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                    err = s.message().to_string();
                }
            }
            err
        }
    };
    assert!(err.contains("declares"), "not refused: {err:?}");
    let mut again = server.client("acme").await;
    assert_eq!(
        count(&mut again, "SELECT count(*) FROM wildedge.raw_events").await,
        0
    );
}
