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

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};
use rustc_hash::FxHasher;

use crate::pipeline::route::Runtime;
use crate::pipeline::session::Tokens;
use crate::pipeline::{Ctx, Filter, Hooks, Outcome};
use crate::state::Stores;

const NO_LABELS: [&str; 0] = [];

/// Distinct model names that get their own label value.
pub const MAX_MODELS: usize = 64;

pub(crate) use crate::fs_watch::Reloads;

/// The gauges and counters read from the gateway at each scrape.
struct Scraped {
    upstream_in_flight: GaugeVec,
    upstream_healthy: GaugeVec,
    upstream_cooldown: GaugeVec,
    plugin: [IntCounterVec; 6],
    /// Shadow comparisons by route, live policy, candidate and outcome.
    shadow: IntCounterVec,
    store: [IntCounterVec; 6],
    /// Per-model cooldowns (the all-models one is `upstream_cooldown`).
    model_cooldown: GaugeVec,
    reloads: IntCounterVec,
    /// Reloads of the data listener's certificate after its files changed, by result.
    tls_reloads: IntCounterVec,
    rss: GaugeVec,
    fds: GaugeVec,
    start: GaugeVec,
    cpu: prometheus::CounterVec,
}

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

/// `tollgate_plugin_call_duration_seconds{plugin}`: a histogram read from each loaded plugin's
/// call-time buckets (the policy runtime counts them; one atomic add per call).
fn plugin_call_times(rt: &Runtime) -> prometheus::proto::MetricFamily {
    use prometheus::proto;
    use tollgate_policy::{CALL_BUCKETS, CallTimes};
    let mut family = proto::MetricFamily::default();
    family.set_name("tollgate_plugin_call_duration_seconds".into());
    family.set_help("Time one call into the plugin took, instance checkout to checkin".into());
    family.set_field_type(proto::MetricType::HISTOGRAM);
    let metrics = rt
        .plugins
        .iter()
        .map(|p| {
            let t = &p.stats.call_time;
            let counts = t.counts();
            let mut cumulative = 0;
            let buckets = (0..CALL_BUCKETS - 1)
                .map(|i| {
                    cumulative += counts[i];
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(CallTimes::upper_secs(i));
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            let mut h = proto::Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_count(counts.iter().sum());
            h.set_sample_sum(t.sum_secs());
            let mut label = proto::LabelPair::default();
            label.set_name("plugin".into());
            label.set_value(p.spec.name.to_string());
            let mut m = proto::Metric::from_label(vec![label]);
            m.set_histogram(h);
            m
        })
        .collect();
    family.set_metric(metrics);
    family
}

/// Sets a counter that mirrors a count kept elsewhere.
fn mirror(c: &prometheus::IntCounter, value: u64) {
    c.reset();
    c.inc_by(value);
}

impl Scraped {
    fn read(&self, rt: &Runtime, stores: &Stores, reloads: &Reloads, tls: Option<&Arc<Reloads>>) {
        let now = crate::state::unix_ms();
        for g in [
            &self.upstream_in_flight,
            &self.upstream_healthy,
            &self.upstream_cooldown,
        ] {
            g.reset();
        }
        for u in &rt.upstreams {
            let l = [&*u.name];
            self.upstream_in_flight
                .with_label_values(&l)
                .set(f64::from(u.in_flight()));
            self.upstream_healthy
                .with_label_values(&l)
                .set(f64::from(u8::from(u.is_healthy())));
            self.upstream_cooldown
                .with_label_values(&l)
                .set(u.cooling_until(None).saturating_sub(now) as f64 / 1000.0);
        }
        for c in &self.plugin {
            c.reset();
        }
        for p in &rt.plugins {
            let s = &p.stats;
            let l = [&*p.spec.name];
            for (c, v) in self.plugin.iter().zip([
                &s.calls,
                &s.failures,
                &s.breaker_opened,
                &s.rejected,
                &s.traps,
                &s.timeouts,
            ]) {
                mirror(&c.with_label_values(&l), v.load(Ordering::Relaxed));
            }
        }
        self.shadow.reset();
        for sh in &rt.shadows {
            let st = &sh.stats;
            for (outcome, v) in [
                ("agree", &st.agree),
                ("disagree", &st.disagree),
                ("error", &st.errors),
                ("skipped", &st.skipped),
            ] {
                let l = [&*sh.route, &*sh.live, &*sh.candidate.spec.name, outcome];
                mirror(
                    &self.shadow.with_label_values(&l),
                    v.load(Ordering::Relaxed),
                );
            }
        }
        let stats = &stores.stats;
        for (c, v) in self.store.iter().zip([
            &stats.cache_fallbacks,
            &stats.failsafe,
            &stats.queue_full,
            &stats.first_uses,
            &stats.intercepts,
            &stats.flush_failures,
        ]) {
            mirror(&c.with_label_values(&NO_LABELS), v.load(Ordering::Relaxed));
        }
        mirror(
            &self.reloads.with_label_values(&["ok"]),
            reloads.ok.load(Ordering::Relaxed),
        );
        mirror(
            &self.reloads.with_label_values(&["failed"]),
            reloads.failed.load(Ordering::Relaxed),
        );
        if let Some(tls) = tls {
            for (result, n) in [("ok", &tls.ok), ("failed", &tls.failed)] {
                mirror(
                    &self.tls_reloads.with_label_values(&[result]),
                    n.load(Ordering::Relaxed),
                );
            }
        }
        if let Some(p) = process() {
            self.rss
                .with_label_values(&NO_LABELS)
                .set(p.rss_bytes as f64);
            self.fds
                .with_label_values(&NO_LABELS)
                .set(p.open_fds as f64);
            self.start
                .with_label_values(&NO_LABELS)
                .set(p.start_time_seconds);
            let cpu = self.cpu.with_label_values(&NO_LABELS);
            cpu.reset();
            cpu.inc_by(p.cpu_seconds);
        }
    }
}

#[derive(Debug)]
struct Process {
    rss_bytes: u64,
    cpu_seconds: f64,
    open_fds: u64,
    start_time_seconds: f64,
}

fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(Process {
        rss_bytes: rss_pages * 4096,
        cpu_seconds: (utime + stime) / ticks,
        open_fds,
        start_time_seconds: boot + start_ticks / ticks,
    })
}

/// Status classes and outcomes: the `tollgate_requests_total` series of one route × upstream.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const OUTCOMES: [Outcome; 5] = [
    Outcome::Complete,
    Outcome::ClientAborted,
    Outcome::UpstreamAborted,
    Outcome::Refused,
    Outcome::Cut,
];

