//! Attack corpus: attempts by tenant `acme` to read, list, infer or write
//! `globex`'s data or the server's files — through SQL, Flight calls and
//! names. Each must be denied or see nothing of globex, the storage layer
//! must not have opened a single globex object, and the server must stay up.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_flight::sql::{
    Any, CommandPreparedStatementQuery, ProstMessageExt, TicketStatementQuery,
};
use arrow_flight::{FlightData, FlightDescriptor, Ticket};
use futures::TryStreamExt;
use prost::Message;
use raindrop::client::IngestMode;
use tonic::Code;

use crate::common::*;

/// SQL that must return no globex row (each yields one column of text).
const SQL_LEAKS: &[&str] = &[
    "SELECT project_id FROM wildedge.raw_events WHERE project_id = 'globex'",
    "SELECT project_id FROM wildedge.raw_events WHERE project_id = 'globex' OR 1 = 1",
    "SELECT project_id FROM wildedge.raw_events WHERE project_id LIKE 'glo%'",
    "SELECT project_id FROM wildedge.raw_events WHERE upper(project_id) = 'GLOBEX'",
    "SELECT project_id FROM wildedge.raw_events WHERE CAST(project_id AS BYTEA) = CAST('globex' AS BYTEA)",
    "SELECT session_id FROM wildedge.raw_events WHERE session_id LIKE 'globex%'",
    "SELECT event_id FROM wildedge.raw_events WHERE event_id >= 'globex' AND event_id < 'globey'",
    "SELECT DISTINCT project_id FROM wildedge.raw_events",
    "SELECT project_id FROM (SELECT * FROM wildedge.raw_events) t WHERE t.project_id <> 'acme'",
    "WITH all_rows AS (SELECT * FROM wildedge.raw_events) SELECT project_id FROM all_rows WHERE project_id = 'globex'",
    "WITH RECURSIVE r AS (SELECT project_id AS p FROM wildedge.raw_events UNION SELECT p FROM r) SELECT p FROM r WHERE p <> 'acme'",
    "SELECT project_id FROM wildedge.raw_events UNION ALL SELECT project_id FROM raindrop.wildedge.raw_events WHERE project_id = 'globex'",
    "SELECT a.project_id FROM wildedge.raw_events a JOIN wildedge.raw_events b ON a.session_id = b.session_id WHERE b.project_id = 'globex'",
    "SELECT a.project_id FROM wildedge.raw_events a CROSS JOIN (SELECT 'globex' AS p) x WHERE a.project_id = x.p",
    "SELECT project_id FROM wildedge.raw_events WHERE EXISTS (SELECT 1 FROM wildedge.raw_events i WHERE i.project_id = 'globex')",
    "SELECT project_id FROM wildedge.raw_events WHERE project_id IN (SELECT 'globex')",
    "SELECT project_id FROM wildedge.raw_events WHERE event_day < DATE '1971-01-01' OR project_id = 'globex'",
    "SELECT project_id FROM wildedge.raw_events ORDER BY project_id DESC LIMIT 1 OFFSET 0",
    "SELECT max(project_id) AS p FROM wildedge.raw_events",
    "SELECT string_agg(DISTINCT project_id, ',') AS p FROM wildedge.raw_events",
    "SELECT project_id FROM wildedge.raw_events GROUP BY project_id HAVING project_id = 'globex'",
    "SELECT session_id FROM warehouse.user_outcomes WHERE session_id LIKE 'globex%'",
    "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables",
    "SELECT schema_name FROM information_schema.schemata",
    "SELECT table_name || column_name AS t FROM information_schema.columns",
    "SELECT name || value AS t FROM information_schema.df_settings WHERE value LIKE '%globex%'",
];

/// SQL that must be refused (denied or not found), whatever it names.
/// Unreachable names: not found, or not even a valid name.
const GONE: &[Code] = &[Code::NotFound, Code::InvalidArgument];
const DENIED: &[Code] = &[Code::PermissionDenied];

const SQL_REFUSED: &[(&str, &[Code])] = &[
    ("SELECT * FROM tenants.globex.warehouse.user_outcomes", GONE),
    (
        "SELECT * FROM \"tenants.globex.warehouse\".user_outcomes",
        GONE,
    ),
    ("SELECT * FROM globex.user_outcomes", GONE),
    ("SELECT * FROM raindrop.\"tenants\".raw_events", GONE),
    ("SELECT * FROM datafusion.public.raw_events", GONE),
    ("SELECT * FROM '/etc/passwd'", GONE),
    (
        "SELECT * FROM read_parquet('warehouse/wildedge/raw_events/data')",
        GONE,
    ),
    (
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION 'warehouse/wildedge/raw_events/data/project_id=globex/'",
        DENIED,
    ),
    (
        "CREATE TABLE warehouse.copy AS SELECT * FROM tenants.globex.warehouse.user_outcomes",
        GONE,
    ),
    (
        "INSERT INTO wildedge.raw_events (project_id, event_id, event_type, event_timestamp) VALUES ('globex', 'x', 'y', now())",
        DENIED,
    ),
    (
        "DROP TABLE warehouse.user_outcomes; DROP TABLE wildedge.raw_events",
        &[Code::InvalidArgument],
    ),
    (
        "COPY wildedge.raw_events TO '/tmp/raindrop-attack.parquet'",
        DENIED,
    ),
    ("SET datafusion.catalog.information_schema = false", DENIED),
    (
        "CREATE VIEW leak AS SELECT * FROM wildedge.raw_events",
        &[Code::Unimplemented],
    ),
];

