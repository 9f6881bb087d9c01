//! The WebAssembly policy kinds as filters: one adapter per kind, each calling its plugin at the
//! hook where that kind acts, and applying the plugin's `on_error` (`deny` → 503
//! `policy_error`; `skip` → go on as if the policy were absent) when a call fails.
//!
//! | kind | adapter | hook |
//! |---|---|---|
//! | ip-binding | [`IpBinding`] | `on_authenticated` |
//! | router | [`Router`] | `on_select` |
//! | header-rewrite | [`HeaderRewrite`] | `on_upstream_request` (request rules), `on_response_head` (response rules, upstream answers only) |
//! | quota | [`Quota`] | `on_upstream_response` |
//!
//! Policies see the request as one shared `RequestInfo`, built on the first call of a request
//! ([`Session::policy_request`]). A policy with a shadow candidate (`routes[].shadow`) hands
//! each decision and its inputs to [`Shadow::compare`] after its own call; see
//! [`super::shadow`].

use std::sync::Arc;

use http::HeaderMap;

use super::shadow::Shadow;
use crate::config::{Failsafe, OnError, PluginKind};
use crate::error::{ErrorKind, GatewayError};
use crate::pipeline::{Filter, Flow, HookResult, Hooks, Session, Step, UpstreamResponse, Verdict};
use crate::policy::fixtures::{binding_json, ops_json, quota_json, route_json};
use crate::policy::types::{
    AfterCooldown, BindingDecision, CooldownScope, Denial, QuotaDecision, RouteDecision,
    UpstreamView,
};
use crate::policy::view::apply_ops;
use crate::policy::{Plugin, PolicyError, ResponseInfo};
use crate::state::{Intercept, KEY_ID_PREFIX_LEN, SharedCooldown, Stores};
use crate::upstream::Upstream;

/// A plugin as a route uses it.
pub(crate) struct PolicyRef {
    pub(crate) plugin: Arc<Plugin>,
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
}

/// A policy's refusal as the client will see it; a status outside 400–599 becomes 403.
fn denied(d: Denial) -> GatewayError {
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

/// ip-binding: the first refusal ends the request and is written to the intercept log. When the
/// stores cannot answer, the deployment's failsafe decides (not `on_error`). A request the last
/// ip-binding policy of the route allowed counts as one use of the key's binding (batched).
pub(crate) struct IpBinding {
    pub(crate) policy: PolicyRef,
    pub(crate) stores: Arc<Stores>,
    /// The route's last ip-binding policy records the use.
    pub(crate) records_use: bool,
}

impl Filter for IpBinding {
    fn name(&self) -> &str {
        &self.policy.plugin.spec.name
    }

    fn hooks(&self) -> Hooks {
        Hooks::AUTHENTICATED
    }

    fn on_authenticated<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        Step::later(async move {
            let view = s.policy_request();
            let decision = self.policy.plugin.check(&view).await;
            if let (Some(shadow), Ok(d)) = (&self.policy.shadow, &decision) {
                let view = view.clone();
                shadow.compare(&s.request_id, binding_json(d.clone()), |p| async move {
                    p.check(&view).await.map(binding_json)
                });
            }
            match decision {
                Ok(BindingDecision::Allow) => {}
                Ok(BindingDecision::Deny(d)) => {
                    self.stores.record_intercept(
                        &view.key_id,
                        Intercept {
                            at_ms: crate::state::unix_ms(),
                            key_id_prefix: view.key_id.chars().take(KEY_ID_PREFIX_LEN).collect(),
                            bound_cidr: None,
                            attempted_ip: view.client_ip_text.clone(),
                            method: s.head.method.to_string(),
                            path: s.head.uri.path().to_owned(),
                            reason: d.code.clone(),
                        },
                    );
                    return Err(denied(d));
                }
                Err(PolicyError::StoreUnavailable { source, .. }) => {
                    self.stores.note_failsafe();
                    match self.stores.failsafe() {
                        Failsafe::Closed => {
                            tracing::warn!(request_id = %s.request_id, error = %source, "stores unavailable; refused (failsafe closed)");
                            return Err(ErrorKind::StateUnavailable.into());
                        }
                        Failsafe::Open => {
                            tracing::warn!(request_id = %s.request_id, error = %source, "stores unavailable; let through unchecked (failsafe open)");
                        }
                    }
                }
                Err(e) => self.policy.failed(e)?,
            }
            if self.records_use {
                self.stores.record_use(&view.key_id, s.client_ip);
            }
            Ok(Flow::Continue)
        })
    }
}

