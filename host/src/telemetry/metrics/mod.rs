//! Prometheus metrics, served at `GET /metrics` on the admin listener in the Prometheus text format
//! (the `prometheus` crate does the exposition; `promtool check metrics` accepts it).
//!
//! Two kinds:
//! - per request, recorded by the `metrics` filter's `on_done` (after `usage`, so tokens are
//!   known): requests by route, upstream, status class and outcome; request duration and time to
//!   first byte (OpenTelemetry GenAI names and buckets); tokens per request by key name, upstream,
//!   model and type;
//! - read at each scrape from what the gateway already counts (no work on the request path):
//!   upstream in-flight, health and cooldown; plugin calls, failures, breaker openings and
//!   refusals; store fallbacks, failsafe decisions and dropped writes; config reloads; process
//!   memory, CPU and file descriptors.
//!
//! Label values are bounded: routes, upstreams, plugins and key *names* come from the config; a
//! model name comes from the client, so only the first [`MAX_MODELS`] distinct names get their
//! own label value and later ones count as `other`. No IP, key id or path is ever a label.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::pipeline::route::Runtime;
use crate::state::Stores;

mod filter;
mod scrape;

pub(crate) use filter::MetricsFilter;
use scrape::{Scraped, plugin_call_times};

const NO_LABELS: [&str; 0] = [];

/// Distinct model names that get their own label value.
pub const MAX_MODELS: usize = 64;

pub(crate) use crate::fs_watch::Reloads;

