"""Seed corpus for the fuzz targets: real shapes clients send.

ingest_batch: Arrow IPC streams of telemetry in the variants clients really
produce (pandas ns timestamps, Polars large/view strings, dictionaries,
string timestamps, maps, missing and extra columns, nulls).
flight_ticket: statement tickets, authorization headers and names.

Usage: python fuzz/seeds.py fuzz/corpus   (needs pyarrow)
"""
import datetime as dt
import os
import sys

import pyarrow as pa


def stream(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


TICKET_URL = b"type.googleapis.com/arrow.flight.protocol.sql.TicketStatementQuery"


def any_message(type_url: bytes, value: bytes) -> bytes:
    """protobuf Any{type_url = 1, value = 2} (short fields only)."""
    return b"\n" + bytes([len(type_url)]) + type_url + b"\x12" + bytes([len(value)]) + value


def telemetry(n=3, **override):
    ts = [dt.datetime(2026, 11, 1, 12, i, tzinfo=dt.timezone.utc) for i in range(n)]
    cols = {
        "event_id": pa.array([f"e{i}" for i in range(n)]),
        "event_type": pa.array(["inference", "error", "feedback"][:n]),
        "event_timestamp": pa.array(ts, pa.timestamp("us", "UTC")),
        "model_name": pa.array(["m"] * n),
        "confidence": pa.array([0.9, None, 0.5][:n]),
        "duration_ms": pa.array([1.5, 2.0, None][:n]),
        "input_tokens": pa.array([1, None, 3][:n], pa.int32()),
        "attributes": pa.array([[("k", "v")], None, []][:n], pa.map_(pa.string(), pa.string())),
    }
    cols.update(override)
    cols = {k: v for k, v in cols.items() if v is not None}
    return pa.RecordBatch.from_arrays(list(cols.values()), names=list(cols.keys()))


def main(out: str) -> None:
    ingest = os.path.join(out, "ingest_batch")
    tickets = os.path.join(out, "flight_ticket")
    os.makedirs(ingest, exist_ok=True)
    os.makedirs(tickets, exist_ok=True)
    ts = [dt.datetime(2026, 11, 1, 12, i) for i in range(3)]
    variants = {
        "plain": telemetry(),
        "ns_naive": telemetry(event_timestamp=pa.array(ts, pa.timestamp("ns"))),
        "ms_utc": telemetry(event_timestamp=pa.array(ts, pa.timestamp("ms", "UTC"))),
        "string_ts": telemetry(event_timestamp=pa.array(["2026-11-01T12:00:00Z"] * 3)),
        "large_utf8": telemetry(event_id=pa.array(["a", "b", "c"], pa.large_string())),
        "view": telemetry(model_name=pa.array(["m", "n", "o"], pa.string_view())),
        "dict": telemetry(event_type=pa.array(["inference"] * 3).dictionary_encode()),
        "int64_tokens": telemetry(input_tokens=pa.array([1, 2, 3], pa.int64())),
        "missing_required": telemetry(event_id=None),
        "extra_column": telemetry(bogus=pa.array([1, 2, 3])),
        "project_id": telemetry(project_id=pa.array(["acme", "globex", None])),
        "null_type": telemetry(model_name=pa.nulls(3)),
        "empty": telemetry(0, event_type=pa.array([], pa.string()), confidence=pa.array([], pa.float64()),
                           duration_ms=pa.array([], pa.float64()), input_tokens=pa.array([], pa.int32()),
                           attributes=pa.array([], pa.map_(pa.string(), pa.string()))),
    }
    for name, batch in variants.items():
        with open(os.path.join(ingest, name), "wb") as f:
            f.write(stream(batch))
    seeds = {
        # Any{type_url, value=TicketStatementQuery{statement_handle}}
        "ticket_query": any_message(TICKET_URL, b"\n\tQSELECT 1"),
        "ticket_update": any_message(TICKET_URL, b"\n\tU" + (7).to_bytes(8, "little")),
        "bearer": b"Bearer abcdef0123456789",
        "basic": b"Basic YWNtZTpzZWNyZXQ=",
        "name_ok": b"user_outcomes",
        "name_dots": b"../globex",
        "name_percent": b"acme%2Fglobex",
        "name_unicode": "ａcme".encode(),
    }
    for name, data in seeds.items():
        with open(os.path.join(tickets, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main(sys.argv[1])
