//! Realistic synthetic telemetry: skewed tenants, a diurnal traffic curve,
//! several models with their own latency profiles, one model whose
//! confidence drifts down over the period, and an outcomes table whose
//! conversion depends on the confidence users saw. Deterministic per seed,
//! so tests can recompute expected answers from the same data.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, MapBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Generator settings.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Number of projects.
    pub projects: usize,
    /// Days of history ending at `end`.
    pub days: u32,
    /// Total events across projects.
    pub events: usize,
    /// Rows per generated batch.
    pub batch_rows: usize,
    /// RNG seed.
    pub seed: u64,
    /// End of the period (exclusive).
    pub end: DateTime<Utc>,
}

/// One project's generated data.
#[derive(Debug, Clone)]
pub struct ProjectData {
    /// Project id.
    pub project_id: String,
    /// `raw_events` rows, without `project_id` (the server stamps it).
    pub events: Vec<RecordBatch>,
    /// `user_outcomes` rows: `session_id`, `converted`, `revenue`.
    pub outcomes: RecordBatch,
    /// Number of events.
    pub event_count: usize,
}

struct Model {
    name: &'static str,
    version: &'static str,
    weight: f64,
    confidence: f64,
    latency_mu: f64,
    labels: &'static [&'static str],
    drifts: bool,
    tokens: bool,
}

const MODELS: &[Model] = &[
    Model {
        name: "intent-classifier",
        version: "v2.1",
        weight: 0.35,
        confidence: 0.88,
        latency_mu: 2.8,
        labels: &["buy", "browse", "support", "cancel"],
        drifts: false,
        tokens: false,
    },
    Model {
        name: "fraud-detector",
        version: "v3.0",
        weight: 0.25,
        confidence: 0.93,
        latency_mu: 3.4,
        labels: &["legit", "fraud"],
        drifts: true,
        tokens: false,
    },
    Model {
        name: "recommender",
        version: "v7.4",
        weight: 0.25,
        confidence: 0.74,
        latency_mu: 3.9,
        labels: &["item_a", "item_b", "item_c", "item_d", "item_e"],
        drifts: false,
        tokens: false,
    },
    Model {
        name: "llm-assistant",
        version: "2026-10",
        weight: 0.15,
        confidence: 0.81,
        latency_mu: 6.6,
        labels: &["answer"],
        drifts: false,
        tokens: true,
    },
];

const PLATFORMS: &[&str] = &["ios", "android", "web", "server"];
const NAMES: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
];

/// Project ids for `n` projects: friendly names first, then `project-<i>`.
pub fn project_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match NAMES.get(i) {
            Some(name) => name.to_string(),
            None => format!("project-{i}"),
        })
        .collect()
}

/// Events for each project: Zipf-like skew, the first project largest.
pub fn project_sizes(projects: usize, events: usize) -> Vec<usize> {
    let weights: Vec<f64> = (0..projects)
        .map(|i| 1.0 / ((i + 1) as f64).powf(1.1))
        .collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| ((w / total) * events as f64).round() as usize)
        .collect()
}

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Diurnal curve: traffic peaks mid-afternoon UTC, bottoms out at night.
fn diurnal_hour(rng: &mut StdRng) -> u32 {
    loop {
        let h = rng.random_range(0..24u32);
        let phase = 2.0 * std::f64::consts::PI * (h as f64 - 9.0) / 24.0;
        let accept = 0.25 + 0.75 * (1.0 + phase.sin()) / 2.0;
        if rng.random::<f64>() < accept {
            return h;
        }
    }
}

struct Builders {
    event_id: StringBuilder,
    event_type: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    model_name: StringBuilder,
    model_version: StringBuilder,
    session_id: StringBuilder,
    device_id: StringBuilder,
    platform: StringBuilder,
    prediction: StringBuilder,
    error_message: StringBuilder,
    confidence: Float64Builder,
    duration_ms: Float64Builder,
    input_tokens: Int32Builder,
    output_tokens: Int32Builder,
    attributes: MapBuilder<StringBuilder, StringBuilder>,
    rows: usize,
}

