//! The gateway as a value: built from a [`Config`], served by [`crate::server`], testable in process.
//!
//! Everything derived from the config lives in a [`Runtime`] snapshot behind an `ArcSwap`. A request
//! takes the snapshot once at its start and uses it to the end, so a config reload never changes the
//! rules under a request in flight. The upstream connection pool lives outside the snapshot and
//! survives reloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

use crate::auth::KeyRing;
use crate::client_ip::ClientIpResolver;
use crate::config::{Config, ConfigError, ConfigErrors, OnError, PluginKind};
use crate::policy::{LoadError, Plugin, PluginSpec, PolicyEngine};
use crate::state::{StoreError, Stores};
use crate::upstream::{Upstream, UpstreamClient};

/// A plugin as a route uses it.
pub struct PolicyRef {
    pub plugin: Arc<Plugin>,
    pub on_error: OnError,
}

/// A route's policies, grouped by the phase they run in, each group in configured order.
#[derive(Default)]
pub struct RoutePolicies {
    pub ip_binding: Vec<PolicyRef>,
    pub header_rewrite: Vec<PolicyRef>,
    pub router: Option<PolicyRef>,
    pub quota: Option<PolicyRef>,
}

impl RoutePolicies {
    pub fn is_empty(&self) -> bool {
        self.ip_binding.is_empty()
            && self.header_rewrite.is_empty()
            && self.router.is_none()
            && self.quota.is_none()
    }
}

/// A path prefix and the upstreams that serve it.
pub struct Route {
    pub prefix: Arc<str>,
    /// In configured order of preference.
    pub upstreams: Vec<Arc<Upstream>>,
    pub max_attempts: u32,
    pub stream_bootstrap: bool,
    pub policies: RoutePolicies,
    /// Methods the route accepts, and the same as an `Allow` header value.
    pub methods: Vec<http::Method>,
    pub allow: String,
    /// Some upstream of the route serves only listed models, so every request body must be
    /// read for its `model`.
    pub restricts_models: bool,
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
}

/// Everything the request path needs from one version of the config.
pub struct Runtime {
    pub keys: KeyRing,
    pub client_ip: ClientIpResolver,
    /// Longest prefix first, so the first match is the most specific.
    pub routes: Vec<Route>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub plugins: Vec<Arc<Plugin>>,
    pub limits: Limits,
    pub access_log: bool,
}

fn config_error(path: String, message: String) -> ConfigError {
    ConfigError {
        path,
        location: None,
        message,
    }
}

impl Runtime {
    /// Builds a runtime from `config`. Plugins are compiled off the async workers and must accept
    /// their configuration. With `previous`, unchanged upstreams (keeping their health, cooldowns
    /// and averages) and unchanged plugins (same spec and file hash: no recompile) carry over.
    pub async fn build(
        config: &Config,
        engine: &Arc<PolicyEngine>,
        previous: Option<&Runtime>,
    ) -> Result<Self, Vec<ConfigError>> {
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
                    format!("{}: {e}", p.module.display()),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let find_plugin = |name: &str| {
            let cfg = config.plugins.iter().find(|p| p.name == name)?;
            let plugin = plugins.iter().find(|p| &*p.spec.name == name)?.clone();
            Some((
                cfg.kind,
                PolicyRef {
                    plugin,
                    on_error: cfg.on_error,
                },
            ))
        };
        let mut routes: Vec<Route> = Vec::new();
        for r in &config.routes {
            let mut policies = RoutePolicies::default();
            for name in &r.policies {
                // Validated: every name refers to a plugin, at most one router and quota.
                let Some((kind, p)) = find_plugin(name) else {
                    continue;
                };
                match kind {
                    PluginKind::IpBinding => policies.ip_binding.push(p),
                    PluginKind::HeaderRewrite => policies.header_rewrite.push(p),
                    PluginKind::Router => policies.router = Some(p),
                    PluginKind::Quota => policies.quota = Some(p),
                }
            }
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
                policies,
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
        Ok(Self {
            keys: KeyRing::new(&config.auth),
            client_ip: ClientIpResolver::new(s.trusted_proxies.clone(), s.real_ip_header),
            routes,
            upstreams,
            plugins,
            limits: Limits {
                max_body: s.max_body.0,
                max_header_size: s.max_header_size.0,
                min_body_rate: s.min_body_rate.0,
                client_body_idle: s.timeouts.client_body.get(),
                response_head: s.timeouts.response_head.get(),
                upstream_idle: s.timeouts.idle.get(),
            },
            access_log: config.logging.access_log,
        })
    }

    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| path.starts_with(&*r.prefix))
    }
}

/// Loads one plugin, or reuses the previous runtime's if nothing about it changed.
async fn load_plugin(
    config: &Config,
    p: &crate::config::PluginConfig,
    engine: &Arc<PolicyEngine>,
    previous: Option<&Runtime>,
) -> Result<Arc<Plugin>, LoadError> {
    let spec = PluginSpec::from_config(p);
    let path = config.resolve(&p.module);
    if let Some(old) = previous.and_then(|prev| prev.plugins.iter().find(|old| old.spec == spec))
        && old.is_file_unchanged(&path)
    {
        return Ok(old.clone());
    }
    let engine = engine.clone();
    let plugin = tokio::task::spawn_blocking(move || engine.load(&path, spec))
        .await
        .map_err(|e| LoadError::Compile(format!("compiler task failed: {e}")))??;
    plugin.validate().await?;
    Ok(Arc::new(plugin))
}

