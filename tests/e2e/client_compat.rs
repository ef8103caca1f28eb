//! What third-party clients send and read back: union-typed parameters
//! (flightsql-dbapi), parameters of another type than the column's
//! (SQLAlchemy binds booleans as 0/1), typed parameter schemas, Flight SQL column metadata (sqlalchemy-adbc and
//! `adbc_get_objects` reflect types from it), table types.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch,
    StringArray, StructArray, UnionArray,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, UnionFields};
use arrow_flight::sql::CommandGetTables;
use futures::TryStreamExt;
use raindrop::client::RaindropClient;
use tonic::Code;

use crate::common::*;

/// One parameter row per entry of each column, named "0", "1", … as ADBC
/// names them.
fn params(columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_from_iter(
        columns
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), c)),
    )
    .unwrap()
}

/// A parameter column the way flightsql-dbapi 0.2.2 binds it:
/// `dense_union<int64, float64, utf8, binary, bool>`, one value per row.
fn dbapi_union(values: &[Value]) -> ArrayRef {
    let fields = UnionFields::try_new(
        [0, 1, 2, 3, 4],
        [
            Field::new("int64", DataType::Int64, true),
            Field::new("float64", DataType::Float64, true),
            Field::new("str", DataType::Utf8, true),
            Field::new("bin", DataType::Binary, true),
            Field::new("bool", DataType::Boolean, true),
        ],
    )
    .unwrap();
    let (mut ints, mut floats, mut strs, mut bools) = (vec![], vec![], vec![], vec![]);
    let (mut types, mut offsets) = (vec![], vec![]);
    for v in values {
        let (t, o) = match v {
            Value::Int(v) => (0, push(&mut ints, *v)),
            Value::Float(v) => (1, push(&mut floats, *v)),
            Value::Str(v) => (2, push(&mut strs, *v)),
            Value::Bool(v) => (4, push(&mut bools, *v)),
        };
        types.push(t);
        offsets.push(o);
    }
    let union = UnionArray::try_new(
        fields,
        ScalarBuffer::from(types),
        Some(ScalarBuffer::from(offsets)),
        vec![
            Arc::new(Int64Array::from(ints)) as ArrayRef,
            Arc::new(Float64Array::from(floats)),
            Arc::new(StringArray::from(strs)),
            Arc::new(BinaryArray::from(Vec::<&[u8]>::new())),
            Arc::new(BooleanArray::from(bools)),
        ],
    )
    .unwrap();
    Arc::new(union)
}

enum Value {
    Int(i64),
    Float(f64),
    Str(&'static str),
    Bool(bool),
}

fn push<T>(v: &mut Vec<T>, x: T) -> i32 {
    v.push(x);
    v.len() as i32 - 1
}

/// A fresh server, and acme's client after running `ddl`.
async fn acme_with_table(
    ddl: &str,
) -> (
    raindrop::server::ServerHandle,
    tempfile::TempDir,
    RaindropClient,
) {
    let (server, dir) = custom_server(|_| {}).await;
    let mut acme = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    acme.query(ddl).await.unwrap();
    (server, dir, acme)
}

async fn query_with(
    client: &mut RaindropClient,
    sql: &str,
    params: RecordBatch,
) -> Vec<RecordBatch> {
    let mut stmt = client.inner_mut().prepare(sql.into(), None).await.unwrap();
    stmt.set_parameters(params).unwrap();
    let info = stmt.execute().await.unwrap();
    client
        .fetch(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn union_parameters_bind_their_values_with_assignment_casts() {
    let (server, _dir, mut acme) =
        acme_with_table("CREATE TABLE kv (k VARCHAR, v BIGINT, w DOUBLE, ok BOOLEAN)").await;

    // executemany: one prepared INSERT, three parameter rows.
    let mut insert = acme
        .inner_mut()
        .prepare("INSERT INTO kv VALUES (?, ?, ?, ?)".into(), None)
        .await
        .unwrap();
    use Value::*;
    insert
        .set_parameters(params(vec![
            dbapi_union(&[Str("a"), Str("b"), Str("a")]),
            dbapi_union(&[Int(1), Int(2), Int(3)]),
            dbapi_union(&[Float(0.5), Float(1.5), Float(2.5)]),
            dbapi_union(&[Bool(true), Bool(false), Bool(true)]),
        ]))
        .unwrap();
    assert_eq!(insert.execute_update().await.unwrap(), 3);
    // The prepared INSERT tells clients what each `?` takes.
    let types: Vec<DataType> = insert
        .parameter_schema()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        [
            DataType::Utf8,
            DataType::Int64,
            DataType::Float64,
            DataType::Boolean
        ]
    );
    // A boolean bound as 0/1 and a float as an integer get the cast a
    // literal would.
    let mut insert = acme
        .inner_mut()
        .prepare("INSERT INTO kv VALUES (?, ?, ?, ?)".into(), None)
        .await
        .unwrap();
    insert
        .set_parameters(params(vec![
            Arc::new(StringArray::from(vec!["c"])),
            Arc::new(Int64Array::from(vec![4])),
            Arc::new(Int64Array::from(vec![5])),
            Arc::new(Int64Array::from(vec![1])),
        ]))
        .unwrap();
    assert_eq!(insert.execute_update().await.unwrap(), 1);

    let batches = query_with(
        &mut acme,
        "SELECT count(*), sum(v), sum(w) FROM kv WHERE k = ? AND ok = ?",
        params(vec![dbapi_union(&[Str("a")]), dbapi_union(&[Bool(true)])]),
    )
    .await;
    let b = &batches[0];
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 2);
    assert_eq!(b.column(1).as_primitive::<Int64Type>().value(0), 4);
    let w = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(w.value(0), 3.0);
    let batches = query_with(
        &mut acme,
        "SELECT count(*) FROM kv WHERE ok AND w = ?",
        params(vec![Arc::new(Int64Array::from(vec![5]))]),
    )
    .await;
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 1);

