//! Builds the [`Runtime`] snapshot the pipeline reads from a [`Config`]: upstreams (kept across
//! reloads when unchanged), plugins (reused when their spec and file are unchanged), and each
//! route's filter chain (from the one list in `chain.rs`).

use std::sync::Arc;

use super::chain;
use crate::config::{Config, ConfigError};
use crate::pipeline::auth::KeyRing;
use crate::pipeline::client_ip::ClientIpResolver;
use crate::pipeline::filters;
use crate::pipeline::filters::response_headers::ResponseHeaders;
use crate::pipeline::route::{Limits, Route, Runtime};
use crate::policy::{LoadError, Plugin, PluginSpec, PolicyEngine};
use crate::telemetry::metrics::Metrics;
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
        let made = || {
            Upstream::new(u.clone()).map(|up| {
                Arc::new(
                    up.with_credentials(engine.stores().credential_map())
                        .with_capacity(engine.stores()),
                )
            })
        };
        match kept.map_or_else(made, Ok) {
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
    // The providers' rate-limit headers are read only when a loaded router reads headroom.
    let watched = plugins.iter().any(|p| p.wants_capacity());
    for u in &upstreams {
        if let Some(c) = &u.capacity {
            c.set_watched(watched);
        }
    }
    let stores = engine.stores();
    let keys = KeyRing::new(&config.auth, stores.key_table())
        .with_routes(config.routes.iter().map(|r| r.path_prefix.as_str()));
    let stored = stores.stored_key_names();
    for (i, k) in config.auth.keys.iter().enumerate() {
        if stored.contains(&k.name) {
            errors.push(config_error(
                format!("auth.keys[{i}].name"),
                format!(
                    "a key named {:?} was issued at run time (`tollgate keys`); rename one of them",
                    k.name
                ),
            ));
        }
    }
    let prices = match config.pricing.table(&config.base_dir) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            errors.push(config_error("pricing.file".into(), e));
            Arc::default()
        }
    };
    // A money allowance counts what requests cost: every model its upstream names must have a
    // price (one the list does not name is refused at the attempt, `model_not_priced`).
    for (i, u) in config.upstreams.iter().enumerate() {
        if u.limits.is_some_and(|l| l.monthly_budget.is_some()) {
            let unpriced: Vec<&str> = u
                .models
                .iter()
                .filter(|m| !m.ends_with('*') && prices.price(m).is_none())
                .map(|m| m.as_str())
                .collect();
            if !unpriced.is_empty() {
                errors.push(config_error(
                    format!("upstreams[{i}].limits.monthly_budget"),
                    format!(
                        "a money allowance needs each model's price; none for {} (pricing:)",
                        unpriced.join(", ")
                    ),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    stores.set_config_keys(keys.config_entries(&config.auth));
    stores.set_config_ip_rules(filters::access::entries(&config.access));
    let response_headers = Arc::new(ResponseHeaders::new(&config.server.response_headers));
    let chains = chain::build(&chain::Build {
        config,
        stores,
        metrics,
        plugins: &plugins,
        response_headers: &response_headers,
        prices: &prices,
    });
    let mut routes: Vec<Route> = Vec::new();
    for (r, chain) in config.routes.iter().zip(chains.routes) {
        let route_upstreams: Vec<Arc<Upstream>> = r
            .upstreams
            .iter()
            .filter_map(|name| upstreams.iter().find(|u| &*u.name == name).cloned())
            .collect();
        let methods: Vec<http::Method> = r.methods.iter().map(|m| m.0.clone()).collect();
        routes.push(Route {
            prefix: r.path_prefix.as_str().into(),
            restricts_models: route_upstreams.iter().any(|u| !u.config.models.is_empty()),
            fallbacks: r
                .fallbacks
                .iter()
                .map(|(m, next)| {
                    (
                        m.clone(),
                        next.iter().map(|n| Arc::from(n.as_str())).collect(),
                    )
                })
                .collect(),
            upstreams: route_upstreams,
            max_attempts: r.max_attempts,
            stream_bootstrap: r.stream_bootstrap,
            chain,
            allow: methods
                .iter()
                .map(http::Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            methods,
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
    let s = &config.server;
    Ok(Runtime {
        global: chains.unrouted,
        keys,
        client_ip: ClientIpResolver::new(s.trusted_proxies.clone(), s.real_ip_header),
        routes,
        upstreams,
        plugins,
        shadows: chains.shadows,
        limits: Limits {
            max_body: s.max_body.0,
            max_header_size: s.max_header_size.0,
            min_body_rate: s.min_body_rate.0,
            client_body_idle: s.timeouts.client_body.get(),
            response_head: s.timeouts.response_head.get(),
            upstream_idle: s.timeouts.idle.get(),
            allow_obs_text: s.allow_obs_text,
            bytes_per_token: u64::from(config.limits.estimate.bytes_per_token.max(1)),
        },
        response_headers,
        prices,
    })
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