/// Why a gateway could not be built from a config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot start the WebAssembly runtime: {0}")]
    Engine(String),
    #[error("cannot open the stores: {0}")]
    Stores(#[from] StoreError),
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub(crate) client: UpstreamClient,
    engine: Arc<PolicyEngine>,
    /// Bindings, intercepts, caches; opened once (storage settings are not reloaded).
    pub stores: Arc<Stores>,
    draining: AtomicBool,
    /// Serialises reloads so two never build from different configs at once.
    reload_lock: tokio::sync::Mutex<()>,
}

impl Gateway {
    /// Opens the configured stores (running migrations) and builds the gateway on them.
    pub async fn new(config: &Config) -> Result<Arc<Self>, BuildError> {
        let client = UpstreamClient::new(config.server.timeouts.connect.get());
        let stores = Stores::open(
            &config.storage,
            &config.base_dir,
            &config.alerts,
            client.clone(),
        )
        .await?;
        Self::with_stores(config, stores, client).await
    }

    /// Builds the gateway on stores opened by the caller (`tollgate check` uses throwaway ones,
    /// so checking a config never touches the real database).
    pub async fn with_stores(
        config: &Config,
        stores: Arc<Stores>,
        client: UpstreamClient,
    ) -> Result<Arc<Self>, BuildError> {
        let engine =
            PolicyEngine::new(stores.clone()).map_err(|e| BuildError::Engine(format!("{e:#}")))?;
        let engine = Arc::new(engine);
        let runtime = Runtime::build(config, &engine, None)
            .await
            .map_err(|errors| ConfigErrors {
                source_name: "config".into(),
                errors,
            })?;
        let gateway = Arc::new(Self {
            runtime: ArcSwap::from_pointee(runtime),
            client,
            engine,
            stores,
            draining: AtomicBool::new(false),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        if let Some(feed) = gateway.stores.shared_cooldowns() {
            tokio::spawn(apply_shared_cooldowns(Arc::downgrade(&gateway), feed));
        }
        Ok(gateway)
    }

    /// Builds a runtime from `config` and swaps it in atomically. On any error the running
    /// runtime stays in service and the errors are returned. Requests in flight finish on the
    /// runtime they started with. Listener settings (`server.listen`, TLS files) are not
    /// reloaded: they need a restart.
    pub async fn reload(&self, config: &Config) -> Result<(), Vec<ConfigError>> {
        let _serial = self.reload_lock.lock().await;
        let current = self.runtime();
        let next = Runtime::build(config, &self.engine, Some(&current)).await?;
        self.runtime.store(Arc::new(next));
        Ok(())
    }

    /// The config snapshot a new request should use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Marks the gateway as shutting down: `/ready` fails so load balancers stop sending traffic.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The gateway's own endpoints (`/health`, `/ready`); everything else is proxied.
    pub fn own_endpoints(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            // Reserved paths with nothing behind them yet answer like any unknown path.
            .fallback(|| async { crate::error::GatewayError::NoRoute })
            .method_not_allowed_fallback(|| async {
                crate::error::GatewayError::MethodNotAllowed {
                    allow: "GET, HEAD".into(),
                }
            })
            .with_state(self.clone())
    }

    /// Whether `path` is answered by [`Gateway::own_endpoints`] rather than proxied.
    pub fn is_own_endpoint(path: &str) -> bool {
        crate::config::RESERVED_PATHS.iter().any(|own| {
            if own.ends_with('/') {
                path.starts_with(own)
            } else {
                path == *own
            }
        })
    }
}

/// Applies cooldowns decided by other gateways of the cluster to this one's upstreams of the same
/// name, until the gateway is dropped.
async fn apply_shared_cooldowns(
    gateway: std::sync::Weak<Gateway>,
    mut feed: tokio::sync::mpsc::Receiver<crate::state::SharedCooldown>,
) {
    while let Some(c) = feed.recv().await {
        let Some(gw) = gateway.upgrade() else {
            return;
        };
        let runtime = gw.runtime();
        if let Some(u) = runtime.upstreams.iter().find(|u| *u.name == *c.upstream) {
            u.cool_down(c.model.as_deref(), c.until_ms);
        }
    }
}

/// Liveness: the process is up and serving HTTP.
async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: not draining, and the state of every upstream.
async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    let rt = gw.runtime();
    let upstreams: Vec<_> = rt
        .upstreams
        .iter()
        .map(|u| json!({"name": &*u.name, "healthy": u.is_healthy()}))
        .collect();
    let draining = gw.draining.load(Ordering::Relaxed);
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body =
        json!({"status": if draining { "draining" } else { "ready" }, "upstreams": upstreams});
    (status, axum::Json(body)).into_response()
}