/// router: orders the candidates; `none` refuses the request (503 `no_upstream`).
pub(crate) struct Router {
    pub(crate) policy: PolicyRef,
}

impl Filter for Router {
    fn name(&self) -> &str {
        &self.policy.plugin.spec.name
    }

    fn hooks(&self) -> Hooks {
        Hooks::SELECT
    }

    fn on_select<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        candidates: &'a mut Vec<Arc<Upstream>>,
    ) -> HookResult<'a> {
        Step::later(async move {
            let view = s.policy_request();
            let model = s.model();
            let views: Vec<_> = candidates.iter().map(|u| upstream_view(u, model)).collect();
            let decision = self.policy.plugin.select(&view, &views).await;
            if let (Some(shadow), Ok(d)) = (&self.policy.shadow, &decision) {
                let view = view.clone();
                shadow.compare(&s.request_id, route_json(d.clone()), |p| async move {
                    p.select(&view, &views).await.map(route_json)
                });
            }
            match decision {
                Ok(RouteDecision::Pick(order)) => {
                    *candidates = reorder(candidates, &order);
                    if candidates.is_empty() {
                        return Err(
                            ErrorKind::NoUpstream("the router picked no candidate".into()).into(),
                        );
                    }
                    Ok(())
                }
                Ok(RouteDecision::None(reason)) => Err(ErrorKind::NoUpstream(reason).into()),
                Err(e) => self.policy.failed(e),
            }
        })
    }
}

/// header-rewrite: applies the plugin's header operations to each outgoing request and to the
/// upstream's response head (not to the gateway's own error answers). Each policy sees the
/// headers as the previous one left them.
pub(crate) struct HeaderRewrite {
    pub(crate) policy: PolicyRef,
}

impl Filter for HeaderRewrite {
    fn name(&self) -> &str {
        &self.policy.plugin.spec.name
    }

    /// Only the phases the plugin has rules for (read once per loaded version).
    fn hooks(&self) -> Hooks {
        let mut h = Hooks::default();
        if self.policy.plugin.rewrites_requests() {
            h = h | Hooks::UPSTREAM_REQUEST;
        }
        if self.policy.plugin.rewrites_responses() {
            h = h | Hooks::RESPONSE_HEAD;
        }
        h
    }

    fn on_upstream_request<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        _upstream: &'a Upstream,
        headers: &'a mut HeaderMap,
    ) -> HookResult<'a> {
        Step::later(async move {
            let view = s.policy_request();
            let decision = self.policy.plugin.rewrite_request(&view).await;
            if let (Some(shadow), Ok(ops)) = (&self.policy.shadow, &decision) {
                let view = view.clone();
                shadow.compare(&s.request_id, ops_json(ops.clone()), |p| async move {
                    p.rewrite_request(&view).await.map(ops_json)
                });
            }
            match decision {
                Ok(ops) => {
                    apply_ops(headers, ops, &self.policy.plugin.spec.name);
                    Ok(())
                }
                Err(e) => self.policy.failed(e),
            }
        })
    }

    fn on_response_head<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        Step::later(async move {
            let Some(upstream) = from else {
                return Ok(());
            };
            let view = s.policy_request();
            let answer = Arc::new(ResponseInfo {
                upstream: upstream.name.to_string(),
                status: head.status.as_u16(),
                headers: head.headers.clone(),
                first_event: None,
            });
            let decision = self.policy.plugin.rewrite_response(&view, &answer).await;
            if let (Some(shadow), Ok(ops)) = (&self.policy.shadow, &decision) {
                let view = view.clone();
                shadow.compare(&s.request_id, ops_json(ops.clone()), |p| async move {
                    p.rewrite_response(&view, &answer).await.map(ops_json)
                });
            }
            match decision {
                Ok(ops) => {
                    apply_ops(&mut head.headers, ops, &self.policy.plugin.spec.name);
                    Ok(())
                }
                Err(e) => self.policy.failed(e),
            }
        })
    }
}

