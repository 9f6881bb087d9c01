//! The `metrics` filter: each request's outcome, latency, time to first token and tokens, into
//! series resolved once per config.

use super::Metrics;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, Registry};
use rustc_hash::FxHasher;

use super::families::{counter_vec, exponential, histogram_vec};

use crate::pipeline::session::Tokens;
use crate::pipeline::{Ctx, Filter, Hooks, Outcome};

/// The families the filter records into, registered with it.
pub(super) struct RequestFamilies {
    requests: IntCounterVec,
    /// Answers the gateway gave itself (refusals, limits, failures), by route, error code and
    /// what gave them.
    refusals: IntCounterVec,
    /// Upstream attempts another one followed, by route, upstream and why.
    failovers: IntCounterVec,
    duration: HistogramVec,
    first_token: HistogramVec,
    tokens: HistogramVec,
    /// Spend in `pricing.currency`, by key name, upstream and model.
    spend: prometheus::CounterVec,
}

impl RequestFamilies {
    pub(super) fn register(r: &Registry) -> Self {
        let timing = ["route", "upstream"];
        Self {
            requests: counter_vec(
                r,
                "tollgate_requests_total",
                "Requests that reached the pipeline, by route, upstream, status class and outcome",
                &["route", "upstream", "status_class", "outcome"],
            ),
            refusals: counter_vec(
                r,
                "tollgate_gateway_errors_total",
                "Requests the gateway answered itself or ended, by route, error code (e.g. rate_limit_exceeded, ip_denied, invalid_api_key, token_limit_exceeded) and what answered (auth, limits:NAME, plugin:NAME, ...)",
                &["route", "code", "answered_by"],
            ),
            failovers: counter_vec(
                r,
                "tollgate_upstream_failovers_total",
                "Upstream attempts the gateway moved on from to the next upstream, by route, upstream and reason (upstream_unavailable, upstream_error, retry)",
                &["route", "upstream", "reason"],
            ),
            duration: histogram_vec(
                r,
                "gen_ai_server_request_duration_seconds",
                "Time from the request's arrival until its answer ended",
                &timing,
                // gen_ai.server.request.duration: 0.01 s ... 81.92 s, doubling.
                exponential(0.01, 2.0, 14),
            ),
            first_token: histogram_vec(
                r,
                "gen_ai_server_time_to_first_token_seconds",
                "Time from the request's arrival until the first byte of an upstream's answer went out",
                &timing,
                vec![
                    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                    5.0, 7.5, 10.0,
                ],
            ),
            tokens: histogram_vec(
                r,
                "gen_ai_client_token_usage",
                "Tokens per request as the upstream reported them, by key name, upstream, model and type",
                &["key", "upstream", "model", "type"],
                // gen_ai.client.token.usage: 1, 4, 16, ... 67108864.
                exponential(1.0, 4.0, 14),
            ),
            spend: super::families::registered(
                r,
                prometheus::CounterVec::new(
                    prometheus::Opts::new(
                        "tollgate_spend_total",
                        "What requests cost in pricing.currency (from the reported tokens and the model's price), by key name, upstream and model",
                    ),
                    &["key", "upstream", "model"],
                )
                .expect("valid metric"),
            ),
        }
    }
}

/// Status classes and outcomes: the `tollgate_requests_total` series of one route × upstream.
pub(super) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
pub(super) const OUTCOMES: [Outcome; 5] = [
    Outcome::Complete,
    Outcome::ClientAborted,
    Outcome::UpstreamAborted,
    Outcome::Refused,
    Outcome::Cut,
];

pub(super) type Map<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// Input and output token histograms by key name, then model label.
pub(super) type TokenSeries = Map<Box<str>, Map<Box<str>, KeyModel>>;

/// One key × model's series of a route × upstream.
pub(super) struct KeyModel {
    input: Histogram,
    output: Histogram,
    spend: prometheus::Counter,
}

/// The request-path series of one route × upstream, resolved once per config so a request looks
/// up one entry instead of hashing its label values into each family.
pub(super) struct Series {
    pub(super) route: Box<str>,
    pub(super) upstream: Box<str>,
    pub(super) duration: Histogram,
    pub(super) first_token: Histogram,
    /// By status class × outcome, created on first use (so unused ones are not exposed).
    pub(super) requests: [OnceLock<IntCounter>; STATUS_CLASSES.len() * OUTCOMES.len()],
    /// Input and output token histograms by key name, then model label.
    pub(super) tokens: RwLock<TokenSeries>,
}

