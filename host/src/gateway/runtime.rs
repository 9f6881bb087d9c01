//! Builds the [`Runtime`] snapshot the pipeline reads from a [`Config`]: upstreams (kept across
//! reloads when unchanged), plugins (reused when their spec and file are unchanged), and each
//! route's filter chain: the built-in filters around the route's policies.

use std::sync::Arc;

use crate::config::{Config, ConfigError, PluginKind};
use crate::pipeline::Chain;
use crate::pipeline::Filter;
use crate::pipeline::auth::KeyRing;
use crate::pipeline::client_ip::ClientIpResolver;
use crate::pipeline::filters::response_headers::ResponseHeaders;
use crate::pipeline::filters::shadow::Shadow;
use crate::pipeline::filters::{self, policies};
use crate::pipeline::route::{Limits, Route, Runtime};
use crate::policy::{LoadError, Plugin, PluginSpec, PolicyEngine};
use crate::state::Stores;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::metrics::MetricsFilter;
use crate::upstream::Upstream;

fn config_error(path: String, message: String) -> ConfigError {
    ConfigError {
        path,
        location: None,
        message,
    }
}

/// Builds a runtime from `config`. Plugins are compiled off the async workers and must accept
/// their configuration. With `previous`, unchanged upstreams (keeping their health, cooldowns
/// and averages) and unchanged plugins (same spec and file hash: no recompile) carry over.
pub(crate) async fn build(
    config: &Config,
    engine: &Arc<PolicyEngine>,
    previous: Option<&Runtime>,
    metrics: &Arc<Metrics>,
) -> Result<Runtime, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut upstreams = Vec::new();
    for (i, u) in config.upstreams.iter().enumerate() {
        let kept = previous
            .and_then(|p| p.upstreams.iter().find(|old| old.config == *u))
            .cloned();
        match kept.map_or_else(|| Upstream::new(u.clone()).map(Arc::new), Ok) {
            Ok(up) => upstreams.push(up),
            Err(e) => errors.push(config_error(
                format!("upstreams[{i}].credential"),
                e.to_string(),
            )),
        }
    }
    let mut plugins: Vec<Arc<Plugin>> = Vec::new();
    for (i, p) in config.plugins.iter().enumerate() {
        match load_plugin(config, p, engine, previous).await {
            Ok(plugin) => plugins.push(plugin),
            Err(e) => errors.push(config_error(
                format!("plugins[{i}]"),
                format!("{}: {e}", p.module),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let stores = engine.stores();
    stores.set_config_ip_rules(access_entries(&config.access));
    let response_headers = Arc::new(ResponseHeaders::new(&config.server.response_headers));
    let Builtin { first, last } = builtin(config, stores, metrics, &response_headers);
    let mut routes: Vec<Route> = Vec::new();
    let mut shadows: Vec<Arc<Shadow>> = Vec::new();
    for r in &config.routes {
        // The route's own built-ins after its policies, so they see what the policies left.
        let own: Option<Arc<dyn Filter>> = (r.stream_usage == crate::config::StreamUsage::Inject)
            .then(|| Arc::new(filters::stream_usage::StreamUsage) as Arc<dyn Filter>);
        let chain = Chain::new(
            first
                .iter()
                .cloned()
                .chain(route_policies(config, r, &plugins, stores, &mut shadows))
                .chain(own)
                .chain(last.iter().cloned()),
        );
        let route_upstreams: Vec<Arc<Upstream>> = r
            .upstreams
            .iter()
            .filter_map(|name| upstreams.iter().find(|u| &*u.name == name).cloned())
            .collect();
        let methods: Vec<http::Method> = r.methods.iter().map(|m| m.0.clone()).collect();
        routes.push(Route {
            prefix: r.path_prefix.as_str().into(),
            restricts_models: route_upstreams.iter().any(|u| !u.config.models.is_empty()),
            upstreams: route_upstreams,
            max_attempts: r.max_attempts,
            stream_bootstrap: r.stream_bootstrap,
            chain: Arc::new(chain),
            allow: methods
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            methods,
            access: (r.access != crate::config::AccessConfig::default())
                .then(|| Arc::new(crate::state::IpTable::new(access_entries(&r.access)))),
            maintenance: r.maintenance,
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    let s = &config.server;
    Ok(Runtime {
        global: Arc::new(Chain::new(first.into_iter().chain(last))),
        keys: KeyRing::new(&config.auth),
        client_ip: ClientIpResolver::new(s.trusted_proxies.clone(), s.real_ip_header),
        routes,
        upstreams,
        plugins,
        shadows,
        limits: Limits {
            max_body: s.max_body.0,
            max_header_size: s.max_header_size.0,
            min_body_rate: s.min_body_rate.0,
            client_body_idle: s.timeouts.client_body.get(),
            response_head: s.timeouts.response_head.get(),
            upstream_idle: s.timeouts.idle.get(),
            allow_obs_text: s.allow_obs_text,
        },
        response_headers,
        maintenance: config.maintenance.enabled,
    })
}

/// A config `access` section as table entries.
fn access_entries(a: &crate::config::AccessConfig) -> Vec<(ipnet::IpNet, crate::state::IpAction)> {
    use crate::state::IpAction;
    let allow = a.allow.iter().map(|c| (c.0, IpAction::Allow));
    allow
        .chain(a.deny.iter().map(|c| (c.0, IpAction::Deny)))
        .collect()
}

/// Loads one plugin, or reuses the previous runtime's if nothing about it changed.
async fn load_plugin(
    config: &Config,
    p: &crate::config::PluginConfig,
    engine: &Arc<PolicyEngine>,
    previous: Option<&Runtime>,
) -> Result<Arc<Plugin>, LoadError> {
    let spec = PluginSpec {
        dry_run: config
            .routes
            .iter()
            .any(|r| r.shadow.values().any(|c| *c == p.name)),
        ..PluginSpec::from_config(p)
    };
    let module = config.resolve_module(&p.module);
    if let Some(old) = previous.and_then(|prev| prev.plugins.iter().find(|old| old.spec == spec))
        && old.is_unchanged(&module)
    {
        return Ok(old.clone());
    }
    // A version in service with the same module lends its machine code (a config-only edit).
    let running = previous
        .map(|prev| prev.plugins.clone())
        .unwrap_or_default();
    let engine = engine.clone();
    let plugin = tokio::task::spawn_blocking(move || engine.load_reusing(&module, spec, &running))
        .await
        .map_err(|e| LoadError::Compile(format!("compiler task failed: {e}")))??;
    plugin.validate().await?;
    tracing::info!(
        plugin = %p.name,
        sha256 = &plugin.sha256[..12],
        code = plugin.code_origin.as_str(),
        code_ms = plugin.code_time.as_millis() as u64,
        memory = plugin.instance_memory().unwrap_or(0),
        "plugin version loaded"
    );
    Ok(Arc::new(plugin))
}

/// A route's policies as filters (one adapter per kind), in configured order; the shadows
/// they carry are added to `shadows`.
fn route_policies(
    config: &Config,
    route: &crate::config::RouteConfig,
    plugins: &[Arc<Plugin>],
    stores: &Arc<Stores>,
    shadows: &mut Vec<Arc<Shadow>>,
) -> Vec<Arc<dyn Filter>> {
    let plugin = |name: &str| plugins.iter().find(|p| &*p.spec.name == name).cloned();
    let found: Vec<(PluginKind, policies::PolicyRef)> = route
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
                policies::PolicyRef {
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
                PluginKind::IpBinding => Arc::new(policies::IpBinding {
                    policy,
                    stores: stores.clone(),
                    records_use: Some(i) == last_binding,
                }),
                PluginKind::Router => Arc::new(policies::Router { policy }),
                PluginKind::HeaderRewrite => Arc::new(policies::HeaderRewrite { policy }),
                PluginKind::Quota => Arc::new(policies::Quota {
                    policy,
                    stores: stores.clone(),
                }),
            }
        })
        .collect()
}

/// The built-in filters every request meets, in order, around the route's policies.
pub(crate) struct Builtin {
    /// Before the policies (e.g. edge protection that should refuse before any plugin runs).
    pub(crate) first: Vec<Arc<dyn Filter>>,
    /// After the policies (response decoration, logging).
    pub(crate) last: Vec<Arc<dyn Filter>>,
}

pub(crate) fn builtin(
    config: &Config,
    stores: &Arc<Stores>,
    metrics: &Arc<Metrics>,
    response_headers: &Arc<ResponseHeaders>,
) -> Builtin {
    // Edge protection, cheapest refusals first: the client's address, a CORS preflight (answered
    // without a key), maintenance, then the limits (which count what passes).
    let mut first: Vec<Arc<dyn Filter>> = vec![Arc::new(filters::access::IpAccess {
        stores: stores.clone(),
    })];
    if let Some(cors) = &config.server.cors {
        first.push(Arc::new(filters::cors::Cors::new(cors)));
    }
    first.push(Arc::new(filters::maintenance::Maintenance::new(
        &config.maintenance,
        stores.clone(),
    )));
    if let Some(limits) = filters::limits::Limits::new(&config.limits, stores) {
        first.push(Arc::new(limits));
    }
    let mut last: Vec<Arc<dyn Filter>> = Vec::new();
    if !response_headers.is_empty() {
        last.push(Arc::new(filters::response_headers::SecurityHeaders(
            response_headers.clone(),
        )));
    }
    last.extend::<[Arc<dyn Filter>; 3]>([
        Arc::new(filters::request_id::RequestIdHeader::new(
            &config.server.request_id_header,
        )),
        // Before the access log, whose line carries the counts.
        Arc::new(crate::telemetry::usage::Usage::new(stores.clone())),
        // After usage (it reads the tokens).
        Arc::new(MetricsFilter::new(metrics.clone(), config)),
    ]);
    if config.logging.access_log {
        last.push(Arc::new(crate::telemetry::access_log::AccessLog));
    }
    Builtin { first, last }
}