impl Builders {
    fn new() -> Self {
        Self {
            event_id: StringBuilder::new(),
            event_type: StringBuilder::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            model_name: StringBuilder::new(),
            model_version: StringBuilder::new(),
            session_id: StringBuilder::new(),
            device_id: StringBuilder::new(),
            platform: StringBuilder::new(),
            prediction: StringBuilder::new(),
            error_message: StringBuilder::new(),
            confidence: Float64Builder::new(),
            duration_ms: Float64Builder::new(),
            input_tokens: Int32Builder::new(),
            output_tokens: Int32Builder::new(),
            attributes: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            rows: 0,
        }
    }

    fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("event_id", Arc::new(self.event_id.finish())),
            ("event_type", Arc::new(self.event_type.finish())),
            ("event_timestamp", Arc::new(self.ts.finish())),
            ("model_name", Arc::new(self.model_name.finish())),
            ("model_version", Arc::new(self.model_version.finish())),
            ("session_id", Arc::new(self.session_id.finish())),
            ("device_id", Arc::new(self.device_id.finish())),
            ("platform", Arc::new(self.platform.finish())),
            ("prediction", Arc::new(self.prediction.finish())),
            ("error_message", Arc::new(self.error_message.finish())),
            ("confidence", Arc::new(self.confidence.finish())),
            ("duration_ms", Arc::new(self.duration_ms.finish())),
            ("input_tokens", Arc::new(self.input_tokens.finish())),
            ("output_tokens", Arc::new(self.output_tokens.finish())),
            ("attributes", Arc::new(self.attributes.finish())),
        ];
        RecordBatch::try_from_iter(cols).expect("generated columns are consistent")
    }
}

