//! Prometheus metrics, served as text at `GET /metrics` on the admin listener
//! (`prometheus-client` does the exposition).
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::gateway::Gateway;
use crate::pipeline::{Ctx, Filter, Hooks};

/// Distinct model names that get their own label value.
pub const MAX_MODELS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    upstream: String,
    status_class: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimingLabels {
    route: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    key: String,
    upstream: String,
    model: String,
    #[prometheus(flatten)]
    kind: TokenType,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenType {
    r#type: &'static str,
}

/// The request-path metrics and the registry they are exposed from.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<TimingLabels, Histogram>,
    first_token: Family<TimingLabels, Histogram>,
    tokens: Family<TokenLabels, Histogram>,
    models: Mutex<HashSet<String>>,
    pub(crate) reloads: Arc<Reloads>,
    gateway: Arc<OnceLock<Weak<Gateway>>>,
}

/// Config reloads by result.
#[derive(Debug, Default)]
pub(crate) struct Reloads {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn duration_histogram() -> Histogram {
    // gen_ai.server.request.duration: 0.01 s … 81.92 s, doubling.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

fn first_token_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ])
}

fn token_histogram() -> Histogram {
    // gen_ai.client.token.usage: 1, 4, 16, … 67108864.
    Histogram::new(exponential_buckets(1.0, 4.0, 14))
}

impl Metrics {
    /// The registry with every family; [`Metrics::attach`] gives it the gateway whose counters it
    /// reads at scrape time.
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tollgate_requests",
            "Requests that reached the pipeline, by route, upstream, status class and outcome",
            requests.clone(),
        );
        let duration = Family::<TimingLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "gen_ai_server_request_duration_seconds",
            "Time from the request's arrival until its answer ended",
            duration.clone(),
        );
        let first_token = Family::<TimingLabels, Histogram>::new_with_constructor(
            first_token_histogram as fn() -> Histogram,
        );
        registry.register(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request's arrival until the first byte of the answer's body was sent",
            first_token.clone(),
        );
        let tokens = Family::<TokenLabels, Histogram>::new_with_constructor(
            token_histogram as fn() -> Histogram,
        );
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens per request as the upstream reported them, by key name, upstream, model and type",
            tokens.clone(),
        );
        let reloads = Arc::new(Reloads::default());
        let gateway = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(GatewayCollector {
            gateway: gateway.clone(),
            reloads: reloads.clone(),
        }));
        Arc::new(Self {
            registry,
            requests,
            duration,
            first_token,
            tokens,
            models: Mutex::new(HashSet::new()),
            reloads,
            gateway,
        })
    }

    pub(crate) fn attach(&self, gateway: &Arc<Gateway>) {
        let _ = self.gateway.set(Arc::downgrade(gateway));
    }

    /// The exposition text (Prometheus/OpenMetrics text format).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// `model` as a label value: itself while fewer than [`MAX_MODELS`] names were seen.
    fn model_label(&self, model: &str) -> String {
        let mut seen = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(model) {
            return model.to_owned();
        }
        if seen.len() < MAX_MODELS {
            seen.insert(model.to_owned());
            return model.to_owned();
        }
        "other".to_owned()
    }
}

/// Reads the gateway's own counters at each scrape.
#[derive(Debug)]
struct GatewayCollector {
    gateway: Arc<OnceLock<Weak<Gateway>>>,
    reloads: Arc<Reloads>,
}

