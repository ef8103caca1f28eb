//! The Flight SQL surface drivers rely on: prepared statements, metadata
//! RPCs (pinned by snapshots, FlightInfo schema == DoGet schema), SQL
//! updates in the tenant's own schemas, session actions.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, SqlInfo,
};
use arrow_flight::{Action, FlightInfo};
use futures::TryStreamExt;
use prost::Message;
use raindrop::client::RaindropClient;
use tonic::Code;

use crate::common::*;

/// DoGet every endpoint of `info`; assert the streamed schema equals the
/// announced one (the mismatch BI drivers trip over).
async fn fetch(client: &mut RaindropClient, info: FlightInfo) -> Vec<RecordBatch> {
    let announced = info.clone().try_decode_schema().unwrap();
    let mut out = vec![];
    for ep in info.endpoint {
        let mut stream = client.inner_mut().do_get(ep.ticket.unwrap()).await.unwrap();
        let mut batches: Vec<RecordBatch> = vec![];
        while let Some(b) = stream.try_next().await.unwrap() {
            batches.push(b);
        }
        let streamed = stream.schema().cloned().expect("schema message");
        assert_eq!(
            streamed.as_ref(),
            &announced,
            "FlightInfo schema != DoGet schema"
        );
        out.extend(batches);
    }
    out
}