/// Generate the data of project number `index`.
pub fn generate_project(cfg: &GenConfig, index: usize) -> ProjectData {
    let project_id = project_ids(cfg.projects)[index].clone();
    let target = project_sizes(cfg.projects, cfg.events)[index];
    let mut rng =
        StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(index as u64));
    let start = cfg.end - chrono::Duration::days(cfg.days as i64);
    let start_us = start.timestamp_micros();
    let end_us = cfg.end.timestamp_micros();
    let devices = (target / 50).max(5);

    let mut b = Builders::new();
    let mut batches = vec![];
    let mut sessions = StringBuilder::new();
    let mut converted = BooleanBuilder::new();
    let mut revenue = Float64Builder::new();
    let mut produced = 0usize;
    let mut session_no = 0usize;
    let total_weight: f64 = MODELS.iter().map(|m| m.weight).sum();

    while produced < target {
        session_no += 1;
        let session_id = format!("{project_id}-s{session_no:08}");
        let mut pick = rng.random::<f64>() * total_weight;
        let model = MODELS
            .iter()
            .find(|m| {
                pick -= m.weight;
                pick <= 0.0
            })
            .unwrap_or(&MODELS[0]);
        let day = rng.random_range(0..cfg.days.max(1)) as i64;
        let hour = diurnal_hour(&mut rng) as i64;
        let mut ts = start_us
            + day * 86_400_000_000
            + hour * 3_600_000_000
            + rng.random_range(0..3_600_000_000i64);
        let device = format!("dev-{:06}", rng.random_range(0..devices));
        let platform = PLATFORMS[rng.random_range(0..PLATFORMS.len())];
        let n = rng.random_range(1..=8usize).min(target - produced);
        let drift = if model.drifts {
            0.22 * day as f64 / cfg.days.max(1) as f64
        } else {
            0.0
        };
        let (mut conf_sum, mut conf_n) = (0.0, 0);
        for _ in 0..n {
            ts = (ts + rng.random_range(1_000_000..120_000_000i64)).min(end_us - 1);
            produced += 1;
            let roll: f64 = rng.random();
            let event_type = if roll < 0.90 {
                "inference"
            } else if roll < 0.94 {
                "error"
            } else {
                "feedback"
            };
            b.event_id
                .append_value(format!("{project_id}-{produced:010}"));
            b.event_type.append_value(event_type);
            b.ts.append_value(ts);
            b.model_name.append_value(model.name);
            b.model_version.append_value(model.version);
            b.session_id.append_value(&session_id);
            b.device_id.append_value(&device);
            b.platform.append_value(platform);
            let latency = (model.latency_mu + 0.45 * normal(&mut rng)).exp();
            match event_type {
                "inference" => {
                    let c = (model.confidence - drift + 0.06 * normal(&mut rng)).clamp(0.01, 0.999);
                    conf_sum += c;
                    conf_n += 1;
                    b.confidence.append_value(c);
                    b.prediction
                        .append_value(model.labels[rng.random_range(0..model.labels.len())]);
                    b.error_message.append_null();
                    b.duration_ms.append_value(latency);
                }
                "error" => {
                    b.confidence.append_null();
                    b.prediction.append_null();
                    b.error_message.append_value(if rng.random::<bool>() {
                        "timeout after 30s"
                    } else {
                        "model returned NaN logits"
                    });
                    b.duration_ms.append_value(latency * 3.0);
                }
                _ => {
                    b.confidence.append_null();
                    b.prediction.append_value(if rng.random::<f64>() < 0.8 {
                        "thumbs_up"
                    } else {
                        "thumbs_down"
                    });
                    b.error_message.append_null();
                    b.duration_ms.append_null();
                }
            }
            if model.tokens && event_type == "inference" {
                b.input_tokens.append_value(rng.random_range(50..2000));
                b.output_tokens.append_value(rng.random_range(20..800));
            } else {
                b.input_tokens.append_null();
                b.output_tokens.append_null();
            }
            if rng.random::<f64>() < 0.2 {
                b.attributes.keys().append_value("region");
                b.attributes.values().append_value(if rng.random::<bool>() {
                    "eu-west-1"
                } else {
                    "us-east-1"
                });
                b.attributes.append(true).expect("map entry");
            } else {
                b.attributes.append(false).expect("null map");
            }
            b.rows += 1;
            if b.rows >= cfg.batch_rows {
                batches.push(b.finish());
            }
        }
        let mean_conf = if conf_n > 0 {
            conf_sum / conf_n as f64
        } else {
            0.5
        };
        let did_convert = rng.random::<f64>() < 0.05 + 0.45 * mean_conf;
        sessions.append_value(&session_id);
        converted.append_value(did_convert);
        revenue.append_value(if did_convert {
            (rng.random_range(500..20000) as f64) / 100.0
        } else {
            0.0
        });
    }
    if b.rows > 0 {
        batches.push(b.finish());
    }
    let outcomes = RecordBatch::try_from_iter(vec![
        ("session_id", Arc::new(sessions.finish()) as ArrayRef),
        ("converted", Arc::new(converted.finish())),
        ("revenue", Arc::new(revenue.finish())),
    ])
    .expect("outcome columns are consistent");
    ProjectData {
        project_id,
        events: batches,
        outcomes,
        event_count: produced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_skewed_and_in_range() {
        let cfg = GenConfig {
            projects: 3,
            days: 7,
            events: 3000,
            batch_rows: 500,
            seed: 7,
            end: Utc::now(),
        };
        let a = generate_project(&cfg, 0);
        let b = generate_project(&cfg, 0);
        assert_eq!(a.events, b.events);
        let sizes = project_sizes(3, 3000);
        assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2]);
        assert_eq!(a.event_count, sizes[0]);
        assert_eq!(
            a.events.iter().map(|b| b.num_rows()).sum::<usize>(),
            sizes[0]
        );
        assert!(a.events.iter().all(|b| b.num_rows() <= 500));
    }
}