    // A type with no SQL value is refused, naming the parameter.
    let structs = StructArray::from(vec![(
        Arc::new(Field::new("x", DataType::Int64, true)),
        Arc::new(Int64Array::from(vec![1])) as ArrayRef,
    )]);
    let mut stmt = acme
        .inner_mut()
        .prepare("SELECT count(*) FROM kv WHERE v = ?".into(), None)
        .await
        .unwrap();
    stmt.set_parameters(
        RecordBatch::try_from_iter([("when", Arc::new(structs) as ArrayRef)]).unwrap(),
    )
    .unwrap();
    let err = stmt.execute().await.unwrap_err();
    let status = match err {
        arrow_flight::error::FlightError::Tonic(status) => *status,
        other => panic!("{other:?}"),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("parameter 1 ('when')"),
        "{status:?}"
    );
    server.stop().await.unwrap();
}

fn meta<'a>(schema: &'a Schema, column: &str, key: &str) -> Option<&'a str> {
    let field = schema.field_with_name(column).unwrap();
    field
        .metadata()
        .get(&format!("ARROW:FLIGHT:SQL:{key}"))
        .map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_schema_carries_sql_type_names() {
    let (server, _dir, mut acme) = acme_with_table("CREATE TABLE kv (k VARCHAR, v BIGINT)").await;

    // A result set: table columns name their table; computed ones do not.
    let sql = "SELECT event_id, confidence, event_timestamp, count(*) OVER () AS n \
               FROM wildedge.raw_events";
    let info = acme.inner_mut().execute(sql.into(), None).await.unwrap();
    let schema = info.try_decode_schema().unwrap();
    for (column, type_name) in [
        ("event_id", "VARCHAR"),
        ("confidence", "DOUBLE"),
        ("event_timestamp", "TIMESTAMP WITH TIME ZONE"),
        ("n", "BIGINT"),
    ] {
        assert_eq!(
            meta(&schema, column, "TYPE_NAME"),
            Some(type_name),
            "{column}"
        );
    }
    assert_eq!(meta(&schema, "event_timestamp", "SCALE"), Some("6"));
    assert_eq!(meta(&schema, "event_id", "TABLE_NAME"), Some("raw_events"));
    assert_eq!(
        meta(&schema, "event_id", "DB_SCHEMA_NAME"),
        Some("wildedge")
    );
    assert_eq!(meta(&schema, "event_id", "CATALOG_NAME"), Some("raindrop"));
    assert_eq!(meta(&schema, "n", "TABLE_NAME"), None);
    assert!(
        schema
            .fields()
            .iter()
            .all(|f| !f.metadata().keys().any(|k| k.starts_with("PARQUET"))),
        "storage metadata leaked: {schema:?}"
    );

    // The prepared statement's dataset schema says the same.
    let stmt = acme.inner_mut().prepare(sql.into(), None).await.unwrap();
    assert_eq!(stmt.dataset_schema().unwrap(), &schema);

    // GetTables: column schemas with types; raw_events is read only by SQL.
    let info = acme
        .inner_mut()
        .get_tables(CommandGetTables {
            include_schema: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut types = BTreeSet::new();
    let mut checked = 0;
    for ep in info.endpoint {
        let mut s = acme.inner_mut().do_get(ep.ticket.unwrap()).await.unwrap();
        while let Some(b) = s.try_next().await.unwrap() {
            let names = b.column_by_name("table_name").unwrap().as_string::<i32>();
            let kinds = b.column_by_name("table_type").unwrap().as_string::<i32>();
            let schemas = b.column_by_name("table_schema").unwrap().as_binary::<i32>();
            for row in 0..b.num_rows() {
                types.insert(kinds.value(row).to_string());
                let schema =
                    arrow::ipc::convert::try_schema_from_ipc_buffer(schemas.value(row)).unwrap();
                match names.value(row) {
                    "raw_events" => {
                        assert_eq!(meta(&schema, "device_id", "TYPE_NAME"), Some("VARCHAR"));
                        assert_eq!(meta(&schema, "event_day", "TYPE_NAME"), Some("DATE"));
                        assert_eq!(meta(&schema, "device_id", "IS_READ_ONLY"), Some("1"));
                        checked += 1;
                    }
                    "kv" => {
                        assert_eq!(meta(&schema, "v", "TYPE_NAME"), Some("BIGINT"));
                        assert_eq!(meta(&schema, "v", "TABLE_NAME"), Some("kv"));
                        assert_eq!(meta(&schema, "v", "IS_READ_ONLY"), Some("0"));
                        checked += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    assert_eq!(checked, 2);

    // GetTableTypes lists exactly the types GetTables uses.
    let info = acme.inner_mut().get_table_types().await.unwrap();
    let batches = acme
        .fetch(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let listed: BTreeSet<String> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column(0).as_string::<i32>();
            (0..c.len())
                .map(|i| c.value(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(listed, types);
    server.stop().await.unwrap();
}
