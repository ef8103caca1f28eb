//! Admission: past the concurrency limits queries wait in a per-tenant
//! queue instead of failing; freed slots go fairly across tenants; a full
//! queue or an expired wait is refused by name; a dropped stream frees its
//! slot.

use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use raindrop::client::RaindropClient;
use raindrop::server::ServerHandle;
use tonic::Code;

use crate::common::*;

/// A query that runs until its time limit: it holds its slot while the
/// test decides when to let go.
const ENDLESS: &str = "SELECT count(*) FROM generate_series(1, 100000000000)";

/// Start `sql` and return its open result stream once admitted (the
/// server answers `DoGet` only after the query has a slot).
async fn admitted(url: &str, token: &str, sql: &str) -> FlightRecordBatchStream {
    let mut c = RaindropClient::connect(url, token).await.unwrap();
    let info = c.inner_mut().execute(sql.into(), None).await.unwrap();
    c.inner_mut()
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    // Generous: CI machines are slow when the other tests run alongside.
    for _ in 0..1200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

fn stats(server: &ServerHandle) -> raindrop::query::admission::AdmissionStats {
    server.services.query.admission_stats()
}

/// The dashboard: 32 readers over two tenants at once, default
/// settings (running slots as on 2 cores, so queries wait on any machine).
/// Every query answers; some had to wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_dashboard_readers_queue_without_refusals() {
    let (server, _dir) = custom_server(|c| c.limits.max_queries = 4).await;
    let url = server.url();
    let mut readers = vec![];
    for i in 0..32 {
        let (url, token) = (url.clone(), [ACME_TOKEN, GLOBEX_TOKEN][i % 2]);
        readers.push(tokio::spawn(async move {
            let mut c = RaindropClient::connect(&url, token).await.unwrap();
            let mut answered = 0;
            for q in 0..4 {
                let n = 2_000_000 + 1000 * (i * 4 + q) as i64;
                let sql = format!(
                    "SELECT count(*), sum(value % 7) FROM generate_series(1, {n}) WHERE value % 3 = 0"
                );
                match c.query(&sql).await {
                    Ok(b) => {
                        assert_eq!(count_of(&b), n / 3);
                        answered += 1;
                    }
                    Err(e) => panic!("reader {i} refused: {e:?}"),
                }
            }
            answered
        }));
    }
    let mut answered = 0;
    for r in readers {
        answered += r.await.unwrap();
    }
    assert_eq!(answered, 128);
    let s = stats(&server);
    assert_eq!(
        (s.refused_queue_full, s.refused_wait_expired),
        (0, 0),
        "{s:?}"
    );
    assert!(
        s.after_wait > 0,
        "no query waited, so the test proves nothing: {s:?}"
    );
    // The server drops each stream just after its last message.
    until("every slot is free", || {
        let s = stats(&server);
        (s.running, s.queued) == (0, 0)
    })
    .await;
    server.stop().await.unwrap();
}

fn count_of(batches: &[arrow::array::RecordBatch]) -> i64 {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// With every slot taken by acme, whose backlog waited longer, the slot
/// acme frees next goes to globex: it runs the fewest queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_slot_goes_to_the_tenant_running_fewest() {
    let (server, _dir) = custom_server(|c| {
        c.limits.max_queries = 2;
        c.limits.max_queries_per_tenant = 2;
        c.limits.query_timeout_secs = 60;
    })
    .await;
    let url = server.url();
    let first = admitted(&url, ACME_TOKEN, ENDLESS).await;
    let second = admitted(&url, ACME_TOKEN, ENDLESS).await;
    let mut backlog = vec![];
    for _ in 0..3 {
        let url = url.clone();
        backlog.push(tokio::spawn(async move {
            admitted(&url, ACME_TOKEN, ENDLESS).await
        }));
    }
    until("acme's backlog queues", || stats(&server).queued == 3).await;
    let globex = {
        let url = url.clone();
        tokio::spawn(async move { admitted(&url, GLOBEX_TOKEN, ENDLESS).await })
    };
    until("globex queues", || stats(&server).queued == 4).await;

    drop(first);
    let globex = tokio::time::timeout(Duration::from_secs(20), globex)
        .await
        .expect("globex waits behind acme's backlog: admission is not fair")
        .unwrap();
    // Both slots are held (acme's second, globex's), so nothing else ran.
    let s = stats(&server);
    assert_eq!((s.running, s.queued), (2, 3), "{s:?}");
    assert!(backlog.iter().all(|b| !b.is_finished()));
    for b in backlog {
        b.abort();
    }
    // Graceful shutdown waits for open streams.
    drop((second, globex));
    server.stop().await.unwrap();
}

/// Past the running limit a query waits; past the queue it is refused at
/// once; a wait past `--query-queue-wait-secs` is refused; dropping a
/// stream frees its slot for the next waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_and_expired_wait_are_refused_and_dropped_streams_free_slots() {
    let (server, _dir) = custom_server(|c| {
        c.limits.max_queries_per_tenant = 1;
        c.limits.query_queue_per_tenant = 1;
        c.limits.query_queue_wait_secs = 10;
        c.limits.query_timeout_secs = 60;
    })
    .await;
    let url = server.url();
    let held = admitted(&url, ACME_TOKEN, ENDLESS).await;
    let waiting = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut c = RaindropClient::connect(&url, ACME_TOKEN).await.unwrap();
            c.query("SELECT 42").await
        })
    };
    until("the second query queues", || stats(&server).queued == 1).await;

    let mut acme = RaindropClient::connect(&url, ACME_TOKEN).await.unwrap();
    let err = acme.query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--query-queue-per-tenant"),
        "{}",
        err.message()
    );

    // Another tenant is not affected.
    let mut globex = RaindropClient::connect(&url, GLOBEX_TOKEN).await.unwrap();
    assert_eq!(
        count(&mut globex, "SELECT count(*) FROM generate_series(1, 10)").await,
        10
    );

    // The client goes away: its slot goes to the waiting query.
    drop(held);
    let answered = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("slot not released after the client dropped its stream")
        .unwrap();
    assert!(answered.is_ok(), "{answered:?}");

    // A wait past the limit is refused by name.
    let held = admitted(&url, ACME_TOKEN, ENDLESS).await;
    let err = acme.query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("--query-queue-wait-secs"),
        "{}",
        err.message()
    );
    let s = stats(&server);
    assert_eq!(
        (s.refused_queue_full, s.refused_wait_expired, s.queued),
        (1, 1, 0),
        "{s:?}"
    );
    drop(held);
    server.stop().await.unwrap();
}
