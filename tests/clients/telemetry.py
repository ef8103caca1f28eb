"""Small deterministic telemetry in PyArrow, independent of the Rust generator."""

import datetime as dt
import random

import pyarrow as pa

MODELS = ["intent-classifier", "fraud-detector", "recommender"]


def make(project: str, n_sessions: int, seed: int):
    rng = random.Random(seed)
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    ev = {k: [] for k in ["event_id", "event_type", "event_timestamp", "model_name", "session_id", "confidence", "duration_ms"]}
    outcomes = {"session_id": [], "converted": []}
    n = 0
    for s in range(n_sessions):
        sid = f"{project}-s{s}"
        model = MODELS[s % len(MODELS)]
        start = today - dt.timedelta(days=rng.randrange(0, 10), seconds=rng.randrange(0, 86400))
        for _ in range(rng.randrange(1, 5)):
            n += 1
            ev["event_id"].append(f"{project}-{n}")
            ev["event_type"].append("inference" if rng.random() < 0.9 else "error")
            ev["event_timestamp"].append(start + dt.timedelta(seconds=rng.randrange(0, 600)))
            ev["model_name"].append(model)
            ev["session_id"].append(sid)
            ev["confidence"].append(round(rng.random(), 6))
            ev["duration_ms"].append(round(rng.lognormvariate(3, 0.5), 3))
        outcomes["session_id"].append(sid)
        outcomes["converted"].append(rng.random() < 0.4)
    events = pa.table(
        {
            "event_id": pa.array(ev["event_id"], pa.string()),
            "event_type": pa.array(ev["event_type"], pa.string()),
            # pandas-style ns timestamps: the server coerces to µs UTC.
            "event_timestamp": pa.array(ev["event_timestamp"], pa.timestamp("ns", tz="UTC")),
            "model_name": pa.array(ev["model_name"], pa.large_string()),
            "session_id": pa.array(ev["session_id"], pa.string()),
            "confidence": pa.array(ev["confidence"], pa.float64()),
            "duration_ms": pa.array(ev["duration_ms"], pa.float64()),
        }
    )
    return events, pa.table({"session_id": outcomes["session_id"], "converted": outcomes["converted"]})