/// The request-path metrics and the registry they are exposed from.
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// Answers the gateway gave itself (refusals, limits, failures), by route and error code.
    refusals: IntCounterVec,
    duration: HistogramVec,
    first_token: HistogramVec,
    tokens: HistogramVec,
    models: Mutex<HashSet<String>>,
    pub(crate) reloads: Arc<Reloads>,
    /// The data listener's certificate reloads, once a TLS listener serves this gateway.
    pub(crate) tls_reloads: OnceLock<Arc<Reloads>>,
    /// Also serialises scrapes (the read-at-scrape values are reset and set).
    scraped: Mutex<Scraped>,
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are constants that differ from each other: registering cannot fail.
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    registered(
        r,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    registered(
        r,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    (0..count).map(|i| start * factor.powi(i as i32)).collect()
}

impl Metrics {
    /// The registry with every family.
    pub(crate) fn new() -> Arc<Self> {
        let r = Registry::new();
        let requests = counter_vec(
            &r,
            "tollgate_requests_total",
            "Requests that reached the pipeline, by route, upstream, status class and outcome",
            &["route", "upstream", "status_class", "outcome"],
        );
        let refusals = counter_vec(
            &r,
            "tollgate_gateway_errors_total",
            "Requests the gateway answered itself or ended, by route and error code (e.g. rate_limit_exceeded, ip_denied, invalid_api_key, token_limit_exceeded)",
            &["route", "code"],
        );
        let timing = ["route", "upstream"];
        let duration = histogram_vec(
            &r,
            "gen_ai_server_request_duration_seconds",
            "Time from the request's arrival until its answer ended",
            &timing,
            // gen_ai.server.request.duration: 0.01 s ... 81.92 s, doubling.
            exponential(0.01, 2.0, 14),
        );
        let first_token = histogram_vec(
            &r,
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request's arrival until the first byte of an upstream's answer went out",
            &timing,
            vec![
                0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0,
            ],
        );
        let tokens = histogram_vec(
            &r,
            "gen_ai_client_token_usage",
            "Tokens per request as the upstream reported them, by key name, upstream, model and type",
            &["key", "upstream", "model", "type"],
            // gen_ai.client.token.usage: 1, 4, 16, ... 67108864.
            exponential(1.0, 4.0, 14),
        );
        let up = ["upstream"];
        let plugin = ["plugin"];
        let scraped = Scraped {
            upstream_in_flight: gauge_vec(
                &r,
                "tollgate_upstream_in_flight",
                "Requests in flight on the upstream, bodies included",
                &up,
            ),
            upstream_healthy: gauge_vec(
                &r,
                "tollgate_upstream_healthy",
                "1 while the upstream is in selection (passive health), 0 while it is marked down",
                &up,
            ),
            upstream_cooldown: gauge_vec(
                &r,
                "tollgate_upstream_cooldown_seconds",
                "Seconds left of the upstream's all-models cooldown (quota policy), 0 if none",
                &up,
            ),
            plugin: [
                counter_vec(
                    &r,
                    "tollgate_plugin_calls_total",
                    "Calls into the loaded version of the plugin",
                    &plugin,
                ),
                counter_vec(
                    &r,
                    "tollgate_plugin_failures_total",
                    "Calls that trapped, ran out of time or memory, or could not start",
                    &plugin,
                ),
                counter_vec(
                    &r,
                    "tollgate_plugin_breaker_openings_total",
                    "Times the plugin's circuit breaker opened",
                    &plugin,
                ),
                counter_vec(
                    &r,
                    "tollgate_plugin_rejected_total",
                    "Calls refused without running: breaker open or concurrency limit",
                    &plugin,
                ),
                counter_vec(
                    &r,
                    "tollgate_plugin_traps_total",
                    "Failures that were traps (panic, unreachable, out of memory)",
                    &plugin,
                ),
                counter_vec(
                    &r,
                    "tollgate_plugin_timeouts_total",
                    "Failures that ran past the plugin's deadline",
                    &plugin,
                ),
            ],
            shadow: counter_vec(
                &r,
                "tollgate_plugin_shadow_decisions_total",
                "Shadow evaluation (routes[].shadow): the candidate's decisions compared with the live policy's, by outcome: agree, disagree, error (the candidate's call failed), skipped (too many candidate calls running)",
                &["route", "live", "candidate", "outcome"],
            ),
            model_cooldown: gauge_vec(
                &r,
                "tollgate_upstream_model_cooldown_seconds",
                "Seconds left of the upstream's cooldown for one model (quota policy or operator)",
                &["upstream", "model"],
            ),
            store: [
                counter_vec(
                    &r,
                    "tollgate_store_cache_fallbacks_total",
                    "Cache operations that failed and fell back to the database or the in-process cache",
                    &[],
                ),
                counter_vec(
                    &r,
                    "tollgate_store_failsafe_decisions_total",
                    "Requests decided by storage.failsafe because the stores could not answer",
                    &[],
                ),
                counter_vec(
                    &r,
                    "tollgate_store_writes_dropped_total",
                    "Usage, intercept and token records dropped because the write queue was full",
                    &[],
                ),
                counter_vec(
                    &r,
                    "tollgate_binding_first_uses_total",
                    "Keys bound to a network on their first use by this gateway",
                    &[],
                ),
                counter_vec(
                    &r,
                    "tollgate_intercepts_total",
                    "Requests refused by IP binding (wrong network, banned key) and logged",
                    &[],
                ),
                counter_vec(
                    &r,
                    "tollgate_store_flush_failures_total",
                    "Batches of usage, token or intercept records the writer failed to write (kept and retried)",
                    &[],
                ),
            ],
            reloads: counter_vec(
                &r,
                "tollgate_config_reloads_total",
                "Config reloads, by result (a failed one leaves the running config in service)",
                &["result"],
            ),
            tls_reloads: counter_vec(
                &r,
                "tollgate_tls_certificate_reloads_total",
                "Reloads of the TLS certificate after its files changed, by result (a failed one keeps the current certificate)",
                &["result"],
            ),
            rss: gauge_vec(
                &r,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                &[],
            ),
            fds: gauge_vec(
                &r,
                "process_open_fds",
                "Number of open file descriptors",
                &[],
            ),
            start: gauge_vec(
                &r,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                &[],
            ),
            cpu: registered(
                &r,
                prometheus::CounterVec::new(
                    Opts::new(
                        "process_cpu_seconds_total",
                        "Total user and system CPU time spent in seconds",
                    ),
                    &[],
                )
                .expect("valid metric"),
            ),
        };
        Arc::new(Self {
            registry: r,
            requests,
            refusals,
            duration,
            first_token,
            tokens,
            models: Mutex::new(HashSet::new()),
            reloads: Arc::new(Reloads::default()),
            tls_reloads: OnceLock::new(),
            scraped: Mutex::new(scraped),
        })
    }

    /// The exposition text (Prometheus text format 0.0.4), with the read-at-scrape values taken
    /// now from `rt` (the running snapshot) and `stores`.
    pub(crate) fn encode(&self, rt: &Runtime, stores: &Stores) -> String {
        let scraped = self.scraped.lock().unwrap_or_else(|p| p.into_inner());
        scraped.read(rt, stores, &self.reloads, self.tls_reloads.get());
        scraped.model_cooldown.reset();
        let now = crate::state::unix_ms();
        for u in &rt.upstreams {
            for (model, until) in u.cooldowns() {
                if let Some(m) = model {
                    scraped
                        .model_cooldown
                        .with_label_values(&[&*u.name, self.model_label(&m)])
                        .set(until.saturating_sub(now) as f64 / 1000.0);
                }
            }
        }
        let mut families = self.registry.gather();
        // The encoder refuses a family without series (no plugin loaded).
        if !rt.plugins.is_empty() {
            families.push(plugin_call_times(rt));
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// `model` as a label value: itself while fewer than [`MAX_MODELS`] names were seen.
    fn model_label<'a>(&self, model: &'a str) -> &'a str {
        let mut seen = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(model) {
            return model;
        }
        if seen.len() < MAX_MODELS {
            seen.insert(model.to_owned());
            return model;
        }
        "other"
    }
}
