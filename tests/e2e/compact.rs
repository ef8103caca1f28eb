//! Compaction: the same rows in fewer files, safe while ingest goes on.

use raindrop::client::RaindropClient;
use raindrop::maintenance::compact::{CompactOptions, compact_table};

use crate::common::*;

/// What must not change when files are rewritten: row count, distinct ids,
/// an integer sum and the time range (as text, exact).
const FINGERPRINT: &str = "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, \
     sum(CAST(input_tokens AS BIGINT)) AS tokens, \
     CAST(min(event_timestamp) AS VARCHAR) AS lo, CAST(max(event_timestamp) AS VARCHAR) AS hi \
     FROM wildedge.raw_events";

/// Expire snapshots older than `max_age`; files go at once.
fn retain(max_age: Option<std::time::Duration>) -> raindrop::maintenance::Retention {
    raindrop::maintenance::Retention {
        max_age,
        max_snapshots: None,
        min_file_age: std::time::Duration::ZERO,
    }
}

async fn fingerprint(client: &mut RaindropClient) -> String {
    let batches = client.query(FINGERPRINT).await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

async fn compact_raw_events(
    warehouse: &raindrop::catalog::Warehouse,
) -> raindrop::maintenance::compact::CompactReport {
    compact_table(
        warehouse,
        &warehouse.raw_events_ident(),
        &CompactOptions::default(),
    )
    .await
    .unwrap()
}

/// A server holding acme's generated batches, one `DoPut` each (every
/// batch spans all 30 days, so each day has several files), a client as
/// acme, and the table's fingerprint.
async fn server_with_acme_files() -> (TestServer, RaindropClient, String) {
    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    for b in &dataset().await.acme.events {
        acme.ingest_events(vec![b.clone()]).await.unwrap();
    }
    let before = fingerprint(&mut acme).await;
    (server, acme, before)
}

/// Every data file on storage is referenced by a snapshot: whatever a
/// dropped or aborted commit wrote was deleted.
async fn assert_no_orphan_files(warehouse: &raindrop::catalog::Warehouse) {
    let table = warehouse
        .catalog
        .load_table(&warehouse.raw_events_ident())
        .await
        .unwrap();
    let orphans = raindrop::maintenance::find_orphan_files(
        &warehouse.store,
        &table,
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert!(orphans.orphans.is_empty(), "{orphans:?}");
}

async fn files_and_days(client: &mut RaindropClient) -> (usize, i64) {
    let files = planned_files(client, "SELECT count(*) FROM wildedge.raw_events").await[0];
    let days = count(
        client,
        "SELECT count(DISTINCT event_day) FROM wildedge.raw_events",
    )
    .await;
    (files, days)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_every_row_and_leaves_one_file_per_partition() {
    let mut server = TestServer::start().await;
    let data = dataset().await;
    let mut acme = server.client("acme").await;
    let mut globex = server.client("globex").await;
    // Every generated batch spans all 30 days: each DoPut adds a file to
    // every day of its project (the backfill worst case).
    for b in &data.acme.events {
        acme.ingest_events(vec![b.clone()]).await.unwrap();
    }
    acme.ingest_events_once("before-compaction", vec![data.acme.events[0].slice(0, 10)])
        .await
        .unwrap();
    globex
        .ingest_events(vec![data.globex.events[0].clone()])
        .await
        .unwrap();
    let acme_before = fingerprint(&mut acme).await;
    let globex_before = fingerprint(&mut globex).await;
    let (acme_files, acme_days) = files_and_days(&mut acme).await;
    let (globex_files, globex_days) = files_and_days(&mut globex).await;
    assert!(
        acme_files as i64 > acme_days,
        "fixture should leave several files per day: {acme_files} files, {acme_days} days"
    );
    assert_eq!(
        globex_files as i64, globex_days,
        "one DoPut: one file per day"
    );

    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let report = compact_raw_events(warehouse).await;
    // Only acme's partitions had more than one file.
    assert_eq!(report.partitions as i64, acme_days);
    assert_eq!(report.files_removed, acme_files);
    assert_eq!(report.files_added as i64, acme_days);
    assert_eq!(report.snapshots.len(), 1);

    assert_eq!(fingerprint(&mut acme).await, acme_before);
    assert_eq!(fingerprint(&mut globex).await, globex_before);
    // Each merged file is in layout order across all its inputs (the
    // merge streams them; concatenating would not be).
    assert_files_in_layout_order(warehouse).await;
    assert_eq!(
        files_and_days(&mut acme).await,
        (acme_days as usize, acme_days)
    );
    assert_eq!(
        files_and_days(&mut globex).await,
        (globex_files, globex_days)
    );

    // The rewritten manifests are regrouped by tenant: acme's files now sit
    // in one manifest, and globex's untouched manifest is still skipped.
    let plan = acme
        .query("EXPLAIN SELECT count(*) FROM wildedge.raw_events")
        .await
        .unwrap();
    let plan = strings(&plan, "plan").join("\n");
    assert!(plan.contains("manifests=1/2,"), "{plan}");

    // Nothing left to do: a second run commits nothing.
    let again = compact_raw_events(warehouse).await;
    assert_eq!((again.files_removed, again.snapshots.len()), (0, 0));

    // Request ids committed before the compaction still deduplicate after
    // a restart (they live in the older snapshots' summaries).
    server.restart().await;
    let mut acme = server.client("acme").await;
    acme.ingest_events_once("before-compaction", vec![data.acme.events[0].slice(0, 10)])
        .await
        .unwrap();
    assert_eq!(fingerprint(&mut acme).await, acme_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_compactions_of_the_same_files_both_succeed() {
    // `raindrop compact` beside a server's background compaction: both
    // plan the same partitions; whichever commits second finds its input
    // replaced. That commit is dropped (its files deleted), not an error.
    let (server, mut acme, before) = server_with_acme_files().await;
    let (files, days) = files_and_days(&mut acme).await;
    assert!(files as i64 > days, "{files} files for {days} days");

    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let ident = warehouse.raw_events_ident();
    let options = CompactOptions::default();
    let (a, b) = tokio::join!(
        compact_table(warehouse, &ident, &options),
        compact_table(warehouse, &ident, &options)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // Both planned before either committed (the merges take far longer
    // than planning), so one lost; or one planned after the other's
    // commit and found nothing to do.
    assert!(
        a.superseded + b.superseded >= 1 || a.files_removed == 0 || b.files_removed == 0,
        "{a:?} {b:?}"
    );
    assert_eq!(fingerprint(&mut acme).await, before);
    assert_eq!(files_and_days(&mut acme).await, (days as usize, days));
    // The loser's files were deleted: every data file on storage is
    // referenced by a snapshot.
    assert_no_orphan_files(warehouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_merge_runs_beside_the_runs_which_leave_its_files_alone() {
    // A background run hands a partition's long merge to the lane and
    // returns; the next run, planned while that merge still runs (merging
    // takes far longer than planning), must leave its files alone, or one
    // of the two commits would find its input replaced.
    use raindrop::maintenance::compact::{LongMerges, compact_table_with};
    let (server, mut acme, before) = server_with_acme_files().await;
    let (files, days) = files_and_days(&mut acme).await;
    assert!(files as i64 > days, "{files} files for {days} days");
    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let ident = warehouse.raw_events_ident();
    let manifests = std::sync::Arc::default();
    let lane = LongMerges::default();
    let every_merge_long = CompactOptions {
        short_merge_bytes: 1,
        ..CompactOptions::default()
    };
    let first = compact_table_with(
        warehouse,
        &ident,
        &every_merge_long,
        &manifests,
        Some(&lane),
    )
    .await
    .unwrap();
    assert_eq!(
        first.files_removed, 0,
        "the run merged nothing itself: {first:?}"
    );
    let second = compact_table_with(
        warehouse,
        &ident,
        &CompactOptions::default(),
        &manifests,
        Some(&lane),
    )
    .await
    .unwrap();
    assert_eq!(
        (second.partitions as i64, second.superseded),
        (days - 1, 0),
        "every partition but the lane's: {second:?}"
    );
    // The lane's merge lands too: one file per day, nothing lost, nothing
    // left behind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while files_and_days(&mut acme).await != (days as usize, days) {
        assert!(
            std::time::Instant::now() < deadline,
            "the long merge never landed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(fingerprint(&mut acme).await, before);
    assert_no_orphan_files(warehouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_racing_ingest_loses_and_duplicates_nothing() {
    let server = TestServer::start().await;
    let data = dataset().await;
    let mut acme = server.client("acme").await;
    let mut acked = 0i64;
    for b in &data.acme.events {
        acked += acme.ingest_events(vec![b.clone()]).await.unwrap();
    }
    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let ident = warehouse.raw_events_ident();

    // One append lands while a compaction builds its snapshot: the swap
    // finds the table moved and must rebuild on the new metadata. Where in
    // the compaction the append lands depends on timing, so the append is
    // started ever later after the compaction, until a rebuild is seen.
    let mut writer = server.client("acme").await;
    let slices: Vec<_> = data
        .acme
        .events
        .iter()
        .map(|b| b.slice(0, b.num_rows().min(500)))
        .collect();
    let (mut compacted, mut rebuilds, mut gave_up) = (0, 0, 0);
    for step in 0..100u64 {
        if rebuilds > 0 {
            break;
        }
        let compaction = {
            let (warehouse, ident) = (warehouse.clone(), ident.clone());
            tokio::spawn(async move {
                compact_table(&warehouse, &ident, &CompactOptions::default()).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(step * 10)).await;
        let slice = slices[step as usize % slices.len()].clone();
        acked += writer.ingest_events(vec![slice]).await.unwrap();
        match compaction.await.unwrap() {
            Ok(report) => {
                compacted += report.files_removed;
                rebuilds += report.rebuilds;
            }
            // Lost every attempt: committed nothing, deleted its files.
            Err(raindrop::error::Error::Aborted(_)) => gave_up += 1,
            Err(e) => panic!("compaction failed: {e}"),
        }
    }
    eprintln!(
        "compaction rebuilds after a concurrent append: {rebuilds}; runs given up: {gave_up}"
    );
    assert!(
        rebuilds > 0,
        "no compaction committed after rebuilding on a concurrent append ({gave_up} gave up)"
    );
    let report = compact_table(warehouse, &ident, &CompactOptions::default())
        .await
        .unwrap();
    compacted += report.files_removed;
    assert!(compacted > 0);

    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await,
        acked
    );
    let (files, days) = files_and_days(&mut acme).await;
    assert_eq!(files as i64, days, "one file per day after the last run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_compacts_in_the_background() {
    let (server, _dir) = custom_server(|c| {
        c.limits.compact_interval_secs = 1;
        c.limits.compact_min_files = 3;
    })
    .await;
    let data = dataset().await;
    let mut acme = RaindropClient::connect(&server.url(), ACME_TOKEN)
        .await
        .unwrap();
    let batch = &data.acme.events[0];
    for _ in 0..3 {
        acme.ingest_events(vec![batch.clone()]).await.unwrap();
    }
    let days = count(
        &mut acme,
        "SELECT count(DISTINCT event_day) FROM wildedge.raw_events",
    )
    .await;
    // A liveness check, not a speed target: other tests share the cores
    // (alone it takes ~5 s on S3 + PostgreSQL; once, in a cold CI run with
    // four S3 tests at a time, 60 s were not enough).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let (files, _) = files_and_days(&mut acme).await;
        if files as i64 == days {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {files} files for {days} days"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await,
        3 * batch.num_rows() as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_only_the_files_compaction_replaced() {
    let (server, mut acme, before) = server_with_acme_files().await;
    let data = dataset().await;
    let on_disk = parquet_files(&server.raw_events_data()).len();
    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let ident = warehouse.raw_events_ident();
    let report = compact_table(warehouse, &ident, &CompactOptions::default())
        .await
        .unwrap();
    assert!(report.files_removed > 0);
    // Everything stays on disk while the older snapshots are retained.
    let zero = std::time::Duration::ZERO;
    let hour = std::time::Duration::from_secs(3600);
    let kept =
        raindrop::maintenance::expire_and_clean(warehouse, &ident, &retain(Some(hour)), true)
            .await
            .unwrap();
    assert_eq!((kept.snapshots_expired, kept.files_deleted), (0, 0));
    assert_eq!(
        parquet_files(&server.raw_events_data()).len(),
        on_disk + report.files_added
    );

    // Expire all but the current snapshot: exactly the replaced files go.
    let done =
        raindrop::maintenance::expire_and_clean(warehouse, &ident, &retain(Some(zero)), true)
            .await
            .unwrap();
    assert!(done.snapshots_expired > 0);
    assert_eq!(done.files_deleted, report.files_removed);
    let (files, days) = files_and_days(&mut acme).await;
    assert_eq!(parquet_files(&server.raw_events_data()).len(), files);
    assert_eq!(files as i64, days);
    assert_eq!(fingerprint(&mut acme).await, before);
    // Appends go on after the expiry.
    acme.ingest_events(vec![data.acme.events[0].slice(0, 10)])
        .await
        .unwrap();
    assert_eq!(
        count(&mut acme, "SELECT count(*) FROM wildedge.raw_events").await,
        data.acme
            .events
            .iter()
            .map(|b| b.num_rows() as i64)
            .sum::<i64>()
            + 10
    );
}

/// `rows` events with random ids in [`id_batch`]'s day: a file too large
/// for the smallest compaction tier (ids do not compress).
fn random_id_batch(rows: usize) -> arrow::array::RecordBatch {
    use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray};
    let ids: Vec<String> = (0..rows)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let ts: Vec<i64> = (0..rows as i64)
        .map(|i| 1_780_000_000_000_000 + i * 1_000)
        .collect();
    arrow::array::RecordBatch::try_from_iter(vec![
        (
            "event_id",
            std::sync::Arc::new(StringArray::from(ids)) as ArrayRef,
        ),
        (
            "event_type",
            std::sync::Arc::new(StringArray::from(vec!["inference"; rows])),
        ),
        (
            "event_timestamp",
            std::sync::Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        ),
    ])
    .unwrap()
}

/// Live data files of raw_events: path and size.
async fn live_files(warehouse: &raindrop::catalog::Warehouse) -> Vec<(String, u64)> {
    let table = warehouse.raw_events().await.unwrap();
    scan_tasks(&table)
        .await
        .into_iter()
        .map(|t| (t.data_file_path, t.file_size_in_bytes))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_compaction_merges_small_files_by_tier() {
    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let ident = warehouse.raw_events_ident();
    let background = CompactOptions::background(4, 0);

    acme.ingest_events(vec![random_id_batch(20_000)])
        .await
        .unwrap();
    let large = live_files(warehouse).await;
    assert_eq!(large.len(), 1);
    assert!(
        large[0].1 >= 256 * 1024,
        "the first file must sit above the smallest tier: {large:?}"
    );
    for i in 0..3 {
        acme.ingest_events(vec![id_batch(&format!("s{i}"), 50)])
            .await
            .unwrap();
    }
    // Four small files in one tenant-day, but only three in the smallest
    // tier: the larger file is not rewritten for them.
    let r = compact_table(warehouse, &ident, &background).await.unwrap();
    assert_eq!(r.files_removed, 0, "{r:?}");

    acme.ingest_events(vec![id_batch("s3", 50)]).await.unwrap();
    let r = compact_table(warehouse, &ident, &background).await.unwrap();
    assert_eq!((r.files_removed, r.files_added), (4, 1), "{r:?}");
    let live = live_files(warehouse).await;
    assert_eq!(live.len(), 2);
    assert!(live.contains(&large[0]), "the larger file was rewritten");

    // `raindrop compact` merges every small file of the partition.
    let r = compact_raw_events(warehouse).await;
    assert_eq!((r.files_removed, r.files_added), (2, 1), "{r:?}");
    assert_eq!(live_files(warehouse).await.len(), 1);
    let rows = "SELECT count(*) FROM wildedge.raw_events";
    let ids = "SELECT count(DISTINCT event_id) FROM wildedge.raw_events";
    assert_eq!(count(&mut acme, rows).await, 20_000 + 4 * 50);
    assert_eq!(count(&mut acme, ids).await, 20_000 + 4 * 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_compaction_keeps_a_partition_under_its_bound() {
    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let ident = warehouse.raw_events_ident();

    // One tenant-day with files in three tiers, two in the smallest.
    for rows in [100_000, 20_000, 50] {
        acme.ingest_events(vec![random_id_batch(rows)])
            .await
            .unwrap();
    }
    acme.ingest_events(vec![id_batch("s0", 50)]).await.unwrap();
    let before = live_files(warehouse).await;
    let mut sizes: Vec<u64> = before.iter().map(|f| f.1).collect();
    sizes.sort();
    assert_eq!(sizes.len(), 4);
    assert!(
        sizes[1] < 256 * 1024 && sizes[2] >= 256 * 1024 && sizes[3] >= 1024 * 1024,
        "fixture: two files in the smallest tier and two above it, {sizes:?}"
    );

    // Tiers alone wait: no tier holds four files.
    let tiered = CompactOptions::background(4, 0);
    let r = compact_table(warehouse, &ident, &tiered).await.unwrap();
    assert_eq!(r.files_removed, 0, "{r:?}");

    // Bounded to four (three left between flushes): the two smallest
    // merge, the larger files stay as they are.
    let bounded = CompactOptions::background(4, 4);
    let r = compact_table(warehouse, &ident, &bounded).await.unwrap();
    assert_eq!((r.files_removed, r.files_added), (2, 1), "{r:?}");
    let after = live_files(warehouse).await;
    assert_eq!(after.len(), 3, "{after:?}");
    for larger in before.iter().filter(|f| f.1 >= sizes[2]) {
        assert!(after.contains(larger), "{larger:?} was rewritten");
    }
    let r = compact_table(warehouse, &ident, &bounded).await.unwrap();
    assert_eq!(r.files_removed, 0, "at the bound: {r:?}");
    let rows = "SELECT count(*) FROM wildedge.raw_events";
    let ids = "SELECT count(DISTINCT event_id) FROM wildedge.raw_events";
    assert_eq!(count(&mut acme, rows).await, 120_100);
    assert_eq!(count(&mut acme, ids).await, 120_100);
}

/// A row's layout key: model, hour, session, time.
type LayoutKey = (Option<String>, Option<i64>, Option<String>, Option<i64>);

/// Every live data file's rows are in layout order: model, hour, session,
/// time (nulls first), as the ingest writer sorts them.
async fn assert_files_in_layout_order(warehouse: &raindrop::catalog::Warehouse) {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::TimestampMicrosecondType;
    const HOUR_US: i64 = 3_600_000_000;
    let table = warehouse.raw_events().await.unwrap();
    let files: Vec<iceberg::spec::DataFile> = {
        let snapshot = table.metadata().current_snapshot().unwrap();
        let list = table.manifest_list_reader(snapshot).load().await.unwrap();
        let mut files = vec![];
        for m in list.entries() {
            let manifest = m.load_manifest(table.file_io()).await.unwrap();
            files.extend(
                manifest
                    .entries()
                    .iter()
                    .filter(|e| e.is_alive())
                    .map(|e| e.data_file().clone()),
            );
        }
        files
    };
    assert!(!files.is_empty());
    for file in &files {
        let batches = raindrop::catalog::read::read_data_files(&table, std::slice::from_ref(file))
            .await
            .unwrap();
        let mut keys: Vec<LayoutKey> = vec![];
        for b in &batches {
            let model = b.column_by_name("model_name").unwrap().as_string::<i32>();
            let session = b.column_by_name("session_id").unwrap().as_string::<i32>();
            let ts = b
                .column_by_name("event_timestamp")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            for i in 0..b.num_rows() {
                let t = ts.is_valid(i).then(|| ts.value(i));
                keys.push((
                    model.is_valid(i).then(|| model.value(i).to_string()),
                    t.map(|t| t.div_euclid(HOUR_US)),
                    session.is_valid(i).then(|| session.value(i).to_string()),
                    t,
                ));
            }
        }
        assert_eq!(keys.len() as u64, file.record_count());
        if let Some(i) = keys.windows(2).position(|w| w[0] > w[1]) {
            panic!(
                "{} is out of layout order at row {}: {:?} before {:?}",
                file.file_path(),
                i + 1,
                keys[i],
                keys[i + 1]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_read_in_ranges_yields_each_row_once() {
    // One tenant-day as a single file of over 16 MiB (uuids barely
    // compress): the scan splits it into byte ranges, one per core, and
    // each row group must be read by exactly one of them.
    let server = TestServer::start().await;
    let mut acme = server.client("acme").await;
    let rows = 1_200_000;
    // s3s-fs (the S3 suite's server) has lost a 24 MB multipart upload
    // whose completion was sent twice (a CI run, and once before): the
    // `DoPut` failed and committed nothing. A client retries with the
    // same request id, and so does this test, up to three times.
    let batch = random_id_batch(rows);
    for attempt in 1.. {
        match acme.ingest_events_once("large", vec![batch.clone()]).await {
            Ok(n) => {
                assert_eq!(n, rows as i64);
                break;
            }
            Err(e) if attempt < 3 => eprintln!("ingest attempt {attempt} failed, retrying: {e}"),
            Err(e) => panic!("ingest failed {attempt} times: {e}"),
        }
    }
    let warehouse = server.handle.as_ref().unwrap().services.query.warehouse();
    let files = live_files(warehouse).await;
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].1 > 16 * 1024 * 1024, "fixture: {files:?}");
    let ids = "SELECT count(DISTINCT event_id) FROM wildedge.raw_events";
    let total = "SELECT count(*) FROM wildedge.raw_events WHERE event_id IS NOT NULL";
    let plan = acme.query(&format!("EXPLAIN {ids}")).await.unwrap();
    let plan = strings(&plan, "plan").join("\n");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        assert!(
            plan.contains("files=1,") && !plan.contains("partitions=1,"),
            "{plan}"
        );
    }
    assert_eq!(count(&mut acme, ids).await, rows as i64);
    assert_eq!(count(&mut acme, total).await, rows as i64);
}
