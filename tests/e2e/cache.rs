//! Metadata caching: a repeated query against an unchanged table reads no
//! metadata files and is planned once, not once per Flight call; a new
//! commit is visible to the very next query.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_queries_read_no_metadata_and_commits_are_seen() {
    on_one_utc_day(|| async {
        let server = loaded_server().await;
        let data = dataset().await;
        let cache = server
            .handle
            .as_ref()
            .unwrap()
            .services
            .query
            .warehouse()
            .tables
            .clone();
        let mut acme = server.client("acme").await;
        let sql = "SELECT count(*) FROM wildedge.raw_events WHERE event_day >= current_date - interval '7 days'";
        let first = count(&mut acme, sql).await;
        let (hits, misses) = cache.stats();

        // Hide every metadata file (metadata JSON, manifest lists, manifests):
        // the same query must still be answered, from memory.
        let meta = warehouse_files(server.dir.path()).join("wildedge/raw_events/metadata");
        let hidden = meta.with_file_name("hidden-metadata");
        std::fs::rename(&meta, &hidden).unwrap();
        let again = acme.query(sql).await;
        std::fs::rename(&hidden, &meta).unwrap();
        assert_eq!(
            scalar_i64(&again.expect("served from the metadata cache")),
            first
        );
        let (hits2, misses2) = cache.stats();
        // Planned once: DoGet runs the plan GetFlightInfo made (flight/planned.rs).
        assert_eq!(
            hits2,
            hits + 1,
            "one table lookup per query (GetFlightInfo plans, DoGet reuses the plan)"
        );
        assert_eq!(misses2, misses);

        // A commit changes the catalog pointer: the next query sees new rows.
        let batch = data.acme.events[0].slice(0, 10);
        acme.ingest_events(vec![batch.clone()]).await.unwrap();
        let after = count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await;
        assert_eq!(after as usize, data.acme.event_count + 10);
        // The writer handed its committed version to the cache, so even the
        // first query after the commit is fresh without loading metadata.
        assert_eq!(cache.stats().1, misses2);
    })
    .await;
}

/// On object storage, a repeated query reads no data from the store: the
/// data cache holds what the first run fetched. (S3 suite only: a local
/// warehouse leaves this to the OS page cache.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_queries_on_object_storage_fetch_no_data() {
    on_one_utc_day(|| async {
        if s3pg().is_none() {
            eprintln!("skipped: needs RAINDROP_TEST_BACKEND=s3pg");
            return;
        }
        let server = loaded_server().await;
        let mut acme = server.client("acme").await;
        let sql = "SELECT count(*) AS n, count(DISTINCT session_id) AS s, max(duration_ms) AS m \
                   FROM wildedge.raw_events WHERE event_day >= current_date - interval '7 days'";
        let first = arrow::util::pretty::pretty_format_batches(&acme.query(sql).await.unwrap())
            .unwrap()
            .to_string();
        // Hide every data file from the S3 server: the same query must still
        // be answered, from memory.
        let data = server.raw_events_data();
        let hidden = data.with_file_name("hidden-data");
        std::fs::rename(&data, &hidden).unwrap();
        let again = acme.query(sql).await;
        std::fs::rename(&hidden, &data).unwrap();
        let again =
            arrow::util::pretty::pretty_format_batches(&again.expect("served from the data cache"))
                .unwrap()
                .to_string();
        assert_eq!(again, first);
    })
    .await;
}
