//! Prometheus metrics, served at `GET /metrics` on the admin listener in the Prometheus text format
//! (the `prometheus` crate does the exposition; `promtool check metrics` accepts it).
//!
//! Two kinds, each registered by the code that records it:
//! - per request (`filter.rs`), recorded by the `metrics` filter's `on_done` (after `usage`, so
//!   tokens are known): requests by route, upstream, status class and outcome; request duration
//!   and time to first byte (OpenTelemetry GenAI names and buckets); tokens per request by key
//!   name, upstream, model and type;
//! - read at each scrape (`sources/`, one [`Source`] per feature) from what the gateway already
//!   counts (no work on the request path): upstream in-flight, health and cooldown; plugin calls,
//!   failures, breaker openings and refusals; store fallbacks, failsafe decisions and dropped
//!   writes; config reloads; process memory, CPU and file descriptors.
//!
//! Label values are bounded: routes, upstreams, plugins and key *names* come from the config; a
//! model name comes from the client, so only the first [`MAX_MODELS`] distinct names get their
//! own label value and later ones count as `other`. No IP, key id or path is ever a label.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::{Encoder, Registry, TextEncoder};

use crate::pipeline::route::Runtime;
use crate::state::Stores;

mod families;
mod filter;
mod sources;

pub(crate) use filter::MetricsFilter;
use filter::RequestFamilies;

/// Distinct model names that get their own label value.
pub const MAX_MODELS: usize = 64;

pub(crate) use crate::fs_watch::Reloads;

/// What a [`Source`] reads from at a scrape.
pub(crate) struct Scrape<'a> {
    /// The running snapshot.
    pub(crate) rt: &'a Runtime,
    pub(crate) stores: &'a Stores,
    pub(crate) reloads: &'a Reloads,
    /// The data listener's certificate reloads, when it serves TLS.
    pub(crate) tls_reloads: Option<&'a Reloads>,
    pub(crate) models: &'a ModelLabels,
    pub(crate) now_ms: u64,
}

/// One feature's read-at-scrape series: registered once (its `register` in `sources/`), set at
/// each scrape from the counts the feature keeps.
pub(crate) trait Source: Send + Sync {
    /// Sets the series from `at`. Scrapes are serialised, so a reset-then-set is never seen half
    /// done.
    fn read(&self, at: &Scrape<'_>);

    /// Families built at the scrape rather than registered (a histogram read from counts kept
    /// elsewhere); none by default.
    fn families(&self, _at: &Scrape<'_>) -> Vec<prometheus::proto::MetricFamily> {
        Vec::new()
    }
}

/// Model names as label values: a model name comes from the client, so only the first
/// [`MAX_MODELS`] distinct names get their own value, later ones are `other`.
#[derive(Default)]
pub(crate) struct ModelLabels(Mutex<HashSet<String>>);

impl ModelLabels {
    /// `model` as a label value: itself while fewer than [`MAX_MODELS`] names were seen.
    pub(crate) fn label<'a>(&self, model: &'a str) -> &'a str {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
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

/// The registry, the request-path families and the read-at-scrape sources.
pub(crate) struct Metrics {
    registry: Registry,
    request: RequestFamilies,
    models: ModelLabels,
    /// Also serialises scrapes (sources reset and set their series).
    sources: Mutex<Vec<Box<dyn Source>>>,
    pub(crate) reloads: Arc<Reloads>,
    /// The data listener's certificate reloads, once a TLS listener serves this gateway.
    pub(crate) tls_reloads: OnceLock<Arc<Reloads>>,
}

impl Metrics {
    /// The registry with every family.
    pub(crate) fn new() -> Arc<Self> {
        let registry = Registry::new();
        let request = RequestFamilies::register(&registry);
        let sources = sources::SOURCES.iter().map(|s| s(&registry)).collect();
        Arc::new(Self {
            registry,
            request,
            models: ModelLabels::default(),
            sources: Mutex::new(sources),
            reloads: Arc::new(Reloads::default()),
            tls_reloads: OnceLock::new(),
        })
    }

    /// The exposition text (Prometheus text format 0.0.4), with the read-at-scrape values taken
    /// now from `rt` (the running snapshot) and `stores`.
    pub(crate) fn encode(&self, rt: &Runtime, stores: &Stores) -> String {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let at = Scrape {
            rt,
            stores,
            reloads: &self.reloads,
            tls_reloads: self.tls_reloads.get().map(|r| &**r),
            models: &self.models,
            now_ms: crate::state::unix_ms(),
        };
        for s in sources.iter() {
            s.read(&at);
        }
        let mut families = self.registry.gather();
        families.extend(sources.iter().flat_map(|s| s.families(&at)));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