/// Prepare `sql` as `client` and bind `param` as its one parameter.
async fn prepare_with(
    client: &mut raindrop::client::RaindropClient,
    sql: &str,
    param: ArrayRef,
) -> arrow_flight::sql::client::PreparedStatement<tonic::transport::Channel> {
    let mut stmt = client.inner_mut().prepare(sql.into(), None).await.unwrap();
    stmt.set_parameters(RecordBatch::try_from_iter(vec![("0", param)]).unwrap())
        .unwrap();
    stmt
}

fn text_values(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = vec![];
    for b in batches {
        for c in b.columns() {
            let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap();
            let c = c.as_any().downcast_ref::<StringArray>().unwrap();
            out.extend(c.iter().flatten().map(str::to_string));
        }
    }
    out
}

fn events(project: Option<&str>) -> RecordBatch {
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        ("event_id", Arc::new(StringArray::from(vec!["attack-1"]))),
        ("event_type", Arc::new(StringArray::from(vec!["inference"]))),
        (
            "event_timestamp",
            Arc::new(
                TimestampMicrosecondArray::from(vec![1_780_000_000_000_000]).with_timezone("UTC"),
            ),
        ),
    ];
    if let Some(p) = project {
        cols.push(("project_id", Arc::new(StringArray::from(vec![p]))));
    }
    RecordBatch::try_from_iter(cols).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_cannot_reach_globex() {
    let server = loaded_server().await;
    let log = server.access_log();
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    let globex_rows = count(&mut globex, "SELECT count(*) FROM wildedge.raw_events").await;
    let mut attempts = 0;
    log.start();

    for sql in SQL_LEAKS {
        attempts += 1;
        let rows = acme
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        let values = text_values(&rows);
        assert!(
            values
                .iter()
                .all(|v| !v.contains("globex") && !v.contains("tenants")),
            "{sql} leaked: {values:?}"
        );
    }
    for (sql, codes) in SQL_REFUSED {
        attempts += 1;
        let err = acme.query(sql).await.unwrap_err();
        assert!(codes.contains(&err.code()), "{sql}: {err:?}");
    }

    // Prepared statements: parameters are values, never SQL.
    attempts += 1;
    let mut stmt = prepare_with(
        &mut acme,
        "SELECT count(*) AS n FROM wildedge.raw_events WHERE project_id = $1",
        Arc::new(StringArray::from(vec!["globex' OR '1'='1"])),
    )
    .await;
    let info = stmt.execute().await.unwrap();
    let rows = acme
        .fetch(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    assert_eq!(scalar_i64(&rows), 0);

    // A parameter set of null-typed columns costs no bytes whatever row
    // count it claims, and a statement runs once per parameter row.
    attempts += 1;
    let mut stmt = prepare_with(
        &mut acme,
        "SELECT count(*) AS n FROM wildedge.raw_events WHERE session_id = $1",
        Arc::new(arrow::array::NullArray::new(1 << 40)),
    )
    .await;
    let err = stmt.execute().await.unwrap_err();
    assert!(
        err.to_string().contains("parameter rows"),
        "claimed 2^40 parameter rows: {err:?}"
    );

    // A handle created by globex is unknown to acme.
    attempts += 1;
    let mut their = globex
        .inner_mut()
        .prepare("SELECT count(*) FROM wildedge.raw_events".into(), None)
        .await
        .unwrap();
    let their_info = their.execute().await.unwrap();
    let any = Any::decode(&*their_info.endpoint[0].ticket.as_ref().unwrap().ticket).unwrap();
    let handle = CommandPreparedStatementQuery::decode(any.value)
        .unwrap()
        .prepared_statement_handle;
    let err = acme
        .flight_info(CommandPreparedStatementQuery {
            prepared_statement_handle: handle.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    attempts += 1;
    let ticket = Ticket::new(
        CommandPreparedStatementQuery {
            prepared_statement_handle: handle,
        }
        .as_any()
        .encode_to_vec(),
    );
    let err = acme.inner_mut().do_get(ticket).await.expect_err("denied");
    assert!(err.to_string().contains("unknown or expired"), "{err}");

    // A ticket carrying SQL is re-planned as the caller: a forged ticket
    // for "globex's" query still sees only acme.
    attempts += 1;
    let forged = Ticket::new(
        TicketStatementQuery {
            statement_handle:
                b"QSELECT count(*) FROM wildedge.raw_events WHERE project_id = 'globex'"
                    .to_vec()
                    .into(),
        }
        .as_any()
        .encode_to_vec(),
    );
    let rows = acme.fetch(forged).await.unwrap();
    assert_eq!(scalar_i64(&rows), 0);

    // GetFlightInfo keeps its plan for the DoGet that follows, keyed by
    // the planning token: acme replaying globex's fresh ticket must run as
    // acme, not pick up globex's plan.
    // globex's own calls are not attacks: keep them out of the access log.
    attempts += 1;
    let sql = "SELECT count(*) FROM wildedge.raw_events";
    let mine = count(&mut acme, sql).await;
    let mut reads = log.stop();
    let theirs = count(&mut globex, sql).await;
    assert_ne!(mine, theirs, "fixture: tenants need different counts");
    let info = globex.inner_mut().execute(sql.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    log.start();
    let replayed = acme.fetch(ticket.clone()).await.unwrap();
    assert_eq!(scalar_i64(&replayed), mine);
    reads.extend(log.stop());
    let own = globex.fetch(ticket).await.unwrap();
    assert_eq!(scalar_i64(&own), theirs);
    log.start();

    // Garbage tickets.
    for garbage in [
        vec![],
        vec![0xff; 64],
        b"not a protobuf".to_vec(),
        TicketStatementQuery {
            statement_handle: vec![0xc3, 0x28].into(),
        }
        .as_any()
        .encode_to_vec(),
    ] {
        attempts += 1;
        let err = acme
            .inner_mut()
            .do_get(Ticket::new(garbage))
            .await
            .expect_err("garbage ticket refused");
        let code = match &err {
            arrow_flight::error::FlightError::Tonic(status) => status.code(),
            other => panic!("garbage ticket: {other:?}"),
        };
        assert!(
            matches!(code, Code::InvalidArgument | Code::Unimplemented),
            "garbage ticket: {err:?}"
        );
    }

    // Ingest: rows for globex, names that try to escape or reach globex.
    attempts += 1;
    assert_eq!(
        acme.ingest_events(vec![events(Some("globex"))])
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    for (schema, table) in [
        (Some("../globex"), "user_outcomes"),
        (Some("tenants.globex.warehouse"), "user_outcomes"),
        (Some("warehouse"), "../../globex/warehouse/user_outcomes"),
        (Some("warehouse%2F..%2Fglobex"), "x"),
        (Some("warehouse\0"), "x"),
        (Some("ｗarehouse"), "x"),
        (None, "raw_events/../../x"),
        (Some("information_schema"), "tables"),
        (Some("wildedge"), "sneaky"),
    ] {
        attempts += 1;
        let err = acme
            .ingest(schema, table, IngestMode::CreateAppend, vec![events(None)])
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::PermissionDenied),
            "{schema:?}.{table}: {err:?}"
        );
    }
    // Plain DoPut with path tricks.
    for path in [
        vec!["..", "raw_events"],
        vec!["tenants", "globex", "warehouse", "user_outcomes"],
        vec!["/etc/passwd"],
    ] {
        attempts += 1;
        let data = arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_path(
                path.iter().map(|s| s.to_string()).collect(),
            )))
            .build(futures::stream::iter([Ok(events(None))]))
            .map_ok(|d| d);
        let data: Vec<FlightData> = data.try_collect().await.unwrap();
        let res = acme.inner_mut().do_put(futures::stream::iter(data)).await;
        let err = match res {
            Ok(mut s) => s.message().await.unwrap_err().code(),
            Err(e) => match e {
                arrow_flight::error::FlightError::Tonic(s) => s.code(),
                other => panic!("{path:?}: {other}"),
            },
        };
        assert!(
            matches!(err, Code::InvalidArgument | Code::PermissionDenied),
            "{path:?}: {err:?}"
        );
    }
    // Malformed Flight messages: a truncated IPC body, a command that is not protobuf.
    attempts += 1;
    let mut data: Vec<FlightData> = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["raw_events".into()])))
        .build(futures::stream::iter([Ok(events(None))]))
        .try_collect()
        .await
        .unwrap();
    let last = data.last_mut().unwrap();
    last.data_body = last.data_body.slice(0..last.data_body.len() / 2);
    let res = acme.inner_mut().do_put(futures::stream::iter(data)).await;
    let status = match res {
        Ok(mut s) => s.message().await.unwrap_err(),
        Err(arrow_flight::error::FlightError::Tonic(s)) => *s,
        Err(other) => panic!("{other}"),
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "truncated IPC: {status:?}"
    );
    attempts += 1;
    let req = acme.request(FlightDescriptor::new_cmd(vec![0xde, 0xad, 0xbe, 0xef]));
    let err = acme
        .inner_mut()
        .inner_mut()
        .get_flight_info(req)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    reads.extend(log.stop());
    assert!(
        reads.iter().all(|p| !p.contains("globex")),
        "acme's attempts opened globex objects: {reads:?}"
    );
    eprintln!(
        "attack corpus: {attempts} attempts, {} objects read, none of globex",
        reads.len()
    );

    // Globex's data is untouched and the server still serves.
    assert_eq!(
        count(&mut globex, "SELECT count(*) FROM wildedge.raw_events").await,
        globex_rows
    );
    assert!(!std::path::Path::new("/tmp/raindrop-attack.parquet").exists());
}
