//! The one ordered list of the filters on the request path, and how each route's chain is built
//! from it.
//!
//! Every filter file exports a `build` from the config (and, for a per-route filter, the route);
//! [`CHAIN`] lists them in the order their hooks run. An entry is either **shared** — built once
//! per config and used by every route and by the answers to unrouted requests, because it keeps
//! state across routes (rate-limit buckets, metrics series) or has no per-route setting — or
//! **per route**, built for each route from its own settings (its IP lists, its maintenance
//! flag, its policies, its `stream_usage`). An entry may build nothing (a feature left off).
//!
//! Order: the edge protection refuses cheapest first and before any plugin runs (the client's
//! address, a CORS preflight answered without a key, maintenance, the key's entitlements, budgets and own limits,
//! the limits, which count what
//! passes); then the route's policies in their configured order; then the route's stream-usage
//! rewrite (after the policies, so it sees what they left); then response decoration and
//! telemetry (the usage record before the metrics and the access log, which read its counts).
//!
//! Adding a filter is one line here, plus its file (`docs/architecture.md`, "How to add a
//! filter").

use std::sync::Arc;

use crate::config::{Config, RouteConfig};
use crate::pipeline::filters::response_headers::{ResponseHeaders, SecurityHeaders};
use crate::pipeline::filters::shadow::Shadow;
use crate::pipeline::filters::{
    access, budgets, cors, entitlements, key_limits, limits, maintenance, max_request_tokens,
    policies, pricing, request_id, stream_usage, upstream_capacity,
};
use crate::pipeline::{Chain, Filter};
use crate::policy::Plugin;
use crate::state::Stores;
use crate::telemetry::{access_log, capture, metrics, request_log, traces, usage};

/// What the entries build from: one config version and what the gateway keeps across versions.
pub(crate) struct Build<'a> {
    pub(crate) config: &'a Config,
    pub(crate) stores: &'a Arc<Stores>,
    pub(crate) metrics: &'a Arc<metrics::Metrics>,
    pub(crate) plugins: &'a [Arc<Plugin>],
    pub(crate) response_headers: &'a Arc<ResponseHeaders>,
    pub(crate) prices: &'a Arc<crate::config::PriceTable>,
}

type Filters = Vec<Arc<dyn Filter>>;

/// One place in the chain.
enum Entry {
    /// Built once per config; in every route's chain and in the chain of unrouted answers.
    Shared(fn(&Build<'_>) -> Filters),
    /// Built for each route; the shadows a route's policies carry are collected.
    PerRoute(fn(&Build<'_>, &RouteConfig, &mut Vec<Arc<Shadow>>) -> Filters),
}

fn one(f: impl Filter) -> Filters {
    vec![Arc::new(f)]
}

fn maybe<F: Filter>(f: Option<F>) -> Filters {
    f.into_iter()
        .map(|f| Arc::new(f) as Arc<dyn Filter>)
        .collect()
}

/// The filters, in the order their hooks run.
const CHAIN: &[Entry] = &[
    // Only `on_done`: first, so every later `on_done` reads the request's cost.
    Entry::Shared(|b| maybe(pricing::build(b.prices))),
    Entry::PerRoute(|b, r, _| one(access::build(b.stores, r))),
    Entry::Shared(|b| maybe(b.config.server.cors.as_ref().map(cors::Cors::new))),
    Entry::PerRoute(|b, r, _| {
        one(maintenance::Maintenance::new(
            &b.config.maintenance,
            b.stores.clone(),
            r.maintenance,
        ))
    }),
    Entry::PerRoute(|b, r, _| one(entitlements::build(b.config, r))),
    Entry::Shared(|b| one(budgets::build(b.config, b.stores, b.prices))),
    Entry::Shared(|b| one(key_limits::build(b.config, b.stores))),
    Entry::Shared(|b| maybe(limits::Limits::new(&b.config.limits, b.stores))),
    Entry::PerRoute(|b, r, _| maybe(max_request_tokens::build(b.config, r))),
    Entry::PerRoute(|b, r, shadows| policies::build(b.config, r, b.plugins, b.stores, shadows)),
    Entry::PerRoute(|_, r, _| maybe(stream_usage::build(r))),
    Entry::Shared(|b| {
        maybe((!b.response_headers.is_empty()).then(|| SecurityHeaders(b.response_headers.clone())))
    }),
    Entry::Shared(|b| {
        one(request_id::RequestIdHeader::new(
            &b.config.server.request_id_header,
        ))
    }),
    Entry::Shared(|b| one(usage::Usage::new(b.stores.clone()))),
    // Only `on_done`, and only for a request an upstream with declared limits served.
    Entry::Shared(|b| {
        maybe(
            b.config
                .upstreams
                .iter()
                .any(|u| u.limits.is_some())
                .then_some(upstream_capacity::UpstreamCapacity),
        )
    }),
    Entry::Shared(|b| one(metrics::MetricsFilter::new(b.metrics.clone(), b.config))),
    Entry::Shared(|b| maybe(b.config.logging.access_log.then_some(access_log::AccessLog))),
    Entry::Shared(|b| maybe(traces::build(b.config))),
    // Before the request log, which takes the bodies it kept.
    Entry::PerRoute(|b, r, _| one(capture::build(b.config, r))),
    // Last: it takes the record's attempts.
    Entry::Shared(|b| maybe(request_log::build(b.config, b.stores))),
];

/// The chains of one config: one per route, in `config.routes` order, and the one the answers
/// to unrouted requests meet (the shared entries alone).
pub(crate) struct Chains {
    pub(crate) routes: Vec<Arc<Chain>>,
    pub(crate) unrouted: Arc<Chain>,
    /// Shadow candidates beside live policies, with their comparisons (the admin API's view).
    pub(crate) shadows: Vec<Arc<Shadow>>,
}

pub(crate) fn build(b: &Build<'_>) -> Chains {
    let shared: Vec<Option<Filters>> = CHAIN
        .iter()
        .map(|e| match e {
            Entry::Shared(f) => Some(f(b)),
            Entry::PerRoute(_) => None,
        })
        .collect();
    let mut shadows = Vec::new();
    let routes = b
        .config
        .routes
        .iter()
        .map(|r| {
            let filters = CHAIN.iter().zip(&shared).flat_map(|(e, built)| match e {
                Entry::Shared(_) => built.clone().unwrap_or_default(),
                Entry::PerRoute(f) => f(b, r, &mut shadows),
            });
            Arc::new(Chain::new(filters.collect::<Vec<_>>()))
        })
        .collect();
    let unrouted = Arc::new(Chain::new(shared.into_iter().flatten().flatten()));
    Chains {
        routes,
        unrouted,
        shadows,
    }
}
