//! Group commit and idempotent retries.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_share_commits() {
    let (server, dir) = custom_server(|c| c.limits.commit_max_delay_ms = 500).await;
    let token = ACME_TOKEN;
    let data = dataset().await;
    let before = snapshots(&server).await;
    let warehouse = server.services.query.warehouse();
    let syncs_before = warehouse.access_log.syncs();

    let mut tasks = vec![];
    for b in data.acme.events.iter().take(6).cloned() {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            let mut c = raindrop::client::RaindropClient::connect(&url, token)
                .await
                .unwrap();
            c.ingest_events(vec![b]).await.unwrap()
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await.unwrap();
    }
    let want: usize = data.acme.events.iter().take(6).map(|b| b.num_rows()).sum();
    assert_eq!(rows as usize, want);
    // (That the streams share commits is timing-dependent here; the test
    // below pins grouping deterministically.)
    let commits = snapshots(&server).await - before;
    // Every commit made its data files durable (one syncfs per commit at
    // least, when it wrote its metadata) before it was acknowledged. (On
    // S3 a completed upload is durable: there is nothing to sync.)
    let syncs = warehouse.access_log.syncs() - syncs_before;
    if s3pg().is_none() {
        assert!(
            syncs >= commits as u64,
            "{commits} commits ran {syncs} syncs"
        );
    }
    // Every batch spans many days: a commit that carries several streams
    // still writes one file per partition, not one per stream.
    let mut per_partition = std::collections::HashMap::<_, usize>::new();
    for f in parquet_files(&warehouse_files(dir.path()).join("wildedge/raw_events/data")) {
        *per_partition
            .entry(f.parent().unwrap().to_owned())
            .or_default() += 1;
    }
    let most = per_partition.values().copied().max().unwrap();
    assert!(
        most <= commits,
        "a partition has {most} files after {commits} commits"
    );
    let mut c = raindrop::client::RaindropClient::connect(&server.url(), token)
        .await
        .unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM wildedge.raw_events").await as usize,
        want
    );
    assert_eq!(
        count(
            &mut c,
            "SELECT count(DISTINCT event_id) FROM wildedge.raw_events"
        )
        .await as usize,
        want
    );
    server.stop().await.unwrap();
}

/// Group commit, deterministically: a committer allowed to wait (60 s)
/// until its group holds the bytes of all six streams commits them as one
/// snapshot, and answers each stream with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_gathers_concurrent_streams_into_one_commit() {
    use raindrop::ingest::commit::{CommitConfig, TableWriter};
    use raindrop::ingest::validate::normalize_raw_events;
    use raindrop::ingest::write::prepare;
    use raindrop::tenant::scope::ProjectRule;

    let (server, _dir) = custom_server(|_| {}).await;
    let warehouse = server.services.query.warehouse().clone();
    let ident = warehouse.raw_events_ident();
    let table = warehouse.raw_events().await.unwrap();
    let target = raindrop::schema::raw_events_arrow_schema();
    let streams: Vec<Vec<_>> = dataset()
        .await
        .acme
        .events
        .iter()
        .take(6)
        .map(|b| vec![normalize_raw_events(b, &target, ProjectRule::Stamp(ACME), 0).unwrap()])
        .collect();
    let group_bytes: usize = streams
        .iter()
        .map(|s| prepare(&table, s.clone()).unwrap().bytes())
        .sum();
    let writer = std::sync::Arc::new(TableWriter::new(
        warehouse.catalog.clone(),
        warehouse.tables.clone(),
        CommitConfig {
            max_delay: std::time::Duration::from_secs(60),
            target_bytes: group_bytes,
        },
    ));
    let before = table.metadata().snapshots().count();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let (writer, ident) = (writer.clone(), ident.clone());
            tokio::spawn(async move { writer.append(&ident, s, None).await.unwrap() })
        })
        .collect();
    let mut snapshot_ids = std::collections::HashSet::new();
    for t in tasks {
        snapshot_ids.insert(t.await.unwrap().snapshot_id);
    }
    assert_eq!(snapshot_ids.len(), 1, "six streams, one snapshot");
    let after = warehouse.raw_events().await.unwrap();
    assert_eq!(after.metadata().snapshots().count(), before + 1);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_a_request_id_are_idempotent_across_restarts() {
    let mut server = TestServer::start().await;
    let data = dataset().await;
    let batch = data.acme.events[0].slice(0, 100);
    let mut acme = server.client("acme").await;
    assert_eq!(
        acme.ingest_events_once("batch-0001", vec![batch.clone()])
            .await
            .unwrap(),
        100
    );
    // The retry reports the original count and writes nothing.
    assert_eq!(
        acme.ingest_events_once("batch-0001", vec![batch.clone()])
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await,
        100
    );
    // Ids are per tenant: globex may use the same id.
    let mut globex = server.client("globex").await;
    assert_eq!(
        globex
            .ingest_events_once("batch-0001", vec![batch.clone()])
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        count(&mut globex, "SELECT count(*) FROM wildedge.raw_events").await,
        100
    );
    // Bad ids are refused.
    let err = acme
        .ingest_events_once("bad id!", vec![batch.clone()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // The ids are committed with the data: a restarted server still knows them.
    server.restart().await;
    let mut acme = server.client("acme").await;
    assert_eq!(
        acme.ingest_events_once("batch-0001", vec![batch.clone()])
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        acme.ingest_events_once("batch-0002", vec![batch])
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_of_one_request_commit_once() {
    let (server, _dir) = custom_server(|c| c.limits.commit_max_delay_ms = 300).await;
    let token = ACME_TOKEN;
    let batch = dataset().await.acme.events[0].slice(0, 100);
    let mut tasks = vec![];
    for _ in 0..4 {
        let (url, b) = (server.url(), batch.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = raindrop::client::RaindropClient::connect(&url, token)
                .await
                .unwrap();
            c.ingest_events_once("same-id", vec![b]).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 100);
    }
    let mut c = raindrop::client::RaindropClient::connect(&server.url(), token)
        .await
        .unwrap();
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM wildedge.raw_events").await,
        100
    );
    server.stop().await.unwrap();
}
