//! `telemetry`: OpenTelemetry traces over OTLP/HTTP (docs/tracing.md).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Duration, Secret, UpstreamUrl};
use crate::Errors;

/// `telemetry`: where traces go. Follows a reload.
#[derive(Debug, Deserialize, serde::Serialize, Clone, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export one span per request (with a child per upstream attempt and per policy call) to
    /// an OTLP/HTTP collector. Unset: no traces.
    pub otlp: Option<OtlpConfig>,
}

/// `telemetry.otlp`.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://otel-collector:4318/v1/traces`
    /// (protobuf is sent).
    pub endpoint: UpstreamUrl,
    /// Headers sent with every export, e.g. an API key: `{x-honeycomb-team: "${KEY}"}`.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// The share of traces the gateway starts that are exported, from 0 to 1 (a trusted peer's
    /// sampled flag is followed instead).
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "service")]
    pub service_name: String,
    /// Spans waiting for export; past it new ones are dropped (and counted).
    #[serde(default = "queue")]
    pub max_queue: usize,
    /// Longest an export may take before it counts as failed (its spans are dropped).
    #[serde(default = "timeout")]
    pub timeout: Duration,
}

fn one() -> f64 {
    1.0
}

fn service() -> String {
    "tollgate".into()
}

fn queue() -> usize {
    4096
}

fn timeout() -> Duration {
    Duration::secs(5)
}

pub(crate) fn validate(c: &super::Config, e: &mut Errors) {
    let Some(o) = &c.telemetry.otlp else {
        return;
    };
    if !(0.0..=1.0).contains(&o.sample_ratio) {
        e.add("telemetry.otlp.sample_ratio", "must be from 0 to 1");
    }
    if o.max_queue == 0 {
        e.add("telemetry.otlp.max_queue", "must be greater than 0");
    }
    if o.timeout.get().is_zero() {
        e.add("telemetry.otlp.timeout", "must be greater than 0");
    }
    for name in o.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            e.add(
                format!("telemetry.otlp.headers.{name}"),
                "is not a valid header name",
            );
        }
    }
}