/// quota: sees the responses it watches (and every bootstrapped stream), and may cool the
/// upstream down (shared with the cluster) and ask for another one.
pub(crate) struct Quota {
    pub(crate) policy: PolicyRef,
    pub(crate) stores: Arc<Stores>,
}

impl Filter for Quota {
    fn name(&self) -> &str {
        &self.policy.plugin.spec.name
    }

    fn hooks(&self) -> Hooks {
        Hooks::UPSTREAM_RESPONSE
    }

    fn on_upstream_response<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        upstream: &'a Upstream,
        response: &'a UpstreamResponse<'_>,
    ) -> HookResult<'a, Verdict> {
        Step::later(async move {
            let plugin = &self.policy.plugin;
            if !plugin.watches(response.status.as_u16(), response.first_event.is_some()) {
                return Ok(Verdict::Continue);
            }
            let view = s.policy_request();
            let model = s.model();
            let up = upstream_view(upstream, model);
            let answer = Arc::new(ResponseInfo {
                upstream: upstream.name.to_string(),
                status: response.status.as_u16(),
                headers: response.headers.clone(),
                first_event: response.first_event.map(str::to_owned),
            });
            let decision = plugin.on_response(&view, &up, &answer).await;
            if let (Some(shadow), Ok(d)) = (&self.policy.shadow, &decision) {
                let (view, up) = (view.clone(), up.clone());
                shadow.compare(&s.request_id, quota_json(*d), |p| async move {
                    if !p.watches(answer.status, answer.first_event.is_some()) {
                        // What the gateway does for an answer the candidate does not watch.
                        return Ok(quota_json(QuotaDecision::Pass));
                    }
                    p.on_response(&view, &up, &answer).await.map(quota_json)
                });
            }
            match decision {
                Ok(QuotaDecision::Pass) => Ok(Verdict::Continue),
                Ok(QuotaDecision::RetryOther) => Ok(Verdict::Retry),
                Ok(QuotaDecision::Cooldown(c)) => {
                    let scope = match c.scope {
                        CooldownScope::Model => model,
                        CooldownScope::Upstream => None,
                    };
                    upstream.cool_down(scope, c.until_ms);
                    self.stores.share_cooldown(SharedCooldown {
                        upstream: upstream.name.to_string(),
                        model: scope.map(str::to_owned),
                        until_ms: c.until_ms,
                    });
                    tracing::info!(request_id = %s.request_id, upstream = %upstream.name, model = scope, until_ms = c.until_ms, "upstream cooling down");
                    Ok(if c.then == AfterCooldown::RetryOther {
                        Verdict::Retry
                    } else {
                        Verdict::Continue
                    })
                }
                Err(e) => self.policy.failed(e).map(|()| Verdict::Continue),
            }
        })
    }
}

/// The candidates in the router's order; out-of-range and repeated indices are ignored.
fn reorder(candidates: &[Arc<Upstream>], order: &[u32]) -> Vec<Arc<Upstream>> {
    let mut seen = vec![false; candidates.len()];
    order
        .iter()
        .filter_map(|&i| {
            let i = i as usize;
            (i < candidates.len() && !std::mem::replace(&mut seen[i], true))
                .then(|| candidates[i].clone())
        })
        .collect()
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
                    on_error: cfg.on_error,
                    shadow,
                },
            ))
        })
        .collect();
    let last_binding = found
        .iter()
        .rposition(|(kind, _)| *kind == PluginKind::IpBinding);
    found
        .into_iter()
        .enumerate()
        .map(|(i, (kind, policy))| -> Arc<dyn Filter> {
            match kind {
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
            }
        })
        .collect()
}
