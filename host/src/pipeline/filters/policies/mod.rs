//! The WebAssembly policy kinds as filters: one adapter per kind, each calling its plugin at the
//! hook where that kind acts, and applying the plugin's `on_error` (`deny` → 503
//! `policy_error`; `skip` → go on as if the policy were absent) when a call fails.
//!
//! | kind | adapter | hook |
//! |---|---|---|
//! | ip-binding | [`IpBinding`] (`ip_binding.rs`) | `on_authenticated` |
//! | router | [`Router`] (`router.rs`) | `on_select` |
//! | header-rewrite | [`HeaderRewrite`] (`header_rewrite.rs`) | `on_upstream_request` (request rules), `on_response_head` (response rules, upstream answers only) |
//! | quota | [`Quota`] (`quota.rs`) | `on_upstream_response` |
//! | transform | [`Transforms`] (`transform.rs`): one filter for all the route's transforms, at the place of the first | `on_request_body`, `on_response_head`, `on_response_body`, `on_body_chunk` |
//!
//! Policies see the request as one shared `RequestInfo`, built on the first call of a request
//! ([`Session::policy_request`]). A policy with a shadow candidate (`routes[].shadow`) hands
//! each decision and its inputs to [`Shadow::compare`] after its own call, through
//! [`PolicyRef::shadow`]; see [`super::shadow`].

mod header_rewrite;
mod ip_binding;
mod quota;
mod router;
mod transform;

use std::sync::Arc;

pub(crate) use header_rewrite::HeaderRewrite;
pub(crate) use ip_binding::IpBinding;
pub(crate) use quota::Quota;
pub(crate) use router::Router;
pub(crate) use transform::Transforms;

use super::shadow::Shadow;
use crate::config::{OnError, PluginKind};
use crate::error::{ErrorKind, GatewayError};
use crate::pipeline::Filter;
use crate::policy::types::{Candidate, Denial, UpstreamView};
use crate::policy::{Plugin, PolicyError};
use crate::state::Stores;
use crate::upstream::Upstream;

/// A plugin as a route uses it.
pub(crate) struct PolicyRef {
    pub(crate) plugin: Arc<Plugin>,
    /// `plugin:NAME`: the adapter's filter name (logs, the request log's `answered_by`, the
    /// trace's span).
    pub(crate) label: Arc<str>,
    pub(crate) on_error: OnError,
    /// The candidate evaluated beside it (`routes[].shadow`), if any.
    pub(crate) shadow: Option<Arc<Shadow>>,
}

impl PolicyRef {
    /// A failed call: the policy's `on_error` decides whether the request goes on.
    fn failed(&self, e: PolicyError) -> Result<(), GatewayError> {
        match self.on_error {
            OnError::Deny => {
                // A call refused unrun (breaker open, concurrency limit) is counted and logged
                // at a bounded rate by the runtime: not one line per refused request.
                let refused = e.is_rejection();
                let err = GatewayError::from(ErrorKind::PolicyFailed).caused_by(e);
                Err(if refused { err.accounted_for() } else { err })
            }
            OnError::Skip => Ok(()),
        }
    }

    /// Hands the live decision to the shadow candidate, if there is one, with `replay`: the same
    /// call made on the candidate (in a task of its own; see [`Shadow::compare`]). The one place
    /// every adapter's shadow evaluation goes through.
    fn shadow<T: Clone, F, Fut>(
        &self,
        request_id: &str,
        decision: &Result<T, PolicyError>,
        to_json: fn(T) -> serde_json::Value,
        replay: F,
    ) where
        F: FnOnce(Arc<Plugin>) -> Fut,
        Fut: Future<Output = Result<serde_json::Value, PolicyError>> + Send + 'static,
    {
        if let (Some(shadow), Ok(d)) = (&self.shadow, decision) {
            shadow.compare(request_id, to_json(d.clone()), replay);
        }
    }
}

/// A policy's refusal as the client will see it; a status outside 400–599 becomes 403.
pub(super) fn denied(d: Denial) -> GatewayError {
    let status = http::StatusCode::from_u16(d.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(http::StatusCode::FORBIDDEN);
    ErrorKind::PolicyDenied {
        status,
        code: d.code,
        message: d.message,
    }
    .into()
}

/// What a router or quota policy sees of an upstream.
fn upstream_view(u: &Upstream, model: Option<&str>) -> UpstreamView {
    UpstreamView {
        name: u.name.to_string(),
        weight: u.weight(),
        models: u.config.models.clone(),
        in_flight: u.in_flight(),
        latency_ewma_us: u.latency_ewma_us(),
        error_rate: u.error_rate(),
        cooling_until_ms: u.cooling_until(model),
    }
}

/// What a lean router sees of an upstream: [`upstream_view`]'s figures, without its strings.
fn figures(u: &Upstream, model: Option<&str>) -> Candidate {
    Candidate {
        weight: u.weight(),
        in_flight: u.in_flight(),
        latency_ewma_us: u.latency_ewma_us(),
        error_rate: u.error_rate(),
        cooling_until_ms: u.cooling_until(model),
    }
}

/// A route's policies as filters (one adapter per kind), in configured order; the shadows
/// they carry are added to `shadows`.
pub(crate) fn build(
    config: &crate::config::Config,
    route: &crate::config::RouteConfig,
    plugins: &[Arc<Plugin>],
    stores: &Arc<Stores>,
    shadows: &mut Vec<Arc<Shadow>>,
) -> Vec<Arc<dyn Filter>> {
    let plugin = |name: &str| plugins.iter().find(|p| &*p.spec.name == name).cloned();
    let found: Vec<(PluginKind, PolicyRef)> = route
        .policies
        .iter()
        .filter_map(|name| {
            // Validated: every name refers to a plugin, a shadow to one of the same kind.
            let cfg = config.plugins.iter().find(|p| &p.name == name)?;
            let shadow = route.shadow.get(name).and_then(|candidate| {
                let shadow = Arc::new(Shadow::new(&route.path_prefix, name, plugin(candidate)?));
                shadows.push(shadow.clone());
                Some(shadow)
            });
            Some((
                cfg.kind,
                PolicyRef {
                    plugin: plugin(name)?,
                    label: format!("plugin:{name}").into(),
                    on_error: cfg.on_error,
                    shadow,
                },
            ))
        })
        .collect();
    let last_binding = found
        .iter()
        .rposition(|(kind, _)| *kind == PluginKind::IpBinding);
    let first_transform = found
        .iter()
        .position(|(kind, _)| *kind == PluginKind::Transform);
    let mut transforms = Vec::new();
    let mut filters: Vec<Option<Arc<dyn Filter>>> = found
        .into_iter()
        .enumerate()
        .map(|(i, (kind, policy))| -> Option<Arc<dyn Filter>> {
            Some(match kind {
                PluginKind::IpBinding => Arc::new(IpBinding {
                    policy,
                    stores: stores.clone(),
                    records_use: Some(i) == last_binding,
                }),
                PluginKind::Router => Arc::new(Router { policy }),
                PluginKind::HeaderRewrite => Arc::new(HeaderRewrite { policy }),
                PluginKind::Quota => Arc::new(Quota {
                    policy,
                    stores: stores.clone(),
                }),
                PluginKind::Transform => {
                    transforms.push(policy);
                    return None;
                }
            })
        })
        .collect();
    if let Some(first) = first_transform {
        filters[first] = Some(Arc::new(Transforms {
            policies: transforms.into(),
        }));
    }
    filters.into_iter().flatten().collect()
}
