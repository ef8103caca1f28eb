//! Query limits: timeout, per-query memory, result size — each a clean
//! status, the server staying up. How many run at once: `admission.rs`.

use raindrop::client::RaindropClient;
use tonic::Code;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_memory_and_result_limits() {
    let (server, _dir) = custom_server(|c| {
        c.limits.query_timeout_secs = 1;
        c.limits.query_memory_mib = 32;
        c.limits.max_result_mib = 1;
    })
    .await;
    let mut c = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();

    let err = c
        .query("SELECT count(*) FROM generate_series(1, 100000000000)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");

    let err = c
        .query("SELECT count(*) FROM generate_series(1, 5000000) a(x) JOIN generate_series(1, 5000000) b(y) ON x = y")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    let err = c
        .query("SELECT * FROM generate_series(1, 1000000)")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("LIMIT"), "{}", err.message());

    // The server is fine afterwards.
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM generate_series(1, 1000)").await,
        1000
    );
    server.stop().await.unwrap();
}

/// A tenant that saturates the CPU with heavy queries does not starve
/// another tenant: globex's small query completes while acme's queries are
/// still running (a shared FIFO or a blocking executor would make it wait
/// for acme's 60 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_tenant_does_not_starve_another() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (server, _dir) = custom_server(|c| c.limits.query_timeout_secs = 60).await;
    let finished = Arc::new(AtomicUsize::new(0));
    let mut heavy = vec![];
    for _ in 0..3 {
        let (url, finished) = (server.url(), finished.clone());
        heavy.push(tokio::spawn(async move {
            let mut acme = RaindropClient::connect(&url, ACME_TOKEN).await.unwrap();
            let r = acme
                .query("SELECT count(*) FROM generate_series(1, 100000000000) WHERE value % 7 = 3")
                .await;
            finished.fetch_add(1, Ordering::SeqCst);
            r
        }));
    }
    // Let the heavy queries occupy both cores.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut globex = RaindropClient::connect(&server.url(), GLOBEX_TOKEN)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            count(
                &mut globex,
                "SELECT count(*) FROM generate_series(1, 100000)"
            )
            .await,
            100000
        );
    }
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "acme's heavy queries ended before globex's small ones: the test proves nothing"
    );
    // Dropping the clients cancels acme's queries server-side.
    for h in heavy {
        h.abort();
    }
    server.stop().await.unwrap();
}