type Map<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// Input and output token histograms by key name, then model label.
type TokenSeries = Map<Box<str>, Map<Box<str>, [Histogram; 2]>>;

/// The request-path series of one route × upstream, resolved once per config so a request looks
/// up one entry instead of hashing its label values into each family.
struct Series {
    route: Box<str>,
    upstream: Box<str>,
    duration: Histogram,
    first_token: Histogram,
    /// By status class × outcome, created on first use (so unused ones are not exposed).
    requests: [OnceLock<IntCounter>; STATUS_CLASSES.len() * OUTCOMES.len()],
    /// Input and output token histograms by key name, then model label.
    tokens: RwLock<TokenSeries>,
}

impl Series {
    fn new(m: &Metrics, route: &str, upstream: &str) -> Self {
        let timing = [route, upstream];
        Self {
            route: route.into(),
            upstream: upstream.into(),
            duration: m.duration.with_label_values(&timing),
            first_token: m.first_token.with_label_values(&timing),
            requests: Default::default(),
            tokens: RwLock::default(),
        }
    }

    fn requests(&self, m: &Metrics, class: usize, outcome: Outcome) -> &IntCounter {
        let o = OUTCOMES.iter().position(|&x| x == outcome).unwrap_or(0);
        self.requests[class * OUTCOMES.len() + o].get_or_init(|| {
            m.requests.with_label_values(&[
                &*self.route,
                &*self.upstream,
                STATUS_CLASSES[class],
                outcome.as_str(),
            ])
        })
    }

    fn observe_tokens(&self, m: &Metrics, key: &str, model: &str, t: Tokens) {
        let observe = |h: &[Histogram; 2]| {
            h[0].observe(t.input as f64);
            h[1].observe(t.output as f64);
        };
        {
            let known = self.tokens.read().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = known.get(key).and_then(|by_model| by_model.get(model)) {
                return observe(h);
            }
        }
        let label = m.model_label(model);
        let h = ["input", "output"].map(|kind| {
            m.tokens
                .with_label_values(&[key, &*self.upstream, label, kind])
        });
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
    metrics: Arc<Metrics>,
    /// By route prefix, then upstream name (`""` for none).
    series: Map<Box<str>, Map<Box<str>, Series>>,
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
            m.refusals.with_label_values(&[route, code]).inc();
        }
        series.duration.observe(r.start.elapsed().as_secs_f64());
        if let Some(first) = r.first_byte
            && r.error.is_none()
        {
            series.first_token.observe(first.as_secs_f64());
        }
        if let Some(t) = r.tokens {
            let key = r.key.as_ref().map_or("", |k| &*k.name);
            series.observe_tokens(m, key, r.model.as_deref().unwrap_or(""), t.tokens);
        }
    }
}