/// One scrape's values, taken before encoding.
#[derive(Debug)]
struct Snapshot {
    upstreams: Vec<(String, u64, bool, u64)>,
    plugins: Vec<(String, [u64; 4])>,
    store: [u64; 3],
    reloads: [u64; 2],
    process: Option<Process>,
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

fn snapshot(gateway: &Gateway, reloads: &Reloads) -> Snapshot {
        let rt = gateway.runtime();
        let now = crate::state::unix_ms();
        let stats = &gateway.stores.stats;
        Snapshot {
            upstreams: rt
                .upstreams
                .iter()
                .map(|u| {
                    let cooling_ms = u.cooling_until(None).saturating_sub(now);
                    (
                        u.name.to_string(),
                        u64::from(u.in_flight()),
                        u.is_healthy(),
                        cooling_ms,
                    )
                })
                .collect(),
            plugins: rt
                .plugins
                .iter()
                .map(|p| {
                    let s = &p.stats;
                    (
                        p.spec.name.to_string(),
                        [
                            s.calls.load(Ordering::Relaxed),
                            s.failures.load(Ordering::Relaxed),
                            s.breaker_opened.load(Ordering::Relaxed),
                            s.rejected.load(Ordering::Relaxed),
                        ],
                    )
                })
                .collect(),
            store: [
                stats.cache_fallbacks.load(Ordering::Relaxed),
                stats.failsafe.load(Ordering::Relaxed),
                stats.queue_full.load(Ordering::Relaxed),
            ],
            reloads: [
                reloads.ok.load(Ordering::Relaxed),
                reloads.failed.load(Ordering::Relaxed),
            ],
            process: process(),
        }
    }


fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    if let [(labels, value)] = rows && labels.is_empty() {
        return ConstCounter::new(*value).encode(family);
    }
    for (labels, value) in rows {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(&[(&str, &str)], f64)],
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(0f64);
    let mut family = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    if let [(labels, value)] = rows && labels.is_empty() {
        return ConstGauge::new(*value).encode(family);
    }
    for (labels, value) in rows {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for GatewayCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(gateway) = self.gateway.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        let snap = snapshot(&gateway, &self.reloads);
        let s = &snap;
        let by_upstream = |f: &dyn Fn(&(String, u64, bool, u64)) -> f64| {
            s.upstreams
                .iter()
                .map(|u| (u.0.as_str(), f(u)))
                .collect::<Vec<_>>()
        };
        for (name, help, values) in [
            (
                "tollgate_upstream_in_flight",
                "Requests in flight on the upstream, bodies included",
                by_upstream(&|u| u.1 as f64),
            ),
            (
                "tollgate_upstream_healthy",
                "1 while the upstream is in selection (passive health), 0 while it is marked down",
                by_upstream(&|u| f64::from(u8::from(u.2))),
            ),
            (
                "tollgate_upstream_cooldown_seconds",
                "Seconds left of the upstream's all-models cooldown (quota policy), 0 if none",
                by_upstream(&|u| u.3 as f64 / 1000.0),
            ),
        ] {
            let rows: Vec<(&[(&str, &str)], f64)> = Vec::new();
            let labels: Vec<[(&str, &str); 1]> =
                values.iter().map(|(n, _)| [("upstream", *n)]).collect();
            let mut rows = rows;
            for (l, (_, v)) in labels.iter().zip(&values) {
                rows.push((l.as_slice(), *v));
            }
            gauge(&mut e, name, help, &rows)?;
        }
        for (i, (name, help)) in [
            ("tollgate_plugin_calls", "Calls into the plugin (current and earlier versions of this config)"),
            ("tollgate_plugin_failures", "Calls that trapped, ran out of time or memory, or could not start"),
            ("tollgate_plugin_breaker_openings", "Times the plugin's circuit breaker opened"),
            ("tollgate_plugin_rejected", "Calls refused without running: breaker open or concurrency limit"),
        ]
        .into_iter()
        .enumerate()
        {
            let labels: Vec<[(&str, &str); 1]> =
                s.plugins.iter().map(|(n, _)| [("plugin", n.as_str())]).collect();
            let rows: Vec<(&[(&str, &str)], u64)> = labels
                .iter()
                .zip(&s.plugins)
                .map(|(l, (_, v))| (l.as_slice(), v[i]))
                .collect();
            counter(&mut e, name, help, &rows)?;
        }
        counter(
            &mut e,
            "tollgate_store_cache_fallbacks",
            "Cache operations that failed and fell back to the database or the in-process cache",
            &[(&[], s.store[0])],
        )?;
        counter(
            &mut e,
            "tollgate_store_failsafe_decisions",
            "Requests decided by storage.failsafe because the stores could not answer",
            &[(&[], s.store[1])],
        )?;
        counter(
            &mut e,
            "tollgate_store_writes_dropped",
            "Usage, intercept and token records dropped because the write queue was full",
            &[(&[], s.store[2])],
        )?;
        counter(
            &mut e,
            "tollgate_config_reloads",
            "Config reloads, by result (a failed one leaves the running config in service)",
            &[(&[("result", "ok")], s.reloads[0]), (&[("result", "failed")], s.reloads[1])],
        )?;
        if let Some(p) = &s.process {
            gauge(&mut e, "process_resident_memory_bytes", "Resident memory", &[(&[], p.rss_bytes as f64)])?;
            gauge(&mut e, "process_open_fds", "Open file descriptors", &[(&[], p.open_fds as f64)])?;
            gauge(
                &mut e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch",
                &[(&[], p.start_time_seconds)],
            )?;
            let c = prometheus_client::metrics::counter::ConstCounter::new(p.cpu_seconds);
            let fam = e.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time",
                None,
                c.metric_type(),
            )?;
            c.encode(fam)?;
        }
        Ok(())
    }
}

/// The `metrics` filter: counts each request when it ends. Hook: `on_done`.
pub(crate) struct MetricsFilter {
    pub(crate) metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl Filter for MetricsFilter {
    fn name(&self) -> &str {
        "metrics"
    }

    fn hooks(&self) -> Hooks {
        Hooks::DONE
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let r = &ctx.record;
        let m = &self.metrics;
        let route = r.route.as_deref().unwrap_or("").to_owned();
        let upstream = r.upstream.as_deref().unwrap_or("").to_owned();
        let status_class = match r.status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        m.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                upstream: upstream.clone(),
                status_class,
                outcome: r.outcome.as_str(),
            })
            .inc();
        let timing = TimingLabels {
            route,
            upstream: upstream.clone(),
        };
        m.duration
            .get_or_create(&timing)
            .observe(r.start.elapsed().as_secs_f64());
        if let Some(first) = r.first_byte
            && r.error.is_none()
        {
            m.first_token.get_or_create(&timing).observe(first.as_secs_f64());
        }
        if let Some(t) = r.tokens {
            let key = r.key_name.as_deref().unwrap_or("").to_owned();
            let model = m.model_label(r.model.as_deref().unwrap_or(""));
            for (kind, n) in [("input", t.tokens.input), ("output", t.tokens.output)] {
                m.tokens
                    .get_or_create(&TokenLabels {
                        key: key.clone(),
                        upstream: upstream.clone(),
                        model: model.clone(),
                        kind: TokenType { r#type: kind },
                    })
                    .observe(n as f64);
            }
        }
    }
}
