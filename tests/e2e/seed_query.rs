//! The canonical seed query, run unchanged over Flight SQL, checked against
//! values computed directly from the generated data.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use raindrop::demo::SEED_QUERY;

use crate::common::*;

const DAY_US: i64 = 86_400_000_000;

#[derive(Debug, Default)]
struct Group {
    confidences: Vec<f64>,
    durations: Vec<f64>,
    converted: Vec<bool>,
}

fn percentile_cont(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pos = p * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
}

/// (day start µs, model).
type Key = (i64, String);
/// (avg confidence, p95 latency, conversion rate, count).
type Values = (f64, f64, f64, i64);

/// The seed query's answer computed by hand.
fn expected(events: &[RecordBatch], outcomes: &RecordBatch) -> BTreeMap<Key, Values> {
    let sessions = outcomes
        .column_by_name("session_id")
        .unwrap()
        .as_string::<i32>();
    let converted = outcomes.column_by_name("converted").unwrap().as_boolean();
    let outcome: HashMap<&str, bool> = (0..outcomes.num_rows())
        .map(|i| (sessions.value(i), converted.value(i)))
        .collect();
    let today = chrono::Utc::now().date_naive();
    let cutoff = (today - chrono::Duration::days(30))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
    for b in events {
        let ty = b.column_by_name("event_type").unwrap().as_string::<i32>();
        let ts = b
            .column_by_name("event_timestamp")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let model = b.column_by_name("model_name").unwrap().as_string::<i32>();
        let sess = b.column_by_name("session_id").unwrap().as_string::<i32>();
        let conf = b
            .column_by_name("confidence")
            .unwrap()
            .as_primitive::<Float64Type>();
        let dur = b
            .column_by_name("duration_ms")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            if ty.value(i) != "inference" || ts.value(i).div_euclid(DAY_US) * DAY_US < cutoff {
                continue;
            }
            let Some(conv) = outcome.get(sess.value(i)) else {
                continue;
            };
            let g = groups
                .entry((
                    ts.value(i).div_euclid(DAY_US) * DAY_US,
                    model.value(i).to_string(),
                ))
                .or_default();
            g.confidences.push(conf.value(i));
            g.durations.push(dur.value(i));
            g.converted.push(*conv);
        }
    }
    groups
        .into_iter()
        .map(|(k, mut g)| {
            let n = g.confidences.len();
            let avg = g.confidences.iter().sum::<f64>() / n as f64;
            let conv = g.converted.iter().filter(|c| **c).count() as f64 / n as f64;
            (
                k,
                (avg, percentile_cont(&mut g.durations, 0.95), conv, n as i64),
            )
        })
        .collect()
}

fn actual(batches: &[RecordBatch]) -> Vec<(Key, Values)> {
    let mut out = vec![];
    for b in batches {
        let day = b
            .column_by_name("day")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let model = b.column_by_name("model_name").unwrap().as_string::<i32>();
        let avg = b
            .column_by_name("avg_confidence")
            .unwrap()
            .as_primitive::<Float64Type>();
        let p95 = b
            .column_by_name("p95_latency_ms")
            .unwrap()
            .as_primitive::<Float64Type>();
        let conv = b
            .column_by_name("conversion_rate")
            .unwrap()
            .as_primitive::<Float64Type>();
        let n = b
            .column_by_name("inference_count")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            assert!(!day.is_null(i));
            out.push((
                (day.value(i), model.value(i).to_string()),
                (avg.value(i), p95.value(i), conv.value(i), n.value(i)),
            ));
        }
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// DataFusion quantises percentile_cont's interpolation weight to 1e-6
/// steps, so p95 may differ from exact interpolation by that much of the gap.
fn close_percentile(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_query_matches_independent_computation_for_each_tenant() {
    on_one_utc_day(|| async {
        let mut server = loaded_server().await;
        let data = dataset().await;
        for (token, project) in [("acme", &data.acme), ("globex", &data.globex)] {
            let mut client = server.client(token).await;
            let rows = actual(&client.query(SEED_QUERY).await.unwrap());
            let want = expected(&project.events, &project.outcomes);
            assert_eq!(rows.len(), want.len(), "{token}: group count");
            // ORDER BY 1 DESC, 2
            let mut sorted = rows.clone();
            sorted.sort_by(|a, b| b.0.0.cmp(&a.0.0).then(a.0.1.cmp(&b.0.1)));
            assert_eq!(
                rows.iter().map(|r| &r.0).collect::<Vec<_>>(),
                sorted.iter().map(|r| &r.0).collect::<Vec<_>>()
            );
            for (key, (avg, p95, conv, n)) in &rows {
                let (e_avg, e_p95, e_conv, e_n) = want
                    .get(key)
                    .unwrap_or_else(|| panic!("{token}: unexpected group {key:?}"));
                assert_eq!(n, e_n, "{token} {key:?} count");
                assert!(close(*avg, *e_avg), "{token} {key:?} avg {avg} vs {e_avg}");
                assert!(
                    close_percentile(*p95, *e_p95),
                    "{token} {key:?} p95 {p95} vs {e_p95}"
                );
                assert!(
                    close(*conv, *e_conv),
                    "{token} {key:?} conversion {conv} vs {e_conv}"
                );
            }
        }

        // A restart keeps every committed row and table.
        let mut before = server.client("acme").await;
        let total_before = count(&mut before, "SELECT count(*) FROM wildedge.raw_events").await;
        server.restart().await;
        let mut after = server.client("acme").await;
        assert_eq!(
            count(&mut after, "SELECT count(*) FROM wildedge.raw_events").await,
            total_before
        );
        assert_eq!(total_before as usize, data.acme.event_count);
        let rows = actual(&after.query(SEED_QUERY).await.unwrap());
        assert_eq!(
            rows.len(),
            expected(&data.acme.events, &data.acme.outcomes).len()
        );
    })
    .await;
}
