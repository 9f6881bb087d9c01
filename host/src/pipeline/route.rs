//! What the pipeline reads from one version of the config: the [`Runtime`] snapshot. The gateway
//! builds it (`gateway/runtime.rs`) and swaps it atomically on reload; a request takes it once at
//! its start and keeps it to its end.

use std::sync::Arc;
use std::time::Duration;

use super::auth::KeyRing;
use super::client_ip::ClientIpResolver;
use super::filter::Chain;
use crate::policy::Plugin;
use crate::upstream::Upstream;

/// A path prefix, the upstreams that serve it, and its filters.
pub struct Route {
    pub prefix: Arc<str>,
    /// In configured order of preference.
    pub upstreams: Vec<Arc<Upstream>>,
    pub max_attempts: u32,
    pub stream_bootstrap: bool,
    /// The built-in filters and the route's policies, in phase order.
    pub chain: Arc<Chain>,
    /// Methods the route accepts, and the same as an `Allow` header value.
    pub methods: Vec<http::Method>,
    pub allow: String,
    /// Some upstream of the route serves only listed models, so every request body must be
    /// read for its `model`.
    pub restricts_models: bool,
    /// `routes[].fallbacks`: model → the models tried after it, in order.
    pub fallbacks: std::collections::BTreeMap<String, Vec<Arc<str>>>,
}

impl Route {
    /// The models tried after `model` (none configured: empty).
    pub fn fallbacks_for(&self, model: Option<&str>) -> &[Arc<str>] {
        model
            .and_then(|m| self.fallbacks.get(m))
            .map_or(&[], Vec::as_slice)
    }
}

/// Limits applied on the request path.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: u64,
    pub max_header_size: u64,
    /// Bytes per second a request body must average (0 = no minimum).
    pub min_body_rate: u64,
    pub client_body_idle: Duration,
    pub response_head: Duration,
    pub upstream_idle: Duration,
    /// `server.allow_obs_text`: keep header values with bytes past ASCII.
    pub allow_obs_text: bool,
    /// `limits.estimate.bytes_per_token`: a prompt's tokens estimated from its body's size.
    pub bytes_per_token: u64,
}

/// Everything the request path needs from one version of the config.
pub struct Runtime {
    pub keys: KeyRing,
    pub client_ip: ClientIpResolver,
    /// Longest prefix first, so the first match is the most specific.
    pub routes: Vec<Route>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub plugins: Vec<Arc<Plugin>>,
    /// Shadow candidates beside live policies (`routes[].shadow`), with their comparisons.
    pub shadows: Vec<Arc<crate::pipeline::filters::shadow::Shadow>>,
    pub limits: Limits,
    /// The built-in filters alone: the chain of a request refused before it has a route.
    pub global: Arc<Chain>,
    /// Security headers, also for the data plane's own endpoints.
    pub response_headers: Arc<super::filters::response_headers::ResponseHeaders>,
    /// `pricing:`: the `pricing` filter's table, also what the operator plane reports spend in.
    pub prices: Arc<crate::config::PriceTable>,
}

impl Runtime {
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| path.starts_with(&*r.prefix))
    }
}