impl Series {
    pub(super) fn new(m: &Metrics, route: &str, upstream: &str) -> Self {
        let timing = [route, upstream];
        Self {
            route: route.into(),
            upstream: upstream.into(),
            duration: m.request.duration.with_label_values(&timing),
            first_token: m.request.first_token.with_label_values(&timing),
            requests: Default::default(),
            tokens: RwLock::default(),
        }
    }

    pub(super) fn requests(&self, m: &Metrics, class: usize, outcome: Outcome) -> &IntCounter {
        let o = OUTCOMES.iter().position(|&x| x == outcome).unwrap_or(0);
        self.requests[class * OUTCOMES.len() + o].get_or_init(|| {
            m.request.requests.with_label_values(&[
                &*self.route,
                &*self.upstream,
                STATUS_CLASSES[class],
                outcome.as_str(),
            ])
        })
    }

    pub(super) fn observe_tokens(
        &self,
        m: &Metrics,
        key: &str,
        model: &str,
        t: Tokens,
        cost_nanos: Option<u64>,
    ) {
        let observe = |h: &KeyModel| {
            h.input.observe(t.input as f64);
            h.output.observe(t.output as f64);
            if let Some(c) = cost_nanos {
                h.spend.inc_by(crate::config::from_nanos(c));
            }
        };
        {
            let known = self.tokens.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = known.get(key).and_then(|by_model| by_model.get(model)) {
                return observe(h);
            }
        }
        let label = m.models.label(model);
        let f = &m.request;
        let h = KeyModel {
            input: f
                .tokens
                .with_label_values(&[key, &*self.upstream, label, "input"]),
            output: f
                .tokens
                .with_label_values(&[key, &*self.upstream, label, "output"]),
            spend: f.spend.with_label_values(&[key, &*self.upstream, label]),
        };
        observe(&h);
        // Only admitted names are kept (an `other` model is looked up each time: past the cap).
        if label == model {
            let mut known = self.tokens.write().unwrap_or_else(|p| p.into_inner());
            known.entry(key.into()).or_default().insert(model.into(), h);
        }
    }
}

/// The `metrics` filter: counts each request when it ends. Hook: `on_done`.
pub(crate) struct MetricsFilter {
    pub(super) metrics: Arc<Metrics>,
    /// By route prefix, then upstream name (`""` for none).
    pub(super) series: Map<Box<str>, Map<Box<str>, Series>>,
}

impl MetricsFilter {
    /// The filter for one config: a series for each route × its upstreams (and none).
    pub(crate) fn new(metrics: Arc<Metrics>, config: &crate::config::Config) -> Self {
        let mut series: Map<Box<str>, Map<Box<str>, Series>> = Map::default();
        let no_route = series.entry("".into()).or_default();
        no_route.insert("".into(), Series::new(&metrics, "", ""));
        for r in &config.routes {
            let by_upstream = series.entry(r.path_prefix.as_str().into()).or_default();
            for u in r.upstreams.iter().map(String::as_str).chain([""]) {
                by_upstream.insert(u.into(), Series::new(&metrics, &r.path_prefix, u));
            }
        }
        Self { metrics, series }
    }
}

impl Filter for MetricsFilter {
    fn name(&self) -> &str {
        "metrics"
    }

    fn hooks(&self) -> Hooks {
        Hooks::DONE
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let r = &ctx.record;
        let m = &*self.metrics;
        let route = r.route.as_deref().unwrap_or("");
        let upstream = r.upstream.as_deref().unwrap_or("");
        let fallback;
        let series = match self.series.get(route).and_then(|u| u.get(upstream)) {
            Some(s) => s,
            None => {
                // Not in the config this filter was built for: resolved now.
                fallback = Series::new(m, route, upstream);
                &fallback
            }
        };
        let class = (usize::from(r.status / 100)).clamp(1, 5) - 1;
        series.requests(m, class, r.outcome).inc();
        if let Some(code) = r.error {
            let by = r.answered_by.as_deref().unwrap_or("");
            m.request
                .refusals
                .with_label_values(&[route, code, by])
                .inc();
        }
        if let [tried @ .., _] = &r.attempt_log[..] {
            for a in tried {
                let reason = a.error.unwrap_or("");
                m.request
                    .failovers
                    .with_label_values(&[route, &a.upstream, reason])
                    .inc();
            }
        }
        series.duration.observe(r.took.as_secs_f64());
        if let Some(first) = r.first_byte
            && r.error.is_none()
        {
            series.first_token.observe(first.as_secs_f64());
        }
        if let Some(t) = r.tokens {
            let key = r.key.as_ref().map_or("", |k| &*k.name);
            series.observe_tokens(
                m,
                key,
                r.billed_model().map_or("", |m| &**m),
                t.tokens,
                r.cost_nanos,
            );
        }
    }
}