fn table(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

fn schema_text(info: &FlightInfo) -> String {
    let schema = info.clone().try_decode_schema().unwrap();
    schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "{}: {}{}",
                f.name(),
                f.data_type(),
                if f.is_nullable() { "" } else { " not null" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_rpcs_are_tenant_scoped_and_pinned() {
    let server = loaded_server().await;
    let mut acme = server.client("acme").await;

    let info = acme.inner_mut().get_catalogs().await.unwrap();
    insta::assert_snapshot!("catalogs_schema", schema_text(&info));
    insta::assert_snapshot!("catalogs", table(&fetch(&mut acme, info).await));

    let info = acme
        .inner_mut()
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    insta::assert_snapshot!("db_schemas_schema", schema_text(&info));
    insta::assert_snapshot!("db_schemas", table(&fetch(&mut acme, info).await));

    let cmd = CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: Some("w%".into()),
        table_name_filter_pattern: None,
        table_types: vec!["TABLE".into()],
        include_schema: false,
    };
    let info = acme.inner_mut().get_tables(cmd.clone()).await.unwrap();
    insta::assert_snapshot!("tables_schema", schema_text(&info));
    insta::assert_snapshot!("tables", table(&fetch(&mut acme, info).await));

    // With schemas: decode each table's IPC schema.
    let info = acme
        .inner_mut()
        .get_tables(CommandGetTables {
            include_schema: true,
            table_name_filter_pattern: Some("%events".into()),
            ..cmd
        })
        .await
        .unwrap();
    insta::assert_snapshot!("tables_with_schema_schema", schema_text(&info));
    let batches = fetch(&mut acme, info).await;
    let b = &batches[0];
    assert_eq!(b.num_rows(), 1);
    let bytes = b
        .column_by_name("table_schema")
        .unwrap()
        .as_binary::<i32>()
        .value(0);
    let schema = Schema::try_from(arrow_flight::IpcMessage(bytes.to_vec().into())).unwrap();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
    insta::assert_snapshot!("raw_events_columns", names.join(", "));
    // Strings are scanned as views internally; clients see the table's types.
    assert_eq!(
        schema.field_with_name("session_id").unwrap().data_type(),
        &DataType::Utf8
    );
    let info = acme
        .inner_mut()
        .execute(
            "SELECT session_id, upper(event_type) AS t, count(*) AS n FROM wildedge.raw_events GROUP BY 1, 2 LIMIT 3"
                .to_string(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        schema_text(&info),
        "session_id: Utf8\nt: Utf8\nn: Int64 not null"
    );
    let batches = fetch(&mut acme, info).await;
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);

    let info = acme.inner_mut().get_table_types().await.unwrap();
    insta::assert_snapshot!("table_types", table(&fetch(&mut acme, info).await));

    let info = acme
        .inner_mut()
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::FlightSqlServerBulkIngestion,
            SqlInfo::FlightSqlServerTransaction,
        ])
        .await
        .unwrap();
    insta::assert_snapshot!("sql_info_schema", schema_text(&info));
    insta::assert_snapshot!("sql_info", table(&fetch(&mut acme, info).await));

    let info = acme
        .inner_mut()
        .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    insta::assert_snapshot!("xdbc_type_info_schema", schema_text(&info));
    let rows: usize = fetch(&mut acme, info)
        .await
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(rows >= 8);

    let info = acme
        .inner_mut()
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: Some("wildedge".into()),
            table: "raw_events".into(),
        })
        .await
        .unwrap();
    insta::assert_snapshot!("primary_keys_schema", schema_text(&info));
    assert_eq!(
        fetch(&mut acme, info)
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        0
    );

    // Globex's listing has no acme objects, and no "tenants" namespaces leak.
    let mut globex = server.client("globex").await;
    let info = globex
        .inner_mut()
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: false,
        })
        .await
        .unwrap();
    let text = table(&fetch(&mut globex, info).await);
    assert!(
        !text.contains("acme") && !text.contains("tenants"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_bind_execute_and_belong_to_their_creator() {
    let server = loaded_server().await;
    let data = dataset().await;
    let mut acme = server.client("acme").await;
    let mut stmt = acme
        .inner_mut()
        .prepare("SELECT count(*) AS n FROM wildedge.raw_events WHERE model_name = ? AND event_type = $2".into(), None)
        .await
        .unwrap();
    let params = RecordBatch::try_from_iter(vec![
        (
            "0",
            Arc::new(StringArray::from(vec!["recommender"])) as ArrayRef,
        ),
        ("1", Arc::new(StringArray::from(vec!["inference"]))),
    ])
    .unwrap();
    stmt.set_parameters(params).unwrap();
    let info = stmt.execute().await.unwrap();
    let handle = CommandPreparedStatementQuery::decode(
        arrow_flight::sql::Any::decode(&*info.endpoint[0].ticket.as_ref().unwrap().ticket)
            .unwrap()
            .value,
    )
    .unwrap()
    .prepared_statement_handle;
    let got = scalar_i64(&fetch(&mut acme, info).await);
    let want: i64 = data
        .acme
        .events
        .iter()
        .map(|b| {
            let m = b.column_by_name("model_name").unwrap().as_string::<i32>();
            let t = b.column_by_name("event_type").unwrap().as_string::<i32>();
            (0..b.num_rows())
                .filter(|&i| m.value(i) == "recommender" && t.value(i) == "inference")
                .count() as i64
        })
        .sum();
    assert_eq!(got, want);

    // Another tenant cannot use (or even detect) acme's handle.
    let mut globex = server.client("globex").await;
    let cmd = CommandPreparedStatementQuery {
        prepared_statement_handle: handle.clone(),
    };
    let err = globex.flight_info(cmd.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("unknown or expired"), "{err:?}");

    stmt.close().await.unwrap();
    let err = acme.flight_info(cmd).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_updates_in_own_schemas_only() {
    let server = loaded_server().await;
    let data = dataset().await;
    let mut acme = server.client("acme").await;
    let converted = {
        let c = data
            .acme
            .outcomes
            .column_by_name("converted")
            .unwrap()
            .as_boolean();
        c.true_count() as i64
    };
    let n = acme
        .inner_mut()
        .execute_update(
            "CREATE TABLE warehouse.converted AS SELECT session_id, revenue FROM warehouse.user_outcomes WHERE converted".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(n, converted);
    let n = acme
        .inner_mut()
        .execute_update(
            "INSERT INTO warehouse.converted VALUES ('manual-1', 1.5), ('manual-2', 2.5)".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM warehouse.converted").await,
        converted + 2
    );
    // Empty CTAS still creates the table; CREATE TABLE with columns too.
    acme.inner_mut()
        .execute_update("CREATE TABLE scratch.empty AS SELECT session_id FROM warehouse.user_outcomes WHERE false".into(), None)
        .await
        .unwrap();
    acme.inner_mut()
        .execute_update(
            "CREATE TABLE scratch.typed (id BIGINT, note VARCHAR)".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM scratch.empty").await,
        0
    );
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM scratch.typed").await,
        0
    );
    // Through the query path too (what DBAPI cursor.execute sends).
    let rows = acme.query("DROP TABLE scratch.empty").await.unwrap();
    assert_eq!(strings(&rows, "rows_affected"), vec!["0"]);
    assert_eq!(
        acme.query("SELECT * FROM scratch.empty")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // Globex cannot see what acme created.
    let mut globex = server.client("globex").await;
    assert_eq!(
        globex
            .query("SELECT * FROM warehouse.converted")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    for (sql, code) in [
        (
            "INSERT INTO wildedge.raw_events (event_id) VALUES ('x')",
            Code::PermissionDenied,
        ),
        ("DROP TABLE wildedge.raw_events", Code::PermissionDenied),
        (
            "CREATE TABLE wildedge.sneaky AS SELECT 1 AS a",
            Code::PermissionDenied,
        ),
        ("CREATE VIEW v AS SELECT 1", Code::Unimplemented),
        // DELETE erases rows of raw_events only.
        ("DELETE FROM warehouse.converted", Code::Unimplemented),
        ("DROP TABLE warehouse.nope", Code::NotFound),
    ] {
        let err = acme
            .inner_mut()
            .execute_update(sql.into(), None)
            .await
            .unwrap_err();
        let status = match err {
            arrow_flight::error::FlightError::Tonic(s) => *s,
            other => panic!("{sql}: {other}"),
        };
        assert_eq!(status.code(), code, "{sql}: {status:?}");
    }
    // A read-only token cannot update.
    let mut reader = server.client("acme_read").await;
    let err = reader
        .inner_mut()
        .execute_update("DROP TABLE warehouse.converted".into(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read_write"), "{err}");

    // Session actions are answered.
    for action in ["CloseSession", "CancelFlightInfo"] {
        let results = acme.action(Action::new(action, "")).await.unwrap();
        assert_eq!(results.len(), 1, "{action}");
    }
}
