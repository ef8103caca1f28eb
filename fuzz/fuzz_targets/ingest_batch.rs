//! Ingest on arbitrary Arrow data, decoded the way the server decodes a
//! `DoPut`: the input is an Arrow IPC stream (seeded with real telemetry
//! batches) cut into Flight messages (header + body, the body bounded by
//! what was received, as gRPC bounds it), checked like the server checks
//! them (`flight::ipc`), decoded by arrow-flight's `FlightRecordBatchStream`
//! with the server's panic containment, then normalised into `raw_events`.
//!
//! Properties checked beyond "never panics":
//! - an accepted batch has exactly the table's schema and row count;
//! - every accepted row carries the caller's `project_id` (a tenant can
//!   never write another tenant's rows).
#![no_main]

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use arrow::array::{Array, AsArray};
use arrow_flight::FlightData;
use arrow_flight::decode::FlightRecordBatchStream;
use bytes::Bytes;
use futures::TryStreamExt;
use libfuzzer_sys::fuzz_target;
use raindrop::flight::ipc::check_declared_sizes;
use raindrop::ingest::validate::normalize_raw_events;
use raindrop::tenant::scope::ProjectRule;
use raindrop::schema::raw_events_arrow_schema;

static HOOK: Once = Once::new();

thread_local! {
    /// True while arrow decodes: its panics are contained, like the
    /// server's (`flight::batches_of`); any other panic is a finding.
    static DECODING: Cell<bool> = const { Cell::new(false) };
}

/// Cut an IPC stream into Flight messages: `[0xFFFFFFFF] len:i32 header
/// body`, the body length read from the header but capped at the bytes
/// present (a gRPC message never carries more than it has).
fn flight_messages(mut data: &[u8]) -> Vec<FlightData> {
    let mut out = vec![];
    while out.len() < 16 {
        if data.starts_with(&[0xFF; 4]) {
            data = &data[4..];
        }
        let Some(len) = data.get(..4) else { break };
        let len = i32::from_le_bytes(len.try_into().unwrap());
        if len <= 0 || data.len() < 4 + len as usize {
            break;
        }
        let header = &data[4..4 + len as usize];
        data = &data[4 + len as usize..];
        let body_len = arrow::ipc::root_as_message(header)
            .map(|m| m.bodyLength().clamp(0, data.len() as i64) as usize)
            .unwrap_or(0);
        out.push(FlightData {
            data_header: Bytes::copy_from_slice(header),
            data_body: Bytes::copy_from_slice(&data[..body_len]),
            ..Default::default()
        });
        data = &data[body_len..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if !DECODING.get() {
                eprintln!("{info}\n{}", std::backtrace::Backtrace::force_capture());
                std::process::abort();
            }
        }))
    });
    let messages = flight_messages(data);
    // The server's pre-decode check (declared decompressed sizes).
    if messages
        .iter()
        .any(|m| check_declared_sizes(m, 512 * 1024 * 1024).is_err())
    {
        return;
    }
    DECODING.set(true);
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        let stream = FlightRecordBatchStream::new_from_flight_data(futures::stream::iter(
            messages.into_iter().map(Ok),
        ));
        futures::executor::block_on(stream.try_collect::<Vec<_>>())
    }));
    DECODING.set(false);
    let Ok(Ok(batches)) = decoded else { return };
    let target = raw_events_arrow_schema();
    for batch in batches {
        let Ok(out) = normalize_raw_events(&batch, &target, ProjectRule::Stamp("acme"), 0) else {
            continue;
        };
        assert_eq!(out.schema(), target);
        assert_eq!(out.num_rows(), batch.num_rows());
        let project = out
            .column_by_name("project_id")
            .expect("project_id")
            .as_string::<i32>();
        assert_eq!(project.null_count(), 0);
        assert!(project.iter().all(|p| p == Some("acme")));
    }
});
